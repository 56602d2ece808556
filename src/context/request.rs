//! [`RequestContext`]: trace identity from the request, Caracal entries from the
//! verified mandate.

use std::fmt;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::baggage::{self, MAX_BAGGAGE_BYTES};
use super::traceparent::HexId;
use super::{traceparent, tracestate};
use crate::mandate::Mandate;

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `baggage`.
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// The highest `caracal.hop` written: Caracal's `MAX_HOP`.
pub const MAX_HOP: u64 = 10;

/// `caracal.session`: the mandate's `sid` (the subject authority record).
pub const BAGGAGE_SESSION: &str = "caracal.session";
/// `caracal.agent_session`: the mandate's `agent_session_id`.
pub const BAGGAGE_AGENT_SESSION: &str = "caracal.agent_session";
/// `caracal.delegation_edge`: the mandate's `delegation_edge_id`.
pub const BAGGAGE_DELEGATION_EDGE: &str = "caracal.delegation_edge";
/// `caracal.parent_edge`: the delegation edge before the mandate's own.
pub const BAGGAGE_PARENT_EDGE: &str = "caracal.parent_edge";
/// `caracal.hop`: the delegation depth, in decimal.
pub const BAGGAGE_HOP: &str = "caracal.hop";

/// The trace and authority context of one verified request, to carry on to the
/// calls the handler makes.
///
/// Built by [`from_request`](Self::from_request) from the request headers and the
/// [`Mandate`] verified for that request; written onto an outbound request by
/// [`inject`](Self::inject) or by a [`PropagateLayer`](super::PropagateLayer).
/// Cloning is cheap (one `Arc`).
///
/// Trace identity comes from the request, authority from the mandate only:
///
/// | field | source |
/// | --- | --- |
/// | [`trace_id`](Self::trace_id), [`trace_flags`](Self::trace_flags) | a valid incoming `traceparent`; otherwise a new random trace id, flags `01` |
/// | [`span_id`](Self::span_id) | new, random: this service's span |
/// | [`trace_state`](Self::trace_state) | the incoming `tracestate` when it and `traceparent` are valid |
/// | [`session`](Self::session) | `sid` |
/// | [`agent_session`](Self::agent_session) | `agent_session_id` |
/// | [`delegation_edge`](Self::delegation_edge) | `delegation_edge_id` |
/// | [`parent_edge`](Self::parent_edge) | the edge before `delegation_edge_id` in `delegation_path` (or the chain) |
/// | [`hop`](Self::hop) | [`Mandate::hops`], at most [`MAX_HOP`] |
/// | [`baggage`](Self::baggage) | incoming third-party baggage members; every `caracal.*` member is dropped |
///
/// `Debug` prints the trace ids, the Caracal ids (the same the [`Mandate`]'s `Debug`
/// shows) and the baggage keys, never baggage values or trace state values: third
/// parties put what they like there.
///
/// ```
/// use caracal_verifier::context::RequestContext;
/// use caracal_verifier::{Requirements, Verifier, testing::TestIssuer};
/// use http::HeaderMap;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sts = TestIssuer::start("zone-1").await?;
/// let verifier = Verifier::builder()
///     .issuer(sts.issuer_url())
///     .audience("resource://api")
///     .zone("zone-1")
///     .build()?;
/// let token = sts.mandate().sid("authority-record-1").agent_session("session-1").sign();
/// let mandate = verifier.verify(&token, &Requirements::new()).await?;
///
/// let mut incoming = HeaderMap::new();
/// incoming.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?);
/// incoming.insert("baggage", "tenant=example,caracal.session=forged".parse()?);
/// let ctx = RequestContext::from_request(&incoming, &mandate);
/// assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(ctx.session(), "authority-record-1");
/// assert_eq!(ctx.baggage().collect::<Vec<_>>(), [("tenant", "example")]);
///
/// let mut outbound = HeaderMap::new();
/// ctx.inject(&mut outbound);
/// assert_eq!(
///     outbound["baggage"],
///     "caracal.agent_session=session-1,caracal.hop=0,caracal.session=authority-record-1,tenant=example"
/// );
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RequestContext(Arc<Inner>);

struct Inner {
    /// The verified mandate: the Caracal entries are read from it, not copied.
    mandate: Mandate,
    /// The trace headers as the request carried them.
    incoming: Incoming,
    /// What they say, read on first use: most requests never look at their trace
    /// context, and parsing it (and drawing the random ids) was most of the
    /// context's cost.
    trace: std::sync::OnceLock<Trace>,
    /// The outbound `baggage`, encoded on first use: most requests never call
    /// out, and encoding cost a third of the layer's own work.
    outbound_baggage: std::sync::OnceLock<Option<HeaderValue>>,
}

