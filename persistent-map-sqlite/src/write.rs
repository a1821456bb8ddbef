//! Writing a batch: in the batch's order, runs of puts, of removals and
//! of removals of expired entries as multi-row statements, each chunk
//! encoded while SQLite runs the one before it.
//!
//! SQLite applies the rows of one multi-row upsert in order (a key that
//! appears twice ends with its last value), so a batch needs no merging
//! per key: consecutive puts (with or without a deadline) become upserts,
//! consecutive removals `DELETE ... IN`, and consecutive removals of
//! expired entries with the same clock `DELETE ... WHERE expires_at <= now
//! AND key IN`, in order. A removal of an expired entry is conditional, so
//! it is never merged with a plain removal. Chunk sizes are powers of two
//! up to [`MAX_CHUNK`], so each statement text is prepared once per
//! connection.

use std::time::SystemTime;

use persistent_map_core::codec::{value_to_json, KeyFormat};
use persistent_map_core::{render_key, BatchOp, EntryPart, Location, PersistentError};
use serde::Serialize;
use sqlx::sqlite::SqliteConnection;
use sqlx::Connection;

use crate::format::{has_deadlines, with_deadlines, FORMAT_VERSION};
use crate::statements::Statements;
use persistent_map_core::codec::deadline_to_millis as to_millis;

/// Rows per multi-row statement, at most. 256 rows of 3 parameters stay far
/// below SQLite's parameter limit (999 before 3.32, 32766 since).
pub(crate) const MAX_CHUNK: usize = 256;

/// Number of distinct chunk sizes: the powers of two up to [`MAX_CHUNK`].
pub(crate) const CHUNK_SIZES: usize = MAX_CHUNK.trailing_zeros() as usize + 1;

/// Why a batch was not written.
pub(crate) enum Failure {
    /// A key, value or deadline could not be encoded, or the table is not
    /// in a format this release writes; nothing was written.
    Refused(PersistentError),
    /// SQLite refused; the transaction was rolled back.
    Sql(sqlx::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Sql(e)
    }
}

/// The statement texts for one table layout, per chunk size.
pub(crate) struct Texts<'a> {
    /// `put[i]` stores `2^i` rows: key and value, plus the deadline when
    /// [`deadlines`](Self::deadlines) is set.
    pub(crate) put: &'a [String],
    /// `put_plain[i]` stores `2^i` rows of key and value, none with a
    /// deadline (clearing any stored one).
    pub(crate) put_plain: &'a [String],
    /// `delete[i]` deletes `2^i` keys.
    pub(crate) delete: &'a [String],
    /// `delete_expired[i]` deletes those of `2^i` keys whose deadline is
    /// not after its first parameter.
    pub(crate) delete_expired: &'a [String],
    /// Whether the table has the deadline column.
    pub(crate) deadlines: bool,
}

/// Where a batch goes and how its keys are named in errors.
pub(crate) struct Target<'a> {
    pub(crate) store: &'a str,
    pub(crate) table: &'a str,
    pub(crate) format: KeyFormat,
}

/// One statement of a batch, encoded: the chunk size index and its rows.
enum Encoded {
    /// Whether some row has a deadline, and the rows.
    Put(usize, bool, Vec<(String, String, Option<i64>)>),
    Delete(usize, Vec<String>),
    DeleteExpired(usize, i64, Vec<String>),
}

/// Writes `batch` on `conn` with `texts`: one statement alone (atomic on
/// its own, without BEGIN/COMMIT round trips), or a `BEGIN IMMEDIATE`
/// transaction.
pub(crate) async fn write_batch<K: Serialize, V: Serialize>(
    conn: &mut SqliteConnection,
    texts: &Texts<'_>,
    batch: &[BatchOp<K, V>],
    target: &Target<'_>,
) -> Result<(), Failure> {
    let mut statements = statements(batch, texts.deadlines);
    let Some(first) = statements.next() else {
        return Ok(());
    };
    let pending = encode(first, texts, target).map_err(Failure::Refused)?;
    let Some(next) = statements.next() else {
        return Ok(execute(conn, texts, &pending).await?);
    };
    // IMMEDIATE takes the write lock up front, waiting through the busy
    // timeout; a deferred transaction could instead fail mid-batch. On any
    // failure the transaction is dropped, which rolls it back.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    run(&mut tx, texts, pending, next, statements, target).await?;
    Ok(tx.commit().await?)
}

