//! The wire form of an action result on `caracal.audit.events`: the `data` JSON, its
//! UUIDv7 id, the RFC 3339 time and the `sig` HMAC.
//!
//! The field names and shapes are those of Caracal's audit event (its schema
//! `caracal-audit-event-2026-05-21`, and the Go `audit.Event` its Audit service
//! decodes); the metadata keys are the Gateway's action result's, except where a
//! Gateway key names a hop an in-process verifier does not have (see the module
//! docs of [`audit`](super)).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};

use super::key::AuditKey;
use crate::action::ActionResult;
use crate::error::AuthError;

/// What every event of one emitter shares.
#[derive(Debug, Clone)]
pub(crate) struct Form {
    pub(crate) event_type: String,
    pub(crate) manifest_sha: Option<String>,
    /// The verifier's zone: the `zone_id` of a request without a verified mandate.
    pub(crate) zone: String,
    /// The verifier's audience: the `resource` of every event.
    pub(crate) resource: String,
}

/// One stream entry, before signing: the event id and the exact `data` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) data: String,
}

impl Entry {
    /// The entry from a spilled line (which is the `data` itself); `None` when the
    /// line is not a JSON object with a non-empty string `id`.
    pub(crate) fn from_data(data: String) -> Option<Entry> {
        #[derive(serde::Deserialize)]
        struct Id {
            id: String,
        }
        let Id { id } = serde_json::from_str(&data).ok()?;
        (!id.is_empty() && !data.contains('\n')).then_some(Entry { id, data })
    }

    /// The `sig` field: lowercase hex HMAC-SHA256 of `data`.
    pub(crate) fn sig(&self, key: &AuditKey) -> String {
        key.sign(self.data.as_bytes())
    }
}

#[derive(Serialize)]
struct Data<'a> {
    id: &'a str,
    zone_id: &'a str,
    event_type: &'a str,
    request_id: &'a str,
    decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest_sha: Option<&'a str>,
    evaluation_status: &'static str,
    determining_policies_json: [Value; 0],
    diagnostics_json: Vec<Diagnostic<'a>>,
    metadata_json: Metadata<'a>,
    occurred_at: String,
}

#[derive(Serialize)]
struct Diagnostic<'a> {
    code: &'static str,
    reason: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Map::is_empty")]
    details: Map<String, Value>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    application_id: Option<&'a str>,
    resource: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject_fingerprint: Option<&'a str>,
    method: &'a str,
    status: u16,
    latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject_kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_class: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    revocation_interrupted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_kind: Option<&'static str>,
}

/// `evaluation_status`: how the request ended.
fn evaluation_status(r: &ActionResult) -> &'static str {
    match &r.denial {
        None if r.mandate.is_some() => "executed",
        // An optional layer let a request without credentials through.
        None => "anonymous",
        Some(e) if e.status().is_server_error() => "unavailable",
        Some(_) => "denied",
    }
}

/// `result_class` of the status the protected service answered, as the Gateway
/// classifies an upstream answer.
fn result_class(status: u16) -> &'static str {
    match status {
        200..=299 => "success",
        300..=399 => "redirect",
        400..=499 => "client_error",
        500.. => "server_error",
        _ => "unknown",
    }
}

fn diagnostic(err: &AuthError) -> Diagnostic<'_> {
    let code = err.code().as_str();
    Diagnostic {
        code,
        reason: err.reason().map_or(code, |r| r.as_str()),
        message: err.to_string(),
        details: err.details(),
    }
}

/// The entry of one action result. `now` stamps the UUIDv7.
pub(crate) fn entry(form: &Form, r: &ActionResult, now: SystemTime) -> Entry {
    let id = uuid_v7(now);
    let mandate = r.mandate.as_ref();
    let allowed = r.denial.is_none();
    let data = Data {
        id: &id,
        zone_id: mandate.map_or(form.zone.as_str(), |m| m.zone_id()),
        event_type: &form.event_type,
        request_id: &r.request_id,
        decision: if allowed { "allow" } else { "deny" },
        manifest_sha: form.manifest_sha.as_deref().or(r.manifest_sha.as_deref()),
        evaluation_status: evaluation_status(r),
        determining_policies_json: [],
        diagnostics_json: r.denial.iter().map(diagnostic).collect(),
        metadata_json: Metadata {
            application_id: mandate.map(|m| m.client_id()),
            resource: &form.resource,
            subject_fingerprint: r.subject_fingerprint.as_deref(),
            method: r.method.as_str(),
            status: r.status,
            latency_ms: u64::try_from(r.latency.as_millis()).unwrap_or(u64::MAX),
            trace_id: r.trace_id.as_deref(),
            subject_kind: mandate.map(|m| m.subject_type().as_str()),
            result_class: allowed.then(|| result_class(r.status)),
            revocation_interrupted: r.revocation_interrupted(),
            error_kind: r.denial.as_ref().map(|e| e.code().as_str()),
        },
        occurred_at: rfc3339(r.occurred_at),
    };
    // Serializing these types cannot fail (string keys, no maps of other keys).
    let data = serde_json::to_string(&data).unwrap_or_default();
    Entry { id, data }
}

/// A UUIDv7 (RFC 9562 §5.7): 48 bits of Unix milliseconds, the version, 74 random
/// bits and the variant, as the Gateway's ids (`uuid.NewV7`) are.
pub(crate) fn uuid_v7(now: SystemTime) -> String {
    let ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut b = [0u8; 16];
    // The system generator does not fail in practice; the time part still orders
    // and separates ids if it ever did.
    let _ = aws_lc_rs::rand::fill(&mut b[6..]);
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = 0x70 | (b[6] & 0x0f);
    b[8] = 0x80 | (b[8] & 0x3f);
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        push_hex(&mut out, *byte);
    }
    out
}

