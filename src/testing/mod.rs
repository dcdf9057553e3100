//! A fake Nifty PM OAuth token endpoint and API on `127.0.0.1`, for tests.
//!
//! [`FakeNifty`] is a real HTTP/1.1 server on a random loopback port, spawned on the *current*
//! tokio runtime, or (started with [`FakeNiftyBuilder::start_in_process`]) the same handler with
//! no socket at all, reached through [`FakeNifty::service`]: a tower `Service` to pass as the
//! crate's HTTP client and as the API service. It implements just enough of Nifty to exercise an
//! OAuth client:
//!
//! * `POST /oauth/token` with HTTP Basic client authentication and a JSON body, for the
//!   `authorization_code` and `refresh_token` grants, with refresh-token rotation and
//!   replay detection (a reused, already rotated refresh token revokes the whole grant, as
//!   RFC 9700 section 4.14.2 recommends);
//! * `/api/v1.0/...` answering `200` to a live bearer token and `401` otherwise.
//!
//! Every request is counted and recorded, and knobs change its behaviour at any time: token
//! lifetime, rotation, a delay before every token answer, queued token endpoint faults
//! ([`TokenFault`]: a canned answer, a `429` with `Retry-After`, a connection reset, a hang, a
//! delay) and queued API statuses.
//!
//! Many grants (one per user or workspace that connected the app) live side by side:
//! [`FakeNifty::new_grant`] returns a [`FakeGrant`] that issues that grant's codes and tokens,
//! counts its token and API calls, and revokes it without touching the others. `GET
//! /api/v1.0/users/me` answers which grant its bearer belongs to (`"grant": n`, see
//! [`GrantKey`]), and so does [`FakeNifty::grant_of_bearer`]. The single-grant methods
//! ([`FakeNifty::issue_refresh_token`], [`FakeNifty::current_refresh_token`], …) keep working:
//! each `issue_*` starts a new grant, and `current_refresh_token` follows the most recently used
//! one.
//!
//! All timing uses [`tokio::time`], so tests can expire access tokens with `tokio::time::advance`
//! under `tokio::time::pause()`, in process only: with a real socket the paused clock jumps ahead
//! while a read is pending, and timeouts fire that real time would never fire. The server stops
//! when the last clone of the [`FakeNifty`] is dropped. [`FakeNifty::wait_until`] waits for an
//! event at the fake (a token call arriving or answered, an API call answered) instead of a sleep.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use nifty_auth::testing::{FakeNifty, Grant};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let fake = FakeNifty::start().await?;
//! let refresh_token = fake.issue_refresh_token();
//!
//! let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let body = serde_json::json!({ "grant_type": "refresh_token", "refresh_token": refresh_token });
//! let request = http::Request::post(fake.token_url())
//!     .header("authorization", "Basic ZmFrZS1jbGllbnQtaWQ6ZmFrZS1jbGllbnQtc2VjcmV0")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from(body.to_string())))?;
//! let response = client.request(request).await?;
//! assert_eq!(response.status(), 201);
//! let tokens: serde_json::Value =
//!     serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
//!
//! let access_token = tokens["access_token"].as_str().unwrap_or_default();
//! let request = http::Request::get(fake.api_url("/users/me"))
//!     .header("authorization", format!("Bearer {access_token}"))
//!     .body(Full::new(Bytes::new()))?;
//! assert_eq!(client.request(request).await?.status(), 200);
//!
//! assert_eq!(fake.token_calls_for(Grant::RefreshToken), 1);
//! assert_eq!(fake.api_calls(), 1);
//! // With rotation on (the default), the refresh token was replaced.
//! assert_ne!(fake.current_refresh_token(), Some(refresh_token));
//! # Ok(())
//! # }
//! ```

mod builder;
mod fake;
mod grant;
mod hold;
mod model;
mod pages;
mod server;
mod service;
mod wire;

pub use builder::FakeNiftyBuilder;
pub use fake::FakeNifty;
pub use grant::FakeGrant;
pub use hold::{ApiHold, TokenHold};
pub use model::GrantKey;
pub use service::FakeService;
pub use wire::{Grant, RecordedApiRequest, RecordedTokenRequest, TokenFault};