/// The trace headers of a request, kept unparsed.
struct Incoming {
    /// The `traceparent` field when there is exactly one.
    traceparent: Option<HeaderValue>,
    /// Whether there was any `traceparent` field.
    traceparent_present: bool,
    /// `tracestate`'s fields joined with `,`; `None` when that passed the cap.
    tracestate: Option<Vec<u8>>,
    /// `baggage`'s fields joined with `,`; `None` when that passed the cap.
    baggage: Option<Vec<u8>>,
}

/// The trace context read from [`Incoming`].
struct Trace {
    trace_id: [u8; 16],
    trace_id_hex: HexId<32>,
    span_id_hex: HexId<16>,
    parent_span_id_hex: Option<HexId<16>>,
    flags: u8,
    trace_state: Option<HeaderValue>,
    baggage: Vec<(String, String)>,
}

impl Incoming {
    fn capture(headers: &HeaderMap) -> Self {
        // Most requests carry none of the three: one pass over the names is
        // cheaper than three hashed lookups of names the map does not hold.
        let carried = headers
            .keys()
            .any(|k| matches!(k.as_str(), "traceparent" | "tracestate" | "baggage"));
        if !carried {
            return Incoming {
                traceparent: None,
                traceparent_present: false,
                tracestate: Some(Vec::new()),
                baggage: Some(Vec::new()),
            };
        }
        let (field, traceparent_present) = single(headers, &TRACEPARENT);
        let tracestate = combined(headers, &TRACESTATE, tracestate::MAX_BYTES);
        Incoming {
            traceparent: field.cloned(),
            traceparent_present,
            tracestate,
            baggage: combined(headers, &BAGGAGE, MAX_BAGGAGE_BYTES),
        }
    }

    /// Parse, as [`RequestContext::from_request`] documents.
    fn read(&self) -> Trace {
        let parent = self
            .traceparent
            .as_ref()
            .and_then(|v| traceparent::parse(v.as_bytes()));
        let (trace_id, parent_span_id, flags, trace_state) = match parent {
            Some(tp) => {
                let state = self
                    .tracestate
                    .as_deref()
                    .and_then(tracestate::parse)
                    .and_then(|s| HeaderValue::try_from(s).ok());
                (
                    tp.trace_id,
                    Some(HexId::of(&tp.parent_id)),
                    tp.flags & traceparent::KNOWN_FLAGS,
                    state,
                )
            }
            None => (
                traceparent::new_trace_id(),
                None,
                traceparent::NEW_TRACE_FLAGS,
                None,
            ),
        };
        if parent.is_none() && self.traceparent_present {
            tracing::debug!(
                target: "caracal_verifier::context",
                "invalid traceparent ignored; a new trace is started"
            );
        }
        // Present: over the cap, or fields with something in them.
        let tracestate_present = self.tracestate.as_ref().is_none_or(|v| !v.is_empty());
        if parent.is_some() && tracestate_present && trace_state.is_none() {
            tracing::debug!(target: "caracal_verifier::context", "invalid tracestate dropped");
        }

        let incoming = match &self.baggage {
            Some(v) => baggage::parse(v),
            None => baggage::Parsed {
                oversized: true,
                ..Default::default()
            },
        };
        if incoming.oversized || incoming.forged > 0 || incoming.malformed > 0 {
            tracing::debug!(
                target: "caracal_verifier::context",
                oversized = incoming.oversized,
                forged = incoming.forged,
                malformed = incoming.malformed,
                "incoming baggage members dropped"
            );
        }
        Trace {
            trace_id_hex: HexId::of(&trace_id),
            trace_id,
            span_id_hex: HexId::of(&traceparent::new_span_id()),
            parent_span_id_hex: parent_span_id,
            flags,
            trace_state,
            baggage: incoming.entries,
        }
    }
}

impl Inner {
    fn trace(&self) -> &Trace {
        self.trace.get_or_init(|| self.incoming.read())
    }

    fn hop(&self) -> u64 {
        self.mandate.hops().min(MAX_HOP)
    }

    fn outbound_baggage(&self) -> Option<&HeaderValue> {
        self.outbound_baggage
            .get_or_init(|| {
                let hop_text = self.hop().to_string();
                let m = &self.mandate;
                let caracal = [
                    (BAGGAGE_SESSION, m.sid()),
                    (BAGGAGE_AGENT_SESSION, m.agent_session_id().unwrap_or("")),
                    (BAGGAGE_DELEGATION_EDGE, m.delegation_edge_id().unwrap_or("")),
                    (BAGGAGE_PARENT_EDGE, parent_edge(m).unwrap_or("")),
                    (BAGGAGE_HOP, hop_text.as_str()),
                ];
                let encoded = baggage::encode(&caracal, &self.trace().baggage);
                if encoded.header.is_none() {
                    tracing::warn!(
                        target: "caracal_verifier::context",
                        sid = self.mandate.sid(),
                        "the caracal.* baggage entries alone exceed 8,192 bytes; no baggage is propagated"
                    );
                } else if encoded.dropped > 0 {
                    tracing::debug!(
                        target: "caracal_verifier::context",
                        dropped = encoded.dropped,
                        "pass-through baggage members left out to stay within the caps"
                    );
                }
                encoded.header.and_then(|h| HeaderValue::try_from(h).ok())
            })
            .as_ref()
    }
}

