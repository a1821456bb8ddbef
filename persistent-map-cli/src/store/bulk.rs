//! Bulk writes for `copy` into an empty PostgreSQL table: `COPY ... FROM
//! STDIN` through the backend's own pool (`PostgresBackend::pool`), one
//! transaction per batch, instead of the backend's multi-row upsert, which
//! costs PostgreSQL about twice as much per row.
//!
//! Rows are written in the stored form persistent-map-postgres uses (see
//! `postgres.rs`), deadlines in its `expires_at` column, and other
//! instances are told to reload with the resync notification the backend
//! documents for writes made around it.

use persistent_map_postgres::{PostgresBackend, Watch};

use super::postgres::store_key;
use crate::entry::Entry;
use crate::error::{CliError, Result};

/// Appends `text` in COPY's text format (backslash, tab, newline and
/// carriage return escaped).
fn escape(out: &mut Vec<u8>, text: &[u8]) {
    let mut rest = text;
    while let Some(i) = rest
        .iter()
        .position(|&b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
    {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(match rest[i] {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
}

/// Whether the table has the deadline column, from its layout.
async fn has_deadlines(backend: &PostgresBackend, shown: &str) -> Result<bool> {
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = $2",
    )
    .bind(backend.schema())
    .bind(backend.table())
    .fetch_all(backend.pool())
    .await
    .map_err(|e| CliError::read("read", shown, e))?;
    Ok(persistent_map_postgres::layout_of(&columns)
        .is_some_and(persistent_map_postgres::has_deadlines))
}

/// Whether [`copy_in`] can write `entries`: it can unless one has a
/// deadline and the table has no deadline column yet (a table of format 3,
/// which the backend moves to format 4 with the first deadline it writes).
pub async fn can_copy_in(
    backend: &PostgresBackend,
    shown: &str,
    entries: &[Entry],
) -> Result<bool> {
    Ok(entries.iter().all(|e| e.expires_at.is_none()) || has_deadlines(backend, shown).await?)
}

/// Inserts `entries` (whose keys are not in the table) in one transaction,
/// with their deadlines when the table has the column.
pub async fn copy_in(backend: &PostgresBackend, shown: &str, entries: &[Entry]) -> Result<()> {
    let deadlines = has_deadlines(backend, shown).await?;
    let mut rows = Vec::with_capacity(entries.len() * 128);
    let mut json = Vec::with_capacity(256);
    for entry in entries {
        escape(&mut rows, store_key(&entry.key).as_bytes());
        rows.push(b'\t');
        json.clear();
        // Writing a Value into a String cannot fail.
        let _ = serde_json::to_writer(&mut json, &entry.value);
        let text = String::from_utf8_lossy(&json);
        let stored =
            persistent_map_postgres::store_value(&text).map_err(|e| CliError::BadRecord {
                store: shown.to_owned(),
                location: format!("key {}", persistent_map_core::render_key(&entry.key)),
                reason: e.to_string(),
            })?;
        escape(&mut rows, stored.as_bytes());
        if deadlines {
            rows.push(b'\t');
            match entry.expires_at {
                Some(ms) => rows.extend_from_slice(ms.to_string().as_bytes()),
                None => rows.extend_from_slice(b"\\N"),
            }
        }
        rows.push(b'\n');
    }
    let fail = |e: sqlx::Error| CliError::read("write to", shown, e);
    let mut tx = backend.pool().begin().await.map_err(fail)?;
    let columns = if deadlines {
        "key, value, expires_at"
    } else {
        "key, value"
    };
    let sql = format!(
        "COPY \"{}\".\"{}\" ({columns}) FROM STDIN",
        backend.schema(),
        backend.table()
    );
    let mut copy = tx.copy_in_raw(&sql).await.map_err(fail)?;
    copy.send(rows).await.map_err(fail)?;
    copy.finish().await.map_err(fail)?;
    tx.commit().await.map_err(fail)
}

/// Tells other instances following the table to read it again.
pub async fn announce(backend: &PostgresBackend, shown: &str) -> Result<()> {
    if backend.watch() != Watch::Enabled {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(backend.channel())
        .bind(persistent_map_server_support::Announcement::resync("cli").to_json())
        .execute(backend.pool())
        .await
        .map_err(|e| CliError::read("notify", shown, e))?;
    Ok(())
}
