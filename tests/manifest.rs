//! `Verifier::manifest` against Caracal's manifest contract,
//! `caracal-resource-verifier-manifest-2026-05-21`, for several configurations.
//!
//! How it is validated, and why it cannot pass by accident:
//!
//! - **Always:** against `tests/data/resource-verifier-manifest.facts.json`, this
//!   crate's restatement of the contract's facts (the keys of each object, which are
//!   required, that every object is closed, the constants, the boolean fields, the
//!   array bounds and the allowed values), checked by the small checker below. The
//!   repository holds no copy of the schema, so this runs on every machine.
//! - **When Caracal's contracts are beside the repository** (`../shared/caracal-contracts`,
//!   as in CI): also with a JSON Schema validator (`jsonschema`, draft 2020-12)
//!   against the schema itself; the facts file is checked to agree with the schema,
//!   so the always-on check cannot drift from it; and the contract's example
//!   manifest is checked to have the same shape as ours. Without that directory
//!   these steps say so on stderr and are skipped.
//! - **Both checkers must refuse** a set of broken manifests (an extra field, a
//!   missing one, an unknown language or anchor, a duplicate, a wrong type or
//!   constant), so a checker that accepts everything fails the test.

use std::path::PathBuf;
use std::sync::Arc;

use caracal_verifier::action::{ActionResult, ActionSink};
use caracal_verifier::manifest::{CONFORMANCE_FIXTURES, MANIFEST_SCHEMA};
use caracal_verifier::source::{FeedPolicy, Running, Source, SourceContext};
use caracal_verifier::{BoxFuture, ConfigError, Verifier, VerifierBuilder};
use serde_json::{Value, json};

fn facts() -> Value {
    serde_json::from_str(include_str!("data/resource-verifier-manifest.facts.json"))
        .expect("facts file")
}

/// Caracal's contracts, when they are beside the repository (CI).
fn contracts() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/caracal-contracts");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "note: {} not found; validating against the facts file only",
            dir.display()
        );
        None
    }
}

fn read_json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn schema(dir: &std::path::Path) -> Value {
    read_json(dir.join(format!("schemas/{MANIFEST_SCHEMA}.schema.json")))
}

// ---------------------------------------------------------------------------
// Configurations

