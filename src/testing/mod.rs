//! Test kit (feature `test-util`): a fake Caracal issuer with zone keys, a loopback
//! JWKS server and a mandate minter.
//!
//! ```
//! # #[tokio::main] async fn main() {
//! use caracal_verifier::testing::TestIssuer;
//!
//! let issuer = TestIssuer::start("zone-1").await.expect("bind a loopback port");
//! let token = issuer.mandate().scopes(["read", "write"]).sign();
//! assert_eq!(token.split('.').count(), 3);
//! # }
//! ```
//!
//! [`TestIssuer::start`] binds `127.0.0.1:0` and serves
//! `GET /.well-known/jwks.json?zone_id={zone}` as `{"keys":[…]}` with
//! `Cache-Control: max-age=300` (404 for an unknown zone). Point a verifier at
//! [`TestIssuer::issuer_url`] and the same zone, then mint mandates with
//! [`TestIssuer::mandate`]: the defaults form a valid `use=resource` mandate, and every
//! claim and header parameter can be changed or removed to build invalid ones.
//!
//! For key-management tests use [`TestIssuer::rotate_key`], [`TestIssuer::add_zone`],
//! [`TestIssuer::remove_key`] and [`TestIssuer::publish_raw_key`]; for network faults
//! install a [`JwksFault`] with [`TestIssuer::set_fault`] and count fetches with
//! [`TestIssuer::jwks_requests`]. Use [`TestIssuer::set_clock`] with the verifier's
//! [`ManualClock`](crate::ManualClock) so default `iat`/`exp` follow test time.
//!
//! The issuer's private keys never leave this module: `Debug` output shows only kids.
#![cfg_attr(docsrs, doc(cfg(feature = "test-util")))]

mod issuer;
mod server;

pub use issuer::{ChainHop, MandateBuilder, TestIssuer};
pub use server::JwksFault;
