//! Zone keys and mandate minting: [`TestIssuer`], [`MandateBuilder`], [`ChainHop`].

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use tokio::task::AbortHandle;

use super::server::{self, JWKS_PATH, JwksFault, ServerState, read, write};
use crate::Clock;
use crate::SystemClock;
use crate::clock::SharedClock;

/// A fake Caracal STS for tests: per-zone P-256 signing keys, a loopback JWKS server
/// and a mandate minter.
///
/// Clones share the same keys and server. The server stops when the last clone is
/// dropped. Must be started inside a Tokio runtime; the server runs on that runtime,
/// so a `current_thread` test runtime serves requests only while the test awaits.
///
/// Kids are `"key-1"`, `"key-2"`, … in creation order, unique across all zones of one
/// issuer. Methods taking a `kid` panic when no key with that kid was ever created by
/// this issuer (removing a key only unpublishes it; it can still sign).
#[derive(Clone)]
pub struct TestIssuer {
    inner: Arc<Inner>,
}

struct Inner {
    zone: String,
    addr: SocketAddr,
    server: Arc<ServerState>,
    keys: RwLock<Keys>,
    clock: RwLock<SharedClock>,
    rng: SystemRandom,
    accept_loop: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// Every private key the issuer ever created, published or not.
struct Keys {
    by_kid: HashMap<String, Arc<KeyEntry>>,
    /// The default zone's signing kid.
    signing_kid: String,
    next_kid: u64,
}

struct KeyEntry {
    kid: String,
    pair: EcdsaKeyPair,
}

impl KeyEntry {
    fn generate(kid: String) -> io::Result<Self> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| io::Error::other("P-256 key generation failed"))?;
        Ok(Self { kid, pair })
    }

    /// `04 || X || Y`.
    fn public_uncompressed(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    fn jwk(&self) -> Value {
        // Skip the 0x04 tag; X and Y are the two 32-byte halves of the rest.
        let coordinates = self.public_uncompressed().get(1..).unwrap_or_default();
        let (x, y) = coordinates.split_at(coordinates.len() / 2);
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
            "kid": self.kid,
            "use": "sig",
            "alg": "ES256",
        })
    }
}

impl fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (signing_kid, mut kids) = {
            let keys = read(&self.inner.keys);
            let kids: Vec<String> = keys.by_kid.keys().cloned().collect();
            (keys.signing_kid.clone(), kids)
        };
        kids.sort_by_key(|kid| (kid.len(), kid.clone()));
        f.debug_struct("TestIssuer")
            .field("issuer_url", &self.issuer_url())
            .field("zone", &self.inner.zone)
            .field("zones", &self.inner.server.zone_names())
            .field("signing_kid", &signing_kid)
            .field("kids", &kids)
            .field("fault", &self.inner.server.fault())
            .field("jwks_requests", &self.jwks_requests())
            .finish_non_exhaustive()
    }
}

impl TestIssuer {
    /// Starts a JWKS server on `127.0.0.1:0` with one P-256 key (kid `"key-1"`) for
    /// `zone`, which becomes the default zone of [`mandate`](Self::mandate).
    ///
    /// # Errors
    ///
    /// When the loopback listener cannot be bound (or, in theory, key generation fails).
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime.
    pub async fn start(zone: impl Into<String>) -> io::Result<TestIssuer> {
        let zone = zone.into();
        let first = KeyEntry::generate("key-1".to_owned())?;
        let server = Arc::new(ServerState::default());
        server.publish(&zone, first.jwk());
        let (addr, accept_loop) = server::spawn(Arc::clone(&server)).await?;
        let keys = Keys {
            signing_kid: first.kid.clone(),
            by_kid: HashMap::from([(first.kid.clone(), Arc::new(first))]),
            next_kid: 2,
        };
        Ok(TestIssuer {
            inner: Arc::new(Inner {
                zone,
                addr,
                server,
                keys: RwLock::new(keys),
                clock: RwLock::new(Arc::new(SystemClock)),
                rng: SystemRandom::new(),
                accept_loop,
            }),
        })
    }

    /// The issuer URL, `http://127.0.0.1:PORT` (no trailing slash). This is the
    /// default `iss` claim.
    pub fn issuer_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The server's bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The default zone (the one given to [`start`](Self::start)).
    pub fn zone(&self) -> String {
        self.inner.zone.clone()
    }

    /// The JWKS URL of `zone`:
    /// `{issuer_url}/.well-known/jwks.json?zone_id={zone}`, with every byte of the zone
    /// outside the RFC 3986 unreserved set percent-encoded.
    pub fn jwks_url(&self, zone: &str) -> String {
        format!(
            "{}{JWKS_PATH}?zone_id={}",
            self.issuer_url(),
            server::percent_encode(zone)
        )
    }

    /// How many HTTP requests the server has received so far, on any path, including
    /// requests answered with a fault.
    pub fn jwks_requests(&self) -> usize {
        self.inner.server.requests()
    }

    /// Sets the time source for the default `iat`/`exp` of later
    /// [`mandate`](Self::mandate) builders. The default is [`SystemClock`]; pass a clone
    /// of the verifier's [`ManualClock`](crate::ManualClock) to keep both in step.
    pub fn set_clock(&self, clock: impl Clock) {
        *write(&self.inner.clock) = Arc::new(clock);
    }

