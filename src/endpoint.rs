//! The token endpoint client: builds `POST /oauth/token` requests, retries transient failures with
//! capped exponential backoff and jitter, and classifies every answer into a [`TokenSet`] or an
//! [`AuthError`].

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use serde_json::{json, Value};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

use crate::clock::Clock;
use crate::stats::Counters;
use crate::store::BoxFuture;
use crate::{AuthError, BoxError, Credentials, TokenSet};

/// The largest token answer read; a larger body is an [`AuthError::InvalidResponse`].
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// The boxed HTTP client used for token calls.
pub(crate) type HttpClient =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<BoxBody<Bytes, BoxError>>, BoxError>;

/// How transient token-call failures are retried inside one refresh.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    /// Attempts in all (the first call included).
    pub(crate) attempts: u32,
    /// Delay before the second attempt; doubles after each failure.
    pub(crate) base: Duration,
    /// The longest delay.
    pub(crate) max: Duration,
}

impl Backoff {
    /// The delay after failed attempt number `attempt` (1-based): exponential, capped, with "equal
    /// jitter" (half fixed, half random) so a fleet of clients does not retry in lockstep.
    fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(self.max);
        let half = exp / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// The grant a token call asks for.
pub(crate) enum Grant<'a> {
    AuthorizationCode {
        code: &'a str,
        redirect_uri: &'a str,
        /// PKCE (RFC 7636): sent as `code_verifier` when the authorize request had a challenge.
        code_verifier: Option<&'a str>,
    },
    RefreshToken {
        refresh_token: &'a str,
    },
}

impl Grant<'_> {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Grant::AuthorizationCode { .. } => "authorization_code",
            Grant::RefreshToken { .. } => "refresh_token",
        }
    }

    fn body(&self) -> Value {
        match self {
            Grant::AuthorizationCode {
                code,
                redirect_uri,
                code_verifier,
            } => {
                let mut body = json!({
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri,
                });
                if let Some(verifier) = code_verifier {
                    body["code_verifier"] = json!(verifier);
                }
                body
            }
            Grant::RefreshToken { refresh_token } => json!({
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
            }),
        }
    }

    /// The secret this grant sends (scrubbed from any error excerpt).
    fn secret(&self) -> &str {
        match self {
            Grant::AuthorizationCode { code, .. } => code,
            Grant::RefreshToken { refresh_token } => refresh_token,
        }
    }
}

/// Talks to one token endpoint with one set of client credentials.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) url: Uri,
    credentials: Credentials,
    basic: HeaderValue,
    client: HttpClient,
    pub(crate) timeout: Duration,
    pub(crate) backoff: Backoff,
    /// What a token answer's `expires_in` counts from.
    clock: Clock,
}

/// One failed attempt: the error, and whether (and after how long at least) it may be retried.
struct Failure {
    error: AuthError,
    retry: bool,
    retry_after: Option<Duration>,
}

impl Endpoint {
    pub(crate) fn new(
        url: Uri,
        credentials: Credentials,
        client: HttpClient,
        timeout: Duration,
        backoff: Backoff,
        clock: Clock,
    ) -> Result<Self, AuthError> {
        let basic = credentials.basic_header().ok_or_else(|| {
            AuthError::config("the client credentials cannot be sent in a Basic header")
        })?;
        Ok(Endpoint {
            url,
            credentials,
            basic,
            client,
            timeout,
            backoff,
            clock,
        })
    }

