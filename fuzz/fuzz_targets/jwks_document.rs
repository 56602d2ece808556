//! JWKS document parsing (ES256 accepted, as the default verifier), plus the ES256
//! key-construction and verify path on raw bytes.
//!
//! Properties: no panic; a document yields at most as many usable keys as its
//! `keys` array has entries, and yields keys only when it is valid JSON.
#![no_main]

use caracal_verifier::internals::{parse_jwks, verify_es256};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let usable = parse_jwks(data);
    if usable > 0 {
        let doc: serde_json::Value =
            serde_json::from_slice(data).expect("a document with usable keys is valid JSON");
        let entries = doc["keys"].as_array().expect("a keys array").len();
        assert!(
            usable <= entries,
            "{usable} usable keys from {entries} entries"
        );
    }
    // The same bytes as (point, signature, message): must never panic.
    if data.len() >= 65 + 64 {
        let (point, rest) = data.split_at(65);
        let (sig, msg) = rest.split_at(64);
        let _ = verify_es256(point, msg, sig);
    }
});
