//! The write transaction: a batch's net changes in stored form, applied and
//! announced in one transaction, and the move of a table of format 3 to
//! format 4 by the first write that carries a deadline.

use std::borrow::Cow;

use persistent_map_core::codec::KeyFormat;
use persistent_map_core::{render_key, BatchOp, EntryPart, Location, Operation, PersistentError};
use persistent_map_server_support::{encode_batch, Announcement, NetChange};
use serde::Serialize;

use crate::backend::PostgresBackend;
use crate::config::Watch;
use crate::error::{commit_error, map_sqlx_error, BACKEND};
use crate::format::{create_expiry_index, index_name, Statements, EXPIRY_VERSION, META_TABLE};
use crate::stored::{store_key, store_value};

/// What a write transaction does before it announces itself.
pub(crate) enum Work {
    /// Apply an encoded batch.
    Batch(EncodedBatch),
    /// Delete every row.
    Clear,
}

/// Sends every payload of a batch in one statement.
const NOTIFY: &str = "SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p";

/// PostgreSQL refuses notification payloads of 8000 bytes or more; stay
/// clear of it.
const MAX_PAYLOAD: usize = 7900;

/// A batch whose keys would need more notifications than this sends one
/// "reload everything" notification instead.
const MAX_NOTIFICATIONS: usize = 16;

/// The net effect of a batch, in stored form: rows to upsert (with their
/// deadlines), keys to delete, and keys to delete only if expired, each
/// key at most once.
#[derive(Default)]
pub(crate) struct EncodedBatch {
    put_keys: Vec<String>,
    put_values: Vec<String>,
    put_deadlines: Vec<Option<i64>>,
    deletes: Vec<String>,
    sweep_keys: Vec<String>,
    sweep_clocks: Vec<i64>,
}

impl EncodedBatch {
    /// Whether a row gets a deadline.
    pub(crate) fn has_deadlines(&self) -> bool {
        self.put_deadlines.iter().any(Option::is_some)
    }
}

/// How a write transaction ended.
enum Written {
    Committed,
    /// Another instance moved the table to format 4 while this one wrote
    /// in format 3: rolled back, to be written again in format 4.
    TableMoved,
}

impl PostgresBackend {
    /// Encodes a batch before any transaction opens, folding the changes of
    /// each key into one: inside one transaction only the final state of
    /// each key matters (and one upsert may not touch a row twice).
    pub(crate) fn encode_batch<K: Serialize, V: Serialize>(
        &self,
        batch: &[BatchOp<K, V>],
    ) -> Result<EncodedBatch, PersistentError> {
        let mut encoded = EncodedBatch::default();
        let key_format = self.sql()?.key_format;
        let store = &self.inner.store;
        for (key_text, change) in encode_batch(batch, BACKEND, store, key_format)? {
            let key = stored(store_key(&key_text)).unwrap_or(key_text);
            match change {
                NetChange::Put { value, expires_at } => {
                    let stored_value = store_value(&value)
                        .map_err(|e| self.value_error(batch, key_format, &key, e))?;
                    let value = stored(stored_value).unwrap_or(value);
                    encoded.put_keys.push(key);
                    encoded.put_values.push(value);
                    encoded.put_deadlines.push(expires_at);
                }
                NetChange::Delete => encoded.deletes.push(key),
                NetChange::DeleteExpired { now } => {
                    encoded.sweep_keys.push(key);
                    encoded.sweep_clocks.push(now);
                }
                // A kind of change this release does not know: never skipped.
                _ => return Err(PersistentError::unknown_change(BACKEND)),
            }
        }
        Ok(encoded)
    }

    /// The error of a value that has JSON but no stored form, naming its key
    /// (found again in the batch: this never happens in practice).
    fn value_error<K: Serialize, V>(
        &self,
        batch: &[BatchOp<K, V>],
        key_format: KeyFormat,
        stored_key: &str,
        err: serde_json::Error,
    ) -> PersistentError {
        let key = batch
            .iter()
            .rev()
            .map(BatchOp::key)
            .find(|key| {
                key_format
                    .encode(key)
                    .is_ok_and(|text| store_key(&text) == stored_key)
            })
            .map(render_key);
        let location = match key {
            Some(key) => self.location().with_key(key),
            None => self.location(),
        };
        PersistentError::encode(EntryPart::Value, location, err)
    }

