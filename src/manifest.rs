//! The resource verifier manifest: what this verifier supports, in Caracal's
//! `caracal-resource-verifier-manifest-2026-05-21` form.
//!
//! Caracal describes a resource verifier (middleware, library or sidecar) by a small
//! JSON document: the claim profile it enforces, the revocation anchors it honours,
//! whether it carries W3C trace context and baggage, whether it records action
//! results, and which of Caracal's contract fixtures it is tested against.
//! [`Verifier::manifest`] builds it from the verifier's **actual** configuration,
//! so two verifiers built differently can publish different manifests:
//!
//! | field | value |
//! | --- | --- |
//! | `schema_version`, `claim_profile.jwt_claim_schema_version` | `2026-05-21`: the contract this crate implements |
//! | `name`, `version`, `languages` | this crate's name and version, `["rust"]` |
//! | `claim_profile.requires_audience` | `true`: `aud` must contain the configured audience, on every verification |
//! | `claim_profile.requires_use_resource` | whether the accepted `use` ([`VerifierBuilder::token_use`]) is `resource` |
//! | `claim_profile.requires_scope`, `requires_target` | `true`: a route's [`Requirements::scopes`] and [`Requirements::targets`] are enforced, as by Caracal's own verifiers (which also check them per route) |
//! | `revocation.supported` | whether a revocation feed keeps the verifier's set current (a [source](crate::source) attached one, such as the Redis feed) |
//! | `revocation.anchors` | `sid`, `root_sid`, `agent_session_id`, `delegation_edge_id` when supported, else none |
//! | `w3c_context` | `true`, `true`: a [`MandateLayer`](crate::layer::MandateLayer) attaches the [context](crate::context) of every verified request |
//! | `audit.action_result_emitter` | whether a source attached an [action sink](crate::action::ActionSink) |
//! | `conformance.fixtures` | the contract fixtures this crate's tests check ([`CONFORMANCE_FIXTURES`]) |
//!
//! The schema admits no other field, so the rest of the configuration (issuer,
//! zone, algorithms, leeway, caches) is in the [status document](crate::status)
//! instead.
//!
//! [`Verifier::manifest_json`] is the manifest's canonical form, and
//! [`Verifier::manifest_sha`] the lowercase hex SHA-256 of those bytes: the same
//! manifest always gives the same digest.
//!
//! ```
//! use caracal_verifier::Verifier;
//!
//! let verifier = Verifier::builder()
//!     .issuer("https://sts.example.com")
//!     .audience("resource://api")
//!     .zone("zone-1")
//!     .build()?;
//! let manifest = verifier.manifest();
//! assert_eq!(manifest.schema_version, "2026-05-21");
//! assert!(manifest.claim_profile.requires_use_resource);
//! // No feed keeps the revocation set current, and no sink records action results.
//! assert!(!manifest.revocation.supported);
//! assert!(!manifest.audit.action_result_emitter);
//!
//! let json = verifier.manifest_json();
//! assert!(json.starts_with(br#"{"audit":{"action_result_emitter":false},"claim_profile":"#));
//! assert_eq!(verifier.manifest_sha().len(), 64);
//! # Ok::<(), caracal_verifier::ConfigError>(())
//! ```
//!
//! [`VerifierBuilder::token_use`]: crate::VerifierBuilder::token_use
//! [`Requirements::scopes`]: crate::Requirements::scopes
//! [`Requirements::targets`]: crate::Requirements::targets

use serde::Serialize;
use serde_json::Value;

use crate::verifier::Verifier;

/// The manifest schema this crate produces.
pub const MANIFEST_SCHEMA: &str = "caracal-resource-verifier-manifest-2026-05-21";

/// The manifest's `schema_version` (and the claim schema version it states).
pub const SCHEMA_VERSION: &str = "2026-05-21";

/// The revocation anchors a verifier with a feed honours: every request is checked
/// against each one its mandate carries (and against upstream chain and path
/// anchors beyond these, which the schema has no names for).
pub const REVOCATION_ANCHORS: &[&str] =
    &["sid", "root_sid", "agent_session_id", "delegation_edge_id"];

/// Caracal's contract fixtures that this crate's test suite checks, restated as
/// test data: the resource mandate's claims (`tests/data`), the revocation event and
/// the stream-signature vectors (the `revocation` unit tests), and the trace
/// context headers (`tests/data/trace-context.json`).
pub const CONFORMANCE_FIXTURES: &[&str] = &[
    "jwt-claims.resource.valid.json",
    "revocation-event.session.valid.json",
    "stream-sig-canonicalize.vectors.json",
    "trace-context.headers.valid.json",
];

