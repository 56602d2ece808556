//! A pass-through hasher for keys that are already keyed, uniformly distributed
//! 64-bit hashes (token and anchor fingerprints): hashing them again is wasted work.

use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a `u64` as itself.
#[derive(Default)]
pub(crate) struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by the maps here; fold anything else in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// `BuildHasher` for maps keyed by fingerprints.
pub(crate) type BuildIdentity = BuildHasherDefault<Identity>;
