//! Property tests of the token-answer parser: whatever the endpoint sends — arbitrary bytes,
//! arbitrary JSON, token-answer-shaped objects with fields of random types — the parser returns
//! tokens or a typed [`AuthError::InvalidResponse`], never panics, and no error shows a token that was
//! in the input.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;

const FIELDS: [&str; 5] = [
    "access_token",
    "token_type",
    "refresh_token",
    "expires_in",
    "scope",
];

/// A token as endpoints issue them: 16 to 40 token characters.
fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~+/=-]{16,40}"
}

fn received_at() -> impl Strategy<Value = SystemTime> {
    prop_oneof![
        Just(SystemTime::now()),
        any::<u64>().prop_map(|s| UNIX_EPOCH
            .checked_add(Duration::from_secs(s))
            .unwrap_or(UNIX_EPOCH)),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(vec![0.0, 0.001, 1e-300, 42.0, 3600.0, 315_360_000.0, 1e300])
            .prop_map(|f| json!(f)),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        ".{0,12}",
        prop::sample::select(FIELDS.to_vec()).prop_map(str::to_owned)
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// A value for one field of a token answer: right or wrong type, often one of the tokens in some
/// encoding (so an error that quoted a field would show it).
fn field_value(tokens: Vec<String>) -> impl Strategy<Value = Value> {
    let mut strings = vec![
        "bearer".to_owned(),
        "Bearer".to_owned(),
        "mac".to_owned(),
        String::new(),
        "3600".to_owned(),
        " 60 ".to_owned(),
        "NaN".to_owned(),
        "1e400".to_owned(),
        "task project".to_owned(),
        "bad\ntoken".to_owned(),
    ];
    for t in &tokens {
        strings.push(t.clone());
        strings.push(format!("mac {t}"));
        strings.push(form_urlencoded::byte_serialize(t.as_bytes()).collect());
        strings.push(base64::engine::general_purpose::STANDARD.encode(t));
    }
    let string = prop::sample::select(strings).prop_map(Value::String);
    prop_oneof![
        4 => string.clone(),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        2 => number(),
        1 => prop::collection::vec(string, 0..4).prop_map(Value::Array),
        1 => any_json(),
    ]
}

/// A token-answer-shaped object: each field absent or a random value, plus a few extra fields.
fn answer() -> impl Strategy<Value = (Vec<String>, Vec<u8>)> {
    (token(), token(), token()).prop_flat_map(|(at, rt, prev)| {
        let tokens = vec![at, rt, prev];
        let fields: Vec<_> = FIELDS
            .iter()
            .map(|_| prop::option::weighted(0.8, field_value(tokens.clone())))
            .collect();
        let extra = prop::collection::vec((".{0,8}", field_value(tokens.clone())), 0..3);
        (Just(tokens), fields, extra).prop_map(|(tokens, fields, extra)| {
            let mut map = Map::new();
            for (name, value) in extra {
                map.insert(name, value);
            }
            for (name, value) in FIELDS.iter().zip(fields) {
                if let Some(value) = value {
                    map.insert((*name).to_owned(), value);
                }
            }
            (tokens, Value::Object(map).to_string().into_bytes())
        })
    })
}

/// The secrets an answer really holds: the string in its `access_token` field, the string in its
/// `refresh_token` field, and the refresh token it replaces. (A random generator may put one of its
/// tokens into `token_type` or `scope` as well; there it is no longer a secret of this answer — the
/// endpoint chose to publish it — so the parser may quote it, masked only if it equals a real one.)
fn real_secrets(body: &[u8], previous: Option<&str>) -> Vec<String> {
    let mut secrets: Vec<String> = previous.map(str::to_owned).into_iter().collect();
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        for field in ["access_token", "refresh_token"] {
            if let Some(Value::String(s)) = map.get(field) {
                secrets.push(s.clone());
            }
        }
    }
    // Token-shaped values only: the generator's words ("bearer", "3600") may fill a token field too,
    // and an error may rightly name such a word where it stands in another field.
    secrets.retain(|s| s.len() >= 16);
    secrets
}

/// Parses `body` and checks the properties; `tokens[2]` is passed as the previous refresh token.
fn check(body: &[u8], tokens: &[String], at: SystemTime) -> Result<(), TestCaseError> {
    let previous = tokens.get(2).map(String::as_str);
    match TokenSet::from_token_response(body, previous, at) {
        Ok(set) => {
            // (The scope is shown by `Debug`, and a random scope may equal a token: only the token
            // fields are checked here.)
            prop_assert!(set.validate().is_ok());
            let debug = format!("{set:?}");
            prop_assert!(debug.contains(r#"access_token: "***""#), "{debug}");
            prop_assert!(
                !debug.contains(set.access_token())
                    || set.scope().is_some_and(|s| s.contains(set.access_token()))
                    || set.token_type().contains(set.access_token()),
                "{debug}"
            );
        }
        Err(err) => {
            prop_assert!(matches!(err, AuthError::InvalidResponse { .. }), "{err:?}");
            let shown = format!("{err} / {err:?}");
            for t in real_secrets(body, previous) {
                prop_assert!(!shown.contains(t.as_str()), "`{t}` in {shown}");
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_parse_or_fail_typed(body in prop::collection::vec(any::<u8>(), 0..256), at in received_at()) {
        check(&body, &[], at)?;
    }

    #[test]
    fn arbitrary_json_parses_or_fails_typed(value in any_json(), at in received_at()) {
        check(value.to_string().as_bytes(), &[], at)?;
    }

    #[test]
    fn token_shaped_answers_parse_or_fail_without_showing_a_token(
        (tokens, body) in answer(),
        at in received_at(),
    ) {
        check(&body, &tokens, at)?;
    }
}