    /// Runs one grant: up to `backoff.attempts` calls, retrying transport errors, timeouts, 5xx and 429.
    ///
    /// Returns the token set and the number of attempts made.
    pub(crate) fn request<'a>(
        &'a self,
        grant: &'a Grant<'a>,
        previous_refresh_token: Option<&'a str>,
        counters: &'a Counters,
    ) -> BoxFuture<'a, (Result<TokenSet, AuthError>, u32)> {
        Box::pin(self.request_inner(grant, previous_refresh_token, counters))
    }

    async fn request_inner(
        &self,
        grant: &Grant<'_>,
        previous_refresh_token: Option<&str>,
        counters: &Counters,
    ) -> (Result<TokenSet, AuthError>, u32) {
        let body = Bytes::from(grant.body().to_string());
        let mut attempt = 1;
        loop {
            let failure = match self
                .attempt(grant, body.clone(), previous_refresh_token)
                .await
            {
                Ok(tokens) => {
                    counters.token_call(Ok(()));
                    return (Ok(tokens), attempt);
                }
                Err(failure) => {
                    counters.token_call(Err(&failure.error));
                    failure
                }
            };
            if !failure.retry || attempt >= self.backoff.attempts {
                return (Err(failure.error), attempt);
            }
            let mut delay = self.backoff.delay(attempt);
            if let Some(after) = failure.retry_after {
                // Honour Retry-After, but never wait longer than the backoff's cap.
                delay = delay.max(after.min(self.backoff.max));
            }
            crate::trace::debug!(
                grant = grant.name(),
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %failure.error,
                "token call failed; retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn attempt(
        &self,
        grant: &Grant<'_>,
        body: Bytes,
        previous_refresh_token: Option<&str>,
    ) -> Result<TokenSet, Failure> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.url.clone();
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, self.basic.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));

        let client = self.client.clone();
        let call = async move {
            let response = client.oneshot(request).await.map_err(|e| Failure {
                error: AuthError::transport(e),
                retry: true,
                retry_after: None,
            })?;
            let (parts, body) = response.into_parts();
            let too_big = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|len| len > MAX_TOKEN_RESPONSE_BYTES as u64);
            let bytes = if too_big {
                None
            } else {
                read_capped(body).await.map_err(|e| Failure {
                    error: AuthError::transport(e),
                    retry: true,
                    retry_after: None,
                })?
            };
            Ok((parts, bytes))
        };
        let (parts, bytes) = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Failure {
                    error: AuthError::Timeout {
                        after: self.timeout,
                    },
                    retry: true,
                    retry_after: None,
                })
            }
        };
        let status = parts.status;
        let success = status == StatusCode::OK || status == StatusCode::CREATED;
        let Some(bytes) = bytes else {
            let too_big = format!(
                "the body is larger than {} KiB",
                MAX_TOKEN_RESPONSE_BYTES / 1024
            );
            if success {
                return Err(Failure {
                    error: AuthError::invalid_response(format!("{too_big} (HTTP {status})")),
                    retry: false,
                    retry_after: None,
                });
            }
            // An error answer stays an error answer (and a 5xx stays retryable) whatever its size.
            let error = match self.classify_error(status, b"", grant) {
                AuthError::Endpoint { status, error, .. } => AuthError::Endpoint {
                    status,
                    error,
                    excerpt: too_big,
                },
                other => other,
            };
            return Err(Failure {
                retry: is_retryable(status) && !error.is_terminal(),
                error,
                retry_after: None,
            });
        };

        if status == StatusCode::OK || status == StatusCode::CREATED {
            return TokenSet::from_token_response(&bytes, previous_refresh_token, self.clock.now())
                .map_err(|error| Failure {
                    error,
                    retry: false,
                    retry_after: None,
                });
        }

        let retry_after = parts
            .headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let error = self.classify_error(status, &bytes, grant);
        let retry = is_retryable(status) && !error.is_terminal();
        Err(Failure {
            error,
            retry,
            retry_after,
        })
    }

    /// Turns a non-success answer into an [`AuthError`], echoing nothing that could be a secret.
    fn classify_error(&self, status: StatusCode, body: &[u8], grant: &Grant<'_>) -> AuthError {
        let json: Option<serde_json::Map<String, Value>> = serde_json::from_slice(body).ok();
        let field = |name: &str| {
            json.as_ref()
                .and_then(|m| m.get(name))
                .and_then(Value::as_str)
                .map(|s| s.to_owned())
        };
        let secrets = [
            self.credentials.client_secret(),
            self.credentials.client_id(),
            grant.secret(),
        ];
        let error_code = field("error").map(|code| {
            // RFC 6749 error codes are short ASCII words; anything else is scrubbed like free text.
            let plain: String = code
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            redact(&plain, &secrets)
        });
        let description = field("error_description")
            .or_else(|| field("message"))
            .map(|d| redact(&d, &secrets));

        match error_code.as_deref() {
            Some("invalid_grant") => {
                return AuthError::ReauthorizationRequired {
                    reason: match description {
                        Some(d) if !d.is_empty() => format!("invalid_grant: {d}"),
                        _ => format!(
                            "the endpoint answered invalid_grant to the {} grant",
                            grant.name()
                        ),
                    },
                }
            }
            Some("invalid_client") | Some("unauthorized_client") => {
                return AuthError::InvalidClient { status }
            }
            _ => {}
        }
        match status {
            StatusCode::UNAUTHORIZED => AuthError::InvalidClient { status },
            StatusCode::FORBIDDEN => AuthError::Forbidden,
            StatusCode::METHOD_NOT_ALLOWED => AuthError::MethodNotAllowed,
            _ => {
                let excerpt = match (description, &json) {
                    (Some(d), _) => d,
                    // A JSON body without a description: name its fields, never their values.
                    (None, Some(map)) => {
                        let keys: Vec<String> =
                            map.keys().take(8).map(|k| redact(k, &secrets)).collect();
                        format!("JSON body with fields [{}]", keys.join(", "))
                    }
                    (None, None) => redact(&String::from_utf8_lossy(body), &secrets),
                };
                AuthError::Endpoint {
                    status,
                    error: error_code,
                    excerpt,
                }
            }
        }
    }
}

