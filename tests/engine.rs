//! The verification engine against a real loopback JWKS server and an injected clock.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as URL_SAFE;
use caracal_verifier::replay::{ReplayError, ReplayGuard};
use caracal_verifier::testing::{ChainHop, JwksFault, TestIssuer};
use caracal_verifier::{
    Algorithm, AnchorKind, AuthError, BoxFuture, CodeSpelling, ConfigError, ErrorCode, FetchError,
    HttpFetcher, InvalidReason, JwksFetcher, ManualClock, Requirements, SubjectType, Verifier,
    VerifierBuilder,
};
use serde_json::{Value, json};

const ZONE: &str = "zone-1";
const AUD: &str = "resource://api";
const T0: u64 = 1_790_000_100;

struct Env {
    sts: TestIssuer,
    clock: ManualClock,
    verifier: Verifier,
}

fn builder(sts: &TestIssuer, clock: &ManualClock) -> VerifierBuilder {
    Verifier::builder()
        .issuer(sts.issuer_url())
        .audience(AUD)
        .zone(ZONE)
        .clock(clock.clone())
}

async fn env_with(f: impl FnOnce(VerifierBuilder) -> VerifierBuilder) -> Env {
    let sts = TestIssuer::start(ZONE).await.expect("start issuer");
    let clock = ManualClock::new(Duration::from_secs(T0));
    sts.set_clock(clock.clone());
    let verifier = f(builder(&sts, &clock)).build().expect("build verifier");
    Env {
        sts,
        clock,
        verifier,
    }
}

async fn env() -> Env {
    env_with(|b| b).await
}

fn none() -> Requirements {
    Requirements::new()
}

async fn deny(e: &Env, token: &str, reqs: &Requirements) -> AuthError {
    e.verifier
        .verify(token, reqs)
        .await
        .expect_err("verification should fail")
}

async fn reason(e: &Env, token: &str) -> Option<InvalidReason> {
    let err = deny(e, token, &none()).await;
    assert_eq!(err.code(), ErrorCode::InvalidToken, "{err:?}");
    err.reason()
}

// ---------------------------------------------------------------------------
// The contract fixture

/// `jwt-claims.resource.valid.json` from the Caracal contracts (one copy, shared
/// with the claims parser's unit tests).
fn contract_fixture() -> Value {
    serde_json::from_str(include_str!("data/jwt-claims.resource.valid.json"))
        .expect("the contract fixture is JSON")
}

/// Serves `https://sts.example.com/...` from the loopback issuer: a user-supplied
/// fetcher, as a deployment behind a private CA or proxy would plug in.
#[derive(Debug)]
struct Rehost {
    from: String,
    to: String,
    inner: HttpFetcher,
}

impl JwksFetcher for Rehost {
    fn fetch<'a>(&'a self, url: &'a str, max: usize) -> BoxFuture<'a, Result<Vec<u8>, FetchError>> {
        Box::pin(async move {
            let url = url.replacen(&self.from, &self.to, 1);
            self.inner.fetch(&url, max).await
        })
    }
}

#[tokio::test]
async fn contract_fixture_verifies_when_signed() {
    let sts = TestIssuer::start(ZONE).await.unwrap();
    let clock = ManualClock::new(Duration::from_secs(T0));
    let verifier = Verifier::builder()
        .issuer("https://sts.example.com")
        .audience(AUD)
        .zone(ZONE)
        .clock(clock)
        .jwks_fetcher(Rehost {
            from: "https://sts.example.com".into(),
            to: sts.issuer_url(),
            inner: HttpFetcher::builder().build().unwrap(),
        })
        .build()
        .unwrap();
    let kid = sts.signing_kid();
    let header = serde_json::to_vec(&json!({"alg": "ES256", "typ": "JWT", "kid": kid})).unwrap();
    let token = sts.sign_compact(
        &kid,
        &header,
        &serde_json::to_vec(&contract_fixture()).unwrap(),
    );
    let reqs = Requirements::new()
        .scopes(["read", "write"])
        .targets(["resource://api"])
        .agent()
        .delegation()
        .chain_contains(["app-parent"])
        .max_hops(1);
    let m = verifier
        .verify(&token, &reqs)
        .await
        .expect("fixture verifies");
    assert_eq!(m.sid(), "authority-record-1");
    assert_eq!(m.root_sid(), "authority-record-root");
    assert_eq!(m.agent_session_id(), Some("session-child"));
    assert_eq!(m.delegation_edge_id(), Some("delegation-1"));
    assert_eq!(m.source_session_id(), Some("session-parent"));
    assert_eq!(m.target_session_id(), Some("session-child"));
    assert_eq!(m.delegation_path(), ["delegation-1"]);
    assert_eq!(m.delegation_chain().len(), 2);
    assert_eq!(
        m.delegation_chain().get(0).unwrap().application_id(),
        "app-parent"
    );
    assert_eq!(m.hop_count(), Some(1));
    assert_eq!(m.hops(), 1);
    assert_eq!(m.delegation_graph_epoch(), Some(7));
    assert_eq!(m.subject_type(), SubjectType::User);
    assert_eq!(m.scopes().collect::<Vec<_>>(), ["read", "write"]);
    assert_eq!(m.audience(), ["resource://api"]);
    assert_eq!(m.key_id(), kid);
    assert_eq!(m.algorithm(), Algorithm::ES256);
    assert_eq!(sts.jwks_requests(), 1);
}

// ---------------------------------------------------------------------------
// Configuration

#[test]
fn build_names_the_missing_or_wrong_setting() {
    let err = Verifier::builder()
        .audience(AUD)
        .zone(ZONE)
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::Missing("issuer"));
    let err = Verifier::builder()
        .issuer("https://sts")
        .zone(ZONE)
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::Missing("audience"));
    let err = Verifier::builder()
        .issuer("https://sts")
        .audience(AUD)
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::Missing("zone"));
    for bad in [
        "http://sts.example.com",
        "ftp://127.0.0.1",
        "not a url",
        "https://sts.example.com/?x=1",
        "https://user:pw@sts.example.com",
    ] {
        let err = Verifier::builder()
            .issuer(bad)
            .audience(AUD)
            .zone(ZONE)
            .build()
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    setting: "issuer",
                    ..
                }
            ),
            "{bad}: {err}"
        );
    }
    for ok in [
        "http://127.0.0.1:9",
        "http://localhost:9",
        "http://[::1]:9",
        "https://sts.example.com/",
    ] {
        Verifier::builder()
            .issuer(ok)
            .audience(AUD)
            .zone(ZONE)
            .build()
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    let err = Verifier::builder()
        .issuer("https://s")
        .audience(AUD)
        .zone(ZONE)
        .algorithms([])
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        ConfigError::Invalid {
            setting: "algorithms",
            ..
        }
    ));
}

