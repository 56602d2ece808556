//! Bearer extraction from `Authorization` headers, as the Tower layer runs it.
//!
//! The input is split on `\n` into header values (one or more `Authorization`
//! headers). Properties: no panic; success only for exactly one header whose scheme
//! is `Bearer` (any case), yielding a non-empty run of visible ASCII that appears in
//! that header; every failure is `missing_token` or `invalid_token` (malformed).
#![no_main]

use caracal_verifier::internals::bearer;
use caracal_verifier::{ErrorCode, InvalidReason};
use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for part in data.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(part) {
            headers.append(AUTHORIZATION, v);
        }
    }
    match bearer(&headers) {
        Ok(token) => {
            let values: Vec<_> = headers.get_all(AUTHORIZATION).iter().collect();
            assert_eq!(values.len(), 1, "a token from several Authorization headers");
            let raw = values[0].as_bytes();
            assert!(raw.len() > 6 && raw[..6].eq_ignore_ascii_case(b"bearer"));
            assert!(!token.is_empty());
            assert!(token.bytes().all(|b| b.is_ascii_graphic()));
            assert!(raw.windows(token.len()).any(|w| w == token.as_bytes()));
        }
        Err(err) => match err.code() {
            ErrorCode::MissingToken => {}
            ErrorCode::InvalidToken => assert_eq!(err.reason(), Some(InvalidReason::Malformed)),
            other => panic!("unexpected code {other:?}"),
        },
    }
});
