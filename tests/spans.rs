//! The per-verification `tracing` span, read by a capturing subscriber: its fields
//! for each outcome, and no secret in any field or event.

use std::sync::{Arc, Mutex};

use caracal_verifier::testing::TestIssuer;
use caracal_verifier::{Requirements, Verifier};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// A span's id, name and fields (name, value as text).
type Span = (Id, String, Vec<(String, String)>);

/// Every span's name and fields, and every event's fields, as text.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<Span>>>,
    events: Arc<Mutex<Vec<String>>>,
}

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = Vec::new();
        attrs.record(&mut Fields(&mut fields));
        let name = attrs.metadata().name().to_owned();
        self.spans.lock().unwrap().push((id.clone(), name, fields));
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.spans.lock().unwrap();
        if let Some(span) = spans.iter_mut().find(|s| s.0 == *id) {
            values.record(&mut Fields(&mut span.2));
        }
    }
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        self.events.lock().unwrap().push(format!("{fields:?}"));
    }
}

impl Capture {
    /// The fields of the verification spans, in order.
    fn verifications(&self) -> Vec<Vec<(String, String)>> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.1 == "caracal.verify")
            .map(|s| s.2.clone())
            .collect()
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn one_span_per_verification_with_its_outcome_and_no_secret() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (sts, good, weak, forged) = rt.block_on(async {
        let sts = TestIssuer::start("zone-s").await.unwrap();
        let good = sts
            .mandate()
            .client_id("app-7")
            .jti("jti-never-logged")
            .delegation(2)
            .scopes(["tickets:read"])
            .sign();
        let weak = sts.mandate().scopes(["tickets:write"]).sign();
        let signed = sts.mandate().sign();
        let forged = format!("{}.{}", signed.rsplit_once('.').unwrap().0, "A".repeat(86));
        (sts, good, weak, forged)
    });
    let v = Verifier::builder()
        .issuer(sts.issuer_url())
        .audience("resource://api")
        .zone("zone-s")
        .build()
        .unwrap();
    let route = Requirements::new().scopes(["tickets:read"]);
    rt.block_on(async {
        v.verify(&good, &route).await.unwrap();
        v.verify(&good, &route).await.unwrap();
        v.verify(&good, &route).await.unwrap();
        v.verify(&weak, &route).await.unwrap_err();
        v.verify(&forged, &route).await.unwrap_err();
    });

    let spans = capture.verifications();
    assert_eq!(spans.len(), 5, "one span per verify()");
    let allow = &spans[0];
    assert_eq!(field(allow, "caracal.decision"), Some("allow"));
    assert_eq!(field(allow, "caracal.zone"), Some("zone-s"));
    assert_eq!(field(allow, "caracal.client_id"), Some("app-7"));
    assert_eq!(field(allow, "caracal.hop_count"), Some("2"));
    assert_eq!(field(allow, "caracal.cache_hit"), Some("false"));
    assert!(field(allow, "caracal.duration_us").is_some());
    assert_eq!(field(allow, "error.type"), None);
    // The doorkeeper admits the token on its second use; the third is a hit.
    assert_eq!(field(&spans[2], "caracal.cache_hit"), Some("true"));
    let scope = &spans[3];
    assert_eq!(field(scope, "caracal.decision"), Some("deny"));
    assert_eq!(field(scope, "error.type"), Some("scope_insufficient"));
    let sig = &spans[4];
    assert_eq!(field(sig, "error.type"), Some("invalid_token"));
    assert_eq!(field(sig, "caracal.reason"), Some("signature"));

    // No token, jti or signature in any span field or event.
    let everything = format!(
        "{:?} {:?}",
        capture
            .spans
            .lock()
            .unwrap()
            .iter()
            .map(|s| &s.2)
            .collect::<Vec<_>>(),
        capture.events.lock().unwrap()
    );
    for token in [&good, &weak, &forged] {
        let (rest, signature) = token.rsplit_once('.').unwrap();
        assert!(!everything.contains(token.as_str()));
        assert!(!everything.contains(signature));
        assert!(
            !everything.contains(rest.split('.').nth(1).unwrap()),
            "a payload"
        );
    }
    assert!(!everything.contains("jti-never-logged"));
}
