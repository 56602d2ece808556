//! MCP authorization end to end: the `mcp_server` example (rmcp over streamable
//! HTTP behind `mcp::McpLayer`) on loopback, driven by rmcp's own client and by
//! raw HTTP where the headers matter.

#[allow(dead_code, reason = "the example's `main` is not used here")]
#[path = "../examples/mcp_server.rs"]
mod server;

use caracal_verifier::Verifier;
use caracal_verifier::testing::TestIssuer;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use tokio::net::TcpListener;

struct Server {
    sts: TestIssuer,
    base: String,
    http: reqwest::Client,
}

async fn start() -> Server {
    let sts = TestIssuer::start("zone-1").await.unwrap();
    let verifier = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience("resource://api")
        .zone("zone-1")
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = server::app(verifier, &format!("{base}/mcp")).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        sts,
        base,
        http: reqwest::Client::new(),
    }
}

impl Server {
    fn reader(&self) -> String {
        self.sts
            .mandate()
            .subject("alice")
            .scopes(["tickets:read"])
            .sign()
    }

    async fn client(&self, token: &str) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
        let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", self.base))
            .auth_header(token);
        let transport = StreamableHttpClientTransport::from_config(config);
        ().serve(transport)
            .await
            .expect("initialize with a mandate")
    }

    /// A raw `POST /mcp`: status, headers and body as JSON (or `Null`).
    async fn post(
        &self,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .post(format!("{}/mcp", self.base))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap_or(Value::Null);
        (status, headers, body)
    }

    /// A raw chunked `POST /mcp` of `n` spaces (no Content-Length): the status.
    async fn chunked(&self, token: &str, n: usize) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.base.trim_start_matches("http://");
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /mcp HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
        for _ in 0..n / (64 * 1024) {
            // The server may answer and close before the whole body is sent.
            if tcp.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = tcp.write_all(b"0\r\n\r\n").await;
        let mut buf = vec![0u8; 12];
        tcp.read_exact(&mut buf).await.unwrap();
        std::str::from_utf8(&buf[9..12]).unwrap().parse().unwrap()
    }

    fn metadata_url(&self) -> String {
        format!("{}/.well-known/oauth-protected-resource/mcp", self.base)
    }
}

fn call(id: Value, tool: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": tool } })
}

// Hostile input first.

#[tokio::test]
async fn an_oversized_body_is_413_before_it_is_read() {
    let s = start().await;
    let token = s.reader();
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{{\"pad\":\"{}\"}}}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let (status, _, body) = s.post(Some(&token), big).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], -32600);
    assert_eq!(body["id"], Value::Null);
    // Without a Content-Length (chunked), the cap holds while reading.
    assert_eq!(s.chunked(&token, 3 * 1024 * 1024).await, 413);
}

#[tokio::test]
async fn a_batch_with_one_denied_call_runs_nothing() {
    let s = start().await;
    let token = s.reader();
    let batch = json!([
        call(json!(1), "list_tickets"),
        call(json!("b"), "create_payout")
    ]);
    let (status, headers, body) = s.post(Some(&token), batch.to_string()).await;
    assert_eq!(status, 403);
    let www = headers["www-authenticate"].to_str().unwrap();
    assert!(
        www.contains("error=\"insufficient_scope\", scope=\"billing:payout\""),
        "{www}"
    );
    let answers = body.as_array().expect("one answer per request");
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0]["id"], 1);
    assert_eq!(answers[0]["error"]["data"]["error"], "batch_denied");
    assert_eq!(answers[1]["id"], "b");
    assert_eq!(answers[1]["error"]["data"]["error"], "scope_insufficient");
    // Too long a batch is refused outright.
    let long: Vec<Value> = (0..100).map(|i| call(json!(i), "list_tickets")).collect();
    let (status, _, body) = s.post(Some(&token), Value::Array(long).to_string()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], -32600);
}

