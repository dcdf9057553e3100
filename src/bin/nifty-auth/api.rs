//! `nifty-auth api METHOD PATH`: one API call through the crate's own layer.

use std::io::{IsTerminal as _, Write as _};

use bytes::Bytes;
use clap::Args;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nifty_auth::AuthError;
use tower::{ServiceBuilder, ServiceExt as _};

use crate::failure::Failure;
use crate::profile::Profile;

/// The largest API answer read.
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Args)]
pub(crate) struct ApiArgs {
    /// The HTTP method: GET, POST, PUT, PATCH, DELETE …
    method: String,
    /// The path under the API base, e.g. `/projects` or `/tasks?project_id=…`.
    path: String,
    /// A JSON request body (sent with `Content-Type: application/json`).
    #[arg(long, value_name = "JSON")]
    data: Option<String>,
}

pub(crate) async fn api(profile: &Profile, args: &ApiArgs) -> Result<(), Failure> {
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| Failure::usage(format!("`{}` is not an HTTP method", args.method)))?;
    if !args.path.starts_with('/') {
        return Err(Failure::usage(format!(
            "the path `{}` must start with `/`, e.g. /projects",
            args.path
        )));
    }
    if let Some(data) = &args.data {
        serde_json::from_str::<serde_json::Value>(data).map_err(|e| {
            Failure::usage(format!(
                "--data is not JSON (line {} column {})",
                e.line(),
                e.column()
            ))
        })?;
    }
    let saved = profile.load_client()?;
    let url = format!("{}{}", profile.api_url(saved.as_ref()), args.path);
    let auth = profile.auth()?;

    let mut request = Request::builder()
        .method(method)
        .uri(&url)
        .header(header::ACCEPT, HeaderValue::from_static("application/json"));
    if args.data.is_some() {
        request = request.header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    let body = Bytes::from(args.data.clone().unwrap_or_default());
    let request = request
        .body(Full::new(body))
        .map_err(|e| Failure::usage(format!("cannot build a request for `{url}`: {e}")))?;

    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| Failure::unavailable("cannot set up TLS", e))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    let service = ServiceBuilder::new().layer(auth.layer()).service(client);
    let response = service
        .oneshot(request)
        .await
        .map_err(|e| match e.downcast::<AuthError>() {
            Ok(auth_error) => Failure::auth(*auth_error, profile),
            Err(e) => Failure::unavailable(format_args!("the API at {url} is unavailable"), e),
        })?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| Failure::unavailable("cannot read the API's answer", e))?
        .to_bytes();

    let mut stdout = std::io::stdout().lock();
    let pretty = std::io::stdout()
        .is_terminal()
        .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .flatten()
        .and_then(|json| serde_json::to_string_pretty(&json).ok());
    let written = match pretty {
        Some(text) => writeln!(stdout, "{text}"),
        None => stdout.write_all(&body),
    };
    written
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::usage(format!("cannot write to stdout: {e}")))?;

    if status == StatusCode::UNAUTHORIZED {
        return Err(Failure::reauthorize(format!(
            "the API answered {status} even with a fresh token: run `{}`",
            profile.login_command()
        )));
    }
    if !status.is_success() {
        return Err(Failure::api(format!("the API answered {status}")));
    }
    Ok(())
}
