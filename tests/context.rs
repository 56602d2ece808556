//! W3C trace context and baggage: hostile inputs first, then the contract values
//! (`tests/data/trace-context.json`), round trips and the Tower/axum plumbing.
//! Mandates are real: signed by a `TestIssuer`, verified by a `Verifier`.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use caracal_verifier::context::{
    MAX_BAGGAGE_BYTES, MAX_BAGGAGE_MEMBERS, MAX_HOP, PropagateLayer, RequestContext,
};
use caracal_verifier::layer::MandateLayer;
use caracal_verifier::testing::{ChainHop, MandateBuilder, TestIssuer};
use caracal_verifier::{Mandate, Requirements, Verifier};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt, service_fn};

const ZONE: &str = "zone-1";
const AUD: &str = "resource://api";
const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

struct Env {
    sts: TestIssuer,
    verifier: Verifier,
}

async fn env() -> Env {
    let sts = TestIssuer::start(ZONE).await.expect("start issuer");
    let verifier = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience(AUD)
        .zone(ZONE)
        .build()
        .expect("build verifier");
    Env { sts, verifier }
}

impl Env {
    async fn verify(&self, m: MandateBuilder) -> Mandate {
        self.verify_with(m, &Requirements::new()).await
    }
    async fn verify_with(&self, m: MandateBuilder, reqs: &Requirements) -> Mandate {
        self.verifier
            .verify(&m.sign(), reqs)
            .await
            .expect("the mandate verifies")
    }
    /// A mandate with every Caracal entry: two delegation edges.
    async fn full(&self) -> Mandate {
        self.verify(
            self.sts
                .mandate()
                .sid("authority-record-1")
                .agent_session("session-child")
                .delegation(2),
        )
        .await
    }
    async fn plain(&self) -> Mandate {
        self.verify(self.sts.mandate().sid("authority-record-1"))
            .await
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

fn outbound(ctx: &RequestContext) -> HeaderMap {
    let mut h = HeaderMap::new();
    ctx.inject(&mut h);
    h
}

fn header<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).map(|v| v.to_str().expect("ASCII"))
}

/// An independent reading of an outbound `baggage`: `key=value` members, values
/// percent-decoded. Panics on anything this crate must never emit.
fn decode_baggage(value: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for member in value.split(',') {
        let (k, v) = member.split_once('=').expect("key=value");
        assert!(!k.is_empty() && !v.is_empty(), "{member:?}");
        assert!(!v.contains(';'), "no properties are emitted");
        let mut bytes = Vec::new();
        let raw = v.as_bytes();
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'%' {
                let hex = std::str::from_utf8(&raw[i + 1..i + 3]).expect("hex");
                assert_eq!(hex, hex.to_uppercase(), "uppercase escapes");
                bytes.push(u8::from_str_radix(hex, 16).expect("hex"));
                i += 3;
            } else {
                assert!(
                    raw[i].is_ascii_alphanumeric() || b"-._~".contains(&raw[i]),
                    "unescaped {:?} in {v:?}",
                    raw[i] as char
                );
                bytes.push(raw[i]);
                i += 1;
            }
        }
        let prev = out.insert(k.to_owned(), String::from_utf8(bytes).expect("UTF-8"));
        assert!(prev.is_none(), "duplicate key {k}");
    }
    let keys: Vec<&String> = out.keys().collect();
    let order: Vec<&str> = value
        .split(',')
        .map(|m| m.split_once('=').expect("kv").0)
        .collect();
    assert_eq!(
        keys.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        order,
        "sorted key order"
    );
    out
}

