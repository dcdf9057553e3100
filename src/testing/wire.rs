//! What the fake's endpoints speak and record: the grant types, the token endpoint's faults and
//! the recorded requests.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::Value;

use super::model::GrantKey;

/// An OAuth grant type of the token endpoint, as sent in the JSON `grant_type` field.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grant {
    /// `"grant_type": "authorization_code"`: exchanging an authorization code.
    AuthorizationCode,
    /// `"grant_type": "refresh_token"`: refreshing an access token.
    RefreshToken,
}

impl Grant {
    pub(super) fn from_wire(value: &str) -> Option<Self> {
        match value {
            "authorization_code" => Some(Self::AuthorizationCode),
            "refresh_token" => Some(Self::RefreshToken),
            _ => None,
        }
    }
}

/// A misbehaviour of the token endpoint, queued with
/// [`FakeNifty::push_token_fault`](super::FakeNifty::push_token_fault).
///
/// Each request to `/oauth/token` pops at most one queued fault (first in, first out) after it
/// has been read, counted and recorded.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum TokenFault {
    /// Answer exactly this, instead of handling the request.
    Respond {
        /// The HTTP status code (100..=999).
        status: u16,
        /// The `Content-Type` header value.
        content_type: String,
        /// The response body.
        body: String,
    },
    /// Close the TCP connection abortively (RST, `SO_LINGER` 0) without any response: the
    /// client sees a connection error.
    Reset,
    /// Never answer; the connection stays open until the client drops it (or the fake stops).
    Hang,
    /// Wait this long, then handle the request normally.
    Delay(Duration),
    /// Answer `429 Too Many Requests` with a `Retry-After` header: `retry_after` in whole
    /// seconds, rounded up (`Duration::ZERO` sends `Retry-After: 0`).
    RateLimited {
        /// How long the client is asked to wait.
        retry_after: Duration,
    },
}

impl TokenFault {
    /// [`TokenFault::Respond`] with this status, `Content-Type: application/json` and this body.
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Self::Respond {
            status,
            content_type: "application/json".to_owned(),
            body: body.into(),
        }
    }
}

/// A request the token endpoint received, as returned by
/// [`FakeNifty::token_requests`](super::FakeNifty::token_requests).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecordedTokenRequest {
    /// The request method.
    pub method: Method,
    /// The `Authorization` header, if present and visible ASCII.
    pub authorization: Option<String>,
    /// The `Content-Type` header, if present and visible ASCII.
    pub content_type: Option<String>,
    /// The `Accept` header, if present and visible ASCII.
    pub accept: Option<String>,
    /// The complete request body.
    pub body: Bytes,
    /// The body parsed as JSON, if it is JSON (whatever the `Content-Type`).
    pub json: Option<Value>,
    /// The grant whose `code` (for `authorization_code`) or `refresh_token` (for
    /// `refresh_token`, current or already rotated away) the request presented, if the fake
    /// issued it.
    pub grant: Option<GrantKey>,
}

/// A request the API received, as returned by
/// [`FakeNifty::api_requests`](super::FakeNifty::api_requests).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecordedApiRequest {
    /// The request method.
    pub method: Method,
    /// The path including the query, e.g. `/api/v1.0/tasks?project=p-1`.
    pub path: String,
    /// The `Authorization` header, if present and visible ASCII.
    pub authorization: Option<String>,
    /// Every header of the request, as received.
    pub headers: http::HeaderMap,
    /// The complete request body.
    pub body: Bytes,
    /// The status code the fake answered with.
    pub status: u16,
    /// The grant of the bearer token, if the fake issued it (valid or not).
    pub grant: Option<GrantKey>,
}