/// A resource verifier manifest (`caracal-resource-verifier-manifest-2026-05-21`);
/// see the [module docs](self) for where each field comes from. Serializes to the
/// schema's JSON.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: &'static str,
    /// This crate's name, `caracal-verifier`.
    pub name: &'static str,
    /// This crate's version.
    pub version: &'static str,
    /// `["rust"]`.
    pub languages: &'static [&'static str],
    /// The claims the verifier requires.
    pub claim_profile: ClaimProfile,
    /// Revocation: whether a feed keeps it current, and the anchors honoured.
    pub revocation: RevocationSupport,
    /// W3C trace context and baggage.
    pub w3c_context: W3cContext,
    /// Action results.
    pub audit: AuditSupport,
    /// The contract fixtures the crate is tested against.
    pub conformance: Conformance,
}

/// The manifest's `claim_profile`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimProfile {
    /// Always [`SCHEMA_VERSION`]: the claim schema the verifier parses.
    pub jwt_claim_schema_version: &'static str,
    /// `aud` must contain the configured audience. Always `true`.
    pub requires_audience: bool,
    /// A route's required targets are enforced ([`Requirements::targets`](crate::Requirements::targets)).
    /// Always `true`; a route that lists none accepts a mandate without `target`.
    pub requires_target: bool,
    /// A route's required scopes are enforced ([`Requirements::scopes`](crate::Requirements::scopes)).
    /// Always `true`; a route that lists none accepts a mandate without `scope`.
    pub requires_scope: bool,
    /// Only `use=resource` mandates are accepted: `false` when the verifier was
    /// configured to accept another `use`.
    pub requires_use_resource: bool,
}

/// The manifest's `revocation`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevocationSupport {
    /// A revocation feed keeps the verifier's set current.
    pub supported: bool,
    /// [`REVOCATION_ANCHORS`] when supported, else empty.
    pub anchors: &'static [&'static str],
}

/// The manifest's `w3c_context`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct W3cContext {
    /// `traceparent`/`tracestate` are read and propagated.
    pub trace_context: bool,
    /// `baggage` is read (its `caracal.*` members dropped) and the verified
    /// `caracal.*` entries propagated.
    pub baggage: bool,
}

/// The manifest's `audit`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditSupport {
    /// An action sink is attached: a layer over this verifier records one action
    /// result per request it decides.
    pub action_result_emitter: bool,
}

/// The manifest's `conformance`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conformance {
    /// [`CONFORMANCE_FIXTURES`].
    pub fixtures: &'static [&'static str],
}

impl Verifier {
    /// This verifier's manifest, from its configuration; see the
    /// [module docs](crate::manifest).
    ///
    /// `revocation.supported` follows the revocation set: it turns `true` if a
    /// verifier built later attaches a feed to a set this one shares. Every other
    /// field is fixed when the verifier is built.
    pub fn manifest(&self) -> Manifest {
        let inner = &*self.inner;
        // The set's feed, whichever verifier's source attached it: it is what
        // every check of this verifier consults.
        let revocation = inner.revocations.feed_status().is_some();
        Manifest {
            schema_version: SCHEMA_VERSION,
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            languages: &["rust"],
            claim_profile: ClaimProfile {
                jwt_claim_schema_version: SCHEMA_VERSION,
                requires_audience: true,
                requires_target: true,
                requires_scope: true,
                requires_use_resource: inner.token_use == "resource",
            },
            revocation: RevocationSupport {
                supported: revocation,
                anchors: if revocation { REVOCATION_ANCHORS } else { &[] },
            },
            w3c_context: W3cContext {
                trace_context: true,
                baggage: true,
            },
            audit: AuditSupport {
                action_result_emitter: inner.actions.is_some(),
            },
            conformance: Conformance {
                fixtures: CONFORMANCE_FIXTURES,
            },
        }
    }

    /// The manifest's canonical JSON: no whitespace, object keys sorted, strings
    /// escaped as `serde_json` does. For the values a manifest holds (ASCII keys,
    /// strings, booleans, arrays; no numbers) this is the RFC 8785 (JCS) form, so
    /// equal manifests give equal bytes.
    pub fn manifest_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(640);
        write_canonical(&manifest_value(&self.manifest()), &mut out);
        out
    }

    /// The lowercase hex SHA-256 of [`manifest_json`](Self::manifest_json): 64
    /// characters, the `manifest_sha` of this verifier's manifest.
    pub fn manifest_sha(&self) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.manifest_json());
        hex(digest.as_ref())
    }
}

fn manifest_value(manifest: &Manifest) -> Value {
    // Serializing plain structs of strings, booleans and arrays cannot fail.
    serde_json::to_value(manifest).unwrap_or(Value::Null)
}

