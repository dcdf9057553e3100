//! Operations: `/_nifty/healthz`, `/_nifty/readyz`, `/_nifty/metrics` (Prometheus text), the
//! proxy's own metrics, and the one log line per request.
//!
//! The library reports token calls, refreshes and their latency through the `metrics` facade
//! (feature `metrics`); the proxy installs the Prometheus recorder that collects them with its own:
//!
//! - `nifty_proxy_requests_total{status, grant_class}`: requests answered, by status and class of
//!   grant (`profile`, `grant`, `missing`, `unknown`, `reauthorization_required`, `none`);
//! - `nifty_proxy_upstream_duration_seconds`: from sending upstream to the API's answer head
//!   (token waits and the 401 retry included);
//! - `nifty_proxy_requests_in_flight`, `nifty_proxy_connections`: gauges.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use nifty_auth::GrantId;
use parking_lot::RwLock;

use super::errors::{self, GrantClass};
use super::forward::{Outcome, Proxy, GRANT_HEADER};
use super::upstream::{Mode, ReadyError};
use crate::failure::Failure;

const REQUESTS: &str = "nifty_proxy_requests_total";
const UPSTREAM_DURATION: &str = "nifty_proxy_upstream_duration_seconds";
const IN_FLIGHT: &str = "nifty_proxy_requests_in_flight";
pub(crate) const CONNECTIONS: &str = "nifty_proxy_connections";

/// Histogram buckets (seconds), from a cached-token answer on loopback to a slow refresh.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the recorder's histograms are folded into their buckets between scrapes (samples
/// wait in a queue until then: without it, memory would grow with every request).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The Prometheus recorder's handle, and the proxy's own metrics registered once (a request
/// touches them without a registry lookup).
pub(crate) struct Metrics {
    handle: PrometheusHandle,
    in_flight: Gauge,
    upstream: Histogram,
    /// `nifty_proxy_requests_total` by status and grant class, registered on first use.
    requests: RwLock<HashMap<(StatusCode, GrantClass), Counter>>,
}

impl Metrics {
    /// Installs the Prometheus recorder as the process's `metrics` recorder, and runs its upkeep.
    pub(crate) fn install() -> Result<Self, Failure> {
        let handle = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .and_then(PrometheusBuilder::install_recorder)
            .map_err(|e| Failure::unavailable("cannot set up the metrics", e))?;
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        nifty_auth::metrics::describe();
        describe_counter!(REQUESTS, "Requests answered, by status and grant class.");
        describe_histogram!(
            UPSTREAM_DURATION,
            Unit::Seconds,
            "From sending a request upstream to the API's answer head (token waits included)."
        );
        describe_gauge!(IN_FLIGHT, "Requests being handled.");
        describe_gauge!(CONNECTIONS, "Client connections open.");
        Ok(Metrics {
            handle,
            in_flight: gauge!(IN_FLIGHT),
            upstream: histogram!(UPSTREAM_DURATION),
            requests: RwLock::new(HashMap::new()),
        })
    }

