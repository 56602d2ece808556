//! Revocation and delegation-epoch stream messages, with the `_sig` HMAC check.
//!
//! Input: one flags byte (bits 0-1 pick the stream: revoke, epoch, another stream,
//! revoke; bit 2 means "a stream key is configured"), then UTF-8 `key=value` lines.
//! A `_sig=SIGN` line is replaced by the correct signature of the other fields, so
//! the fuzzer gets past the HMAC and into the parsers.
//!
//! Properties: no panic; a message the fuzzer signed with the right key is never
//! refused for its signature; an applied event never breaks the revocation set.
#![no_main]

use caracal_verifier::internals::parse_event;
use caracal_verifier::revocation::{
    DELEGATIONS_INVALIDATE_STREAM, EventError, RevocationSet, SESSIONS_REVOKE_STREAM, StreamKey,
    sign_fields,
};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let stream = match flags & 0b11 {
        1 => DELEGATIONS_INVALIDATE_STREAM,
        2 => "audit:events",
        _ => SESSIONS_REVOKE_STREAM,
    };
    let keyed = flags & 0b100 != 0;
    let mut fields: Vec<(String, String)> = text
        .split('\n')
        .map(|line| {
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let key = StreamKey::from_hex(KEY).expect("a valid key");
    let mut self_signed = false;
    if let Some(i) = fields.iter().position(|(k, v)| k == "_sig" && v == "SIGN") {
        let others: Vec<(String, String)> = fields
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, f)| f.clone())
            .collect();
        fields[i].1 = sign_fields(&key, stream, &others);
        self_signed = others.iter().all(|(k, _)| k != "_sig");
    }
    let result = parse_event(stream, &fields, keyed.then_some(KEY));
    if keyed && self_signed {
        assert!(
            !matches!(result, Err(EventError::BadSignature | EventError::Unsigned)),
            "a correctly signed message was refused: {result:?}"
        );
    }
    if let Ok(event) = result {
        let set = RevocationSet::new();
        set.apply(&event);
        for anchor in event.anchors() {
            assert!(set.is_revoked(anchor));
        }
    }
});
