//! [`TokenSet`]: a parsed, validated token answer with an absolute expiry.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::AuthError;
use crate::redact;

/// The longest `expires_in` accepted from the token endpoint (ten years); longer is treated as garbage.
/// The largest token answer read ([`TokenSet::MAX_RESPONSE_BYTES`]).
#[doc(hidden)]
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

#[doc(hidden)]
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// A set of tokens: the access token, the refresh token (if any), and when the access token expires.
///
/// Built by the token manager from the token endpoint's answer, saved by a [`TokenStore`](crate::TokenStore),
/// and given back to [`NiftyAuth::set_tokens`](crate::NiftyAuth::set_tokens) after a re-authorization.
///
/// `Debug` never shows the tokens. The serde form (for stores) is
/// `{"access_token", "refresh_token", "token_type", "expires_at" (Unix seconds), "scope"}`.
///
/// ```
/// use std::time::Duration;
/// use nifty_auth::TokenSet;
///
/// let tokens = TokenSet::new("access-123")
///     .with_refresh_token("refresh-456")
///     .with_expires_in(Duration::from_secs(3600));
/// assert_eq!(tokens.access_token(), "access-123");
/// assert_eq!(tokens.refresh_token(), Some("refresh-456"));
/// assert!(tokens.expires_at().is_some());
/// assert!(!format!("{tokens:?}").contains("access-123"));
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredTokenSet", into = "StoredTokenSet")]
pub struct TokenSet {
    access_token: String,
    refresh_token: Option<String>,
    /// Almost always `bearer`: kept without an allocation then (one fewer per cached grant).
    token_type: Cow<'static, str>,
    expires_at: Option<SystemTime>,
    scope: Option<String>,
}

impl TokenSet {
    /// The longest `expires_in` honoured (ten years); a longer one is clamped to it.
    pub const MAX_EXPIRES_IN: Duration = MAX_EXPIRES_IN;

    /// The largest token endpoint answer read; a larger body is an
    /// [`AuthError::InvalidResponse`](crate::AuthError::InvalidResponse).
    pub const MAX_RESPONSE_BYTES: usize = MAX_TOKEN_RESPONSE_BYTES;

    /// A bearer token set holding just an access token, with unknown expiry and no refresh token.
    ///
    /// An access token that cannot be sent in a header (control characters, non-ASCII) is rejected
    /// when the set is used ([`NiftyAuth::set_tokens`](crate::NiftyAuth::set_tokens) returns an error).
    pub fn new(access_token: impl Into<String>) -> Self {
        TokenSet {
            access_token: access_token.into(),
            refresh_token: None,
            token_type: Cow::Borrowed("bearer"),
            expires_at: None,
            scope: None,
        }
    }

    /// Sets the refresh token.
    pub fn with_refresh_token(mut self, refresh_token: impl Into<String>) -> Self {
        self.refresh_token = Some(refresh_token.into());
        self
    }

    /// Sets the expiry to `expires_in` from now (wall clock, kept to the millisecond).
    ///
    /// A lifetime longer than [`MAX_EXPIRES_IN`] (ten years) is clamped to it, so even
    /// `Duration::MAX` gives a valid, far-future expiry instead of a panic.
    pub fn with_expires_in(mut self, expires_in: Duration) -> Self {
        self.expires_at = Some(to_millis(after(SystemTime::now(), expires_in)));
        self
    }

    /// Sets the absolute expiry (kept to the millisecond).
    pub fn with_expires_at(mut self, expires_at: SystemTime) -> Self {
        self.expires_at = Some(to_millis(expires_at));
        self
    }

    /// Sets the granted scope (space-separated).
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The access token.
    pub fn access_token(&self) -> &str {
        &self.access_token
    }

    /// The refresh token, if the grant has one.
    pub fn refresh_token(&self) -> Option<&str> {
        self.refresh_token.as_deref()
    }