impl RequestContext {
    /// Builds the context of a request whose mandate was verified.
    ///
    /// Never fails and never panics; every header problem is handled as the W3C
    /// specifications say, by ignoring what is invalid:
    ///
    /// - `traceparent`: exactly one field, valid (see the [module docs](super)),
    ///   or a new trace is started. Several `traceparent` fields are invalid: the
    ///   field is not a list, so "first wins" would be a guess.
    /// - `tracestate`: its fields are combined with `,` (RFC 9110 §5.3) and parsed
    ///   only when `traceparent` was valid (Trace Context §3.3.1: a vendor that
    ///   cannot parse `traceparent` must not parse `tracestate`); any invalid part
    ///   drops it whole.
    /// - `baggage`: its fields are combined with `,`; over Caracal's caps it is
    ///   dropped whole, otherwise malformed members one by one; `caracal.*` members
    ///   are always dropped.
    ///
    /// Each drop is reported by a `DEBUG` event with target
    /// `caracal_verifier::context` (counts only, never values).
    ///
    /// The headers are kept as they came and read on the first call of any
    /// accessor (or of `inject`, or `Debug`); the ids, including this service's new
    /// span id, are fixed from then on. So a context nobody reads costs one
    /// allocation, and its drops are reported when it is first read.
    pub fn from_request(headers: &HeaderMap, mandate: &Mandate) -> RequestContext {
        RequestContext(Arc::new(Inner {
            mandate: mandate.clone(),
            incoming: Incoming::capture(headers),
            trace: std::sync::OnceLock::new(),
            outbound_baggage: std::sync::OnceLock::new(),
        }))
    }

    /// Writes the context onto an outbound request's headers, replacing any
    /// `traceparent`, `tracestate` and `baggage` already there:
    ///
    /// - `traceparent`: version `00`, the same trace id and flags, and a **new**
    ///   span id on every call;
    /// - `tracestate`: the incoming one, or removed when there was none;
    /// - `baggage`: the `caracal.*` entries and the pass-through members, encoded as
    ///   Caracal's envelope does (see the [module docs](super#outbound)), or removed
    ///   when there is nothing to send.
    ///
    /// `reqwest` and `hyper` requests use the same [`HeaderMap`]
    /// (`request.headers_mut()`).
    pub fn inject(&self, headers: &mut HeaderMap) {
        let i = &self.0;
        let t = i.trace();
        let tp = traceparent::format(&t.trace_id, &traceparent::new_span_id(), t.flags);
        if let Ok(v) = HeaderValue::try_from(tp) {
            headers.insert(TRACEPARENT, v);
        }
        match &t.trace_state {
            Some(v) => {
                headers.insert(TRACESTATE, v.clone());
            }
            None => {
                headers.remove(TRACESTATE);
            }
        }
        match i.outbound_baggage() {
            Some(v) => {
                headers.insert(BAGGAGE, v.clone());
            }
            None => {
                headers.remove(BAGGAGE);
            }
        }
    }

    /// The trace id: 32 lowercase hex digits.
    pub fn trace_id(&self) -> &str {
        self.0.trace().trace_id_hex.as_str()
    }

    /// This service's span id: 16 lowercase hex digits, new for each request.
    pub fn span_id(&self) -> &str {
        self.0.trace().span_id_hex.as_str()
    }

    /// The caller's span id (the incoming `traceparent`'s parent id), when the trace
    /// was continued.
    pub fn parent_span_id(&self) -> Option<&str> {
        self.0
            .trace()
            .parent_span_id_hex
            .as_ref()
            .map(HexId::as_str)
    }

    /// Whether the trace id came from a valid incoming `traceparent` (otherwise this
    /// service started the trace).
    pub fn is_continued(&self) -> bool {
        self.0.trace().parent_span_id_hex.is_some()
    }

    /// The trace flags propagated: the incoming `sampled` and `random` bits (other
    /// bits are reserved and sent as zero), or `01` for a new trace.
    pub fn trace_flags(&self) -> u8 {
        self.0.trace().flags
    }

