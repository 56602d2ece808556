//! Rejection responses: the [`Renderer`] hook, the default JSON body, request ids and
//! the RFC 6750 challenge headers.

use std::fmt;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::error::{AuthError, CodeSpelling};

/// The request id header: read from requests, set on every rejection.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest incoming `x-request-id` that is echoed; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Seconds sent in `Retry-After` on 503 answers.
const RETRY_AFTER_SECS: HeaderValue = HeaderValue::from_static("5");

/// Turns a denial into a response. Replace the default ([`JsonRenderer`]) with
/// [`MandateLayer::renderer`](super::MandateLayer::renderer), for example to answer
/// with a JSON-RPC error for MCP clients.
///
/// Closures `Fn(&AuthError, &str) -> http::Response<Bytes>` are renderers. The second
/// argument is the request id.
///
/// Whatever the renderer returns, the layer then adds the protocol headers it lacks:
/// `x-request-id` always; `WWW-Authenticate` when the status is 401, or 403 for
/// `scope_insufficient`; `Retry-After` when the status is 503. A renderer that sets
/// one of these keeps its own value.
///
/// ```
/// use bytes::Bytes;
/// use caracal_verifier::AuthError;
/// use caracal_verifier::layer::Renderer;
///
/// fn json_rpc(err: &AuthError, request_id: &str) -> http::Response<Bytes> {
///     let body = serde_json::json!({
///         "jsonrpc": "2.0",
///         "id": null,
///         "error": { "code": -32001, "message": err.code().as_str(), "data": request_id },
///     });
///     http::Response::builder()
///         .status(err.status())
///         .header("content-type", "application/json")
///         .body(Bytes::from(body.to_string()))
///         .unwrap()
/// }
///
/// let response = json_rpc.render(&AuthError::MissingToken, "req-1");
/// assert_eq!(response.status(), 401);
/// ```
pub trait Renderer: Send + Sync + 'static {
    /// The response for `err`. `request_id` is the request's id (echoed or generated).
    fn render(&self, err: &AuthError, request_id: &str) -> Response<Bytes>;
}

impl<F> Renderer for F
where
    F: Fn(&AuthError, &str) -> Response<Bytes> + Send + Sync + 'static,
{
    fn render(&self, err: &AuthError, request_id: &str) -> Response<Bytes> {
        self(err, request_id)
    }
}

/// The JSON renderer with the documented codes: the error's status and an
/// `application/json` body `{"error", "error_description", "hint", "requestId",
/// "details"}` (see [`AuthError::to_json`]).
///
/// A layer with no [`renderer`](super::MandateLayer::renderer) set renders this
/// body in its verifier's
/// [`code_spelling`](crate::VerifierBuilder::code_spelling); `JsonRenderer` set
/// explicitly always uses the documented codes.
///
/// ```
/// use caracal_verifier::AuthError;
/// use caracal_verifier::layer::{JsonRenderer, Renderer};
///
/// let response = JsonRenderer.render(&AuthError::MissingToken, "req-1");
/// assert_eq!(response.status(), 401);
/// let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
/// assert_eq!(body["error"], "missing_token");
/// assert_eq!(body["requestId"], "req-1");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonRenderer;

impl Renderer for JsonRenderer {
    fn render(&self, err: &AuthError, request_id: &str) -> Response<Bytes> {
        SpelledJson(CodeSpelling::Documented).render(err, request_id)
    }
}

/// The layer's default renderer: [`JsonRenderer`]'s body in the verifier's spelling.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpelledJson(pub(crate) CodeSpelling);