    /// Creates a fresh key published for `zone` (creating the zone when it is new) and
    /// returns its kid. The default zone's signing key is unchanged; to sign a mandate
    /// with the new key use [`MandateBuilder::kid`], e.g.
    /// `issuer.mandate().zone("zone-2").kid(&kid)`.
    pub fn add_zone(&self, zone: impl Into<String>) -> String {
        let zone = zone.into();
        self.new_key(&zone)
    }

    /// Creates a fresh key in the default zone and makes it the signing key of later
    /// [`mandate`](Self::mandate) builders. Older keys stay published. Returns the new kid.
    pub fn rotate_key(&self) -> String {
        let kid = self.new_key(&self.inner.zone);
        write(&self.inner.keys).signing_kid = kid.clone();
        kid
    }

    /// Unpublishes every JWK with this kid, from whichever zone holds it (including
    /// keys added with [`publish_raw_key`](Self::publish_raw_key)). A generated key can
    /// still sign, via [`MandateBuilder::kid`] or [`sign_compact`](Self::sign_compact).
    /// Unknown kids are ignored.
    pub fn remove_key(&self, kid: &str) {
        self.inner.server.unpublish(kid);
    }

    /// Appends an arbitrary JSON value to `zone`'s published `"keys"` array, creating the
    /// zone when it is new. Nothing is validated: this is for malformed-key tests.
    pub fn publish_raw_key(&self, zone: &str, jwk: Value) {
        self.inner.server.publish(zone, jwk);
    }

    /// The JWK published for a generated key:
    /// `{"kty":"EC","crv":"P-256","x","y","kid","use":"sig","alg":"ES256"}`.
    ///
    /// # Panics
    ///
    /// When this issuer never generated `kid`.
    pub fn public_jwk(&self, kid: &str) -> Value {
        self.key(kid).jwk()
    }

    /// The uncompressed SEC1 public key of a generated key: 65 bytes, `04 || X || Y`.
    ///
    /// # Panics
    ///
    /// When this issuer never generated `kid`.
    pub fn public_key_uncompressed(&self, kid: &str) -> Vec<u8> {
        self.key(kid).public_uncompressed().to_vec()
    }

    /// Sets how the server answers JWKS requests; `None` restores normal answers.
    pub fn set_fault(&self, fault: Option<JwksFault>) {
        self.inner.server.set_fault(fault);
    }

    /// A [`MandateBuilder`] with valid defaults for the default zone, signed by the
    /// current [`signing_kid`](Self::signing_kid); `iat` is read from the clock now.
    pub fn mandate(&self) -> MandateBuilder {
        MandateBuilder::new(self.clone())
    }

    /// A compact JWS over exactly these bytes:
    /// `base64url(header_json) "." base64url(payload_json) "." base64url(signature)`,
    /// signed (ES256) with `kid`'s private key. Neither input is parsed or checked.
    ///
    /// # Panics
    ///
    /// When this issuer never generated `kid`.
    pub fn sign_compact(&self, kid: &str, header_json: &[u8], payload_json: &[u8]) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header_json),
            URL_SAFE_NO_PAD.encode(payload_json)
        );
        let signature = self.sign_bytes(kid, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// A raw ES256 signature (fixed-width `r || s`) of `message` with `kid`'s key.
    ///
    /// # Panics
    ///
    /// When this issuer never generated `kid`.
    pub fn sign_bytes(&self, kid: &str, message: &[u8]) -> [u8; 64] {
        let key = self.key(kid);
        let signature = key
            .pair
            .sign(&self.inner.rng, message)
            .expect("ECDSA P-256 signing with a valid key does not fail");
        <[u8; 64]>::try_from(signature.as_ref()).expect("a fixed-width P-256 signature is 64 bytes")
    }

    /// The kid [`mandate`](Self::mandate) signs with by default (the default zone's
    /// newest key from [`start`](Self::start) or [`rotate_key`](Self::rotate_key)).
    pub fn signing_kid(&self) -> String {
        read(&self.inner.keys).signing_kid.clone()
    }

    fn key(&self, kid: &str) -> Arc<KeyEntry> {
        let key = read(&self.inner.keys).by_kid.get(kid).cloned();
        key.unwrap_or_else(|| panic!("TestIssuer: no key with kid {kid:?} was generated"))
    }

    fn new_key(&self, zone: &str) -> String {
        let kid = {
            let mut keys = write(&self.inner.keys);
            let kid = format!("key-{}", keys.next_kid);
            keys.next_kid += 1;
            kid
        };
        let entry = KeyEntry::generate(kid.clone()).expect("P-256 key generation does not fail");
        let jwk = entry.jwk();
        write(&self.inner.keys)
            .by_kid
            .insert(kid.clone(), Arc::new(entry));
        self.inner.server.publish(zone, jwk);
        kid
    }

    fn now_secs(&self) -> u64 {
        read(&self.inner.clock).now().as_secs()
    }
}

/// One entry of a delegation chain (the `delegation_chain` claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHop {
    /// The application of this hop (`application_id`).
    pub application_id: String,
    /// The governed session of this hop (`agent_session_id`), omitted when `None`.
    pub agent_session_id: Option<String>,
    /// The delegation edge leaving this hop (`delegation_edge_id`), omitted when `None`.
    pub delegation_edge_id: Option<String>,
}

