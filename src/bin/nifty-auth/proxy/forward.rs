//! One request through the proxy: the checks (destination, proxy key, grant), the upstream request
//! (same method, path, query and end-to-end headers; the body streamed), and the answer.

use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, AUTHORIZATION, HOST};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Either;
use hyper::body::Incoming;
use nifty_auth::{AuthError, GrantId};
use tower::ServiceExt as _;

use super::body::ProxyBody;
use super::errors::{self, GrantClass, ProxyResponse};
use super::keys::ProxyKey;
use super::ops::{self, Metrics};
use super::upstream::{Mode, Upstream};

/// The header naming a request's grant (many-grants mode).
pub(crate) const GRANT_HEADER: &str = "nifty-grant";
/// The path prefix of the proxy's own pages; never forwarded.
pub(crate) const OPS_PREFIX: &str = "/_nifty/";

/// What the proxy checks requests against.
#[derive(Debug)]
pub(crate) struct Config {
    /// `scheme://authority` of the API: the only destination.
    pub(crate) api_origin: Uri,
    /// The `Host` values accepted (lowercase, with the port where one is needed); `None`: any.
    pub(crate) hosts: Option<Vec<String>>,
    pub(crate) upstream_timeout: Duration,
    /// How to log the profile in again (for the single grant's re-authorization answer).
    pub(crate) login_command: String,
}

/// Everything a connection's requests share.
pub(crate) struct Proxy {
    pub(crate) config: Config,
    /// `None` on a unix socket: its mode (0600) is the access control.
    pub(crate) key: Option<ProxyKey>,
    pub(crate) upstream: Upstream,
    pub(crate) metrics: Metrics,
}

/// A request refused before it was forwarded: the answer (boxed: the rare path).
pub(crate) type Refusal = Box<ProxyResponse>;

/// What the request log and the metrics say about one request.
pub(crate) struct Outcome {
    pub(crate) response: ProxyResponse,
    pub(crate) class: GrantClass,
    pub(crate) grant: Option<GrantId>,
    /// How long the API took to answer (forwarded requests only).
    pub(crate) upstream: Option<Duration>,
}

impl Outcome {
    fn own(response: ProxyResponse, class: GrantClass) -> Self {
        Outcome {
            response,
            class,
            grant: None,
            upstream: None,
        }
    }
}

impl Proxy {
    /// Handles one request; logs it and counts it.
    pub(crate) async fn handle(&self, request: Request<Incoming>) -> ProxyResponse {
        let record = self.metrics.start(&request);
        let outcome = self.route(request).await;
        record.finish(&outcome);
        outcome.response
    }

    async fn route(&self, request: Request<Incoming>) -> Outcome {
        if let Err(response) = self.check_destination(&request) {
            return Outcome::own(*response, GrantClass::None);
        }
        let path = request.uri().path();
        if let Some(page) = path.strip_prefix(OPS_PREFIX) {
            let page = page.to_owned();
            return ops::page(self, &page, request).await;
        }
        if let Err(response) = self.authenticate(&request) {
            return Outcome::own(*response, GrantClass::None);
        }
        let grant = match &self.upstream.mode {
            Mode::Single(_) => None,
            Mode::Grants { .. } => match grant_of(request.headers()) {
                Ok(grant) => Some(grant),
                Err(response) => return Outcome::own(*response, GrantClass::Missing),
            },
        };
        self.forward(request, grant).await
    }

