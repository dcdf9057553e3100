//! The proxy's own answers: a JSON body `{"error": code, "message": …}` (and `"grant"` when one is
//! concerned). Messages never hold a token, a key or a secret.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use nifty_auth::{AuthError, GrantId};
use serde_json::json;

/// What the proxy answers: the API's streamed body, or one of its own.
pub(crate) type ProxyResponse = Response<Either<Incoming, Full<Bytes>>>;

/// How a request was classed for the metrics (never a grant id: bounded label values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum GrantClass {
    /// Not up to choosing a grant (rejected before, or an operations page).
    None,
    /// The profile's grant (single-grant mode).
    Profile,
    /// A grant named by `Nifty-Grant`.
    Named,
    /// No (or an invalid) `Nifty-Grant` header.
    Missing,
    /// A grant the store does not know.
    Unknown,
    /// A grant that needs re-authorization.
    Reauthorize,
}

impl GrantClass {
    pub(crate) fn label(self) -> &'static str {
        match self {
            GrantClass::None => "none",
            GrantClass::Profile => "profile",
            GrantClass::Named => "grant",
            GrantClass::Missing => "missing",
            GrantClass::Unknown => "unknown",
            GrantClass::Reauthorize => "reauthorization_required",
        }
    }
}

/// A JSON answer of the proxy itself.
pub(crate) fn json(
    status: StatusCode,
    error: &str,
    message: &str,
    grant: Option<&GrantId>,
) -> ProxyResponse {
    let mut body = json!({ "error": error, "message": message });
    if let Some(grant) = grant {
        body["grant"] = json!(grant.as_str());
    }
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `401` for a missing or wrong proxy key.
pub(crate) fn key_required(present: bool) -> ProxyResponse {
    let (error, message) = if present {
        (
            "proxy_key_invalid",
            "the proxy key is wrong: send `Authorization: Bearer <proxy key>`",
        )
    } else {
        (
            "proxy_key_required",
            "this proxy needs its key: send `Authorization: Bearer <proxy key>`",
        )
    };
    let mut response = json(StatusCode::UNAUTHORIZED, error, message, None);
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"nifty-auth proxy\""),
    );
    response
}

/// The answer to a token failure of `grant` (or the profile's, `login` saying how to log in
/// again), and its class.
pub(crate) fn token_failure(
    error: &AuthError,
    grant: Option<&GrantId>,
    known: Option<bool>,
    login: &str,
) -> (ProxyResponse, GrantClass) {
    let class = if grant.is_some() {
        GrantClass::Named
    } else {
        GrantClass::Profile
    };
    if error.is_reauthorization_required() {
        return match (grant, known) {
            (Some(grant), Some(false)) => (
                json(
                    StatusCode::NOT_FOUND,
                    "unknown_grant",
                    &format!(
                        "the grants store has no grant `{grant}` (never authorized, or removed)"
                    ),
                    Some(grant),
                ),
                GrantClass::Unknown,
            ),
            (Some(grant), _) => (
                json(
                    StatusCode::UNAUTHORIZED,
                    "reauthorization_required",
                    &format!("grant `{grant}` needs re-authorization: {error}"),
                    Some(grant),
                ),
                GrantClass::Reauthorize,
            ),
            (None, _) => (
                json(
                    StatusCode::UNAUTHORIZED,
                    "reauthorization_required",
                    &format!("the profile's grant needs re-authorization ({error}): run `{login}`"),
                    None,
                ),
                GrantClass::Reauthorize,
            ),
        };
    }
    let (status, code) = if error.is_timeout() {
        (StatusCode::GATEWAY_TIMEOUT, "token_endpoint_timeout")
    } else {
        (StatusCode::BAD_GATEWAY, "token_unavailable")
    };
    let message = format!("no token could be had from Nifty's token endpoint: {error}");
    (json(status, code, &message, grant), class)
}

/// The answer to an upstream (API) failure: `504` for a timeout, `502` otherwise, naming the cause.
pub(crate) fn upstream_failure(
    error: &(dyn std::error::Error + 'static),
    grant: Option<&GrantId>,
) -> ProxyResponse {
    let mut cause = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !cause.contains(&text) {
            cause.push_str(": ");
            cause.push_str(&text);
        }
        source = inner.source();
    }
    let connect = error
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(hyper_util::client::legacy::Error::is_connect);
    let code = if connect {
        "api_unreachable"
    } else {
        "api_error"
    };
    json(
        StatusCode::BAD_GATEWAY,
        code,
        &format!("the API could not be reached or broke off: {cause}"),
        grant,
    )
}

/// `504`: the API did not start answering in time.
pub(crate) fn upstream_timeout(
    after: std::time::Duration,
    grant: Option<&GrantId>,
) -> ProxyResponse {
    json(
        StatusCode::GATEWAY_TIMEOUT,
        "api_timeout",
        &format!("the API did not answer within {} s", after.as_secs()),
        grant,
    )
}
