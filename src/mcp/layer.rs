//! [`McpLayer`]: per-tool, per-resource and per-prompt requirements on MCP calls.

use std::collections::HashMap;
use std::fmt;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};
use tower_layer::Layer;
use tower_service::Service;

use super::metadata::ProtectedResourceMetadata;
use crate::error::{AuthError, CodeSpelling};
use crate::future::BoxFuture;
use crate::layer::{
    MandateLayer, MandateService, Rejecter, generate_request_id, incoming_request_id,
};
use crate::mandate::Mandate;
use crate::requirements::Requirements;
use crate::verifier::Verifier;

/// Default cap on a request body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default cap on the number of messages in a JSON-RPC batch.
pub const DEFAULT_MAX_BATCH: usize = 32;
/// The JSON-RPC error code of a denied call (in the server-defined range).
pub const DENIED_CODE: i64 = -32001;

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const INVALID_PARAMS: i64 = -32602;

/// A Tower layer for an MCP server's streamable HTTP endpoint: requires a valid
/// mandate on every request, then gives each `tools/call`, `resources/read` and
/// `prompts/get` the [`Requirements`] configured for its tool, resource or prompt.
///
/// It is a [`MandateLayer`] with no requirements (any valid mandate) around a
/// service that buffers the body (at most [`max_body_bytes`](Self::max_body_bytes),
/// 413 past it), parses the JSON-RPC message and checks the verified [`Mandate`]
/// with [`Verifier::authorize`]. Denials are JSON-RPC error objects carrying the
/// request's `id`; see the [module docs](super) for statuses and challenges.
///
/// A call to a tool, resource or prompt with no entry is denied (403,
/// `error.data.error = "not_configured"`) unless [`unlisted`](Self::unlisted)
/// gives a default. `initialize`, `tools/list`, notifications, responses and any
/// other method need only a valid mandate. Requests other than `POST` (the SSE
/// `GET`, session `DELETE`) pass with a valid mandate.
///
/// Per-call requirements are checked, never consumed: `single_use()` in them has
/// no effect (put it on the outer mandate instead, with
/// [`MandateLayer`] requirements).
#[derive(Clone)]
#[must_use]
pub struct McpLayer {
    mandate: MandateLayer,
    policy: Arc<Policy>,
}

#[derive(Clone)]
struct Policy {
    verifier: Verifier,
    tools: HashMap<String, Requirements>,
    resources: HashMap<String, Requirements>,
    prompts: HashMap<String, Requirements>,
    unlisted: Option<Requirements>,
    max_body: usize,
    max_batch: usize,
    rejecter: Rejecter,
    spelling: CodeSpelling,
}

impl fmt::Debug for McpLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &*self.policy;
        f.debug_struct("McpLayer")
            .field("mandate", &self.mandate)
            .field("tools", &p.tools)
            .field("resources", &p.resources)
            .field("prompts", &p.prompts)
            .field("unlisted", &p.unlisted)
            .field("max_body", &p.max_body)
            .field("max_batch", &p.max_batch)
            .finish_non_exhaustive()
    }
}

impl McpLayer {
    /// Require a valid mandate from `verifier` on every request; deny every tool,
    /// resource and prompt until given requirements.
    ///
    /// Defaults: no entries, unlisted names denied, bodies up to
    /// [`DEFAULT_MAX_BODY_BYTES`], batches up to [`DEFAULT_MAX_BATCH`] messages, no
    /// `resource_metadata` in challenges.
    pub fn new(verifier: Verifier) -> Self {
        let mandate = MandateLayer::new(verifier.clone(), Requirements::new());
        let policy = Policy {
            spelling: verifier.code_spelling(),
            verifier,
            tools: HashMap::new(),
            resources: HashMap::new(),
            prompts: HashMap::new(),
            unlisted: None,
            max_body: DEFAULT_MAX_BODY_BYTES,
            max_batch: DEFAULT_MAX_BATCH,
            rejecter: mandate.rejecter().clone(),
        };
        Self {
            mandate,
            policy: Arc::new(policy),
        }
    }

    /// The requirements of the tool `name` (`tools/call`, `params.name`).
    pub fn tool(mut self, name: impl Into<String>, reqs: Requirements) -> Self {
        Arc::make_mut(&mut self.policy)
            .tools
            .insert(name.into(), reqs);
        self
    }

    /// The requirements of the resource `uri` (`resources/read`, `params.uri`,
    /// compared exactly).
    pub fn resource(mut self, uri: impl Into<String>, reqs: Requirements) -> Self {
        Arc::make_mut(&mut self.policy)
            .resources
            .insert(uri.into(), reqs);
        self
    }