    /// On TCP, the request must present the proxy key (`Authorization: Bearer <key>`).
    pub(crate) fn authenticate<B>(&self, request: &Request<B>) -> Result<(), Refusal> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let presented = request.headers().get(AUTHORIZATION);
        if key.accepts(presented.map(|v| v.as_bytes())) {
            Ok(())
        } else {
            Err(Box::new(errors::key_required(presented.is_some())))
        }
    }

    /// Only origin-form requests for this proxy's own host: no `CONNECT`, no absolute-form
    /// target, no `Host` naming another server.
    pub(crate) fn check_destination<B>(&self, request: &Request<B>) -> Result<(), Refusal> {
        if request.method() == Method::CONNECT {
            let mut response = errors::json(
                StatusCode::METHOD_NOT_ALLOWED,
                "connect_not_allowed",
                "this proxy only forwards requests to Nifty's API; CONNECT tunnels are refused",
                None,
            );
            response.headers_mut().insert(
                header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            return Err(Box::new(response));
        }
        let uri = request.uri();
        if uri.scheme().is_some() || uri.authority().is_some() || !uri.path().starts_with('/') {
            return Err(Box::new(errors::json(
                StatusCode::FORBIDDEN,
                "destination_not_allowed",
                "this proxy only reaches Nifty's API: send the path alone (origin-form), not a URL \
                 or another destination",
                None,
            )));
        }
        let host = request.headers().get(HOST).and_then(|h| h.to_str().ok());
        let allowed = match &self.config.hosts {
            None => true,
            Some(hosts) => host.is_some_and(|host| {
                let host = host.trim().to_ascii_lowercase();
                hosts.contains(&host)
            }),
        };
        if !allowed {
            return Err(Box::new(errors::json(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                "the Host header does not name this proxy: it only reaches Nifty's API (see \
                 --allow-host)",
                None,
            )));
        }
        Ok(())
    }

    async fn forward(&self, request: Request<Incoming>, grant: Option<GrantId>) -> Outcome {
        let class = if grant.is_some() {
            GrantClass::Named
        } else {
            GrantClass::Profile
        };
        let (parts, body) = request.into_parts();
        let body = match ProxyBody::read(body).await {
            Ok(body) => body,
            Err(e) => {
                let response = errors::json(
                    StatusCode::BAD_REQUEST,
                    "request_body_error",
                    &format!("the request body could not be read: {e}"),
                    grant.as_ref(),
                );
                return Outcome {
                    response,
                    class,
                    grant,
                    upstream: None,
                };
            }
        };
        let mut upstream = Request::new(body);
        *upstream.method_mut() = parts.method;
        *upstream.uri_mut() = self.upstream_uri(parts.uri.path_and_query());
        *upstream.headers_mut() = request_headers(parts.headers);
        if let Some(grant) = &grant {
            upstream.extensions_mut().insert(grant.clone());
        }

        let started = Instant::now();
        let call = self.upstream.service.clone().oneshot(upstream);
        let result = tokio::time::timeout(self.config.upstream_timeout, call).await;
        let took = Some(started.elapsed());
        let response = match result {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let response = Response::from_parts(parts, Either::Left(body));
                return Outcome {
                    response,
                    class,
                    grant,
                    upstream: took,
                };
            }
            Err(_elapsed) => errors::upstream_timeout(self.config.upstream_timeout, grant.as_ref()),
            Ok(Err(error)) => match error.downcast::<AuthError>() {
                Ok(auth) => {
                    let known = match &grant {
                        Some(grant) if auth.is_reauthorization_required() => {
                            self.upstream.knows(grant).await.ok()
                        }
                        _ => None,
                    };
                    let (response, class) = errors::token_failure(
                        &auth,
                        grant.as_ref(),
                        known,
                        &self.config.login_command,
                    );
                    return Outcome {
                        response,
                        class,
                        grant,
                        upstream: took,
                    };
                }
                Err(error) => errors::upstream_failure(&*error, grant.as_ref()),
            },
        };
        Outcome {
            response,
            class,
            grant,
            upstream: took,
        }
    }

    /// The API origin with the request's path and query.
    fn upstream_uri(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let mut parts = self.config.api_origin.clone().into_parts();
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        // The origin was checked at start (a scheme and an authority), so this cannot fail.
        Uri::from_parts(parts).unwrap_or_else(|_| self.config.api_origin.clone())
    }
}

/// The grant named by the `Nifty-Grant` header, or the `400` saying what is wrong with it.
fn grant_of(headers: &HeaderMap) -> Result<GrantId, Refusal> {
    let mut values = headers.get_all(GRANT_HEADER).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(Box::new(errors::json(
            StatusCode::BAD_REQUEST,
            "grant_required",
            "name the grant with exactly one `Nifty-Grant: <id>` header",
            None,
        )));
    };
    let invalid = |why: String| {
        Box::new(errors::json(
            StatusCode::BAD_REQUEST,
            "grant_invalid",
            &format!("the Nifty-Grant header is not a grant id: {why}"),
            None,
        ))
    };
    let id = value
        .to_str()
        .map_err(|_| invalid("it is not visible ASCII".to_owned()))?;
    GrantId::new(id.trim()).map_err(|e| invalid(e.to_string()))
}

/// The request headers sent upstream: the end-to-end ones minus the client's `Authorization` (the
/// proxy key or anything else: the layer sets the token), `Nifty-Grant`, `Host` and
/// `Content-Length` (the client sets both from the URI and the body) and `Expect`.
pub(crate) fn request_headers(mut headers: HeaderMap) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    for name in [
        AUTHORIZATION,
        header::HOST,
        header::CONTENT_LENGTH,
        header::EXPECT,
    ] {
        headers.remove(name);
    }
    headers.remove(GRANT_HEADER);
    headers
}

/// Removes the hop-by-hop headers: those of RFC 9110 section 7.6.1 and any the `Connection`
/// header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
}
