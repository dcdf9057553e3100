//! Deciding what one token-endpoint answer means — tokens, or an [`AuthError`] that may or may not be
//! retried — without any I/O, so every branch is unit-tested without a server.

use std::time::{Duration, SystemTime};

use http::header::RETRY_AFTER;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use super::MAX_TOKEN_RESPONSE_BYTES;
use crate::error::AuthError;
use crate::redact;
use crate::token::TokenSet;

/// What one attempt came to: the tokens, or why not.
pub(crate) type Outcome = Result<TokenSet, Failure>;

/// One failed attempt: the error, and whether (and after how long at least) it may be retried.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: AuthError,
    pub(crate) retry: bool,
    pub(crate) retry_after: Option<Duration>,
}

impl Failure {
    /// A failure worth another attempt (a transport error, a timeout).
    pub(crate) fn transient(error: AuthError) -> Self {
        Failure {
            error,
            retry: true,
            retry_after: None,
        }
    }

    fn fatal(error: AuthError) -> Self {
        Failure {
            error,
            retry: false,
            retry_after: None,
        }
    }
}

/// What [`classify`] needs to know besides the answer.
#[derive(Clone, Copy)]
pub(crate) struct Context<'a> {
    /// The grant asked for (`refresh_token`, `authorization_code`), named in some errors.
    pub(crate) grant: &'static str,
    /// Strings no error may show (client secret, the refresh token or code sent …).
    pub(crate) secrets: &'a [&'a str],
    /// Kept when a refresh answer carries no new refresh token.
    pub(crate) previous_refresh_token: Option<&'a str>,
    /// What the answer's `expires_in` counts from.
    pub(crate) received_at: SystemTime,
}

/// Classifies one answer. `body` is `None` when it was larger than [`MAX_TOKEN_RESPONSE_BYTES`].
///
/// - 200/201: the token answer, or [`AuthError::InvalidResponse`] (never retried).
/// - `invalid_grant` (any status): [`AuthError::ReauthorizationRequired`].
/// - `invalid_client`/`unauthorized_client`, or 401: [`AuthError::InvalidClient`]; 403:
///   [`AuthError::Forbidden`]; 405: [`AuthError::MethodNotAllowed`].
/// - anything else: [`AuthError::Endpoint`] with a redacted excerpt; retried when 5xx or 429, after
///   at least `Retry-After` (seconds) when the answer says so.
pub(crate) fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    cx: Context<'_>,
) -> Outcome {
    let success = status == StatusCode::OK || status == StatusCode::CREATED;
    let too_big = || {
        format!(
            "the body is larger than {} KiB",
            MAX_TOKEN_RESPONSE_BYTES / 1024
        )
    };
    if success {
        return match body {
            Some(body) => {
                TokenSet::from_token_response(body, cx.previous_refresh_token, cx.received_at)
                    .map_err(Failure::fatal)
            }
            None => Err(Failure::fatal(AuthError::invalid_response(format!(
                "{} (HTTP {status})",
                too_big()
            )))),
        };
    }
    let error = match body {
        Some(body) => error_answer(status, body, cx),
        // An error answer stays an error answer (and a 5xx stays retryable) whatever its size.
        None => match error_answer(status, b"", cx) {
            AuthError::Endpoint { status, error, .. } => AuthError::Endpoint {
                status,
                error,
                excerpt: too_big(),
            },
            other => other,
        },
    };
    Err(Failure {
        retry: is_retryable(status) && !error.is_terminal(),
        retry_after: retry_after(headers),
        error,
    })
}

/// Whether an error status is worth another attempt: 5xx and 429.
fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// `Retry-After` in seconds; a number too large for a `u64` saturates (the backoff caps it anyway).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Duration::from_secs(
        value.parse::<u64>().unwrap_or(u64::MAX),
    ))
}

/// Turns a non-success answer into an [`AuthError`], echoing nothing that could be a secret.
fn error_answer(status: StatusCode, body: &[u8], cx: Context<'_>) -> AuthError {
    let json: Option<Map<String, Value>> = serde_json::from_slice(body).ok();
    let field = |name: &str| json.as_ref()?.get(name)?.as_str();
    let excerpt = |text: &str| redact::excerpt(text, cx.secrets, redact::EXCERPT_CHARS);
    let error_code = field("error").map(|code| redact::error_code(code, cx.secrets));
    let description = field("error_description")
        .or_else(|| field("message"))
        .map(excerpt);

    match error_code.as_deref() {
        Some("invalid_grant") => {
            return AuthError::ReauthorizationRequired {
                reason: match description {
                    Some(d) if !d.is_empty() => format!("invalid_grant: {d}"),
                    _ => format!(
                        "the endpoint answered invalid_grant to the {} grant",
                        cx.grant
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
                    let keys: Vec<String> = map.keys().take(8).map(|k| excerpt(k)).collect();
                    format!("JSON body with fields [{}]", keys.join(", "))
                }
                (None, None) => excerpt(&String::from_utf8_lossy(body)),
            };
            AuthError::Endpoint {
                status,
                error: error_code,
                excerpt,
            }
        }
    }
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
