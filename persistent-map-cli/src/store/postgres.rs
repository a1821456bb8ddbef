//! Reading a PostgreSQL store read-only, with SQL: streaming scans (in
//! byte order of the key with `COLLATE "C"`), and a check of every row.
//!
//! Keys and values are stored as persistent-map-postgres stores them: the
//! key text, except that a text holding U+0000 or starting with U+0001 is
//! escaped behind U+0001; the value as JSONB, except that JSON JSONB cannot
//! hold is wrapped as `{"persistent_map:json": "<json text>"}`. Both are
//! undone here as that crate does.

use std::str::FromStr;
use std::time::Duration;

use futures::TryStreamExt;
use persistent_map_core::codec::KeyFormat;
use persistent_map_postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use serde_json::Value;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use super::{parse_value, Batcher, Deadlines, Details, Order, Report, Sink, StoreName};
use crate::entry::{show_key, Entry};
use crate::error::{CliError, Result};

const META_TABLE: &str = "persistent_map_meta";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct PostgresSource {
    pool: PgPool,
    schema: String,
    table: String,
    /// `"schema"."table"`.
    qualified: String,
    shown: String,
}

impl PostgresSource {
    pub async fn open(name: &StoreName, url: &str, schema: &str, table: &str) -> Result<Self> {
        let shown = name.to_string();
        for (what, ident) in [("schema", schema), ("table", table)] {
            if !super::sqlite::is_identifier(ident) {
                return Err(CliError::Usage(format!(
                    "invalid {what} name {ident:?}: use ASCII letters, digits and '_', not starting with a digit"
                )));
            }
        }
        // The parse error may quote the URL, password included: not shown.
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| CliError::Usage(format!("invalid PostgreSQL URL {shown}")))?;
        // One direct connection first: a pool would retry a refused
        // connection until its timeout and then report only the timeout.
        let check =
            match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return Err(CliError::read("connect to", &shown, e)),
                Err(_) => {
                    return Err(CliError::read(
                        "connect to",
                        &shown,
                        format!("no connection within {CONNECT_TIMEOUT:?}"),
                    ))
                }
            };
        let _ = check.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            schema: schema.to_owned(),
            table: table.to_owned(),
            qualified: format!("\"{schema}\".\"{table}\""),
            shown,
        })
    }

    fn fail(&self, action: &'static str) -> impl Fn(sqlx::Error) -> CliError + '_ {
        move |e| CliError::read(action, &self.shown, e)
    }

    async fn relation_exists(&self, qualified: &str) -> Result<bool> {
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(qualified)
            .fetch_one(&self.pool)
            .await
            .map_err(self.fail("read"))?;
        Ok(found.is_some())
    }

    async fn table_exists(&self) -> Result<bool> {
        self.relation_exists(&self.qualified).await
    }

    pub async fn count(&self) -> Result<u64> {
        if !self.table_exists().await? {
            return Ok(0);
        }
        let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", self.qualified))
            .fetch_one(&self.pool)
            .await
            .map_err(self.fail("count the entries of"))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Streams the table. In key order (byte order, `COLLATE "C"`), row by
    /// row from one sorted query; in any order, with `COPY ... TO STDOUT`,
    /// which costs far less per row.
    pub async fn scan(&self, order: Order, sink: &mut dyn Sink) -> Result<()> {
        if !self.table_exists().await? {
            return Ok(());
        }
        let deadline = self.deadline_column().await?;
        if order == Order::Any {
            return self.scan_chunks(deadline, sink).await;
        }
        let sql = format!(
            "SELECT key, value::text, {deadline} FROM {} ORDER BY key COLLATE \"C\"",
            self.qualified
        );
        let mut rows = sqlx::query(&sql).fetch(&self.pool);
        let mut batcher = Batcher::new(sink);
        while let Some(row) = rows.try_next().await.map_err(self.fail("read"))? {
            let stored: String = row.try_get(0).map_err(self.fail("read"))?;
            let printed: String = row.try_get(1).map_err(self.fail("read"))?;
            let expires_at: Option<i64> = row.try_get(2).map_err(self.fail("read"))?;
            let entry =
                decode(&stored, printed, expires_at).map_err(|reason| self.bad(&stored, reason))?;
            batcher.push(entry).await?;
            if batcher.done() {
                break;
            }
        }
        batcher.finish().await
    }

    fn bad(&self, stored: &str, reason: String) -> CliError {
        CliError::BadRecord {
            store: self.shown.clone(),
            location: format!("key {}", show_key(stored)),
            reason,
        }
    }

    /// The whole table through `COPY ... TO STDOUT`, PostgreSQL's cheapest
    /// way out, parsed line by line as it streams.
    async fn scan_chunks(&self, deadline: &str, sink: &mut dyn Sink) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(self.fail("read"))?;
        let sql = format!(
            "COPY (SELECT key, value, {deadline} FROM {}) TO STDOUT",
            self.qualified
        );
        let mut stream = conn.copy_out_raw(&sql).await.map_err(self.fail("read"))?;
        let mut batcher = Batcher::new(sink);
        let mut pending: Vec<u8> = Vec::new();
        while let Some(bytes) = stream.try_next().await.map_err(self.fail("read"))? {
            pending.extend_from_slice(&bytes);
            let Some(end) = pending.iter().rposition(|&b| b == b'\n') else {
                continue;
            };
            for line in pending[..end].split(|&b| b == b'\n') {
                let entry = self.copy_line(line)?;
                batcher.push(entry).await?;
            }
            pending.drain(..=end);
            if batcher.done() {
                return batcher.finish().await;
            }
        }
        batcher.finish().await
    }

    /// One `key<TAB>value<TAB>expires_at` line of COPY's text format
    /// (`\N` for no deadline).
    fn copy_line(&self, line: &[u8]) -> Result<Entry> {
        let broken = || CliError::read("read", &self.shown, "a COPY line without three fields");
        let mut fields = line.split(|&b| b == b'\t');
        let (Some(key), Some(value), Some(deadline), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(broken());
        };
        let stored = copy_unescape(key);
        let printed = copy_unescape(value);
        // A BIGINT prints as digits: anything else is a broken stream.
        let expires_at = match deadline {
            b"\\N" => None,
            digits => Some(
                std::str::from_utf8(digits)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or_else(broken)?,
            ),
        };
        decode(&stored, printed, expires_at).map_err(|reason| self.bad(&stored, reason))
    }

    /// The table's columns, as `information_schema.columns` names them.
    async fn columns(&self) -> Result<Vec<(String, String)>> {
        sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2",
        )
        .bind(&self.schema)
        .bind(&self.table)
        .fetch_all(&self.pool)
        .await
        .map_err(self.fail("read"))
    }

    /// Whether the table's layout has the deadline column.
    async fn has_deadlines(&self) -> Result<bool> {
        Ok(persistent_map_postgres::layout_of(&self.columns().await?)
            .is_some_and(persistent_map_postgres::has_deadlines))
    }

    /// What to select as a row's deadline: the `expires_at` column in the
    /// layout that has it, else `NULL` (no entry expires).
    async fn deadline_column(&self) -> Result<&'static str> {
        Ok(if self.has_deadlines().await? {
            "expires_at"
        } else {
            "NULL::bigint"
        })
    }

    pub async fn lookup(&self, key: &str) -> Result<Option<(Value, Option<i64>)>> {
        if !self.table_exists().await? {
            return Ok(None);
        }
        let stored = store_key(key);
        let row: Option<(String, Option<i64>)> = sqlx::query_as(&format!(
            "SELECT value::text, {} FROM {} WHERE key = $1",
            self.deadline_column().await?,
            self.qualified
        ))
        .bind(&stored)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.fail("read"))?;
        match row {
            None => Ok(None),
            Some((printed, expires_at)) => decode(&stored, printed, expires_at)
                .map(|e| Some((e.value, e.expires_at)))
                .map_err(|reason| CliError::BadRecord {
                    store: self.shown.clone(),
                    location: format!("key {}", show_key(key)),
                    reason,
                }),
        }
    }

    /// How the table holds keys: format version 3 in the distinct key
    /// format, older ones in the legacy one; a missing table is created in
    /// the format of new stores.
    pub async fn key_format(&self) -> Result<KeyFormat> {
        Ok(match self.format_version().await? {
            // A negative version is below every version: legacy.
            Some(version) => persistent_map_postgres::key_format_of(
                u32::try_from(version.max(0)).unwrap_or(u32::MAX),
            ),
            None if self.table_exists().await? => KeyFormat::Legacy,
            None => KeyFormat::NEW_STORES,
        })
    }

    async fn format_version(&self) -> Result<Option<i32>> {
        let meta = format!("\"{}\".{META_TABLE}", self.schema);
        if !self.relation_exists(&meta).await? {
            return Ok(None);
        }
        sqlx::query_scalar(&format!(
            "SELECT format_version FROM {meta} WHERE table_name = $1"
        ))
        .bind(&self.table)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.fail("read"))
    }

    pub async fn details(&self) -> Result<Details> {
        let exists = self.table_exists().await?;
        let size: Option<i64> = if exists {
            sqlx::query_scalar("SELECT pg_total_relation_size($1::regclass)")
                .bind(&self.qualified)
                .fetch_one(&self.pool)
                .await
                .map_err(self.fail("read"))?
        } else {
            None
        };
        let deadlines = if exists && self.has_deadlines().await? {
            let (with, expired): (i64, i64) = sqlx::query_as(&format!(
                "SELECT count(expires_at), count(*) FILTER (WHERE expires_at <= $1) FROM {}",
                self.qualified
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
            format_version: self.format_version().await?.map(|v| v.to_string()),
            deadlines,
            size_bytes: size.and_then(|s| u64::try_from(s).ok()),
            size_note: String::from(
                "the table with its index and TOAST data (pg_total_relation_size)",
            ),
            csv: None,
        })
    }

    pub async fn verify(&self) -> Result<Report> {
        let mut report = Report::default();
        if !self.table_exists().await? {
            report.problem(format!("table {}", self.qualified), "no such table");
            return Ok(report);
        }
        let Some(layout) = persistent_map_postgres::layout_of(&self.columns().await?) else {
            report.problem(
                format!("table {}", self.qualified),
                "not a persistent-map table (expected key TEXT, value JSONB, from format 2 \
                 key_hash BYTEA, from format 4 expires_at BIGINT)",
            );
            return Ok(report);
        };
        match self.format_version().await? {
            None => report.problem(META_TABLE, "no format version recorded for this table"),
            Some(v) if v > persistent_map_postgres::FORMAT_VERSION as i32 => report.problem(
                META_TABLE,
                format!(
                    "format version {v} is newer than this tool reads ({})",
                    persistent_map_postgres::FORMAT_VERSION
                ),
            ),
            Some(v)
                if persistent_map_postgres::has_deadlines(u32::try_from(v).unwrap_or(0))
                    && !persistent_map_postgres::has_deadlines(layout) =>
            {
                report.problem(
                    format!("table {}", self.qualified),
                    format!("format version {v} has the expires_at column, the table does not"),
                );
            }
            Some(_) => {}
        }
        // The column is BIGINT: every deadline in it decodes.
        let sql = format!("SELECT key, value::text FROM {}", self.qualified);
        let mut rows = sqlx::query(&sql).fetch(&self.pool);
        while let Some(row) = rows.try_next().await.map_err(self.fail("read"))? {
            report.checked += 1;
            let stored: Option<String> = row.try_get(0).map_err(self.fail("read"))?;
            let printed: Option<String> = row.try_get(1).map_err(self.fail("read"))?;
            let (Some(stored), Some(printed)) = (stored, printed) else {
                report.problem("a row", "NULL key or value");
                continue;
            };
            if let Err(reason) = decode(&stored, printed, None) {
                report.problem(format!("key {}", show_key(&stored)), reason);
            }
        }
        Ok(report)
    }
}

