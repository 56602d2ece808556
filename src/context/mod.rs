//! W3C trace context and baggage for verified requests.
//!
//! A [`RequestContext`] joins the incoming trace (`traceparent`, `tracestate`) with
//! the Caracal entries of the **verified** mandate: `caracal.session` (`sid`),
//! `caracal.agent_session`, `caracal.delegation_edge`, `caracal.parent_edge` and
//! `caracal.hop`. Third-party `baggage` members pass through. Outbound calls carry it
//! with [`RequestContext::inject`] or a [`PropagateLayer`]: the same trace, a new
//! span id, and the `caracal.*` entries encoded as Caracal's envelope codec does.
//!
//! Baggage is unsigned routing metadata. Every incoming `caracal.*` member is
//! dropped as forged; those values come from the verified claims only.
//!
//! ```
//! use axum::{Router, body::Body, routing::get};
//! use caracal_verifier::context::RequestContext;
//! use caracal_verifier::layer::MandateLayer;
//! use caracal_verifier::{Requirements, Verifier, testing::TestIssuer};
//! use tower::ServiceExt;
//!
//! // The handler sees the context; here it answers with what a downstream call
//! // would carry.
//! async fn handler(ctx: RequestContext) -> String {
//!     let mut outbound = http::HeaderMap::new();
//!     ctx.inject(&mut outbound);
//!     outbound["baggage"].to_str().unwrap_or_default().to_owned()
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sts = TestIssuer::start("zone-1").await?;
//! let verifier = Verifier::builder()
//!     .issuer(sts.issuer_url())
//!     .audience("resource://api")
//!     .zone("zone-1")
//!     .build()?;
//! let app = Router::new()
//!     .route("/", get(handler))
//!     // Verifies the mandate, then attaches its context to the request.
//!     .layer(MandateLayer::new(verifier, Requirements::new()));
//!
//! let token = sts.mandate().sid("authority-record-1").sign();
//! let request = http::Request::get("/")
//!     .header("authorization", format!("Bearer {token}"))
//!     .header("baggage", "caracal.session=forged,tenant=example")
//!     .body(Body::empty())?;
//! let response = app.oneshot(request).await?;
//! let body = axum::body::to_bytes(response.into_body(), 1 << 16).await?;
//! assert_eq!(body, "caracal.hop=0,caracal.session=authority-record-1,tenant=example");
//! # Ok(()) }
//! ```
//!
//! # Inbound parsing
//!
//! Strict, bounded by the input size, never panicking; what is invalid is ignored
//! as the specifications say.
//!
//! - **`traceparent`** (Trace Context level 1 §3.2): exactly one field. Version
//!   `00` is exactly `00-<32 hex>-<16 hex>-<2 hex>`, lowercase hex only; version `ff`
//!   is invalid; a higher version is read through its version-00 prefix (at least 55
//!   characters, then the end or `-`, §3.2.4); an all-zero trace id or parent id is
//!   invalid. Invalid, absent or repeated: a new trace is started (a random trace
//!   id from the system CSPRNG, flags `01` as Caracal's `format_traceparent`).
//!   Leading and trailing `SP`/`HTAB` are ignored (they are not part of a field
//!   value). Of the flags, `sampled` (level 1) and `random` (level 2) are kept; the
//!   reserved bits are sent as zero (§3.2.2.5). Caracal's codec keeps all eight
//!   bits.
//! - **`tracestate`** (§3.3): read only with a valid `traceparent`. Fields are
//!   combined with `,`; list-members are `key=value` with the spec's key grammar
//!   (simple or `tenant@system`) and value grammar; empty members are skipped; at
//!   most 32 members; a duplicate key, a malformed member, or more than 8,192 bytes
//!   drops the whole header. It is passed on normalized (no optional white space).
//!   Caracal's codec passes any string through.
//! - **`baggage`** (W3C Baggage): fields are combined with `,`. Over
//!   [`MAX_BAGGAGE_BYTES`] bytes or [`MAX_BAGGAGE_MEMBERS`] comma-separated pieces,
//!   the header is dropped **entirely**, as Caracal's `parse_baggage` does. Below
//!   the caps each member stands alone: one that breaks the grammar (key a
//!   `token`, value `baggage-octet`s, properties `key[=value]`), carries a bad
//!   percent-escape, does not decode to UTF-8, or decodes to a control character
//!   is dropped and the rest is kept. Caracal's Python codec would keep such a
//!   value (raw, or with U+FFFD), its TypeScript codec the raw text; W3C Baggage
//!   asks for U+FFFD. Dropping keeps every value passed on byte-exact and keeps
//!   line breaks out of logs. Properties are validated, then dropped (Caracal's
//!   codec keeps only values). A repeated key: the last wins (Caracal's dict).
//!   Any key starting with `caracal.`, in any letter case, is dropped as forged;
//!   Caracal's codec drops only its five names.
//!
//! # Caracal entries
//!
//! From the verified [`Mandate`](crate::Mandate), never from the request:
//!
//! - `caracal.session` = `sid`; `caracal.agent_session` = `agent_session_id`;
//!   `caracal.delegation_edge` = `delegation_edge_id`.
//! - `caracal.parent_edge`: the delegation edge that the mandate's edge narrows.
//!   Caracal's STS writes `delegation_path` root first by walking each edge's
//!   `parent_edge_id` (`GetDelegationLineage`), so it is the path entry before the
//!   mandate's `delegation_edge_id` (without a path, the chain's edges are read the
//!   same way). Caracal's SDK sets the same value: a context accepting a delegation
//!   records its previous delegation as the parent. Absent for a first-hop edge.
//! - `caracal.hop` = [`Mandate::hops`](crate::Mandate::hops) (the STS writes
//!   `hop_count` = the path length), capped at [`MAX_HOP`] = 10. Caracal's decoders
//!   clamp a larger value to 10, and its context builders refuse verified hops above
//!   10; this constructor cannot fail, so it writes 10. Routes enforce depth with
//!   [`Requirements::max_hops`](crate::Requirements::max_hops) (default 10).
//! - As in Caracal's encoder, empty values are not written and `caracal.hop` is
//!   always written (the mandate always has a `sid`).
//!
//! # Outbound
//!
//! [`RequestContext::inject`] writes `traceparent` (version `00`, same trace id and
//! flags, a new span id per call), `tracestate` (as received) and `baggage`:
//! members `key=value` with the value percent-escaped like Python's
//! `urllib.parse.quote(value, safe="")` (all but `A-Z a-z 0-9 - . _ ~`, uppercase
//! hex), sorted by key, joined with `,` — Caracal's `encode_baggage`. Within
//! [`MAX_BAGGAGE_BYTES`] and [`MAX_BAGGAGE_MEMBERS`], the `caracal.*` entries always
//! go; pass-through members are then taken in key order while they fit, a member
//! never cut (W3C Baggage: no partial list-members). Re-escaping can make a member
//! longer than it came in. Should the `caracal.*` entries alone exceed 8,192 bytes,
//! no `baggage` is sent (a Caracal parser would drop it whole) and a `WARN` event is
//! emitted.
//!
//! [`PropagateLayer`] does the same for every request of an outbound Tower client
//! that carries a `RequestContext` in its extensions.

mod baggage;
#[cfg(feature = "axum")]
mod extract;
mod propagate;
mod request;
mod traceparent;
mod tracestate;

pub use baggage::{MAX_BAGGAGE_BYTES, MAX_BAGGAGE_MEMBERS};
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use extract::MissingRequestContext;
pub use propagate::{PropagateLayer, PropagateService};
pub(crate) use request::incoming_trace_id;
pub use request::{
    BAGGAGE, BAGGAGE_AGENT_SESSION, BAGGAGE_DELEGATION_EDGE, BAGGAGE_HOP, BAGGAGE_PARENT_EDGE,
    BAGGAGE_SESSION, MAX_HOP, RequestContext, TRACEPARENT, TRACESTATE,
};

#[cfg(test)]
mod fuzz;
