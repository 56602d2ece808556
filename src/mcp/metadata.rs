//! RFC 9728 OAuth 2.0 Protected Resource Metadata.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response};
use serde_json::{Value, json};
use url::Url;

use crate::error::ConfigError;

/// The well-known path prefix of RFC 9728 §3.
pub(crate) const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The Protected Resource Metadata document of an MCP server (RFC 9728), as the MCP
/// authorization specification asks protected resources to publish: `resource`,
/// `authorization_servers` (the Caracal STS that issues the mandates),
/// `scopes_supported`, `bearer_methods_supported: ["header"]` and, optionally,
/// `resource_documentation`.
///
/// Serve [`response`](Self::response) at each of [`paths`](Self::paths), and point
/// clients to [`url`](Self::url) in every challenge
/// ([`McpLayer::resource_metadata`](super::McpLayer::resource_metadata)).
///
/// ```
/// use caracal_verifier::mcp::ProtectedResourceMetadata;
///
/// let meta = ProtectedResourceMetadata::builder("https://api.example.com/mcp")
///     .authorization_server("https://sts.example.com")
///     .scopes_supported(["tickets:read", "billing:payout"])
///     .build()?;
/// assert_eq!(
///     meta.url(),
///     "https://api.example.com/.well-known/oauth-protected-resource/mcp"
/// );
/// assert_eq!(
///     meta.paths(),
///     ["/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"]
/// );
/// assert_eq!(meta.to_json()["bearer_methods_supported"], serde_json::json!(["header"]));
/// # Ok::<(), caracal_verifier::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ProtectedResourceMetadata {
    document: Value,
    body: Bytes,
    url: String,
    paths: Vec<String>,
}

/// Builds a [`ProtectedResourceMetadata`]; see
/// [`ProtectedResourceMetadata::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ProtectedResourceMetadataBuilder {
    resource: String,
    authorization_servers: Vec<String>,
    scopes: Vec<String>,
    documentation: Option<String>,
}

impl ProtectedResourceMetadata {
    /// Start a document for `resource`, the resource identifier clients put in
    /// their token requests: an absolute `https` URL without a fragment (`http` is
    /// accepted for loopback hosts only), usually the MCP endpoint's URL.
    pub fn builder(resource: impl Into<String>) -> ProtectedResourceMetadataBuilder {
        ProtectedResourceMetadataBuilder {
            resource: resource.into(),
            authorization_servers: Vec::new(),
            scopes: Vec::new(),
            documentation: None,
        }
    }

    /// The URL of the document for this resource, for the `resource_metadata`
    /// challenge attribute: the well-known path inserted between the resource's
    /// origin and its path (RFC 9728 §3.1).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The paths to serve the document at: `/.well-known/oauth-protected-resource`
    /// and, for a resource with a path, the path-suffixed form
    /// `/.well-known/oauth-protected-resource/<path>`.
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// The document.
    pub fn to_json(&self) -> &Value {
        &self.document
    }

    /// The document as a `200 application/json` response, cacheable for an hour.
    pub fn response(&self) -> Response<Bytes> {
        let mut response = Response::new(self.body.clone());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        );
        response
    }
}

impl ProtectedResourceMetadataBuilder {
    /// Add an authorization server: the Caracal STS's issuer URL
    /// ([`Verifier::issuer`](crate::Verifier::issuer)). Required, at least one.
    pub fn authorization_server(mut self, issuer: impl Into<String>) -> Self {
        self.authorization_servers.push(issuer.into());
        self
    }

    /// The scopes this resource's tools, resources and prompts use. Default: none
    /// (the member is left out).
    pub fn scopes_supported<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// A page of human-readable documentation (`resource_documentation`).
    /// Default: none.
    pub fn documentation(mut self, url: impl Into<String>) -> Self {
        self.documentation = Some(url.into());
        self
    }

    /// Check the settings and build the document.
    pub fn build(self) -> Result<ProtectedResourceMetadata, ConfigError> {
        let resource = Url::parse(&self.resource)
            .map_err(|e| ConfigError::invalid("resource", e.to_string()))?;
        let loopback = resource.host().is_some_and(|h| match h {
            url::Host::Domain(d) => d == "localhost",
            url::Host::Ipv4(ip) => ip.is_loopback(),
            url::Host::Ipv6(ip) => ip.is_loopback(),
        });
        match resource.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => {
                return Err(ConfigError::invalid(
                    "resource",
                    "must be an https URL (http only for loopback hosts)",
                ));
            }
        }
        if resource.fragment().is_some() || resource.cannot_be_a_base() {
            return Err(ConfigError::invalid(
                "resource",
                "must be an absolute URL without a fragment",
            ));
        }
        if self.authorization_servers.is_empty() {
            return Err(ConfigError::Missing("authorization_servers"));
        }
        let path = resource.path().trim_end_matches('/');
        let mut paths = vec![WELL_KNOWN.to_owned()];
        if !path.is_empty() {
            paths.push(format!("{WELL_KNOWN}{path}"));
        }
        let origin = resource.origin().ascii_serialization();
        let url = format!("{origin}{WELL_KNOWN}{path}");

        let mut document = json!({
            "resource": self.resource,
            "authorization_servers": self.authorization_servers,
            "bearer_methods_supported": ["header"],
        });
        if !self.scopes.is_empty() {
            document["scopes_supported"] = json!(self.scopes);
        }
        if let Some(doc) = self.documentation {
            document["resource_documentation"] = json!(doc);
        }
        let body = Bytes::from(document.to_string());
        Ok(ProtectedResourceMetadata {
            document,
            body,
            url,
            paths,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_without_a_path_has_one_location() {
        let meta = ProtectedResourceMetadata::builder("https://api.example.com")
            .authorization_server("https://sts.example.com")
            .documentation("https://docs.example.com")
            .build()
            .unwrap();
        assert_eq!(meta.paths(), [WELL_KNOWN]);
        assert_eq!(
            meta.url(),
            "https://api.example.com/.well-known/oauth-protected-resource"
        );
        let doc = meta.to_json();
        assert_eq!(
            doc["authorization_servers"],
            json!(["https://sts.example.com"])
        );
        assert_eq!(doc["resource_documentation"], "https://docs.example.com");
        assert!(doc.get("scopes_supported").is_none());
        assert_eq!(meta.response().headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn bad_settings_say_which() {
        let err = |r: &str| {
            ProtectedResourceMetadata::builder(r)
                .authorization_server("https://sts")
                .build()
                .unwrap_err()
                .to_string()
        };
        assert!(err("http://api.example.com/mcp").contains("`resource`"));
        assert!(err("https://api.example.com/mcp#x").contains("fragment"));
        assert!(err("not a url").contains("`resource`"));
        assert!(
            ProtectedResourceMetadata::builder("http://127.0.0.1:8080/mcp")
                .build()
                .unwrap_err()
                .to_string()
                .contains("authorization_servers")
        );
    }
}
