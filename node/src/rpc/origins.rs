//! The web origins a node serves (`rpc.origins`): which pages may call it from a
//! browser (CORS, on the gRPC-Web listener and the HTTP API) and which dApp domains a
//! sign-in message may name. One list, so a page that may call the node may also sign
//! in to it, and no other.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Request headers a browser may send: auth, gRPC-Web, Connect and signed calls.
const ALLOWED_HEADERS: [&str; 11] = [
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
    "connect-timeout-ms",
    "x-hanzo-signature",
    "x-hanzo-nonce",
    "x-hanzo-deadline",
    "x-hanzo-address",
];
/// Response headers a page may read: the gRPC status of a trailers-only answer.
const EXPOSED_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// Why `rpc.origins` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "rpc.origins: {0:?} is not a web origin: write `scheme://host[:port]` (no path), or \"*\" for any"
)]
pub struct Error(String);

/// The origins a node serves.
#[derive(Debug, Clone)]
pub struct Origins {
    any: bool,
    /// `scheme://authority`, lowercase.
    list: Vec<(String, String)>,
    /// The node's own domain (`rpc.domain`): accepted in sign-in with any scheme.
    own: String,
}

impl Origins {
    /// `configured` (from `rpc.origins`) plus the node's `own` origins (its dashboard)
    /// and its sign-in `domain`.
    pub fn new(configured: &[String], own: &[String], domain: &str) -> Result<Self, Error> {
        let mut list = Vec::new();
        let mut any = false;
        for origin in configured.iter().chain(own) {
            if origin == "*" {
                any = true;
                continue;
            }
            let lower = origin.to_ascii_lowercase();
            let parsed = lower.split_once("://").filter(|(scheme, authority)| {
                !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                    && !authority.is_empty()
                    && authority
                        .chars()
                        .all(|c| c.is_ascii_graphic() && !"/?#@\\".contains(c))
            });
            let Some((scheme, authority)) = parsed else {
                return Err(Error(origin.clone()));
            };
            list.push((scheme.to_owned(), authority.to_owned()));
        }
        Ok(Self {
            any,
            list,
            own: domain.to_ascii_lowercase(),
        })
    }

    /// Whether a sign-in message for `[scheme://]domain` is accepted: the node's own
    /// domain, or the authority of an allowed origin (with its scheme, when the
    /// message names one).
    pub fn accepts_domain(&self, scheme: Option<&str>, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.any
            || domain == self.own
            || self.list.iter().any(|(s, a)| {
                *a == domain && scheme.is_none_or(|scheme| scheme.eq_ignore_ascii_case(s))
            })
    }

    /// What is accepted, for refusals.
    pub fn describe(&self) -> String {
        if self.any {
            return "any domain (rpc.origins has \"*\")".to_owned();
        }
        let mut out = vec![self.own.clone()];
        out.extend(self.list.iter().map(|(s, a)| format!("{s}://{a}")));
        out.join(", ")
    }

    /// tower-http's CORS layer for these origins: preflights answered before anything
    /// else sees the request, the gRPC status headers exposed.
    pub fn cors(&self) -> CorsLayer {
        let origins = if self.any {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                self.list
                    .iter()
                    .filter_map(|(s, a)| HeaderValue::from_str(&format!("{s}://{a}")).ok()),
            )
        };
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
            .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
            .max_age(Duration::from_secs(7200))
    }
}

/// The origins of a page served by a listener on `addr` (the dashboard): as typed
/// into a browser, so `localhost` and `127.0.0.1` when it listens on loopback or on
/// every interface.
pub fn of_listener(addr: std::net::SocketAddr) -> Vec<String> {
    let port = addr.port();
    let ip = addr.ip();
    let mut out = Vec::new();
    if ip.is_loopback() || ip.is_unspecified() {
        out.push(format!("http://localhost:{port}"));
        out.push(format!("http://127.0.0.1:{port}"));
    }
    if !ip.is_loopback() && !ip.is_unspecified() {
        match ip {
            std::net::IpAddr::V4(v4) => out.push(format!("http://{v4}:{port}")),
            std::net::IpAddr::V6(v6) => out.push(format!("http://[{v6}]:{port}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn domains_follow_the_origins() {
        let o = Origins::new(
            &["https://App.Example".into()],
            &of_listener("127.0.0.1:8680".parse().unwrap()),
            "127.0.0.1:8690",
        )
        .unwrap();
        assert!(o.accepts_domain(None, "app.example"));
        assert!(o.accepts_domain(Some("https"), "app.example"));
        assert!(!o.accepts_domain(Some("http"), "app.example"));
        assert!(o.accepts_domain(None, "localhost:8680"));
        assert!(o.accepts_domain(Some("http"), "127.0.0.1:8690"));
        assert!(!o.accepts_domain(None, "phish.example"));
        assert!(o.describe().contains("https://app.example"));
        assert!(
            Origins::new(&["*".into()], &[], "x")
                .unwrap()
                .accepts_domain(None, "any")
        );
        for bad in [
            "app.example",
            "https://app.example/path",
            "https://",
            "://x",
        ] {
            assert!(Origins::new(&[bad.into()], &[], "x").is_err(), "{bad}");
        }
    }
}
