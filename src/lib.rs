#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc = include_str!("../README.md")]

pub mod action;
mod alg;
#[cfg(feature = "audit")]
#[cfg_attr(docsrs, doc(cfg(feature = "audit")))]
pub mod audit;
mod b64;
mod cache;
mod claims;
mod clock;
pub mod context;
mod error;
#[cfg(feature = "axum")]
mod extract;
mod future;
#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub mod grpc;
mod hash;
mod json;
mod jwk;
mod jwks;
pub mod layer;
mod mandate;
pub mod manifest;
#[cfg(feature = "mcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "mcp")))]
pub mod mcp;
pub mod replay;
mod requirements;
pub mod revocation;
pub mod source;
mod stats;
pub mod status;
mod token;
mod verifier;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

#[cfg(feature = "__internals")]
#[doc(hidden)]
pub mod internals;

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;

// Each public item has exactly one public path (`scripts/api-deps` checks it):
//
// - The crate root holds the verification engine and its vocabulary, the items a
//   user names to verify a mandate: `Verifier` (its builder, `Readiness`),
//   `Requirements`, `Mandate` and its views, the denials (`AuthError`, `ErrorCode`
//   and their detail enums), `ConfigError`, the clocks, key fetching
//   (`JwksFetcher`, `HttpFetcher`, `BoxFuture`), the defaults of these settings,
//   and `MissingMandate`, the rejection of the `Mandate` extractor.
// - Everything else is named through its module, never also at the root: the
//   Tower integration in `layer` (`layer::MandateLayer`, its service, renderers
//   and `ServiceBuilder` extension), single-use guards in `replay`, the revocation
//   set and stream events in `revocation`, background sources (the seam a
//   revocation feed plugs into) in `source`, the Redis feed in `redis`, the
//   action-result audit emitter in `audit`, MCP authorization in `mcp`, the test kit in `testing`, the
//   verifier's manifest in `manifest` and its status document in `status`.
//
// Docs, examples and tests use these paths.
pub use alg::Algorithm;
pub use cache::{DEFAULT_CACHE_BYTES, DEFAULT_CACHE_ENTRIES};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{
    AnchorKind, AuthError, ChainFault, CodeSpelling, ConfigError, ErrorCode, InvalidReason,
};
#[cfg(feature = "axum")]
pub use extract::MissingMandate;
pub use future::BoxFuture;
pub use jwks::{
    DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_JWKS_BYTES, FetchError, HttpFetcher, HttpFetcherBuilder,
    JwksFetcher,
};
pub use mandate::{Chain, ChainHop, ChainIter, Mandate, StrIter, StrList, SubjectType};
pub use requirements::{DEFAULT_MAX_HOPS, Requirements};
pub use verifier::{
    DEFAULT_JWKS_COOLDOWN, DEFAULT_JWKS_MAX_STALENESS, DEFAULT_JWKS_TTL, DEFAULT_LEEWAY,
    DEFAULT_MAX_TOKEN_BYTES, Readiness, Verifier, VerifierBuilder,
};