#[tokio::test]
async fn an_unknown_tool_is_denied_by_default() {
    let s = start().await;
    let token = s
        .sts
        .mandate()
        .scopes(["tickets:read", "billing:payout"])
        .sign();
    let (status, headers, body) = s
        .post(Some(&token), call(json!(7), "drop_tables").to_string())
        .await;
    assert_eq!(status, 403);
    assert!(headers.get("www-authenticate").is_none());
    assert_eq!(body["id"], 7);
    assert_eq!(body["error"]["code"], caracal_verifier::mcp::DENIED_CODE);
    assert_eq!(body["error"]["data"]["error"], "not_configured");
    // A call without a name is invalid params.
    let nameless = json!({ "jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {} });
    let (status, _, body) = s.post(Some(&token), nameless.to_string()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], -32602);
    assert_eq!(body["id"], 8);
}

#[tokio::test]
async fn malformed_json_is_a_parse_error() {
    let s = start().await;
    let token = s.reader();
    // A repeated key could make the layer and the server read different calls.
    let twice = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_tickets","name":"create_payout"}}"#;
    let method_twice = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","method":"tools/call","params":{"name":"create_payout"}}"#;
    for body in [
        "{",
        "not json",
        "\"a string\"",
        &"[".repeat(10_000),
        twice,
        method_twice,
    ] {
        let (status, _, json) = s.post(Some(&token), body.to_owned()).await;
        assert_eq!(status, 400, "{body:.20}");
        assert!(
            json["error"]["code"] == -32700 || json["error"]["code"] == -32600,
            "{json}"
        );
        assert_eq!(json["id"], Value::Null);
    }
}

#[tokio::test]
async fn a_missing_token_gets_401_with_resource_metadata() {
    let s = start().await;
    let (status, headers, _) = s
        .post(None, call(json!(1), "list_tickets").to_string())
        .await;
    assert_eq!(status, 401);
    let www = headers["www-authenticate"].to_str().unwrap();
    assert_eq!(
        www,
        format!(
            "Bearer realm=\"resource://api\", resource_metadata=\"{}\"",
            s.metadata_url()
        )
    );
    let (status, headers, _) = s.post(Some("a.b.c"), "{}").await;
    assert_eq!(status, 401);
    let www = headers["www-authenticate"].to_str().unwrap();
    assert!(www.contains("resource_metadata=") && www.contains("error=\"invalid_token\""));
}

#[tokio::test]
async fn the_metadata_document_is_served_at_both_paths() {
    let s = start().await;
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let res = s
            .http
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let doc: Value = res.json().await.unwrap();
        assert_eq!(doc["resource"], format!("{}/mcp", s.base));
        assert_eq!(doc["authorization_servers"], json!([s.sts.issuer_url()]));
        assert_eq!(
            doc["scopes_supported"],
            json!(["tickets:read", "billing:payout"])
        );
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    }
}

// The rmcp client.

#[tokio::test]
async fn the_rmcp_client_initializes_lists_and_calls_an_allowed_tool() {
    let s = start().await;
    let client = s.client(&s.reader()).await;
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["create_payout", "list_tickets"]);
    let result = client
        .call_tool(CallToolRequestParams::new("list_tickets"))
        .await
        .unwrap();
    let text = serde_json::to_value(&result.content).unwrap();
    assert!(text.to_string().contains("alice"), "{text}");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_denied_tool_answers_403_with_the_step_up_challenge() {
    let s = start().await;
    let client = s.client(&s.reader()).await;
    let err = client
        .call_tool(CallToolRequestParams::new("create_payout"))
        .await
        .unwrap_err();
    let www = err
        .auth_challenge()
        .expect("the 403 challenge reaches the client");
    assert!(
        www.contains("error=\"insufficient_scope\", scope=\"billing:payout\""),
        "{www}"
    );
    assert!(www.contains("resource_metadata="), "{www}");
    client.cancel().await.unwrap();

    // The JSON-RPC error itself, over raw HTTP.
    let (status, headers, body) = s
        .post(
            Some(&s.reader()),
            call(json!(42), "create_payout").to_string(),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        headers["www-authenticate"].to_str().unwrap(),
        format!(
            "Bearer realm=\"resource://api\", resource_metadata=\"{}\", error=\"insufficient_scope\", scope=\"billing:payout\"",
            s.metadata_url()
        )
    );
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], 42);
    assert_eq!(body["error"]["code"], caracal_verifier::mcp::DENIED_CODE);
    assert_eq!(body["error"]["data"]["error"], "scope_insufficient");
    assert_eq!(
        body["error"]["data"]["details"]["missing_scope"],
        "billing:payout"
    );
}

#[tokio::test]
async fn a_delegated_mandate_calls_the_payout_tool() {
    let s = start().await;
    let token = s
        .sts
        .mandate()
        .subject("bob")
        .scopes(["billing:payout"])
        .targets(["resource://billing"])
        .delegation(1)
        .sign();
    let client = s.client(&token).await;
    let result = client
        .call_tool(CallToolRequestParams::new("create_payout"))
        .await
        .unwrap();
    let text = serde_json::to_value(&result.content).unwrap().to_string();
    assert!(text.contains("bob") && text.contains("hops"), "{text}");
    client.cancel().await.unwrap();
    // Without delegation the same scope is not enough.
    let flat = s
        .sts
        .mandate()
        .scopes(["billing:payout"])
        .targets(["resource://billing"])
        .sign();
    let (status, _, body) = s
        .post(Some(&flat), call(json!(1), "create_payout").to_string())
        .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["data"]["error"], "delegation_required");
}