#[derive(Debug)]
struct Idle(&'static str);

impl Running for Idle {
    fn name(&self) -> &str {
        self.0
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

/// Attaches an action sink, as an audit emitter does.
struct SinkSource;

impl Source for SinkSource {
    fn start(
        self: Box<Self>,
        ctx: &mut SourceContext<'_>,
    ) -> Result<Box<dyn Running>, ConfigError> {
        ctx.attach_action_sink(Arc::new(Discard))?;
        Ok(Box::new(Idle("audit")))
    }
}

/// Keeps the revocation set current, as the Redis feed does.
struct FeedSource;

impl Source for FeedSource {
    fn start(
        self: Box<Self>,
        ctx: &mut SourceContext<'_>,
    ) -> Result<Box<dyn Running>, ConfigError> {
        ctx.attach_revocation_feed(FeedPolicy::default())?;
        Ok(Box::new(Idle("feed")))
    }
}

fn builder() -> VerifierBuilder {
    Verifier::builder()
        .issuer("https://sts.example.com")
        .audience("resource://api")
        .zone("zone-1")
}

/// Each configuration, its manifest as JSON, and what it must say.
fn configurations() -> Vec<(&'static str, Value, bool, bool, bool)> {
    let cases: Vec<(&'static str, VerifierBuilder, bool, bool, bool)> = vec![
        // (name, builder, revocation supported, action_result_emitter, use resource)
        ("default", builder(), false, false, true),
        (
            "action sink",
            builder().source(SinkSource),
            false,
            true,
            true,
        ),
        (
            "revocation feed",
            builder().source(FeedSource),
            true,
            false,
            true,
        ),
        (
            "feed and sink",
            builder().source(FeedSource).source(SinkSource),
            true,
            true,
            true,
        ),
        (
            "session use, no cache",
            builder().token_use("session").mandate_cache(false),
            false,
            false,
            false,
        ),
    ];
    cases
        .into_iter()
        .map(|(name, b, revocation, emitter, resource)| {
            let verifier = b.build().expect(name);
            let bytes = verifier.manifest_json();
            let value: Value = serde_json::from_slice(&bytes).expect("manifest JSON");
            // The typed manifest and its canonical bytes say the same.
            assert_eq!(
                value,
                serde_json::to_value(verifier.manifest()).unwrap(),
                "{name}"
            );
            (name, value, revocation, emitter, resource)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The facts checker

/// The values at `path` (`a.b`, `a.b[]` for each item; `` for the root).
fn at<'v>(root: &'v Value, path: &str) -> Vec<&'v Value> {
    let (path, each) = match path.strip_suffix("[]") {
        Some(p) => (p, true),
        None => (path, false),
    };
    let mut v = Some(root);
    for part in path.split('.').filter(|p| !p.is_empty()) {
        v = v.and_then(|v| v.get(part));
    }
    match (v, each) {
        (None, _) => Vec::new(),
        (Some(Value::Array(items)), true) => items.iter().collect(),
        (Some(v), false) => vec![v],
        (Some(_), true) => Vec::new(),
    }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .expect("array of strings")
        .iter()
        .map(|s| s.as_str().expect("string"))
        .collect()
}

/// Every way `manifest` breaks the facts; empty when it meets them all.
fn check_facts(facts: &Value, manifest: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    for (path, keys) in facts["keys"].as_object().unwrap() {
        let allowed = strings(keys);
        match at(manifest, path).first().and_then(|v| v.as_object()) {
            None => errors.push(format!("`{path}` is not an object")),
            Some(obj) => {
                for k in obj.keys() {
                    if !allowed.contains(&k.as_str()) {
                        errors.push(format!("`{path}` has a field outside the contract: {k}"));
                    }
                }
                for k in strings(&facts["required"][path]) {
                    if !obj.contains_key(k) {
                        errors.push(format!("`{path}` lacks required `{k}`"));
                    }
                }
            }
        }
    }
    for (path, expected) in facts["constants"].as_object().unwrap() {
        if at(manifest, path).first() != Some(&expected) {
            errors.push(format!("`{path}` is not {expected}"));
        }
    }
    for path in strings(&facts["booleans"]) {
        if !at(manifest, path).first().is_some_and(|v| v.is_boolean()) {
            errors.push(format!("`{path}` is not a boolean"));
        }
    }
    for path in strings(&facts["non_empty_strings"]) {
        for v in at(manifest, path) {
            if v.as_str().is_none_or(str::is_empty) {
                errors.push(format!("`{path}` is not a non-empty string"));
            }
        }
    }
    for (path, rule) in facts["arrays"].as_object().unwrap() {
        let Some(items) = at(manifest, path).first().and_then(|v| v.as_array()) else {
            errors.push(format!("`{path}` is not an array"));
            continue;
        };
        if (items.len() as u64) < rule["min_items"].as_u64().unwrap() {
            errors.push(format!("`{path}` has too few items"));
        }
        if rule["unique"] == true {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    errors.push(format!("`{path}` repeats {item}"));
                }
            }
        }
        if let Some(allowed) = rule.get("one_of") {
            let allowed = allowed.as_array().unwrap();
            for item in items {
                if !allowed.contains(item) {
                    errors.push(format!("`{path}` holds {item}, outside the contract"));
                }
            }
        }
    }
    errors
}

/// Broken copies of a valid manifest, each with what was broken.
fn broken(valid: &Value) -> Vec<(&'static str, Value)> {
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut v = valid.clone();
        f(&mut v);
        v
    };
    vec![
        (
            "an extra top-level field",
            edit(&|v| v["zone"] = json!("zone-1")),
        ),
        (
            "an extra nested field",
            edit(&|v| v["claim_profile"]["leeway"] = json!(60)),
        ),
        (
            "a missing section",
            edit(&|v| {
                v.as_object_mut().unwrap().remove("audit");
            }),
        ),
        (
            "a missing nested field",
            edit(&|v| {
                v["revocation"].as_object_mut().unwrap().remove("anchors");
            }),
        ),
        (
            "another schema version",
            edit(&|v| v["schema_version"] = json!("2026-05-20")),
        ),
        (
            "an unknown language",
            edit(&|v| v["languages"] = json!(["cobol"])),
        ),
        ("no language", edit(&|v| v["languages"] = json!([]))),
        (
            "a repeated language",
            edit(&|v| v["languages"] = json!(["rust", "rust"])),
        ),
        (
            "an unknown anchor",
            edit(&|v| v["revocation"]["anchors"] = json!(["jti"])),
        ),
        (
            "a string for a boolean",
            edit(&|v| v["claim_profile"]["requires_scope"] = json!("true")),
        ),
        ("an empty name", edit(&|v| v["name"] = json!(""))),
        (
            "no fixtures",
            edit(&|v| v["conformance"]["fixtures"] = json!([])),
        ),
        (
            "an empty fixture name",
            edit(&|v| v["conformance"]["fixtures"] = json!([""])),
        ),
    ]
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn every_configuration_meets_the_contract_facts() {
    let facts = facts();
    assert_eq!(facts["schema"], MANIFEST_SCHEMA);
    for (name, manifest, revocation, emitter, resource) in configurations() {
        let errors = check_facts(&facts, &manifest);
        assert!(errors.is_empty(), "{name}: {errors:?}\n{manifest:#}");
        assert_eq!(manifest["revocation"]["supported"], revocation, "{name}");
        assert_eq!(
            manifest["audit"]["action_result_emitter"], emitter,
            "{name}"
        );
        assert_eq!(
            manifest["claim_profile"]["requires_use_resource"], resource,
            "{name}"
        );
        assert_eq!(manifest["languages"], json!(["rust"]), "{name}");
        assert_eq!(
            manifest["conformance"]["fixtures"],
            json!(CONFORMANCE_FIXTURES)
        );
        // An anchor is claimed only when a feed keeps the set current.
        let anchors = manifest["revocation"]["anchors"].as_array().unwrap();
        assert_eq!(!anchors.is_empty(), revocation, "{name}");
    }
}

#[test]
fn the_facts_checker_refuses_broken_manifests() {
    let facts = facts();
    let (_, valid, ..) = configurations().remove(0);
    for (what, manifest) in broken(&valid) {
        assert!(
            !check_facts(&facts, &manifest).is_empty(),
            "accepted a manifest with {what}"
        );
    }
}

#[test]
fn every_configuration_validates_against_the_schema() {
    let Some(dir) = contracts() else { return };
    let validator = jsonschema::validator_for(&schema(&dir)).expect("schema compiles");
    for (name, manifest, ..) in configurations() {
        let errors: Vec<String> = validator
            .iter_errors(&manifest)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?}\n{manifest:#}");
    }
    let (_, valid, ..) = configurations().remove(0);
    for (what, manifest) in broken(&valid) {
        assert!(
            !validator.is_valid(&manifest),
            "the schema accepted a manifest with {what}"
        );
    }
}

#[test]
fn the_facts_file_agrees_with_the_schema() {
    let Some(dir) = contracts() else { return };
    let schema = schema(&dir);
    let facts = facts();
    let section = |path: &str| -> Value {
        if path.is_empty() {
            schema.clone()
        } else {
            schema["properties"][path].clone()
        }
    };
    let sorted = |v: &Value| {
        let mut s: Vec<String> = strings(v).into_iter().map(str::to_owned).collect();
        s.sort();
        s
    };
    let object_paths: Vec<&String> = facts["keys"].as_object().unwrap().keys().collect();
    for path in &object_paths {
        let s = section(path);
        let declared: Vec<String> = {
            let mut k: Vec<String> = s["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            k.sort();
            k
        };
        assert_eq!(
            sorted(&facts["keys"][path.as_str()]),
            declared,
            "keys of `{path}`"
        );
        assert_eq!(
            sorted(&facts["required"][path.as_str()]),
            sorted(&s["required"]),
            "required of `{path}`"
        );
        assert_eq!(s["additionalProperties"], false, "`{path}` is closed");
    }
    // Every object of the schema is covered.
    for (name, prop) in schema["properties"].as_object().unwrap() {
        if prop["type"] == "object" {
            assert!(object_paths.contains(&name), "object `{name}`");
        }
    }
    let prop = |path: &str| -> Value {
        let mut v = &schema;
        for part in path.split('.') {
            v = &v["properties"][part];
        }
        v.clone()
    };
    for (path, value) in facts["constants"].as_object().unwrap() {
        assert_eq!(prop(path)["const"], *value, "constant `{path}`");
    }
    for path in strings(&facts["booleans"]) {
        assert_eq!(prop(path)["type"], "boolean", "`{path}`");
    }
    for (path, rule) in facts["arrays"].as_object().unwrap() {
        let p = prop(path);
        assert_eq!(p["type"], "array", "`{path}`");
        assert_eq!(
            p["minItems"].as_u64().unwrap_or(0),
            rule["min_items"].as_u64().unwrap(),
            "minItems of `{path}`"
        );
        assert_eq!(p["uniqueItems"] == true, rule["unique"] == true, "`{path}`");
        match rule.get("one_of") {
            Some(allowed) => assert_eq!(p["items"]["enum"], *allowed, "values of `{path}`"),
            None => assert!(p["items"].get("enum").is_none(), "`{path}`"),
        }
    }
    for path in strings(&facts["non_empty_strings"]) {
        let p = match path.strip_suffix("[]") {
            Some(array) => prop(array)["items"].clone(),
            None => prop(path),
        };
        assert_eq!(p["type"], "string", "`{path}`");
        assert_eq!(p["minLength"], 1, "`{path}`");
    }
}

#[test]
fn the_contract_example_has_our_shape() {
    let Some(dir) = contracts() else { return };
    let example = read_json(dir.join("fixtures/resource-verifier-manifest.valid.json"));
    let facts = facts();
    // The facts file accepts the contract's own example...
    assert_eq!(check_facts(&facts, &example), Vec::<String>::new());
    // ...which has exactly our fields, with the same JSON types.
    let (_, ours, ..) = configurations().remove(0);
    fn shape(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
            }
            Value::Array(_) => json!("array"),
            Value::String(_) => json!("string"),
            Value::Bool(_) => json!("boolean"),
            Value::Number(_) => json!("number"),
            Value::Null => json!("null"),
        }
    }
    assert_eq!(shape(&example), shape(&ours));
    // Every fixture we claim conformance to is one of the contract's.
    for fixture in CONFORMANCE_FIXTURES {
        assert!(
            dir.join("fixtures").join(fixture).is_file(),
            "{fixture} is not a contract fixture"
        );
    }
}
