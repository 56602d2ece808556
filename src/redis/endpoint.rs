//! [`RedisEndpoint`]: where Redis is and how to reach it, shared by the revocation
//! feed, the replay guard and the audit emitter.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use ::redis::{IntoConnectionInfo, RedisConnectionInfo};

use super::secret::secret;
use crate::error::ConfigError;

/// The most bytes read from a PEM file (a CA bundle, a certificate chain or a key).
const MAX_PEM_BYTES: u64 = 1024 * 1024;
/// The most Sentinel or Cluster seed addresses one URL may list.
const MAX_NODES: usize = 32;

/// How to reach Redis: a standalone server, a Sentinel-managed primary or a Cluster,
/// with or without TLS.
///
/// The URL decides the mode:
///
/// | URL | mode |
/// | --- | --- |
/// | `redis://[user:password@]host[:port][/db]` | one server, plain TCP |
/// | `rediss://[user:password@]host[:port][/db]` | one server, TLS |
/// | `redis+unix:///path/redis.sock[?db=N]` | one server, Unix socket |
/// | `redis+sentinel://[user:password@]host:port[,host:port…]/service[/db]` | the primary that the Sentinels name for `service` |
/// | `rediss+sentinel://…` | the same, TLS to the Sentinels and to the primary |
/// | `redis+cluster://[user:password@]host:port[,host:port…]` | a Cluster, found through these seed nodes |
/// | `rediss+cluster://…` | the same over TLS |
///
/// The user name and password are the data nodes' (`AUTH`). Sentinels that require
/// their own password take it from [`sentinel_password`](Self::sentinel_password).
///
/// TLS uses rustls and the system's root certificates, unless
/// [`tls_ca_file`](Self::tls_ca_file) names a private CA, which then replaces them.
/// [`tls_client_identity_files`](Self::tls_client_identity_files) adds a client
/// certificate for servers that require one (`tls-auth-clients yes`). The server's
/// certificate must name the host of the URL (or, in Sentinel and Cluster mode, the
/// address the Sentinels or the Cluster announce). There is no switch to skip that
/// check.
///
/// Nothing is read or resolved until the endpoint is used: a wrong URL or an
/// unreadable file fails [`VerifierBuilder::build`](crate::VerifierBuilder::build)
/// (or the replay guard's constructor) with a [`ConfigError`] that never echoes the
/// URL, which may carry a password.
///
/// ```
/// use caracal_verifier::redis::{RedisEndpoint, RedisRevocations};
///
/// let endpoint = RedisEndpoint::new("rediss+sentinel://10.0.0.1:26379,10.0.0.2:26379/caracal")
///     .tls_ca_file("/etc/caracal/redis-ca.pem")
///     .tls_client_identity_files("/etc/caracal/client.pem", "/etc/caracal/client.key");
/// let feed = RedisRevocations::on(endpoint.clone());
/// # let _ = feed;
/// ```
#[derive(Clone)]
#[must_use]
pub struct RedisEndpoint {
    url: String,
    ca: Option<Pem>,
    identity: Option<(Pem, Pem)>,
    sentinel_username: Option<String>,
    sentinel_password: Option<String>,
}

#[derive(Clone)]
enum Pem {
    File(PathBuf),
    Bytes(Arc<[u8]>),
}

impl fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEndpoint")
            .field("url", &redacted(&self.url))
            .field("private_ca", &self.ca.is_some())
            .field("client_identity", &self.identity.is_some())
            .field("sentinel_auth", &self.sentinel_password.is_some())
            .finish()
    }
}

