//! The builder's settings from the environment.

use std::time::Duration;

use super::VerifierBuilder;
use crate::error::{CodeSpelling, ConfigError};

/// Variables that configure the Redis revocation feed: set in a build without the
/// `redis` feature, they are refused rather than ignored.
#[cfg(not(feature = "redis"))]
const REDIS_VARS: [&str; 10] = [
    "CARACAL_REDIS_URL",
    "CARACAL_REDIS_URL_FILE",
    "CARACAL_REDIS_TLS_CA_FILE",
    "CARACAL_REDIS_TLS_CERT_FILE",
    "CARACAL_REDIS_TLS_KEY_FILE",
    "CARACAL_REDIS_SENTINEL_USERNAME",
    "CARACAL_REDIS_SENTINEL_PASSWORD",
    "STREAMS_HMAC_KEY",
    "STREAMS_HMAC_KEY_FILE",
    "CARACAL_REPLAY_MIN_REPLICAS",
];

fn env_parse<T: std::str::FromStr>(
    get: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<T>, ConfigError> {
    match get(var) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| ConfigError::Env {
            var,
            reason: "not a valid number".into(),
        }),
    }
}

impl VerifierBuilder {
    /// Settings from the environment:
    ///
    /// | variable | setting | default |
    /// | --- | --- | --- |
    /// | `CARACAL_STS_URL` | [`issuer`](Self::issuer) | required |
    /// | `CARACAL_ZONE_ID` | [`zone`](Self::zone) | required |
    /// | `CARACAL_AUDIENCE` | [`audience`](Self::audience) | required |
    /// | `CARACAL_TOKEN_USE` | [`token_use`](Self::token_use) | `resource` |
    /// | `CARACAL_LEEWAY_SECS` | [`leeway`](Self::leeway) | 60 |
    /// | `CARACAL_MAX_TOKEN_BYTES` | [`max_token_bytes`](Self::max_token_bytes) | 16384 |
    /// | `CARACAL_JWKS_TTL_SECS` | [`jwks_ttl`](Self::jwks_ttl) | 300 |
    /// | `CARACAL_JWKS_MAX_STALENESS_SECS` | [`jwks_max_staleness`](Self::jwks_max_staleness) | 1800 |
    /// | `CARACAL_JWKS_COOLDOWN_SECS` | [`jwks_cooldown`](Self::jwks_cooldown) | 2 |
    /// | `CARACAL_MANDATE_CACHE` | [`mandate_cache`](Self::mandate_cache) (`on`/`off`) | `on` |
    /// | `CARACAL_CODE_SPELLING` | [`code_spelling`](Self::code_spelling) (`documented`/`sdk`) | `documented` |
    ///
    /// With the `redis` feature, `CARACAL_REDIS_URL` and the variables next to it
    /// attach the Redis revocation feed (see `RedisRevocations::from_lookup`; the URL
    /// may name a server, a Sentinel-managed primary or a Cluster, with TLS, see
    /// `RedisEndpoint::from_lookup`), and `CARACAL_REPLAY_GUARD=redis` keeps
    /// single-use mandates in that Redis (`RedisReplayGuard`) instead of in the
    /// process (`memory`, the default), with `CARACAL_REPLAY_MIN_REPLICAS=n` for
    /// uses that count only once `n` replicas acknowledged them
    /// (`RedisReplayGuard::min_replicas`). Without the feature, any of the Redis
    /// variables, `STREAMS_HMAC_KEY`, `STREAMS_HMAC_KEY_FILE` or
    /// `CARACAL_REPLAY_GUARD=redis` is an error
    /// ([`ConfigError::Env`] naming it) rather than a verifier that silently runs
    /// without the revocation feed it was configured for.
    ///
    /// With the `audit` feature, `CARACAL_AUDIT=on` (with `CARACAL_REDIS_URL`,
    /// `AUDIT_HMAC_KEY` or `AUDIT_HMAC_KEY_FILE`, and optionally `AUDIT_REPLAY_DIR`)
    /// adds the action-result audit emitter (see `AuditEmitter::from_lookup`).
    /// Without the feature, `CARACAL_AUDIT` set to anything but `off`/`0`/`false`
    /// is an error naming it.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|k| std::env::var(k).ok())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `get`.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |var: &'static str| {
            get(var)
                .filter(|v| !v.trim().is_empty())
                .ok_or(ConfigError::Env {
                    var,
                    reason: "not set".into(),
                })
        };
        let mut b = Self::default()
            .issuer(required("CARACAL_STS_URL")?)
            .zone(required("CARACAL_ZONE_ID")?)
            .audience(required("CARACAL_AUDIENCE")?);
        if let Some(u) = get("CARACAL_TOKEN_USE").filter(|v| !v.is_empty()) {
            b = b.token_use(u);
        }
        if let Some(s) = env_parse::<u64>(get, "CARACAL_LEEWAY_SECS")? {
            b = b.leeway(Duration::from_secs(s));
        }
        if let Some(n) = env_parse::<usize>(get, "CARACAL_MAX_TOKEN_BYTES")? {
            b = b.max_token_bytes(n);
        }
        if let Some(s) = env_parse::<u64>(get, "CARACAL_JWKS_TTL_SECS")? {
            b = b.jwks_ttl(Duration::from_secs(s));
        }
        if let Some(s) = env_parse::<u64>(get, "CARACAL_JWKS_MAX_STALENESS_SECS")? {
            b = b.jwks_max_staleness(Duration::from_secs(s));
        }
        if let Some(s) = env_parse::<u64>(get, "CARACAL_JWKS_COOLDOWN_SECS")? {
            b = b.jwks_cooldown(Duration::from_secs(s));
        }
        match get("CARACAL_MANDATE_CACHE").as_deref().map(str::trim) {
            None | Some("") | Some("on") | Some("true") | Some("1") => {}
            Some("off") | Some("false") | Some("0") => b = b.mandate_cache(false),
            Some(_) => {
                return Err(ConfigError::Env {
                    var: "CARACAL_MANDATE_CACHE",
                    reason: "expected on or off".into(),
                });
            }
        }
        match get("CARACAL_CODE_SPELLING").as_deref().map(str::trim) {
            None | Some("") | Some("documented") => {}
            Some("sdk") => b = b.code_spelling(CodeSpelling::CaracalSdk),
            Some(_) => {
                return Err(ConfigError::Env {
                    var: "CARACAL_CODE_SPELLING",
                    reason: "expected documented or sdk".into(),
                });
            }
        }
        #[cfg(feature = "redis")]
        if let Some(redis) = crate::redis::RedisRevocations::from_lookup(get)? {
            b = b.redis_revocations(redis);
        }
        let min_replicas = get("CARACAL_REPLAY_MIN_REPLICAS").filter(|v| !v.trim().is_empty());
        match get("CARACAL_REPLAY_GUARD").as_deref().map(str::trim) {
            None | Some("") | Some("memory") if min_replicas.is_some() => {
                return Err(ConfigError::Env {
                    var: "CARACAL_REPLAY_MIN_REPLICAS",
                    reason: "set, but single-use mandates are kept in memory; it applies \
                             only with CARACAL_REPLAY_GUARD=redis"
                        .into(),
                });
            }
            None | Some("") | Some("memory") => {}
            #[cfg(feature = "redis")]
            Some("redis") => {
                let endpoint =
                    crate::redis::RedisEndpoint::from_lookup(get)?.ok_or(ConfigError::Env {
                        var: "CARACAL_REDIS_URL",
                        reason: "not set; CARACAL_REPLAY_GUARD=redis keeps single-use \
                                 mandates in Redis"
                            .into(),
                    })?;
                let mut guard = crate::redis::RedisReplayGuard::on(&endpoint)?;
                if let Some(n) = min_replicas {
                    guard = guard.min_replicas(n.trim().parse().map_err(|_| ConfigError::Env {
                        var: "CARACAL_REPLAY_MIN_REPLICAS",
                        reason: "expected a whole number of replicas".into(),
                    })?);
                }
                b = b.replay_guard(guard);
            }
            #[cfg(not(feature = "redis"))]
            Some("redis") => {
                return Err(ConfigError::Env {
                    var: "CARACAL_REPLAY_GUARD",
                    reason: "redis, but caracal-verifier was built without the `redis` \
                             feature; enable the feature or use memory"
                        .into(),
                });
            }
            Some(_) => {
                return Err(ConfigError::Env {
                    var: "CARACAL_REPLAY_GUARD",
                    reason: "expected memory or redis".into(),
                });
            }
        }
        #[cfg(feature = "audit")]
        if let Some(audit) = crate::audit::AuditEmitter::from_lookup(get)? {
            b = b.audit(audit);
        }
        #[cfg(not(feature = "audit"))]
        if get("CARACAL_AUDIT").is_some_and(|v| !matches!(v.trim(), "" | "off" | "0" | "false")) {
            return Err(ConfigError::Env {
                var: "CARACAL_AUDIT",
                reason: "set, but caracal-verifier was built without the `audit` \
                         feature, so no audit events would be sent; enable the feature \
                         or unset the variable"
                    .into(),
            });
        }
        #[cfg(not(feature = "redis"))]
        for var in REDIS_VARS {
            if get(var).is_some_and(|v| !v.trim().is_empty()) {
                return Err(ConfigError::Env {
                    var,
                    reason: "set, but caracal-verifier was built without the `redis` \
                             feature, so the revocation feed would not run; enable the \
                             feature or unset the variable"
                        .into(),
                });
            }
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    const BASE: [(&str, &str); 3] = [
        ("CARACAL_STS_URL", "https://sts.example.com"),
        ("CARACAL_ZONE_ID", "zone-1"),
        ("CARACAL_AUDIENCE", "resource://api"),
    ];

    #[test]
    fn from_lookup_reads_the_base_settings() {
        let b = VerifierBuilder::from_lookup(&lookup(&BASE)).unwrap();
        assert_eq!(b.zone.as_deref(), Some("zone-1"));
        // Empty values count as unset.
        let mut vars = BASE.to_vec();
        vars.push(("CARACAL_REDIS_URL", " "));
        vars.push(("STREAMS_HMAC_KEY", ""));
        assert!(VerifierBuilder::from_lookup(&lookup(&vars)).is_ok());
    }

    #[test]
    fn from_lookup_reads_the_code_spelling() {
        let spelling = |value: &str| {
            let mut vars = BASE.to_vec();
            vars.push(("CARACAL_CODE_SPELLING", value));
            VerifierBuilder::from_lookup(&lookup(&vars)).map(|b| b.code_spelling)
        };
        assert_eq!(
            VerifierBuilder::from_lookup(&lookup(&BASE))
                .unwrap()
                .code_spelling,
            CodeSpelling::Documented
        );
        assert_eq!(spelling("sdk"), Ok(CodeSpelling::CaracalSdk));
        assert_eq!(spelling(" sdk "), Ok(CodeSpelling::CaracalSdk));
        assert_eq!(spelling("documented"), Ok(CodeSpelling::Documented));
        assert_eq!(spelling(""), Ok(CodeSpelling::Documented));
        let err = spelling("SDKs").unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Env {
                    var: "CARACAL_CODE_SPELLING",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn replay_min_replicas_needs_the_redis_guard_and_a_number() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut vars = BASE.to_vec();
            vars.extend_from_slice(pairs);
            VerifierBuilder::from_lookup(&lookup(&vars)).map(|_| ())
        };
        let refused = |r: Result<(), ConfigError>| {
            matches!(
                r,
                Err(ConfigError::Env {
                    var: "CARACAL_REPLAY_MIN_REPLICAS",
                    ..
                })
            )
        };
        // Never silently ignored: in memory there are no replicas to wait for.
        assert!(refused(with(&[("CARACAL_REPLAY_MIN_REPLICAS", "1")])));
        assert!(refused(with(&[
            ("CARACAL_REPLAY_GUARD", "memory"),
            ("CARACAL_REPLAY_MIN_REPLICAS", "1"),
        ])));
        assert!(with(&[("CARACAL_REPLAY_MIN_REPLICAS", " ")]).is_ok());
        #[cfg(feature = "redis")]
        {
            let redis = |n| {
                with(&[
                    ("CARACAL_REDIS_URL", "redis://127.0.0.1:1"),
                    (
                        "STREAMS_HMAC_KEY",
                        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
                    ),
                    ("CARACAL_REPLAY_GUARD", "redis"),
                    ("CARACAL_REPLAY_MIN_REPLICAS", n),
                ])
            };
            assert!(redis("1").is_ok());
            assert!(redis(" 2 ").is_ok());
            for bad in ["-1", "one", "1.5", "99999999999"] {
                assert!(refused(redis(bad)), "{bad}");
            }
        }
    }

    #[cfg(not(feature = "audit"))]
    #[test]
    fn audit_on_without_the_audit_feature_is_refused() {
        for value in ["on", "1", "true", "On"] {
            let mut vars = BASE.to_vec();
            vars.push(("CARACAL_AUDIT", value));
            let err = VerifierBuilder::from_lookup(&lookup(&vars)).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Env { var: "CARACAL_AUDIT", reason } if reason.contains("`audit` feature")),
                "{err:?}"
            );
        }
        let mut vars = BASE.to_vec();
        vars.push(("CARACAL_AUDIT", "off"));
        assert!(VerifierBuilder::from_lookup(&lookup(&vars)).is_ok());
    }

    #[cfg(feature = "audit")]
    #[test]
    fn audit_on_adds_the_emitter_and_needs_its_key() {
        let mut vars = BASE.to_vec();
        vars.push(("CARACAL_AUDIT", "on"));
        vars.push(("CARACAL_REDIS_URL", "redis://127.0.0.1:1"));
        vars.push((
            "STREAMS_HMAC_KEY",
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ));
        let err = VerifierBuilder::from_lookup(&lookup(&vars)).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Env {
                    var: "AUDIT_HMAC_KEY",
                    ..
                }
            ),
            "{err:?}"
        );
        vars.push((
            "AUDIT_HMAC_KEY",
            "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100",
        ));
        let v = VerifierBuilder::from_lookup(&lookup(&vars))
            .unwrap()
            .build()
            .unwrap();
        let names: Vec<_> = v.sources().iter().map(|s| s.name().to_owned()).collect();
        assert_eq!(names, ["redis-revocations", "redis-audit"]);
    }

    #[cfg(not(feature = "redis"))]
    #[test]
    fn redis_settings_without_the_redis_feature_are_refused() {
        for (var, value) in [
            ("CARACAL_REDIS_URL", "redis://redis.internal:6379"),
            ("STREAMS_HMAC_KEY", "c2VjcmV0"),
            ("STREAMS_HMAC_KEY_FILE", "/run/secrets/streams-key"),
        ] {
            let mut vars = BASE.to_vec();
            vars.push((var, value));
            let err = VerifierBuilder::from_lookup(&lookup(&vars)).unwrap_err();
            let ConfigError::Env { var: named, reason } = &err else {
                panic!("expected an Env error, got {err:?}");
            };
            assert_eq!(*named, var);
            assert!(reason.contains("without the `redis` feature"), "{reason}");
            assert!(!err.to_string().contains(value), "the value is not echoed");
        }
    }
}
