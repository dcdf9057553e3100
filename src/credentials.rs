//! OAuth client credentials, sent to the token endpoint as HTTP Basic.

use std::fmt;

use base64::Engine as _;
use http::HeaderValue;

/// The OAuth client id and secret of a Nifty app ("Integrate with API" in Nifty's App Center).
///
/// They are sent to the token endpoint as `Authorization: Basic base64(id:secret)`. The secret never
/// appears in `Debug` output, logs or errors.
///
/// ```
/// use nifty_auth::Credentials;
///
/// let creds = Credentials::new("client-id", "client-secret");
/// assert_eq!(creds.client_id(), "client-id");
/// assert!(!format!("{creds:?}").contains("client-secret"));
/// ```
#[derive(Clone)]
pub struct Credentials {
    client_id: String,
    client_secret: String,
}

impl Credentials {
    /// Client credentials from an id and a secret.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
        }
    }

    /// The client id (not a secret).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The client secret.
    pub fn client_secret(&self) -> &str {
        &self.client_secret
    }

    /// The `Authorization: Basic …` value for the token endpoint, marked sensitive.
    ///
    /// Returns `None` if the id or secret holds characters that cannot go into a header (they cannot:
    /// base64 output is always header-safe; this only guards against future changes).
    pub(crate) fn basic_header(&self) -> Option<HeaderValue> {
        let raw = format!("{}:{}", self.client_id, self.client_secret);
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_matches_nifty_docs_example() {
        let creds = Credentials::new("Client_ID", "Client_Secret");
        let header = creds.basic_header().expect("header");
        assert_eq!(header, "Basic Q2xpZW50X0lEOkNsaWVudF9TZWNyZXQ=");
        assert!(header.is_sensitive());
    }

    #[test]
    fn debug_hides_secret() {
        let creds = Credentials::new("id", "s3cr3t-value");
        let debug = format!("{creds:?}");
        assert!(debug.contains("id"));
        assert!(!debug.contains("s3cr3t-value"));
    }
}