#[test]
fn from_lookup_reads_the_documented_variables() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let v = VerifierBuilder::from_lookup(&vars(&[
        ("CARACAL_STS_URL", "https://sts.example.com"),
        ("CARACAL_ZONE_ID", "zone-9"),
        ("CARACAL_AUDIENCE", "resource://billing"),
        ("CARACAL_JWKS_TTL_SECS", "60"),
    ]))
    .unwrap()
    .build()
    .unwrap();
    assert_eq!(
        (v.issuer(), v.zone(), v.audience()),
        ("https://sts.example.com", "zone-9", "resource://billing")
    );
    let err = VerifierBuilder::from_lookup(&vars(&[
        ("CARACAL_STS_URL", "https://s"),
        ("CARACAL_AUDIENCE", "a"),
    ]))
    .unwrap_err();
    assert_eq!(
        err,
        ConfigError::Env {
            var: "CARACAL_ZONE_ID",
            reason: "not set".into()
        }
    );
    let err = VerifierBuilder::from_lookup(&vars(&[
        ("CARACAL_STS_URL", "https://s"),
        ("CARACAL_ZONE_ID", "z"),
        ("CARACAL_AUDIENCE", "a"),
        ("CARACAL_LEEWAY_SECS", "soon"),
    ]))
    .unwrap_err();
    assert!(matches!(
        err,
        ConfigError::Env {
            var: "CARACAL_LEEWAY_SECS",
            ..
        }
    ));
}

/// The SDK spelling is a wire rendering only: the verifier's codes stay documented.
#[tokio::test]
async fn the_code_spelling_is_read_from_the_environment_and_changes_only_rendering() {
    let lookup = |spelling: &'static str| {
        move |k: &str| {
            [
                ("CARACAL_STS_URL", "https://sts.example.com"),
                ("CARACAL_ZONE_ID", ZONE),
                ("CARACAL_AUDIENCE", AUD),
                ("CARACAL_CODE_SPELLING", spelling),
                ("CARACAL_MAX_TOKEN_BYTES", "20000"),
            ]
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
        }
    };
    let v = VerifierBuilder::from_lookup(&lookup("sdk"))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(v.code_spelling(), CodeSpelling::CaracalSdk);
    let v = VerifierBuilder::from_lookup(&lookup("documented"))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(v.code_spelling(), CodeSpelling::Documented);
    assert!(VerifierBuilder::from_lookup(&lookup("caracal")).is_err());

    let e = env_with(|b| b.code_spelling(CodeSpelling::CaracalSdk)).await;
    let err = deny(
        &e,
        &e.sts.mandate().sign(),
        &Requirements::new().scopes(["a"]),
    )
    .await;
    assert_eq!(err.code(), ErrorCode::ScopeInsufficient);
    assert_eq!(err.code().as_str(), "scope_insufficient");
    assert_eq!(err.to_json("r")["error"], "scope_insufficient");
    let body = err.to_json_spelled("r", e.verifier.code_spelling());
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(body["error_hint"], err.hint());
}

// ---------------------------------------------------------------------------
// Claims

#[tokio::test]
async fn valid_mandate_exposes_claims() {
    let e = env().await;
    let token = e
        .sts
        .mandate()
        .scopes(["a", "b"])
        .agent_session("agent-1")
        .sign();
    let m = e.verifier.verify(&token, &none()).await.unwrap();
    assert_eq!(m.zone_id(), ZONE);
    assert_eq!(m.issuer(), e.sts.issuer_url());
    assert!(m.has_scope("a") && m.has_scope("b") && !m.has_scope("c"));
    assert_eq!(m.agent_session_id(), Some("agent-1"));
    assert_eq!(m.delegation_edge_id(), None);
    assert_eq!(m.expires_at(), T0 + 300);
}