fn traceparent_parts(h: &HeaderMap) -> (String, String, String, String) {
    let tp = header(h, "traceparent").expect("traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(tp.len(), 55);
    (
        parts[0].to_owned(),
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

// ---------------------------------------------------------------------------
// Forged caracal.* baggage

#[tokio::test]
async fn forged_caracal_baggage_never_reaches_the_context_or_the_wire() {
    let e = env().await;
    let plain = e.plain().await; // no agent session, no delegation
    let forged = [
        "caracal.session=evil,caracal.agent_session=evil,caracal.delegation_edge=evil,caracal.parent_edge=evil,caracal.hop=9,tenant=t",
        "CARACAL.SESSION=evil,Caracal.Agent_Session=evil,tenant=t",
        "caracal.session=evil;prop=1,caracal.other=evil,caracal.=evil,tenant=t",
        "caracal.session = evil , caracal.hop=%39 ,tenant=t",
        "caracal.session=ev il,caracal.hop=\"9\",tenant=t",
    ];
    for baggage in forged {
        let ctx = RequestContext::from_request(&headers(&[("baggage", baggage)]), &plain);
        assert_eq!(ctx.session(), "authority-record-1", "{baggage}");
        assert_eq!(ctx.agent_session(), None);
        assert_eq!(ctx.delegation_edge(), None);
        assert_eq!(ctx.parent_edge(), None);
        assert_eq!(ctx.hop(), 0);
        assert_eq!(
            ctx.baggage().collect::<Vec<_>>(),
            [("tenant", "t")],
            "{baggage}"
        );
        let out = outbound(&ctx);
        let wire = header(&out, "baggage").expect("baggage");
        assert!(!wire.contains("evil") && !wire.contains('9'), "{wire}");
        assert_eq!(
            decode_baggage(wire),
            BTreeMap::from([
                ("caracal.hop".to_owned(), "0".to_owned()),
                (
                    "caracal.session".to_owned(),
                    "authority-record-1".to_owned()
                ),
                ("tenant".to_owned(), "t".to_owned()),
            ])
        );
        assert!(!format!("{ctx:?}").contains("evil"));
    }
}

#[tokio::test]
async fn forged_entries_split_over_several_baggage_fields_are_dropped_too() {
    let e = env().await;
    let m = e.full().await;
    let h = headers(&[
        ("baggage", "tenant=t"),
        ("baggage", "caracal.delegation_edge=evil"),
        ("baggage", "caracal.parent_edge=evil"),
    ]);
    let ctx = RequestContext::from_request(&h, &m);
    assert_eq!(ctx.delegation_edge(), Some("edge-2"));
    assert_eq!(ctx.parent_edge(), Some("edge-1"));
    assert!(
        !header(&outbound(&ctx), "baggage")
            .expect("baggage")
            .contains("evil")
    );
}

// ---------------------------------------------------------------------------
// Caps, malformed input

fn members(n: usize) -> String {
    (0..n)
        .map(|i| format!("k{i:02}=v"))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test]
async fn baggage_over_the_member_cap_is_dropped_entirely() {
    let e = env().await;
    let m = e.plain().await;
    let ctx = RequestContext::from_request(&headers(&[("baggage", &members(64))]), &m);
    assert_eq!(ctx.baggage().len(), 64);
    let ctx = RequestContext::from_request(&headers(&[("baggage", &members(65))]), &m);
    assert_eq!(ctx.baggage().len(), 0);
    // Split over two fields, the combined header counts.
    let h = headers(&[("baggage", &members(40)), ("baggage", &members(25))]);
    assert_eq!(RequestContext::from_request(&h, &m).baggage().len(), 0);
    assert_eq!(
        header(&outbound(&RequestContext::from_request(&h, &m)), "baggage"),
        Some("caracal.hop=0,caracal.session=authority-record-1")
    );
}

#[tokio::test]
async fn baggage_over_the_byte_cap_is_dropped_entirely() {
    let e = env().await;
    let m = e.plain().await;
    let exact = format!("tenant=t,big={}", "v".repeat(MAX_BAGGAGE_BYTES - 13));
    assert_eq!(exact.len(), MAX_BAGGAGE_BYTES);
    let ctx = RequestContext::from_request(&headers(&[("baggage", &exact)]), &m);
    assert_eq!(ctx.baggage_value("tenant"), Some("t"));
    let over = format!("{exact}v");
    assert_eq!(over.len(), 8193);
    let ctx = RequestContext::from_request(&headers(&[("baggage", &over)]), &m);
    assert_eq!(ctx.baggage().len(), 0);
    // Two fields that only together exceed the cap.
    let half = format!("a={}", "v".repeat(MAX_BAGGAGE_BYTES / 2));
    let h = headers(&[("baggage", &half), ("baggage", &half.replace("a=", "b="))]);
    assert_eq!(RequestContext::from_request(&h, &m).baggage().len(), 0);
    // Many small fields: the work stops at the cap.
    let mut h = HeaderMap::new();
    for _ in 0..100_000 {
        h.append("baggage", HeaderValue::from_static("k=v"));
    }
    assert_eq!(RequestContext::from_request(&h, &m).baggage().len(), 0);
}

#[tokio::test]
async fn malformed_baggage_members_are_dropped_one_by_one() {
    let e = env().await;
    let m = e.plain().await;
    let cases = [
        "bad=%zz",       // not an escape
        "bad=%4",        // truncated escape
        "bad=%",         // lone percent
        "bad=%C3%28",    // invalid UTF-8 after decoding
        "bad=%ED%A0%80", // a UTF-16 surrogate
        "bad=%00",       // NUL
        "bad=%0D%0Aset", // CR LF
        "bad=%1B[31m",   // ESC
        "bad=%C2%85",    // C1 control (NEL)
        "bad=a b",       // space
        "bad=\"q\"",     // quote
        "bad=a\\b",      // backslash
        "bad",           // no value
        "=v",            // no key
        "b d=v",         // key not a token
        "bad=v;",        // empty property
        "bad=v;p=\"x\"", // bad property value
        "bad=\tv\tw",    // inner tab
    ];
    for bad in cases {
        let h = headers(&[("baggage", &format!("a=1,{bad},z=2"))]);
        let ctx = RequestContext::from_request(&h, &m);
        assert_eq!(
            ctx.baggage().collect::<Vec<_>>(),
            [("a", "1"), ("z", "2")],
            "{bad:?}"
        );
    }
    // Obsolete text bytes and control characters are legal in an http header
    // value but not in baggage.
    let mut h = HeaderMap::new();
    h.insert(
        "baggage",
        HeaderValue::from_bytes(b"a=1,bad=\xff\xfe,z=2").expect("obs-text"),
    );
    let ctx = RequestContext::from_request(&h, &m);
    assert_eq!(ctx.baggage().collect::<Vec<_>>(), [("a", "1"), ("z", "2")]);
}

#[tokio::test]
async fn baggage_properties_are_validated_then_dropped() {
    let e = env().await;
    let m = e.plain().await;
    let h = headers(&[("baggage", "k=v%201;ttl=3600;flag , j = w ")]);
    let ctx = RequestContext::from_request(&h, &m);
    assert_eq!(
        ctx.baggage().collect::<Vec<_>>(),
        [("j", "w"), ("k", "v 1")]
    );
    let wire = header(&outbound(&ctx), "baggage")
        .expect("baggage")
        .to_owned();
    assert!(wire.ends_with(",j=w,k=v%201"), "{wire}");
}

#[tokio::test]
async fn pass_through_is_dropped_before_caracal_entries_when_over_the_caps() {
    let e = env().await;
    let m = e.full().await;
    // 64 third-party members fit inbound; with 5 caracal.* entries, 5 must go.
    let ctx = RequestContext::from_request(&headers(&[("baggage", &members(64))]), &m);
    assert_eq!(ctx.baggage().len(), 64);
    let wire = header(&outbound(&ctx), "baggage")
        .expect("baggage")
        .to_owned();
    let sent = decode_baggage(&wire);
    assert_eq!(sent.len(), MAX_BAGGAGE_MEMBERS);
    for key in [
        "caracal.session",
        "caracal.agent_session",
        "caracal.delegation_edge",
        "caracal.parent_edge",
        "caracal.hop",
    ] {
        assert!(sent.contains_key(key), "{key} kept");
    }
    // Kept in key order: k00..k58.
    assert!(sent.contains_key("k58") && !sent.contains_key("k59"));

    // Bytes: escaping triples '!' so the member no longer fits, the others do.
    let bang = format!("a=1,b={},c=3", "!".repeat(3000));
    let ctx = RequestContext::from_request(&headers(&[("baggage", &bang)]), &m);
    assert_eq!(ctx.baggage().len(), 3);
    let wire = header(&outbound(&ctx), "baggage")
        .expect("baggage")
        .to_owned();
    assert!(wire.len() <= MAX_BAGGAGE_BYTES);
    let sent = decode_baggage(&wire);
    assert_eq!(sent.get("a").map(String::as_str), Some("1"));
    assert_eq!(sent.get("c").map(String::as_str), Some("3"));
    assert!(!sent.contains_key("b"));
    assert_eq!(sent.len(), 7);
}

#[tokio::test]
async fn caracal_entries_are_escaped_and_never_exceed_the_cap() {
    let e = env().await;
    let odd = e
        .verify(
            e.sts
                .mandate()
                .sid("rec 1/ü,=;")
                .agent_session("session\u{7}bell"),
        )
        .await;
    let ctx = RequestContext::from_request(&HeaderMap::new(), &odd);
    let wire = header(&outbound(&ctx), "baggage")
        .expect("baggage")
        .to_owned();
    assert_eq!(
        wire,
        "caracal.agent_session=session%07bell,caracal.hop=0,caracal.session=rec%201%2F%C3%BC%2C%3D%3B"
    );
    assert_eq!(decode_baggage(&wire)["caracal.session"], "rec 1/ü,=;");

    // A sid longer than the cap: no baggage rather than one every parser drops.
    let huge = e
        .verify(e.sts.mandate().sid("s".repeat(MAX_BAGGAGE_BYTES)))
        .await;
    let ctx = RequestContext::from_request(&headers(&[("baggage", "tenant=t")]), &huge);
    let out = outbound(&ctx);
    assert_eq!(header(&out, "baggage"), None);
    assert!(header(&out, "traceparent").is_some());
}

// ---------------------------------------------------------------------------
// traceparent and tracestate

#[tokio::test]
async fn invalid_traceparents_start_a_new_trace_and_drop_tracestate() {
    let e = env().await;
    let m = e.plain().await;
    let bad = [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        "",
        "garbage",
    ];
    for tp in bad {
        let h = headers(&[("traceparent", tp), ("tracestate", "vendor=value")]);
        let ctx = RequestContext::from_request(&h, &m);
        assert!(!ctx.is_continued(), "{tp:?}");
        assert_ne!(ctx.trace_id(), TRACE);
        assert!(is_lower_hex(ctx.trace_id(), 32));
        assert_ne!(ctx.trace_id(), "0".repeat(32));
        assert_eq!(
            ctx.trace_state(),
            None,
            "tracestate needs a valid traceparent"
        );
        assert_eq!(ctx.trace_flags(), 0x01);
        let out = outbound(&ctx);
        assert_eq!(header(&out, "tracestate"), None);
        let (version, trace, span, flags) = traceparent_parts(&out);
        assert_eq!((version.as_str(), flags.as_str()), ("00", "01"));
        assert_eq!(trace, ctx.trace_id());
        assert!(is_lower_hex(&span, 16));
    }
    // Two traceparent fields: ambiguous, so a new trace.
    let h = headers(&[("traceparent", TP), ("traceparent", TP)]);
    assert!(!RequestContext::from_request(&h, &m).is_continued());
    // Two requests without a traceparent get different traces.
    let a = RequestContext::from_request(&HeaderMap::new(), &m);
    let b = RequestContext::from_request(&HeaderMap::new(), &m);
    assert_ne!(a.trace_id(), b.trace_id());
}

#[tokio::test]
async fn future_traceparent_versions_are_continued_as_version_00() {
    let e = env().await;
    let m = e.plain().await;
    let tp = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff-future-fields";
    let ctx = RequestContext::from_request(&headers(&[("traceparent", tp)]), &m);
    assert!(ctx.is_continued());
    assert_eq!(ctx.trace_id(), TRACE);
    assert_eq!(ctx.parent_span_id(), Some("00f067aa0ba902b7"));
    // Reserved flag bits are sent as zero; sampled and random are kept.
    assert_eq!(ctx.trace_flags(), 0x03);
    let (version, trace, _, flags) = traceparent_parts(&outbound(&ctx));
    assert_eq!(
        (version.as_str(), trace.as_str(), flags.as_str()),
        ("00", TRACE, "03")
    );

    let unsampled = TP.replace("-01", "-00");
    let ctx = RequestContext::from_request(&headers(&[("traceparent", &unsampled)]), &m);
    assert!(!ctx.is_sampled());
    assert_eq!(traceparent_parts(&outbound(&ctx)).3, "00");
}

#[tokio::test]
async fn tracestate_is_strict_and_bounded() {
    let e = env().await;
    let m = e.plain().await;
    let state = |pairs: &[(&str, &str)]| {
        let mut all = vec![("traceparent", TP)];
        all.extend_from_slice(pairs);
        RequestContext::from_request(&headers(&all), &m)
            .trace_state()
            .map(str::to_owned)
    };
    assert_eq!(
        state(&[("tracestate", "vendor=value")]).as_deref(),
        Some("vendor=value")
    );
    assert_eq!(
        state(&[("tracestate", "a=1 , b@sys=2"), ("tracestate", "c=3")]).as_deref(),
        Some("a=1,b@sys=2,c=3")
    );
    let thirty_three: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    assert!(state(&[("tracestate", &thirty_three[..32].join(","))]).is_some());
    assert_eq!(state(&[("tracestate", &thirty_three.join(","))]), None);
    assert_eq!(state(&[("tracestate", "a=1,a=2")]), None, "duplicate key");
    assert_eq!(state(&[("tracestate", "a=1"), ("tracestate", "a=2")]), None);
    assert_eq!(
        state(&[("tracestate", "Vendor=value")]),
        None,
        "uppercase key"
    );
    assert_eq!(state(&[("tracestate", "vendor=val\tx")]), None);
    assert_eq!(state(&[("tracestate", "")]), None);
    let huge: Vec<String> = (0..40)
        .map(|i| format!("k{i}={}", "v".repeat(255)))
        .collect();
    let huge = huge.join(",");
    assert_eq!(
        state(&[("tracestate", &huge)]),
        None,
        "over 32 members and 8 KiB"
    );
    let mut h = headers(&[("traceparent", TP)]);
    for i in 0..10_000 {
        h.append(
            "tracestate",
            HeaderValue::from_str(&format!("k{i}=v")).expect("v"),
        );
    }
    let ctx = RequestContext::from_request(&h, &m);
    assert_eq!(ctx.trace_state(), None);
    assert_eq!(ctx.trace_id(), TRACE, "a bad tracestate keeps the trace");
}

// ---------------------------------------------------------------------------
// Contract values

fn data() -> Value {
    serde_json::from_str(include_str!("data/trace-context.json")).expect("test data")
}

fn chain(v: &Value) -> Vec<ChainHop> {
    v.as_array()
        .expect("chain")
        .iter()
        .map(|h| ChainHop {
            application_id: h["application_id"].as_str().expect("app").to_owned(),
            agent_session_id: h["agent_session_id"].as_str().map(str::to_owned),
            delegation_edge_id: h["delegation_edge_id"].as_str().map(str::to_owned),
        })
        .collect()
}

#[tokio::test]
async fn contract_headers_and_entries() {
    let e = env().await;
    let d = data();
    let incoming = &d["incoming"];
    let h = headers(&[
        ("traceparent", incoming["traceparent"].as_str().expect("tp")),
        ("tracestate", incoming["tracestate"].as_str().expect("ts")),
        ("baggage", incoming["baggage"].as_str().expect("baggage")),
    ]);
    let pass: Vec<(String, String)> = d["pass_through"]
        .as_object()
        .expect("object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string").to_owned()))
        .collect();
    for case in d["mandates"].as_array().expect("mandates") {
        let path: Vec<&str> = case["delegation_path"]
            .as_array()
            .expect("path")
            .iter()
            .map(|v| v.as_str().expect("edge"))
            .collect();
        let m = e
            .verify_with(
                e.sts
                    .mandate()
                    .client_id("app-1")
                    .sid(case["sid"].as_str().expect("sid"))
                    .agent_session(case["agent_session_id"].as_str().expect("agent"))
                    .claim("delegation_edge_id", case["delegation_edge_id"].clone())
                    .delegation_path(path)
                    .chain(chain(&case["chain"]))
                    .hop_count(case["hop_count"].as_u64().expect("hops")),
                &Requirements::new().delegation(),
            )
            .await;
        let ctx = RequestContext::from_request(&h, &m);
        let name = case["name"].as_str().expect("name");
        assert_eq!(ctx.trace_id(), d["incoming_trace_id"], "{name}");
        assert_eq!(ctx.parent_span_id(), d["incoming_parent_id"].as_str());
        assert_eq!(ctx.trace_state(), incoming["tracestate"].as_str());
        let got: Vec<(String, String)> = ctx
            .baggage()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(got, pass, "{name}");

        let out = outbound(&ctx);
        assert_eq!(
            header(&out, "baggage"),
            case["outbound_baggage"].as_str(),
            "{name}"
        );
        assert_eq!(header(&out, "tracestate"), incoming["tracestate"].as_str());
        let (_, trace, span, flags) = traceparent_parts(&out);
        assert_eq!(trace, d["incoming_trace_id"].as_str().expect("trace"));
        assert_ne!(span, d["incoming_parent_id"].as_str().expect("parent"));
        assert_eq!(flags, "01");

        let mut expected: BTreeMap<String, String> = case["entries"]
            .as_object()
            .expect("entries")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("string").to_owned()))
            .collect();
        expected.extend(pass.iter().cloned());
        let wire = header(&out, "baggage").expect("baggage");
        assert_eq!(decode_baggage(wire), expected, "{name}");
        // The schema: caracal.hop is decimal digits.
        assert!(expected["caracal.hop"].bytes().all(|b| b.is_ascii_digit()));
    }
}

