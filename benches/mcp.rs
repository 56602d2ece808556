//! The per-tool MCP layer on a `tools/call` against the plain `MandateLayer` on the
//! same request: what buffering the body, parsing the JSON-RPC message and checking
//! the tool's requirements add.
//!
//! Run: `cargo bench --features mcp,test-util --bench mcp`
//!
//! - `mcp/mandate_layer`: `MandateLayer` (scope `tickets:read`) around an
//!   in-memory inner service, the same warm token every call.
//! - `mcp/mcp_layer`: `McpLayer` with `list_tickets` needing `tickets:read`, the
//!   same token and body (`{"jsonrpc":"2.0","id":1,"method":"tools/call",…}`).
//! - `mcp/paired`: the two alternately, call by call, in one timed loop; it prints
//!   the median of each and the median of the per-pair difference.
//!
//! Requests are built outside the timed region; futures are polled once with a
//! no-op waker (warm keys, an in-memory body: nothing suspends).

use std::convert::Infallible;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caracal_verifier::layer::MandateLayer;
use caracal_verifier::mcp::McpLayer;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};

mod common;
use common::*;

type Req = Request<Full<Bytes>>;
type Res = Response<Full<Bytes>>;

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_tickets","arguments":{}}}"#;

fn inner() -> impl Service<Req, Response = Res, Error = Infallible, Future = impl Future + Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|_req: Req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
}

fn call<S: Service<Req, Response = Res>>(svc: &mut S, req: Req) -> Res
where
    S::Error: std::fmt::Debug,
{
    now(svc.ready()).unwrap();
    now(svc.call(req)).unwrap()
}

fn request(token: &str) -> Req {
    Request::post("/mcp")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("content-length", CALL.len())
        .body(Full::new(Bytes::from_static(CALL.as_bytes())))
        .unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mcp(c: &mut Criterion) {
    let s = setup(1);
    let tok = token(&s);
    let v = verifier(&s, true);

    let mut plain = MandateLayer::new(v.clone(), reqs()).layer(inner());
    let mut per_tool = McpLayer::new(v).tool("list_tickets", reqs()).layer(inner());
    assert_eq!(call(&mut plain, request(&tok)).status(), 200);
    assert_eq!(call(&mut per_tool, request(&tok)).status(), 200);

    let mut g = c.benchmark_group("mcp");
    g.bench_function("mandate_layer", |b| {
        b.iter_batched(
            || request(&tok),
            |req| call(&mut plain, req),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("mcp_layer", |b| {
        b.iter_batched(
            || request(&tok),
            |req| call(&mut per_tool, req),
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // Paired: A then B, call by call, so drift hits both alike.
    let pairs = if std::env::args().any(|a| a == "--bench") {
        200_000
    } else {
        100
    };
    let (mut a, mut b, mut d) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..pairs {
        let (ra, rb) = (request(&tok), request(&tok));
        let t0 = Instant::now();
        std::hint::black_box(call(&mut plain, ra));
        let t1 = Instant::now();
        std::hint::black_box(call(&mut per_tool, rb));
        let t2 = Instant::now();
        a.push(t1 - t0);
        b.push(t2 - t1);
        d.push((t2 - t1).saturating_sub(t1 - t0));
    }
    println!(
        "mcp/paired ({pairs} pairs): mandate_layer median {:?}, mcp_layer median {:?}, per-pair overhead median {:?}",
        median(a),
        median(b),
        median(d)
    );
}

criterion_group!(benches, mcp);
criterion_main!(benches);
