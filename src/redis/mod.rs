//! Redis Streams revocation feed and shared replay guard (feature `redis`).
//!
//! Caracal's control plane publishes revocations on `caracal.sessions.revoke` and
//! delegation-epoch changes on `caracal.delegations.invalidate`. The feed tails both
//! streams into the verifier's in-process [`RevocationSet`](crate::revocation::RevocationSet),
//! so the request path checks revocation with a hash lookup and no network round trip.
//! [`RedisReplayGuard`] keeps single-use mandates single-use across replicas.
//!
//! ```no_run
//! use std::time::Duration;
//! use caracal_verifier::{Requirements, Verifier};
//! use caracal_verifier::redis::{RedisReplayGuard, RedisRevocations};
//! use caracal_verifier::revocation::StreamKey;
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "redis://redis.internal:6379";
//! let key = StreamKey::from_hex(&std::env::var("STREAMS_HMAC_KEY")?)?;
//! // Inside the Tokio runtime: `build` starts the consumer task.
//! let verifier = Verifier::builder()
//!     .issuer("https://sts.example.com")
//!     .audience("resource://payments")
//!     .zone("zone-1")
//!     .redis_revocations(RedisRevocations::new(url).stream_key(key))
//!     .replay_guard(RedisReplayGuard::new(url)?)
//!     .build()?;
//!
//! // Ready once the keys are fetched and the retained history has been replayed.
//! verifier.warm_up().await?;
//! while !verifier.is_ready() {
//!     tokio::time::sleep(Duration::from_millis(50)).await;
//! }
//!
//! let feed = verifier.revocation_feed().expect("configured above");
//! if let Some(status) = feed.status() {
//!     println!("fresh={} lag={:?} dropped={}", status.fresh, status.lag, status.dropped);
//! }
//!
//! // On shutdown, after the server stopped taking requests:
//! feed.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! With the environment (`CARACAL_REDIS_URL`, `STREAMS_HMAC_KEY`, …) the builder's
//! [`from_env`](crate::VerifierBuilder::from_env) starts the feed on its own; see
//! [`RedisRevocations::from_lookup`].
//!
//! # Fan-out, not a work queue
//!
//! Every replica must see every event, so each one reads both streams with plain
//! `XREAD BLOCK` from the last id it has seen, on its own connection. Consumer groups
//! (`XREADGROUP`) are deliberately not used: a group shared by the replicas hands
//! each event to *one* of them, and the others would keep accepting the revoked
//! mandate. (A group per replica would work, but leaves a group and pending entries
//! behind in Redis for every pod that ever ran, and buys nothing: the feed never
//! needs acknowledgements, because applying an event twice is harmless.) The feed
//! writes nothing to Redis: it sends only `XREAD`, `XINFO STREAM`, `INFO server` and
//! `TIME`. For the same reason poison messages are not copied to a `<stream>.dead`
//! stream, which every replica would otherwise fill once per message.
//!
//! # Catch-up at start
//!
//! Before readiness turns true, the feed replays the retained history of both streams
//! that falls within [`catch_up`](RedisRevocations::catch_up) (default 24 h, the
//! revocation TTL), measured on the Redis server's clock (`TIME`), in pages of 1,000.
//! A revocation published before the process started is thus enforced from the first
//! request. A trimmed stream (`MAXLEN`/`MINID`) just starts later: reading from an id
//! older than the first entry returns the oldest one kept.
//!
//! # Signatures and poison messages
//!
//! With a [`StreamKey`](crate::revocation::StreamKey) (`STREAMS_HMAC_KEY`), messages
//! that are unsigned, carry a wrong `_sig`, repeat a field, name no anchor, lack
//! `zone_id` or carry a malformed epoch are dropped: counted in
//! [`FeedStatus::dropped`](crate::revocation::FeedStatus::dropped) and logged at
//! `warn` with the stream, the entry id and the kind of fault, never a field value.
//! The cursor moves past them, so a poison message never stalls the stream. Without a
//! key, unsigned events are accepted only after
//! [`dangerous_accept_unsigned`](RedisRevocations::dangerous_accept_unsigned).
//!
//! # Faults
//!
//! - **Connection loss.** The feed marks itself disconnected (stale at once) and
//!   reconnects with exponential backoff and jitter (50 ms to 2 s by default). A read
//!   that gets no answer within the block timeout plus 2 s counts as a lost
//!   connection, so a hung server is noticed too. The task never panics and never
//!   spins.
//! - **Redis restarts.** After every reconnection the feed compares the server's
//!   `run_id` (`INFO server`). When it changed, the server restarted and may have lost
//!   data, so both streams are re-read from the catch-up start: every event the new
//!   server holds is seen, whatever ids it gave them, and events applied twice change
//!   nothing.
//! - **Lost or deleted streams.** On the same server, `XINFO STREAM` tells the last id
//!   the stream generated; if it is below the feed's cursor (the stream was deleted or
//!   replaced, or ids went backwards after a failover) that stream is re-read from the
//!   catch-up start.
//! - **Catching up after an outage.** Before it counts as fresh again, the feed reads
//!   everything published while it was away. Events trimmed away during the outage
//!   cannot be recovered: size the streams' retention for the longest outage you
//!   tolerate.
//!
//! # Staleness
//!
//! The feed is fresh while it is connected, has caught up, and its last successful
//! read is within [`max_staleness`](RedisRevocations::max_staleness) (default 30 s;
//! an idle `XREAD BLOCK` that times out counts as a read). While it is stale,
//! verification fails closed with 503 `revocation_unavailable` and readiness is false,
//! unless [`dangerous_fail_open`](RedisRevocations::dangerous_fail_open) was chosen.
//!
//! # Lifecycle
//!
//! [`VerifierBuilder::build`](crate::VerifierBuilder::build) starts the task on the
//! current Tokio runtime; [`Verifier::revocation_feed`](crate::Verifier::revocation_feed)
//! returns its [`FeedHandle`], whose [`status`](FeedHandle::status) reports freshness,
//! lag and last-event time, and whose [`shutdown`](FeedHandle::shutdown) stops it.
//! Dropping the last verifier clone stops it too.

mod capped;
mod config;
mod consumer;
mod handle;
mod replay;
mod reply;

pub use config::{
    DEFAULT_BLOCK_TIMEOUT, DEFAULT_MAX_ENTRY_BYTES, DEFAULT_MAX_ENTRY_FIELDS,
    DEFAULT_MAX_REPLY_BYTES, DEFAULT_RECONNECT_MAX, DEFAULT_RECONNECT_MIN, RedisRevocations,
};
pub use handle::FeedHandle;
pub use replay::{DEFAULT_REPLAY_KEY_PREFIX, DEFAULT_REPLAY_TIMEOUT, RedisReplayGuard};
