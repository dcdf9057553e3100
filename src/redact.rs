//! Redaction of untrusted text (a token endpoint's error body, a field of its answer) before it goes
//! into an error message. The one place that decides what an error may quote.
//!
//! Two passes:
//! 1. **Known secrets** (the client secret, the refresh token or code sent, tokens of the answer) are
//!    masked in every form an endpoint may echo them in: raw, percent-encoded (either hex case, `+`
//!    for space), JSON-escaped (`\/`, `\uXXXX`, surrogate pairs), and base64 (standard or URL-safe,
//!    padded or not). Base64 of a secret depends on where it starts inside the encoded data, so the
//!    part of its encoding that the secret alone determines is searched for at all three byte
//!    alignments; what is left beside a mask is at most two characters that mix in other bytes.
//! 2. **Anything token-like** — a long run of token characters, or a fairly long one with a digit —
//!    is masked too, whatever secret it may be; the text is folded onto one line and cut short.

use base64::Engine as _;

/// What a secret or a token-like run is replaced with.
const MASK: &str = "***";

/// Secrets shorter than this (in bytes) are not searched for: they would mask ordinary words.
const MIN_SECRET_LEN: usize = 4;

/// Base64 fragments shorter than this are not searched for.
const MIN_BASE64_LEN: usize = 6;

/// The longest excerpt of an error answer quoted in an error (characters, before the `…`).
pub(crate) const EXCERPT_CHARS: usize = 120;

/// The longest RFC 6749 `error` code quoted (characters).
const ERROR_CODE_CHARS: usize = 64;

/// `text` as a short, single-line excerpt: `secrets` (in any encoding) and anything that looks like a
/// token replaced by `***`, whitespace folded, at most `max_chars` characters (then `…`).
pub(crate) fn excerpt(text: &str, secrets: &[&str], max_chars: usize) -> String {
    mask_token_like(&mask_secrets(text, secrets), max_chars)
}

/// An RFC 6749 `error` code: short ASCII words, so anything else is dropped; then masked like an
/// excerpt. Secrets are masked *before* characters are dropped, so dropping cannot hide one.
pub(crate) fn error_code(code: &str, secrets: &[&str]) -> String {
    let plain: String = mask_secrets(code, secrets)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '*')
        .take(ERROR_CODE_CHARS)
        .collect();
    mask_token_like(&plain, ERROR_CODE_CHARS)
}

