//! File names for grant ids: an injective escape that is safe on every platform.
//!
//! A grant id becomes the stem of `<stem>.json` (and `<stem>.json.lock`):
//!
//! - Lower-case ASCII letters, digits, `-` and `_` are kept, and `.` too except as the first
//!   character. Every other byte (upper-case letters, `/`, `\`, `:`, `%`, `~`, spaces, the bytes of
//!   non-ASCII characters…) becomes `%XX` (upper-case hex). So a stem never holds a path separator,
//!   a NUL or a character Windows refuses, never starts with `.` (it is never `.`, `..` or hidden, and
//!   never looks like the store's `.…tmp-…` temporary files), and differs from every other stem even
//!   on a case-insensitive file system: `A` is `%41`, `a` is `a`, and `%` only ever starts an escape.
//! - A stem whose part before its first `.` is a Windows device name (`con`, `nul`, `com1`, …) has
//!   its first letter escaped too (`%63on`).
//! - A stem longer than [`MAX_STEM`] bytes is cut (at an escape boundary) to a readable prefix, then
//!   `~` and the SHA-256 of the whole id in hex. `~` appears nowhere else (it is escaped), so a hashed
//!   stem never equals a plain one.
//!
//! Percent-decoding a stem that is not hashed gives the id back: the escape is one-to-one.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// The longest stem: with `.json.lock`, and with the temporary file's `.<stem>.json.tmp-<pid>-<16
/// hex>`, every name stays under the usual 255-byte limit.
pub(super) const MAX_STEM: usize = 200;
/// Marks a hashed stem; escaped everywhere else.
const HASH_MARK: char = '~';
/// The readable prefix of a hashed stem: the stem's length limit minus the mark and 64 hex digits.
const HASHED_PREFIX: usize = MAX_STEM - 1 - 64;

/// Names Windows reserves for devices, whatever the extension (`con.json` included).
const WINDOWS_DEVICES: [&str; 4] = ["con", "prn", "aux", "nul"];

