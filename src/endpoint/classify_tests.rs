//! Every branch of [`classify`], without a server.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::*;

const SECRET: &str = "cl13nt+s3cr3t/==";
const REFRESH_TOKEN: &str = "rt-0ld-refresh-7c1e";

fn at() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn cx() -> Context<'static> {
    Context {
        grant: "refresh_token",
        secrets: &[SECRET, REFRESH_TOKEN],
        previous_refresh_token: Some(REFRESH_TOKEN),
        received_at: at(),
    }
}

fn run(status: u16, headers: &HeaderMap, body: Option<&str>) -> Outcome {
    classify(
        StatusCode::from_u16(status).unwrap(),
        headers,
        body.map(str::as_bytes),
        cx(),
    )
}

fn fail(status: u16, body: Option<&str>) -> Failure {
    run(status, &HeaderMap::new(), body).expect_err("a failure")
}

fn with_retry_after(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
    headers
}

#[test]
fn ok_and_created_answers_are_tokens_stamped_at_the_receive_time() {
    for status in [200, 201] {
        let tokens = run(
            status,
            &HeaderMap::new(),
            Some(r#"{"access_token":"at-1","token_type":"bearer","expires_in":60}"#),
        )
        .expect("tokens");
        assert_eq!(tokens.access_token(), "at-1");
        assert_eq!(tokens.refresh_token(), Some(REFRESH_TOKEN), "kept");
        assert_eq!(tokens.expires_at(), Some(at() + Duration::from_secs(60)));
    }
}

#[test]
fn an_unusable_success_answer_is_invalid_response_and_not_retried() {
    let f = fail(200, Some("<html>"));
    assert!(
        matches!(f.error, AuthError::InvalidResponse { .. }),
        "{f:?}"
    );
    assert!(!f.retry);
}

#[test]
fn an_oversized_success_answer_is_invalid_response_and_not_retried() {
    let f = fail(200, None);
    let AuthError::InvalidResponse { reason } = &f.error else {
        panic!("{f:?}");
    };
    assert!(
        reason.contains("larger than 64 KiB") && reason.contains("200"),
        "{reason}"
    );
    assert!(!f.retry);
}

#[test]
fn invalid_grant_requires_reauthorization_whatever_the_status_and_is_never_retried() {
    for status in [400, 401, 503] {
        let f = fail(
            status,
            Some(r#"{"error":"invalid_grant","error_description":"revoked"}"#),
        );
        let AuthError::ReauthorizationRequired { reason } = &f.error else {
            panic!("{f:?}");
        };
        assert_eq!(reason, "invalid_grant: revoked");
        assert!(!f.retry, "{status}");
    }
}

#[test]
fn invalid_grant_without_a_description_names_the_grant() {
    let f = fail(400, Some(r#"{"error":"invalid_grant"}"#));
    let AuthError::ReauthorizationRequired { reason } = &f.error else {
        panic!("{f:?}");
    };
    assert!(reason.contains("refresh_token grant"), "{reason}");
}

#[test]
fn invalid_or_unauthorized_client_codes_and_401_are_invalid_client() {
    for (status, body) in [
        (400, r#"{"error":"invalid_client"}"#),
        (400, r#"{"error":"unauthorized_client"}"#),
        (401, ""),
        (401, r#"{"error":"something_else"}"#),
    ] {
        let f = fail(status, Some(body));
        assert!(
            matches!(f.error, AuthError::InvalidClient { status: s } if s.as_u16() == status),
            "{f:?}"
        );
        assert!(!f.retry);
    }
}

#[test]
fn status_403_is_forbidden_and_405_method_not_allowed() {
    let f = fail(403, Some("no"));
    assert!(matches!(f.error, AuthError::Forbidden) && !f.retry, "{f:?}");
    let f = fail(405, Some(""));
    assert!(
        matches!(f.error, AuthError::MethodNotAllowed) && !f.retry,
        "{f:?}"
    );
    assert!(!f.error.is_terminal());
}

#[test]
fn a_5xx_is_a_retried_endpoint_error_with_its_code_and_description() {
    let f = fail(
        500,
        Some(r#"{"error":"server_error","error_description":"try later"}"#),
    );
    let AuthError::Endpoint {
        status,
        error,
        excerpt,
    } = &f.error
    else {
        panic!("{f:?}");
    };
    assert_eq!(*status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error.as_deref(), Some("server_error"));
    assert_eq!(excerpt, "try later");
    assert!(f.retry && f.retry_after.is_none());
}

#[test]
fn a_message_field_is_the_excerpt_when_there_is_no_description() {
    let f = fail(502, Some(r#"{"message":"upstream down"}"#));
    assert!(
        matches!(&f.error, AuthError::Endpoint { excerpt, error: None, .. } if excerpt == "upstream down"),
        "{f:?}"
    );
}

#[test]
fn a_4xx_other_than_401_403_405_is_an_endpoint_error_not_retried() {
    let f = fail(400, Some(r#"{"error":"invalid_request"}"#));
    assert!(
        matches!(&f.error, AuthError::Endpoint { error: Some(e), .. } if e == "invalid_request"),
        "{f:?}"
    );
    assert!(!f.retry);
}

#[test]
fn a_429_is_retried_after_its_retry_after_seconds() {
    let f = run(429, &with_retry_after(" 7 "), Some("")).unwrap_err();
    assert!(f.retry);
    assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
}

#[test]
fn a_huge_retry_after_saturates_and_odd_ones_are_ignored() {
    let f = run(503, &with_retry_after("99999999999999999999"), Some("")).unwrap_err();
    assert_eq!(f.retry_after, Some(Duration::from_secs(u64::MAX)));
    for odd in ["Wed, 21 Oct 2015 07:28:00 GMT", "-1", "1.5", ""] {
        let f = run(503, &with_retry_after(odd), Some("")).unwrap_err();
        assert_eq!(f.retry_after, None, "{odd}");
    }
}

#[test]
fn a_json_body_without_a_description_shows_field_names_never_values() {
    let f = fail(500, Some(r#"{"trace":"at-PLANTED-7c1e9a04","code":7}"#));
    let AuthError::Endpoint { excerpt, .. } = &f.error else {
        panic!("{f:?}");
    };
    assert_eq!(excerpt, "JSON body with fields [code, trace]");
}

#[test]
fn a_text_body_is_a_redacted_excerpt() {
    let f = fail(
        500,
        Some("<h1>Oops</h1>\nsecret=cl13nt%2Bs3cr3t%2F%3D%3D\n"),
    );
    let AuthError::Endpoint { excerpt, .. } = &f.error else {
        panic!("{f:?}");
    };
    assert_eq!(excerpt, "<h1>Oops</h1> secret=***");
}

#[test]
fn an_oversized_5xx_stays_a_retried_endpoint_error() {
    let f = run(503, &with_retry_after("2"), None).unwrap_err();
    assert!(
        matches!(&f.error, AuthError::Endpoint { excerpt, .. } if excerpt.contains("larger than 64 KiB")),
        "{f:?}"
    );
    assert!(f.retry);
    assert_eq!(f.retry_after, Some(Duration::from_secs(2)));
    let f = fail(401, None);
    assert!(matches!(f.error, AuthError::InvalidClient { .. }), "{f:?}");
}

#[test]
fn secrets_in_codes_and_descriptions_never_show() {
    let encoded = "cl13nt%2Bs3cr3t%2F%3D%3D";
    let body = format!(
        r#"{{"error":"{SECRET}","error_description":"secret {encoded} and token {REFRESH_TOKEN}"}}"#
    );
    let f = fail(400, Some(&body));
    let shown = format!("{} / {:?}", f.error, f.error);
    for needle in [SECRET, encoded, REFRESH_TOKEN, "s3cr3t", "0ld-refresh"] {
        assert!(!shown.contains(needle), "{needle} in {shown}");
    }
}