#[tokio::test]
async fn issuer_is_an_exact_compare() {
    let e = env().await;
    let iss = e.sts.issuer_url();
    for bad in [
        json!(format!("{iss}/")),
        json!(iss[..iss.len() - 1].to_string()),
        json!(iss.to_uppercase()),
        json!(format!("{iss}x")),
    ] {
        let token = e.sts.mandate().claim("iss", bad.clone()).sign();
        assert_eq!(
            reason(&e, &token).await,
            Some(InvalidReason::Issuer),
            "{bad}"
        );
    }
    for bad in [json!([iss]), json!(7)] {
        let token = e.sts.mandate().claim("iss", bad.clone()).sign();
        assert_eq!(
            reason(&e, &token).await,
            Some(InvalidReason::Claims),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn audience_string_or_array_containing_ours() {
    let e = env().await;
    let ok = e.sts.mandate().claim("aud", json!(["other", AUD])).sign();
    e.verifier.verify(&ok, &none()).await.unwrap();
    for bad in [
        json!("resource://ap"),
        json!(["other"]),
        json!("resource://api/"),
    ] {
        let token = e.sts.mandate().claim("aud", bad.clone()).sign();
        assert_eq!(
            reason(&e, &token).await,
            Some(InvalidReason::Audience),
            "{bad}"
        );
    }
    for bad in [json!([]), json!(1), json!([null])] {
        let token = e.sts.mandate().claim("aud", bad.clone()).sign();
        assert_eq!(
            reason(&e, &token).await,
            Some(InvalidReason::Claims),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn zone_mismatch_is_zone_invalid() {
    let e = env().await;
    for zone in [
        "zone-2",
        "zone-1&zone_id=zone-2",
        "../zone-1",
        "zone-1%00",
        "ZONE-1",
    ] {
        let token = e.sts.mandate().zone(zone).sign();
        assert_eq!(
            deny(&e, &token, &none()).await,
            AuthError::ZoneInvalid,
            "{zone}"
        );
    }
}

/// A missing or non-string `zone_id` is `zone_invalid`, as Caracal answers it, but
/// only once the checks Caracal runs before `zone_id` have passed.
#[tokio::test]
async fn a_missing_or_non_string_zone_id_is_zone_invalid() {
    let e = env().await;
    let mut bad = vec![("missing", e.sts.mandate().remove_claim("zone_id").sign())];
    for (name, v) in [
        ("null", Value::Null),
        ("number", json!(1)),
        ("empty", json!("")),
        ("array", json!([ZONE])),
    ] {
        bad.push((name, e.sts.mandate().claim("zone_id", v).sign()));
    }
    for (name, token) in &bad {
        let err = deny(&e, token, &none()).await;
        assert_eq!(err.code(), ErrorCode::ZoneInvalid, "zone_id {name}");
        assert_eq!(err.status(), 401);
    }
    // Earlier checks answer first; other claim faults stay `invalid_token`.
    let no_zone = || e.sts.mandate().remove_claim("zone_id");
    for (token, want) in [
        (
            no_zone().issued_at(T0 - 600).expires_at(T0).sign(),
            InvalidReason::Expired,
        ),
        (
            no_zone().claim("iss", json!("https://evil.example")).sign(),
            InvalidReason::Issuer,
        ),
        (
            no_zone().audience("resource://other").sign(),
            InvalidReason::Audience,
        ),
        (
            no_zone().claim("use", json!("session")).sign(),
            InvalidReason::Use,
        ),
        (no_zone().remove_claim("sub").sign(), InvalidReason::Claims),
        (
            e.sts
                .mandate()
                .claim("zone_id", json!(7))
                .claim("hop_count", json!(-1))
                .sign(),
            InvalidReason::Claims,
        ),
    ] {
        assert_eq!(reason(&e, &token).await, Some(want));
    }
    // And `zone_id` answers before the route.
    let err = deny(&e, &no_zone().sign(), &Requirements::new().scopes(["x"])).await;
    assert_eq!(err.code(), ErrorCode::ZoneInvalid);
}

#[tokio::test]
async fn use_must_be_resource_unless_configured() {
    let e = env().await;
    for u in ["session", "gateway", "Resource", ""] {
        let token = e.sts.mandate().claim("use", json!(u)).sign();
        assert_eq!(reason(&e, &token).await, Some(InvalidReason::Use), "{u}");
    }
    let gw = env_with(|b| b.token_use("gateway")).await;
    let token = gw.sts.mandate().claim("use", json!("gateway")).sign();
    gw.verifier.verify(&token, &none()).await.unwrap();
}

#[tokio::test]
async fn sub_type_user_or_application() {
    let e = env().await;
    let token = e
        .sts
        .mandate()
        .claim("sub_type", json!("application"))
        .sign();
    let m = e.verifier.verify(&token, &none()).await.unwrap();
    assert_eq!(m.subject_type(), SubjectType::Application);
    let token = e.sts.mandate().claim("sub_type", json!("agent")).sign();
    assert_eq!(reason(&e, &token).await, Some(InvalidReason::Claims));
}

#[tokio::test]
async fn required_claims_and_types() {
    let e = env().await;
    for name in [
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "jti",
        "client_id",
        "sid",
        "root_sid",
        "use",
        "sub_type",
    ] {
        let token = e.sts.mandate().remove_claim(name).sign();
        assert_eq!(
            reason(&e, &token).await,
            Some(InvalidReason::Claims),
            "missing {name}"
        );
    }
    for (name, v) in [
        ("hop_count", json!(-1)),
        ("delegation_graph_epoch", json!("7")),
        ("scope", json!(null)),
        ("agent_session_id", json!(5)),
        ("target", json!("resource://api")),
        ("delegation_path", json!(["ok", 3])),
        ("delegation_chain", json!([{"agent_session_id": "s"}])),
    ] {
        let token = e.sts.mandate().claim(name, v.clone()).sign();
        assert_eq!(
            reason(&e, &token).await,
            Some(InvalidReason::Claims),
            "{name}={v}"
        );
    }
}

#[tokio::test]
async fn time_claims_with_sixty_seconds_leeway() {
    let e = env().await;
    let ok = |t: String| {
        let v = e.verifier.clone();
        async move { v.verify(&t, &Requirements::new()).await }
    };
    // exp: no leeway (see `exp_has_no_leeway`).
    assert!(ok(e.sts.mandate().expires_at(T0 + 1).sign()).await.is_ok());
    assert_eq!(
        reason(&e, &e.sts.mandate().expires_at(T0).sign()).await,
        Some(InvalidReason::Expired)
    );
    // nbf: enforced when present.
    assert!(ok(e.sts.mandate().not_before(T0 + 60).sign()).await.is_ok());
    assert_eq!(
        reason(&e, &e.sts.mandate().not_before(T0 + 61).sign()).await,
        Some(InvalidReason::NotYetValid)
    );
    // iat in the future beyond leeway.
    assert!(ok(e.sts.mandate().issued_at(T0 + 60).sign()).await.is_ok());
    assert_eq!(
        reason(&e, &e.sts.mandate().issued_at(T0 + 61).sign()).await,
        Some(InvalidReason::IssuedInFuture)
    );
}

/// Caracal re-checks active authority with no leeway: a mandate is dead at `exp`.
/// Checked at exp-1, exp and exp+59 (inside the old leeway), for a token seen for
/// the first time and for one already in the mandate cache.
#[tokio::test]
async fn exp_has_no_leeway() {
    let e = env().await;
    let exp = T0 + 100;
    let cached = e.sts.mandate().issued_at(T0).expires_at(exp).sign();
    e.verifier.verify(&cached, &none()).await.unwrap();
    e.verifier.verify(&cached, &none()).await.unwrap();

    e.clock.set(Duration::from_secs(exp - 1));
    let fresh = e.sts.mandate().issued_at(T0).expires_at(exp).sign();
    e.verifier.verify(&fresh, &none()).await.expect("exp-1");
    e.verifier
        .verify(&cached, &none())
        .await
        .expect("exp-1, cached");

    for at in [exp, exp + 1, exp + 59] {
        e.clock.set(Duration::from_secs(at));
        let fresh = e.sts.mandate().issued_at(T0).expires_at(exp).sign();
        for token in [&fresh, &cached] {
            let err = deny(&e, token, &none()).await;
            assert_eq!(err.code(), ErrorCode::InvalidToken, "at exp+{}", at - exp);
            assert_eq!(err.status(), 401);
            assert_eq!(err.reason(), Some(InvalidReason::Expired));
        }
    }
    // `authenticate` (no route) draws the same line.
    e.clock.set(Duration::from_secs(exp));
    assert_eq!(
        e.verifier.authenticate(&cached).await.unwrap_err().reason(),
        Some(InvalidReason::Expired)
    );
}

#[tokio::test]
async fn cached_mandate_still_expires() {
    let e = env().await;
    let token = e.sts.mandate().ttl(120).sign();
    e.verifier.verify(&token, &none()).await.unwrap();
    e.verifier.verify(&token, &none()).await.unwrap();
    e.clock.advance(Duration::from_secs(120 + 60));
    assert_eq!(reason(&e, &token).await, Some(InvalidReason::Expired));
}

// ---------------------------------------------------------------------------
// Route requirements

#[tokio::test]
async fn scopes_exact_and_missing_one_is_named() {
    let e = env().await;
    let token = e
        .sts
        .mandate()
        .scopes(["billing:read", "admin:read"])
        .sign();
    e.verifier
        .verify(&token, &Requirements::new().scopes(["billing:read"]))
        .await
        .unwrap();
    for need in ["admin", "Admin:read", "billing", "billing:read "] {
        let err = deny(
            &e,
            &token,
            &Requirements::new().scopes(["billing:read", need]),
        )
        .await;
        assert_eq!(err.code(), ErrorCode::ScopeInsufficient, "{need}");
        assert_eq!(err.status().as_u16(), 403);
        assert_eq!(err.details()["missing_scope"], json!(need));
    }
    let no_scope = e.sts.mandate().sign();
    assert_eq!(
        deny(&e, &no_scope, &Requirements::new().scopes(["x"]))
            .await
            .code(),
        ErrorCode::ScopeInsufficient
    );
}

/// Every Unicode `White_Space` separator Go's `strings.Fields` splits on (the STS
/// copies the requested scope string as sent).
const SCOPE_SEPARATORS: [char; 25] = [
    '\t', '\n', '\u{0B}', '\u{0C}', '\r', ' ', '\u{85}', '\u{A0}', '\u{1680}', '\u{2000}',
    '\u{2001}', '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2007}', '\u{2008}',
    '\u{2009}', '\u{200A}', '\u{2028}', '\u{2029}', '\u{202F}', '\u{205F}', '\u{3000}',
];

#[tokio::test]
async fn scopes_split_on_any_unicode_white_space() {
    let e = env().await;
    let both = Requirements::new().scopes(["tickets:read", "tickets:write"]);
    for sep in SCOPE_SEPARATORS {
        let scope = format!("tickets:read{sep}{sep}tickets:write");
        let token = e.sts.mandate().claim("scope", json!(scope)).sign();
        let m = e
            .verifier
            .verify(&token, &both)
            .await
            .unwrap_or_else(|err| panic!("U+{:04X}: {err}", u32::from(sep)));
        assert_eq!(
            m.scopes().collect::<Vec<_>>(),
            ["tickets:read", "tickets:write"]
        );
    }
    // Not White_Space, as in Go: the two scopes stay one token that matches neither.
    for sep in ['\u{200B}', '\u{FEFF}'] {
        let scope = format!("tickets:read{sep}tickets:write");
        let token = e.sts.mandate().claim("scope", json!(scope)).sign();
        let err = deny(&e, &token, &both).await;
        assert_eq!(
            err.code(),
            ErrorCode::ScopeInsufficient,
            "U+{:04X}",
            u32::from(sep)
        );
        assert_eq!(err.status(), 403);
        assert_eq!(err.details()["missing_scope"], "tickets:read");
    }
    // Matching stays exact per token.
    let token = e
        .sts
        .mandate()
        .claim("scope", json!("tickets:read\u{3000}tickets:writer"))
        .sign();
    let err = deny(&e, &token, &both).await;
    assert_eq!(err.details()["missing_scope"], "tickets:write");
}

/// Caracal's guard order: scopes, agent session, delegation, chain contains, hop
/// limit, targets, then revocation anchors and the delegation epoch.
#[tokio::test]
async fn checks_run_in_caracal_order() {
    let e = env().await;
    let code = |reqs: Requirements, token: String| {
        let v = e.verifier.clone();
        async move { v.verify(&token, &reqs).await.unwrap_err().code() }
    };
    let scoped_target = || {
        Requirements::new()
            .scopes(["tickets:read"])
            .targets(["resource://billing"])
    };
    // Lacking both a scope and a target: the scope answers (403, not 401).
    let err = deny(&e, &e.sts.mandate().sign(), &scoped_target()).await;
    assert_eq!(err.code(), ErrorCode::ScopeInsufficient);
    assert_eq!(err.status(), 403);
    // Lacking only the target: 401 `invalid_token`, reason `target`.
    let err = deny(
        &e,
        &e.sts.mandate().scopes(["tickets:read"]).sign(),
        &scoped_target(),
    )
    .await;
    assert_eq!(
        (err.status().as_u16(), err.reason()),
        (401, Some(InvalidReason::Target))
    );
    // Each route check answers before the targets.
    let target = || Requirements::new().targets(["resource://billing"]);
    assert_eq!(
        code(target().agent(), e.sts.mandate().sign()).await,
        ErrorCode::AgentIdentityRequired
    );
    assert_eq!(
        code(target().delegation(), e.sts.mandate().sign()).await,
        ErrorCode::DelegationRequired
    );
    assert_eq!(
        code(target().chain_contains(["app-x"]), e.sts.mandate().sign()).await,
        ErrorCode::ChainMismatch
    );
    assert_eq!(
        code(target().max_hops(1), e.sts.mandate().delegation(2).sign()).await,
        ErrorCode::HopCountExceeded
    );
    // Scopes before agent, agent before delegation, delegation before the chain.
    assert_eq!(
        code(
            Requirements::new().scopes(["a"]).agent(),
            e.sts.mandate().sign()
        )
        .await,
        ErrorCode::ScopeInsufficient
    );
    assert_eq!(
        code(
            Requirements::new().agent().delegation(),
            e.sts.mandate().sign()
        )
        .await,
        ErrorCode::AgentIdentityRequired
    );
    assert_eq!(
        code(
            Requirements::new().delegation().chain_contains(["app-x"]),
            e.sts.mandate().sign()
        )
        .await,
        ErrorCode::DelegationRequired
    );

    // Revocation runs last: a revoked mandate that fails the route gets the route's
    // answer; one that meets the route is `session_revoked`.
    let revoked = e.sts.mandate().sid("sid-revoked").sign();
    e.verifier.revocations().revoke("sid-revoked");
    assert_eq!(
        code(Requirements::new().scopes(["a"]), revoked.clone()).await,
        ErrorCode::ScopeInsufficient
    );
    let err = deny(&e, &revoked, &target()).await;
    assert_eq!(err.reason(), Some(InvalidReason::Target));
    assert_eq!(code(none(), revoked).await, ErrorCode::SessionRevoked);
    // Anchors before the epoch; the epoch after the route too.
    e.verifier.revocations().raise_epoch(ZONE, 9);
    let both = e.sts.mandate().sid("sid-revoked-2").epoch(3).sign();
    e.verifier.revocations().revoke("sid-revoked-2");
    assert_eq!(code(none(), both).await, ErrorCode::SessionRevoked);
    let stale = e.sts.mandate().epoch(3).sign();
    assert_eq!(
        code(Requirements::new().scopes(["a"]), stale.clone()).await,
        ErrorCode::ScopeInsufficient
    );
    assert_eq!(code(none(), stale).await, ErrorCode::DelegationStale);
}

/// The Gateway's `denials_expiring`: a route may refuse mandates about to lapse.
#[tokio::test]
async fn min_remaining_refuses_a_mandate_about_to_expire() {
    let e = env().await;
    let fresh = Requirements::new().min_remaining(Duration::from_secs(60));
    assert_eq!(fresh.min_remaining_window(), Some(Duration::from_secs(60)));
    assert_eq!(none().min_remaining_window(), None);
    let exp = T0 + 100;
    let token = e.sts.mandate().issued_at(T0).expires_at(exp).sign();
    // 100 s left, then exactly 60 s left: accepted.
    e.verifier.verify(&token, &fresh).await.unwrap();
    e.clock.set(Duration::from_secs(exp - 60));
    e.verifier.verify(&token, &fresh).await.unwrap();
    // 59 s left: refused on this route, still fine on others.
    e.clock.set(Duration::from_secs(exp - 59));
    let err = deny(&e, &token, &fresh).await;
    assert_eq!(err.code(), ErrorCode::InvalidToken);
    assert_eq!(err.status(), 401);
    assert_eq!(err.reason(), Some(InvalidReason::Expiring));
    assert_eq!(err.details()["reason"], "expiring");
    e.verifier.verify(&token, &none()).await.unwrap();
    // A stacked layer reusing the mandate applies it too.
    let m = e.verifier.authenticate(&token).await.unwrap();
    assert_eq!(
        e.verifier.authorize(&m, &fresh).unwrap_err().reason(),
        Some(InvalidReason::Expiring)
    );
    // Merged requirements keep the longer window; sub-seconds round up.
    let merged = none()
        .min_remaining(Duration::from_millis(10_500))
        .and(&fresh);
    assert_eq!(merged.min_remaining_window(), Some(Duration::from_secs(60)));
    assert_eq!(
        none()
            .min_remaining(Duration::from_millis(10_500))
            .min_remaining_window(),
        Some(Duration::from_secs(11))
    );
    // It answers before the other route checks.
    let err = deny(&e, &token, &fresh.clone().scopes(["missing"])).await;
    assert_eq!(err.reason(), Some(InvalidReason::Expiring));
}

#[tokio::test]
async fn targets_must_all_be_present() {
    let e = env().await;
    let token = e
        .sts
        .mandate()
        .targets(["resource://billing", "resource://api"])
        .sign();
    e.verifier
        .verify(&token, &Requirements::new().targets(["resource://billing"]))
        .await
        .unwrap();
    let err = deny(
        &e,
        &token,
        &Requirements::new().targets(["resource://billing", "resource://other"]),
    )
    .await;
    assert_eq!(
        (err.code(), err.reason()),
        (ErrorCode::InvalidToken, Some(InvalidReason::Target))
    );
    assert_eq!(err.status().as_u16(), 401);
}

#[tokio::test]
async fn agent_identity_required() {
    let e = env().await;
    let reqs = Requirements::new().agent();
    let without = e.sts.mandate().sign();
    assert_eq!(
        deny(&e, &without, &reqs).await,
        AuthError::AgentIdentityRequired
    );
    let empty = e.sts.mandate().claim("agent_session_id", json!("")).sign();
    assert_eq!(
        deny(&e, &empty, &reqs).await,
        AuthError::AgentIdentityRequired
    );
    let with = e.sts.mandate().agent_session("agent-1").sign();
    e.verifier.verify(&with, &reqs).await.unwrap();
}

#[tokio::test]
async fn delegation_required() {
    let e = env().await;
    let reqs = Requirements::new().delegation();
    assert_eq!(
        deny(&e, &e.sts.mandate().sign(), &reqs).await,
        AuthError::DelegationRequired
    );
    e.verifier
        .verify(&e.sts.mandate().delegation(1).sign(), &reqs)
        .await
        .unwrap();
}

#[tokio::test]
async fn chain_contains_each_listed_application() {
    let e = env().await;
    let token = e.sts.mandate().delegation(2).sign();
    e.verifier
        .verify(
            &token,
            &Requirements::new().chain_contains(["app-hop-0", "app-hop-1", "app-1"]),
        )
        .await
        .unwrap();
    let err = deny(
        &e,
        &token,
        &Requirements::new().chain_contains(["app-hop-0", "app-orchestrator"]),
    )
    .await;
    assert_eq!(err.code(), ErrorCode::ChainMismatch);
    assert_eq!(err.details()["application_id"], "app-orchestrator");
    // No chain at all: nothing is in it.
    let plain = e.sts.mandate().sign();
    assert_eq!(
        deny(
            &e,
            &plain,
            &Requirements::new().chain_contains(["app-hop-0"])
        )
        .await
        .code(),
        ErrorCode::ChainMismatch
    );
}

/// A mandate minted directly for the required application, with no delegation
/// chain, is not a delegation through it: Caracal's guard counts chain hops only.
#[tokio::test]
async fn chain_contains_ignores_a_bare_client_id() {
    let e = env().await;
    let reqs = Requirements::new().chain_contains(["app-orchestrator"]);
    let direct = e.sts.mandate().client_id("app-orchestrator").sign();
    let err = deny(&e, &direct, &reqs).await;
    assert_eq!(err.code(), ErrorCode::ChainMismatch);
    assert_eq!(err.status(), 403);
    assert_eq!(err.details()["reason"], "missing_application");
    assert_eq!(err.details()["application_id"], "app-orchestrator");
    // The same client as the chain's last hop is in the chain.
    let delegated = e
        .sts
        .mandate()
        .client_id("app-orchestrator")
        .delegation(1)
        .sign();
    e.verifier.verify(&delegated, &reqs).await.unwrap();
}

#[tokio::test]
async fn hops_are_the_larger_of_hop_count_and_chain_edges() {
    let e = env().await;
    let three = e.sts.mandate().delegation(3).sign();
    e.verifier
        .verify(&three, &Requirements::new().max_hops(3))
        .await
        .unwrap();
    let err = deny(&e, &three, &Requirements::new().max_hops(2)).await;
    assert!(
        matches!(
            err,
            AuthError::HopCountExceeded {
                hops: 3,
                limit: 2,
                ..
            }
        ),
        "{err:?}"
    );
    // hop_count understated: the chain still counts.
    let understated = e.sts.mandate().delegation(3).hop_count(1).sign();
    assert_eq!(
        deny(&e, &understated, &Requirements::new().max_hops(2))
            .await
            .code(),
        ErrorCode::HopCountExceeded
    );
    // hop_count alone, no chain.
    let claimed = e.sts.mandate().hop_count(11).sign();
    let err = deny(&e, &claimed, &none()).await;
    assert!(
        matches!(
            err,
            AuthError::HopCountExceeded {
                hops: 11,
                limit: 10,
                ..
            }
        ),
        "the default limit is 10: {err:?}"
    );
}

#[tokio::test]
async fn chain_must_be_self_consistent() {
    let e = env().await;
    let hop = |app: &str, sess: Option<&str>, edge: Option<&str>| ChainHop {
        application_id: app.into(),
        agent_session_id: sess.map(Into::into),
        delegation_edge_id: edge.map(Into::into),
    };
    let base = || {
        e.sts
            .mandate()
            .agent_session("s-child")
            .claim("delegation_edge_id", json!("edge-1"))
    };
    let good = base()
        .chain(vec![
            hop("app-parent", Some("s-parent"), Some("edge-1")),
            hop("app-1", Some("s-child"), None),
        ])
        .sign();
    e.verifier.verify(&good, &none()).await.unwrap();
    let cases = [
        (
            "last hop is another app",
            vec![
                hop("app-parent", None, Some("edge-1")),
                hop("app-9", Some("s-child"), None),
            ],
        ),
        (
            "last hop is another session",
            vec![
                hop("app-parent", None, Some("edge-1")),
                hop("app-1", Some("s-other"), None),
            ],
        ),
        (
            "edge not in chain",
            vec![
                hop("app-parent", None, Some("edge-2")),
                hop("app-1", Some("s-child"), None),
            ],
        ),
    ];
    for (what, chain) in cases {
        let token = base().chain(chain).sign();
        assert_eq!(
            deny(&e, &token, &none()).await.code(),
            ErrorCode::ChainMismatch,
            "{what}"
        );
    }
}

// ---------------------------------------------------------------------------
// Revocation

#[tokio::test]
async fn every_anchor_revokes_including_upstream_hops() {
    let anchors = [
        ("sid-x", AnchorKind::Sid),
        ("root-x", AnchorKind::RootSid),
        ("session-hop-2", AnchorKind::AgentSession),
        ("edge-2", AnchorKind::DelegationEdge),
        ("session-hop-0", AnchorKind::ChainSession),
        ("edge-1", AnchorKind::ChainEdge),
    ];
    for (id, kind) in anchors {
        // A fresh verifier (and revocation set) per anchor.
        let e = env().await;
        let token = e
            .sts
            .mandate()
            .sid("sid-x")
            .root_sid("root-x")
            .delegation(2)
            .sign();
        e.verifier
            .verify(&token, &none())
            .await
            .expect("valid before revocation");
        e.verifier.revocations().revoke(id);
        let err = deny(&e, &token, &none()).await;
        assert!(
            matches!(err, AuthError::SessionRevoked { anchor, .. } if anchor == kind),
            "{id}: {err:?}"
        );
        assert_eq!(err.status().as_u16(), 401);
    }
}

#[tokio::test]
async fn revocation_expires_with_its_ttl() {
    let e = env().await;
    let token = e.sts.mandate().sid("s1").ttl(3 * 24 * 3600).sign();
    e.verifier.revocations().revoke("s1");
    assert_eq!(
        deny(&e, &token, &none()).await.code(),
        ErrorCode::SessionRevoked
    );
    e.clock.advance(Duration::from_secs(24 * 3600 + 1));
    // The JWKS is now old too: keep the issuer answering so keys refresh.
    e.verifier
        .verify(&token, &none())
        .await
        .expect("revocation forgotten after 24 h");
}

#[tokio::test]
async fn stale_delegation_epoch() {
    let e = env().await;
    let token = e.sts.mandate().delegation(1).epoch(6).sign();
    e.verifier.verify(&token, &none()).await.unwrap();
    e.verifier.revocations().raise_epoch(ZONE, 7);
    let err = deny(&e, &token, &none()).await;
    assert!(
        matches!(
            err,
            AuthError::DelegationStale {
                token: 6,
                current: 7,
                ..
            }
        ),
        "{err:?}"
    );
    let current = e.sts.mandate().delegation(1).epoch(7).sign();
    e.verifier.verify(&current, &none()).await.unwrap();
    e.verifier.revocations().raise_epoch(ZONE, 3);
    e.verifier
        .verify(&current, &none())
        .await
        .expect("epochs never go down");
}

// ---------------------------------------------------------------------------
// Zone JWKS

#[tokio::test]
async fn cold_burst_makes_one_fetch() {
    let e = env().await;
    let token = e.sts.mandate().sign();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let v = e.verifier.clone();
        let t = token.clone();
        tasks.push(tokio::spawn(async move {
            v.verify(&t, &Requirements::new()).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(e.sts.jwks_requests(), 1);
    assert_eq!(e.verifier.jwks_fetches(), 1);
}

#[tokio::test]
async fn issuer_down_at_start_is_sts_unavailable_then_recovers() {
    let e = env().await;
    e.sts.set_fault(Some(JwksFault::Status(503)));
    assert!(!e.verifier.is_ready());
    assert!(e.verifier.warm_up().await.is_err());
    let token = e.sts.mandate().sign();
    let err = deny(&e, &token, &none()).await;
    assert_eq!(
        (err.code(), err.status().as_u16()),
        (ErrorCode::StsUnavailable, 503)
    );
    // Within the cooldown no new fetch is made.
    let before = e.sts.jwks_requests();
    deny(&e, &token, &none()).await;
    assert_eq!(e.sts.jwks_requests(), before);
    // The issuer returns; after the cooldown the next request fetches and succeeds.
    e.sts.set_fault(None);
    e.clock.advance(Duration::from_secs(2));
    e.verifier.verify(&token, &none()).await.unwrap();
    assert!(e.verifier.is_ready());
}

#[tokio::test]
async fn ttl_expiry_refreshes_in_background_and_stale_keys_serve_until_max_staleness() {
    let e = env_with(|b| {
        b.jwks_ttl(Duration::from_secs(300))
            .jwks_max_staleness(Duration::from_secs(900))
    })
    .await;
    e.verifier.warm_up().await.unwrap();
    assert_eq!(e.sts.jwks_requests(), 1);
    // Past the TTL: served from cache while one background refresh runs.
    e.clock.advance(Duration::from_secs(301));
    let before = e.verifier.jwks_refreshes();
    e.verifier
        .verify(&e.sts.mandate().sign(), &none())
        .await
        .unwrap();
    refreshed_since(&e.verifier, before).await;
    assert_eq!(e.sts.jwks_requests(), 2);
    // The issuer goes down. Keys keep serving up to max staleness.
    e.sts.set_fault(Some(JwksFault::Status(500)));
    e.clock.advance(Duration::from_secs(800));
    e.verifier
        .verify(&e.sts.mandate().sign(), &none())
        .await
        .expect("last good keys still serve");
    e.clock.advance(Duration::from_secs(200));
    let err = deny(&e, &e.sts.mandate().sign(), &none()).await;
    assert_eq!(err.code(), ErrorCode::StsUnavailable);
    assert!(!e.verifier.readiness().keys);
    e.sts.set_fault(None);
    e.clock.advance(Duration::from_secs(3));
    e.verifier
        .verify(&e.sts.mandate().sign(), &none())
        .await
        .unwrap();
}

#[tokio::test]
async fn unknown_kid_refetches_once_and_random_kids_are_rate_limited() {
    let e = env().await;
    e.verifier.warm_up().await.unwrap();
    // A rotated key is picked up with one refetch (after the cooldown).
    e.clock.advance(Duration::from_secs(3));
    let new_kid = e.sts.rotate_key();
    e.verifier
        .verify(&e.sts.mandate().sign(), &none())
        .await
        .unwrap();
    assert_eq!(e.sts.jwks_requests(), 2);
    assert_eq!(
        e.verifier
            .verify(&e.sts.mandate().sign(), &none())
            .await
            .unwrap()
            .key_id(),
        new_kid
    );
    // A flood of random kids within one cooldown makes at most one fetch.
    e.clock.advance(Duration::from_secs(3));
    for i in 0..500 {
        let token = e
            .sts
            .mandate()
            .header("kid", json!(format!("random-{i}")))
            .sign();
        assert_eq!(reason(&e, &token).await, Some(InvalidReason::UnknownKey));
    }
    assert_eq!(e.sts.jwks_requests(), 3);
}

#[tokio::test]
async fn removed_key_stops_verifying_at_the_next_refresh_even_when_cached() {
    let e = env_with(|b| {
        b.jwks_ttl(Duration::from_secs(60))
            .jwks_max_staleness(Duration::from_secs(600))
    })
    .await;
    let old = e.sts.signing_kid();
    let token = e.sts.mandate().ttl(3600).sign();
    e.verifier.verify(&token, &none()).await.unwrap();
    e.verifier.verify(&token, &none()).await.unwrap();
    e.sts.rotate_key();
    e.sts.remove_key(&old);
    e.clock.advance(Duration::from_secs(61));
    let before = e.verifier.jwks_refreshes();
    // Past the TTL, under the new kid: this request starts the refresh that drops
    // the old key.
    let _ = e.verifier.verify(&e.sts.mandate().sign(), &none()).await;
    refreshed_since(&e.verifier, before).await;
    assert_eq!(e.sts.jwks_requests(), 2);
    assert_eq!(reason(&e, &token).await, Some(InvalidReason::UnknownKey));
}

#[tokio::test]
async fn algorithm_is_pinned_by_the_key() {
    let e = env().await;
    for alg in [
        "ES384", "EdDSA", "RS256", "PS256", "HS256", "none", "NONE", "es256",
    ] {
        let token = e.sts.mandate().header("alg", json!(alg)).sign();
        assert_eq!(
            reason(&e, &token).await,
            Some(InvalidReason::Algorithm),
            "{alg}"
        );
    }
    // Opting into ES384 does not let an ES256 key verify an ES384-labelled token.
    let multi = env_with(|b| b.algorithms([Algorithm::ES256, Algorithm::ES384])).await;
    let token = multi.sts.mandate().header("alg", json!("ES384")).sign();
    assert_eq!(reason(&multi, &token).await, Some(InvalidReason::Algorithm));
}

#[tokio::test]
async fn another_zones_key_is_not_trusted() {
    let e = env().await;
    let other = e.sts.add_zone("zone-2");
    let token = e.sts.mandate().kid(&other).sign();
    assert_eq!(reason(&e, &token).await, Some(InvalidReason::UnknownKey));
    let forged = e.sts.mandate().signing_key(&other).sign();
    assert_eq!(reason(&e, &forged).await, Some(InvalidReason::Signature));
}

// ---------------------------------------------------------------------------
// Errors and secrecy

#[derive(Debug)]
struct BrokenGuard;

impl ReplayGuard for BrokenGuard {
    fn first_use<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: u64,
    ) -> BoxFuture<'a, Result<bool, ReplayError>> {
        Box::pin(async { Err(ReplayError::new("store down")) })
    }
}

/// A resource id shaped like the STS's: UUIDs.
fn resource_id(i: usize) -> String {
    format!("resource://7d1c2a9e-4b3f-4c8e-9a1d-{i:012x}/0f6b9c3e-2d4a-4e7b-8c5f-{i:012x}")
}

/// A mandate as Caracal's STS mints it for `n` granted resources: each listed in
/// both `aud` and `target`.
fn with_resources(sts: &TestIssuer, n: usize) -> String {
    let resources: Vec<String> = (0..n).map(resource_id).collect();
    let mut aud = vec![AUD.to_owned()];
    aud.extend(resources.iter().cloned());
    sts.mandate()
        .claim("aud", json!(aud))
        .targets(resources)
        .delegation(10)
        .sign()
}

/// Real mandates list every granted resource in `aud` and `target`: the 16 KiB
/// default fits sixty UUID resources and a ten-hop chain.
#[tokio::test]
async fn the_default_size_cap_fits_real_mandates() {
    let e = env().await;
    assert_eq!(caracal_verifier::DEFAULT_MAX_TOKEN_BYTES, 16 * 1024);
    let token = with_resources(&e.sts, 60);
    assert!(
        (14 * 1024..=16 * 1024).contains(&token.len()),
        "{} bytes",
        token.len()
    );
    let m = e
        .verifier
        .verify(&token, &Requirements::new().targets([resource_id(59)]))
        .await
        .unwrap();
    assert_eq!(m.targets().len(), 60);
    let over = with_resources(&e.sts, 70);
    assert!(over.len() > 16 * 1024);
    let err = deny(&e, &over, &none()).await;
    assert_eq!(
        (err.code(), err.status().as_u16()),
        (ErrorCode::PayloadTooLarge, 413)
    );
    // Still configurable.
    let big = env_with(|b| b.max_token_bytes(32 * 1024)).await;
    big.verifier
        .verify(&with_resources(&big.sts, 70), &none())
        .await
        .unwrap();
}

#[tokio::test]
async fn every_engine_code_is_produced() {
    let e = env().await;
    assert_eq!(deny(&e, "", &none()).await.code(), ErrorCode::MissingToken);
    let huge = "a".repeat(16 * 1024 + 1);
    let err = deny(&e, &huge, &none()).await;
    assert_eq!(
        (err.code(), err.status().as_u16()),
        (ErrorCode::PayloadTooLarge, 413)
    );
    assert_eq!(reason(&e, "a.b").await, Some(InvalidReason::Malformed));
    let broken = env_with(|b| b.replay_guard(BrokenGuard)).await;
    let err = deny(
        &broken,
        &broken.sts.mandate().sign(),
        &Requirements::new().single_use(),
    )
    .await;
    assert_eq!(
        (err.code(), err.status().as_u16()),
        (ErrorCode::RevocationUnavailable, 503)
    );
}

#[tokio::test]
async fn single_use_in_memory() {
    let e = env().await;
    let token = e.sts.mandate().sign();
    let reqs = Requirements::new().single_use();
    e.verifier.verify(&token, &reqs).await.unwrap();
    assert_eq!(
        reason_with(&e, &token, &reqs).await,
        Some(InvalidReason::Replayed)
    );
    // Routes without the requirement are unaffected.
    e.verifier.verify(&token, &none()).await.unwrap();
}

async fn reason_with(e: &Env, token: &str, reqs: &Requirements) -> Option<InvalidReason> {
    deny(e, token, reqs).await.reason()
}

#[tokio::test]
async fn token_never_appears_in_debug_or_errors() {
    let e = env().await;
    let token = e.sts.mandate().scopes(["a"]).delegation(1).sign();
    let sig = token.rsplit('.').next().unwrap().to_string();
    let m = e.verifier.verify(&token, &none()).await.unwrap();
    let mut outputs = vec![
        format!("{m:?}"),
        format!("{:?}", e.verifier),
        format!("{:?}", e.sts),
    ];
    let tampered = format!("{}A", &token[..token.len() - 1]);
    for t in [tampered.as_str(), &token] {
        if let Err(err) = e
            .verifier
            .verify(t, &Requirements::new().scopes(["zzz"]))
            .await
        {
            outputs.push(format!("{err} {err:?} {}", err.to_json("r")));
        }
    }
    assert!(outputs.len() >= 4);
    for o in outputs {
        assert!(!o.contains(&sig), "signature leaked: {o}");
        assert!(
            !o.contains(token.split('.').nth(1).unwrap()),
            "payload leaked: {o}"
        );
    }
}

#[tokio::test]
async fn mandate_cache_off_still_verifies_each_time() {
    let e = env_with(|b| b.mandate_cache(false)).await;
    let token = e.sts.mandate().sign();
    for _ in 0..3 {
        e.verifier.verify(&token, &none()).await.unwrap();
    }
    let tampered = format!("{}.{}", token.rsplit_once('.').unwrap().0, "A".repeat(86));
    assert_eq!(reason(&e, &tampered).await, Some(InvalidReason::Signature));
}

/// Wait (at most 5 s) until more than `n` of the verifier's JWKS fetches have finished.
async fn refreshed_since(v: &Verifier, n: u64) {
    tokio::time::timeout(Duration::from_secs(5), v.jwks_refreshed_since(n))
        .await
        .expect("a JWKS fetch finished within 5 s");
}

#[test]
fn verify_outside_a_tokio_runtime_fails_closed_instead_of_panicking() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let verifier = Verifier::builder()
        .issuer("http://127.0.0.1:9")
        .audience(AUD)
        .zone(ZONE)
        .build()
        .unwrap();
    let none = Requirements::new();
    let mut fut = std::pin::pin!(verifier.verify("a.b.c", &none));
    // `a.b.c` has a malformed header: rejected before any key is needed.
    let Poll::Ready(Err(err)) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) else {
        panic!("expected an immediate denial");
    };
    assert_eq!(err.code(), ErrorCode::InvalidToken);
    let header = URL_SAFE.encode(br#"{"alg":"ES256","kid":"k"}"#);
    let token = format!("{header}.e30.{}", "A".repeat(86));
    let mut fut = std::pin::pin!(verifier.verify(&token, &none));
    let Poll::Ready(Err(err)) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) else {
        panic!("expected an immediate denial");
    };
    assert_eq!(err.code(), ErrorCode::StsUnavailable);
}

// ---------------------------------------------------------------------------
// The single-use guard when full

#[tokio::test]
async fn a_full_replay_guard_refuses_new_mandates_and_forgets_no_live_one() {
    let e = env_with(|b| b.replay_capacity(2)).await;
    let once = Requirements::new().single_use();
    // Default lifetime: exp = T0 + 300, remembered until exp + 60 s of leeway.
    let first = e.sts.mandate().jti("jti-1").sign();
    let second = e.sts.mandate().jti("jti-2").sign();
    let third = e.sts.mandate().jti("jti-3").ttl(3600).sign();
    e.verifier.verify(&first, &once).await.unwrap();
    e.verifier.verify(&second, &once).await.unwrap();
    for _ in 0..2 {
        let err = deny(&e, &third, &once).await;
        assert_eq!(
            (err.code(), err.status().as_u16()),
            (ErrorCode::RevocationUnavailable, 503),
            "full of live mandates: a new one is refused, never accepted"
        );
        for used in [&first, &second] {
            assert_eq!(
                reason_with(&e, used, &once).await,
                Some(InvalidReason::Replayed),
                "a live mandate is never evicted to make room"
            );
        }
    }
    // Routes without the requirement do not touch the guard.
    e.verifier.verify(&third, &none()).await.unwrap();
    // By the injected clock, the first two are past exp + leeway: their slots free.
    e.clock.advance(Duration::from_secs(360));
    assert_eq!(reason(&e, &first).await, Some(InvalidReason::Expired));
    e.verifier.verify(&third, &once).await.unwrap();
    assert_eq!(
        reason_with(&e, &third, &once).await,
        Some(InvalidReason::Replayed)
    );
}

#[tokio::test]
async fn a_memory_guard_on_the_verifier_clock_expires_by_that_clock() {
    let sts = TestIssuer::start(ZONE).await.unwrap();
    let clock = ManualClock::new(Duration::from_secs(T0));
    sts.set_clock(clock.clone());
    let verifier = builder(&sts, &clock)
        .replay_guard(caracal_verifier::replay::MemoryReplayGuard::with_clock(
            1,
            clock.clone(),
        ))
        .build()
        .unwrap();
    let once = Requirements::new().single_use();
    let short = sts.mandate().ttl(10).sign();
    let long = sts.mandate().ttl(3600).sign();
    verifier.verify(&short, &once).await.unwrap();
    let err = verifier.verify(&long, &once).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::RevocationUnavailable);
    // The use is kept until exp + leeway = T0 + 70 (the mandate itself is dead
    // from its exp, T0 + 10): until then the full guard still refuses.
    clock.advance(Duration::from_secs(69));
    let err = verifier.verify(&short, &once).await.unwrap_err();
    assert_eq!(err.reason(), Some(InvalidReason::Expired));
    let err = verifier.verify(&long, &once).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::RevocationUnavailable);
    clock.advance(Duration::from_secs(1));
    verifier.verify(&long, &once).await.unwrap();
}

#[test]
fn replay_capacity_is_checked_at_build() {
    let b = || {
        Verifier::builder()
            .issuer("https://sts.example.com")
            .audience(AUD)
            .zone(ZONE)
    };
    let err = b().replay_capacity(0).build().unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Invalid {
                setting: "replay_capacity",
                ..
            }
        ),
        "{err:?}"
    );
    let err = b()
        .replay_guard(caracal_verifier::replay::MemoryReplayGuard::new(5))
        .replay_capacity(10)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Invalid {
                setting: "replay_capacity",
                ..
            }
        ),
        "{err:?}"
    );
    b().replay_capacity(10).build().unwrap();
}