    /// When the access token expires (wall clock); `None` when the endpoint did not say.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The granted scope, space-separated (an array answer is joined with spaces).
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The token type as the endpoint sent it (always some casing of `bearer`).
    pub fn token_type(&self) -> &str {
        &self.token_type
    }

    /// Time left until the access token expires, measured on the wall clock; `None` when unknown.
    /// Zero when already expired.
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_at.map(|at| {
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
    }

    /// The `Authorization: Bearer …` value, marked sensitive; an error if the token cannot be a header.
    pub(crate) fn bearer_header(&self) -> Result<HeaderValue, AuthError> {
        let mut value =
            HeaderValue::try_from(format!("Bearer {}", self.access_token)).map_err(|_| {
                AuthError::invalid_response(
                    "the access token holds characters not allowed in a header",
                )
            })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Checks what a token set from any source must satisfy to be used.
    pub(crate) fn validate(&self) -> Result<(), AuthError> {
        self.validate_quoting(None)
    }

    /// [`validate`](Self::validate), with one more secret an error must not quote: the refresh
    /// token the answer replaces (an endpoint may echo it in any field).
    fn validate_quoting(&self, previous_refresh_token: Option<&str>) -> Result<(), AuthError> {
        if self.access_token.is_empty() {
            return Err(AuthError::invalid_response("`access_token` is empty"));
        }
        if !self.token_type.eq_ignore_ascii_case("bearer") {
            // The type is quoted (short, redacted): an endpoint may have put a token there.
            let secrets = [
                self.access_token.as_str(),
                self.refresh_token.as_deref().unwrap_or_default(),
                previous_refresh_token.unwrap_or_default(),
            ];
            return Err(AuthError::invalid_response(format!(
                "`token_type` is `{}`, not `bearer`",
                redact::excerpt(&self.token_type, &secrets, TOKEN_TYPE_CHARS)
            )));
        }
        self.bearer_header().map(drop)?;
        if let Some(rt) = &self.refresh_token {
            if rt.is_empty() || rt.chars().any(|c| c.is_control()) {
                return Err(AuthError::invalid_response(
                    "`refresh_token` is empty or holds control characters",
                ));
            }
        }
        Ok(())
    }

    /// Parses a token endpoint success body.
    ///
    /// `previous_refresh_token` is kept when the answer carries none (refresh answers may omit it).
    pub(crate) fn from_token_response(
        body: &[u8],
        previous_refresh_token: Option<&str>,
        received_at: SystemTime,
    ) -> Result<TokenSet, AuthError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(AuthError::invalid_response("the body is empty"));
        }
        // Parse into a `Value` first: serde's typed errors quote the offending value, which could be a token.
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            AuthError::invalid_response(format!(
                "the body is not JSON ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        let Value::Object(map) = value else {
            return Err(AuthError::invalid_response("the body is not a JSON object"));
        };

        let access_token = match map.get("access_token") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(AuthError::invalid_response(
                    "`access_token` is not a string",
                ))
            }
            None => return Err(AuthError::invalid_response("`access_token` is missing")),
        };
        let token_type = match map.get("token_type") {
            Some(Value::String(s)) => token_type_of(s.clone()),
            Some(_) => return Err(AuthError::invalid_response("`token_type` is not a string")),
            None => return Err(AuthError::invalid_response("`token_type` is missing")),
        };
        let refresh_token = match map.get("refresh_token") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::String(_)) | Some(Value::Null) | None => {
                previous_refresh_token.map(str::to_owned)
            }
            Some(_) => {
                return Err(AuthError::invalid_response(
                    "`refresh_token` is not a string",
                ))
            }
        };
        let expires_at = match map.get("expires_in") {
            None | Some(Value::Null) => None,
            Some(v) => Some(to_millis(after(received_at, parse_expires_in(v)?))),
        };
        let scope = match map.get("scope") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(items)) => {
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => parts.push(s.as_str()),
                        _ => {
                            return Err(AuthError::invalid_response(
                                "`scope` array holds a non-string",
                            ))
                        }
                    }
                }
                Some(parts.join(" "))
            }
            Some(_) => {
                return Err(AuthError::invalid_response(
                    "`scope` is neither a string nor an array",
                ))
            }
        };

        let set = TokenSet {
            access_token,
            refresh_token,
            token_type,
            expires_at,
            scope,
        };
        set.validate_quoting(previous_refresh_token)?;
        Ok(set)
    }
}

