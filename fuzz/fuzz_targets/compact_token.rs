//! The compact JWS parser with strict claims parsing: split → header → payload, as the
//! verifier runs them before and after the signature check.
//!
//! Properties: no panic, no stack overflow, bounded work; every failure is
//! `invalid_token` with a parser reason (or `zone_invalid` when `zone_id` is the
//! payload's only fault); the error text is fixed vocabulary, so it
//! never echoes the token.
#![no_main]

use caracal_verifier::internals::split_and_parse;
use caracal_verifier::{ErrorCode, InvalidReason};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Bearer tokens reach the verifier as `&str`.
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(err) = split_and_parse(token) {
        if err.code() == ErrorCode::ZoneInvalid {
            assert_eq!(err.to_string(), "zone mismatch");
            return;
        }
        assert_eq!(err.code(), ErrorCode::InvalidToken);
        assert!(
            matches!(
                err.reason(),
                Some(InvalidReason::Malformed | InvalidReason::Header | InvalidReason::Claims)
            ),
            "unexpected reason {:?}",
            err.reason()
        );
        // The message is fixed vocabulary: it can never echo the token.
        let reason = err.reason().map_or("", |r| r.as_str());
        assert_eq!(err.to_string(), format!("invalid token: {reason}"));
    }
});
