//! Interoperability with Caracal's own published Python verifier.
//!
//! Run it with `bash interop/run`: that script builds a virtual environment with
//! `caracalai-verify` at the version pinned in `interop/requirements.txt`, then runs
//! this test with `CARACAL_INTEROP_PYTHON` pointing at its interpreter. The test is
//! `#[ignore]`d so a plain `cargo test` needs no Python.
//!
//! One [`TestIssuer`] mints a corpus of mandates and serves their zone keys on
//! loopback; both verifiers fetch keys from it. Every (mandate, route) pair is put
//! to [`Verifier::verify`] in-process and to `interop/caracal_oracle.py`, one
//! long-lived Python process speaking JSON lines. Each pair then either agrees or
//! is one of three disagreement classes:
//!
//! - **ours-looser**: we allow, Caracal denies. Always a failure.
//! - **ours-stricter**: we deny, Caracal allows. A failure for an STS-shaped
//!   mandate; otherwise it must be listed in `interop/allowlist.json`.
//! - **different-code**: both deny with different codes. Must be listed.
//!
//! An allowlist entry names the case (a glob, `*` matching any run of characters,
//! or a list of globs), the class and optionally the route and both codes, and
//! cites the rule that makes our answer deliberate.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use caracal_verifier::testing::{ChainHop, MandateBuilder, TestIssuer};
use caracal_verifier::{AuthError, Clock, ManualClock, Requirements, Verifier};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const ZONE: &str = "zone-1";
const AUD: &str = "resource://api";
const BILLING: &str = "resource://billing";
const ORCHESTRATOR: &str = "app-orchestrator";
const ALL_SCOPES: [&str; 4] = [
    "tickets:read",
    "tickets:write",
    "billing:payout",
    "agents:run",
];
/// How many examples of each disagreement group the report shows.
const EXAMPLES: usize = 4;

// ---------------------------------------------------------------------------
// Routes: the four protected routes of `examples/resource_server.rs`.

#[derive(Debug, Clone)]
struct Route {
    name: &'static str,
    scopes: &'static [&'static str],
    targets: &'static [&'static str],
    agent: bool,
    delegation: bool,
    chain_contains: &'static [&'static str],
    max_hops: Option<u32>,
}

impl Route {
    fn requirements(&self) -> Requirements {
        let mut reqs = Requirements::new()
            .scopes(self.scopes.iter().copied())
            .targets(self.targets.iter().copied())
            .chain_contains(self.chain_contains.iter().copied());
        if self.agent {
            reqs = reqs.agent();
        }
        if self.delegation {
            reqs = reqs.delegation();
        }
        if let Some(hops) = self.max_hops {
            reqs = reqs.max_hops(hops);
        }
        reqs
    }

    /// The route as the oracle reads it (the package's `authenticate` arguments).
    fn to_json(&self) -> Value {
        json!({
            "scopes": self.scopes,
            "targets": self.targets,
            "agent": self.agent,
            "delegation": self.delegation,
            "chain_contains": self.chain_contains,
            "max_hops": self.max_hops,
        })
    }
}

fn routes() -> Vec<Route> {
    vec![
        Route {
            name: "GET /tickets",
            scopes: &["tickets:read"],
            targets: &[],
            agent: false,
            delegation: false,
            chain_contains: &[],
            max_hops: None,
        },
        Route {
            name: "POST /tickets",
            scopes: &["tickets:write"],
            targets: &[],
            agent: true,
            delegation: false,
            chain_contains: &[],
            max_hops: None,
        },
        Route {
            name: "POST /payouts",
            scopes: &["billing:payout"],
            targets: &[BILLING],
            agent: false,
            delegation: true,
            chain_contains: &[],
            max_hops: None,
        },
        Route {
            name: "POST /orchestrate",
            scopes: &["agents:run"],
            targets: &[],
            agent: false,
            delegation: false,
            chain_contains: &[ORCHESTRATOR],
            max_hops: Some(2),
        },
    ]
}

// ---------------------------------------------------------------------------
// The corpus

/// One mandate of the corpus.
struct Case {
    /// `group.detail`, e.g. `type.exp.string`; what the allowlist matches.
    name: String,
    token: String,
    /// Shaped as Caracal's STS mints mandates: we must never deny one Caracal allows.
    sts_shaped: bool,
}

fn hop(app: &str, session: Option<&str>, edge: Option<&str>) -> ChainHop {
    ChainHop {
        application_id: app.to_owned(),
        agent_session_id: session.map(str::to_owned),
        delegation_edge_id: edge.map(str::to_owned),
    }
}

/// A mandate every route allows: all four scopes, both targets, an agent session
/// and a one-hop delegation from `app-orchestrator`, shaped like the contract
/// fixture's chain.
fn full(sts: &TestIssuer) -> MandateBuilder {
    sts.mandate()
        .scopes(ALL_SCOPES)
        .targets([AUD, BILLING])
        .client_id("app-1")
        .agent_session("session-child")
        .claim("delegation_edge_id", json!("delegation-1"))
        .source_session("session-parent")
        .claim("target_session_id", json!("session-child"))
        .delegation_path(["delegation-1"])
        .chain(vec![
            hop(ORCHESTRATOR, Some("session-parent"), Some("delegation-1")),
            hop("app-1", Some("session-child"), None),
        ])
        .hop_count(1)
        .epoch(7)
}

/// A UUID-looking id derived from a label and a number (deterministic, so a
/// reported case can be minted again).
fn uuid(label: &str, n: usize) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.bytes().chain(n.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let g = h.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
    format!(
        "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        0x8000 | (g >> 48 & 0x3fff),
        g & 0xffff_ffff_ffff
    )
}