/// `text` with every occurrence of each secret — raw, percent-encoded, JSON-escaped or base64 —
/// replaced by `***`.
pub(crate) fn mask_secrets(text: &str, secrets: &[&str]) -> String {
    let needles = needles(secrets);
    if needles.is_empty() {
        return text.to_owned();
    }
    let raw = text.as_bytes();
    let mut masked = vec![false; raw.len()];
    let views = [
        raw.iter()
            .enumerate()
            .map(|(i, &byte)| Unit {
                byte,
                start: i,
                end: i + 1,
            })
            .collect(),
        decode(raw, true),
        decode(raw, false),
    ];
    for units in &views {
        let bytes: Vec<u8> = units.iter().map(|u| u.byte).collect();
        for needle in &needles {
            if needle.len() > bytes.len() {
                continue;
            }
            for (pos, window) in bytes.windows(needle.len()).enumerate() {
                if window == needle.as_slice() {
                    let (start, end) = (units[pos].start, units[pos + needle.len() - 1].end);
                    masked[start..end].fill(true);
                }
            }
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut in_mask = false;
    for (i, c) in text.char_indices() {
        if masked[i] {
            if !in_mask {
                out.push_str(MASK);
                in_mask = true;
            }
        } else {
            in_mask = false;
            out.push(c);
        }
    }
    out
}

/// One decoded byte and the span of the original text it came from.
#[derive(Clone, Copy)]
struct Unit {
    byte: u8,
    start: usize,
    end: usize,
}

/// The byte strings to search for: each secret raw and the stable parts of its base64 encodings.
fn needles(secrets: &[&str]) -> Vec<Vec<u8>> {
    let mut needles = Vec::new();
    for secret in secrets.iter().filter(|s| s.len() >= MIN_SECRET_LEN) {
        needles.push(secret.as_bytes().to_vec());
        for core in base64_cores(secret.as_bytes()) {
            let url_safe = core.replace('+', "-").replace('/', "_");
            if url_safe != core {
                needles.push(url_safe.into_bytes());
            }
            needles.push(core.into_bytes());
        }
    }
    needles.sort();
    needles.dedup();
    needles
}

/// The characters of `secret`'s base64 encoding that depend on its bytes only, for each of the three
/// byte offsets (mod 3) it can start at inside the encoded data.
fn base64_cores(secret: &[u8]) -> Vec<String> {
    let mut cores = Vec::with_capacity(3);
    for offset in 0..3usize {
        let mut data = vec![0u8; offset];
        data.extend_from_slice(secret);
        let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&data);
        // The first characters carry bits of the bytes before the secret, the last one (when the
        // bit count is not a multiple of six) bits of the bytes after it.
        let start = (offset * 8).div_ceil(6);
        let end = data.len() * 8 / 6;
        if end >= start + MIN_BASE64_LEN {
            cores.push(encoded[start..end].to_owned());
        }
    }
    cores
}

/// `text` with percent escapes (`%2B`, `%2b`) and JSON escapes (`\/`, `\"`, `\n`, `\uXXXX`)
/// decoded, and `+` read as a space when `plus_is_space`; each byte keeps its original span.
fn decode(text: &[u8], plus_is_space: bool) -> Vec<Unit> {
    let mut out = Vec::with_capacity(text.len());
    let mut push = |byte: u8, start: usize, end: usize| out.push(Unit { byte, start, end });
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if b == b'%' {
            if let (Some(hi), Some(lo)) = (hex(text.get(i + 1)), hex(text.get(i + 2))) {
                push(hi << 4 | lo, i, i + 3);
                i += 3;
                continue;
            }
        }
        if b == b'+' && plus_is_space {
            push(b' ', i, i + 1);
            i += 1;
            continue;
        }
        if b == b'\\' {
            let escaped = match text.get(i + 1) {
                Some(&c @ (b'/' | b'"' | b'\\' | b'\'')) => Some(c),
                Some(b'n') => Some(b'\n'),
                Some(b't') => Some(b'\t'),
                Some(b'r') => Some(b'\r'),
                Some(b'b') => Some(0x08),
                Some(b'f') => Some(0x0c),
                _ => None,
            };
            if let Some(c) = escaped {
                push(c, i, i + 2);
                i += 2;
                continue;
            }
            if let Some((c, len)) = json_unicode(&text[i..]) {
                let mut buf = [0u8; 4];
                for &byte in c.encode_utf8(&mut buf).as_bytes() {
                    push(byte, i, i + len);
                }
                i += len;
                continue;
            }
        }
        push(b, i, i + 1);
        i += 1;
    }
    out
}

/// The value of one hex digit.
fn hex(digit: Option<&u8>) -> Option<u8> {
    char::from(*digit?).to_digit(16).map(|d| d as u8)
}

/// A `\uXXXX` escape (or a `\uD8xx\uDCxx` surrogate pair) at the start of `text`: the character and
/// the escape's length in bytes.
fn json_unicode(text: &[u8]) -> Option<(char, usize)> {
    let unit = |at: usize| -> Option<u32> {
        if text.get(at..at + 2)? != b"\\u" {
            return None;
        }
        let digits = text.get(at + 2..at + 6)?;
        u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let first = unit(0)?;
    if (0xD800..0xDC00).contains(&first) {
        let second = unit(6).filter(|s| (0xDC00..0xE000).contains(s))?;
        let c = char::from_u32(0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00))?;
        return Some((c, 12));
    }
    char::from_u32(first).map(|c| (c, 6))
}