/// Writes a batch that holds expiry changes to a table this backend last
/// saw without the deadline column, in one `BEGIN IMMEDIATE` transaction
/// that first reads the table's format version (another process may have
/// added the column since) and, if the batch stores a deadline and the
/// column is still missing, adds it, its index and the new version.
/// Returns the table's version after the batch.
pub(crate) async fn write_upgrading<K: Serialize, V: Serialize>(
    conn: &mut SqliteConnection,
    sql: &Statements,
    batch: &[BatchOp<K, V>],
    target: &Target<'_>,
) -> Result<u32, Failure> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let stored: Option<i64> = sqlx::query_scalar(&sql.version)
        .bind(target.table)
        .fetch_optional(&mut *tx)
        .await?;
    let location = || Location::new(target.store);
    let version = stored.and_then(|v| u32::try_from(v).ok()).ok_or_else(|| {
        Failure::Refused(PersistentError::corrupt(
            location(),
            format!("no valid format version recorded: {stored:?}"),
        ))
    })?;
    if version > FORMAT_VERSION {
        return Err(Failure::Refused(PersistentError::UnsupportedFormat {
            location: location(),
            found: version,
            supported: FORMAT_VERSION,
        }));
    }
    let stores_deadline = batch
        .iter()
        .any(|op| matches!(op, BatchOp::PutExpiring { .. }));
    let version = if has_deadlines(version) || !stores_deadline {
        version
    } else {
        let column: Option<i64> = sqlx::query_scalar(&sql.has_deadline_column)
            .bind(target.table)
            .fetch_optional(&mut *tx)
            .await?;
        if column.is_none() {
            sqlx::query(&sql.add_deadline_column)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(&sql.index_deadlines).execute(&mut *tx).await?;
        let upgraded = with_deadlines(version);
        sqlx::query(&sql.set_version)
            .bind(i64::from(upgraded))
            .bind(target.table)
            .execute(&mut *tx)
            .await?;
        tracing::info!(
            store = target.store,
            from = version,
            to = upgraded,
            "added the deadline column to the table"
        );
        upgraded
    };
    let texts = sql.writes(has_deadlines(version));
    let mut statements = statements(batch, texts.deadlines);
    if let Some(first) = statements.next() {
        let pending = encode(first, &texts, target).map_err(Failure::Refused)?;
        match statements.next() {
            Some(next) => run(&mut tx, &texts, pending, next, statements, target).await?,
            None => execute(&mut tx, &texts, &pending).await?,
        }
    }
    tx.commit().await?;
    Ok(version)
}

/// Runs `pending`, then every later chunk, each encoded while SQLite runs
/// the one before it.
async fn run<'b, K: Serialize + 'b, V: Serialize + 'b>(
    conn: &mut SqliteConnection,
    texts: &Texts<'_>,
    mut pending: Encoded,
    mut next: &'b [BatchOp<K, V>],
    mut statements: impl Iterator<Item = &'b [BatchOp<K, V>]>,
    target: &Target<'_>,
) -> Result<(), Failure> {
    loop {
        let (done, encoded) = tokio::join!(execute(conn, texts, &pending), async {
            encode(next, texts, target)
        });
        done?;
        pending = encoded.map_err(Failure::Refused)?;
        match statements.next() {
            Some(chunk) => next = chunk,
            None => break,
        }
    }
    Ok(execute(conn, texts, &pending).await?)
}