/// A mandate shaped as Caracal's STS mints it (restating the claim set of the
/// contract fixture `jwt-claims.resource.valid.json`): UUID ids, every granted
/// resource listed in both `aud` and `target`, and, when delegated, a chain whose
/// hops carry the sessions and edges, with `delegation_path`, `hop_count`,
/// `source_session_id`/`target_session_id` and the graph epoch. The granted
/// resources are this service's audience, the billing resource and `extra`
/// resource URLs ending in a UUID (about 70 bytes each, which puts 40–60 of them
/// at the 9–12 KB Caracal reports for real mandates).
fn sts_shaped(sts: &TestIssuer, extra: usize, hops: usize, tag: &str) -> MandateBuilder {
    let mut resources = vec![AUD.to_owned(), BILLING.to_owned()];
    resources.extend((0..extra).map(|i| {
        format!(
            "https://api.example.com/resources/{}",
            uuid(&format!("{tag}-res"), i)
        )
    }));
    let client = uuid(&format!("{tag}-client"), 0);
    let session = uuid(&format!("{tag}-session"), hops);
    let mut m = sts
        .mandate()
        .subject(uuid(&format!("{tag}-user"), 0))
        .jti(uuid(&format!("{tag}-jti"), 0))
        .sid(uuid(&format!("{tag}-sid"), 0))
        .root_sid(uuid(&format!("{tag}-root"), 0))
        .client_id(&client)
        .claim("aud", json!(resources))
        .claim("target", json!(resources))
        .scopes(ALL_SCOPES)
        .agent_session(&session)
        .epoch(3);
    if hops > 0 {
        let edges: Vec<String> = (1..=hops)
            .map(|i| uuid(&format!("{tag}-edge"), i))
            .collect();
        let mut chain: Vec<ChainHop> = (0..hops)
            .map(|i| {
                let app = if i == 0 {
                    ORCHESTRATOR.to_owned()
                } else {
                    uuid(&format!("{tag}-app"), i)
                };
                ChainHop {
                    application_id: app,
                    agent_session_id: Some(uuid(&format!("{tag}-session"), i)),
                    delegation_edge_id: Some(edges[i].clone()),
                }
            })
            .collect();
        chain.push(ChainHop {
            application_id: client.clone(),
            agent_session_id: Some(session.clone()),
            delegation_edge_id: None,
        });
        m = m
            .chain(chain)
            .delegation_path(edges.clone())
            .claim("delegation_edge_id", json!(edges[hops - 1]))
            .source_session(uuid(&format!("{tag}-session"), hops - 1))
            .claim("target_session_id", json!(session))
            .hop_count(hops as u64);
    }
    m
}

/// Claims of `full`, for the systematic drop / wrong-type mutations, with the JSON
/// type the 2026-05-21 claim schema gives each.
const CLAIMS: [(&str, Kind); 22] = [
    ("iss", Kind::Str),
    ("sub", Kind::Str),
    ("aud", Kind::StrOrArray),
    ("exp", Kind::Int),
    ("iat", Kind::Int),
    ("jti", Kind::Str),
    ("zone_id", Kind::Str),
    ("client_id", Kind::Str),
    ("scope", Kind::Str),
    ("sid", Kind::Str),
    ("root_sid", Kind::Str),
    ("use", Kind::Str),
    ("sub_type", Kind::Str),
    ("target", Kind::Array),
    ("agent_session_id", Kind::Str),
    ("delegation_edge_id", Kind::Str),
    ("source_session_id", Kind::Str),
    ("target_session_id", Kind::Str),
    ("delegation_path", Kind::Array),
    ("delegation_chain", Kind::Array),
    ("hop_count", Kind::Int),
    ("delegation_graph_epoch", Kind::Int),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    StrOrArray,
    Int,
    Array,
}

