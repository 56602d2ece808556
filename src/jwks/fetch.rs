//! Getting a JWKS document: the [`JwksFetcher`] trait, the default [`HttpFetcher`]
//! and its settings, and the default deadline and size cap of one fetch.

use std::fmt;
use std::time::Duration;

use crate::error::ConfigError;
use crate::future::BoxFuture;

/// Why a JWKS fetch failed. Its message never contains response bodies or secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("jwks fetch failed: {0}")]
pub struct FetchError(String);

impl FetchError {
    /// A fetch error with a short, lowercase description.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// Fetches a JWKS document. Implement it to bring your own transport; the
/// verifier still applies the overall deadline and the size cap.
pub trait JwksFetcher: Send + Sync + fmt::Debug + 'static {
    /// GET `url` and return the body of a 200 response, at most `max_bytes` long.
    /// Anything else (another status, a redirect, a larger body) is an error.
    fn fetch<'a>(
        &'a self,
        url: &'a str,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, FetchError>>;
}

/// The default fetcher: reqwest over rustls, no redirects, no ambient proxy.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
}

/// Settings for an [`HttpFetcher`]: private CAs, client certificates (mTLS) and proxies.
#[derive(Debug, Default)]
#[must_use]
pub struct HttpFetcherBuilder {
    roots: Vec<Vec<u8>>,
    only_custom_roots: bool,
    identity: Option<Vec<u8>>,
    proxy: Option<String>,
    timeout: Option<Duration>,
}

impl HttpFetcherBuilder {
    /// Trust this PEM CA certificate (bundle) in addition to the system roots.
    pub fn add_root_certificate_pem(mut self, pem: &[u8]) -> Self {
        self.roots.push(pem.to_vec());
        self
    }

    /// Trust only the added CA certificates, not the system roots.
    pub fn only_added_roots(mut self) -> Self {
        self.only_custom_roots = true;
        self
    }

    /// Present this client certificate and private key (PEM) for mutual TLS.
    pub fn identity_pem(mut self, pem: &[u8]) -> Self {
        self.identity = Some(pem.to_vec());
        self
    }

    /// Send requests through this proxy URL. Default: none (environment proxy
    /// variables are ignored, so the keyset cannot be redirected by the environment).
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = Some(url.into());
        self
    }

    /// The client's own timeout. Default 5 s; the verifier's fetch deadline applies too.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Build the fetcher.
    pub fn build(self) -> Result<HttpFetcher, ConfigError> {
        let timeout = self.timeout.unwrap_or(DEFAULT_FETCH_TIMEOUT);
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("caracal-verifier/", env!("CARGO_PKG_VERSION")))
            .no_proxy();
        let mut certs = Vec::new();
        for pem in &self.roots {
            certs.extend(
                reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| ConfigError::invalid("root_certificate", e.to_string()))?,
            );
        }
        if self.only_custom_roots {
            b = b.tls_certs_only(certs);
        } else {
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let Some(pem) = &self.identity {
            let id = reqwest::Identity::from_pem(pem)
                .map_err(|e| ConfigError::invalid("identity", e.to_string()))?;
            b = b.identity(id);
        }
        if let Some(p) = &self.proxy {
            let proxy =
                reqwest::Proxy::all(p).map_err(|e| ConfigError::invalid("proxy", e.to_string()))?;
            b = b.proxy(proxy);
        }
        let client = b
            .build()
            .map_err(|e| ConfigError::invalid("http_client", e.to_string()))?;
        Ok(HttpFetcher { client })
    }
}

impl HttpFetcher {
    /// Settings for a fetcher.
    pub fn builder() -> HttpFetcherBuilder {
        HttpFetcherBuilder::default()
    }
}

impl JwksFetcher for HttpFetcher {
    fn fetch<'a>(
        &'a self,
        url: &'a str,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, FetchError>> {
        Box::pin(async move {
            let mut resp = self
                .client
                .get(url)
                .header(http::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| FetchError::new(describe_reqwest(&e)))?;
            if resp.status() != http::StatusCode::OK {
                return Err(FetchError::new(format!(
                    "status {}",
                    resp.status().as_u16()
                )));
            }
            if resp.content_length().is_some_and(|n| n > max_bytes as u64) {
                return Err(FetchError::new("body exceeds size cap"));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| FetchError::new(describe_reqwest(&e)))?
            {
                if body.len() + chunk.len() > max_bytes {
                    return Err(FetchError::new("body exceeds size cap"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        })
    }
}

fn describe_reqwest(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connect failed"
    } else if e.is_redirect() {
        "redirect refused"
    } else if e.is_body() || e.is_decode() {
        "body read failed"
    } else {
        "request failed"
    }
}

/// The default total deadline of one fetch.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The default cap on a JWKS document.
pub const DEFAULT_MAX_JWKS_BYTES: usize = 256 * 1024;