async fn execute(
    conn: &mut SqliteConnection,
    texts: &Texts<'_>,
    encoded: &Encoded,
) -> Result<(), sqlx::Error> {
    let query = match encoded {
        Encoded::Put(size, true, rows) => {
            let mut query = sqlx::query(&texts.put[*size]);
            for (key, value, deadline) in rows {
                query = query
                    .bind(key.as_str())
                    .bind(value.as_str())
                    .bind(*deadline);
            }
            query
        }
        Encoded::Put(size, false, rows) => {
            let mut query = sqlx::query(&texts.put_plain[*size]);
            for (key, value, _) in rows {
                query = query.bind(key.as_str()).bind(value.as_str());
            }
            query
        }
        Encoded::Delete(size, keys) => {
            let mut query = sqlx::query(&texts.delete[*size]);
            for key in keys {
                query = query.bind(key.as_str());
            }
            query
        }
        Encoded::DeleteExpired(size, now, keys) => {
            let mut query = sqlx::query(&texts.delete_expired[*size]).bind(*now);
            for key in keys {
                query = query.bind(key.as_str());
            }
            query
        }
    };
    query.execute(conn).await.map(drop)
}

/// Encodes a chunk of changes of one kind, naming the key that fails.
fn encode<K: Serialize, V: Serialize>(
    chunk: &[BatchOp<K, V>],
    texts: &Texts<'_>,
    target: &Target<'_>,
) -> Result<Encoded, PersistentError> {
    let size = chunk.len().trailing_zeros() as usize;
    let at = |key: &K| Location::new(target.store).with_key(render_key(key));
    let key_text = |key: &K| {
        target
            .format
            .encode(key)
            .map_err(|e| PersistentError::encode(EntryPart::Key, at(key), e))
    };
    let keys = || {
        chunk
            .iter()
            .map(|op| key_text(op.key()))
            .collect::<Result<Vec<_>, _>>()
    };
    // `statements` never mixes kinds, nor clocks, in a chunk.
    match chunk.first() {
        Some(BatchOp::Delete { .. }) => return keys().map(|keys| Encoded::Delete(size, keys)),
        Some(BatchOp::DeleteExpired { key, now }) => {
            let now = millis(*now, || at(key))?;
            return keys().map(|keys| Encoded::DeleteExpired(size, now, keys));
        }
        _ => {}
    }
    let mut rows = Vec::with_capacity(chunk.len());
    let mut with_deadlines = false;
    for op in chunk {
        let (key, value, deadline) = match op {
            BatchOp::Put { key, value } => (key, value, None),
            BatchOp::PutExpiring {
                key,
                value,
                expires_at,
            } if texts.deadlines => (key, value, Some(millis(*expires_at, || at(key))?)),
            // `write_upgrading` adds the column before a deadline is stored.
            BatchOp::PutExpiring { .. } => {
                return Err(PersistentError::Other(
                    "a deadline for a table without the deadline column".into(),
                ))
            }
            _ => return Err(PersistentError::unknown_change(crate::error::BACKEND)),
        };
        let value = value_to_json(value)
            .map_err(|e| PersistentError::encode(EntryPart::Value, at(key), e))?;
        with_deadlines |= deadline.is_some();
        rows.push((key_text(key)?, value, deadline));
    }
    Ok(Encoded::Put(size, with_deadlines, rows))
}

/// A deadline or clock as stored, or an error naming the key.
fn millis(time: SystemTime, at: impl FnOnce() -> Location) -> Result<i64, PersistentError> {
    to_millis(time).ok_or_else(|| {
        PersistentError::encode(
            EntryPart::Value,
            at(),
            "the deadline is out of range (more than i64::MAX milliseconds from the Unix epoch)",
        )
    })
}

/// What a change does to the table, for grouping changes into statements.
#[derive(PartialEq, Eq)]
enum Kind {
    Put,
    Delete,
    DeleteExpired(SystemTime),
    Unknown,
}

fn kind<K, V>(op: &BatchOp<K, V>) -> Kind {
    match op {
        BatchOp::Put { .. } | BatchOp::PutExpiring { .. } => Kind::Put,
        BatchOp::Delete { .. } => Kind::Delete,
        BatchOp::DeleteExpired { now, .. } => Kind::DeleteExpired(*now),
        _ => Kind::Unknown,
    }
}