/// Whether an error status is worth another attempt: 5xx and 429.
fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// Reads a body up to [`MAX_TOKEN_RESPONSE_BYTES`]; `Ok(None)` if it is longer.
async fn read_capped(mut body: BoxBody<Bytes, BoxError>) -> Result<Option<Bytes>, BoxError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buf.len() + data.len() > MAX_TOKEN_RESPONSE_BYTES {
                return Ok(None);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Some(buf.freeze()))
}

/// A short, single-line, printable excerpt of `text` with the known secrets and anything that looks
/// like a token (a long run of token characters) replaced by `***`.
fn redact(text: &str, secrets: &[&str]) -> String {
    const MAX_CHARS: usize = 120;
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        text = text.replace(secret, "***");
    }
    let mut out = String::new();
    let mut run = String::new();
    // A run of token characters is masked when it is long (32+) or fairly long (12+) with a digit:
    // words rarely carry digits, tokens nearly always do.
    let flush = |run: &mut String, out: &mut String| {
        let len = run.chars().count();
        let has_digit = run.chars().any(|c| c.is_ascii_digit());
        if len >= 32 || (len >= 12 && has_digit) {
            out.push_str("***");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    let mut last_space = false;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || "-._~+/=".contains(c) {
            run.push(c);
            last_space = false;
            continue;
        }
        flush(&mut run, &mut out);
        if c.is_whitespace() || c.is_control() {
            if !last_space && !out.is_empty() {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
        if out.chars().count() > MAX_CHARS {
            break;
        }
    }
    flush(&mut run, &mut out);
    let trimmed = out.trim();
    if trimmed.chars().count() > MAX_CHARS {
        let cut: String = trimmed.chars().take(MAX_CHARS).collect();
        format!("{cut}…")
    } else {
        trimmed.to_owned()
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("client_id", &self.credentials.client_id())
            .field("timeout", &self.timeout)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

/// The default HTTP client for token calls: hyper-util's pooled client, HTTPS through rustls
/// (webpki roots) when the `rustls` feature is on, plain HTTP otherwise.
pub(crate) fn default_client() -> Result<HttpClient, AuthError> {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    #[cfg(feature = "rustls")]
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| AuthError::config(format!("cannot set up TLS: {e}")))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    #[cfg(not(feature = "rustls"))]
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    Ok(box_client(client))
}

/// Boxes any tower HTTP client into the [`HttpClient`] used for token calls.
pub(crate) fn box_client<S, RB>(client: S) -> HttpClient
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<RB>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    RB::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(
        client
            .map_response(|r: Response<RB>| r.map(|b| b.map_err(Into::into).boxed()))
            .map_err(Into::into),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_removes_secrets_and_token_like_runs() {
        let out = redact(
            "<html>\n<b>Error</b> token=abcdefghijklmnopqrstuvwxyz0123 for s3cret-client\n</html>",
            &["s3cret-client"],
        );
        assert!(!out.contains("abcdefghijklmnopqrstuvwxyz0123"), "{out}");
        assert!(!out.contains("s3cret-client"), "{out}");
        assert!(out.contains("Error"), "{out}");
        assert!(!out.contains('\n'));
    }

    #[test]
    fn redact_masks_short_tokens_with_digits_but_keeps_words() {
        let out = redact(
            "old token at-1-2-4f3a9c0d1e2b3c4d was revoked: invalid_refresh_token",
            &[],
        );
        assert!(!out.contains("4f3a9c0d1e2b3c4d"), "{out}");
        assert!(out.contains("invalid_refresh_token"), "{out}");
        assert!(out.contains("revoked"), "{out}");
    }

    #[test]
    fn redact_truncates() {
        let long = "word ".repeat(100);
        let out = redact(&long, &[]);
        assert!(out.chars().count() <= 121, "{}", out.len());
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let b = Backoff {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_millis(300),
        };
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d4 = b.delay(4);
            assert!(d4 >= Duration::from_millis(150) && d4 <= Duration::from_millis(300));
        }
    }
}