impl Renderer for SpelledJson {
    fn render(&self, err: &AuthError, request_id: &str) -> Response<Bytes> {
        let body = Bytes::from(err.to_json_spelled(request_id, self.0).to_string());
        let mut response = Response::new(body);
        *response.status_mut() = err.status();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// How the layer renders denials: the renderer and the challenge realm.
#[derive(Clone)]
pub(crate) struct Rejecter {
    pub(crate) renderer: std::sync::Arc<dyn Renderer>,
    /// `Bearer realm="…"`, already sanitized.
    pub(crate) realm: String,
    /// Extra challenge attributes, rendered (`, name="value"` each), sanitized.
    pub(crate) params: String,
}

impl fmt::Debug for Rejecter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejecter")
            .field("realm", &self.realm)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Rejecter {
    /// Render `err` and add the protocol headers the renderer left out.
    pub(crate) fn reject(&self, err: &AuthError, request_id: &str) -> Response<Bytes> {
        let mut response = self.renderer.render(err, request_id);
        let status = response.status();
        let headers = response.headers_mut();
        if !headers.contains_key(X_REQUEST_ID)
            && let Ok(v) = HeaderValue::from_str(request_id)
        {
            headers.insert(X_REQUEST_ID, v);
        }
        if !headers.contains_key(WWW_AUTHENTICATE)
            && let Some(challenge) = self.challenge(err, status)
        {
            headers.insert(WWW_AUTHENTICATE, challenge);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE && !headers.contains_key(RETRY_AFTER) {
            headers.insert(RETRY_AFTER, RETRY_AFTER_SECS);
        }
        response
    }
}

impl Rejecter {
    /// Append the attribute `name="value"` to every challenge. `name` keeps only
    /// ASCII letters, digits, `_` and `-`; `value` is [`sanitize`]d.
    pub(crate) fn add_param(&mut self, name: &str, value: &str) {
        let name: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .take(64)
            .collect();
        if !name.is_empty() {
            self.params
                .push_str(&format!(", {name}=\"{}\"", sanitize(value)));
        }
    }

    /// The challenge for `err` answered with `status`, extra attributes included.
    pub(crate) fn challenge(&self, err: &AuthError, status: StatusCode) -> Option<HeaderValue> {
        challenge(&self.realm, &self.params, err, status)
    }
}

/// The RFC 6750 §3 challenge for a response with `status`: on every 401 (with
/// `error="invalid_token"` unless the request had no credentials), and on a 403 for
/// missing scopes. `params` (already rendered) follow the realm. Every value comes
/// from configuration, sanitized.
fn challenge(
    realm: &str,
    params: &str,
    err: &AuthError,
    status: StatusCode,
) -> Option<HeaderValue> {
    let head = format!("Bearer realm=\"{realm}\"{params}");
    let value = match (status, err) {
        (StatusCode::UNAUTHORIZED, AuthError::MissingToken) => head,
        (StatusCode::UNAUTHORIZED, _) => {
            format!("{head}, error=\"invalid_token\"")
        }
        (StatusCode::FORBIDDEN, AuthError::ScopeInsufficient { required, .. }) => {
            let scope = required
                .iter()
                .map(|s| sanitize(s))
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            format!("{head}, error=\"insufficient_scope\", scope=\"{scope}\"")
        }
        _ => return None,
    };
    HeaderValue::from_str(&value).ok()
}

/// Keep only characters allowed in an RFC 6750 quoted attribute value (visible ASCII
/// without `"` and `\`), at most 256 of them.
pub(crate) fn sanitize(value: &str) -> String {
    value
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .take(256)
        .collect()
}

/// The incoming `x-request-id` when there is exactly one and it is sane (1 to 128
/// visible ASCII characters); otherwise a fresh random id.
#[cfg(any(test, feature = "axum"))]
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    incoming_request_id(headers).map_or_else(generate_request_id, str::to_owned)
}

/// The incoming `x-request-id` when there is exactly one and it is sane (1 to 128
/// visible ASCII characters).
pub(crate) fn incoming_request_id(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(X_REQUEST_ID).iter();
    match (values.next(), values.next()) {
        (Some(v), None)
            if (1..=MAX_REQUEST_ID_LEN).contains(&v.len())
                && v.as_bytes().iter().all(u8::is_ascii_graphic) =>
        {
            v.to_str().ok()
        }
        _ => None,
    }
}

/// 128 random bits as 32 lowercase hex digits.
pub(crate) fn generate_request_id() -> String {
    let mut bytes = [0u8; 16];
    // The system generator does not fail in practice; a zero id beats no answer.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    let mut out = String::with_capacity(32);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn rejecter() -> Rejecter {
        Rejecter {
            renderer: Arc::new(JsonRenderer),
            realm: "resource://api".into(),
            params: String::new(),
        }
    }

    #[test]
    fn request_id_echoes_sane_values_only() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");

        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        let generated = request_id(&h);
        assert_eq!(generated.len(), 32);
        assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));

        h.insert(
            X_REQUEST_ID,
            HeaderValue::from_str(&"a".repeat(129)).unwrap(),
        );
        assert_eq!(request_id(&h).len(), 32);
        h.insert(
            X_REQUEST_ID,
            HeaderValue::from_str(&"a".repeat(128)).unwrap(),
        );
        assert_eq!(request_id(&h).len(), 128);

        h.append(X_REQUEST_ID, HeaderValue::from_static("second"));
        assert_eq!(request_id(&h).len(), 32);
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        let r = rejecter();
        let www = |err: &AuthError| {
            r.reject(err, "id")
                .headers()
                .get(WWW_AUTHENTICATE)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            www(&AuthError::MissingToken).as_deref(),
            Some("Bearer realm=\"resource://api\"")
        );
        assert_eq!(
            www(&AuthError::ZoneInvalid).as_deref(),
            Some("Bearer realm=\"resource://api\", error=\"invalid_token\"")
        );
        let scope = AuthError::ScopeInsufficient {
            missing: "b".into(),
            required: vec!["a".into(), "b\"\\ x".into()],
        };
        assert_eq!(
            www(&scope).as_deref(),
            Some("Bearer realm=\"resource://api\", error=\"insufficient_scope\", scope=\"a bx\"")
        );
        assert_eq!(www(&AuthError::AgentIdentityRequired), None);
        assert_eq!(www(&AuthError::RevocationUnavailable), None);
    }

    #[test]
    fn extra_params_follow_the_realm_sanitized() {
        let mut r = rejecter();
        r.add_param("resource_metadata", "https://api/.well-known/x\", evil=\"1");
        r.add_param("bad name\"", "v");
        let www = r.challenge(&AuthError::MissingToken, StatusCode::UNAUTHORIZED);
        assert_eq!(
            www.unwrap(),
            "Bearer realm=\"resource://api\", resource_metadata=\"https://api/.well-known/x,evil=1\", badname=\"v\""
        );
    }

    #[test]
    fn protocol_headers_are_added_to_custom_responses() {
        let r = Rejecter {
            renderer: Arc::new(|err: &AuthError, _: &str| {
                Response::builder()
                    .status(err.status())
                    .header(RETRY_AFTER, "30")
                    .body(Bytes::from_static(b"no"))
                    .unwrap()
            }),
            realm: "api".into(),
            params: String::new(),
        };
        let res = r.reject(&AuthError::RevocationUnavailable, "req-9");
        assert_eq!(res.headers()[RETRY_AFTER], "30");
        assert_eq!(res.headers()[X_REQUEST_ID], "req-9");
        let res = r.reject(&AuthError::MissingToken, "req-9");
        assert_eq!(res.headers()[WWW_AUTHENTICATE], "Bearer realm=\"api\"");
    }

    #[test]
    fn the_sdk_spelling_changes_the_body_not_the_challenge() {
        let sdk = Rejecter {
            renderer: Arc::new(SpelledJson(CodeSpelling::CaracalSdk)),
            realm: "resource://api".into(),
            params: String::new(),
        };
        let scope = AuthError::ScopeInsufficient {
            missing: "a".into(),
            required: vec!["a".into()],
        };
        let res = sdk.reject(&scope, "r");
        assert_eq!(res.status(), 403);
        assert_eq!(
            res.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"resource://api\", error=\"insufficient_scope\", scope=\"a\""
        );
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["error"], "insufficient_scope");
        assert!(body["error_hint"].is_string());
        let res = rejecter().reject(&scope, "r");
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["error"], "scope_insufficient");
        assert!(body["hint"].is_string());
    }

    #[test]
    fn json_body_shape() {
        let res = rejecter().reject(&AuthError::StsUnavailable { reason: "down" }, "r");
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(res.headers()[RETRY_AFTER], "5");
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["error"], "sts_unavailable");
        assert_eq!(body["requestId"], "r");
        assert_eq!(body["details"]["reason"], "down");
        assert!(body["error_description"].is_string());
    }
}
