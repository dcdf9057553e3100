//! The fake's authorize page (approves at once, or refuses once if asked to) and its small API
//! (`/api/v1.0/...`, answering by the bearer token).

use std::collections::HashMap;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, LOCATION, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Body;
use serde_json::json;

use super::server::{header_string, json_response, oauth_error, Inner};
use super::wire::RecordedApiRequest;

impl Inner {
    /// The authorize page: approves at once (or refuses once if asked to) and redirects.
    pub(super) fn authorize<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let mut params = HashMap::new();
        for (key, value) in
            form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
        {
            params.insert(key.into_owned(), value.into_owned());
        }
        let mut st = self.state.lock();
        st.counts.authorize_calls += 1;
        let param = |name: &str| params.get(name).map(String::as_str);
        if request.method() != Method::GET
            || param("response_type") != Some("code")
            || param("client_id") != Some(self.client_id.as_str())
        {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        }
        let Some(redirect_uri) = param("redirect_uri").filter(|r| r.parse::<http::Uri>().is_ok())
        else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        };
        // PKCE (RFC 7636): only S256 is accepted; the exchange must then prove the verifier.
        let challenge = param("code_challenge").map(str::to_owned);
        if challenge.is_some() && param("code_challenge_method") != Some("S256") {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        }
        let mut query = form_urlencoded::Serializer::new(String::new());
        if std::mem::take(&mut st.deny_next_authorization) {
            query.append_pair("error", "access_denied");
            query.append_pair("error_description", "The user denied the request");
        } else {
            let grant = st.model.new_grant();
            let code = st.model.issue_code(grant, redirect_uri, challenge);
            query.append_pair("code", &code);
        }
        if let Some(state) = param("state") {
            query.append_pair("state", state);
        }
        let separator = if redirect_uri.contains('?') { '&' } else { '?' };
        let location = format!("{redirect_uri}{separator}{}", query.finish());
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::FOUND;
        match HeaderValue::try_from(location) {
            Ok(location) => {
                response.headers_mut().insert(LOCATION, location);
                response
            }
            Err(_) => oauth_error(StatusCode::BAD_REQUEST, "invalid_request"),
        }
    }

    /// The API: `200` to a live bearer token (`users/me` says which grant it belongs to), `401`
    /// otherwise, or a queued status.
    pub(super) async fn api<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
    {
        self.state.lock().counts.api_calls += 1;
        let (parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
        let authorization = header_string(&parts.headers, AUTHORIZATION);
        let body = body
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        let held = self.state.lock().api_holds.pop_front();
        if let Some(held) = held {
            held.wait().await;
        }
        let token = authorization.as_deref().and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });

        let mut st = self.state.lock();
        let grant = token.and_then(|token| st.model.grant_of_access_token(token));
        st.model.count(grant, |c| c.api_calls += 1);
        let mut response = if let Some(status) = st.api_statuses.pop_front() {
            let message = status.canonical_reason().unwrap_or("fake status");
            json_response(status, &json!({ "message": message }))
        } else if let Some(body) = st.api_bodies.pop_front() {
            let mut response = Response::new(Full::new(body));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        } else {
            if let Some(overdue) = token.and_then(|token| st.model.access_token_overdue(token)) {
                st.counts.expired_received += 1;
                st.counts.max_overdue = st.counts.max_overdue.max(overdue);
            }
            if token.is_some_and(|token| st.model.access_token_valid(token)) {
                let body = match (&parts.method, parts.uri.path()) {
                    (&Method::GET, "/api/v1.0/users/me") => json!({
                        "id": "u-1",
                        "email": "dev@example.com",
                        "name": "Fake Dev",
                        "grant": grant.map(|g| g.get()),
                    }),
                    (&Method::GET, "/api/v1.0/projects") => json!({
                        "projects": [
                            { "id": "p-1", "name": "Launch" },
                            { "id": "p-2", "name": "Roadmap" }
                        ]
                    }),
                    (method, _) => json!({
                        "ok": true,
                        "method": method.as_str(),
                        "path": path,
                        "body_len": body.len(),
                    }),
                };
                json_response(StatusCode::OK, &body)
            } else {
                json_response(
                    StatusCode::UNAUTHORIZED,
                    &json!({ "message": "unauthorized" }),
                )
            }
        };
        if response.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            st.counts.unauthorized += 1;
            st.model.count(grant, |c| c.unauthorized += 1);
        }
        st.api_requests.push(RecordedApiRequest {
            method: parts.method,
            path,
            authorization,
            headers: parts.headers,
            body,
            status: response.status().as_u16(),
            grant,
        });
        drop(st);
        self.changed();
        response
    }
}