impl ChainHop {
    fn to_json(&self) -> Value {
        let mut hop = Map::new();
        hop.insert("application_id".into(), json!(self.application_id));
        if let Some(session) = &self.agent_session_id {
            hop.insert("agent_session_id".into(), json!(session));
        }
        if let Some(edge) = &self.delegation_edge_id {
            hop.insert("delegation_edge_id".into(), json!(edge));
        }
        Value::Object(hop)
    }
}

/// Claims that [`MandateBuilder::delegation`] computes when the mandate is signed.
const DELEGATION_CLAIMS: [&str; 7] = [
    "delegation_chain",
    "delegation_edge_id",
    "delegation_path",
    "hop_count",
    "source_session_id",
    "target_session_id",
    "agent_session_id",
];

/// Builds and signs one mandate. Created by [`TestIssuer::mandate`].
///
/// Defaults (a valid `use=resource` mandate): `iss` = issuer URL, `sub` = `"user-1"`,
/// `aud` = `"resource://api"`, `zone_id` = the issuer's default zone, `client_id` =
/// `"app-1"`, `sid` = `"sid-<unique>"`, `root_sid` = `"root-<unique>"`, `jti` = a fresh
/// random UUID, `use` = `"resource"`, `sub_type` = `"user"`, `iat` = the issuer clock's
/// now (whole seconds), `exp` = `iat + 300`, no `scope`; header
/// `{"alg":"ES256","typ":"JWT","kid":<signing kid>}`.
///
/// Later calls win: a typed setter, [`claim`](Self::claim) or
/// [`remove_claim`](Self::remove_claim) for the same name replace one another in call
/// order. Calls are cheap; nothing is signed until [`sign`](Self::sign).
#[derive(Clone)]
pub struct MandateBuilder {
    issuer: TestIssuer,
    header: Map<String, Value>,
    claims: Map<String, Value>,
    signing_kid: String,
    /// The clock reading when the builder was created (fallback `iat` for `ttl`).
    now: u64,
    /// When set, `exp` is `iat + ttl` at signing time.
    ttl: Option<u64>,
    /// Requested delegation depth, resolved at signing time.
    delegation: Option<usize>,
    /// Claims set explicitly since the last `delegation` call; those are left alone.
    pinned: BTreeSet<String>,
}

impl fmt::Debug for MandateBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MandateBuilder")
            .field("issuer_url", &self.issuer.issuer_url())
            .field("signing_kid", &self.signing_kid)
            .field("header", &self.header)
            .field("claims", &self.claims())
            .finish_non_exhaustive()
    }
}

impl MandateBuilder {
    fn new(issuer: TestIssuer) -> Self {
        let now = issuer.now_secs();
        let signing_kid = issuer.signing_kid();
        let uniq = random_uuid();
        let mut claims = Map::new();
        for (name, value) in [
            ("iss", json!(issuer.issuer_url())),
            ("sub", json!("user-1")),
            ("aud", json!("resource://api")),
            ("zone_id", json!(issuer.inner.zone)),
            ("client_id", json!("app-1")),
            ("sid", json!(format!("sid-{uniq}"))),
            ("root_sid", json!(format!("root-{uniq}"))),
            ("jti", json!(uniq)),
            ("use", json!("resource")),
            ("sub_type", json!("user")),
            ("iat", json!(now)),
            ("exp", json!(now.saturating_add(300))),
        ] {
            claims.insert(name.to_owned(), value);
        }
        let mut header = Map::new();
        header.insert("alg".into(), json!("ES256"));
        header.insert("typ".into(), json!("JWT"));
        header.insert("kid".into(), json!(signing_kid));
        Self {
            issuer,
            header,
            claims,
            signing_kid,
            now,
            ttl: Some(300),
            delegation: None,
            pinned: BTreeSet::new(),
        }
    }

    fn set(mut self, name: &str, value: Value) -> Self {
        if name == "exp" {
            self.ttl = None;
        }
        self.claims.insert(name.to_owned(), value);
        self.pinned.insert(name.to_owned());
        self
    }

    /// Sets `sub`.
    pub fn subject(self, subject: impl Into<String>) -> Self {
        self.set("sub", json!(subject.into()))
    }

    /// Sets `aud` (a single string; use [`claim`](Self::claim) for an array).
    pub fn audience(self, audience: impl Into<String>) -> Self {
        self.set("aud", json!(audience.into()))
    }

    /// Sets `client_id` (also the last hop's `application_id` under
    /// [`delegation`](Self::delegation)).
    pub fn client_id(self, client_id: impl Into<String>) -> Self {
        self.set("client_id", json!(client_id.into()))
    }

    /// Sets `sid`.
    pub fn sid(self, sid: impl Into<String>) -> Self {
        self.set("sid", json!(sid.into()))
    }

    /// Sets `root_sid`.
    pub fn root_sid(self, root_sid: impl Into<String>) -> Self {
        self.set("root_sid", json!(root_sid.into()))
    }

    /// Sets `jti`.
    pub fn jti(self, jti: impl Into<String>) -> Self {
        self.set("jti", json!(jti.into()))
    }

