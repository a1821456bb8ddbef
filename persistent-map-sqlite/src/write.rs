//! Writing a batch: in the batch's order, runs of puts and of removals as
//! multi-row statements, each chunk encoded while SQLite runs the one
//! before it.
//!
//! SQLite applies the rows of one multi-row upsert in order (a key that
//! appears twice ends with its last value), so a batch needs no merging
//! per key: consecutive puts become upserts and consecutive removals become
//! `DELETE ... IN`, in order. Chunk sizes are powers of two up to
//! [`MAX_CHUNK`], so each statement text is prepared once per connection.

use persistent_map_core::codec::{value_to_json, KeyFormat};
use persistent_map_core::{render_key, BatchOp, EntryPart, Location, PersistentError};
use serde::Serialize;
use sqlx::sqlite::SqliteConnection;
use sqlx::Connection;

/// Rows per multi-row statement, at most. 256 rows of 2 parameters stay far
/// below SQLite's parameter limit (999 before 3.32, 32766 since).
pub(crate) const MAX_CHUNK: usize = 256;

/// Number of distinct chunk sizes: the powers of two up to [`MAX_CHUNK`].
pub(crate) const CHUNK_SIZES: usize = MAX_CHUNK.trailing_zeros() as usize + 1;

/// Why a batch was not written.
pub(crate) enum Failure {
    /// A key or value could not be encoded; nothing was written.
    Encode(PersistentError),
    /// SQLite refused; the transaction was rolled back.
    Sql(sqlx::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Sql(e)
    }
}

/// The statement texts, per chunk size.
pub(crate) struct Texts<'a> {
    /// `upsert[i]` inserts or replaces `2^i` rows.
    pub(crate) upsert: &'a [String],
    /// `delete[i]` deletes `2^i` keys.
    pub(crate) delete: &'a [String],
}

/// One statement of a batch, encoded: the chunk size index and its rows.
enum Encoded {
    Upsert(usize, Vec<(String, String)>),
    Delete(usize, Vec<String>),
}

/// Writes `batch` on `conn`: one statement alone (atomic on its own,
/// without BEGIN/COMMIT round trips), or a `BEGIN IMMEDIATE` transaction.
pub(crate) async fn write_batch<K: Serialize, V: Serialize>(
    conn: &mut SqliteConnection,
    texts: &Texts<'_>,
    batch: &[BatchOp<K, V>],
    store: &str,
    format: KeyFormat,
) -> Result<(), Failure> {
    let mut statements = statements(batch);
    let Some(first) = statements.next() else {
        return Ok(());
    };
    let mut pending = encode(first, store, format).map_err(Failure::Encode)?;
    let Some(mut next) = statements.next() else {
        return Ok(execute(conn, texts, &pending).await?);
    };
    // IMMEDIATE takes the write lock up front, waiting through the busy
    // timeout; a deferred transaction could instead fail mid-batch. On any
    // failure the transaction is dropped, which rolls it back.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    loop {
        let (done, encoded) = tokio::join!(execute(&mut tx, texts, &pending), async {
            encode(next, store, format)
        });
        done?;
        pending = encoded.map_err(Failure::Encode)?;
        match statements.next() {
            Some(chunk) => next = chunk,
            None => break,
        }
    }
    execute(&mut tx, texts, &pending).await?;
    Ok(tx.commit().await?)
}

async fn execute(
    conn: &mut SqliteConnection,
    texts: &Texts<'_>,
    encoded: &Encoded,
) -> Result<(), sqlx::Error> {
    let query = match encoded {
        Encoded::Upsert(size, rows) => {
            let mut query = sqlx::query(&texts.upsert[*size]);
            for (key, value) in rows {
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
    };
    query.execute(conn).await.map(drop)
}

/// Encodes a chunk of changes of one kind, naming the key that fails.
fn encode<K: Serialize, V: Serialize>(
    chunk: &[BatchOp<K, V>],
    store: &str,
    format: KeyFormat,
) -> Result<Encoded, PersistentError> {
    let size = chunk.len().trailing_zeros() as usize;
    let at = |key: &K| Location::new(store).with_key(render_key(key));
    let key_text = |key: &K| {
        format
            .encode(key)
            .map_err(|e| PersistentError::encode(EntryPart::Key, at(key), e))
    };
    // `statements` never mixes kinds in a chunk.
    if matches!(chunk.first(), Some(BatchOp::Delete { .. })) {
        return chunk
            .iter()
            .map(|op| key_text(op.key()))
            .collect::<Result<_, _>>()
            .map(|keys| Encoded::Delete(size, keys));
    }
    let mut rows = Vec::with_capacity(chunk.len());
    for op in chunk {
        if let BatchOp::Put { key, value } = op {
            let value = value_to_json(value)
                .map_err(|e| PersistentError::encode(EntryPart::Value, at(key), e))?;
            rows.push((key_text(key)?, value));
        }
    }
    Ok(Encoded::Upsert(size, rows))
}

/// The batch's statements, in order: each run of consecutive puts or of
/// consecutive removals, in chunks whose lengths are powers of two, at most
/// [`MAX_CHUNK`].
fn statements<K, V>(batch: &[BatchOp<K, V>]) -> impl Iterator<Item = &[BatchOp<K, V>]> {
    runs(batch).flat_map(chunks)
}

/// Maximal runs of changes of one kind.
fn runs<K, V>(mut batch: &[BatchOp<K, V>]) -> impl Iterator<Item = &[BatchOp<K, V>]> {
    std::iter::from_fn(move || {
        let first = batch.first()?;
        let is_put = |op: &BatchOp<K, V>| matches!(op, BatchOp::Put { .. });
        let kind = is_put(first);
        let len = batch
            .iter()
            .position(|op| is_put(op) != kind)
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
        let shape: Vec<Vec<BatchOp<u32, u32>>> = statements(&batch).map(<[_]>::to_vec).collect();
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
}
