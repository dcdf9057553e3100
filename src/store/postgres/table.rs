//! The tables: the token table's validated name (it cannot be a bind parameter), the lock table's
//! name made from it (`<name>_lock`), and every statement the store runs on them, built once.
//! Everything else (client id, grant id, token set, version, lease holder and length) is a bind
//! parameter.

use crate::error::AuthError;

/// The longest identifier PostgreSQL keeps (`NAMEDATALEN - 1`).
const MAX_IDENTIFIER_BYTES: usize = 63;
/// What the lock table's name adds to the token table's.
const LOCK_SUFFIX: &str = "_lock";
/// The longest table name part: its lock table's name must fit too.
const MAX_TABLE_BYTES: usize = MAX_IDENTIFIER_BYTES - LOCK_SUFFIX.len();

/// A validated table name and the SQL that uses it.
pub(super) struct Table {
    /// As configured, for messages.
    pub(super) name: String,
    pub(super) create: String,
    pub(super) load: String,
    pub(super) version: String,
    pub(super) upsert: String,
    pub(super) update_fenced: String,
    pub(super) insert_fenced: String,
    pub(super) delete: String,
    /// The lock table, as configured (`<name>_lock`), for messages.
    pub(super) lock_name: String,
    pub(super) create_lock: String,
    /// Takes the lease: a new row, or a row whose lease has expired.
    pub(super) take: String,
    pub(super) renew: String,
    pub(super) release: String,
}

impl Table {
    /// Validates `name`: a plain (`nifty_auth_tokens`) or schema-qualified (`auth.tokens`) name,
    /// each part lower-case ASCII letters, digits and `_`, not starting with a digit, at most 63
    /// bytes (the table's own part at most 58, so that `<part>_lock` fits). Each part is quoted in
    /// the SQL, so a reserved word (`user`) is fine too.
    pub(super) fn new(name: &str) -> Result<Table, AuthError> {
        let parts: Vec<&str> = name.split('.').collect();
        let last = parts.last().map_or(0, |part| part.len());
        if parts.len() > 2 || !parts.iter().all(|part| identifier(part)) || last > MAX_TABLE_BYTES {
            return Err(AuthError::config(format!(
                "PostgresStore table name {name:?} is not a plain or schema-qualified SQL identifier \
                 (lower-case letters, digits and _, not starting with a digit, at most \
                 {MAX_IDENTIFIER_BYTES} bytes for the schema and {MAX_TABLE_BYTES} for the table, \
                 e.g. nifty_auth_tokens or auth.tokens)"
            )));
        }
        let quoted: Vec<String> = parts.iter().map(|part| format!("\"{part}\"")).collect();
        let t = quoted.join(".");
        let lock_name = format!("{name}{LOCK_SUFFIX}");
        let l = format!("{}{LOCK_SUFFIX}\"", t.trim_end_matches('"'));
        // The lease check of a fenced save: the lock row, if this holder still holds it, locked
        // until the write commits (a takeover waits for it, then finds the lease renewed or not).
        let lease = |holder: u8| {
            format!(
                "lease AS (SELECT 1 FROM {l} WHERE client_id = $1 AND grant_id = $2 \
                 AND holder = ${holder} FOR UPDATE)"
            )
        };
        Ok(Table {
            name: name.to_owned(),
            create: create_sql(&t),
            load: format!("SELECT token_set FROM {t} WHERE client_id = $1 AND grant_id = $2"),
            version: format!("SELECT version FROM {t} WHERE client_id = $1 AND grant_id = $2"),
            upsert: format!(
                "INSERT INTO {t} AS t (client_id, grant_id, token_set) VALUES ($1, $2, $3) \
                 ON CONFLICT (client_id, grant_id) DO UPDATE \
                 SET token_set = EXCLUDED.token_set, version = t.version + 1, updated_at = now()"
            ),
            update_fenced: format!(
                "WITH {}, saved AS (UPDATE {t} SET token_set = $3, version = version + 1, \
                 updated_at = now() WHERE client_id = $1 AND grant_id = $2 AND version = $4 \
                 AND EXISTS (SELECT 1 FROM lease) RETURNING version) \
                 SELECT EXISTS (SELECT 1 FROM lease), (SELECT version FROM saved)",
                lease(5)
            ),
            insert_fenced: format!(
                "WITH {}, saved AS (INSERT INTO {t} (client_id, grant_id, token_set) \
                 SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM lease) \
                 ON CONFLICT (client_id, grant_id) DO NOTHING RETURNING version) \
                 SELECT EXISTS (SELECT 1 FROM lease), (SELECT version FROM saved)",
                lease(4)
            ),
            delete: format!("DELETE FROM {t} WHERE client_id = $1 AND grant_id = $2"),
            create_lock: create_lock_sql(&l),
            take: format!(
                "INSERT INTO {l} AS l (client_id, grant_id, holder, expires_at) \
                 VALUES ($1, $2, $3, now() + $4::float8 * interval '1 millisecond') \
                 ON CONFLICT (client_id, grant_id) DO UPDATE \
                 SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
                 WHERE l.expires_at <= now() RETURNING 1"
            ),
            renew: format!(
                "UPDATE {l} SET expires_at = now() + $4::float8 * interval '1 millisecond' \
                 WHERE client_id = $1 AND grant_id = $2 AND holder = $3"
            ),
            release: format!(
                "DELETE FROM {l} WHERE client_id = $1 AND grant_id = $2 AND holder = $3"
            ),
            lock_name,
        })
    }
}