    /// Sets the `zone_id` claim only; the header kid and signing key are unchanged
    /// (see [`kid`](Self::kid)).
    pub fn zone(self, zone: impl Into<String>) -> Self {
        self.set("zone_id", json!(zone.into()))
    }

    /// Sets `scope` to the scopes joined with single spaces; no scopes removes the claim.
    pub fn scopes<I, S>(self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        if scopes.is_empty() {
            self.remove_claim("scope")
        } else {
            self.set("scope", json!(scopes.join(" ")))
        }
    }

    /// Sets the `target` array.
    pub fn targets<I, S>(self, targets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let targets: Vec<String> = targets.into_iter().map(Into::into).collect();
        self.set("target", json!(targets))
    }

    /// Sets `agent_session_id` (also the last hop's session and `target_session_id`
    /// under [`delegation`](Self::delegation)).
    pub fn agent_session(self, id: impl Into<String>) -> Self {
        self.set("agent_session_id", json!(id.into()))
    }

    /// Makes this a mandate at the end of an `hops`-edge delegation chain, shaped like
    /// the contract fixture:
    ///
    /// - `delegation_chain` has `hops + 1` entries; entry `i < hops` is
    ///   `{"application_id":"app-hop-{i}","agent_session_id":"session-hop-{i}","delegation_edge_id":"edge-{i+1}"}`,
    ///   the last is `{"application_id":<client_id>,"agent_session_id":<agent_session_id>}`;
    /// - `agent_session_id` defaults to `"session-hop-{hops}"` when not set;
    /// - `delegation_edge_id` = `"edge-{hops}"`, `delegation_path` =
    ///   `["edge-1", …, "edge-{hops}"]`, `hop_count` = `hops`,
    ///   `source_session_id` = `"session-hop-{hops-1}"`, `target_session_id` = the agent
    ///   session.
    ///
    /// These are computed when the mandate is signed, so `client_id` and
    /// `agent_session` may be set before or after. Any of these claims set explicitly
    /// after this call ([`chain`](Self::chain), [`hop_count`](Self::hop_count),
    /// [`claim`](Self::claim), [`remove_claim`](Self::remove_claim)) is left as set.
    /// `delegation(0)` cancels a previous `delegation` call.
    pub fn delegation(mut self, hops: usize) -> Self {
        self.delegation = (hops > 0).then_some(hops);
        for name in DELEGATION_CLAIMS {
            self.pinned.remove(name);
        }
        self
    }

    /// Sets `delegation_chain` to exactly these hops; no other claim is changed.
    pub fn chain(self, hops: Vec<ChainHop>) -> Self {
        let hops: Vec<Value> = hops.iter().map(ChainHop::to_json).collect();
        self.set("delegation_chain", Value::Array(hops))
    }

    /// Sets `delegation_path` (delegation edge ids from the root) to exactly these
    /// edges; no other claim is changed.
    pub fn delegation_path<I, S>(self, edges: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let edges: Vec<String> = edges.into_iter().map(Into::into).collect();
        self.set("delegation_path", json!(edges))
    }

    /// Sets `source_session_id` (the delegating parent session); no other claim is
    /// changed.
    pub fn source_session(self, id: impl Into<String>) -> Self {
        self.set("source_session_id", json!(id.into()))
    }

    /// Sets `hop_count`.
    pub fn hop_count(self, n: u64) -> Self {
        self.set("hop_count", json!(n))
    }

    /// Sets `delegation_graph_epoch`.
    pub fn epoch(self, n: u64) -> Self {
        self.set("delegation_graph_epoch", json!(n))
    }

    /// Sets `iat` (seconds since the Unix epoch). Unless `exp` was set explicitly,
    /// `exp` follows as `iat + ttl` (300 s by default).
    pub fn issued_at(self, secs: u64) -> Self {
        self.set("iat", json!(secs))
    }

    /// Sets `exp` (seconds since the Unix epoch), replacing any [`ttl`](Self::ttl).
    pub fn expires_at(self, secs: u64) -> Self {
        self.set("exp", json!(secs))
    }

    /// Sets `nbf` (seconds since the Unix epoch).
    pub fn not_before(self, secs: u64) -> Self {
        self.set("nbf", json!(secs))
    }

    /// Sets `exp` to `iat + secs` (using the final `iat`).
    pub fn ttl(mut self, secs: u64) -> Self {
        self.ttl = Some(secs);
        self
    }

    /// Sets (or overrides) any claim to any JSON value.
    pub fn claim(self, name: &str, value: Value) -> Self {
        self.set(name, value)
    }

    /// Removes a claim (default or set), so the mandate is signed without it.
    pub fn remove_claim(mut self, name: &str) -> Self {
        if name == "exp" {
            self.ttl = None;
        }
        self.claims.remove(name);
        self.pinned.insert(name.to_owned());
        self
    }

    /// Sets (or overrides) a JOSE header parameter. Setting `kid` here does not change
    /// the signing key (see [`kid`](Self::kid)).
    pub fn header(mut self, name: &str, value: Value) -> Self {
        self.header.insert(name.to_owned(), value);
        self
    }

    /// Removes a JOSE header parameter. Removing `kid` does not change the signing key.
    pub fn remove_header(mut self, name: &str) -> Self {
        self.header.remove(name);
        self
    }