impl From<&str> for RedisEndpoint {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl From<String> for RedisEndpoint {
    fn from(url: String) -> Self {
        Self::new(url)
    }
}

impl RedisEndpoint {
    /// An endpoint for `url`, in any of the forms in the table above.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca: None,
            identity: None,
            sentinel_username: None,
            sentinel_password: None,
        }
    }

    /// Settings from the environment; `Ok(None)` when `CARACAL_REDIS_URL` is unset or
    /// empty.
    ///
    /// | variable | meaning |
    /// | --- | --- |
    /// | `CARACAL_REDIS_URL` | the URL, in any form of the table above |
    /// | `CARACAL_REDIS_URL_FILE` | a file holding the URL, read when `CARACAL_REDIS_URL` is unset |
    /// | `CARACAL_REDIS_TLS_CA_FILE` | [`tls_ca_file`](Self::tls_ca_file): PEM CA certificates that replace the system roots |
    /// | `CARACAL_REDIS_TLS_CERT_FILE`, `CARACAL_REDIS_TLS_KEY_FILE` | [`tls_client_identity_files`](Self::tls_client_identity_files); both or neither |
    /// | `CARACAL_REDIS_SENTINEL_USERNAME` | [`sentinel_username`](Self::sentinel_username) |
    /// | `CARACAL_REDIS_SENTINEL_PASSWORD`, `…_FILE` | [`sentinel_password`](Self::sentinel_password) |
    ///
    /// TLS variables with a plain `redis://` URL are an error, not ignored: a TLS
    /// setting that silently does nothing would leave the link in clear text.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let Some((url, _)) = secret(get, "CARACAL_REDIS_URL", "CARACAL_REDIS_URL_FILE")? else {
            return Ok(None);
        };
        let mut ep = Self::new(url.trim());
        let set = |var: &str| get(var).filter(|v| !v.trim().is_empty());
        if let Some(ca) = set("CARACAL_REDIS_TLS_CA_FILE") {
            ep = ep.tls_ca_file(ca.trim());
        }
        match (
            set("CARACAL_REDIS_TLS_CERT_FILE"),
            set("CARACAL_REDIS_TLS_KEY_FILE"),
        ) {
            (Some(c), Some(k)) => ep = ep.tls_client_identity_files(c.trim(), k.trim()),
            (None, None) => {}
            (Some(_), None) => {
                return Err(ConfigError::Env {
                    var: "CARACAL_REDIS_TLS_KEY_FILE",
                    reason: "not set, but CARACAL_REDIS_TLS_CERT_FILE is: give both or neither"
                        .into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Env {
                    var: "CARACAL_REDIS_TLS_CERT_FILE",
                    reason: "not set, but CARACAL_REDIS_TLS_KEY_FILE is: give both or neither"
                        .into(),
                });
            }
        }
        if let Some(user) = set("CARACAL_REDIS_SENTINEL_USERNAME") {
            ep = ep.sentinel_username(user.trim());
        }
        if let Some((pw, _)) = secret(
            get,
            "CARACAL_REDIS_SENTINEL_PASSWORD",
            "CARACAL_REDIS_SENTINEL_PASSWORD_FILE",
        )? {
            ep = ep.sentinel_password(pw);
        }
        let mode = ep.parse().map_err(|e| ConfigError::Env {
            var: "CARACAL_REDIS_URL",
            reason: e.to_string(),
        })?;
        if !mode.tls && (ep.ca.is_some() || ep.identity.is_some()) {
            return Err(ConfigError::Env {
                var: "CARACAL_REDIS_TLS_CA_FILE",
                reason: "TLS settings are given but CARACAL_REDIS_URL is not a rediss URL".into(),
            });
        }
        if !matches!(mode.topology, Topology::Sentinel { .. }) && ep.sentinel_password.is_some() {
            return Err(ConfigError::Env {
                var: "CARACAL_REDIS_SENTINEL_PASSWORD",
                reason: "set, but CARACAL_REDIS_URL is not a Sentinel URL".into(),
            });
        }
        Ok(Some(ep))
    }

    /// Trust only the CA certificates in this PEM file (one or more `CERTIFICATE`
    /// blocks) instead of the system roots.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(Pem::File(path.into()));
        self
    }

    /// Like [`tls_ca_file`](Self::tls_ca_file), from PEM bytes in memory.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(Pem::Bytes(pem.into().into()));
        self
    }

    /// Present this client certificate chain (PEM) and private key (PEM: PKCS#8,
    /// PKCS#1 or SEC1) to servers that require one.
    pub fn tls_client_identity_files(
        mut self,
        cert_chain: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.identity = Some((Pem::File(cert_chain.into()), Pem::File(key.into())));
        self
    }

    /// Like [`tls_client_identity_files`](Self::tls_client_identity_files), from PEM
    /// bytes in memory.
    pub fn tls_client_identity_pem(
        mut self,
        cert_chain: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((
            Pem::Bytes(cert_chain.into().into()),
            Pem::Bytes(key.into().into()),
        ));
        self
    }

    /// The user name for Sentinels that use ACLs (Sentinel mode only).
    pub fn sentinel_username(mut self, user: impl Into<String>) -> Self {
        self.sentinel_username = Some(user.into());
        self
    }

    /// The password of the Sentinels themselves (`requirepass` in sentinel.conf),
    /// which is not the data nodes' password of the URL. Sentinel mode only.
    pub fn sentinel_password(mut self, password: impl Into<String>) -> Self {
        self.sentinel_password = Some(password.into());
        self
    }

    /// The URL with any password replaced, for logs.
    pub(crate) fn redacted_url(&self) -> String {
        redacted(&self.url)
    }

    /// Parse the URL and read the TLS files: everything a connection needs.
    pub(crate) fn resolve(&self) -> Result<Resolved, ConfigError> {
        let mode = self.parse()?;
        let tls = if mode.tls {
            Some(Arc::new(self.tls_config()?))
        } else {
            if self.ca.is_some() || self.identity.is_some() {
                return Err(ConfigError::invalid(
                    "redis_url",
                    "TLS settings are given but the URL is not a rediss URL",
                ));
            }
            None
        };
        let mut sentinel = RedisConnectionInfo::default();
        if let Some(user) = &self.sentinel_username {
            sentinel = sentinel.set_username(user);
        }
        if let Some(pw) = &self.sentinel_password {
            sentinel = sentinel.set_password(pw);
        }
        Ok(Resolved {
            topology: mode.topology,
            tls,
            node: mode.node,
            sentinel,
        })
    }

    fn parse(&self) -> Result<Mode, ConfigError> {
        // Never echo the URL: it may carry a password.
        let bad = |why: &'static str| ConfigError::invalid("redis_url", why);
        let url = self.url.trim();
        let (scheme, rest) = url.split_once("://").ok_or(bad("not a valid Redis URL"))?;
        let (tls, multi) = match scheme.to_ascii_lowercase().as_str() {
            "redis" | "rediss" | "redis+unix" | "unix" => {
                return self.parse_single(url);
            }
            "redis+sentinel" | "redis-sentinel" => (false, Multi::Sentinel),
            "rediss+sentinel" | "rediss-sentinel" => (true, Multi::Sentinel),
            "redis+cluster" | "redis-cluster" => (false, Multi::Cluster),
            "rediss+cluster" | "rediss-cluster" => (true, Multi::Cluster),
            _ => return Err(bad("unknown URL scheme (see RedisEndpoint for the forms)")),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut nodes = Vec::new();
        for h in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let default_port = match multi {
                Multi::Sentinel => 26379,
                Multi::Cluster => 6379,
            };
            nodes.push(host_port(h, default_port).ok_or(bad("a node address does not parse"))?);
        }
        if nodes.is_empty() {
            return Err(bad("no node address"));
        }
        if nodes.len() > MAX_NODES {
            return Err(bad("more than 32 node addresses"));
        }
        // Reuse the `redis` crate's parser for the credentials, the database and
        // the protocol, on a single-host URL built from the same parts.
        let single = format!(
            "redis://{}{}127.0.0.1{}",
            userinfo.unwrap_or(""),
            if userinfo.is_some() { "@" } else { "" },
            path_for(multi, path).ok_or(bad("the path does not parse"))?,
        );
        let info = single
            .as_str()
            .into_connection_info()
            .map_err(|_| bad("not a valid Redis URL"))?;
        let node = info.redis_settings().clone();
        let topology = match multi {
            Multi::Sentinel => {
                let service = path
                    .trim_start_matches('/')
                    .split(['/', '?'])
                    .next()
                    .filter(|s| !s.is_empty())
                    .ok_or(bad(
                        "a Sentinel URL names the service: redis+sentinel://host:port/service",
                    ))?;
                Topology::Sentinel {
                    nodes,
                    service: service.to_owned(),
                }
            }
            Multi::Cluster => {
                if node.db() != 0 {
                    return Err(bad("Redis Cluster has only database 0"));
                }
                Topology::Cluster { seeds: nodes }
            }
        };
        Ok(Mode {
            topology,
            tls,
            node,
        })
    }

    fn parse_single(&self, url: &str) -> Result<Mode, ConfigError> {
        let bad = || ConfigError::invalid("redis_url", "not a valid Redis URL");
        let lower = url.to_ascii_lowercase();
        let tls = lower.starts_with("rediss://");
        // The `redis` crate parses `rediss://` only with its TLS features, which this
        // crate does not use: parse the same URL as `redis://` and keep TLS here.
        let plain;
        let to_parse = if tls {
            plain = format!("redis://{}", &url["rediss://".len()..]);
            plain.as_str()
        } else {
            url
        };
        let info = to_parse.into_connection_info().map_err(|_| bad())?;
        let addr = match info.addr() {
            ::redis::ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
            #[cfg(unix)]
            ::redis::ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
            _ => return Err(bad()),
        };
        Ok(Mode {
            topology: Topology::Standalone(addr),
            tls,
            node: info.redis_settings().clone(),
        })
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, ConfigError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(pem) => {
                let bytes = pem.read("tls_ca_file")?;
                for cert in CertificateDer::pem_slice_iter(&bytes) {
                    let cert = cert.map_err(|_| {
                        ConfigError::invalid("tls_ca_file", "not a PEM certificate file")
                    })?;
                    roots.add(cert).map_err(|_| {
                        ConfigError::invalid("tls_ca_file", "holds a certificate that is not a CA")
                    })?;
                }
                if roots.is_empty() {
                    return Err(ConfigError::invalid(
                        "tls_ca_file",
                        "holds no PEM certificate",
                    ));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // A bad system certificate is skipped, as every TLS client does.
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(ConfigError::invalid(
                        "redis_url",
                        "rediss: no system root certificates found; give tls_ca_file",
                    ));
                }
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|_| ConfigError::invalid("redis_url", "TLS is not available"))?
            .with_root_certificates(roots);
        match &self.identity {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let cert_bytes = cert.read("tls_client_cert")?;
                let chain = CertificateDer::pem_slice_iter(&cert_bytes)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| {
                        ConfigError::invalid("tls_client_cert", "not a PEM certificate file")
                    })?;
                if chain.is_empty() {
                    return Err(ConfigError::invalid(
                        "tls_client_cert",
                        "holds no PEM certificate",
                    ));
                }
                let key_bytes = key.read("tls_client_key")?;
                let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|_| {
                    ConfigError::invalid("tls_client_key", "holds no PEM private key")
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|_| {
                    ConfigError::invalid(
                        "tls_client_key",
                        "does not match the client certificate or is not supported",
                    )
                })
            }
        }
    }
}