    /// The requirements of the prompt `name` (`prompts/get`, `params.name`).
    pub fn prompt(mut self, name: impl Into<String>, reqs: Requirements) -> Self {
        Arc::make_mut(&mut self.policy)
            .prompts
            .insert(name.into(), reqs);
        self
    }

    /// The requirements of tools, resources and prompts with no entry. Default:
    /// none, they are denied. Setting it means a tool added to the server later is
    /// callable with these requirements before anyone reviews it.
    pub fn unlisted(mut self, reqs: Requirements) -> Self {
        Arc::make_mut(&mut self.policy).unlisted = Some(reqs);
        self
    }

    /// The largest request body read, in bytes; larger ones are answered 413
    /// without being read further. Default [`DEFAULT_MAX_BODY_BYTES`] (1 MiB).
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.policy).max_body = bytes;
        self
    }

    /// The most messages in one JSON-RPC batch; longer batches are answered 400.
    /// Default [`DEFAULT_MAX_BATCH`] (32).
    pub fn max_batch(mut self, messages: usize) -> Self {
        Arc::make_mut(&mut self.policy).max_batch = messages;
        self
    }

    /// Put `resource_metadata="<meta.url()>"` in every `WWW-Authenticate`
    /// challenge (RFC 9728 §5.1), as the MCP authorization specification requires.
    pub fn resource_metadata(mut self, meta: &ProtectedResourceMetadata) -> Self {
        self.mandate = self
            .mandate
            .challenge_param("resource_metadata", meta.url());
        Arc::make_mut(&mut self.policy).rejecter = self.mandate.rejecter().clone();
        self
    }
}

impl<S> Layer<S> for McpLayer {
    type Service = MandateService<McpService<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        self.mandate.layer(McpService {
            inner,
            policy: Arc::clone(&self.policy),
        })
    }
}

