//! The loopback JWKS HTTP server behind [`TestIssuer`](super::TestIssuer).
//!
//! One accept-loop task owns every connection task (in a [`JoinSet`]), so aborting the
//! accept loop when the last issuer handle drops also tears down open connections,
//! including ones parked by [`JwksFault::Hang`]. Nothing in here panics: every
//! failure becomes a status code or a `tracing` debug event.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Sleep;

/// The path the server answers JWKS requests on.
pub(super) const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Misbehaviours of the JWKS endpoint, for fault tests.
///
/// Install one with [`TestIssuer::set_fault`](super::TestIssuer::set_fault); it applies
/// to every later request for the JWKS path (any zone) until replaced or cleared with
/// `set_fault(None)`. Requests to other paths are unaffected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwksFault {
    /// Answer with this status code and an empty body. A number that is not a valid
    /// HTTP status (outside `100..=999`) is answered with `500`.
    Status(u16),
    /// Answer `200` with exactly these bytes (`content-type: application/json`).
    Body(Vec<u8>),
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Answer `302 Found` with this `Location`. A value that is not a valid header
    /// value is answered with `500`.
    Redirect(String),
    /// Answer `200` with the normal headers and body, but send the body one byte per
    /// interval (the first byte also waits one interval).
    Trickle(Duration),
    /// Answer `200` (`content-type: application/json`, chunked) with a body of this many
    /// bytes: `[` followed by spaces. The body is streamed, never held in memory at once.
    Huge(usize),
    /// Accept the connection and read the request, but never answer.
    Hang,
}

/// What the server publishes and how it behaves, shared with the issuer handle.
#[derive(Debug, Default)]
pub(super) struct ServerState {
    /// Published JWKs per zone, in publication order.
    zones: RwLock<HashMap<String, Vec<Value>>>,
    fault: RwLock<Option<JwksFault>>,
    requests: AtomicUsize,
}

impl ServerState {
    /// Append a JWK to `zone`'s key set, creating the zone if needed.
    pub(super) fn publish(&self, zone: &str, jwk: Value) {
        write(&self.zones)
            .entry(zone.to_owned())
            .or_default()
            .push(jwk);
    }

    /// Remove every published JWK whose `kid` is `kid`, in every zone.
    pub(super) fn unpublish(&self, kid: &str) {
        for keys in write(&self.zones).values_mut() {
            keys.retain(|jwk| jwk.get("kid").and_then(Value::as_str) != Some(kid));
        }
    }

    /// The published key set of `zone`, if the zone exists.
    pub(super) fn key_set(&self, zone: &str) -> Option<Vec<Value>> {
        read(&self.zones).get(zone).cloned()
    }

    /// The names of all known zones, sorted.
    pub(super) fn zone_names(&self) -> Vec<String> {
        let mut names: Vec<String> = read(&self.zones).keys().cloned().collect();
        names.sort();
        names
    }

    pub(super) fn set_fault(&self, fault: Option<JwksFault>) {
        *write(&self.fault) = fault;
    }

    pub(super) fn fault(&self) -> Option<JwksFault> {
        read(&self.fault).clone()
    }

    pub(super) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Read-lock, recovering from poison (the data is plain values; a panicking writer
/// cannot leave it half-updated in a way that matters for a test server).
pub(super) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-lock, recovering from poison.
pub(super) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Bind `127.0.0.1:0` and spawn the accept loop. Returns the bound address and the
/// accept loop's abort handle.
pub(super) async fn spawn(state: Arc<ServerState>) -> io::Result<(SocketAddr, AbortHandle)> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(listener, state));
    tracing::debug!(%addr, "test JWKS server listening");
    Ok((addr, task.abort_handle()))
}

async fn accept_loop(listener: TcpListener, state: Arc<ServerState>) {
    // Dropping this set (when the loop is aborted) aborts every connection task.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&state)));
                }
                Err(err) => {
                    tracing::debug!(%err, "test JWKS server: accept failed");
                    // Avoid spinning on persistent errors such as EMFILE.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<ServerState>) {
    // Best effort; latency of small test responses matters more than batching.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request: Request<Incoming>| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(respond(&state, request).await) }
    });
    if let Err(err) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%err, "test JWKS server: connection ended with an error");
    }
}