/// The most of an untrusted `token_type` quoted in an error (characters).
const TOKEN_TYPE_CHARS: usize = 32;

/// `start + lifetime`, with `lifetime` clamped to [`MAX_EXPIRES_IN`] and the sum saturating at
/// `start` plus the largest lifetime the platform's `SystemTime` can hold: never a panic.
fn after(start: SystemTime, lifetime: Duration) -> SystemTime {
    let mut lifetime = lifetime.min(MAX_EXPIRES_IN);
    loop {
        if let Some(at) = start.checked_add(lifetime) {
            return at;
        }
        lifetime /= 2;
    }
}

/// Expiry times are kept to the millisecond, so they survive a store round trip exactly.
fn to_millis(at: SystemTime) -> SystemTime {
    let Ok(since_epoch) = at.duration_since(UNIX_EPOCH) else {
        return at;
    };
    let millis = Duration::from_millis(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX));
    UNIX_EPOCH.checked_add(millis).unwrap_or(at)
}

/// `expires_in` as an integer, a float (`42.0`) or a numeric string; positive and at most ten years.
fn parse_expires_in(value: &Value) -> Result<Duration, AuthError> {
    let secs = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| AuthError::invalid_response("`expires_in` is not a number"))?;
    if !secs.is_finite() {
        return Err(AuthError::invalid_response(
            "`expires_in` is not a finite number",
        ));
    }
    if secs <= 0.0 {
        return Err(AuthError::invalid_response(
            "`expires_in` is zero or negative",
        ));
    }
    if secs > MAX_EXPIRES_IN.as_secs_f64() {
        return Err(AuthError::invalid_response(
            "`expires_in` is over ten years",
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &"***")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "***"))
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish()
    }
}

/// The serde form of a [`TokenSet`] (what stores keep).
#[derive(Serialize, Deserialize)]
struct StoredTokenSet {
    access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default = "default_token_type")]
    token_type: String,
    /// Unix seconds (fractional allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// The token type as given, without an allocation for the usual spellings of `bearer`.
fn token_type_of(token_type: String) -> Cow<'static, str> {
    match token_type.as_str() {
        "bearer" => Cow::Borrowed("bearer"),
        "Bearer" => Cow::Borrowed("Bearer"),
        "BEARER" => Cow::Borrowed("BEARER"),
        _ => Cow::Owned(token_type),
    }
}

fn default_token_type() -> String {
    "bearer".to_owned()
}

impl From<TokenSet> for StoredTokenSet {
    fn from(t: TokenSet) -> Self {
        StoredTokenSet {
            access_token: t.access_token,
            refresh_token: t.refresh_token,
            token_type: t.token_type.into_owned(),
            expires_at: t.expires_at.map(|at| match at.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            }),
            scope: t.scope,
        }
    }
}

impl TryFrom<StoredTokenSet> for TokenSet {
    type Error = String;

    fn try_from(s: StoredTokenSet) -> Result<Self, Self::Error> {
        let expires_at = match s.expires_at {
            None => None,
            Some(secs) if (0.0..1e11).contains(&secs) => {
                Some(UNIX_EPOCH + Duration::from_millis((secs * 1000.0).round() as u64))
            }
            Some(_) => return Err("`expires_at` is not a valid Unix time".to_owned()),
        };
        let set = TokenSet {
            access_token: s.access_token,
            refresh_token: s.refresh_token,
            token_type: token_type_of(s.token_type),
            expires_at,
            scope: s.scope,
        };
        set.validate().map_err(|e| e.to_string())?;
        Ok(set)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
