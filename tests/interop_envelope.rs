//! Interoperability of the `context` module with Caracal's own envelope codec
//! (`caracalai.envelope` in the published `caracalai-sdk` package).
//!
//! Run it with `bash interop/run`, which installs the package pinned in
//! `interop/requirements.txt` and sets `CARACAL_INTEROP_PYTHON`. The test is
//! `#[ignore]`d so a plain `cargo test` needs no Python.
//!
//! - **ours → theirs**: what [`RequestContext::inject`] writes, Caracal's
//!   `from_headers` reads back to the same trace id, flags, trace state, `caracal.*`
//!   values and third-party baggage.
//! - **theirs → ours**: what Caracal's `to_headers` writes, [`RequestContext`] reads
//!   to the same trace id, flags, trace state and third-party baggage; given a mandate
//!   with the same authority values, it writes byte for byte the same `baggage`.
//!
//! `interop/caracal_envelope.py` runs the codec: one process, one JSON request.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use caracal_verifier::context::RequestContext;
use caracal_verifier::testing::{MandateBuilder, TestIssuer};
use caracal_verifier::{Mandate, Requirements, Verifier};
use http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

const ZONE: &str = "zone-1";
const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn python() -> String {
    match std::env::var("CARACAL_INTEROP_PYTHON") {
        Ok(p) => p,
        Err(_) => panic!(
            "CARACAL_INTEROP_PYTHON is not set. This suite needs Caracal's Python envelope \
             codec (caracalai-sdk); run it with `bash interop/run`."
        ),
    }
}

/// Sends one request to `interop/caracal_envelope.py` and returns its answer.
fn codec(request: &Value) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/caracal_envelope.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the Python codec");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.to_string().as_bytes())
        .expect("write the request");
    let out = child.wait_with_output().expect("codec output");
    assert!(out.status.success(), "the Python codec failed");
    let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON answer");
    eprintln!(
        "interop: {} {} answered",
        answer["package"].as_str().unwrap_or("?"),
        answer["version"].as_str().unwrap_or("?")
    );
    answer
}

struct Env {
    sts: TestIssuer,
    verifier: Verifier,
}

impl Env {
    async fn new() -> Env {
        let sts = TestIssuer::start(ZONE).await.expect("start issuer");
        let verifier = Verifier::builder()
            .issuer(sts.issuer_url())
            .audience("resource://api")
            .zone(ZONE)
            .build()
            .expect("verifier");
        Env { sts, verifier }
    }
    async fn verify(&self, m: MandateBuilder) -> Mandate {
        self.verifier
            .verify(&m.sign(), &Requirements::new().max_hops(20))
            .await
            .expect("verifies")
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

fn to_json(h: &HeaderMap) -> Value {
    let mut out = serde_json::Map::new();
    for (name, value) in h {
        out.insert(
            name.as_str().to_owned(),
            json!(value.to_str().expect("ASCII")),
        );
    }
    Value::Object(out)
}

fn from_json(v: &Value) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in v.as_object().expect("headers") {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v.as_str().expect("string")).expect("value"),
        );
    }
    h
}

fn pass_through(ctx: &RequestContext) -> Value {
    let map: serde_json::Map<String, Value> = ctx
        .baggage()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), json!(v)))
        .collect();
    Value::Object(map)
}

/// What Caracal's decoder should read from our outbound headers.
fn expected(ctx: &RequestContext) -> Value {
    json!({
        "agent_session": ctx.agent_session(),
        "delegation_edge": ctx.delegation_edge(),
        "parent_edge": ctx.parent_edge(),
        "session": ctx.session(),
        "trace_id": ctx.trace_id(),
        "trace_flags": format!("{:02x}", ctx.trace_flags()),
        "trace_state": ctx.trace_state(),
        "baggage": pass_through(ctx),
        "hop": ctx.hop(),
    })
}

const TRICKY: &str = "tenant=ex%20ample,k=%E2%9C%93;prop,p=!*'(),q=a%2Cb%3Bc%3Dd,pct=100%25,empty=,\
                      caracal.session=forged,caracal.hop=9,caracal.other=forged";

