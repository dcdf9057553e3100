//! Known secrets stay out of error excerpts in every encoding an endpoint may echo them in: raw,
//! percent-encoded (either hex case, `+` for space), JSON-escaped, and base64 (standard or URL-safe,
//! padded or not, at every byte alignment).

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

use super::*;

/// A client secret with every character encodings treat specially.
const CLIENT_SECRET: &str = "q0Zk+Lm3/Wx=9%Tb&Rc7 ~Vp2";
/// A refresh token of the same kind.
const REFRESH_TOKEN: &str = "rT8+/pQ=%2Bk9 zY/w+Lm==";

/// Every form of `secret` an endpoint might echo.
fn encodings(secret: &str) -> Vec<String> {
    let upper: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let lower = lowercase_hex(&upper);
    let all_percent: String = secret.bytes().map(|b| format!("%{b:02X}")).collect();
    let json = serde_json::to_string(secret).unwrap();
    let json = json[1..json.len() - 1].replace('/', "\\/");
    let unicode: String = secret
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect();
    let mut forms = vec![secret.to_owned(), upper, lower, all_percent, json, unicode];
    for prefix in ["", "u", "us", "user:"] {
        let data = format!("{prefix}{secret}");
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            forms.push(engine.encode(&data));
        }
    }
    forms
}

/// `%2B` → `%2b`, leaving everything else as it is.
fn lowercase_hex(encoded: &str) -> String {
    let mut out = String::new();
    let mut rest = encoded;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3).unwrap_or(&rest[at..]);
        out.push_str(&escape.to_lowercase());
        rest = &rest[at + escape.len()..];
    }
    out.push_str(rest);
    out
}

/// The first 8-character piece of `secret` that `shown` contains, if any.
fn leaked_piece<'a>(shown: &str, secret: &'a str) -> Option<&'a str> {
    (0..=secret.len() - 8)
        .map(|i| &secret[i..i + 8])
        .find(|piece| shown.contains(piece))
}

/// The error bodies that echo `form`: in a description, as free text, as a field name, as the code.
fn bodies(form: &str) -> Vec<String> {
    let quoted = serde_json::to_string(form).unwrap();
    vec![
        format!(
            r#"{{"error":"invalid_request","error_description":"bad secret {}"}}"#,
            &quoted[1..quoted.len() - 1]
        ),
        format!("<html><pre>echo: {form}</pre></html>"),
        format!(r#"{{"error":"invalid_request",{quoted}:1}}"#),
        format!(r#"{{"error":{quoted}}}"#),
    ]
}

#[tokio::test]
async fn encoded_secrets_in_error_answers_never_show_in_display_or_debug() {
    let fake = fake_for_client("nifty-app-id", CLIENT_SECRET).await;
    let auth = builder(&fake)
        .refresh_token(REFRESH_TOKEN)
        .build()
        .expect("build");
    assert!(!lowercase_hex("%2B").contains('B'));

    let mut cases = 0;
    for secret in [CLIENT_SECRET, REFRESH_TOKEN] {
        for form in encodings(secret) {
            for body in bodies(&form) {
                fake.push_token_fault(TokenFault::status(400, body.clone()));
                let err = auth.access_token().await.expect_err("a 400 answer");
                assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err:?}");
                cases += 1;
                assert_eq!(fake.token_calls(), cases, "a 400 is not retried");
                let shown = format!("{err} / {err:?}");
                for known in [CLIENT_SECRET, REFRESH_TOKEN] {
                    assert_eq!(
                        leaked_piece(&shown, known),
                        None,
                        "body `{body}` leaked into: {shown}"
                    );
                }
            }
        }
    }
    assert_eq!(cases, 2 * 22 * 4);
    // The refresh token was never spent: the fake did not know it, and no answer was a success.
    assert!(auth.tokens().is_none());
}