/// The service inside an [`McpLayer`]: checks each JSON-RPC call against its
/// requirements, then calls `S` with the buffered body.
#[derive(Clone)]
pub struct McpService<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S: fmt::Debug> fmt::Debug for McpService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Why one message is refused.
enum Denial {
    /// The mandate does not meet the requirements.
    Auth(AuthError),
    /// No entry for this tool, resource or prompt, and no default.
    NotConfigured(&'static str, String),
    /// A call without its `name` or `uri`.
    InvalidParams(&'static str),
}

impl Policy {
    /// Decide one JSON-RPC message.
    fn decide(&self, mandate: &Mandate, msg: &Value) -> Result<(), Denial> {
        let Some(method) = msg.get("method").and_then(Value::as_str) else {
            return Ok(()); // a response, or malformed: the server answers it
        };
        let (kind, map, key) = match method {
            "tools/call" => ("tool", &self.tools, "name"),
            "resources/read" => ("resource", &self.resources, "uri"),
            "prompts/get" => ("prompt", &self.prompts, "name"),
            _ => return Ok(()),
        };
        let Some(target) = msg
            .get("params")
            .and_then(|p| p.get(key))
            .and_then(Value::as_str)
        else {
            return Err(Denial::InvalidParams(key));
        };
        let reqs = match map.get(target) {
            Some(r) => r,
            None => match &self.unlisted {
                Some(r) => r,
                None => return Err(Denial::NotConfigured(kind, target.to_owned())),
            },
        };
        self.verifier.authorize(mandate, reqs).map_err(Denial::Auth)
    }

    /// The JSON-RPC error object and HTTP status of a denial.
    fn error(&self, denial: &Denial, request_id: &str) -> (StatusCode, Value) {
        match denial {
            Denial::Auth(e) => (
                e.status(),
                json!({
                    "code": DENIED_CODE,
                    "message": e.description(),
                    "data": e.to_json_spelled(request_id, self.spelling),
                }),
            ),
            Denial::NotConfigured(kind, name) => (
                StatusCode::FORBIDDEN,
                json!({
                    "code": DENIED_CODE,
                    "message": format!("{kind} is not available to mandates"),
                    "data": {
                        "error": "not_configured",
                        "error_description": format!("no requirements are configured for this {kind}"),
                        "requestId": request_id,
                        "details": { "kind": kind, "name": name },
                    },
                }),
            ),
            Denial::InvalidParams(key) => (
                StatusCode::BAD_REQUEST,
                json!({ "code": INVALID_PARAMS, "message": format!("params.{key} must be a string") }),
            ),
        }
    }
}

/// A JSON-RPC error response for `id`.
fn rpc_error(id: Value, error: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

/// An answer the layer gives itself, with the protocol headers.
fn answer(status: StatusCode, body: &Value, request_id: &str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", v);
    }
    response
}

/// A malformed or oversized request, answered with no `id` (JSON-RPC §5).
fn protocol_error(
    status: StatusCode,
    code: i64,
    message: &str,
    request_id: &str,
) -> Response<Bytes> {
    let body = rpc_error(Value::Null, json!({ "code": code, "message": message }));
    answer(status, &body, request_id)
}

impl Policy {
    /// Check a buffered POST body. `None` forwards it; `Some` is the answer.
    fn check(&self, mandate: &Mandate, body: &[u8], request_id: &str) -> Option<Response<Bytes>> {
        // serde_json refuses nesting deeper than 128 levels (its recursion limit). A
        // key repeated at any depth is refused too: this layer and the server behind
        // it must not read two different names (or methods) from one message.
        let mut de = serde_json::Deserializer::from_slice(body);
        let parsed = serde::de::DeserializeSeed::deserialize(crate::json::StrictValue, &mut de)
            .and_then(|v| de.end().map(|()| v));
        let Ok(msg) = parsed else {
            return Some(protocol_error(
                StatusCode::BAD_REQUEST,
                PARSE_ERROR,
                "parse error",
                request_id,
            ));
        };
        match &msg {
            Value::Array(batch) => {
                if batch.is_empty() || batch.len() > self.max_batch {
                    return Some(protocol_error(
                        StatusCode::BAD_REQUEST,
                        INVALID_REQUEST,
                        "batch is empty or too long",
                        request_id,
                    ));
                }
                let verdicts: Vec<_> = batch.iter().map(|m| self.decide(mandate, m)).collect();
                // Every call passed: forward the batch.
                let first = verdicts.iter().find_map(|v| v.as_ref().err())?;
                // One denied call refuses the whole batch: nothing in it runs.
                let (status, _) = self.error(first, request_id);
                let answers: Vec<Value> = batch
                    .iter()
                    .zip(&verdicts)
                    .filter(|(m, _)| m.get("method").is_some() && m.get("id").is_some())
                    .map(|(m, v)| {
                        let error = match v {
                            Err(d) => self.error(d, request_id).1,
                            Ok(()) => json!({
                                "code": DENIED_CODE,
                                "message": "not run: another call in the batch was denied",
                                "data": { "error": "batch_denied", "requestId": request_id },
                            }),
                        };
                        rpc_error(m["id"].clone(), error)
                    })
                    .collect();
                Some(self.deny(first, status, &Value::Array(answers), request_id))
            }
            Value::Object(_) => match self.decide(mandate, &msg) {
                Ok(()) => None,
                Err(d) => {
                    let (status, error) = self.error(&d, request_id);
                    let id = msg.get("id").cloned().unwrap_or(Value::Null);
                    Some(self.deny(&d, status, &rpc_error(id, error), request_id))
                }
            },
            _ => Some(protocol_error(
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                "not a JSON-RPC message",
                request_id,
            )),
        }
    }

    /// A denial's response: the JSON-RPC body, the challenge (401, or 403 for
    /// missing scopes, naming the scopes the call needs), `Retry-After` on 503.
    fn deny(
        &self,
        d: &Denial,
        status: StatusCode,
        body: &Value,
        request_id: &str,
    ) -> Response<Bytes> {
        let mut response = answer(status, body, request_id);
        if let Denial::NotConfigured(kind, name) = d {
            tracing::info!(
                target: "caracal_verifier::decision",
                decision = "deny", code = "not_configured", status = status.as_u16(),
                kind = *kind, name = name.as_str(), request_id, "mcp call denied: no requirements configured"
            );
        }
        if let Denial::Auth(e) = d {
            tracing::info!(
                target: "caracal_verifier::decision",
                decision = "deny", code = e.code().as_str(), status = status.as_u16(),
                request_id, "mcp call denied: {e}"
            );
            if let Some(c) = self.rejecter.challenge(e, status) {
                response.headers_mut().insert(WWW_AUTHENTICATE, c);
            }
            if status == StatusCode::SERVICE_UNAVAILABLE {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            }
        }
        response
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for McpService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    ReqB: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ReqB::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResB: From<Bytes> + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<ResB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = mem::replace(&mut self.inner, clone);
        if req.method() != Method::POST {
            return Box::pin(inner.call(req));
        }
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let request_id =
                incoming_request_id(req.headers()).map_or_else(generate_request_id, str::to_owned);
            let too_large = || {
                protocol_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    INVALID_REQUEST,
                    "request body too large",
                    &request_id,
                )
            };
            let declared = req
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > policy.max_body as u64) {
                return Ok(too_large().map(ResB::from));
            }
            let (parts, body) = req.into_parts();
            let bytes = match Limited::new(body, policy.max_body).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return Ok(too_large().map(ResB::from));
                }
                Err(_) => {
                    let r = protocol_error(
                        StatusCode::BAD_REQUEST,
                        INVALID_REQUEST,
                        "request body unreadable",
                        &request_id,
                    );
                    return Ok(r.map(ResB::from));
                }
            };
            let Some(mandate) = parts.extensions.get::<Mandate>() else {
                // Only reachable when McpService is built outside McpLayer.
                let r = policy
                    .rejecter
                    .reject(&AuthError::MissingToken, &request_id);
                return Ok(r.map(ResB::from));
            };
            if let Some(r) = policy.check(mandate, &bytes, &request_id) {
                return Ok(r.map(ResB::from));
            }
            inner
                .call(Request::from_parts(parts, ReqB::from(bytes)))
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::Full;
    use tower::ServiceExt;

    use super::*;
    use crate::testing::TestIssuer;

    type B = Full<Bytes>;

    async fn setup() -> (TestIssuer, McpLayer) {
        let sts = TestIssuer::start("zone-1").await.unwrap();
        let verifier = Verifier::builder()
            .issuer(sts.issuer_url())
            .audience("resource://api")
            .zone("zone-1")
            .build()
            .unwrap();
        let layer = McpLayer::new(verifier)
            .resource("file:///a", Requirements::new().scopes(["files:read"]))
            .prompt("greet", Requirements::new().scopes(["prompts:use"]));
        (sts, layer)
    }

    fn ok()
    -> impl Service<Request<B>, Response = Response<B>, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static {
        tower::service_fn(|_: Request<B>| async {
            Ok::<_, Infallible>(Response::new(B::from("ran")))
        })
    }

    fn post(token: &str, msg: Value) -> Request<B> {
        Request::post("/mcp")
            .header("authorization", format!("Bearer {token}"))
            .body(B::from(msg.to_string()))
            .unwrap()
    }

    #[tokio::test]
    async fn resources_and_prompts_have_their_own_requirements() {
        let (sts, layer) = setup().await;
        let svc = layer.layer(ok());
        let files = sts.mandate().scopes(["files:read"]).sign();
        let read = |uri: &str| json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":uri}});
        let get = json!({"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"greet"}});
        let status = |r: Response<B>| r.status().as_u16();
        assert_eq!(
            status(
                svc.clone()
                    .oneshot(post(&files, read("file:///a")))
                    .await
                    .unwrap()
            ),
            200
        );
        assert_eq!(
            status(
                svc.clone()
                    .oneshot(post(&files, read("file:///b")))
                    .await
                    .unwrap()
            ),
            403
        );
        assert_eq!(
            status(
                svc.clone()
                    .oneshot(post(&files, get.clone()))
                    .await
                    .unwrap()
            ),
            403
        );
        // Methods without a per-name requirement need only the mandate.
        let list = json!({"jsonrpc":"2.0","id":3,"method":"tools/list"});
        assert_eq!(
            status(svc.clone().oneshot(post(&files, list)).await.unwrap()),
            200
        );
        let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
        assert_eq!(
            status(svc.clone().oneshot(post(&files, note)).await.unwrap()),
            200
        );
        // Non-POST requests pass with a valid mandate, and only with one.
        let sse = |auth: Option<&str>| {
            let mut b = Request::get("/mcp");
            if let Some(t) = auth {
                b = b.header("authorization", format!("Bearer {t}"));
            }
            b.body(B::default()).unwrap()
        };
        assert_eq!(
            status(svc.clone().oneshot(sse(Some(&files))).await.unwrap()),
            200
        );
        assert_eq!(status(svc.oneshot(sse(None)).await.unwrap()), 401);
    }

    #[tokio::test]
    async fn unlisted_gives_a_default_when_asked() {
        let (sts, layer) = setup().await;
        let svc = layer
            .unlisted(Requirements::new().scopes(["tools:any"]))
            .layer(ok());
        let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}});
        let any = sts.mandate().scopes(["tools:any"]).sign();
        let res = svc.clone().oneshot(post(&any, call.clone())).await.unwrap();
        assert_eq!(res.status(), 200);
        let none = sts.mandate().sign();
        let res = svc.oneshot(post(&none, call)).await.unwrap();
        assert_eq!(res.status(), 403);
        assert!(
            res.headers()[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .ends_with("error=\"insufficient_scope\", scope=\"tools:any\"")
        );
    }
}
