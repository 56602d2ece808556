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
//! // `build` starts the consumer on its own thread.
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
//! if let Some(status) = feed.status().feed {
//!     println!("fresh={} lag={:?} dropped={}", status.fresh, status.lag, status.dropped);
//! }
//!
//! // On shutdown, after the server stopped taking requests:
//! verifier.shutdown().await;
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
//! writes nothing to Redis: it sends only `XREAD`, `XRANGE`, `XINFO STREAM`,
//! `INFO server`, `TIME` and, after an oversized entry, a read-only `EVAL` script
//! (the README lists the ACL). For the same reason poison messages are not copied to
//! a `<stream>.dead` stream, which every replica would otherwise fill once per
//! message. It needs Redis 7.0 or later (see *Lost history*).
//!
//! # Catch-up at start
//!
//! Before readiness turns true, the feed replays the retained history of both streams
//! that falls within [`catch_up`](RedisRevocations::catch_up) (default 24 h, the
//! revocation TTL), measured on the Redis server's clock (`TIME`), in pages of up to 1,024 entries
//! ([`max_reply_bytes`](RedisRevocations::max_reply_bytes) / 1 KiB).
//! A revocation published before the process started is thus enforced from the first
//! request. A trimmed stream (`MAXLEN`/`MINID`) just starts later: reading from an id
//! older than the first entry returns the oldest one kept.
//!
//! # Signatures and poison messages
//!
//! With a [`StreamKey`](crate::revocation::StreamKey) (`STREAMS_HMAC_KEY`), messages
//! that are unsigned, carry a wrong `_sig`, repeat a field, name no anchor, lack
//! `zone_id`, carry a malformed epoch, have a field name outside `[A-Za-z0-9_.-]` or a
//! value with a line break, or exceed the entry bounds
//! ([`max_entry_fields`](RedisRevocations::max_entry_fields), 64, and
//! [`max_entry_bytes`](RedisRevocations::max_entry_bytes), 16 KiB) are dropped:
//! counted in [`FeedStatus::dropped`](crate::revocation::FeedStatus::dropped) and
//! logged at `warn` with the stream, the entry id and the kind of fault, never a
//! field value. The read position moves past them, so a poison message never stalls
//! the stream. Without a key, unsigned events are accepted only after
//! [`dangerous_accept_unsigned`](RedisRevocations::dangerous_accept_unsigned).
//!
//! # A hostile writer
//!
//! Whoever can write to Redis without the key can add entries of any size and with
//! ids of their choosing, and delete, trim or recreate the streams. The feed holds:
//!
//! - **Its read position never passes the server's clock.** An entry with an id
//!   ahead of `TIME` was written with an explicit id: it is handled (and dropped,
//!   unless signed), but the position stays before it and the stream is re-scanned
//!   every 100 ms instead of blocked past it, so events numbered below the bogus id
//!   after a `DEL` are still read. Past 1,024 such entries the feed cannot see the
//!   stream's end and stays not fresh.
//! - **Replies are bounded.** The connection counts each reply's bytes and breaks
//!   past [`max_reply_bytes`](RedisRevocations::max_reply_bytes) (1 MiB); the feed
//!   reconnects at once (staying fresh) and for 60 s reads through a server-side
//!   script that replaces oversized entries by a marker.
//! - **It runs on its own thread** with a single-threaded runtime: no request worker
//!   parses a stream entry.
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
//! - **Deleted, recreated or rewound streams.** After every quiet read (a block
//!   timeout that brought nothing), and at least every 250 ms while events flow, on a
//!   live connection, `XINFO STREAM` is compared with what was read: a missing stream, a
//!   `last-generated-id` below the position, a fall in `entries-added`, or another
//!   entry at the position's very id (a `DEL` and `XADD` within one millisecond)
//!   means the stream was replaced, and it is re-read from the catch-up start
//!   ([`FeedStatus::resets`](crate::revocation::FeedStatus::resets)).
//! - **Lost history.** An entry deleted before the feed read it (trimmed, `XDEL`,
//!   emptied during an outage) shows as `entries-added` growing more than the
//!   entries read, or `max-deleted-entry-id` beyond the position. That is a gap:
//!   counted in [`FeedStatus::gaps`](crate::revocation::FeedStatus::gaps), logged at
//!   `error`, and the feed is not fresh (503) until it has re-read the retained
//!   history. The deleted events cannot be recovered: size the streams' retention
//!   for the longest outage you tolerate. A server that refuses `XINFO` or `TIME`
//!   (ACL), or lacks these fields (Redis before 7.0), keeps the feed not ready, with
//!   an `error` log, rather than run blind.
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
//! The feed is a [source](crate::source): [`VerifierBuilder::build`](crate::VerifierBuilder::build)
//! starts the consumer on its own thread (no runtime is needed to build), and
//! [`Verifier::revocation_feed`](crate::Verifier::revocation_feed) returns its
//! [`SourceHandle`](crate::source::SourceHandle), whose
//! [`status`](crate::source::SourceHandle::status) reports freshness, lag and
//! last-event time, and whose [`shutdown`](crate::source::SourceHandle::shutdown)
//! stops it ([`Verifier::shutdown`](crate::Verifier::shutdown) stops every source).
//! Dropping the last verifier clone stops it too.

mod capped;
mod config;
mod connect;
pub(crate) mod consumer;
mod endpoint;
mod handle;
mod lanes;
mod replay;
mod reply;
mod wire;
mod worker;

#[cfg(feature = "audit")]
pub(crate) use worker::Worker;
pub(crate) mod secret;

pub use config::{
    DEFAULT_BLOCK_TIMEOUT, DEFAULT_MAX_ENTRY_BYTES, DEFAULT_MAX_ENTRY_FIELDS,
    DEFAULT_MAX_REPLY_BYTES, DEFAULT_RECONNECT_MAX, DEFAULT_RECONNECT_MIN, RedisRevocations,
};
#[cfg(feature = "audit")]
pub(crate) use connect::Connector;
pub use endpoint::RedisEndpoint;
pub use replay::{DEFAULT_REPLAY_KEY_PREFIX, DEFAULT_REPLAY_TIMEOUT, RedisReplayGuard};
