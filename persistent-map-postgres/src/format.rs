//! The table formats: their versions, their layouts, and the SQL this
//! backend runs on a table of each.

use persistent_map_core::codec::KeyFormat;

/// The table that records, per map table of a schema, the format version it
/// was written in.
pub(crate) const META_TABLE: &str = "persistent_map_meta";

/// The newest table format this release reads and the one it writes.
///
/// * `1`: `key TEXT PRIMARY KEY, value JSONB NOT NULL`, plus a row in the
///   schema's `persistent_map_meta` table. A B-tree index entry holds at
///   most about 2.7 KB, so longer keys that do not compress are refused.
/// * `2`: the same columns, plus `key_hash BYTEA PRIMARY KEY`, generated as
///   the SHA-256 of the key's UTF-8 text (by the schema's
///   `persistent_map_key_hash` function): keys of any size. Tables of
///   format 1 keep format 1.
/// * `3`: the layout of format 2, keys in [`KeyFormat::Distinct`] (formats 1
///   and 2 write them in [`KeyFormat::Legacy`]): a string key whose text is
///   JSON is quoted, so distinct keys stay distinct.
/// * `4`: format 3 plus `expires_at BIGINT` (`NULL`: the entry never
///   expires; otherwise its deadline in milliseconds since the Unix epoch)
///   with a partial index on it (`WHERE expires_at IS NOT NULL`). Every
///   table this release creates; a table of format 3 is moved to format 4
///   by its first write that carries a deadline, in that write's
///   transaction. Tables of formats 1 and 2 keep their format and have no
///   expiry.
pub const FORMAT_VERSION: u32 = 4;

/// The first format whose keys are in [`KeyFormat::Distinct`].
pub(crate) const DISTINCT_KEYS_VERSION: u32 = 3;

/// The first format with the `expires_at` column.
pub(crate) const EXPIRY_VERSION: u32 = 4;

/// The key format of a table in format `version` (as its meta table
/// records it), for tools that read a table without opening a backend.
///
/// ```
/// use persistent_map_core::codec::KeyFormat;
///
/// assert_eq!(persistent_map_postgres::key_format_of(2), KeyFormat::Legacy);
/// assert_eq!(persistent_map_postgres::key_format_of(3), KeyFormat::Distinct);
/// assert_eq!(persistent_map_postgres::key_format_of(4), KeyFormat::Distinct);
/// ```
pub fn key_format_of(version: u32) -> KeyFormat {
    if version >= DISTINCT_KEYS_VERSION {
        KeyFormat::Distinct
    } else {
        KeyFormat::Legacy
    }
}

/// Whether a table in format (or layout) `version` has the `expires_at`
/// column, for tools that read a table without opening a backend.
pub fn has_deadlines(version: u32) -> bool {
    version >= EXPIRY_VERSION
}

/// The function computing a table's `key_hash` (formats 2 and later).
pub(crate) const KEY_HASH_FN: &str = "persistent_map_key_hash";

/// The layout of an existing table, from its columns (`name`, `data_type`
/// as `information_schema.columns` gives them): the format it was written
/// in, or the lowest of those sharing its layout (2 for formats 2 and 3),
/// `None` for a table that is not a persistent-map table. For tools that
/// read a table without opening a backend.
///
/// ```
/// let columns = |names: &[(&str, &str)]| -> Vec<(String, String)> {
///     names.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect()
/// };
/// let base = [("key", "text"), ("value", "jsonb")];
/// assert_eq!(persistent_map_postgres::layout_of(&columns(&base)), Some(1));
/// let expiring = [("key", "text"), ("value", "jsonb"), ("key_hash", "bytea"), ("expires_at", "bigint")];
/// assert_eq!(persistent_map_postgres::layout_of(&columns(&expiring)), Some(4));
/// assert!(persistent_map_postgres::has_deadlines(4));
/// ```
pub fn layout_of(columns: &[(String, String)]) -> Option<u32> {
    let has = |name: &str, ty: &str| columns.iter().any(|(c, t)| c == name && t == ty);
    if !(has("key", "text") && has("value", "jsonb")) {
        return None;
    }
    match columns.len() {
        2 => Some(1),
        3 if has("key_hash", "bytea") => Some(2),
        4 if has("key_hash", "bytea") && has("expires_at", "bigint") => Some(EXPIRY_VERSION),
        _ => None,
    }
}

/// The columns a table of the current layout gets (after `CREATE TABLE
/// <name>`).
pub(crate) fn table_columns(schema: &str, expiry: bool) -> String {
    let expires_at = if expiry { ", expires_at BIGINT" } else { "" };
    format!(
        "(key TEXT NOT NULL, value JSONB NOT NULL, \
         key_hash BYTEA GENERATED ALWAYS AS (\"{schema}\".{KEY_HASH_FN}(key)) STORED PRIMARY KEY\
         {expires_at})"
    )
}

/// The statement creating the deadline index of `qualified`, named
/// `index` (see [`index_name`]); nothing when it exists.
pub(crate) fn create_expiry_index(qualified: &str, index: &str) -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS \"{index}\" ON {qualified} (expires_at) \
         WHERE expires_at IS NOT NULL"
    )
}

/// The name of a table's deadline index. Index names share a schema's
/// namespace with tables, so a readable `<table>_expires_at` could be the
/// name of another map's table (and PostgreSQL would cut a long one to 63
/// bytes, so that two long table names shared it, which `IF NOT EXISTS`
/// would hide): a stable hash of the table's name instead.
pub(crate) fn index_name(table: &str) -> String {
    format!("persistent_map_expires_{:016x}", fnv1a(table))
}