impl Pem {
    fn read(&self, what: &'static str) -> Result<Vec<u8>, ConfigError> {
        use std::io::Read;
        match self {
            Pem::Bytes(b) => Ok(b.to_vec()),
            Pem::File(path) => {
                let file = std::fs::File::open(path).map_err(|e| {
                    ConfigError::invalid(what, format!("cannot read the file: {}", e.kind()))
                })?;
                let mut raw = Vec::new();
                file.take(MAX_PEM_BYTES + 1)
                    .read_to_end(&mut raw)
                    .map_err(|e| {
                        ConfigError::invalid(what, format!("cannot read the file: {}", e.kind()))
                    })?;
                if raw.len() as u64 > MAX_PEM_BYTES {
                    return Err(ConfigError::invalid(what, "the file is larger than 1 MiB"));
                }
                Ok(raw)
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Multi {
    Sentinel,
    Cluster,
}

/// The path of the single-host URL the `redis` crate parses: the database (Sentinel:
/// after the service name) and the query.
fn path_for(multi: Multi, path: &str) -> Option<String> {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let db = match multi {
        Multi::Sentinel => path
            .trim_start_matches('/')
            .split_once('/')
            .map(|(_, db)| db),
        Multi::Cluster => Some(path.trim_start_matches('/')).filter(|p| !p.is_empty()),
    };
    let mut out = String::new();
    if let Some(db) = db.filter(|d| !d.is_empty()) {
        db.parse::<u16>().ok()?;
        out.push('/');
        out.push_str(db);
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

/// `host:port`, `[v6]:port` or a bare host.
fn host_port(s: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (s, default_port),
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) || port == 0 {
        return None;
    }
    Some((host.to_owned(), port))
}

fn redacted(url: &str) -> String {
    // Multi-host URLs are not URLs `url` parses; redact the user info by hand. A
    // password may hold `/`, `?` or `@` unencoded (a URL that then fails to parse is
    // still shown in `Debug`), so everything up to the last `@` is user info.
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable>".into();
    };
    let (shown, tail) = match rest.rsplit_once('@') {
        Some((userinfo, tail)) => {
            let shown = match userinfo.split_once(':') {
                Some((user, _)) if !user.contains(['/', '?']) => format!("{user}:redacted@"),
                _ => "redacted@".to_owned(),
            };
            (shown, tail)
        }
        None => (String::new(), rest),
    };
    // The query may carry a password too (`?pass=`).
    let tail = match tail.split_once('?') {
        Some((before, _)) => format!("{before}?redacted"),
        None => tail.to_owned(),
    };
    format!("{scheme}://{shown}{tail}")
}

struct Mode {
    topology: Topology,
    tls: bool,
    node: RedisConnectionInfo,
}

/// A data node's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Addr {
    Tcp(String, u16),
    #[cfg(unix)]
    Unix(PathBuf),
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp(h, p) if h.contains(':') => write!(f, "[{h}]:{p}"),
            Addr::Tcp(h, p) => write!(f, "{h}:{p}"),
            #[cfg(unix)]
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Topology {
    Standalone(Addr),
    Sentinel {
        nodes: Vec<(String, u16)>,
        service: String,
    },
    Cluster {
        seeds: Vec<(String, u16)>,
    },
}

/// A parsed endpoint: what [`Connector`](super::connect::Connector) needs.
pub(crate) struct Resolved {
    pub(crate) topology: Topology,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    /// Credentials, database and protocol of the data nodes.
    pub(crate) node: RedisConnectionInfo,
    /// Credentials of the Sentinels.
    pub(crate) sentinel: RedisConnectionInfo,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved")
            .field("topology", &self.topology)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Resolved {
    /// The mode's name, for logs: `standalone`, `sentinel` or `cluster`.
    pub(crate) fn mode_name(&self) -> &'static str {
        match self.topology {
            Topology::Standalone(_) => "standalone",
            Topology::Sentinel { .. } => "sentinel",
            Topology::Cluster { .. } => "cluster",
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.topology, Topology::Cluster { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> Mode {
        RedisEndpoint::new(url)
            .parse()
            .unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn url_forms() {
        let m = mode("redis://u:p@h:7000/3");
        assert!(!m.tls);
        assert!(matches!(m.topology, Topology::Standalone(Addr::Tcp(ref h, 7000)) if h == "h"));
        assert_eq!(m.node.db(), 3);
        assert!(mode("rediss://h").tls);
        let m = mode("redis+sentinel://:pw@s1:26379,s2,[::1]:26380/mymaster/2");
        match m.topology {
            Topology::Sentinel { nodes, service } => {
                assert_eq!(
                    nodes,
                    vec![
                        ("s1".into(), 26379),
                        ("s2".into(), 26379),
                        ("::1".into(), 26380)
                    ]
                );
                assert_eq!(service, "mymaster");
            }
            t => panic!("{t:?}"),
        }
        assert_eq!(m.node.db(), 2);
        assert_eq!(m.node.password(), Some("pw"));
        let m = mode("rediss+cluster://a:7000,b:7001");
        assert!(m.tls);
        assert!(matches!(m.topology, Topology::Cluster { ref seeds } if seeds.len() == 2));
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for url in [
            "http://h",
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:notaport/m",
            "redis+cluster://",
            "redis+cluster://a:7000/3",
            "redis+sentinel://s:1/m/db",
            "nonsense",
        ] {
            let err = RedisEndpoint::new(url).resolve().unwrap_err();
            assert!(!err.to_string().contains("s1:"), "{err}");
        }
        let err = RedisEndpoint::new("redis://u:secret@h")
            .tls_ca_pem("x")
            .resolve()
            .unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn debug_and_logs_never_show_the_password() {
        let ep = RedisEndpoint::new("redis+sentinel://user:hunter2@s1,s2/m")
            .sentinel_password("sentinel-secret");
        let shown = format!("{ep:?} {}", ep.redacted_url());
        assert!(
            !shown.contains("hunter2") && !shown.contains("sentinel-secret"),
            "{shown}"
        );
        assert!(shown.contains("user:redacted@s1,s2/m"), "{shown}");

        // Unencoded `/`, `?` and `@` in a password, and a password in the query.
        for (url, secret, kept) in [
            (
                "redis://user:p/ss@h:1/0",
                "p/ss",
                "redis://user:redacted@h:1/0",
            ),
            ("redis://user:p?ss@h", "p?ss", "redis://user:redacted@h"),
            ("redis://:a@b@h", "a@b", "redis://:redacted@h"),
            ("redis://u/x:pw@h", "pw", "redis://redacted@h"),
            (
                "redis+unix:///r.sock?db=1&pass=pw",
                "pw",
                "redis+unix:///r.sock?redacted",
            ),
            (
                "redis+cluster://u:p/w@n1,n2",
                "p/w",
                "redis+cluster://u:redacted@n1,n2",
            ),
        ] {
            let shown = format!("{:?}", RedisEndpoint::new(url));
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains(kept), "{shown}");
        }
    }

    #[test]
    fn env_refuses_tls_files_on_a_plain_url_and_half_an_identity() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let plain = vars(&[
            ("CARACAL_REDIS_URL", "redis://h"),
            ("CARACAL_REDIS_TLS_CA_FILE", "/ca.pem"),
        ]);
        assert!(RedisEndpoint::from_lookup(&plain).is_err());
        let half = vars(&[
            ("CARACAL_REDIS_URL", "rediss://h"),
            ("CARACAL_REDIS_TLS_CERT_FILE", "/c.pem"),
        ]);
        assert!(RedisEndpoint::from_lookup(&half).is_err());
        let none = vars(&[]);
        assert!(RedisEndpoint::from_lookup(&none).unwrap().is_none());
        let ok = vars(&[
            ("CARACAL_REDIS_URL", "rediss+cluster://a:7000"),
            ("CARACAL_REDIS_TLS_CA_FILE", "/ca.pem"),
        ]);
        assert!(RedisEndpoint::from_lookup(&ok).unwrap().is_some());
        let missing_ca = RedisEndpoint::new("rediss://h")
            .tls_ca_file("/nonexistent/ca.pem")
            .resolve()
            .unwrap_err();
        assert!(
            missing_ca.to_string().contains("tls_ca_file"),
            "{missing_ca}"
        );
    }
}