    /// Sets the header `kid` and signs with that kid's key (any zone's, published or
    /// not). [`sign`](Self::sign) panics if the issuer never generated it; to put an
    /// unknown kid in the header use [`header`](Self::header).
    pub fn kid(mut self, kid: &str) -> Self {
        self.header.insert("kid".to_owned(), json!(kid));
        self.signing_key(kid)
    }

    /// Signs with `kid`'s key but leaves the header `kid` as it is (e.g. a token whose
    /// header names the zone key but which is signed by another zone's key).
    pub fn signing_key(mut self, kid: &str) -> Self {
        kid.clone_into(&mut self.signing_kid);
        self
    }

    /// The payload exactly as [`sign`](Self::sign) would sign it.
    pub fn claims(&self) -> Value {
        let mut claims = self.claims.clone();
        if let Some(ttl) = self.ttl {
            let iat = claims
                .get("iat")
                .and_then(Value::as_u64)
                .unwrap_or(self.now);
            claims.insert("exp".to_owned(), json!(iat.saturating_add(ttl)));
        }
        if let Some(hops) = self.delegation {
            self.resolve_delegation(hops, &mut claims);
        }
        Value::Object(claims)
    }

    /// The compact JWS: serde_json serializations of the header and
    /// [`claims`](Self::claims), signed with the signing key.
    ///
    /// # Panics
    ///
    /// When the signing kid (see [`kid`](Self::kid)) was never generated by the issuer.
    pub fn sign(self) -> String {
        let header = serde_json::to_vec(&self.header).expect("a JSON map always serializes");
        let claims = serde_json::to_vec(&self.claims()).expect("a JSON map always serializes");
        self.issuer
            .sign_compact(&self.signing_kid, &header, &claims)
    }

    fn resolve_delegation(&self, hops: usize, claims: &mut Map<String, Value>) {
        let free = |name: &str| !self.pinned.contains(name);
        let client = claims
            .get("client_id")
            .and_then(Value::as_str)
            .map_or_else(|| format!("app-hop-{hops}"), str::to_owned);
        if free("agent_session_id") && !claims.contains_key("agent_session_id") {
            claims.insert(
                "agent_session_id".to_owned(),
                json!(format!("session-hop-{hops}")),
            );
        }
        let agent = claims
            .get("agent_session_id")
            .and_then(Value::as_str)
            .map(str::to_owned);

        let mut chain: Vec<ChainHop> = (0..hops)
            .map(|i| ChainHop {
                application_id: format!("app-hop-{i}"),
                agent_session_id: Some(format!("session-hop-{i}")),
                delegation_edge_id: Some(format!("edge-{}", i + 1)),
            })
            .collect();
        chain.push(ChainHop {
            application_id: client,
            agent_session_id: agent.clone(),
            delegation_edge_id: None,
        });
        let path: Vec<String> = (1..=hops).map(|i| format!("edge-{i}")).collect();

        let mut computed = vec![
            (
                "delegation_chain",
                Value::Array(chain.iter().map(ChainHop::to_json).collect()),
            ),
            ("delegation_edge_id", json!(format!("edge-{hops}"))),
            ("delegation_path", json!(path)),
            ("hop_count", json!(hops)),
            (
                "source_session_id",
                json!(format!("session-hop-{}", hops - 1)),
            ),
        ];
        if let Some(agent) = agent {
            computed.push(("target_session_id", json!(agent)));
        }
        for (name, value) in computed {
            if free(name) {
                claims.insert(name.to_owned(), value);
            }
        }
    }
}

