//! Reading a SQLite store read-only, with SQL on a read-only connection
//! pool: ordered streaming scans, `PRAGMA integrity_check`, and a check of
//! every row.

use persistent_map_core::codec::KeyFormat;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use persistent_map_sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use super::{parse_value, Batcher, Deadlines, Details, Order, Report, Sink, StoreName};
use crate::entry::{show_key, Entry};
use crate::error::{CliError, Result};

/// The table recording each map table's format version.
const META_TABLE: &str = "persistent_map_meta";

/// Why a deadline does not decode.
const NOT_A_DEADLINE: &str = "the deadline (expires_at) is not an integer number of milliseconds";

/// Rows per chunk of a scan.
const CHUNK: usize = 4096;

#[derive(Debug)]
pub struct SqliteSource {
    pool: SqlitePool,
    path: PathBuf,
    table: String,
    /// `table "kv"` quoted for SQL (checked as an identifier first).
    quoted: String,
    shown: String,
}

impl SqliteSource {
    pub async fn open(name: &StoreName, path: &Path, table: &str) -> Result<Self> {
        let shown = name.to_string();
        if !path.exists() {
            return Err(CliError::Missing {
                store: shown,
                path: path.to_path_buf(),
            });
        }
        if !is_identifier(table) {
            return Err(CliError::Usage(format!(
                "invalid table name {table:?}: use ASCII letters, digits and '_', not starting with a digit"
            )));
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .create_if_missing(false)
            .foreign_keys(false);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(|e| CliError::read("open", &shown, e))?;
        Ok(Self {
            pool,
            path: path.to_path_buf(),
            table: table.to_owned(),
            quoted: format!("\"{table}\""),
            shown,
        })
    }

    fn fail(&self, action: &'static str) -> impl Fn(sqlx::Error) -> CliError + '_ {
        move |e| CliError::read(action, &self.shown, e)
    }

    async fn table_exists(&self) -> Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")
                .bind(&self.table)
                .fetch_optional(&self.pool)
                .await
                .map_err(self.fail("read"))?;
        Ok(found.is_some())
    }

    pub async fn count(&self) -> Result<u64> {
        if !self.table_exists().await? {
            return Ok(0);
        }
        let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", self.quoted))
            .fetch_one(&self.pool)
            .await
            .map_err(self.fail("count the entries of"))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Streams the table in key order, in one read transaction (one
    /// snapshot). Rows are read in chunks that SQLite packs into one JSON
    /// array each (`json_group_array`), decoded straight into entries:
    /// far cheaper than a driver round trip per row. A chunk that does not
    /// pack (a row that is not text, a value that is not JSON) is read
    /// again row by row, which names the row that is wrong.
    pub async fn scan(&self, _order: Order, sink: &mut dyn Sink) -> Result<()> {
        if !self.table_exists().await? {
            return Ok(());
        }
        let deadline = self.deadline_column().await?;
        let mut conn = self.pool.acquire().await.map_err(self.fail("read"))?;
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(self.fail("read"))?;
        let chunk = |filter: &str| {
            format!(
                "SELECT max(key), count(*), \
                 json_group_array(json_array(key, json(value), expires_at)) \
                 FROM (SELECT key, value, {deadline} AS expires_at FROM {} {filter} \
                 ORDER BY key LIMIT {CHUNK})",
                self.quoted
            )
        };
        let (first, next) = (chunk(""), chunk("WHERE key > ?1"));
        let rows = |filter: &str| {
            format!(
                "SELECT key, value, {deadline} FROM {} {filter} ORDER BY key LIMIT {CHUNK}",
                self.quoted
            )
        };
        let (first_rows, next_rows) = (rows(""), rows("WHERE key > ?1"));
        let mut batcher = Batcher::new(sink);
        let mut after: Option<String> = None;
        loop {
            let query = match &after {
                None => sqlx::query_as(&first),
                Some(key) => sqlx::query_as(&next).bind(key.as_str()),
            };
            let packed: std::result::Result<(Option<String>, i64, String), _> =
                query.fetch_one(&mut *tx).await;
            let entries = match packed {
                Ok((None, _, _)) => break,
                Ok((Some(last), _, json)) => {
                    type Packed = Vec<(String, serde_json::Value, Option<i64>)>;
                    match serde_json::from_str::<Packed>(&json) {
                        Ok(rows) => {
                            after = Some(last);
                            rows.into_iter()
                                .map(|(key, value, expires_at)| Entry {
                                    key,
                                    value,
                                    expires_at,
                                })
                                .collect()
                        }
                        Err(_) => Vec::new(),
                    }
                }
                Err(_) => Vec::new(),
            };
            let mut entries: Vec<Entry> = entries;
            if entries.is_empty() {
                // Read this chunk row by row, to name what is wrong.
                let query = match &after {
                    None => sqlx::query(&first_rows),
                    Some(key) => sqlx::query(&next_rows).bind(key.as_str()),
                };
                let fetched = query.fetch_all(&mut *tx).await.map_err(self.fail("read"))?;
                if fetched.is_empty() {
                    break;
                }
                for row in &fetched {
                    entries.push(self.decode(row).map_err(|(location, reason)| {
                        CliError::BadRecord {
                            store: self.shown.clone(),
                            location,
                            reason,
                        }
                    })?);
                }
                after = entries.last().map(|e| e.key.clone());
            }
            // json_group_array keeps the subquery's order in practice; sort
            // anyway, as SQLite does not promise it.
            entries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
            for entry in entries {
                batcher.push(entry).await?;
            }
            if batcher.done() {
                break;
            }
        }
        batcher.finish().await
    }

    /// Decodes a `key, value, expires_at` row, or says where and why it
    /// does not decode.
    fn decode(
        &self,
        row: &sqlx::sqlite::SqliteRow,
    ) -> std::result::Result<Entry, (String, String)> {
        let key: Option<String> = row
            .try_get(0)
            .map_err(|_| (String::from("a row"), String::from("the key is not text")))?;
        let key = key.ok_or_else(|| (String::from("a row"), String::from("the key is NULL")))?;
        let at = || format!("key {}", show_key(&key));
        let value: Option<String> = row
            .try_get(1)
            .map_err(|_| (at(), String::from("the value is not text")))?;
        let value = value.ok_or_else(|| (at(), String::from("the value is NULL")))?;
        let value = parse_value(&value).map_err(|reason| (at(), reason))?;
        let expires_at: Option<i64> = row
            .try_get(2)
            .map_err(|_| (at(), String::from(NOT_A_DEADLINE)))?;
        Ok(Entry {
            key,
            value,
            expires_at,
        })
    }

    /// What to select as a row's deadline: the `expires_at` column in the
    /// formats that have it, else `NULL` (no entry expires).
    async fn deadline_column(&self) -> Result<&'static str> {
        Ok(if self.has_deadlines().await? {
            "expires_at"
        } else {
            "NULL"
        })
    }

    /// Whether the table's recorded format has the deadline column.
    async fn has_deadlines(&self) -> Result<bool> {
        Ok(self.format_version().await?.is_some_and(|version| {
            persistent_map_sqlite::has_deadlines(u32::try_from(version.max(0)).unwrap_or(u32::MAX))
        }))
    }

    pub async fn lookup(&self, key: &str) -> Result<Option<(serde_json::Value, Option<i64>)>> {
        if !self.table_exists().await? {
            return Ok(None);
        }
        let row = sqlx::query(&format!(
            "SELECT key, value, {} FROM {} WHERE key = ?1",
            self.deadline_column().await?,
            self.quoted
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.fail("read"))?;
        match row {
            None => Ok(None),
            Some(row) => self
                .decode(&row)
                .map(|entry| Some((entry.value, entry.expires_at)))
                .map_err(|(location, reason)| CliError::BadRecord {
                    store: self.shown.clone(),
                    location,
                    reason,
                }),
        }
    }

    /// How the table holds keys: format version 2 in the distinct key
    /// format, older ones (and an unstamped 0.1.x table) in the legacy one;
    /// a missing table is created in the format of new stores.
    pub async fn key_format(&self) -> Result<KeyFormat> {
        Ok(match self.format_version().await? {
            // A negative version is below every version: legacy.
            Some(version) => persistent_map_sqlite::key_format_of(
                u32::try_from(version.max(0)).unwrap_or(u32::MAX),
            ),
            None if self.table_exists().await? => KeyFormat::Legacy,
            None => KeyFormat::NEW_STORES,
        })
    }

    async fn format_version(&self) -> Result<Option<i64>> {
        let meta: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")
                .bind(META_TABLE)
                .fetch_optional(&self.pool)
                .await
                .map_err(self.fail("read"))?;
        if meta.is_none() {
            return Ok(None);
        }
        sqlx::query_scalar(&format!(
            "SELECT format_version FROM {META_TABLE} WHERE table_name = ?1"
        ))
        .bind(&self.table)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.fail("read"))
    }

    pub async fn details(&self) -> Result<Details> {
        let exists = self.table_exists().await?;
        let format_version = match self.format_version().await? {
            Some(v) => Some(v.to_string()),
            None if exists => Some(String::from("0 (persistent-map 0.1.x, not stamped yet)")),
            None => None,
        };
        let file = |suffix: &str| {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
        };
        let (db, wal) = (file(""), file("-wal"));
        // dbstat is compiled into the bundled SQLite; older builds may lack it.
        let table_bytes: Option<i64> = sqlx::query_scalar(
            "SELECT SUM(pgsize) FROM dbstat WHERE name = ?1 OR name IN \
             (SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1)",
        )
        .bind(&self.table)
        .fetch_one(&self.pool)
        .await
        .ok()
        .flatten();
        let mut size_note = format!("database file {db} bytes, write-ahead log {wal} bytes");
        if let Some(bytes) = table_bytes {
            size_note.push_str(&format!("; this table and its index {bytes} bytes"));
        }
        let deadlines = if exists && self.has_deadlines().await? {
            let (with, expired): (i64, i64) = sqlx::query_as(&format!(
                "SELECT count(expires_at), count(CASE WHEN expires_at <= ?1 THEN 1 END) FROM {}",
                self.quoted
            ))
            .bind(super::now_millis())
            .fetch_one(&self.pool)
            .await
            .map_err(self.fail("count the deadlines of"))?;
            Some(Deadlines {
                with_deadline: u64::try_from(with).unwrap_or(0),
                expired: u64::try_from(expired).unwrap_or(0),
            })
        } else {
            None
        };
        Ok(Details {
            exists,
            format_version,
            deadlines,
            size_bytes: Some(db + wal),
            size_note,
            csv: None,
        })
    }

    pub async fn verify(&self) -> Result<Report> {
        let mut report = Report::default();
        let checks: Vec<String> = match sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_all(&self.pool)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                report.problem(
                    self.path.display().to_string(),
                    format!("not a readable SQLite database ({e})"),
                );
                return Ok(report);
            }
        };
        for line in checks.into_iter().filter(|l| l != "ok") {
            report.problem("integrity_check", line);
        }
        if !self.table_exists().await? {
            report.problem(
                format!("table {}", self.quoted),
                "no such table: the file holds no map of that name",
            );
            return Ok(report);
        }
        let columns: Vec<(String, i64)> =
            sqlx::query_as("SELECT name, pk FROM pragma_table_info(?1)")
                .bind(&self.table)
                .fetch_all(&self.pool)
                .await
                .map_err(self.fail("read"))?;
        let has = |n: &str| columns.iter().any(|(c, _)| c.eq_ignore_ascii_case(n));
        let key_pk = columns
            .iter()
            .any(|(c, pk)| c.eq_ignore_ascii_case("key") && *pk > 0);
        if !(has("key") && has("value") && key_pk) {
            report.problem(
                format!("table {}", self.quoted),
                "not a persistent-map table (expected key TEXT PRIMARY KEY, value TEXT)",
            );
            return Ok(report);
        }
        let deadlines = self.has_deadlines().await?;
        if deadlines != has("expires_at") {
            report.problem(
                format!("table {}", self.quoted),
                if deadlines {
                    "the recorded format version has the expires_at column, the table does not"
                } else {
                    "the table has an expires_at column its recorded format version does not have"
                },
            );
            return Ok(report);
        }
        match self.format_version().await? {
            None => report.notes.push(String::from(
                "no format version recorded: a persistent-map 0.1.x table; the library stamps it on its next open",
            )),
            Some(v) if v > i64::from(persistent_map_sqlite::FORMAT_VERSION) => report.problem(
                META_TABLE,
                format!(
                    "format version {v} is newer than this tool reads ({})",
                    persistent_map_sqlite::FORMAT_VERSION
                ),
            ),
            Some(_) => {}
        }
        // rowid locates rows whose key cannot be shown.
        let deadline = if deadlines {
            "typeof(expires_at)"
        } else {
            "'null'"
        };
        let sql = format!(
            "SELECT rowid, typeof(key), typeof(value), CAST(key AS TEXT), CAST(value AS TEXT), \
             {deadline} FROM {}",
            self.quoted
        );
        let mut rows = sqlx::query(&sql).fetch(&self.pool);
        while let Some(row) = rows.try_next().await.map_err(self.fail("read"))? {
            report.checked += 1;
            let rowid: i64 = row.try_get(0).unwrap_or_default();
            let key_type: String = row.try_get(1).unwrap_or_default();
            let value_type: String = row.try_get(2).unwrap_or_default();
            let key: Option<String> = row.try_get(3).unwrap_or_default();
            let value: Option<String> = row.try_get(4).unwrap_or_default();
            let at = match (&key, key_type.as_str()) {
                (Some(k), "text") => format!("rowid {rowid}, key {}", show_key(k)),
                _ => format!("rowid {rowid}"),
            };
            if key_type != "text" {
                report.problem(&at, format!("the key is {key_type}, not text"));
                continue;
            }
            if value_type != "text" {
                report.problem(&at, format!("the value is {value_type}, not text"));
                continue;
            }
            if let Err(reason) = parse_value(value.as_deref().unwrap_or_default()) {
                report.problem(&at, reason);
            }
            let deadline_type: String = row.try_get(5).unwrap_or_default();
            if !matches!(deadline_type.as_str(), "integer" | "null") {
                report.problem(&at, format!("{NOT_A_DEADLINE} (it is {deadline_type})"));
            }
        }
        Ok(report)
    }
}

/// A plain SQL identifier, safe to quote into SQL.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}
