//! [`Upstream`]: the crate's own layer over a hyper-util client, for the profile's grant or for the
//! grants of a store.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nifty_auth::store::TokenStore;
use nifty_auth::{AuthError, BoxError, GrantId, NiftyAuth, NiftyGrants};
use tower::util::BoxCloneSyncService;
use tower::Layer as _;

use super::body::ProxyBody;
use crate::failure::Failure;
use crate::profile::{ClientConfig, Profile};

/// The upstream service: requests in, the API's answers (streamed) out; token failures as an
/// [`AuthError`] inside the error.
pub(crate) type Service = BoxCloneSyncService<Request<ProxyBody>, Response<Incoming>, BoxError>;

/// The layer's replay policy: buffered bodies are replayed, streamed ones sent once.
fn replay(body: &ProxyBody) -> Option<ProxyBody> {
    body.try_clone()
}

/// How the proxy gets its tokens.
pub(crate) enum Mode {
    /// The profile's one grant.
    Single(NiftyAuth),
    /// Many grants, named per request by `Nifty-Grant`.
    Grants {
        grants: NiftyGrants,
        store: Arc<dyn TokenStore>,
    },
}

/// The upstream service and how it gets its tokens.
pub(crate) struct Upstream {
    pub(crate) mode: Mode,
    pub(crate) service: Service,
}

impl Upstream {
    /// The profile's grant, as `nifty-auth token` uses it.
    pub(crate) fn single(profile: &Profile) -> Result<Self, Failure> {
        let auth = profile.auth()?;
        let layer = auth.layer().clone_body_fn(replay as fn(&ProxyBody) -> _);
        let service = BoxCloneSyncService::new(layer.layer(client()?));
        Ok(Upstream {
            mode: Mode::Single(auth),
            service,
        })
    }

    /// The grants of the store `spec` (`dir:PATH`, `redis://…`, `postgres://…`), with the client
    /// credentials of the environment or the profile.
    pub(crate) async fn grants(
        profile: &Profile,
        saved: Option<&ClientConfig>,
        spec: &str,
        api_origin: &str,
    ) -> Result<Self, Failure> {
        let credentials = profile.credentials(saved)?;
        let store = open_store(spec, credentials.client_id()).await?;
        let grants = NiftyGrants::builder(credentials)
            .token_url(profile.token_url(saved))
            .allowed_origins([api_origin])
            .store(Arc::clone(&store))
            .build()
            .map_err(|e| Failure::auth(e, profile))?;
        let layer = grants.layer().clone_body_fn(replay as fn(&ProxyBody) -> _);
        let service = BoxCloneSyncService::new(layer.layer(client()?));
        Ok(Upstream {
            mode: Mode::Grants { grants, store },
            service,
        })
    }

    /// Whether a token can be had now: the profile's, or `grant`'s; for grants without one, whether
    /// the store answers.
    pub(crate) async fn ready(&self, grant: Option<&GrantId>) -> Result<(), ReadyError> {
        match (&self.mode, grant) {
            (Mode::Single(auth), _) => {
                // A refusal for good latches the grant: its cached token may still look valid, but
                // no new one will come until it is authorized again.
                if auth.stats().token_calls_failed_terminal > 0 {
                    return Err(ReadyError::Refused);
                }
                auth.access_token()
                    .await
                    .map(drop)
                    .map_err(ReadyError::Auth)
            }
            (Mode::Grants { grants, .. }, Some(grant)) => grants
                .access_token(grant)
                .await
                .map(drop)
                .map_err(ReadyError::Auth),
            (Mode::Grants { store, .. }, None) => {
                let probe = GrantId::new("nifty-auth-proxy-readyz")
                    .map_err(|e| ReadyError::Store(e.into()))?;
                store
                    .load(&probe)
                    .await
                    .map(drop)
                    .map_err(ReadyError::Store)
            }
        }
    }

    /// Whether the store knows `grant` (`Ok(false)`: it was never authorized or was removed).
    pub(crate) async fn knows(&self, grant: &GrantId) -> Result<bool, BoxError> {
        match &self.mode {
            Mode::Single(_) => Ok(true),
            Mode::Grants { store, .. } => Ok(store.load(grant).await?.is_some()),
        }
    }
}

/// Why `/_nifty/readyz` is not ready.
#[derive(Debug)]
pub(crate) enum ReadyError {
    Auth(AuthError),
    /// The token endpoint refused the grant or the client for good (`invalid_grant`, 401, 403).
    Refused,
    Store(BoxError),
}

/// The hyper-util client: https (rustls, webpki roots) or http, HTTP/1.1 and HTTP/2.
fn client() -> Result<Client<hyper_rustls::HttpsConnector<HttpConnector>, ProxyBody>, Failure> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    // Small API requests and answers: send each write at once.
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| Failure::unavailable("cannot set up TLS", e))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Opens the grants store of `--grants-store`.
async fn open_store(spec: &str, client_id: &str) -> Result<Arc<dyn TokenStore>, Failure> {
    if let Some(dir) = spec.strip_prefix("dir:") {
        if dir.is_empty() {
            return Err(Failure::usage(
                "--grants-store dir: needs a directory: dir:PATH",
            ));
        }
        return Ok(Arc::new(nifty_auth::store::FileStore::directory(dir)));
    }
    if spec.starts_with("redis://") || spec.starts_with("rediss://") {
        return redis_store(spec, client_id);
    }
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        return postgres_store(spec, client_id).await;
    }
    Err(Failure::usage(
        "--grants-store must be dir:PATH, redis://… or postgres://…",
    ))
}

#[cfg(feature = "redis")]
fn redis_store(url: &str, client_id: &str) -> Result<Arc<dyn TokenStore>, Failure> {
    let store = nifty_auth::store::RedisStore::builder(url, client_id, "proxy")
        .build()
        .map_err(|e| Failure::usage(format!("--grants-store: {e}")))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "redis"))]
fn redis_store(_: &str, _: &str) -> Result<Arc<dyn TokenStore>, Failure> {
    Err(Failure::usage(
        "this nifty-auth was built without Redis: install it with `--features cli,redis`",
    ))
}

#[cfg(feature = "postgres")]
async fn postgres_store(url: &str, client_id: &str) -> Result<Arc<dyn TokenStore>, Failure> {
    let store = nifty_auth::store::PostgresStore::connect(url, client_id)
        .map_err(|e| Failure::usage(format!("--grants-store: {e}")))?;
    store
        .migrate()
        .await
        .map_err(|e| Failure::store("cannot prepare the PostgreSQL table", e))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "postgres"))]
async fn postgres_store(_: &str, _: &str) -> Result<Arc<dyn TokenStore>, Failure> {
    Err(Failure::usage(
        "this nifty-auth was built without PostgreSQL: install it with `--features cli,postgres`",
    ))
}