    /// Whether the `sampled` flag is set.
    pub fn is_sampled(&self) -> bool {
        self.0.trace().flags & 0x01 != 0
    }

    /// The incoming `tracestate`, normalized (members joined with `,`).
    pub fn trace_state(&self) -> Option<&str> {
        self.0
            .trace()
            .trace_state
            .as_ref()
            .and_then(|v| v.to_str().ok())
    }

    /// `caracal.session`: the mandate's `sid`.
    pub fn session(&self) -> &str {
        self.0.mandate.sid()
    }

    /// `caracal.agent_session`: the mandate's `agent_session_id`.
    pub fn agent_session(&self) -> Option<&str> {
        self.0.mandate.agent_session_id()
    }

    /// `caracal.delegation_edge`: the mandate's `delegation_edge_id`.
    pub fn delegation_edge(&self) -> Option<&str> {
        self.0.mandate.delegation_edge_id()
    }

    /// `caracal.parent_edge`: the delegation edge the mandate's edge narrows (its
    /// `parent_edge_id` in Caracal's graph). See the [module docs](super#caracal-entries).
    pub fn parent_edge(&self) -> Option<&str> {
        parent_edge(&self.0.mandate)
    }

    /// `caracal.hop`: [`Mandate::hops`], capped at [`MAX_HOP`].
    pub fn hop(&self) -> u64 {
        self.0.hop()
    }

    /// The pass-through (third-party) baggage members, decoded, sorted by key.
    pub fn baggage(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.0
            .trace()
            .baggage
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The value of the pass-through baggage member `key`.
    pub fn baggage_value(&self, key: &str) -> Option<&str> {
        let baggage = &self.0.trace().baggage;
        baggage
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| baggage[i].1.as_str())
    }
}

impl fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.0;
        let t = i.trace();
        f.debug_struct("RequestContext")
            .field("trace_id", &t.trace_id_hex.as_str())
            .field("span_id", &t.span_id_hex.as_str())
            .field(
                "parent_span_id",
                &t.parent_span_id_hex.as_ref().map(HexId::as_str),
            )
            .field("trace_flags", &format_args!("{:02x}", t.flags))
            .field("trace_state", &t.trace_state.as_ref().map(|_| "<redacted>"))
            .field("session", &i.mandate.sid())
            .field("agent_session", &i.mandate.agent_session_id())
            .field("delegation_edge", &i.mandate.delegation_edge_id())
            .field("parent_edge", &parent_edge(&i.mandate))
            .field("hop", &i.hop())
            .field(
                "baggage_keys",
                &t.baggage
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The delegation edge that the mandate's `delegation_edge_id` narrows.
///
/// Caracal's STS builds `delegation_path` by walking `parent_edge_id` from the
/// mandate's edge up to the root and lists it root first, so the mandate's edge is
/// last and its parent is the one before it. Without a path, the chain's edges (root
/// first) are read the same way. Anything inconsistent (the last edge is not the
/// mandate's) gives no parent rather than a guess.
fn parent_edge(m: &Mandate) -> Option<&str> {
    let edge = m.delegation_edge_id()?;
    let path = m.delegation_path();
    if !path.is_empty() {
        let n = path.len();
        return match (n.checked_sub(2).and_then(|i| path.get(i)), path.get(n - 1)) {
            (Some(parent), Some(last)) if last == edge => Some(parent),
            _ => None,
        };
    }
    let chain = m.delegation_chain();
    let mut edges = chain.iter().filter_map(|h| h.delegation_edge_id());
    let last = edges.next_back()?;
    let parent = edges.next_back()?;
    (last == edge).then_some(parent)
}

/// The trace id of a valid incoming `traceparent`, in hex: for records of requests
/// that were denied before a [`RequestContext`] was built.
pub(crate) fn incoming_trace_id(headers: &HeaderMap) -> Option<String> {
    single(headers, &TRACEPARENT)
        .0
        .and_then(|v| traceparent::parse(v.as_bytes()))
        .map(|tp| traceparent::hex(&tp.trace_id))
}

/// The value of `name` when the request has exactly one such field, and whether it
/// has any (one lookup answers both).
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> (Option<&'h HeaderValue>, bool) {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => (Some(v), true),
        (first, _) => (None, first.is_some()),
    }
}

/// The fields of `name` joined with `,`; `Some(empty)` when absent; `None` as soon as
/// the result would exceed `cap` bytes, so the work stays bounded by the cap.
fn combined(headers: &HeaderMap, name: &HeaderName, cap: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for (i, v) in headers.get_all(name).iter().enumerate() {
        let extra = usize::from(i > 0) + v.len();
        if out.len() + extra > cap {
            return None;
        }
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(v.as_bytes());
    }
    Some(out)
}