#[tokio::test]
async fn hop_is_capped_at_caracals_max() {
    let e = env().await;
    let deep = e
        .verify_with(
            e.sts.mandate().delegation(12),
            &Requirements::new().max_hops(12),
        )
        .await;
    assert_eq!(deep.hops(), 12);
    let ctx = RequestContext::from_request(&HeaderMap::new(), &deep);
    assert_eq!(ctx.hop(), MAX_HOP);
    assert_eq!(ctx.parent_edge(), Some("edge-11"));
    assert_eq!(
        decode_baggage(header(&outbound(&ctx), "baggage").expect("b"))["caracal.hop"],
        "10"
    );
}

#[tokio::test]
async fn parent_edge_comes_from_the_verified_lineage_only() {
    let e = env().await;
    // One edge: no parent.
    let one = e.verify(e.sts.mandate().delegation(1)).await;
    let ctx = RequestContext::from_request(&HeaderMap::new(), &one);
    assert_eq!(
        (ctx.delegation_edge(), ctx.parent_edge()),
        (Some("edge-1"), None)
    );
    // A chain without delegation_path.
    let no_path = e
        .verify(
            e.sts
                .mandate()
                .delegation(3)
                .remove_claim("delegation_path"),
        )
        .await;
    let ctx = RequestContext::from_request(&HeaderMap::new(), &no_path);
    assert_eq!(ctx.parent_edge(), Some("edge-2"));
    // A path that does not end at the mandate's edge: no guess.
    let odd = e
        .verify(
            e.sts
                .mandate()
                .delegation(2)
                .delegation_path(["edge-1", "edge-x"]),
        )
        .await;
    assert_eq!(
        RequestContext::from_request(&HeaderMap::new(), &odd).parent_edge(),
        None
    );
}