/// The batch's statements, in order: each run of consecutive changes of
/// one kind, in chunks whose lengths are powers of two, at most
/// [`MAX_CHUNK`]. Without the deadline column no entry has a deadline, so
/// removals of expired entries have nothing to remove and are left out.
fn statements<K, V>(
    batch: &[BatchOp<K, V>],
    deadlines: bool,
) -> impl Iterator<Item = &[BatchOp<K, V>]> {
    runs(batch)
        .filter(move |run| {
            deadlines || !matches!(run.first().map(kind), Some(Kind::DeleteExpired(_)))
        })
        .flat_map(chunks)
}

/// Maximal runs of changes of one kind (and one clock).
fn runs<K, V>(mut batch: &[BatchOp<K, V>]) -> impl Iterator<Item = &[BatchOp<K, V>]> {
    std::iter::from_fn(move || {
        let first = kind(batch.first()?);
        let len = batch
            .iter()
            .position(|op| kind(op) != first)
            .unwrap_or(batch.len());
        let (run, rest) = batch.split_at(len);
        batch = rest;
        Some(run)
    })
}

/// Splits `items` into chunks whose lengths are powers of two, at most
/// [`MAX_CHUNK`].
pub(crate) fn chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let len = items.len().min(MAX_CHUNK);
        let size = 1_usize << len.ilog2();
        let (head, tail) = items.split_at(size);
        items = tail;
        Some(head)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: u32) -> BatchOp<u32, u32> {
        BatchOp::Put { key: k, value: k }
    }

    fn del(k: u32) -> BatchOp<u32, u32> {
        BatchOp::Delete { key: k }
    }

    fn put_until(k: u32, ms: u64) -> BatchOp<u32, u32> {
        BatchOp::PutExpiring {
            key: k,
            value: k,
            expires_at: std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        }
    }

    fn sweep(k: u32, ms: u64) -> BatchOp<u32, u32> {
        BatchOp::DeleteExpired {
            key: k,
            now: std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        }
    }

    #[test]
    fn chunks_are_powers_of_two_up_to_the_limit() {
        let items: Vec<u32> = (0..1000).collect();
        let sizes: Vec<usize> = chunks(&items).map(<[u32]>::len).collect();
        assert_eq!(sizes, [256, 256, 256, 128, 64, 32, 8]);
        assert_eq!(chunks::<u32>(&[]).count(), 0);
        let in_order: Vec<u32> = chunks(&items).flat_map(<[u32]>::to_vec).collect();
        assert_eq!(in_order, items);
    }

    #[test]
    fn statements_keep_the_order_of_puts_and_removals() {
        let batch = vec![put(1), put(2), put(3), del(1), put(1), del(2), del(3)];
        let shape: Vec<Vec<BatchOp<u32, u32>>> =
            statements(&batch, true).map(<[_]>::to_vec).collect();
        assert_eq!(
            shape,
            vec![
                vec![put(1), put(2)],
                vec![put(3)],
                vec![del(1)],
                vec![put(1)],
                vec![del(2), del(3)],
            ]
        );
    }

    #[test]
    fn removals_of_expired_entries_are_grouped_apart_per_clock() {
        let batch = vec![
            put(1),
            put_until(2, 5),
            sweep(2, 10),
            sweep(3, 10),
            del(4),
            sweep(5, 10),
            sweep(6, 11),
        ];
        let shape: Vec<Vec<BatchOp<u32, u32>>> =
            statements(&batch, true).map(<[_]>::to_vec).collect();
        assert_eq!(
            shape,
            vec![
                vec![put(1), put_until(2, 5)],
                vec![sweep(2, 10), sweep(3, 10)],
                vec![del(4)],
                vec![sweep(5, 10)],
                vec![sweep(6, 11)],
            ]
        );
        let without: Vec<Vec<BatchOp<u32, u32>>> =
            statements(&batch, false).map(<[_]>::to_vec).collect();
        assert_eq!(without, vec![vec![put(1), put_until(2, 5)], vec![del(4)]]);
    }
}