/// Write `value` with no whitespace and each object's keys sorted (by bytes, which
/// for the ASCII keys of a manifest is RFC 8785's UTF-16 order), whatever map
/// `serde_json` was built with.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(key.clone()).to_string().as_bytes());
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        // `Display` of a scalar is its compact JSON.
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::action::{ActionResult, ActionSink};
    use crate::error::ConfigError;
    use crate::future::BoxFuture;
    use crate::source::{FeedPolicy, Running, Source, SourceContext};
    use crate::verifier::VerifierBuilder;

    fn builder() -> VerifierBuilder {
        Verifier::builder()
            .issuer("https://sts.example.com")
            .audience("resource://api")
            .zone("zone-1")
    }

    #[derive(Debug)]
    struct Idle;

    impl Running for Idle {
        fn name(&self) -> &str {
            "idle"
        }
        fn is_running(&self) -> bool {
            true
        }
        fn shutdown(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    #[derive(Debug)]
    struct Discard;

    impl ActionSink for Discard {
        fn record(&self, _: ActionResult) {}
    }

    struct Sink;

    impl Source for Sink {
        fn start(
            self: Box<Self>,
            ctx: &mut SourceContext<'_>,
        ) -> Result<Box<dyn Running>, ConfigError> {
            ctx.attach_action_sink(Arc::new(Discard))?;
            Ok(Box::new(Idle))
        }
    }

    struct Feed;

    impl Source for Feed {
        fn start(
            self: Box<Self>,
            ctx: &mut SourceContext<'_>,
        ) -> Result<Box<dyn Running>, ConfigError> {
            ctx.attach_revocation_feed(FeedPolicy::default())?;
            Ok(Box::new(Idle))
        }
    }

    #[test]
    fn the_manifest_follows_the_configuration() {
        let plain = builder().build().unwrap().manifest();
        assert!(plain.claim_profile.requires_use_resource);
        assert!(!plain.revocation.supported);
        assert!(plain.revocation.anchors.is_empty());
        assert!(!plain.audit.action_result_emitter);

        let with_sink = builder().source(Sink).build().unwrap().manifest();
        assert!(with_sink.audit.action_result_emitter);
        assert!(!with_sink.revocation.supported);

        let with_feed = builder().source(Feed).build().unwrap().manifest();
        assert!(with_feed.revocation.supported);
        assert_eq!(with_feed.revocation.anchors, REVOCATION_ANCHORS);
        assert!(!with_feed.audit.action_result_emitter);

        let session = builder().token_use("session").build().unwrap().manifest();
        assert!(!session.claim_profile.requires_use_resource);
    }

    #[test]
    fn a_feed_attached_to_a_shared_set_by_another_verifier_counts() {
        let a = builder().build().unwrap();
        assert!(!a.manifest().revocation.supported);
        let _b = builder()
            .revocations(a.revocations().clone())
            .source(Feed)
            .build()
            .unwrap();
        assert!(a.manifest().revocation.supported);
    }

    #[test]
    fn canonical_json_sorts_keys_and_has_no_whitespace() {
        let v = builder().build().unwrap();
        let json = String::from_utf8(v.manifest_json()).unwrap();
        assert!(!json.contains([' ', '\n']));
        assert_eq!(
            json,
            concat!(
                r#"{"audit":{"action_result_emitter":false},"#,
                r#""claim_profile":{"jwt_claim_schema_version":"2026-05-21","requires_audience":true,"#,
                r#""requires_scope":true,"requires_target":true,"requires_use_resource":true},"#,
                r#""conformance":{"fixtures":["jwt-claims.resource.valid.json","#,
                r#""revocation-event.session.valid.json","stream-sig-canonicalize.vectors.json","#,
                r#""trace-context.headers.valid.json"]},"#,
                r#""languages":["rust"],"name":"caracal-verifier","#,
                r#""revocation":{"anchors":[],"supported":false},"#,
                r#""schema_version":"2026-05-21","version":""#,
                env!("CARGO_PKG_VERSION"),
                r#"","w3c_context":{"baggage":true,"trace_context":true}}"#,
            )
        );
        // Same bytes as the serde form, re-read.
        let reread: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(reread, serde_json::to_value(v.manifest()).unwrap());
    }

    #[test]
    fn canonical_form_escapes_and_sorts_nested_values() {
        let v = serde_json::json!({"b": [{"z": 1, "a": "x\"\n"}], "a": null, "é": true});
        let mut out = Vec::new();
        write_canonical(&v, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":null,"b":[{"a":"x\"\n","z":1}],"é":true}"#
        );
    }

    #[test]
    fn sha_is_lowercase_hex_of_the_canonical_bytes() {
        let v = builder().build().unwrap();
        let sha = v.manifest_sha();
        assert_eq!(sha.len(), 64);
        assert!(
            sha.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &v.manifest_json());
        assert_eq!(sha, hex(digest.as_ref()));
        assert_eq!(
            hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"abc").as_ref()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Equal configuration, equal digest; another configuration, another one.
        assert_eq!(sha, builder().build().unwrap().manifest_sha());
        assert_ne!(sha, builder().source(Sink).build().unwrap().manifest_sha());
    }
}