/// Masks token-like runs, folds whitespace and control characters into single spaces and cuts the
/// result to `max_chars` characters (then `…`).
fn mask_token_like(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    let mut run = String::new();
    // A run of token characters is masked when it is long (32+) or fairly long (12+) with a digit:
    // words rarely carry digits, tokens nearly always do. `%` and `\` belong to runs so that an
    // escaped token stays one run.
    let flush = |run: &mut String, out: &mut String| {
        let len = run.chars().count();
        let has_digit = run.chars().any(|c| c.is_ascii_digit());
        if len >= 32 || (len >= 12 && has_digit) {
            out.push_str(MASK);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    let mut last_space = false;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || "-._~+/=%\\".contains(c) {
            run.push(c);
            last_space = false;
            continue;
        }
        flush(&mut run, &mut out);
        if c.is_whitespace() || c.is_control() {
            if !last_space && !out.is_empty() {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
        if out.chars().count() > max_chars {
            break;
        }
    }
    flush(&mut run, &mut out);
    let trimmed = out.trim();
    if trimmed.chars().count() > max_chars {
        let cut: String = trimmed.chars().take(max_chars).collect();
        format!("{cut}…")
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};

    /// A secret with every character that encodings treat specially.
    const SECRET: &str = "q0Zk+Lm3/Wx=9%Tb Rc7~";

    /// The first 8-character piece of `secret` that `text` shows, if any.
    fn leaked<'a>(text: &str, secret: &'a str) -> Option<&'a str> {
        let chars: Vec<(usize, char)> = secret.char_indices().collect();
        (0..chars.len().saturating_sub(7)).find_map(|i| {
            let start = chars[i].0;
            let end = chars.get(i + 8).map_or(secret.len(), |c| c.0);
            text.contains(&secret[start..end])
                .then_some(&secret[start..end])
        })
    }

    fn assert_masked(text: &str) {
        // `mask_secrets`, not `excerpt`: the token heuristic alone would hide some of these.
        let out = mask_secrets(text, &[SECRET]);
        assert_eq!(leaked(&out, SECRET), None, "{text} -> {out}");
        assert!(out.contains(MASK), "{text} -> {out}");
    }

    #[test]
    fn masks_a_raw_secret() {
        assert_masked(&format!("bad secret {SECRET} here"));
    }

    #[test]
    fn masks_percent_encoded_secrets_in_either_hex_case_and_with_plus_for_space() {
        let upper: String = form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
        assert!(upper.contains("%2B") && upper.contains('+'), "{upper}");
        assert_masked(&format!("client_secret={upper}&x=1"));
        let lower = upper
            .split('%')
            .enumerate()
            .map(|(i, part)| match (i, part.get(..2)) {
                (0, _) | (_, None) => part.to_owned(),
                (_, Some(hex)) => format!("%{}{}", hex.to_lowercase(), &part[2..]),
            })
            .collect::<String>();
        assert!(lower.contains("%2b") && lower.contains("Lm3"), "{lower}");
        assert_masked(&format!("client_secret={lower}&x=1"));
        let all_percent: String = SECRET.bytes().map(|b| format!("%{b:02x}")).collect();
        assert_masked(&format!("s={all_percent}"));
    }

    #[test]
    fn masks_json_escaped_secrets() {
        let json = serde_json::to_string(SECRET).unwrap().replace('/', "\\/");
        assert!(json.contains("\\/"), "{json}");
        assert_masked(&format!(r#"{{"echo":{json}}}"#));
        let unicode: String = SECRET
            .chars()
            .map(|c| format!("\\u{:04X}", c as u32))
            .collect();
        assert_masked(&format!(r#"{{"echo":"{unicode}"}}"#));
        let pair = "s3cr\u{1F511}t-value";
        let escaped = r#"s3cr\uD83D\uDD11t-value"#;
        let out = mask_secrets(&format!("x {escaped} y"), &[pair]);
        assert_eq!(out, "x *** y");
    }

    #[test]
    fn masks_base64_of_a_secret_at_every_alignment_in_every_alphabet() {
        for prefix in ["", "a", "ab", "abc", "user:"] {
            let data = format!("{prefix}{SECRET}|tail");
            for engine in [&STANDARD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                let encoded = engine.encode(&data);
                let out = mask_secrets(&format!("Basic {encoded}"), &[SECRET]);
                let visible = out.replace(MASK, "").len() - "Basic ".len();
                let hidden = encoded.len() - visible;
                // All but the (at most two) characters that mix in bytes beside the secret.
                assert!(
                    hidden >= SECRET.len() * 4 / 3 - 2,
                    "{encoded} -> {out} ({hidden} hidden)"
                );
                assert_eq!(out.matches(MASK).count(), 1, "{out}");
            }
        }
    }

    #[test]
    fn masks_secrets_inside_text_that_is_not_token_like() {
        // Short pieces with no digit would pass the token heuristic: only the secret pass catches them.
        let secret = "abcdefgh/ijklmnop";
        let out = excerpt(r#"{"d":"abcdefgh\/ijklmnop"}"#, &[secret], EXCERPT_CHARS);
        assert_eq!(leaked(&out, secret), None, "{out}");
        let code = error_code(r#"abcdefgh/ijklmnop"#, &[secret]);
        assert_eq!(leaked(&code, secret), None, "{code}");
    }

    #[test]
    fn removes_secrets_and_token_like_runs() {
        let out = excerpt(
            "<html>\n<b>Error</b> token=abcdefghijklmnopqrstuvwxyz0123 for s3cret-client\n</html>",
            &["s3cret-client"],
            EXCERPT_CHARS,
        );
        assert!(!out.contains("abcdefghijklmnopqrstuvwxyz0123"), "{out}");
        assert!(!out.contains("s3cret-client"), "{out}");
        assert!(out.contains("Error"), "{out}");
        assert!(!out.contains('\n'));
    }

    #[test]
    fn masks_short_tokens_with_digits_but_keeps_words() {
        let out = excerpt(
            "old token at-1-2-4f3a9c0d1e2b3c4d was revoked: invalid_refresh_token",
            &[],
            EXCERPT_CHARS,
        );
        assert!(!out.contains("4f3a9c0d1e2b3c4d"), "{out}");
        assert!(out.contains("invalid_refresh_token"), "{out}");
        assert!(out.contains("revoked"), "{out}");
    }

    #[test]
    fn masks_percent_encoded_unknown_tokens_as_one_run() {
        let out = excerpt("token q0Zk%2BLm3%2FWx9 rejected", &[], EXCERPT_CHARS);
        assert_eq!(out, "token *** rejected");
    }

    #[test]
    fn keeps_plain_text_and_short_secrets_alone() {
        assert_eq!(
            excerpt("the grant is  expired\n", &["abc"], EXCERPT_CHARS),
            "the grant is expired"
        );
        assert_eq!(
            error_code("invalid_grant", &["s3cret-value"]),
            "invalid_grant"
        );
        assert_eq!(error_code("bad code!<>", &[]), "badcode");
    }

    #[test]
    fn truncates() {
        let long = "word ".repeat(100);
        let out = excerpt(&long, &[], EXCERPT_CHARS);
        assert!(out.chars().count() <= EXCERPT_CHARS + 1, "{}", out.len());
        assert!(out.ends_with('…'));
        assert_eq!(excerpt(&long, &[], 32).chars().count(), 33);
    }

    #[test]
    fn odd_escapes_and_multibyte_text_do_not_panic() {
        for text in [
            "%",
            "%Z",
            "%e",
            "\\",
            "\\u12",
            "\\uD83D",
            "\\uD83D\\u0041",
            "ü%C3%BCü",
            "\\u00",
        ] {
            let _ = excerpt(text, &["üüüü", "%C3%BC"], EXCERPT_CHARS);
        }
    }
}