// ---------------------------------------------------------------------------
// Round trip, span ids, Debug

#[tokio::test]
async fn inject_then_parse_round_trips() {
    let e = env().await;
    let first = e.full().await;
    let h = headers(&[
        ("traceparent", TP),
        ("tracestate", "vendor=value,other@sys=x y"),
        ("baggage", "tenant=ex%20ample,k=%E2%9C%93;p,plus=a+b"),
    ]);
    let upstream = RequestContext::from_request(&h, &first);
    let wire = outbound(&upstream);

    // The next service verifies its own mandate and parses what we sent.
    let second = e.plain().await;
    let downstream = RequestContext::from_request(&wire, &second);
    assert_eq!(downstream.trace_id(), upstream.trace_id());
    assert_eq!(downstream.trace_state(), upstream.trace_state());
    assert_eq!(downstream.trace_flags(), upstream.trace_flags());
    assert_eq!(
        downstream.baggage().collect::<Vec<_>>(),
        upstream.baggage().collect::<Vec<_>>()
    );
    assert_eq!(
        downstream.baggage().collect::<Vec<_>>(),
        [("k", "✓"), ("plus", "a+b"), ("tenant", "ex ample")]
    );
    let sent_span = traceparent_parts(&wire).2;
    assert_eq!(downstream.parent_span_id(), Some(sent_span.as_str()));
    // The caracal.* entries we sent are the downstream's incoming, hence dropped:
    // it takes its own from its mandate.
    assert_eq!(downstream.agent_session(), None);
    assert_eq!(downstream.delegation_edge(), None);
    assert_eq!(downstream.hop(), 0);
    // And its outbound baggage is stable under a second round.
    let again = RequestContext::from_request(&outbound(&downstream), &second);
    assert_eq!(
        header(&outbound(&again), "baggage"),
        header(&outbound(&downstream), "baggage")
    );
}