/// A row's entry, as persistent-map-postgres reads it.
fn decode(
    stored: &str,
    printed: String,
    expires_at: Option<i64>,
) -> std::result::Result<Entry, String> {
    let key = load_key(stored).ok_or("the key's U+0001 escape is damaged")?;
    let value = parse_value(&persistent_map_postgres::load_value(printed))?;
    Ok(Entry {
        key,
        value,
        expires_at,
    })
}

/// A field of COPY's text format, escapes undone.
fn copy_unescape(field: &[u8]) -> String {
    if !field.contains(&b'\\') {
        return String::from_utf8(field.to_vec())
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    }
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'r') => out.push(b'\r'),
            Some(b'b') => out.push(8),
            Some(b'f') => out.push(12),
            Some(b'v') => out.push(11),
            Some(&other) => out.push(other),
            None => {}
        }
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The stored form of a key text.
pub fn store_key(text: &str) -> String {
    persistent_map_postgres::store_key(text).into_owned()
}

/// The key text of a stored key, or `None` when its escape is damaged.
fn load_key(stored: &str) -> Option<String> {
    persistent_map_postgres::load_key(stored).map(std::borrow::Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_jsonb_cannot_hold_are_wrapped() {
        let nul = serde_json::to_string("a\u{0}b").expect("json");
        let stored = persistent_map_postgres::store_value(&nul)
            .expect("wraps")
            .into_owned();
        let printed = stored.replacen("json\":", "json\": ", 1);
        assert_eq!(
            decode("k", printed, None).expect("decodes").value,
            Value::String("a\u{0}b".into())
        );
    }

    #[test]
    fn copy_fields_are_unescaped() {
        assert_eq!(copy_unescape(br"a\tb\\c\nd"), "a\tb\\c\nd");
        assert_eq!(
            copy_unescape("{\"k\": \"Zürich\"}".as_bytes()),
            "{\"k\": \"Zürich\"}"
        );
    }

    #[test]
    fn wrapped_values_are_unwrapped() {
        let entry = decode(
            "k",
            r#"{"persistent_map:json": "\"a\\u0000b\""}"#.into(),
            None,
        )
        .expect("decodes");
        assert_eq!(entry.value, Value::String("a\u{0}b".into()));
        let entry = decode("k", r#"{"a": 1}"#.into(), None).expect("decodes");
        assert_eq!(entry.value, serde_json::json!({"a": 1}));
    }
}