pub(crate) fn push_hex(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0x0f)]));
}

/// RFC 3339 in UTC, with the fraction Go's `RFC3339Nano` writes (trailing zeros
/// dropped, none when whole): `2026-05-21T12:00:00.25Z`. Times before 1970 are
/// written as the epoch.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let nanos = d.subsec_nanos();
    if nanos > 0 {
        let frac = format!(".{nanos:09}");
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Year, month, day of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn rfc3339_matches_go_rfc3339nano() {
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00Z");
        // 2026-05-21T12:00:00Z, the contract fixture's time.
        assert_eq!(rfc3339(at(1_779_364_800, 0)), "2026-05-21T12:00:00Z");
        assert_eq!(
            rfc3339(at(1_779_364_800, 250_000_000)),
            "2026-05-21T12:00:00.25Z"
        );
        assert_eq!(
            rfc3339(at(1_779_364_800, 1)),
            "2026-05-21T12:00:00.000000001Z"
        );
        // A leap day and the last second of a year.
        assert_eq!(rfc3339(at(951_782_400, 0)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(at(1_767_225_599, 0)), "2025-12-31T23:59:59Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn uuid_v7_has_the_time_version_and_variant() {
        let t = at(1_779_364_800, 123_000_000);
        let id = uuid_v7(t);
        assert_eq!(id.len(), 36);
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(
            id.bytes()
                .all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let ms = u64::from_str_radix(&format!("{}{}", groups[0], groups[1]), 16).unwrap();
        assert_eq!(ms, 1_779_364_800_123);
        assert!(groups[2].starts_with('7'), "{id}");
        assert!(
            matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{id}"
        );
        // 74 random bits: ids of the same millisecond differ.
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| uuid_v7(t)).collect();
        assert_eq!(ids.len(), 1000);
        // Later milliseconds sort later.
        assert!(uuid_v7(at(1_779_364_800, 124_000_000)) > id);
    }

    fn form() -> Form {
        Form {
            event_type: "verifier_resource_request".into(),
            manifest_sha: None,
            zone: "zone-1".into(),
            resource: "resource://api".into(),
        }
    }

    #[test]
    fn a_denial_without_a_mandate_has_the_contract_fields() {
        let r = ActionResult {
            request_id: "req-1".into(),
            occurred_at: at(1_779_364_800, 0),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            method: http::Method::POST,
            status: 401,
            latency: Duration::from_micros(1500),
            mandate: None,
            denial: Some(AuthError::invalid(crate::error::InvalidReason::Signature)),
            subject_fingerprint: Some("0123456789abcdef".into()),
            manifest_sha: None,
        };
        let e = entry(&form(), &r, at(1_779_364_801, 0));
        let v: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v["id"], e.id.as_str());
        assert_eq!(v["zone_id"], "zone-1");
        assert_eq!(v["event_type"], "verifier_resource_request");
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["evaluation_status"], "denied");
        assert_eq!(v["determining_policies_json"], serde_json::json!([]));
        assert_eq!(v["occurred_at"], "2026-05-21T12:00:00Z");
        assert!(v.get("manifest_sha").is_none());
        let d = &v["diagnostics_json"][0];
        assert_eq!(d["code"], "invalid_token");
        assert_eq!(
            d["reason"],
            r.denial.as_ref().unwrap().reason().unwrap().as_str()
        );
        let m = &v["metadata_json"];
        assert_eq!(
            m,
            &serde_json::json!({
                "resource": "resource://api",
                "subject_fingerprint": "0123456789abcdef",
                "method": "POST",
                "status": 401,
                "latency_ms": 1,
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "error_kind": "invalid_token",
            })
        );
        // The form's manifest digest rides on every event.
        let mut f = form();
        f.manifest_sha = Some("sha256:abc".into());
        let v: Value = serde_json::from_str(&entry(&f, &r, SystemTime::now()).data).unwrap();
        assert_eq!(v["manifest_sha"], "sha256:abc");
    }

    #[test]
    fn the_verifiers_manifest_sha_is_written_unless_the_emitter_sets_one() {
        let r = ActionResult {
            request_id: "req-2".into(),
            occurred_at: at(1_779_364_800, 0),
            trace_id: None,
            method: http::Method::GET,
            status: 200,
            latency: Duration::from_millis(3),
            mandate: None,
            denial: None,
            subject_fingerprint: None,
            manifest_sha: Some("ab12".into()),
        };
        let data = |f: &Form| -> Value {
            serde_json::from_str(&entry(f, &r, at(1_779_364_801, 0)).data).unwrap()
        };
        assert_eq!(data(&form())["manifest_sha"], "ab12");
        let mut set = form();
        set.manifest_sha = Some("sha256:feed".into());
        assert_eq!(data(&set)["manifest_sha"], "sha256:feed");
    }

    #[test]
    fn result_classes_follow_the_gateway() {
        assert_eq!(result_class(204), "success");
        assert_eq!(result_class(302), "redirect");
        assert_eq!(result_class(404), "client_error");
        assert_eq!(result_class(502), "server_error");
        assert_eq!(result_class(101), "unknown");
    }

    #[test]
    fn spilled_lines_need_an_object_with_an_id() {
        let ok = Entry::from_data(r#"{"id":"x","zone_id":"z"}"#.into()).unwrap();
        assert_eq!(ok.id, "x");
        for bad in [
            "",
            "[]",
            r#"{"id":""}"#,
            r#"{"id":7}"#,
            "{\"id\":\"x\"",
            "not json",
        ] {
            assert!(Entry::from_data(bad.into()).is_none(), "{bad}");
        }
    }
}
