//! Revocation: the in-process set of revoked anchors and delegation epochs, and the
//! event type of Caracal's revocation streams.
//!
//! The verifier checks every request against the set: `sid`, `root_sid`,
//! `agent_session_id`, `delegation_edge_id` and each delegation chain hop's session
//! and edge. Revoking any upstream link therefore rejects everything downstream.
//!
//! ```
//! use caracal_verifier::revocation::RevocationSet;
//!
//! let set = RevocationSet::new();
//! set.revoke("delegation-1");
//! assert!(set.is_revoked("delegation-1"));
//! ```

mod event;
mod feed;
mod set;

pub use event::{
    ANCHOR_FIELDS, DELEGATIONS_INVALIDATE_STREAM, EventError, MAX_FIELD_NAME_BYTES,
    RevocationEvent, SESSIONS_REVOKE_STREAM, StreamKey, canonical_form, is_valid_field_name,
    sign_fields, verify_fields,
};
pub(crate) use feed::FeedHealth;
pub use feed::{DEFAULT_MAX_STALENESS, DropReason, FeedStatus};
pub(crate) use set::{Anchor, fingerprint};
pub use set::{DEFAULT_REVOCATION_TTL, RevocationSet, RevocationSetBuilder};