/// FNV-1a: stable across processes and releases, unlike std's hasher.
pub(crate) fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The SQL texts this backend runs, built once for a table of one format.
pub(crate) struct Statements {
    /// The format these statements are for.
    pub(crate) format: u32,
    /// How the table's keys are written, from its format version.
    pub(crate) key_format: KeyFormat,
    /// `SELECT key, value::text[, expires_at]` of every row.
    pub(crate) select_all: String,
    /// The same, of the rows of the keys in `$1`.
    pub(crate) select_keys: String,
    pub(crate) count: String,
    pub(crate) contains: String,
    /// Upserts the rows of `$1` (keys) and `$2` (values), with deadlines
    /// `$3` from format 4.
    pub(crate) upsert: String,
    pub(crate) delete: String,
    /// From format 4: deletes the keys of `$1` whose deadline is at or
    /// before the clock of `$2` at the same place, returning their keys.
    pub(crate) delete_expired: Option<String>,
    pub(crate) delete_all: String,
    /// The table's recorded format version (`$1`: the table's name).
    pub(crate) version: String,
    /// The version, and the notifications of `$3` on the channel `$2`
    /// sent, in one statement (for a table that may be moved to format 4
    /// by another instance; see the backend's `write`).
    pub(crate) version_and_notify: String,
}

impl Statements {
    /// The statements for the table `"<schema>"."<table>"` of `format` (1 to 4).
    pub(crate) fn new(schema: &str, table: &str, format: u32) -> Self {
        let t = format!("\"{schema}\".\"{table}\"");
        let meta = format!("\"{schema}\".{META_TABLE}");
        // From format 2, rows are found by the hash of their key (any
        // size); in format 1 by the key itself.
        let hash = format!("\"{schema}\".{KEY_HASH_FN}");
        let (one, many, target) = if format >= 2 {
            (
                format!("key_hash = {hash}($1)"),
                format!("key_hash = ANY(ARRAY(SELECT {hash}(k) FROM UNNEST($1::text[]) AS k))"),
                "key_hash",
            )
        } else {
            (
                String::from("key = $1"),
                String::from("key = ANY($1::text[])"),
                "key",
            )
        };
        let expiry = format >= EXPIRY_VERSION;
        let columns = if expiry {
            "key, value::text, expires_at"
        } else {
            "key, value::text"
        };
        // One statement for any number of rows: the rows arrive as arrays,
        // so the SQL text (and its prepared plan) never changes.
        let upsert = if expiry {
            format!(
                "INSERT INTO {t} (key, value, expires_at) \
                 SELECT k, v::jsonb, e FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS u(k, v, e) \
                 ON CONFLICT ({target}) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at"
            )
        } else {
            format!(
                "INSERT INTO {t} (key, value) \
                 SELECT k, v::jsonb FROM UNNEST($1::text[], $2::text[]) AS u(k, v) \
                 ON CONFLICT ({target}) DO UPDATE SET value = EXCLUDED.value"
            )
        };
        let delete_expired = expiry.then(|| {
            format!(
                "DELETE FROM {t} AS m USING UNNEST($1::text[], $2::bigint[]) AS d(k, n) \
                 WHERE m.key_hash = {hash}(d.k) AND m.expires_at <= d.n RETURNING m.key"
            )
        });
        Self {
            format,
            key_format: key_format_of(format),
            select_all: format!("SELECT {columns} FROM {t}"),
            select_keys: format!("SELECT {columns} FROM {t} WHERE {many}"),
            count: format!("SELECT COUNT(*) FROM {t}"),
            contains: format!("SELECT EXISTS (SELECT 1 FROM {t} WHERE {one})"),
            upsert,
            delete: format!("DELETE FROM {t} WHERE {many}"),
            delete_expired,
            delete_all: format!("DELETE FROM {t}"),
            version: format!("SELECT format_version FROM {meta} WHERE table_name = $1"),
            version_and_notify: format!(
                "SELECT (SELECT format_version FROM {meta} WHERE table_name = $1), \
                 (SELECT COUNT(pg_notify($2, p)) FROM UNNEST($3::text[]) AS p)"
            ),
        }
    }

    /// Whether rows carry a deadline.
    pub(crate) fn expiry(&self) -> bool {
        self.format >= EXPIRY_VERSION
    }

    /// Whether another instance may move the table to format 4 at any
    /// time: format 3 (the earlier ones have legacy keys and keep their
    /// format).
    pub(crate) fn may_gain_expiry(&self) -> bool {
        self.format == DISTINCT_KEYS_VERSION
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(c, t)| ((*c).to_owned(), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn layouts_are_told_by_their_columns() {
        let base = [("key", "text"), ("value", "jsonb")];
        assert_eq!(layout_of(&columns(&base)), Some(1));
        let hashed = [base[0], base[1], ("key_hash", "bytea")];
        assert_eq!(layout_of(&columns(&hashed)), Some(2));
        let expiring = [hashed[0], hashed[1], hashed[2], ("expires_at", "bigint")];
        assert_eq!(layout_of(&columns(&expiring)), Some(4));
        let wrong = [hashed[0], hashed[1], hashed[2], ("expires_at", "text")];
        assert_eq!(layout_of(&columns(&wrong)), None);
        assert_eq!(layout_of(&columns(&[("id", "integer")])), None);
    }

    #[test]
    fn index_names_are_stable_distinct_and_fit_the_identifier_limit() {
        assert_eq!(index_name("kv"), index_name("kv"));
        assert_ne!(index_name("kv"), index_name("kv2"));
        let long = "t".repeat(63);
        assert!(index_name(&long).len() <= 63);
        assert_ne!(index_name(&long), index_name(&"t".repeat(62)));
    }
}