/// The file stem for the grant id `id` (see the module docs).
pub(super) fn stem(id: &str) -> String {
    let mut stem = String::with_capacity(id.len() + 8);
    for (i, &byte) in id.as_bytes().iter().enumerate() {
        let plain =
            matches!(byte, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_') || (byte == b'.' && i > 0);
        if plain {
            stem.push(char::from(byte));
        } else {
            push_escaped(&mut stem, byte);
        }
    }
    if is_windows_device(&stem) {
        // The device names start with a plain ASCII letter: one byte to escape.
        let first = stem.remove(0);
        let mut escaped = String::with_capacity(3);
        push_escaped(&mut escaped, first as u8);
        stem.insert_str(0, &escaped);
    }
    if stem.len() > MAX_STEM {
        return hashed(&stem, id);
    }
    stem
}

fn push_escaped(out: &mut String, byte: u8) {
    let _ = write!(out, "%{byte:02X}");
}

fn is_windows_device(stem: &str) -> bool {
    let base = stem.split('.').next().unwrap_or(stem);
    if WINDOWS_DEVICES.contains(&base) {
        return true;
    }
    // com0..com9, lpt0..lpt9.
    match base.as_bytes() {
        [b'c', b'o', b'm', digit] | [b'l', b'p', b't', digit] => digit.is_ascii_digit(),
        _ => false,
    }
}

/// A readable prefix of `stem`, cut outside any `%XX`, then `~` and the SHA-256 of `id`.
fn hashed(stem: &str, id: &str) -> String {
    let bytes = stem.as_bytes();
    let mut cut = HASHED_PREFIX;
    // `%` only ever starts an escape: do not cut right after it, nor after its first hex digit.
    while cut > 0 && (bytes[cut - 1] == b'%' || (cut >= 2 && bytes[cut - 2] == b'%')) {
        cut -= 1;
    }
    let mut out = String::with_capacity(MAX_STEM);
    out.push_str(&stem[..cut]);
    out.push(HASH_MARK);
    for byte in Sha256::digest(id.as_bytes()) {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn hostile() -> Vec<String> {
        let mut ids: Vec<String> = [
            "../../etc/passwd",
            "..",
            ".",
            "...",
            ".hidden",
            "a/b",
            "a\\b",
            "A",
            "a",
            "a:b",
            "C:\\x",
            "%2F",
            "/",
            "%",
            "%25",
            "~",
            "é",
            "E\u{301}",
            "日本",
            "con",
            "CON",
            "con.txt",
            "nul",
            "com1",
            "lpt9.x",
            "conx",
            "com",
            "default",
            "a.json",
            "a.json.lock",
            " ",
            "a b",
            "*?\"<>|",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        ids.push("a".repeat(256));
        ids.push("A".repeat(256));
        ids.push(format!("{}b", "a".repeat(255)));
        ids.push("é".repeat(128));
        ids.push("%".repeat(256));
        ids.push("a".repeat(200));
        ids.push("a".repeat(201));
        ids
    }

    #[test]
    fn stems_are_distinct_even_case_folded_and_safe_on_every_platform() {
        let ids = hostile();
        let stems: Vec<String> = ids.iter().map(|id| stem(id)).collect();
        let folded: HashSet<String> = stems.iter().map(|s| s.to_ascii_lowercase()).collect();
        assert_eq!(folded.len(), ids.len(), "{stems:#?}");
        for (id, stem) in ids.iter().zip(&stems) {
            assert!(
                !stem.is_empty() && stem.len() <= MAX_STEM,
                "{id:?} -> {stem}"
            );
            assert!(!stem.starts_with('.'), "{id:?} -> {stem}");
            assert!(
                stem.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.%~".contains(&b)),
                "{id:?} -> {stem}"
            );
            assert!(!is_windows_device(stem), "{id:?} -> {stem}");
        }
    }

    #[test]
    fn plain_ids_keep_their_text_and_others_are_percent_escaped() {
        assert_eq!(stem("workspace-42_x.y"), "workspace-42_x.y");
        assert_eq!(stem("A"), "%41");
        assert_eq!(stem(".."), "%2E.");
        assert_eq!(stem("../../etc/passwd"), "%2E.%2F..%2Fetc%2Fpasswd");
        assert_eq!(stem("a:b"), "a%3Ab");
        assert_eq!(stem("%2F"), "%252%46");
        assert_eq!(stem("é"), "%C3%A9");
        assert_eq!(stem("con"), "%63on");
        assert_eq!(stem("com1.x"), "%63om1.x");
        assert_eq!(stem("conx"), "conx");
    }

    #[test]
    fn unhashed_stems_decode_back_to_their_id() {
        for id in hostile() {
            let stem = stem(&id);
            if stem.contains(HASH_MARK) {
                continue;
            }
            let mut decoded = Vec::new();
            let bytes = stem.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    decoded.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 3;
                } else {
                    decoded.push(bytes[i]);
                    i += 1;
                }
            }
            assert_eq!(String::from_utf8(decoded).unwrap(), id);
        }
    }

    #[test]
    fn long_stems_keep_a_readable_prefix_and_a_hash_of_the_whole_id() {
        let plain = stem(&"a".repeat(200));
        assert_eq!(plain, "a".repeat(200));
        let long = stem(&"a".repeat(201));
        assert!(long.starts_with(&"a".repeat(HASHED_PREFIX)), "{long}");
        assert_eq!(long.len(), MAX_STEM);
        // Same prefix, different tails: different hashes.
        assert_ne!(
            stem(&format!("{}b", "a".repeat(255))),
            stem(&"a".repeat(256))
        );
        // Cut outside an escape: every `%` is followed by two hex digits.
        let escaped = stem(&"é".repeat(128));
        let prefix = escaped.split(HASH_MARK).next().unwrap();
        assert_eq!(prefix.len() % 3, 0, "{escaped}");
        assert!(prefix.starts_with("%C3%A9"), "{escaped}");
        let shifted = stem(&format!("a{}", "é".repeat(127)));
        let prefix = shifted.split(HASH_MARK).next().unwrap();
        assert_eq!(prefix.len(), 133, "{shifted}");
    }
}
