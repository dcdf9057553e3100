//! Unit tests of the token-answer parser and of `TokenSet`'s arithmetic.

use super::*;

fn parse(body: &str) -> Result<TokenSet, AuthError> {
    TokenSet::from_token_response(body.as_bytes(), Some("old-rt"), SystemTime::now())
}

#[test]
fn parses_nifty_documented_answer_with_float_expiry() {
    let t = parse(r#"{"access_token":"a","token_type":"bearer","refresh_token":"r","expires_in":42.0,"scope":"task project"}"#).unwrap();
    assert_eq!(t.access_token(), "a");
    assert_eq!(t.refresh_token(), Some("r"));
    assert_eq!(t.scope(), Some("task project"));
    let left = t.expires_in().unwrap();
    assert!(left <= Duration::from_secs(42) && left > Duration::from_secs(40));
}

#[test]
fn accepts_array_scope_any_case_bearer_and_keeps_old_refresh_token() {
    let t = parse(r#"{"access_token":"a","token_type":"Bearer","expires_in":60,"scope":["task","time_tracking"]}"#).unwrap();
    assert_eq!(t.scope(), Some("task time_tracking"));
    assert_eq!(t.refresh_token(), Some("old-rt"));
    assert_eq!(t.token_type(), "Bearer");
}

#[test]
fn absent_expiry_is_unknown() {
    let t = parse(r#"{"access_token":"a","token_type":"bearer"}"#).unwrap();
    assert_eq!(t.expires_at(), None);
}

#[test]
fn rejects_bad_answers_without_echoing_them() {
    for (body, needle) in [
        ("", "empty"),
        ("<html>oops</html>", "not JSON"),
        ("[1]", "not a JSON object"),
        (r#"{"token_type":"bearer"}"#, "access_token"),
        (r#"{"access_token":"secret-at"}"#, "token_type"),
        (r#"{"access_token":"secret-at","token_type":"mac"}"#, "mac"),
        (
            r#"{"access_token":"secret-at","token_type":"bearer","expires_in":-5}"#,
            "negative",
        ),
        (
            r#"{"access_token":"secret-at","token_type":"bearer","expires_in":1e12}"#,
            "ten years",
        ),
        (
            r#"{"access_token":"secret-at","token_type":"bearer","expires_in":"NaN"}"#,
            "finite",
        ),
        (
            r#"{"access_token":"secret-at","token_type":"bearer","expires_in":true}"#,
            "not a number",
        ),
        (
            r#"{"access_token":"bad\ntoken","token_type":"bearer"}"#,
            "header",
        ),
    ] {
        let err = parse(body).unwrap_err();
        assert!(
            matches!(err, AuthError::InvalidResponse { .. }),
            "{body}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(needle), "{body}: {msg}");
        assert!(!msg.contains("secret-at"), "{msg}");
    }
}

#[test]
fn serde_round_trip_keeps_everything() {
    let t = parse(r#"{"access_token":"a","token_type":"bearer","refresh_token":"r","expires_in":3600,"scope":"task"}"#).unwrap();
    let json = serde_json::to_string(&t).unwrap();
    let back: TokenSet = serde_json::from_str(&json).unwrap();
    assert_eq!(back.access_token(), "a");
    assert_eq!(back.refresh_token(), Some("r"));
    assert_eq!(back.scope(), Some("task"));
    let (a, b) = (t.expires_at().unwrap(), back.expires_at().unwrap());
    let diff = a
        .duration_since(b)
        .or_else(|_| b.duration_since(a))
        .unwrap();
    assert!(diff < Duration::from_millis(1));
}

#[test]
fn huge_lifetimes_clamp_to_max_expires_in_instead_of_panicking() {
    let before = SystemTime::now();
    let t = TokenSet::new("a").with_expires_in(Duration::MAX);
    let at = t.expires_at().expect("an expiry");
    let lifetime = at.duration_since(before).expect("in the future");
    assert!(
        lifetime <= MAX_EXPIRES_IN + Duration::from_secs(1),
        "{lifetime:?}"
    );
    assert!(
        lifetime >= MAX_EXPIRES_IN - Duration::from_secs(60),
        "{lifetime:?}"
    );
    let far = SystemTime::now() + Duration::from_secs(1_000 * 365 * 86_400);
    assert!(after(far, Duration::MAX) > far);
    assert!(to_millis(far) <= far);
}

#[test]
fn an_answer_received_at_the_end_of_time_does_not_panic() {
    // The largest `SystemTime` this platform holds, found by halving steps.
    let mut end = UNIX_EPOCH;
    let mut step = Duration::MAX;
    while step > Duration::ZERO {
        if let Some(later) = end.checked_add(step) {
            end = later;
        } else {
            step /= 2;
        }
    }
    let body = br#"{"access_token":"a","token_type":"bearer","expires_in":3600}"#;
    let t = TokenSet::from_token_response(body, None, end).expect("tokens");
    assert!(t.expires_at().is_some());
}

#[test]
fn a_token_type_holding_the_access_token_is_not_quoted() {
    let token = "at-9f8e7d6c5b4a3921";
    for token_type in [
        token.to_owned(),
        format!("mac {token}"),
        "at%2D9f8e7d6c5b4a3921".to_owned(),
    ] {
        let body = serde_json::json!({"access_token": token, "token_type": token_type}).to_string();
        let err = parse(&body).unwrap_err();
        let shown = format!("{err} / {err:?}");
        assert!(
            !shown.contains(token) && !shown.contains("9f8e7d6c"),
            "{shown}"
        );
    }
}

#[test]
fn debug_hides_tokens() {
    let t = TokenSet::new("at-secret").with_refresh_token("rt-secret");
    let d = format!("{t:?}");
    assert!(!d.contains("at-secret") && !d.contains("rt-secret"), "{d}");
}