/// Wrong-type replacements: (name, value), skipping the claim's own type.
fn wrong_types(kind: Kind, current: &Value) -> Vec<(&'static str, Value)> {
    let as_string = match current {
        Value::String(s) => json!(s),
        other => json!(other.to_string()),
    };
    let mut out = vec![
        ("string", as_string),
        ("number", json!(42)),
        ("bool", json!(true)),
        ("null", Value::Null),
        ("array", json!([current.clone()])),
        ("object", json!({"value": current.clone()})),
    ];
    out.retain(|(name, _)| match kind {
        Kind::Str => *name != "string",
        Kind::StrOrArray => *name != "string" && *name != "array",
        Kind::Int => *name != "number",
        Kind::Array => *name != "array",
    });
    if kind == Kind::Int {
        let n = current.as_u64().unwrap_or(1);
        out.push(("float", json!(n as f64 + 0.5)));
        out.push(("negative", json!(-1)));
    }
    if kind == Kind::Str || kind == Kind::StrOrArray {
        out.push(("empty", json!("")));
    }
    out
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs exactly these two (already encoded) segments with `kid`.
fn sign_segments(sts: &TestIssuer, kid: &str, header: &str, payload: &str) -> String {
    let input = format!("{header}.{payload}");
    let signature = sts.sign_bytes(kid, input.as_bytes());
    format!("{input}.{}", b64(&signature))
}

fn header_json(kid: &str) -> String {
    json!({"alg": "ES256", "typ": "JWT", "kid": kid}).to_string()
}

/// Mandates whose meaning does not depend on the exact second they are checked in.
fn corpus(sts: &TestIssuer, now: u64) -> Vec<Case> {
    let mut cases = Vec::new();
    let kid = sts.signing_kid();
    let mut add = |name: String, token: String, sts_shaped: bool| {
        cases.push(Case {
            name,
            token,
            sts_shaped,
        });
    };

    // --- Valid mandates for each route shape.
    add("valid.full".into(), full(sts).sign(), false);
    add(
        "valid.tickets_read".into(),
        sts.mandate().scopes(["tickets:read"]).sign(),
        false,
    );
    add(
        "valid.tickets_write_agent".into(),
        sts.mandate()
            .scopes(["tickets:write"])
            .agent_session("session-1")
            .sign(),
        false,
    );
    add(
        "valid.payouts_delegated".into(),
        sts.mandate()
            .scopes(["billing:payout"])
            .targets([BILLING])
            .delegation(1)
            .sign(),
        false,
    );
    add(
        "valid.orchestrate_two_hops".into(),
        full(sts)
            .scopes(["agents:run"])
            .chain(vec![
                hop(ORCHESTRATOR, Some("s0"), Some("e1")),
                hop("app-middle", Some("s1"), Some("e2")),
                hop("app-1", Some("session-child"), None),
            ])
            .delegation_path(["e1", "e2"])
            .claim("delegation_edge_id", json!("e2"))
            .hop_count(2)
            .sign(),
        false,
    );
    add(
        "valid.application_subject".into(),
        full(sts)
            .claim("sub_type", json!("application"))
            .subject("app-1")
            .sign(),
        false,
    );
    add(
        "valid.aud_array".into(),
        full(sts)
            .claim("aud", json!([AUD, "resource://other"]))
            .sign(),
        false,
    );
    add(
        "valid.with_nbf".into(),
        full(sts).not_before(now - 10).sign(),
        false,
    );
    add(
        "valid.extra_claim".into(),
        full(sts).claim("x_custom", json!({"a": [1, 2]})).sign(),
        false,
    );
    // The contract fixture's claim set, restated with this issuer and fresh times.
    add(
        "valid.contract_fixture_shape".into(),
        sts.mandate()
            .subject("user-1")
            .jti("018f7d6a-8f4a-7d9f-9a54-5e4fd7df0001")
            .client_id("app-1")
            .scopes(["read", "write"])
            .sid("authority-record-1")
            .root_sid("authority-record-root")
            .targets([AUD])
            .agent_session("session-child")
            .claim("delegation_edge_id", json!("delegation-1"))
            .source_session("session-parent")
            .claim("target_session_id", json!("session-child"))
            .delegation_path(["delegation-1"])
            .chain(vec![
                hop("app-parent", Some("session-parent"), Some("delegation-1")),
                hop("app-1", Some("session-child"), None),
            ])
            .hop_count(1)
            .epoch(7)
            .sign(),
        false,
    );

    // --- Every claim dropped, and replaced by each wrong JSON type.
    let base = full(sts).claims();
    for (claim, kind) in CLAIMS {
        add(
            format!("drop.{claim}"),
            full(sts).remove_claim(claim).sign(),
            false,
        );
        for (type_name, value) in wrong_types(kind, &base[claim]) {
            add(
                format!("type.{claim}.{type_name}"),
                full(sts).claim(claim, value).sign(),
                false,
            );
        }
    }
    // Elements of the wrong type inside arrays.
    for (name, claim, value) in [
        ("aud_empty_array", "aud", json!([])),
        ("aud_number_item", "aud", json!([AUD, 1])),
        ("aud_duplicate_item", "aud", json!([AUD, AUD])),
        ("target_number_item", "target", json!([AUD, BILLING, 1])),
        ("target_empty_item", "target", json!([AUD, BILLING, ""])),
        ("path_number_item", "delegation_path", json!([1])),
        ("path_empty_item", "delegation_path", json!([""])),
        ("chain_number_item", "delegation_chain", json!([1])),
        ("chain_empty_array", "delegation_chain", json!([])),
    ] {
        add(
            format!("item.{name}"),
            full(sts).claim(claim, value).sign(),
            false,
        );
    }
    // Enumerated values.
    for (name, claim, value) in [
        ("use_session", "use", json!("session")),
        ("use_gateway", "use", json!("gateway")),
        ("use_upper", "use", json!("RESOURCE")),
        ("sub_type_service", "sub_type", json!("service")),
        (
            "iss_trailing_slash",
            "iss",
            json!(format!("{}/", sts.issuer_url())),
        ),
        ("iss_other", "iss", json!("https://sts.example.com")),
        ("aud_other", "aud", json!("resource://other")),
        ("aud_upper", "aud", json!("RESOURCE://API")),
        ("zone_other", "zone_id", json!("zone-2")),
        ("zone_upper", "zone_id", json!("ZONE-1")),
    ] {
        add(
            format!("value.{name}"),
            full(sts).claim(claim, value).sign(),
            false,
        );
    }

    // --- Scopes: missing, extra, case, separators.
    let joined = |sep: &str| ALL_SCOPES.join(sep);
    for (name, scope, sts_shaped) in [
        ("empty", String::new(), false),
        ("only_tickets_read", "tickets:read".to_owned(), false),
        ("extra", format!("{} admin:all", joined(" ")), false),
        ("upper", joined(" ").to_uppercase(), false),
        ("prefix_only", "tickets billing agents".to_owned(), false),
        ("comma", joined(","), false),
        ("double_space", joined("  "), true),
        ("leading_trailing_space", format!(" {} ", joined(" ")), true),
        ("sep_tab", joined("\t"), true),
        ("sep_lf", joined("\n"), true),
        ("sep_cr", joined("\r"), true),
        ("sep_nbsp", joined("\u{a0}"), true),
        ("sep_ideographic_space", joined("\u{3000}"), true),
        ("sep_em_space", joined("\u{2003}"), true),
        ("sep_zero_width_space", joined("\u{200b}"), false),
    ] {
        add(
            format!("scope.{name}"),
            full(sts).claim("scope", json!(scope)).sign(),
            sts_shaped,
        );
    }

    // --- Targets.
    for (name, targets) in [
        ("empty", json!([])),
        ("api_only", json!([AUD])),
        ("extra", json!([AUD, BILLING, "resource://other"])),
        ("upper", json!([AUD, "RESOURCE://BILLING"])),
        ("trailing_slash", json!([AUD, "resource://billing/"])),
        ("leading_space", json!([AUD, " resource://billing"])),
        ("duplicate", json!([AUD, BILLING, BILLING])),
        ("as_string", json!(BILLING)),
    ] {
        add(
            format!("target.{name}"),
            full(sts).claim("target", targets).sign(),
            false,
        );
    }

    // --- Chains and hops.
    let chain_variants: Vec<(&str, MandateBuilder)> = vec![
        (
            "no_chain_client_is_orchestrator",
            sts.mandate()
                .scopes(ALL_SCOPES)
                .targets([AUD, BILLING])
                .client_id(ORCHESTRATOR)
                .agent_session("session-1"),
        ),
        (
            "no_chain_claims_kept",
            full(sts).remove_claim("delegation_chain"),
        ),
        (
            "chain_without_orchestrator",
            full(sts).chain(vec![
                hop("app-parent", Some("session-parent"), Some("delegation-1")),
                hop("app-1", Some("session-child"), None),
            ]),
        ),
        (
            "over_route_hop_limit",
            full(sts)
                .chain(vec![
                    hop(ORCHESTRATOR, Some("s0"), Some("e1")),
                    hop("app-a", Some("s1"), Some("e2")),
                    hop("app-b", Some("s2"), Some("delegation-1")),
                    hop("app-1", Some("session-child"), None),
                ])
                .delegation_path(["e1", "e2", "delegation-1"])
                .hop_count(3),
        ),
        ("hop_count_11", {
            let mut chain: Vec<ChainHop> = (0..11)
                .map(|i| {
                    let app = if i == 0 {
                        ORCHESTRATOR.to_owned()
                    } else {
                        format!("app-{i}")
                    };
                    let edge = if i == 10 {
                        "delegation-1".to_owned()
                    } else {
                        format!("e{}", i + 1)
                    };
                    ChainHop {
                        application_id: app,
                        agent_session_id: Some(format!("s{i}")),
                        delegation_edge_id: Some(edge),
                    }
                })
                .collect();
            chain.push(hop("app-1", Some("session-child"), None));
            let mut path: Vec<String> = (1..=10).map(|i| format!("e{i}")).collect();
            path.push("delegation-1".into());
            full(sts).chain(chain).delegation_path(path).hop_count(11)
        }),
        (
            "hop_count_understates_chain",
            full(sts)
                .chain(vec![
                    hop(ORCHESTRATOR, Some("s0"), Some("e1")),
                    hop("app-a", Some("s1"), Some("e2")),
                    hop("app-b", Some("s2"), Some("delegation-1")),
                    hop("app-1", Some("session-child"), None),
                ])
                .hop_count(1),
        ),
        (
            "path_longer_than_hop_count",
            full(sts).delegation_path(["e1", "e2", "e3", "delegation-1"]),
        ),
        ("hop_count_zero", full(sts).hop_count(0)),
        (
            "last_hop_not_client",
            full(sts).chain(vec![
                hop(ORCHESTRATOR, Some("session-parent"), Some("delegation-1")),
                hop("app-other", Some("session-child"), None),
            ]),
        ),
        (
            "last_hop_other_session",
            full(sts).chain(vec![
                hop(ORCHESTRATOR, Some("session-parent"), Some("delegation-1")),
                hop("app-1", Some("session-other"), None),
            ]),
        ),
        (
            "edge_not_in_chain",
            full(sts).claim("delegation_edge_id", json!("delegation-zzz")),
        ),
        (
            "hop_without_application",
            full(sts).claim(
                "delegation_chain",
                json!([
                    {"agent_session_id": "session-parent", "delegation_edge_id": "delegation-1"},
                    {"application_id": "app-1", "agent_session_id": "session-child"},
                ]),
            ),
        ),
        (
            "hop_application_empty",
            full(sts).claim(
                "delegation_chain",
                json!([
                    {"application_id": "", "agent_session_id": "session-parent", "delegation_edge_id": "delegation-1"},
                    {"application_id": "app-1", "agent_session_id": "session-child"},
                ]),
            ),
        ),
        (
            "hop_application_number",
            full(sts).claim(
                "delegation_chain",
                json!([
                    {"application_id": 7, "agent_session_id": "session-parent", "delegation_edge_id": "delegation-1"},
                    {"application_id": "app-1", "agent_session_id": "session-child"},
                ]),
            ),
        ),
        (
            "hop_session_null",
            full(sts).claim(
                "delegation_chain",
                json!([
                    {"application_id": ORCHESTRATOR, "agent_session_id": null, "delegation_edge_id": "delegation-1"},
                    {"application_id": "app-1", "agent_session_id": "session-child"},
                ]),
            ),
        ),
        (
            "hop_extra_member",
            full(sts).claim(
                "delegation_chain",
                json!([
                    {"application_id": ORCHESTRATOR, "agent_session_id": "session-parent", "delegation_edge_id": "delegation-1", "note": "x"},
                    {"application_id": "app-1", "agent_session_id": "session-child"},
                ]),
            ),
        ),
        (
            "delegated_without_agent_session",
            full(sts)
                .remove_claim("agent_session_id")
                .remove_claim("target_session_id")
                .chain(vec![
                    hop(ORCHESTRATOR, Some("session-parent"), Some("delegation-1")),
                    hop("app-1", None, None),
                ]),
        ),
        (
            "agent_session_empty",
            full(sts)
                .claim("agent_session_id", json!(""))
                .chain(vec![
                    hop(ORCHESTRATOR, Some("session-parent"), Some("delegation-1")),
                    hop("app-1", None, None),
                ]),
        ),
    ];
    for (name, builder) in chain_variants {
        add(format!("chain.{name}"), builder.sign(), false);
    }

    // --- Header variants.
    let other_zone_kid = sts.add_zone("zone-2");
    let header_variants: Vec<(&str, MandateBuilder)> = vec![
        ("alg_hs256", full(sts).header("alg", json!("HS256"))),
        ("alg_es384", full(sts).header("alg", json!("ES384"))),
        ("alg_lowercase", full(sts).header("alg", json!("es256"))),
        ("alg_missing", full(sts).remove_header("alg")),
        ("kid_missing", full(sts).remove_header("kid")),
        ("kid_unknown", full(sts).header("kid", json!("key-unknown"))),
        ("kid_number", full(sts).header("kid", json!(1))),
        ("kid_other_zone", full(sts).kid(&other_zone_kid)),
        (
            "signed_by_other_zone_key",
            full(sts).signing_key(&other_zone_kid),
        ),
        ("crit_exp", full(sts).header("crit", json!(["exp"]))),
        (
            "crit_unknown",
            full(sts)
                .header("crit", json!(["x-caracal"]))
                .header("x-caracal", json!(1)),
        ),
        ("crit_empty", full(sts).header("crit", json!([]))),
        (
            "b64_false",
            full(sts)
                .header("b64", json!(false))
                .header("crit", json!(["b64"])),
        ),
        ("typ_missing", full(sts).remove_header("typ")),
        ("typ_at_jwt", full(sts).header("typ", json!("at+jwt"))),
        ("typ_lowercase", full(sts).header("typ", json!("jwt"))),
        (
            "typ_application_jwt",
            full(sts).header("typ", json!("application/jwt")),
        ),
        ("typ_other", full(sts).header("typ", json!("foo"))),
        ("typ_number", full(sts).header("typ", json!(1))),
        (
            "jku_elsewhere",
            full(sts).header("jku", json!("https://attacker.example/jwks.json")),
        ),
        (
            "embedded_jwk",
            full(sts).header("jwk", sts.public_jwk(&kid)),
        ),
        ("extra_member", full(sts).header("x-note", json!("hello"))),
    ];
    for (name, builder) in header_variants {
        add(format!("header.{name}"), builder.sign(), false);
    }
    // alg none: unsigned, empty signature segment.
    let payload = serde_json::to_string(&full(sts).claims()).expect("claims serialize");
    let none_header = json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string();
    add(
        "header.alg_none".into(),
        format!(
            "{}.{}.",
            b64(none_header.as_bytes()),
            b64(payload.as_bytes())
        ),
        false,
    );

    // --- JSON oddities and encodings (signed over the exact bytes).
    let header = header_json(&kid);
    let raw = |p: &str| sts.sign_compact(&kid, header.as_bytes(), p.as_bytes());
    let after_brace = |json: &str, insert: &str| format!("{{{insert},{}", &json[1..]);
    add(
        "json.duplicate_key.sub_first_differs".into(),
        raw(&after_brace(&payload, r#""sub":"user-evil""#)),
        false,
    );
    add(
        "json.duplicate_key.scope_first_empty".into(),
        raw(&after_brace(&payload, r#""scope":"""#)),
        false,
    );
    add(
        "json.duplicate_key.aud_first_other".into(),
        raw(&after_brace(&payload, r#""aud":"resource://other""#)),
        false,
    );
    add(
        "json.duplicate_key.header_alg".into(),
        sts.sign_compact(
            &kid,
            after_brace(&header, r#""alg":"none""#).as_bytes(),
            payload.as_bytes(),
        ),
        false,
    );
    add(
        "json.pretty_printed".into(),
        raw(&serde_json::to_string_pretty(&full(sts).claims()).expect("claims serialize")),
        false,
    );
    add(
        "json.bom_prefix".into(),
        raw(&format!("\u{feff}{payload}")),
        false,
    );
    add(
        "json.trailing_garbage".into(),
        raw(&format!("{payload} x")),
        false,
    );
    add(
        "json.trailing_whitespace".into(),
        raw(&format!("{payload} \n")),
        false,
    );
    add(
        "json.escaped_key".into(),
        raw(&payload.replacen(r#""sub":"#, r#""\u0073ub":"#, 1)),
        false,
    );
    add(
        "json.exp_exponent_notation".into(),
        {
            let claims = full(sts).claims();
            let exp = claims["exp"].as_u64().expect("exp");
            raw(&payload.replacen(
                &format!(r#""exp":{exp}"#),
                &format!(r#""exp":{}e1"#, exp / 10),
                1,
            ))
            // exp divisible by 10 or not, `{exp/10}e1` is within 9 s of exp: still valid.
        },
        false,
    );
    add(
        "json.not_an_object".into(),
        raw(&format!("[{payload}]")),
        false,
    );
    add(
        "json.invalid_utf8".into(),
        {
            let mut bytes = payload.clone().into_bytes();
            let at = payload.find("user-1").expect("sub");
            bytes[at] = 0xff;
            sts.sign_compact(&kid, header.as_bytes(), &bytes)
        },
        false,
    );
    // Encodings: a filler claim makes the payload need padding, or contain
    // characters where the standard and URL-safe alphabets differ.
    let with_filler = |want: &dyn Fn(&[u8]) -> bool| -> Vec<u8> {
        (0..256)
            .map(|n| {
                let claims = full(sts).claim("x_filler", json!("~".repeat(n))).claims();
                serde_json::to_vec(&claims).expect("claims serialize")
            })
            .find(|bytes| want(bytes))
            .expect("some filler length fits")
    };
    let h = b64(header.as_bytes());
    let pad = |s: &str| URL_SAFE.encode(URL_SAFE_NO_PAD.decode(s).expect("b64"));
    let needs_padding = with_filler(&|b| b.len() % 3 != 0);
    let p = b64(&needs_padding);
    add(
        "b64.padding.payload".into(),
        sign_segments(sts, &kid, &h, &pad(&p)),
        false,
    );
    let padded_h = pad(&h);
    if padded_h != h {
        add(
            "b64.padding.header".into(),
            sign_segments(sts, &kid, &padded_h, &p),
            false,
        );
    }
    {
        let token = sign_segments(sts, &kid, &h, &p);
        let (input, sig) = token.rsplit_once('.').expect("segments");
        add(
            "b64.padding.signature".into(),
            format!("{input}.{}", pad(sig)),
            false,
        );
    }
    let alphabet_differs = with_filler(&|b| b64(b).contains(['-', '_']));
    let std_p = STANDARD
        .encode(&alphabet_differs)
        .trim_end_matches('=')
        .to_owned();
    add(
        "b64.standard_alphabet.payload".into(),
        sign_segments(sts, &kid, &h, &std_p),
        false,
    );
    {
        let token = full(sts).sign();
        add("token.trailing_space".into(), format!("{token} "), false);
        add("token.trailing_dot".into(), format!("{token}."), false);
        let mut parts: Vec<&str> = token.split('.').collect();
        parts.pop();
        add("token.two_segments".into(), parts.join("."), false);
        add("token.empty".into(), String::new(), false);
        add("token.garbage".into(), "not-a-jwt".into(), false);
        let (input, sig) = token.rsplit_once('.').expect("segments");
        let mut sig_bytes = URL_SAFE_NO_PAD.decode(sig).expect("b64");
        sig_bytes[10] ^= 1;
        add(
            "token.bad_signature".into(),
            format!("{input}.{}", b64(&sig_bytes)),
            false,
        );
        let der_like = [sig_bytes.as_slice(), &[0]].concat();
        add(
            "token.signature_65_bytes".into(),
            format!("{input}.{}", b64(&der_like)),
            false,
        );
    }

    // --- STS-shaped mandates, including the sizes the STS really mints.
    for (extra, hops) in [
        (0, 0),
        (0, 1),
        (0, 2),
        (8, 1),
        (38, 0),
        (38, 1),
        (48, 1),
        (58, 0),
        (58, 2),
    ] {
        let tag = format!("n{}.h{hops}", extra + 2);
        let token = sts_shaped(sts, extra, hops, &tag).sign();
        add(format!("sts.{tag}"), token, true);
    }
    // A ten-hop chain with UUID ids (about 4 KB).
    add(
        "sts.ten_hop_chain".into(),
        sts_shaped(sts, 0, 10, "ten-hop").sign(),
        true,
    );
    // The STS copies the requested scope string verbatim.
    for (name, sep) in [("tab", "\t"), ("lf", "\n"), ("nbsp", "\u{a0}")] {
        let token = sts_shaped(sts, 0, 1, "scope-ws")
            .claim("scope", json!(ALL_SCOPES.join(sep)))
            .sign();
        add(format!("sts.scope_sep_{name}"), token, true);
    }

    cases
}

/// Mandates on the edges of `exp`, `nbf` and `iat`, relative to `now`.
fn time_corpus(sts: &TestIssuer, now: u64) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |name: &str, builder: MandateBuilder| {
        cases.push(Case {
            name: format!("time.{name}"),
            token: builder.sign(),
            sts_shaped: false,
        });
    };
    for (name, offset) in [
        ("exp_now-61", -61_i64),
        ("exp_now-60", -60),
        ("exp_now-59", -59),
        ("exp_now-1", -1),
        ("exp_now", 0),
        ("exp_now+1", 1),
    ] {
        add(
            name,
            full(sts)
                .issued_at(now - 120)
                .expires_at(now.saturating_add_signed(offset)),
        );
    }
    for (name, offset) in [
        ("nbf_now+30", 30_u64),
        ("nbf_now+59", 59),
        ("nbf_now+60", 60),
        ("nbf_now+61", 61),
        ("nbf_now+120", 120),
    ] {
        add(name, full(sts).not_before(now + offset));
    }
    for (name, offset) in [
        ("iat_now+30", 30_u64),
        ("iat_now+59", 59),
        ("iat_now+60", 60),
        ("iat_now+61", 61),
        ("iat_now+120", 120),
    ] {
        add(
            name,
            full(sts).issued_at(now + offset).expires_at(now + 600),
        );
    }
    add(
        "exp_before_iat",
        full(sts).issued_at(now).expires_at(now - 1),
    );
    add(
        "exp_far_future",
        full(sts).expires_at(now + 10 * 365 * 86_400),
    );
    cases
}

// ---------------------------------------------------------------------------
// The oracle: caracal_oracle.py, one long-lived process.

struct Oracle {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

#[derive(Debug, Deserialize)]
struct OracleAnswer {
    allow: bool,
    code: Option<String>,
    status: Option<u16>,
    now: u64,
    error: Option<String>,
}

impl Oracle {
    async fn start(python: &Path, script: &Path) -> Oracle {
        let mut child = Command::new(python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} {}: {e}",
                    python.display(),
                    script.display()
                )
            });
        let stdin = child.stdin.take().expect("piped stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let hello = lines
            .next_line()
            .await
            .expect("read the oracle's first line")
            .expect("the oracle exited before it was ready (is caracalai-verify installed?)");
        let hello: Value = serde_json::from_str(&hello).expect("the oracle's ready line is JSON");
        assert_eq!(hello["ready"], true, "oracle: {hello}");
        assert_eq!(
            hello["version"], "1.0.0",
            "the suite is pinned to caracalai-verify 1.0.0, the venv has {hello}"
        );
        Oracle {
            child,
            stdin,
            lines,
        }
    }

    async fn ask(&mut self, request: &Value) -> OracleAnswer {
        let mut line = request.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to the oracle");
        let answer = self
            .lines
            .next_line()
            .await
            .expect("read from the oracle")
            .expect("the oracle exited mid-run");
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("oracle answer {answer:?}: {e}"))
    }

    async fn stop(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

// ---------------------------------------------------------------------------
// Decisions and their comparison

#[derive(Debug, Clone, PartialEq, Eq)]
struct Decision {
    allow: bool,
    /// Our documented code spelling.
    code: Option<String>,
    status: Option<u16>,
    /// Extra detail for the report (our `details.reason`, the package's description).
    detail: Option<String>,
}

impl Decision {
    fn ours(result: &Result<caracal_verifier::Mandate, AuthError>) -> Decision {
        match result {
            Ok(_) => Decision {
                allow: true,
                code: None,
                status: None,
                detail: None,
            },
            Err(e) => Decision {
                allow: false,
                code: Some(e.code().as_str().to_owned()),
                status: Some(e.status().as_u16()),
                detail: Some(match e.reason() {
                    Some(reason) => reason.as_str().to_owned(),
                    None => e.to_string(),
                }),
            },
        }
    }

    fn caracal(answer: &OracleAnswer) -> Decision {
        Decision {
            allow: answer.allow,
            code: answer
                .code
                .as_deref()
                .map(|c| documented_code(c).to_owned()),
            status: answer.status,
            detail: answer.error.clone(),
        }
    }

    fn label(&self) -> String {
        match (&self.code, &self.detail) {
            _ if self.allow => "allow".to_owned(),
            (Some(code), Some(detail)) => format!("{code} ({detail})"),
            (Some(code), None) => code.clone(),
            (None, _) => "deny".to_owned(),
        }
    }
}

/// The package still spells three codes the old way; the documented codes are ours.
fn documented_code(package_code: &str) -> &str {
    match package_code {
        "invalid_zone" => "zone_invalid",
        "insufficient_scope" => "scope_insufficient",
        "session_required" => "agent_identity_required",
        other => other,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Class {
    Agree,
    OursLooser,
    OursStricter,
    DifferentCode,
}

impl Class {
    fn of(ours: &Decision, caracal: &Decision) -> Class {
        match (ours.allow, caracal.allow) {
            (true, true) => Class::Agree,
            (true, false) => Class::OursLooser,
            (false, true) => Class::OursStricter,
            (false, false) if ours.code == caracal.code => Class::Agree,
            (false, false) => Class::DifferentCode,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Class::Agree => "agree",
            Class::OursLooser => "ours-looser",
            Class::OursStricter => "ours-stricter",
            Class::DifferentCode => "different-code",
        }
    }
}

struct Outcome {
    case: String,
    route: &'static str,
    sts_shaped: bool,
    ours: Decision,
    caracal: Decision,
    class: Class,
    /// Index of the allowlist entry that covers this disagreement.
    allowed_by: Option<usize>,
}

// ---------------------------------------------------------------------------
// The allowlist

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowEntry {
    /// Case name, or a list of them; `*` matches any run of characters.
    case: Cases,
    /// Route name (`"POST /payouts"`); every route when absent.
    #[serde(default)]
    route: Option<String>,
    /// `ours-stricter` or `different-code`.
    class: Class,
    /// Our code, when it must be this one.
    #[serde(default)]
    ours: Option<String>,
    /// Caracal's code (documented spelling), when it must be this one.
    #[serde(default)]
    caracal: Option<String>,
    /// The rule our answer follows: an RFC section or a claim-schema keyword.
    rule: String,
    /// Why the difference is deliberate.
    why: String,
}

impl AllowEntry {
    fn covers(&self, o: &Outcome) -> bool {
        self.case.patterns().iter().any(|p| glob(p, &o.case))
            && self.route.as_deref().is_none_or(|r| r == o.route)
            && self.class == o.class
            && self
                .ours
                .as_ref()
                .is_none_or(|c| o.ours.code.as_ref() == Some(c))
            && self
                .caracal
                .as_ref()
                .is_none_or(|c| o.caracal.code.as_ref() == Some(c))
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Cases {
    One(String),
    Many(Vec<String>),
}

impl Cases {
    fn patterns(&self) -> &[String] {
        match self {
            Cases::One(one) => std::slice::from_ref(one),
            Cases::Many(many) => many,
        }
    }

    fn label(&self) -> String {
        self.patterns().join(" | ")
    }
}

fn load_allowlist(path: &Path) -> Vec<AllowEntry> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(rename = "_about")]
        _about: Option<Value>,
        allow: Vec<AllowEntry>,
    }
    let file: File =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    for entry in &file.allow {
        assert!(
            matches!(entry.class, Class::OursStricter | Class::DifferentCode),
            "allowlist entry {:?}: only ours-stricter and different-code can be allowed",
            entry.case.label()
        );
        assert!(
            !entry.rule.trim().is_empty() && !entry.why.trim().is_empty(),
            "allowlist entry {:?} must cite its rule and say why",
            entry.case.label()
        );
    }
    file.allow
}

// ---------------------------------------------------------------------------
// The run

fn wall_clock_secs() -> (u64, u32) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    (now.as_secs(), now.subsec_millis())
}

struct Harness {
    sts: TestIssuer,
    verifier: Verifier,
    clock: ManualClock,
    oracle: Oracle,
    routes: Vec<Route>,
}

impl Harness {
    fn request(&self, token: &str, route: &Route) -> Value {
        json!({
            "token": token,
            "issuer": self.sts.issuer_url(),
            "audience": AUD,
            "zone": ZONE,
            "jwks_url": self.sts.jwks_url(ZONE),
            "route": route.to_json(),
            // Caracal's verifier decides on our clock, not its own.
            "now": self.clock.now().as_secs(),
        })
    }

    /// Both verifiers' decisions on every route for these cases. With `second`, the
    /// cases are only meaningful at that second: `None` comes back when the oracle
    /// decided any of them on another clock.
    async fn decide(&mut self, cases: &[Case], second: Option<u64>) -> Option<Vec<Outcome>> {
        let mut out = Vec::with_capacity(cases.len() * self.routes.len());
        for case in cases {
            for route in &self.routes {
                let ours = Decision::ours(
                    &self
                        .verifier
                        .verify(&case.token, &route.requirements())
                        .await,
                );
                let answer = self.oracle.ask(&self.request(&case.token, route)).await;
                if second.is_some_and(|s| s != answer.now) {
                    return None;
                }
                let caracal = Decision::caracal(&answer);
                let class = Class::of(&ours, &caracal);
                out.push(Outcome {
                    case: case.name.clone(),
                    route: route.name,
                    sts_shaped: case.sts_shaped,
                    ours,
                    caracal,
                    class,
                    allowed_by: None,
                });
            }
        }
        Some(out)
    }
}

fn python_from_env() -> PathBuf {
    match std::env::var_os("CARACAL_INTEROP_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "CARACAL_INTEROP_PYTHON is not set. This suite needs Caracal's Python verifier \
             (caracalai-verify 1.0.0) in a virtual environment: run `bash interop/run`, \
             which creates it and sets the variable."
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs caracalai-verify in a Python venv: run `bash interop/run`"]
async fn caracal_python_verifier_agrees() {
    let python = python_from_env();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let oracle = Oracle::start(&python, &root.join("interop/caracal_oracle.py")).await;
    let allowlist = load_allowlist(&root.join("interop/allowlist.json"));

    let sts = TestIssuer::start(ZONE).await.expect("start the issuer");
    let clock = ManualClock::new(Duration::from_secs(wall_clock_secs().0));
    sts.set_clock(clock.clone());
    let verifier = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience(AUD)
        .zone(ZONE)
        .clock(clock.clone())
        .build()
        .expect("build the verifier");
    let mut h = Harness {
        sts,
        verifier,
        clock,
        oracle,
        routes: routes(),
    };

    // Everything but the time edges: minted for now, valid for 300 s, decided
    // against our clock held at the minting second (Caracal reads the wall clock).
    let now = wall_clock_secs().0;
    h.clock.set(Duration::from_secs(now));
    let cases = corpus(&h.sts, now);
    let sizes: Vec<String> = cases
        .iter()
        .filter(|c| c.name.starts_with("sts.n") || c.name == "sts.ten_hop_chain")
        .map(|c| format!("{} {} B", c.name, c.token.len()))
        .collect();
    println!("STS-shaped token sizes: {}", sizes.join(", "));
    let mut outcomes = h.decide(&cases, None).await.expect("no second pinned");
    let mut mandates = cases.len();

    // Time edges: minted for one second and decided by both verifiers with their
    // clocks held at that second (the oracle holds the package's clock at the
    // request's `now`), so no decision depends on when it ran.
    let second = wall_clock_secs().0;
    h.clock.set(Duration::from_secs(second));
    let cases = time_corpus(&h.sts, second);
    let time_outcomes = h
        .decide(&cases, Some(second))
        .await
        .expect("the oracle decided on the clock the request held");
    mandates += cases.len();
    outcomes.extend(time_outcomes);
    h.oracle.stop().await;

    let report = judge(&mut outcomes, &allowlist, mandates, h.routes.len());
    if let Some(path) = std::env::var_os("CARACAL_INTEROP_DUMP") {
        dump(Path::new(&path), &outcomes, &allowlist);
    }
    println!("{}", report.text);
    assert!(
        report.failures.is_empty(),
        "interop failures:\n{}",
        report.failures.join("\n")
    );
}

/// Every decision as a JSON line, for review (`CARACAL_INTEROP_DUMP=path`).
fn dump(path: &Path, outcomes: &[Outcome], allowlist: &[AllowEntry]) {
    let mut text = String::new();
    for o in outcomes {
        let line = json!({
            "case": o.case,
            "route": o.route,
            "sts_shaped": o.sts_shaped,
            "class": o.class.as_str(),
            "ours": {"allow": o.ours.allow, "code": o.ours.code, "status": o.ours.status, "detail": o.ours.detail},
            "caracal": {"allow": o.caracal.allow, "code": o.caracal.code, "status": o.caracal.status, "detail": o.caracal.detail},
            "allowed_by": o.allowed_by.map(|i| allowlist[i].case.label()),
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    println!("all decisions written to {}", path.display());
}

struct Report {
    text: String,
    failures: Vec<String>,
}

fn judge(
    outcomes: &mut [Outcome],
    allowlist: &[AllowEntry],
    mandates: usize,
    routes: usize,
) -> Report {
    let mut used = vec![0_usize; allowlist.len()];
    for o in outcomes.iter_mut() {
        if o.class == Class::Agree || o.class == Class::OursLooser {
            continue;
        }
        o.allowed_by = allowlist.iter().position(|e| e.covers(o));
        if let Some(i) = o.allowed_by {
            used[i] += 1;
        }
    }

    let mut text = String::new();
    let mut failures = Vec::new();
    let count = |class: Class, allowed: Option<bool>| {
        outcomes
            .iter()
            .filter(|o| o.class == class && allowed.is_none_or(|a| o.allowed_by.is_some() == a))
            .count()
    };
    let decisions = outcomes.len();
    let agree = count(Class::Agree, None);
    let looser = count(Class::OursLooser, None);
    let stricter = count(Class::OursStricter, None);
    let stricter_ok = count(Class::OursStricter, Some(true));
    let different = count(Class::DifferentCode, None);
    let different_ok = count(Class::DifferentCode, Some(true));
    let exceptions = outcomes
        .iter()
        .filter(|o| o.caracal.code.as_deref() == Some("exception"))
        .count();

    let _ = writeln!(
        text,
        "\n=== Caracal interop: caracalai-verify 1.0.0 vs caracal-verifier ==="
    );
    let _ = writeln!(
        text,
        "{mandates} mandates x {routes} routes = {decisions} decisions \
         (time edges decided on one held clock)"
    );
    if exceptions > 0 {
        let _ = writeln!(
            text,
            "caracalai-verify raised an exception on {exceptions} decisions (counted as a denial with code `exception`)"
        );
    }
    let _ = writeln!(
        text,
        "\n| class | decisions | allowlisted | not allowlisted |"
    );
    let _ = writeln!(text, "| --- | ---: | ---: | ---: |");
    let _ = writeln!(text, "| agree | {agree} | | |");
    let _ = writeln!(
        text,
        "| ours-looser (we allow, Caracal denies) | {looser} | never | {looser} |"
    );
    let _ = writeln!(
        text,
        "| ours-stricter (we deny, Caracal allows) | {stricter} | {stricter_ok} | {} |",
        stricter - stricter_ok
    );
    let _ = writeln!(
        text,
        "| different code (both deny) | {different} | {different_ok} | {} |",
        different - different_ok
    );

    for class in [Class::OursLooser, Class::OursStricter, Class::DifferentCode] {
        for allowed in [false, true] {
            // Group by case family (name up to its last dot) and code pair.
            let mut groups: BTreeMap<(String, String, String), Vec<&Outcome>> = BTreeMap::new();
            for o in outcomes
                .iter()
                .filter(|o| o.class == class && o.allowed_by.is_some() == allowed)
            {
                let key = (
                    family(&o.case).to_owned(),
                    o.ours.code.clone().unwrap_or_else(|| "allow".into()),
                    o.caracal.code.clone().unwrap_or_else(|| "allow".into()),
                );
                groups.entry(key).or_default().push(o);
            }
            if groups.is_empty() {
                continue;
            }
            let _ = writeln!(
                text,
                "\n--- {} ({}) ---",
                class.as_str(),
                if allowed {
                    "allowlisted"
                } else {
                    "NOT allowlisted"
                }
            );
            for ((fam, ours, theirs), list) in &groups {
                let _ = writeln!(
                    text,
                    "  {fam}: ours {ours} / caracal {theirs}: {} decision(s)",
                    list.len()
                );
                for o in list.iter().take(EXAMPLES) {
                    let _ = writeln!(
                        text,
                        "      {} @ {}{}: ours {} | caracal {}",
                        o.case,
                        o.route,
                        if o.sts_shaped { " [STS-shaped]" } else { "" },
                        o.ours.label(),
                        o.caracal.label()
                    );
                }
                if list.len() > EXAMPLES {
                    let _ = writeln!(text, "      … and {} more", list.len() - EXAMPLES);
                }
            }
        }
    }

    for o in outcomes.iter() {
        let what = format!(
            "{} @ {}: ours {} | caracal {}",
            o.case,
            o.route,
            o.ours.label(),
            o.caracal.label()
        );
        match o.class {
            Class::Agree => {}
            Class::OursLooser => failures.push(format!("ours-looser: {what}")),
            Class::OursStricter if o.sts_shaped => {
                failures.push(format!("ours-stricter on an STS-shaped mandate: {what}"));
            }
            _ if o.allowed_by.is_none() => {
                failures.push(format!("{} (not allowlisted): {what}", o.class.as_str()));
            }
            _ => {}
        }
    }

    let unused: Vec<String> = allowlist
        .iter()
        .zip(&used)
        .filter(|(_, n)| **n == 0)
        .map(|(e, _)| e.case.label())
        .collect();
    if !unused.is_empty() {
        let _ = writeln!(
            text,
            "\nallowlist entries that matched nothing (stale?): {unused:?}"
        );
    }
    let _ = writeln!(text, "\nallowlist use:");
    for (entry, n) in allowlist.iter().zip(&used) {
        let _ = writeln!(
            text,
            "  {:>4}  {} {}{} [{}]",
            n,
            entry.class.as_str(),
            entry.case.label(),
            entry
                .route
                .as_deref()
                .map(|r| format!(" @ {r}"))
                .unwrap_or_default(),
            entry.rule
        );
    }

    let _ = writeln!(text, "\nREADME line:");
    let _ = writeln!(
        text,
        "{mandates} mandates × {routes} routes = {decisions} decisions; {agree} agree; \
         {stricter_ok} ours-stricter (allowlisted); {different_ok} different code (allowlisted); \
         {looser} ours-looser{}",
        if failures.is_empty() {
            String::new()
        } else {
            format!(
                " — FAILING: {} unlisted or forbidden disagreement(s)",
                failures.len()
            )
        }
    );
    Report { text, failures }
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| glob(rest, &tail[i..]))
        }
    }
}

/// `type.exp.string` → `type.exp`; `sts.n40.h1.9876b` → `sts`.
fn family(case: &str) -> &str {
    if case.starts_with("sts.") {
        return "sts";
    }
    case.rsplit_once('.').map_or(case, |(f, _)| f)
}
