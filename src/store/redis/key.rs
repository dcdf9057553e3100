//! Redis key names: `<prefix>:<client id>:<grant>:tokens` with escaped parts.
//!
//! The grant is the [`GrantId`](crate::GrantId) of each store call; the builder's grant name (the
//! store's single grant) is one, escaped the same way.
//!
//! Each part (client id, grant name) is percent-escaped: `%`, `:` and every byte that is not
//! printable ASCII (spaces, control characters, non-ASCII UTF-8) become `%XX` (upper-case hex).
//! Escaped parts never contain `:`, and the escape is one-to-one, so no two (client id, grant)
//! pairs share a key — `a:b` + `c` and `a` + `b:c` do not collide. Ids made of printable ASCII
//! other than `%` and `:` (letters, digits, `-`, `_`, `.`, …) are unchanged, so keys made before
//! the escaping existed stay the same. The prefix is the operator's own and is used as given.
//!
//! On a Redis Cluster the keys are *tagged*: `<prefix>:{<client id>:<grant>}:tokens` and `…:lock`.
//! Redis hashes only the text between the first `{` and the next `}` to pick a key's slot, so a
//! grant's two keys (which the lock and fenced-save scripts use together) share a slot, and
//! different grants spread over all slots. In tagged keys `{` and `}` are escaped too (`%7B`,
//! `%7D`), so no client id or grant id can end the tag early or open another one.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The keys of one grant: the token set and its refresh lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Keys {
    /// `<base>:<grant>:tokens`.
    pub(super) tokens: String,
    /// `<base>:<grant>:lock`.
    pub(super) lock: String,
}

/// The part every key of one app shares: `<prefix>:<escaped client id>`, or
/// `<prefix>:{<escaped client id>` when `tagged` (a cluster).
pub(super) fn base(prefix: &str, client_id: &str, tagged: bool) -> String {
    if tagged {
        format!("{prefix}:{{{}", escape_tagged(client_id))
    } else {
        format!("{prefix}:{}", escape(client_id))
    }
}

/// The keys of `grant` under `base` (see [`base`]; `tagged` as given there).
pub(super) fn grant_keys(base: &str, grant: &str, tagged: bool) -> Keys {
    let base = if tagged {
        format!("{base}:{}}}", escape_tagged(grant))
    } else {
        format!("{base}:{}", escape(grant))
    };
    Keys {
        tokens: format!("{base}:tokens"),
        lock: format!("{base}:lock"),
    }
}

#[cfg(test)]
fn keys(prefix: &str, client_id: &str, grant: &str) -> (String, String) {
    let Keys { tokens, lock } = grant_keys(&base(prefix, client_id, false), grant, false);
    (tokens, lock)
}

#[cfg(test)]
fn tagged_keys(prefix: &str, client_id: &str, grant: &str) -> (String, String) {
    let Keys { tokens, lock } = grant_keys(&base(prefix, client_id, true), grant, true);
    (tokens, lock)
}

/// [`escape`], and `{` and `}` too: a part of a hash tag.
fn escape_tagged(part: &str) -> Cow<'_, str> {
    let escaped = escape(part);
    if !escaped.contains(['{', '}']) {
        return escaped;
    }
    Cow::Owned(escaped.replace('{', "%7B").replace('}', "%7D"))
}

/// Percent-escapes `part` (see the module docs); borrows it when nothing needs escaping.
pub(super) fn escape(part: &str) -> Cow<'_, str> {
    if part.bytes().all(plain) {
        return Cow::Borrowed(part);
    }
    let mut escaped = String::with_capacity(part.len() + 8);
    for byte in part.bytes() {
        if plain(byte) {
            escaped.push(char::from(byte));
        } else {
            let _ = write!(escaped, "%{byte:02X}");
        }
    }
    Cow::Owned(escaped)
}

fn plain(byte: u8) -> bool {
    byte.is_ascii_graphic() && byte != b'%' && byte != b':'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_keep_their_key_text() {
        assert_eq!(escape("Client-1_x.y"), "Client-1_x.y");
        assert!(matches!(escape("main"), Cow::Borrowed(_)));
        assert_eq!(
            keys("nifty-auth", "id", "main"),
            (
                "nifty-auth:id:main:tokens".to_owned(),
                "nifty-auth:id:main:lock".to_owned()
            )
        );
    }

    #[test]
    fn separators_escapes_and_unprintable_bytes_are_escaped() {
        assert_eq!(escape("a:b"), "a%3Ab");
        assert_eq!(escape("50%"), "50%25");
        assert_eq!(escape("%3A"), "%253A");
        assert_eq!(escape("a b\n"), "a%20b%0A");
        assert_eq!(escape("é"), "%C3%A9");
    }

    #[test]
    fn tagged_keys_put_client_and_grant_in_one_hash_tag() {
        assert_eq!(
            tagged_keys("nifty-auth", "id", "main"),
            (
                "nifty-auth:{id:main}:tokens".to_owned(),
                "nifty-auth:{id:main}:lock".to_owned()
            )
        );
        // Braces cannot end the tag early or open another one; `%` escapes stay one-to-one.
        assert_eq!(
            tagged_keys("p", "a}b", "{c}").0,
            "p:{a%7Db:%7Bc%7D}:tokens".to_owned()
        );
        assert_ne!(tagged_keys("p", "a}", "b"), tagged_keys("p", "a%7D", "b"));
        assert_ne!(tagged_keys("p", "a:b", "c"), tagged_keys("p", "a", "b:c"));
    }

    #[test]
    fn pairs_that_concatenate_alike_get_different_keys() {
        assert_ne!(keys("p", "a:b", "c"), keys("p", "a", "b:c"));
        assert_ne!(keys("p", "a%3Ab", "c"), keys("p", "a:b", "c"));
        assert_ne!(keys("p", "a", "b:c:tokens"), keys("p", "a:b", "c:tokens"));
    }
}