#[tokio::test]
async fn every_inject_has_a_new_span_id() {
    let e = env().await;
    let m = e.plain().await;
    let ctx = RequestContext::from_request(&headers(&[("traceparent", TP)]), &m);
    assert!(is_lower_hex(ctx.span_id(), 16));
    assert_ne!(ctx.span_id(), "00f067aa0ba902b7");
    let mut spans = std::collections::HashSet::new();
    for _ in 0..100 {
        let (_, trace, span, _) = traceparent_parts(&outbound(&ctx));
        assert_eq!(trace, TRACE);
        assert!(is_lower_hex(&span, 16) && span != "0".repeat(16));
        assert_ne!(span, ctx.span_id());
        assert!(spans.insert(span), "span ids repeat");
    }
}

/// The context reads its headers on first use: whichever accessor, clone or thread
/// reads first, every reader sees the same ids from then on, and the headers it was
/// built from can change or go without changing it.
#[tokio::test]
async fn ids_read_on_first_use_are_fixed_for_every_reader() {
    let e = env().await;
    let m = e.plain().await;
    for incoming in [headers(&[("traceparent", TP)]), HeaderMap::new()] {
        let mut source = incoming.clone();
        let ctx = RequestContext::from_request(&source, &m);
        source.clear();
        let clones: Vec<RequestContext> = (0..4).map(|_| ctx.clone()).collect();
        let seen: Vec<(String, String)> = std::thread::scope(|s| {
            let handles: Vec<_> = clones
                .iter()
                .map(|c| s.spawn(move || (c.span_id().to_owned(), c.trace_id().to_owned())))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (span, trace) in &seen {
            assert_eq!(span, ctx.span_id());
            assert_eq!(trace, ctx.trace_id());
        }
        assert_eq!(ctx.is_continued(), !incoming.is_empty());
        if ctx.is_continued() {
            assert_eq!(ctx.trace_id(), TRACE);
            assert_eq!(ctx.parent_span_id(), Some("00f067aa0ba902b7"));
        }
        assert_eq!(traceparent_parts(&outbound(&ctx)).1, ctx.trace_id());
    }
}

#[tokio::test]
async fn inject_replaces_what_was_there() {
    let e = env().await;
    let m = e.plain().await;
    let ctx = RequestContext::from_request(&HeaderMap::new(), &m);
    let mut h = headers(&[
        ("traceparent", TP),
        ("traceparent", TP),
        ("tracestate", "stale=1"),
        ("baggage", "caracal.session=stale"),
        ("baggage", "more=1"),
    ]);
    ctx.inject(&mut h);
    assert_eq!(h.get_all("traceparent").iter().count(), 1);
    assert_eq!(traceparent_parts(&h).1, ctx.trace_id());
    assert_eq!(h.get("tracestate"), None);
    assert_eq!(
        h.get_all("baggage").iter().collect::<Vec<_>>(),
        ["caracal.hop=0,caracal.session=authority-record-1"]
    );
}

#[tokio::test]
async fn debug_shows_no_baggage_or_tracestate_values() {
    let e = env().await;
    let m = e.full().await;
    let h = headers(&[
        ("traceparent", TP),
        ("tracestate", "vendor=secret-state"),
        ("baggage", "api_key=secret-value,user=alice"),
    ]);
    let ctx = RequestContext::from_request(&h, &m);
    let debug = format!("{ctx:?}");
    assert!(!debug.contains("secret"), "{debug}");
    assert!(!debug.contains("alice"), "{debug}");
    assert!(debug.contains("api_key") && debug.contains(TRACE));
    assert!(debug.contains("authority-record-1"));
}

#[tokio::test]
async fn random_header_bytes_never_panic() {
    let e = env().await;
    let m = e.full().await;
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet: &[u8] = b"0123456789abcdefABCDEF-=,;%@ \t.caracl_sion\x80\xff\"\\";
    let mut accepted = 0;
    for round in 0..3_000 {
        let mut h = HeaderMap::new();
        for name in ["traceparent", "tracestate", "baggage"] {
            for _ in 0..(next() % 3) {
                let len = match next() % 3 {
                    0 => 55,
                    1 => (next() % 200) as usize,
                    _ => (next() % 9_000) as usize,
                };
                let bytes: Vec<u8> = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                    h.append(name, v);
                    accepted += 1;
                }
            }
        }
        if round % 7 == 0 {
            h.insert("traceparent", HeaderValue::from_static(TP));
        }
        let ctx = RequestContext::from_request(&h, &m);
        let out = outbound(&ctx);
        let wire = header(&out, "baggage").expect("caracal entries always go");
        assert!(wire.len() <= MAX_BAGGAGE_BYTES);
        let sent = decode_baggage(wire);
        assert!(sent.len() <= MAX_BAGGAGE_MEMBERS);
        assert_eq!(sent["caracal.session"], "authority-record-1");
        assert_eq!(sent["caracal.delegation_edge"], "edge-2");
        traceparent_parts(&out);
    }
    assert!(accepted > 1_000);
}

// ---------------------------------------------------------------------------
// Outbound Tower layer

#[tokio::test]
async fn propagate_layer_injects_the_context_from_extensions() {
    let e = env().await;
    let m = e.full().await;
    let ctx = RequestContext::from_request(&headers(&[("traceparent", TP)]), &m);
    let client = ServiceBuilder::new()
        .layer(PropagateLayer::new())
        .service(service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(req.headers().clone()))
        }));

    let mut with = Request::get("/").body(()).expect("request");
    with.extensions_mut().insert(ctx.clone());
    let sent = client
        .clone()
        .oneshot(with)
        .await
        .expect("infallible")
        .into_body();
    assert_eq!(traceparent_parts(&sent).1, TRACE);
    assert_eq!(
        decode_baggage(header(&sent, "baggage").expect("baggage"))["caracal.parent_edge"],
        "edge-1"
    );

    let without = Request::get("/")
        .header("baggage", "mine=1")
        .body(())
        .expect("request");
    let sent = client
        .oneshot(without)
        .await
        .expect("infallible")
        .into_body();
    assert_eq!(header(&sent, "baggage"), Some("mine=1"));
    assert_eq!(header(&sent, "traceparent"), None);
}