/// A random (version 4) UUID string.
fn random_uuid() -> String {
    let mut bytes = [0_u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator does not fail");
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::ManualClock;

    struct RawResponse {
        status: u16,
        head: String,
        body: Vec<u8>,
    }

    impl RawResponse {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().skip(1).find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name).then(|| value.trim())
            })
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("JSON body")
        }
    }

    /// A raw HTTP/1.1 GET of `path_and_query`, reading until the server closes.
    async fn get(issuer: &TestIssuer, path_and_query: &str) -> RawResponse {
        let mut stream = TcpStream::connect(issuer.addr()).await.expect("connect");
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            issuer.addr()
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of head");
        let head = String::from_utf8(raw[..split].to_vec()).expect("ASCII head");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let mut response = RawResponse {
            status,
            head,
            body: raw[split + 4..].to_vec(),
        };
        if response
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            response.body = dechunk(&response.body);
        }
        response
    }

    fn dechunk(mut raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let line_end = raw.windows(2).position(|w| w == b"\r\n").expect("size");
            let size = std::str::from_utf8(&raw[..line_end]).expect("hex");
            let size = usize::from_str_radix(size.trim(), 16).expect("hex size");
            raw = &raw[line_end + 2..];
            if size == 0 {
                return out;
            }
            out.extend_from_slice(&raw[..size]);
            raw = &raw[size + 2..];
        }
    }

    async fn get_jwks(issuer: &TestIssuer, zone: &str) -> RawResponse {
        let url = issuer.jwks_url(zone);
        let path = url.strip_prefix(&issuer.issuer_url()).expect("same origin");
        get(issuer, path).await
    }

    fn decode(segment: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(segment).expect("base64url")
    }

    fn verify(issuer: &TestIssuer, kid: &str, token: &str) -> bool {
        let (signing_input, signature) = token.rsplit_once('.').expect("three segments");
        let public_key = issuer.public_key_uncompressed(kid);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key)
            .verify(signing_input.as_bytes(), &decode(signature))
            .is_ok()
    }

    fn parts(token: &str) -> (Value, Value) {
        let segments: Vec<&str> = token.split('.').collect();
        assert_eq!(segments.len(), 3);
        (
            serde_json::from_slice(&decode(segments[0])).expect("header JSON"),
            serde_json::from_slice(&decode(segments[1])).expect("payload JSON"),
        )
    }

    #[tokio::test]
    async fn jwks_publishes_the_signing_key() {
        let issuer = TestIssuer::start("zone-1").await.expect("start");
        assert_eq!(issuer.signing_kid(), "key-1");
        assert_eq!(
            issuer.jwks_url("zone-1"),
            format!(
                "{}/.well-known/jwks.json?zone_id=zone-1",
                issuer.issuer_url()
            )
        );

        let response = get_jwks(&issuer, "zone-1").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.header("cache-control"), Some("max-age=300"));
        let jwks = response.json();
        let keys = jwks["keys"].as_array().expect("keys array");
        assert_eq!(keys.len(), 1);
        let jwk = &keys[0];
        assert_eq!(jwk, &issuer.public_jwk("key-1"));
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["kid"], "key-1");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "ES256");

        let x = decode(jwk["x"].as_str().expect("x"));
        let y = decode(jwk["y"].as_str().expect("y"));
        assert_eq!((x.len(), y.len()), (32, 32));
        let point = issuer.public_key_uncompressed("key-1");
        assert_eq!(point.len(), 65);
        assert_eq!(point[0], 0x04);
        assert_eq!(&point[1..33], &x[..]);
        assert_eq!(&point[33..], &y[..]);

        assert_eq!(get_jwks(&issuer, "zone-unknown").await.status, 404);
        assert_eq!(get(&issuer, "/.well-known/jwks.json").await.status, 400);
        assert_eq!(get(&issuer, "/other").await.status, 404);
    }

    #[tokio::test]
    async fn minted_mandate_verifies_and_has_the_defaults() {
        let issuer = TestIssuer::start("zone-1").await.expect("start");
        let clock = ManualClock::new(Duration::from_secs(1_790_000_000));
        issuer.set_clock(clock.clone());

        let token = issuer.mandate().scopes(["read", "write"]).sign();
        assert!(verify(&issuer, "key-1", &token));
        let (header, claims) = parts(&token);
        assert_eq!(
            header,
            json!({"alg": "ES256", "typ": "JWT", "kid": "key-1"})
        );
        assert_eq!(claims["iss"], json!(issuer.issuer_url()));
        assert_eq!(claims["sub"], "user-1");
        assert_eq!(claims["aud"], "resource://api");
        assert_eq!(claims["zone_id"], "zone-1");
        assert_eq!(claims["client_id"], "app-1");
        assert_eq!(claims["use"], "resource");
        assert_eq!(claims["sub_type"], "user");
        assert_eq!(claims["scope"], "read write");
        assert_eq!(claims["iat"], 1_790_000_000_u64);
        assert_eq!(claims["exp"], 1_790_000_300_u64);
        assert!(claims["sid"].as_str().expect("sid").starts_with("sid-"));
        assert!(
            claims["root_sid"]
                .as_str()
                .expect("root")
                .starts_with("root-")
        );
        assert!(claims.get("delegation_chain").is_none());

        // Builders get distinct jtis; no scopes means no `scope` claim.
        let other = issuer.mandate().claims();
        assert_ne!(other["jti"], claims["jti"]);
        assert_ne!(other["sid"], claims["sid"]);
        assert!(other.get("scope").is_none());

        // Tampering breaks the signature; another key does not verify.
        let (input, signature) = token.rsplit_once('.').expect("segments");
        let tampered = format!("{input}x.{signature}");
        assert!(!verify(&issuer, "key-1", &tampered));
        let kid2 = issuer.rotate_key();
        assert!(!verify(&issuer, &kid2, &token));
    }

    #[tokio::test]
    async fn builder_overrides_and_times() {
        let issuer = TestIssuer::start("zone-1").await.expect("start");
        let claims = issuer
            .mandate()
            .issued_at(1_000)
            .ttl(60)
            .not_before(990)
            .claim("aud", json!(["a", "b"]))
            .remove_claim("sub_type")
            .targets(["resource://api"])
            .epoch(7)
            .claims();
        assert_eq!(claims["iat"], 1_000);
        assert_eq!(claims["exp"], 1_060);
        assert_eq!(claims["nbf"], 990);
        assert_eq!(claims["aud"], json!(["a", "b"]));
        assert!(claims.get("sub_type").is_none());
        assert_eq!(claims["target"], json!(["resource://api"]));
        assert_eq!(claims["delegation_graph_epoch"], 7);

        let claims = issuer.mandate().issued_at(1_000).claims();
        assert_eq!(claims["exp"], 1_300, "exp follows iat by default");
        let claims = issuer.mandate().expires_at(5).issued_at(1_000).claims();
        assert_eq!(claims["exp"], 5, "an explicit exp is kept");
        let claims = issuer.mandate().ttl(10).remove_claim("exp").claims();
        assert!(claims.get("exp").is_none());

        let token = issuer
            .mandate()
            .header("typ", json!("at+jwt"))
            .remove_header("kid")
            .sign();
        let (header, _) = parts(&token);
        assert_eq!(header, json!({"alg": "ES256", "typ": "at+jwt"}));
        assert!(verify(&issuer, "key-1", &token));
    }

    #[tokio::test]
    async fn delegation_builds_the_fixture_shaped_chain() {
        let issuer = TestIssuer::start("zone-1").await.expect("start");
        let claims = issuer.mandate().delegation(2).claims();
        assert_eq!(
            claims["delegation_chain"],
            json!([
                {"application_id": "app-hop-0", "agent_session_id": "session-hop-0", "delegation_edge_id": "edge-1"},
                {"application_id": "app-hop-1", "agent_session_id": "session-hop-1", "delegation_edge_id": "edge-2"},
                {"application_id": "app-1", "agent_session_id": "session-hop-2"},
            ])
        );
        assert_eq!(claims["agent_session_id"], "session-hop-2");
        assert_eq!(claims["delegation_edge_id"], "edge-2");
        assert_eq!(claims["delegation_path"], json!(["edge-1", "edge-2"]));
        assert_eq!(claims["hop_count"], 2);
        assert_eq!(claims["source_session_id"], "session-hop-1");
        assert_eq!(claims["target_session_id"], "session-hop-2");

        // client_id and agent_session set afterwards stay consistent.
        let claims = issuer
            .mandate()
            .delegation(1)
            .client_id("app-child")
            .agent_session("session-child")
            .claims();
        let chain = claims["delegation_chain"].as_array().expect("chain");
        assert_eq!(chain.len(), 2);
        assert_eq!(
            chain[1],
            json!({"application_id": "app-child", "agent_session_id": "session-child"})
        );
        assert_eq!(claims["target_session_id"], "session-child");
        assert_eq!(claims["source_session_id"], "session-hop-0");

        // Explicit overrides after delegation() win.
        let hop = ChainHop {
            application_id: "only".into(),
            agent_session_id: None,
            delegation_edge_id: Some("e".into()),
        };
        let claims = issuer
            .mandate()
            .delegation(3)
            .chain(vec![hop])
            .hop_count(9)
            .remove_claim("delegation_path")
            .claims();
        assert_eq!(
            claims["delegation_chain"],
            json!([{"application_id": "only", "delegation_edge_id": "e"}])
        );
        assert_eq!(claims["hop_count"], 9);
        assert!(claims.get("delegation_path").is_none());
        assert_eq!(claims["delegation_edge_id"], "edge-3");

        // chain() alone changes nothing else.
        let claims = issuer.mandate().chain(vec![]).claims();
        assert_eq!(claims["delegation_chain"], json!([]));
        assert!(claims.get("hop_count").is_none());

        let token = issuer.mandate().delegation(2).sign();
        assert!(verify(&issuer, "key-1", &token));
    }

    #[tokio::test]
    async fn zones_rotation_and_removal() {
        let issuer = TestIssuer::start("zone-1").await.expect("start");
        let kid2 = issuer.rotate_key();
        assert_eq!(kid2, "key-2");
        assert_eq!(issuer.signing_kid(), "key-2");
        let kids = |jwks: Value| -> Vec<String> {
            jwks["keys"]
                .as_array()
                .expect("keys")
                .iter()
                .map(|k| k["kid"].as_str().expect("kid").to_owned())
                .collect()
        };
        assert_eq!(
            kids(get_jwks(&issuer, "zone-1").await.json()),
            ["key-1", "key-2"]
        );
        let token = issuer.mandate().sign();
        assert_eq!(parts(&token).0["kid"], "key-2");
        assert!(verify(&issuer, "key-2", &token));

        let kid3 = issuer.add_zone("zone 2/β");
        assert_eq!(kid3, "key-3");
        assert_eq!(issuer.signing_kid(), "key-2");
        assert!(
            issuer
                .jwks_url("zone 2/β")
                .ends_with("zone_id=zone%202%2F%CE%B2")
        );
        assert_eq!(kids(get_jwks(&issuer, "zone 2/β").await.json()), ["key-3"]);

        // Signed by another zone's key while the header still names key-2.
        let token = issuer.mandate().signing_key(&kid3).sign();
        assert_eq!(parts(&token).0["kid"], "key-2");
        assert!(verify(&issuer, &kid3, &token));
        let token = issuer.mandate().zone("zone 2/β").kid(&kid3).sign();
        let (header, claims) = parts(&token);
        assert_eq!(header["kid"], "key-3");
        assert_eq!(claims["zone_id"], "zone 2/β");

        issuer.remove_key("key-1");
        assert_eq!(kids(get_jwks(&issuer, "zone-1").await.json()), ["key-2"]);
        // A removed key still signs.
        let token = issuer.mandate().kid("key-1").sign();
        assert!(verify(&issuer, "key-1", &token));

        issuer.publish_raw_key("zone-1", json!({"kty": "RSA", "kid": "raw"}));
        issuer.publish_raw_key("zone-3", json!("not an object"));
        let jwks = get_jwks(&issuer, "zone-1").await.json();
        assert_eq!(jwks["keys"][1], json!({"kty": "RSA", "kid": "raw"}));
        let jwks = get_jwks(&issuer, "zone-3").await.json();
        assert_eq!(jwks, json!({"keys": ["not an object"]}));
        issuer.remove_key("raw");
        assert_eq!(kids(get_jwks(&issuer, "zone-1").await.json()), ["key-2"]);

        issuer.remove_key("key-2");
        assert_eq!(
            get_jwks(&issuer, "zone-1").await.json(),
            json!({"keys": []})
        );
    }

    #[tokio::test]
    async fn sign_compact_signs_exact_bytes() {
        let issuer = TestIssuer::start("zone-1").await.expect("start");
        let token = issuer.sign_compact("key-1", b"{\"alg\":\"ES256\" }", b"not json");
        let segments: Vec<&str> = token.split('.').collect();
        assert_eq!(decode(segments[0]), b"{\"alg\":\"ES256\" }");
        assert_eq!(decode(segments[1]), b"not json");
        assert!(verify(&issuer, "key-1", &token));

        let signature = issuer.sign_bytes("key-1", b"message");
        assert!(
            UnparsedPublicKey::new(
                &ECDSA_P256_SHA256_FIXED,
                issuer.public_key_uncompressed("key-1")
            )
            .verify(b"message", &signature)
            .is_ok()
        );
    }

    #[tokio::test]
    async fn counts_requests() {
        let issuer = TestIssuer::start("zone-1").await.expect("start");
        assert_eq!(issuer.jwks_requests(), 0);
        get_jwks(&issuer, "zone-1").await;
        assert_eq!(issuer.jwks_requests(), 1);
        get(&issuer, "/nope").await;
        get_jwks(&issuer, "zone-x").await;
        let clone = issuer.clone();
        assert_eq!(clone.jwks_requests(), 3);
        issuer.set_fault(Some(JwksFault::Status(503)));
        get_jwks(&issuer, "zone-1").await;
        assert_eq!(issuer.jwks_requests(), 4);
    }

    #[tokio::test]
    async fn faults() {
        let issuer = TestIssuer::start("zone-1").await.expect("start");

        issuer.set_fault(Some(JwksFault::Status(503)));
        let response = get_jwks(&issuer, "zone-1").await;
        assert_eq!(response.status, 503);
        assert!(response.body.is_empty());
        // Other paths are unaffected by faults.
        assert_eq!(get(&issuer, "/other").await.status, 404);

        issuer.set_fault(Some(JwksFault::Body(b"{\"keys\":".to_vec())));
        let response = get_jwks(&issuer, "zone-1").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.body, b"{\"keys\":");

        issuer.set_fault(Some(JwksFault::Redirect("http://elsewhere/".into())));
        let response = get_jwks(&issuer, "zone-1").await;
        assert_eq!(response.status, 302);
        assert_eq!(response.header("location"), Some("http://elsewhere/"));

        issuer.set_fault(Some(JwksFault::Huge(100_000)));
        let response = get_jwks(&issuer, "zone-1").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("transfer-encoding"), Some("chunked"));
        assert_eq!(response.body.len(), 100_000);
        assert_eq!(response.body[0], b'[');
        assert!(response.body[1..].iter().all(|&b| b == b' '));

        issuer.set_fault(Some(JwksFault::Trickle(Duration::from_millis(1))));
        let response = get_jwks(&issuer, "zone-1").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.json()["keys"][0]["kid"], "key-1");

        issuer.set_fault(Some(JwksFault::Delay(Duration::from_millis(50))));
        let started = std::time::Instant::now();
        let response = get_jwks(&issuer, "zone-1").await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(response.json()["keys"][0]["kid"], "key-1");

        issuer.set_fault(Some(JwksFault::Hang));
        let hung = tokio::time::timeout(Duration::from_millis(200), get_jwks(&issuer, "zone-1"));
        assert!(hung.await.is_err(), "a hung request never completes");

        issuer.set_fault(None);
        assert_eq!(get_jwks(&issuer, "zone-1").await.status, 200);
    }

    #[tokio::test]
    async fn server_stops_when_last_clone_drops() {
        let issuer = TestIssuer::start("zone-1").await.expect("start");
        let addr = issuer.addr();
        let clone = issuer.clone();
        drop(issuer);
        assert_eq!(get_jwks(&clone, "zone-1").await.status, 200);
        drop(clone);
        // Let the aborted accept loop be dropped (which closes the listener).
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn debug_never_prints_key_material() {
        let issuer = TestIssuer::start("zone-1").await.expect("start");
        let debug = format!("{issuer:?} {:?}", issuer.mandate());
        assert!(debug.contains("key-1"));
        assert!(!debug.contains("EcdsaKeyPair"));
        let x = issuer.public_jwk("key-1")["x"]
            .as_str()
            .expect("x")
            .to_owned();
        assert!(!debug.contains(&x));
    }

    #[tokio::test]
    #[should_panic(expected = "no key with kid")]
    async fn unknown_kid_panics() {
        let issuer = TestIssuer::start("zone-1").await.expect("start");
        let _ = issuer.mandate().kid("key-99").sign();
    }
}