    /// A request starts: in flight until its record is finished or dropped.
    pub(crate) fn start<B>(&self, request: &Request<B>) -> RequestRecord<'_> {
        self.in_flight.increment(1.0);
        RequestRecord {
            metrics: self,
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            started: Instant::now(),
            done: false,
        }
    }

    fn count(&self, status: StatusCode, class: GrantClass, upstream: Option<Duration>) {
        self.in_flight.decrement(1.0);
        let key = (status, class);
        let counted = self.requests.read().get(&key).map(|c| c.increment(1));
        if counted.is_none() {
            let counter = counter!(
                REQUESTS,
                "status" => key.0.as_str().to_owned(),
                "grant_class" => key.1.label()
            );
            counter.increment(1);
            self.requests.write().insert(key, counter);
        }
        if let Some(took) = upstream {
            self.upstream.record(took.as_secs_f64());
        }
    }

    fn render(&self, proxy: &Proxy) -> String {
        if let Mode::Grants { grants, .. } = &proxy.upstream.mode {
            nifty_auth::metrics::record_grants(grants);
        }
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// One of the proxy's own pages (`GET` or `HEAD` only).
pub(crate) async fn page(proxy: &Proxy, page: &str, request: Request<Incoming>) -> Outcome {
    let own = |response| Outcome {
        response,
        class: GrantClass::None,
        grant: None,
        upstream: None,
    };
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return own(errors::json(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the proxy's own pages answer GET only",
            None,
        ));
    }
    match page {
        "healthz" => own(errors::json(StatusCode::OK, "ok", "alive", None)),
        "readyz" => {
            // Asking about one grant may start its refresh: only for key holders.
            if request.headers().contains_key(GRANT_HEADER) {
                if let Err(response) = proxy.authenticate(&request) {
                    return own(*response);
                }
            }
            own(ready(proxy, &request).await)
        }
        "metrics" => {
            if let Err(response) = proxy.authenticate(&request) {
                return own(*response);
            }
            let mut response = errors::json(StatusCode::OK, "", "", None);
            *response.body_mut() = http_body_util::Either::Right(http_body_util::Full::new(
                bytes::Bytes::from(proxy.metrics.render(proxy)),
            ));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            own(response)
        }
        _ => own(errors::json(
            StatusCode::NOT_FOUND,
            "not_found",
            "the proxy's pages are /_nifty/healthz, /_nifty/readyz and /_nifty/metrics",
            None,
        )),
    }
}

/// `200` when a token can be had (the profile's, or that of the grant a `Nifty-Grant` header
/// names; without one, when the grants store answers), `503` with the reason otherwise.
async fn ready(proxy: &Proxy, request: &Request<Incoming>) -> errors::ProxyResponse {
    let grant = request
        .headers()
        .get(GRANT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|id| GrantId::new(id.trim()).ok());
    match proxy.upstream.ready(grant.as_ref()).await {
        Ok(()) => errors::json(StatusCode::OK, "ok", "a token can be had", grant.as_ref()),
        Err(ReadyError::Auth(e)) => errors::json(
            StatusCode::SERVICE_UNAVAILABLE,
            if e.is_reauthorization_required() {
                "reauthorization_required"
            } else {
                "token_unavailable"
            },
            &format!("no token can be had: {e}"),
            grant.as_ref(),
        ),
        Err(ReadyError::Refused) => errors::json(
            StatusCode::SERVICE_UNAVAILABLE,
            "reauthorization_required",
            "the token endpoint refused the profile's grant or the client for good (see the log): \
             run `nifty-auth login` (or fix the client credentials) and restart the proxy",
            None,
        ),
        Err(ReadyError::Store(e)) => errors::json(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &format!("the grants store does not answer: {e}"),
            None,
        ),
    }
}

/// Logs `nifty-auth proxy` events on stderr at level INFO (the library's warnings too).
pub(crate) fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

/// One request, from its start: counted in flight; logged and counted when it ends, also when the
/// client goes away before its answer (then with status 499, as nginx logs it).
pub(crate) struct RequestRecord<'a> {
    metrics: &'a Metrics,
    method: Method,
    path: String,
    started: Instant,
    done: bool,
}

/// The status of a request whose client went away before its answer.
const CLIENT_CLOSED: u16 = 499;

impl RequestRecord<'_> {
    /// The request is answered with `outcome`.
    pub(crate) fn finish(mut self, outcome: &Outcome) {
        self.done = true;
        let status = outcome.response.status();
        self.metrics.count(status, outcome.class, outcome.upstream);
        self.log(status.as_u16(), outcome.grant.as_ref());
    }

    /// The one log line of a request: method, path (never the query: it may hold data), status,
    /// latency to the answer's head, grant id. Never a header, so never a token or a key.
    fn log(&self, status: u16, grant: Option<&GrantId>) {
        tracing::info!(
            target: "nifty_auth::proxy",
            method = %self.method,
            path = %self.path.escape_debug(),
            status,
            latency_ms = %format_args!("{:.3}", self.started.elapsed().as_secs_f64() * 1000.0),
            grant = %grant.map_or("-", GrantId::as_str),
            "request"
        );
    }
}

impl Drop for RequestRecord<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Ok(status) = StatusCode::from_u16(CLIENT_CLOSED) {
                self.metrics.count(status, GrantClass::None, None);
            }
            self.log(CLIENT_CLOSED, None);
        }
    }
}
