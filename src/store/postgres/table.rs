//! The table: its validated name (it cannot be a bind parameter) and every statement the store runs
//! on it, built once. Everything else (client id, grant id, token set, version) is a bind parameter.

use crate::error::AuthError;

/// The longest identifier PostgreSQL keeps (`NAMEDATALEN - 1`).
const MAX_IDENTIFIER_BYTES: usize = 63;

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
}

impl Table {
    /// Validates `name`: a plain (`nifty_auth_tokens`) or schema-qualified (`auth.tokens`) name,
    /// each part lower-case ASCII letters, digits and `_`, not starting with a digit, at most 63
    /// bytes. Each part is quoted in the SQL, so a reserved word (`user`) is fine too.
    pub(super) fn new(name: &str) -> Result<Table, AuthError> {
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|part| identifier(part)) {
            return Err(AuthError::config(format!(
                "PostgresStore table name {name:?} is not a plain or schema-qualified SQL identifier \
                 (lower-case letters, digits and _, not starting with a digit, at most \
                 {MAX_IDENTIFIER_BYTES} bytes per part, e.g. nifty_auth_tokens or auth.tokens)"
            )));
        }
        let quoted: Vec<String> = parts.iter().map(|part| format!("\"{part}\"")).collect();
        let t = quoted.join(".");
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
                "UPDATE {t} SET token_set = $3, version = version + 1, updated_at = now() \
                 WHERE client_id = $1 AND grant_id = $2 AND version = $4 RETURNING version"
            ),
            insert_fenced: format!(
                "INSERT INTO {t} (client_id, grant_id, token_set) VALUES ($1, $2, $3) \
                 ON CONFLICT (client_id, grant_id) DO NOTHING RETURNING version"
            ),
            delete: format!("DELETE FROM {t} WHERE client_id = $1 AND grant_id = $2"),
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
        assert!(Table::new(&"a".repeat(63)).is_ok());
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
        ] {
            let err = Table::new(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(matches!(err, AuthError::Configuration { .. }), "{err:?}");
        }
    }
}
