//! The signature algorithms the verifier can accept, and their JOSE names.

use std::fmt;

use jsonwebtoken::jwk::KeyAlgorithm;

/// A signature algorithm the verifier can accept.
///
/// Only [`Algorithm::ES256`] is accepted by default. The others are opt-in through
/// [`VerifierBuilder::algorithms`](crate::VerifierBuilder::algorithms). `none` and every
/// HMAC algorithm have no variant, so they can never be accepted: a public key must
/// never become an HMAC secret.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256, raw 64-byte `r‖s` signatures. The Caracal default.
    ES256,
    /// ECDSA P-384 with SHA-384, raw 96-byte signatures.
    ES384,
    /// Ed25519.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048 bits and up.
    RS256,
    /// RSASSA-PSS with SHA-256, 2048 bits and up.
    PS256,
}

impl Algorithm {
    /// The JOSE name, e.g. `"ES256"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
        }
    }

    /// Exact, case-sensitive lookup of a JOSE name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "EdDSA" => Algorithm::EdDSA,
            "RS256" => Algorithm::RS256,
            "PS256" => Algorithm::PS256,
            _ => return None,
        })
    }

    /// The algorithm a JWK's `alg` member names, if the verifier supports it.
    pub(crate) fn from_key_algorithm(alg: KeyAlgorithm) -> Option<Self> {
        Some(match alg {
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::ES384 => Algorithm::ES384,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            _ => return None,
        })
    }

    /// The fixed signature length, where the algorithm has one.
    pub(crate) const fn signature_len(self) -> Option<usize> {
        match self {
            Algorithm::ES256 | Algorithm::EdDSA => Some(64),
            Algorithm::ES384 => Some(96),
            Algorithm::RS256 | Algorithm::PS256 => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
