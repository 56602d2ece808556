//! Goal 4: HTTP throughput of an axum router protected by `MandateLayer` (repeated
//! tokens) against the same router unprotected, over loopback.
//!
//! Run (about 10 s per case, plus 1 s of client warm-up each):
//!
//! ```text
//! cargo bench --all-features --bench http_load
//! ```
//!
//! Settings, from the environment: `CARACAL_LOAD_SECS` (default 10),
//! `CARACAL_LOAD_CONNECTIONS` (default 64), `CARACAL_LOAD_ROUNDS` (default 1; each
//! round runs both cases, alternating, and the report uses the per-case median),
//! `CARACAL_LOAD_WORKERS` (Tokio workers of the server and of the client, default 2).
//!
//! The server (this process) serves `GET /tickets` with axum. The load generator
//! is a second process: this same binary, re-executed as
//! `http_load --client <addr> <seconds> <connections> <token>`. It opens
//! `<connections>` keep-alive HTTP/1.1 connections with hyper, each sending one
//! request after another with `Authorization: Bearer <token>` (the unprotected
//! router gets the same header), and prints the completed requests per second.
//! The report prints both rates and their ratio (goal ≥ 0.85).
//!
//! Without `--bench` (e.g. `cargo test --benches`) it runs a 1 s smoke test per
//! case; other criterion-style arguments are ignored. `cargo bench --no-run` only
//! compiles it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use axum::serve::ListenerExt;
use bytes::Bytes;
use caracal_verifier::layer::MandateLayer;
use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{Requirements, Verifier};
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// Unmeasured client time before counting starts.
const CLIENT_WARM_UP: Duration = Duration::from_secs(1);

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--client") {
        let get = |k: usize, what: &str| {
            args.get(i + k).unwrap_or_else(|| {
                panic!("usage: --client <addr> <seconds> <connections> <token> (missing {what})")
            })
        };
        let addr: SocketAddr = get(1, "addr").parse().expect("a socket address");
        let secs: f64 = get(2, "seconds").parse().expect("seconds");
        let conns: usize = get(3, "connections").parse().expect("connections");
        let token = get(4, "token").clone();
        client(addr, Duration::from_secs_f64(secs), conns, &token);
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let secs: f64 = if full {
        env_or("CARACAL_LOAD_SECS", 10.0)
    } else {
        1.0
    };
    let conns: usize = env_or("CARACAL_LOAD_CONNECTIONS", 64);
    let rounds: usize = if full {
        env_or("CARACAL_LOAD_ROUNDS", 1).max(1)
    } else {
        1
    };
    let workers: usize = env_or("CARACAL_LOAD_WORKERS", 2);
    runtime(workers).block_on(server(secs, conns, rounds, workers));
}

fn router() -> Router {
    Router::new().route("/tickets", get(|| async { "ok" }))
}

/// Serve `app` on a loopback port; the task is aborted when the handle drops.
async fn serve(app: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    (addr, task)
}

struct Outcome {
    rps: f64,
    ok: u64,
    errors: u64,
}

/// Run the load generator process against `addr`.
async fn load(addr: SocketAddr, secs: f64, conns: usize, token: &str, workers: usize) -> Outcome {
    let exe = std::env::current_exe().expect("the path of this benchmark binary");
    let out = tokio::process::Command::new(exe)
        .arg("--client")
        .arg(addr.to_string())
        .arg(secs.to_string())
        .arg(conns.to_string())
        .arg(token)
        .env("CARACAL_LOAD_WORKERS", workers.to_string())
        .output()
        .await
        .expect("run the load generator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "load generator failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> f64 {
        stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}= in the load generator output: {stdout}"))
    };
    Outcome {
        rps: field("rps"),
        ok: field("ok") as u64,
        errors: field("errors") as u64,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

async fn server(secs: f64, conns: usize, rounds: usize, workers: usize) {
    let sts = TestIssuer::start("zone-1")
        .await
        .expect("start the test issuer");
    let verifier = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience("resource://api")
        .zone("zone-1")
        .build()
        .expect("verifier settings");
    verifier.warm_up().await.expect("JWKS from the test issuer");
    let token = sts
        .mandate()
        .scopes(["tickets:read"])
        .targets(["resource://api"])
        .ttl(3600)
        .sign();
    let layer = MandateLayer::new(verifier, Requirements::new().scopes(["tickets:read"]));

    println!(
        "http_load: {secs} s per case after {CLIENT_WARM_UP:?} warm-up, {conns} keep-alive connections, \
         client in a second process, {workers} Tokio workers each side, {rounds} round(s)"
    );
    let (mut plain, mut protected) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for (name, app, rates) in [
            ("unprotected", router(), &mut plain),
            ("protected", router().layer(layer.clone()), &mut protected),
        ] {
            let (addr, task) = serve(app).await;
            let o = load(addr, secs, conns, &token, workers).await;
            task.abort();
            println!(
                "round {round} {name:<12} {:>10.0} req/s  ({} ok, {} errors)",
                o.rps, o.ok, o.errors
            );
            assert_eq!(o.errors, 0, "{name}: requests failed");
            assert!(o.ok > 0, "{name}: no request completed");
            rates.push(o.rps);
            // Let the closed connections drain before the next case.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (p, q) = (median(&mut plain), median(&mut protected));
    println!("unprotected  {p:>10.0} req/s");
    println!("protected    {q:>10.0} req/s");
    println!("ratio protected/unprotected = {:.3} (goal >= 0.85)", q / p);
}

/// The load generator: `conns` keep-alive connections, each sending requests back to
/// back; prints `rps=… ok=… errors=… secs=…` for the measured window.
fn client(addr: SocketAddr, secs: Duration, conns: usize, token: &str) {
    let workers: usize = env_or("CARACAL_LOAD_WORKERS", 2);
    runtime(workers).block_on(async move {
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let auth = HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value");
        let host = HeaderValue::from_str(&addr.to_string()).unwrap();
        for _ in 0..conns {
            let (ok, errors, stop) = (Arc::clone(&ok), Arc::clone(&errors), Arc::clone(&stop));
            let (auth, host) = (auth.clone(), host.clone());
            tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await.expect("connect");
                stream.set_nodelay(true).unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .expect("HTTP/1.1 handshake");
                tokio::spawn(conn);
                while !stop.load(Ordering::Relaxed) {
                    if sender.ready().await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    let mut req = Request::get("/tickets")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    req.headers_mut().insert(header::HOST, host.clone());
                    req.headers_mut()
                        .insert(header::AUTHORIZATION, auth.clone());
                    match sender.send_request(req).await {
                        Ok(res) => {
                            let good = res.status() == http::StatusCode::OK;
                            let body = res.into_body().collect().await;
                            if good && body.is_ok() {
                                ok.fetch_add(1, Ordering::Relaxed);
                            } else {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            });
        }
        tokio::time::sleep(CLIENT_WARM_UP).await;
        let ok0 = ok.load(Ordering::Relaxed);
        let start = Instant::now();
        tokio::time::sleep(secs).await;
        let elapsed = start.elapsed().as_secs_f64();
        let ok1 = ok.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        let done = ok1 - ok0;
        println!(
            "rps={:.1} ok={done} errors={} secs={elapsed:.3}",
            done as f64 / elapsed,
            // Every failure counts, warm-up included.
            errors.load(Ordering::Relaxed)
        );
    });
}