// ---------------------------------------------------------------------------
// axum extractor

async fn show(ctx: RequestContext) -> String {
    format!("{} {}", ctx.trace_id(), ctx.session())
}

async fn maybe(ctx: Option<RequestContext>) -> &'static str {
    if ctx.is_some() { "some" } else { "none" }
}

async fn body(resp: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .expect("body");
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

#[tokio::test]
async fn axum_extractor_takes_the_attached_context() {
    let e = env().await;
    let app = Router::new()
        .route("/", get(show))
        .route("/maybe", get(maybe))
        .layer(MandateLayer::new(e.verifier.clone(), Requirements::new()).optional());
    let token = e.sts.mandate().sid("authority-record-1").sign();
    let req = Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .header("traceparent", TP)
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body(resp).await, format!("{TRACE} authority-record-1"));

    // Anonymous, let through by the optional layer: the Mandate extractor's 401.
    let anon = Request::get("/").body(Body::empty()).expect("request");
    let resp = app.clone().oneshot(anon).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(body(resp).await.contains("missing_token"));
    let anon = Request::get("/maybe").body(Body::empty()).expect("request");
    assert_eq!(
        body(app.oneshot(anon).await.expect("infallible")).await,
        "none"
    );
}

/// The mandate layer attaches the context itself, from the verified claims: the
/// incoming trace is kept, forged `caracal.*` baggage is not, and a stacked layer
/// keeps the outer layer's context (and its span).
#[tokio::test]
async fn the_mandate_layer_attaches_the_context() {
    let e = env().await;
    let app = Router::new()
        .route(
            "/",
            get(|ctx: RequestContext| async move {
                format!(
                    "{} {} {} {:?}",
                    ctx.trace_id(),
                    ctx.span_id(),
                    ctx.session(),
                    ctx.baggage_value("caracal.session")
                )
            }),
        )
        .route_layer(MandateLayer::new(
            e.verifier.clone(),
            Requirements::new().scopes(["tickets:read"]),
        ))
        .layer(MandateLayer::new(e.verifier.clone(), Requirements::new()));
    let token = e
        .sts
        .mandate()
        .sid("authority-record-1")
        .scopes(["tickets:read"])
        .sign();
    let req = Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .header("traceparent", TP)
        .header("baggage", "caracal.session=forged,tenant=example")
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let text = body(resp).await;
    let parts: Vec<&str> = text.split(' ').collect();
    assert_eq!(parts[0], TRACE, "{text}");
    assert_eq!(parts[1].len(), 16, "{text}");
    assert_ne!(parts[1], "00f067aa0ba902b7", "a new span for this service");
    assert_eq!(parts[2], "authority-record-1", "{text}");
    assert_eq!(
        parts[3], "None",
        "forged caracal.* baggage never reaches the context"
    );

    // No layer at all: 401 missing_token, as for Mandate.
    let bare = Router::new().route("/", get(show));
    let resp = bare
        .oneshot(Request::get("/").body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
}