    /// Runs `work` in one transaction that also announces it.
    ///
    /// A connection lost before `COMMIT` is sent leaves nothing applied (the
    /// server rolls back a session that ends inside a transaction): a
    /// [`PersistentError::Connection`]. One lost while `COMMIT`'s reply is
    /// awaited may have committed: [`PersistentError::OutcomeUnknown`], which
    /// the map settles by reading the keys back.
    ///
    /// A table opened in format 3 may be moved to format 4 by another
    /// instance at any time, after which a row written without setting
    /// `expires_at` would keep an old deadline. So a batch written in
    /// format 3 reads the recorded version after its changes, in the
    /// statement that sends its notifications: the move holds the table's
    /// `ACCESS EXCLUSIVE` lock from its `ALTER TABLE` to its commit, and the
    /// batch's changes hold a lock that conflicts with it until their own
    /// commit, so the version read is the one the changes were made under.
    /// When it says 4, the transaction is rolled back and written again in
    /// format 4.
    pub(crate) async fn write(
        &self,
        operation: Operation,
        location: Location,
        work: Work,
    ) -> Result<(), PersistentError> {
        loop {
            match self.write_once(operation, &location, &work).await? {
                Written::Committed => return Ok(()),
                // `sql` now gives format 4, which never asks again.
                Written::TableMoved => self.mark_upgraded(),
            }
        }
    }

    async fn write_once(
        &self,
        operation: Operation,
        location: &Location,
        work: &Work,
    ) -> Result<Written, PersistentError> {
        let inner = &*self.inner;
        let fail = |e| map_sqlx_error(e, operation, location.clone(), &inner.endpoint);
        let mut sql = self.sql()?;
        let mut moving = false;
        let mut tx = inner.pool.begin().await.map_err(fail)?;
        let announced = match work {
            Work::Batch(batch) => {
                if batch.has_deadlines() && sql.may_gain_expiry() {
                    sql = self
                        .move_to_expiry_format(&mut tx, operation, location)
                        .await?;
                    moving = true;
                }
                self.apply(&mut tx, sql, batch, operation, location).await?
            }
            Work::Clear => {
                sqlx::query(&sql.delete_all)
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
                Vec::new()
            }
        };
        let payloads = match (inner.watch, work) {
            (Watch::Disabled, _) => Vec::new(),
            (Watch::Enabled, Work::Clear) => {
                vec![Announcement::resync(inner.instance.as_str()).to_json()]
            }
            (Watch::Enabled, Work::Batch(_)) => {
                let keys: Vec<&str> = announced.iter().map(AsRef::as_ref).collect();
                Announcement::chunked(&inner.instance, &keys, MAX_PAYLOAD, MAX_NOTIFICATIONS)
            }
        };
        if sql.may_gain_expiry() && matches!(work, Work::Batch(_)) {
            let (version, _sent): (Option<i32>, i64) = sqlx::query_as(&sql.version_and_notify)
                .bind(&inner.table)
                .bind(&inner.channel)
                .bind(&payloads)
                .fetch_one(&mut *tx)
                .await
                .map_err(fail)?;
            if version.is_some_and(|v| v >= EXPIRY_VERSION as i32) {
                // Its notifications go with it: they are sent at commit.
                tx.rollback().await.map_err(fail)?;
                return Ok(Written::TableMoved);
            }
        } else if !payloads.is_empty() {
            sqlx::query(NOTIFY)
                .bind(&inner.channel)
                .bind(&payloads)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
        }
        tx.commit()
            .await
            .map_err(|e| commit_error(e, operation, location.clone(), &inner.endpoint))?;
        if moving {
            self.mark_upgraded();
        }
        Ok(Written::Committed)
    }