async fn respond(state: &ServerState, request: Request<Incoming>) -> Response<ResponseBody> {
    state.requests.fetch_add(1, Ordering::SeqCst);

    if request.uri().path() != JWKS_PATH {
        return empty(StatusCode::NOT_FOUND);
    }
    if request.method() != Method::GET {
        let mut response = empty(StatusCode::METHOD_NOT_ALLOWED);
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    let query = request.uri().query().map(str::to_owned);
    let query = query.as_deref();

    match state.fault() {
        None => jwks(state, query),
        Some(JwksFault::Status(code)) => {
            empty(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        }
        Some(JwksFault::Body(bytes)) => json(ResponseBody::full(Bytes::from(bytes))),
        Some(JwksFault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            jwks(state, query)
        }
        Some(JwksFault::Redirect(location)) => match HeaderValue::try_from(location) {
            Ok(location) => {
                let mut response = empty(StatusCode::FOUND);
                response.headers_mut().insert(header::LOCATION, location);
                response
            }
            Err(_) => empty(StatusCode::INTERNAL_SERVER_ERROR),
        },
        Some(JwksFault::Trickle(interval)) => {
            let mut response = jwks(state, query);
            if let BodyKind::Full(Some(data)) = &mut response.body_mut().kind {
                let data = std::mem::take(data);
                response.body_mut().kind = BodyKind::Trickle {
                    data,
                    interval,
                    sleep: None,
                };
            }
            response
        }
        Some(JwksFault::Huge(len)) => json(ResponseBody {
            kind: BodyKind::Huge {
                remaining: len,
                opened: false,
            },
        }),
        Some(JwksFault::Hang) => std::future::pending().await,
    }
}

/// The normal JWKS answer for the `zone_id` in `query`.
fn jwks(state: &ServerState, query: Option<&str>) -> Response<ResponseBody> {
    let Some(zone) = query.and_then(zone_param) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let Some(keys) = state.key_set(&zone) else {
        return empty(StatusCode::NOT_FOUND);
    };
    let document = serde_json::json!({ "keys": keys });
    match serde_json::to_vec(&document) {
        Ok(body) => {
            let mut response = json(ResponseBody::full(Bytes::from(body)));
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=300"),
            );
            response
        }
        Err(err) => {
            tracing::debug!(%err, "test JWKS server: could not serialize the key set");
            empty(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn json(body: ResponseBody) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The (form-decoded) value of the first `zone_id` query parameter.
fn zone_param(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(name)? == "zone_id" {
            form_decode(value)
        } else {
            None
        }
    })
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn form_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Percent-encode every byte of `input` outside the RFC 3986 unreserved set.
pub(super) fn percent_encode(input: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(input.len());
    for &byte in input.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A run of spaces served by [`JwksFault::Huge`] one slice at a time.
static SPACES: [u8; 16 * 1024] = [b' '; 16 * 1024];

/// Response body: a whole buffer, or one of the streaming fault bodies.
#[derive(Debug)]
pub(super) struct ResponseBody {
    kind: BodyKind,
}

#[derive(Debug)]
enum BodyKind {
    Full(Option<Bytes>),
    Trickle {
        data: Bytes,
        interval: Duration,
        sleep: Option<Pin<Box<Sleep>>>,
    },
    Huge {
        remaining: usize,
        opened: bool,
    },
}

impl ResponseBody {
    fn full(data: Bytes) -> Self {
        Self {
            kind: BodyKind::Full(Some(data)),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().kind {
            BodyKind::Full(data) => Poll::Ready(
                data.take()
                    .filter(|data| !data.is_empty())
                    .map(|data| Ok(Frame::data(data))),
            ),
            BodyKind::Trickle {
                data,
                interval,
                sleep,
            } => {
                if data.is_empty() {
                    return Poll::Ready(None);
                }
                let timer = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*interval)));
                ready!(timer.as_mut().poll(cx));
                *sleep = None;
                Poll::Ready(Some(Ok(Frame::data(data.split_to(1)))))
            }
            BodyKind::Huge { remaining, opened } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let chunk = if *opened {
                    let len = (*remaining).min(SPACES.len());
                    Bytes::from_static(&SPACES[..len])
                } else {
                    *opened = true;
                    Bytes::from_static(b"[")
                };
                *remaining -= chunk.len();
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Full(data) => data.as_ref().is_none_or(Bytes::is_empty),
            BodyKind::Trickle { data, .. } => data.is_empty(),
            BodyKind::Huge { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
            BodyKind::Trickle { .. } | BodyKind::Huge { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_param_decodes_form_encoding() {
        assert_eq!(zone_param("zone_id=zone-1").as_deref(), Some("zone-1"));
        assert_eq!(
            zone_param("a=b&zone_id=z%20one%2B&zone_id=x").as_deref(),
            Some("z one+")
        );
        assert_eq!(zone_param("zone_id=a+b").as_deref(), Some("a b"));
        assert_eq!(zone_param("zone=x"), None);
        assert_eq!(zone_param("zone_id=%zz"), None);
    }

    #[test]
    fn percent_encode_round_trips() {
        let zone = "zone 1/ä?&=+~._-";
        let encoded = percent_encode(zone);
        assert_eq!(encoded, "zone%201%2F%C3%A4%3F%26%3D%2B~._-");
        assert_eq!(form_decode(&encoded).as_deref(), Some(zone));
    }
}
