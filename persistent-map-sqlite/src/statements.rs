//! The SQL texts a backend runs, built once for its table.

use crate::backend::META_TABLE;
use crate::load::chunk_sql;
use crate::write::{Texts, CHUNK_SIZES};

/// Every statement of one table.
pub(crate) struct Statements {
    pub(crate) count: String,
    pub(crate) contains: String,
    pub(crate) delete_all: String,
    /// Reading without the deadline column, and with it.
    pub(crate) plain: Reads,
    pub(crate) with_deadlines: Reads,
    /// `replace[i]` writes `2^i` rows to a table without the deadline
    /// column. `INSERT OR REPLACE` rather than an upsert: if another
    /// process has added the column since this one looked, the replaced
    /// row's deadline goes with it, as a put without one requires.
    replace: Vec<String>,
    /// `upsert[i]` writes `2^i` rows with their deadlines.
    upsert: Vec<String>,
    /// `upsert_plain[i]` writes `2^i` rows without deadlines to a table
    /// with the column (clearing theirs): two parameters a row, not three,
    /// for the common put.
    upsert_plain: Vec<String>,
    /// `delete[i]` deletes `2^i` keys.
    delete: Vec<String>,
    /// `delete_expired[i]` deletes those of `2^i` keys whose deadline is
    /// at or before the first parameter. Every parameter is a plain `?`:
    /// sqlx numbers plain ones on their own, so mixing in `?1` would bind
    /// the clock twice.
    delete_expired: Vec<String>,
    /// The table's format version, inside a write transaction.
    pub(crate) version: String,
    /// Whether the table has the deadline column.
    pub(crate) has_deadline_column: String,
    pub(crate) add_deadline_column: String,
    pub(crate) index_deadlines: String,
    pub(crate) set_version: String,
}

/// The statements that read entries, with or without their deadlines
/// (the third column, when there is one).
pub(crate) struct Reads {
    pub(crate) select_all: String,
    /// Rows after rowid `?1`, at most `?2`, in rowid order.
    pub(crate) select_after: String,
    /// A chunk of rows packed as JSON (see the `load` module).
    pub(crate) load_chunk: String,
    /// `select_keys[i]`: the rows of `2^i` keys.
    pub(crate) select_keys: Vec<String>,
    /// Whether the rows carry the deadline column.
    pub(crate) deadlines: bool,
}

/// `f(rows)` for each chunk size, `rows` being `2^i` copies of `row`.
fn per_chunk(row: &str, f: impl Fn(String) -> String) -> Vec<String> {
    (0..CHUNK_SIZES)
        .map(|i| f(vec![row; 1 << i].join(", ")))
        .collect()
}

impl Statements {
    pub(crate) fn new(table: &str) -> Self {
        // The table name was validated as a plain identifier; quoting keeps
        // names that are SQL keywords working.
        let t = format!("\"{table}\"");
        Self {
            count: format!("SELECT COUNT(*) FROM {t}"),
            contains: format!("SELECT 1 FROM {t} WHERE key = ?1 LIMIT 1"),
            delete_all: format!("DELETE FROM {t}"),
            plain: Reads::new(table, false),
            with_deadlines: Reads::new(table, true),
            replace: per_chunk("(?, ?)", |rows| {
                format!("INSERT OR REPLACE INTO {t} (key, value) VALUES {rows}")
            }),
            upsert: per_chunk("(?, ?, ?)", |rows| {
                format!(
                    "INSERT INTO {t} (key, value, expires_at) VALUES {rows} \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value, \
                     expires_at = excluded.expires_at"
                )
            }),
            upsert_plain: per_chunk("(?, ?)", |rows| {
                format!(
                    "INSERT INTO {t} (key, value) VALUES {rows} \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value, \
                     expires_at = NULL"
                )
            }),
            delete: per_chunk("?", |keys| format!("DELETE FROM {t} WHERE key IN ({keys})")),
            delete_expired: per_chunk("?", |keys| {
                format!("DELETE FROM {t} WHERE expires_at <= ? AND key IN ({keys})")
            }),
            version: format!("SELECT format_version FROM {META_TABLE} WHERE table_name = ?1"),
            has_deadline_column: String::from(
                "SELECT 1 FROM pragma_table_info(?1) WHERE name = 'expires_at'",
            ),
            add_deadline_column: format!("ALTER TABLE {t} ADD COLUMN expires_at INTEGER"),
            index_deadlines: index_sql(table),
            set_version: format!(
                "UPDATE {META_TABLE} SET format_version = ?1 WHERE table_name = ?2"
            ),
        }
    }

    /// The statements that write a batch to the table, with or without its
    /// deadline column.
    pub(crate) fn writes(&self, deadlines: bool) -> Texts<'_> {
        Texts {
            put: if deadlines {
                &self.upsert
            } else {
                &self.replace
            },
            put_plain: if deadlines {
                &self.upsert_plain
            } else {
                &self.replace
            },
            delete: &self.delete,
            delete_expired: &self.delete_expired,
            deadlines,
        }
    }

    /// The statements that read the table, with deadlines when it has them
    /// and they are wanted.
    pub(crate) fn reads(&self, deadlines: bool) -> &Reads {
        if deadlines {
            &self.with_deadlines
        } else {
            &self.plain
        }
    }
}

impl Reads {
    fn new(table: &str, deadlines: bool) -> Self {
        let t = format!("\"{table}\"");
        let columns = if deadlines {
            "key, value, expires_at"
        } else {
            "key, value"
        };
        Self {
            select_all: format!("SELECT {columns} FROM {t}"),
            select_after: format!(
                "SELECT {columns} FROM {t} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
            ),
            load_chunk: chunk_sql(table, deadlines),
            select_keys: per_chunk("?", |keys| {
                format!("SELECT {columns} FROM {t} WHERE key IN ({keys})")
            }),
            deadlines,
        }
    }
}

/// The statements that create a table, with the deadline column and its
/// index, or in the layout of versions 1 and 2.
pub(crate) fn create_table_sql(table: &str, deadlines: bool) -> Vec<String> {
    if deadlines {
        vec![
            format!(
                "CREATE TABLE \"{table}\" \
                 (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at INTEGER)"
            ),
            index_sql(table),
        ]
    } else {
        vec![format!(
            "CREATE TABLE \"{table}\" (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )]
    }
}

/// The partial index that finds entries with a deadline without a scan.
fn index_sql(table: &str) -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS \"{table}_expires_at\" ON \"{table}\" (expires_at) \
         WHERE expires_at IS NOT NULL"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_cover_every_chunk_size() {
        let sql = Statements::new("kv");
        let plain = sql.writes(false);
        let full = sql.writes(true);
        assert_eq!(plain.put.len(), CHUNK_SIZES);
        assert_eq!(full.put.len(), CHUNK_SIZES);
        assert_eq!(
            plain.delete[2],
            "DELETE FROM \"kv\" WHERE key IN (?, ?, ?, ?)"
        );
        assert_eq!(
            full.delete_expired[1],
            "DELETE FROM \"kv\" WHERE expires_at <= ? AND key IN (?, ?)"
        );
        assert_eq!(
            plain.put[0],
            "INSERT OR REPLACE INTO \"kv\" (key, value) VALUES (?, ?)"
        );
        assert!(full.put[1].starts_with(
            "INSERT INTO \"kv\" (key, value, expires_at) VALUES (?, ?, ?), (?, ?, ?) ON"
        ));
        assert_eq!(
            sql.reads(true).select_keys[0],
            "SELECT key, value, expires_at FROM \"kv\" WHERE key IN (?)"
        );
    }
}