    /// Applies a batch's changes with `sql`'s statements, returning the
    /// keys to announce: every key put or deleted, and each swept key that
    /// was deleted. In a table without deadlines (before format 4) no
    /// entry is expired, so a sweep has nothing to do.
    async fn apply<'a>(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        sql: &Statements,
        batch: &'a EncodedBatch,
        operation: Operation,
        location: &Location,
    ) -> Result<Vec<Cow<'a, str>>, PersistentError> {
        let fail = |e| map_sqlx_error(e, operation, location.clone(), &self.inner.endpoint);
        if !batch.deletes.is_empty() {
            sqlx::query(&sql.delete)
                .bind(&batch.deletes)
                .execute(&mut **tx)
                .await
                .map_err(fail)?;
        }
        if !batch.put_keys.is_empty() {
            let upsert = sqlx::query(&sql.upsert)
                .bind(&batch.put_keys)
                .bind(&batch.put_values);
            let upsert = if sql.expiry() {
                upsert.bind(&batch.put_deadlines)
            } else {
                upsert
            };
            upsert.execute(&mut **tx).await.map_err(fail)?;
        }
        let swept: Vec<String> = match &sql.delete_expired {
            Some(delete_expired) if !batch.sweep_keys.is_empty() => {
                sqlx::query_scalar(delete_expired)
                    .bind(&batch.sweep_keys)
                    .bind(&batch.sweep_clocks)
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(fail)?
            }
            _ => Vec::new(),
        };
        Ok(batch
            .put_keys
            .iter()
            .chain(&batch.deletes)
            .map(|key| Cow::Borrowed(key.as_str()))
            .chain(swept.into_iter().map(Cow::Owned))
            .collect())
    }

    /// Moves a table of format 3 to format 4 inside `tx`: adds the
    /// `expires_at` column (`NULL` in every row: nothing expires) and its
    /// partial index, and records the version, unless another instance
    /// did first (then each step changes nothing). Returns the statements
    /// of format 4.
    ///
    /// `ALTER TABLE` holds the table's `ACCESS EXCLUSIVE` lock until the
    /// commit, so instances moving it at once take turns. Adding a nullable
    /// column without a default only changes the catalog; building the
    /// index reads the table once.
    async fn move_to_expiry_format(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        operation: Operation,
        location: &Location,
    ) -> Result<&Statements, PersistentError> {
        let inner = &*self.inner;
        let fail = |e| map_sqlx_error(e, operation, location.clone(), &inner.endpoint);
        let expiring = self.expiring_sql().ok_or_else(|| {
            PersistentError::corrupt(self.location(), "the table was not prepared")
        })?;
        let qualified = format!("\"{}\".\"{}\"", inner.schema, inner.table);
        let meta = format!("\"{}\".{META_TABLE}", inner.schema);
        let statements = [
            format!("ALTER TABLE {qualified} ADD COLUMN IF NOT EXISTS expires_at BIGINT"),
            create_expiry_index(&qualified, &index_name(&inner.table)),
        ];
        for statement in &statements {
            sqlx::query(statement)
                .execute(&mut **tx)
                .await
                .map_err(fail)?;
        }
        // Never lowers a version a newer release recorded meanwhile.
        sqlx::query(&format!(
            "INSERT INTO {meta} AS m (table_name, format_version) VALUES ($1, $2) \
             ON CONFLICT (table_name) DO UPDATE SET format_version = EXCLUDED.format_version \
             WHERE m.format_version < EXCLUDED.format_version"
        ))
        .bind(&inner.table)
        .bind(EXPIRY_VERSION as i32)
        .execute(&mut **tx)
        .await
        .map_err(fail)?;
        tracing::debug!(store = %inner.store, version = EXPIRY_VERSION, "moving the table to the expiry format");
        Ok(expiring)
    }
}

/// The owned text of a stored form that differs from its input; `None`
/// when it is the input itself (which the caller then keeps, uncopied).
fn stored(form: Cow<'_, str>) -> Option<String> {
    match form {
        Cow::Owned(text) => Some(text),
        Cow::Borrowed(_) => None,
    }
}