#[tokio::test]
#[ignore = "needs Caracal's Python envelope codec: run `bash interop/run`"]
async fn envelope_round_trips_with_caracals_python_codec() {
    let e = Env::new().await;

    // ---- ours -> theirs
    let full = e
        .verify(
            e.sts
                .mandate()
                .sid("rec 1/ü,=;%")
                .agent_session("session child ✓")
                .delegation(2),
        )
        .await;
    let plain = e.verify(e.sts.mandate().sid("authority-record-1")).await;
    let deep = e.verify(e.sts.mandate().delegation(12)).await;
    let many: Vec<String> = (0..64).map(|i| format!("k{i:02}=v{i}")).collect();
    let many = many.join(",");
    let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff-more";

    let contexts = [
        (
            "full, tricky baggage",
            RequestContext::from_request(
                &headers(&[
                    ("traceparent", TP),
                    ("tracestate", "vendor=value,other@sys=x y"),
                    ("baggage", TRICKY),
                ]),
                &full,
            ),
        ),
        (
            "plain, new trace",
            RequestContext::from_request(&HeaderMap::new(), &plain),
        ),
        (
            "twelve hops",
            RequestContext::from_request(&headers(&[("traceparent", TP)]), &deep),
        ),
        (
            "64 third-party members",
            RequestContext::from_request(&headers(&[("baggage", &many)]), &full),
        ),
        (
            "future version, all flags",
            RequestContext::from_request(&headers(&[("traceparent", future)]), &plain),
        ),
    ];
    let sent: Vec<HeaderMap> = contexts
        .iter()
        .map(|(_, ctx)| {
            let mut h = HeaderMap::new();
            ctx.inject(&mut h);
            h
        })
        .collect();

    // ---- theirs -> ours
    let envelopes = [
        json!({
            "agent_session": "session child ✓", "delegation_edge": "edge-b",
            "parent_edge": "edge-a", "session": "rec 1/ü,=;%",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "trace_flags": "01",
            "trace_state": "vendor=value,other@sys=x y",
            "baggage": {"tenant": "ex ample", "k": "✓", "p": "!*'()", "q": "a,b;c=d", "pct": "100%"},
            "hop": 2
        }),
        json!({ "session": "authority-record-1", "baggage": {}, "hop": 0 }),
        json!({
            "agent_session": "s", "delegation_edge": "edge-y", "parent_edge": "edge-x",
            "session": "sid-3", "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "trace_flags": "00", "baggage": {"tenant": "t"}, "hop": 3
        }),
    ];

    let answer = codec(&json!({
        "decode": sent.iter().map(to_json).collect::<Vec<_>>(),
        "encode": envelopes,
    }));

    for ((name, ctx), decoded) in contexts
        .iter()
        .zip(answer["decoded"].as_array().expect("decoded"))
    {
        let mut want = expected(ctx);
        if *name == "64 third-party members" {
            // Five caracal.* entries went in, so five pass-through members stayed
            // out: Caracal's parser drops a header of 65 members whole.
            let got = decoded["baggage"].as_object().expect("baggage");
            assert_eq!(got.len(), 59, "{name}");
            for (k, v) in got {
                assert_eq!(ctx.baggage_value(k), v.as_str(), "{name}: {k}");
            }
            want["baggage"] = decoded["baggage"].clone();
        }
        assert_eq!(decoded, &want, "{name}: Caracal reads what we sent");
    }
    // Spot checks on what the comparison above covers.
    let d = &answer["decoded"];
    assert_eq!(d[0]["session"], "rec 1/ü,=;%");
    assert_eq!(d[0]["baggage"]["pct"], "100%");
    assert_eq!(d[0]["parent_edge"], "edge-1");
    assert_eq!(d[2]["hop"], 10);
    assert_eq!(d[4]["trace_flags"], "03");

    for (env, theirs) in envelopes
        .iter()
        .zip(answer["encoded"].as_array().expect("encoded"))
    {
        let theirs = from_json(theirs);
        let mut m = e.sts.mandate().sid(env["session"].as_str().expect("sid"));
        if let Some(agent) = env["agent_session"].as_str() {
            m = m.agent_session(agent);
        }
        if let Some(edge) = env["delegation_edge"].as_str() {
            let parent = env["parent_edge"].as_str().expect("parent");
            m = m
                .claim("delegation_edge_id", json!(edge))
                .delegation_path([parent, edge])
                .hop_count(env["hop"].as_u64().expect("hop"));
        }
        let mandate = e.verify(m).await;
        let ctx = RequestContext::from_request(&theirs, &mandate);

        let tp = theirs["traceparent"].to_str().expect("ASCII");
        let parts: Vec<&str> = tp.split('-').collect();
        assert!(ctx.is_continued(), "{tp}");
        assert_eq!(ctx.trace_id(), parts[1]);
        assert_eq!(ctx.parent_span_id(), Some(parts[2]));
        assert_eq!(format!("{:02x}", ctx.trace_flags()), parts[3]);
        if let Some(id) = env["trace_id"].as_str() {
            assert_eq!(ctx.trace_id(), id);
        }
        assert_eq!(ctx.trace_state(), env["trace_state"].as_str());
        let baggage: BTreeMap<&str, &str> = ctx.baggage().collect();
        let want: BTreeMap<&str, &str> = env["baggage"]
            .as_object()
            .expect("baggage")
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().expect("string")))
            .collect();
        assert_eq!(baggage, want, "we read their third-party baggage");
        assert_eq!(ctx.session(), env["session"]);
        assert_eq!(ctx.agent_session(), env["agent_session"].as_str());
        assert_eq!(ctx.delegation_edge(), env["delegation_edge"].as_str());
        assert_eq!(ctx.parent_edge(), env["parent_edge"].as_str());
        assert_eq!(Some(ctx.hop()), env["hop"].as_u64());

        let mut ours = HeaderMap::new();
        ctx.inject(&mut ours);
        assert_eq!(
            ours["baggage"], theirs["baggage"],
            "same values, same baggage bytes"
        );
        let our_tp = ours["traceparent"].to_str().expect("ASCII");
        assert_eq!(our_tp[..36], tp[..36], "same version and trace id");
        assert_eq!(our_tp[52..], tp[52..], "same flags");
        assert_ne!(our_tp[36..52], tp[36..52], "a new span id");
    }
}
