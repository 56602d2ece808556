//! The strict claims parser on raw JSON (the decoded payload).
//!
//! Properties: no panic or stack overflow on any input; every failure is
//! `invalid_token`/`claims`, or `zone_invalid` when `zone_id` is the only fault; and
//! the parser is never more lenient than serde_json: whatever it accepts is a JSON
//! object serde_json also accepts. The allocation-free fast path never accepts what
//! the strict serde parser refuses, and parses what it accepts exactly as the strict
//! parser does (`claims_fast_path_agrees` panics if not).
#![no_main]

use caracal_verifier::internals::{claims_fast_path_agrees, parse_claims_json};
use caracal_verifier::{ErrorCode, InvalidReason};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    claims_fast_path_agrees(data);
    match parse_claims_json(data) {
        Ok(()) => {
            let value: serde_json::Value =
                serde_json::from_slice(data).expect("accepted claims are valid JSON");
            assert!(value.is_object(), "accepted claims are an object");
        }
        // A payload whose only fault is its `zone_id` is `zone_invalid`.
        Err(err) if err.code() == ErrorCode::ZoneInvalid => {}
        Err(err) => {
            assert_eq!(err.code(), ErrorCode::InvalidToken);
            assert_eq!(err.reason(), Some(InvalidReason::Claims));
        }
    }
});