/// The `CREATE TABLE` of `PostgresStore::migrate` (the same text as in the docs, for the default
/// name).
fn create_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
    client_id  text        NOT NULL,
    grant_id   text        NOT NULL,
    token_set  bytea       NOT NULL,
    version    bigint      NOT NULL DEFAULT 1,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, grant_id)
)"
    )
}

/// The lock table of `PostgresStore::migrate` (the same text as in the docs, for the default
/// name): a lease row per grant being refreshed.
fn create_lock_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
    client_id  text        NOT NULL,
    grant_id   text        NOT NULL,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (client_id, grant_id)
)"
    )
}

fn identifier(part: &str) -> bool {
    let mut bytes = part.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    part.len() <= MAX_IDENTIFIER_BYTES
        && (first.is_ascii_lowercase() || first == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_schema_qualified_names_are_accepted_and_quoted() {
        let table = Table::new("nifty_auth_tokens").unwrap();
        assert!(table.load.contains("FROM \"nifty_auth_tokens\" WHERE"));
        let table = Table::new("auth.tokens_2").unwrap();
        assert!(table
            .delete
            .starts_with("DELETE FROM \"auth\".\"tokens_2\" WHERE"));
        assert!(Table::new("user").is_ok());
        let longest = Table::new(&"a".repeat(58)).unwrap();
        assert_eq!(longest.lock_name.len(), 63);
        assert!(Table::new(&format!("{}.tokens", "s".repeat(63))).is_ok());
        let table = Table::new("auth.tokens").unwrap();
        assert_eq!(table.lock_name, "auth.tokens_lock");
        assert!(table.take.contains("INTO \"auth\".\"tokens_lock\" AS l"));
        assert!(table
            .create_lock
            .starts_with("CREATE TABLE IF NOT EXISTS \"auth\".\"tokens_lock\" ("));
    }

    #[test]
    fn anything_else_is_a_configuration_error() {
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a.b.c",
            "1tokens",
            "Tokens",
            "tokens; DROP TABLE x; --",
            "tok\"ens",
            "tok ens",
            "tökens",
            &"a".repeat(64),
            // `<name>_lock` would not fit in 63 bytes.
            &"a".repeat(59),
        ] {
            let err = Table::new(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(matches!(err, AuthError::Configuration { .. }), "{err:?}");
        }
    }
}
