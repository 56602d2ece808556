//! The action-result audit emitter (feature `audit`): one signed event per request a
//! [`MandateLayer`](crate::layer::MandateLayer) decides, on Caracal's audit stream.
//!
//! Caracal's console pairs, per request id, the STS's authorization decision with
//! the protected service's *action result*; a decision without one reads as a
//! request that never completed. A service that verifies mandates in process owes
//! that record. [`AuditEmitter`] writes it from the verifier's
//! [action results](crate::action), the way Caracal's Gateway writes its own.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use caracal_verifier::audit::{AuditEmitter, AuditKey};
//! use caracal_verifier::layer::MandateLayer;
//! use caracal_verifier::{Requirements, Verifier};
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = AuditKey::from_hex(&std::env::var("AUDIT_HMAC_KEY")?)?;
//! let emitter = AuditEmitter::new("redis://redis.internal:6379")
//!     .key(key)
//!     .replay_dir("/var/lib/payments/audit-replay");
//! let stats = emitter.stats(); // for your metrics
//! let verifier = Verifier::builder()
//!     .issuer("https://sts.example.com")
//!     .audience("resource://payments")
//!     .zone("zone-1")
//!     .audit(emitter)
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/charges", get(|| async { "ok" }))
//!     .layer(MandateLayer::new(verifier.clone(), Requirements::new()));
//! // ... serve `app`; every decided request becomes one event.
//! let counts = stats.snapshot();
//! println!("sent={} lost={}", counts.sent, counts.evidence_lost());
//! // On shutdown, after the server stopped taking requests: flushes the queue.
//! verifier.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! With the environment, [`VerifierBuilder::from_env`](crate::VerifierBuilder::from_env)
//! adds the emitter when `CARACAL_AUDIT=on`; see [`AuditEmitter::from_lookup`].
//!
//! # Wire form
//!
//! Each event is one `XADD caracal.audit.events * id <id> data <json> sig <hex>`:
//! `sig` is the lowercase hex HMAC-SHA256 of the exact `data` bytes under
//! `AUDIT_HMAC_KEY` (hex, at least 32 bytes), which Caracal's Audit service checks
//! before storing anything. `data` is one JSON object with the fields of Caracal's
//! audit event schema:
//!
//! | field | value |
//! | --- | --- |
//! | `id` | a UUIDv7, as the Gateway's |
//! | `zone_id` | the mandate's zone, or the verifier's when there is no verified mandate |
//! | `event_type` | `verifier_resource_request` (see below) |
//! | `request_id` | the request's `x-request-id`, or the one the layer generated and answered with |
//! | `decision` | `allow` (the service ran) or `deny` (the layer denied) |
//! | `evaluation_status` | `executed` (a verified mandate, the service answered), `anonymous` (an [optional](crate::layer::MandateLayer::optional) layer let a request without credentials through), `denied` (a 4xx denial), `unavailable` (a 503: keys or revocation state unavailable) |
//! | `determining_policies_json` | `[]`: the policy decision is the STS's |
//! | `diagnostics_json` | `[]`, or on a denial `[{"code", "reason", "message", "details"}]`: the documented code, the `invalid_token` reason (else the code again), the denial's text and its `details` object |
//! | `metadata_json` | see below |
//! | `occurred_at` | RFC 3339 UTC, when the request arrived (on the verifier's clock) |
//! | `manifest_sha` | only when set with [`AuditEmitter::manifest_sha`] |
//!
//! `metadata_json` carries the Gateway's action-result keys where they mean the same
//! thing here: `application_id` (the mandate's `client_id`), `resource` (the
//! verifier's audience), `subject_fingerprint` (the first 8 bytes of the bearer's
//! SHA-256, in hex), `method`, `latency_ms` (arrival to response head), and when
//! known `trace_id`, `subject_kind` (`sub_type`), `result_class`
//! (`success`/`redirect`/`client_error`/`server_error`, of the status the service
//! answered; only when it ran, as the Gateway classifies only an upstream answer),
//! `revocation_interrupted` (only when `true`: the denial was `session_revoked` or
//! `delegation_stale`) and `error_kind` (the denial's code). The status the client
//! got is `status`: the Gateway's `gateway_status` and `upstream_status` name two hops
//! of a proxy, and an in-process verifier has one. The token and the raw subject
//! are never written.
//!
//! **Why `verifier_resource_request`.** Caracal has no in-process emitter to copy;
//! its console and SIEM pipelines read `gateway_resource_request` as "the Gateway
//! proxied this". A record from the service itself under the Gateway's type would
//! mix two enforcement points in every query and say the Gateway saw a request it
//! never did. The name follows the Gateway's (`<surface>_resource_request`), the
//! metadata keeps its keys, so a consumer of one reads the other; the console shows
//! the events under their type name. [`AuditEmitter::event_type`] changes it.
//!
//! # Never in the way of a request
//!
//! The layer's sink does one non-blocking `try_send` into a bounded queue (10,000
//! by default); when it is full the event is dropped and counted
//! ([`AuditCounts::dropped`]). A thread of the emitter's own, with a single-threaded
//! runtime, takes events off the queue, serializes and signs them, and writes
//! batches of pipelined `XADD`s (every 50 ms or 1,000 events). Redis being slow,
//! down or frozen delays no response.
//!
//! # Redis unavailable
//!
//! A batch that cannot be written (no connection, an error, no answer within
//! [`io_timeout`](AuditEmitter::io_timeout)) is written to an ndjson file (mode
//! 0600, in a directory created 0700, each line an event's exact `data`) in the
//! [`replay_dir`](AuditEmitter::replay_dir) (`AUDIT_REPLAY_DIR`), and the emitter
//! reconnects with exponential backoff, spilling meanwhile. Whenever it (re)connects,
//! at start included, it first sends the files, oldest first, and deletes each one
//! once all its events are in ([`AuditCounts::drained`]). A batch that timed out may
//! have reached Redis too: its events then arrive twice with the same id and bytes,
//! which Caracal's Audit service stores once. The directory is capped
//! ([`max_spill`](AuditEmitter::max_spill), 64 MiB and 10,000 files by default);
//! what does not fit is lost and counted ([`AuditCounts::lost`]), and logged at
//! `error` (at most every 10 s). Without a replay directory, events are lost while
//! Redis is unreachable.
//!
//! # Lifecycle
//!
//! The emitter is a [source](crate::source) named `redis-audit`:
//! [`Verifier::shutdown`](crate::Verifier::shutdown) (or dropping the last verifier
//! clone) stops it after it has sent what was queued, within
//! [`shutdown_timeout`](AuditEmitter::shutdown_timeout) (5 s), spilling the rest.
//! It does not affect the verifier's readiness: audit never fails a request.

mod config;
mod key;
mod spill;
mod stats;
mod wire;
mod writer;

pub use config::{
    AUDIT_STREAM, AuditEmitter, AuditEntry, DEFAULT_BATCH_SIZE, DEFAULT_EVENT_TYPE,
    DEFAULT_FLUSH_INTERVAL, DEFAULT_IO_TIMEOUT, DEFAULT_MAX_SPILL_BYTES, DEFAULT_MAX_SPILL_FILES,
    DEFAULT_QUEUE_CAPACITY, DEFAULT_SHUTDOWN_TIMEOUT,
};
pub use key::AuditKey;
pub use stats::{AuditCounts, AuditStats};