// ---------------------------------------------------------------------------
// Upstream identities outside the chain

#[tokio::test]
async fn a_revoked_upstream_edge_in_the_path_kills_a_chainless_mandate() {
    let e = env().await;
    let token = e
        .sts
        .mandate()
        .agent_session("session-child")
        .claim("delegation_edge_id", json!("edge-3"))
        .delegation_path(["edge-1", "edge-2", "edge-3"])
        .sign();
    let m = e.verifier.verify(&token, &none()).await.unwrap();
    assert!(
        m.delegation_chain().is_empty(),
        "no chain to carry the edges"
    );
    e.verifier.revocations().revoke("edge-1");
    let err = deny(&e, &token, &none()).await;
    assert!(
        matches!(
            err,
            AuthError::SessionRevoked {
                anchor: AnchorKind::PathEdge,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        (err.code().as_str(), err.status().as_u16()),
        ("session_revoked", 401)
    );
    assert_eq!(AnchorKind::PathEdge.as_str(), "delegation_path");
}

#[tokio::test]
async fn a_revoked_source_session_kills_the_mandate() {
    let e = env().await;
    let token = e
        .sts
        .mandate()
        .agent_session("session-child")
        .source_session("session-parent")
        .sign();
    e.verifier.verify(&token, &none()).await.unwrap();
    e.verifier.revocations().revoke("session-parent");
    let err = deny(&e, &token, &none()).await;
    assert!(
        matches!(
            err,
            AuthError::SessionRevoked {
                anchor: AnchorKind::SourceSession,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code().as_str(), "session_revoked");
    assert_eq!(AnchorKind::SourceSession.as_str(), "source_session_id");
}

#[tokio::test]
async fn hops_count_the_delegation_path() {
    let e = env().await;
    let path = ["edge-1", "edge-2", "edge-3", "edge-4"];
    let understated = e.sts.mandate().delegation_path(path).hop_count(1).sign();
    let m = e.verifier.verify(&understated, &none()).await.unwrap();
    assert_eq!(m.hop_count(), Some(1));
    assert_eq!(m.delegation_path().len(), 4);
    assert_eq!(m.hops(), 4, "the path is longer than hop_count says");
    let err = deny(&e, &understated, &Requirements::new().max_hops(3)).await;
    assert!(
        matches!(
            err,
            AuthError::HopCountExceeded {
                hops: 4,
                limit: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::HopCountExceeded);
    e.verifier
        .verify(&understated, &Requirements::new().max_hops(4))
        .await
        .unwrap();
    // A path without hop_count or chain counts too.
    let bare = e.sts.mandate().delegation_path(path).sign();
    let m = e.verifier.verify(&bare, &none()).await.unwrap();
    assert_eq!((m.hop_count(), m.hops()), (None, 4));
    // The builder's delegation(n) keeps all three in agreement.
    let m = e
        .verifier
        .verify(&e.sts.mandate().delegation(3).sign(), &none())
        .await
        .unwrap();
    assert_eq!(
        (m.hop_count(), m.delegation_path().len(), m.hops()),
        (Some(3), 3, 3)
    );
}
