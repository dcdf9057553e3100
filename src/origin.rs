//! The allowed-origins matcher: where the bearer token may be sent.

use std::fmt;

use http::uri::Scheme;
use http::Uri;

use crate::error::AuthError;

/// One origin: scheme, host and port (the default port filled in).
#[derive(Clone, PartialEq, Eq)]
struct Origin {
    https: bool,
    host: Box<str>,
    port: u16,
}

/// The set of origins the bearer token may go to. Relative URIs (no authority) count as allowed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Origins {
    list: Vec<Origin>,
    /// The hot path's shortcut: each origin's scheme with the authority strings a URI of it usually
    /// carries (`host`, and `host:port` with the default port spelled out).
    fast: Vec<(Scheme, Box<str>)>,
}

impl Origins {
    /// Parses origins such as `https://openapi.niftypm.com` or `http://127.0.0.1:8080`.
    pub(crate) fn parse<I, T>(origins: I) -> Result<Self, AuthError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let mut list = Vec::new();
        for origin in origins {
            let text = origin.as_ref();
            let uri: Uri = text.parse().map_err(|e| {
                AuthError::config(format!("allowed origin `{text}` is not a URL: {e}"))
            })?;
            let path_ok = uri
                .path_and_query()
                .is_none_or(|pq| pq.as_str() == "/" || pq.as_str().is_empty());
            if !path_ok {
                return Err(AuthError::config(format!(
                    "allowed origin `{text}` has a path or query: give scheme, host and port only"
                )));
            }
            let origin = Origin::of(&uri).ok_or_else(|| {
                AuthError::config(format!(
                    "allowed origin `{text}` needs an http or https scheme and a host"
                ))
            })?;
            if !list.contains(&origin) {
                list.push(origin);
            }
        }
        Ok(Origins::new(list))
    }

    fn new(list: Vec<Origin>) -> Self {
        let mut fast = Vec::new();
        for o in &list {
            let scheme = if o.https { Scheme::HTTPS } else { Scheme::HTTP };
            let default = if o.https { 443 } else { 80 };
            if o.port == default {
                fast.push((scheme.clone(), o.host.clone()));
            }
            fast.push((scheme, format!("{}:{}", o.host, o.port).into_boxed_str()));
        }
        Origins { list, fast }
    }

    /// The origin of `uri` alone (the default: the token URL's origin).
    pub(crate) fn of_uri(uri: &Uri) -> Result<Self, AuthError> {
        let origin = Origin::of(uri)
            .ok_or_else(|| AuthError::config(format!("`{uri}` has no http(s) origin")))?;
        Ok(Origins::new(vec![origin]))
    }

    /// Whether the bearer may be attached to a request for `uri`.
    #[inline]
    pub(crate) fn allows(&self, uri: &Uri) -> bool {
        let Some(authority) = uri.authority() else {
            // A relative URI goes wherever the inner service sends everything: same origin.
            return true;
        };
        if let Some(scheme) = uri.scheme() {
            let text = authority.as_str();
            if self
                .fast
                .iter()
                .any(|(s, a)| s == scheme && a.eq_ignore_ascii_case(text))
            {
                return true;
            }
        }
        // Anything else (user info, odd spellings) gets the full comparison.
        match uri.scheme_str() {
            Some(scheme) => self.allows_origin(scheme, authority.host(), authority.port_u16()),
            None => false,
        }
    }

    /// Whether the bearer may go to `scheme://host:port` (`port`: `None` for the scheme's default).
    #[inline]
    pub(crate) fn allows_origin(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let https = if scheme.eq_ignore_ascii_case("https") {
            true
        } else if scheme.eq_ignore_ascii_case("http") {
            false
        } else {
            return false;
        };
        let port = port.unwrap_or(if https { 443 } else { 80 });
        self.list
            .iter()
            .any(|o| o.https == https && o.port == port && o.host.eq_ignore_ascii_case(host))
    }
}

impl Origin {
    fn of(uri: &Uri) -> Option<Origin> {
        let https = match uri.scheme_str()? {
            s if s.eq_ignore_ascii_case("https") => true,
            s if s.eq_ignore_ascii_case("http") => false,
            _ => return None,
        };
        let authority = uri.authority()?;
        let host = authority.host();
        if host.is_empty() {
            return None;
        }
        Some(Origin {
            https,
            host: host.to_ascii_lowercase().into_boxed_str(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
        })
    }
}

impl fmt::Debug for Origins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|o| {
                format!(
                    "{}://{}:{}",
                    if o.https { "https" } else { "http" },
                    o.host,
                    o.port
                )
            }))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn matches_scheme_host_and_port_with_defaults() {
        let o = Origins::parse(["https://openapi.niftypm.com", "http://127.0.0.1:8080/"]).unwrap();
        assert!(o.allows(&uri("https://openapi.niftypm.com/api/v1.0/projects")));
        assert!(o.allows(&uri("https://OPENAPI.niftypm.com:443/x")));
        assert!(o.allows(&uri("http://127.0.0.1:8080/x")));
        assert!(o.allows(&uri("/relative/path")));
        assert!(
            !o.allows(&uri("http://openapi.niftypm.com/x")),
            "scheme differs"
        );
        assert!(
            !o.allows(&uri("https://openapi.niftypm.com:8443/x")),
            "port differs"
        );
        assert!(!o.allows(&uri("https://evil.example/x")));
        assert!(!o.allows(&uri("https://openapi.niftypm.com.evil.example/x")));
        assert!(!o.allows(&uri("http://127.0.0.1:8081/x")));
    }

    #[test]
    fn rejects_origins_with_paths_or_without_scheme() {
        assert!(Origins::parse(["https://a.example/api"]).is_err());
        assert!(Origins::parse(["a.example"]).is_err());
        assert!(Origins::parse(["ftp://a.example"]).is_err());
    }
}
