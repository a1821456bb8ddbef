//! Stores opened for writing, through the persistent-map backend crates,
//! with keys and values as JSON: each backend is a
//! `StorageBackend<serde_json::Value, serde_json::Value>`, so the tool
//! writes exactly what an application's map would (a string key as its
//! text, any other key as JSON; the value as JSON).

use persistent_map_core::codec::KeyFormat;
use persistent_map_core::{BatchOp, PersistentError, RemoteChanges, StorageBackend};
use persistent_map_csv::CsvBackend;
use persistent_map_postgres::PostgresBackend;
use persistent_map_redis::RedisBackend;
use persistent_map_sqlite::SqliteBackend;
use serde_json::Value;

use super::StoreName;
use crate::entry::Entry;
use crate::error::{CliError, Result};

/// The JSON view of a backend.
type Json = dyn StorageBackend<Value, Value> + Send + Sync;

enum Backend {
    Sqlite(SqliteBackend),
    /// Boxed: a CSV backend holds its options and state inline.
    Csv(Box<CsvBackend>),
    Postgres(PostgresBackend),
    Redis(RedisBackend),
}

/// A store opened through its backend; created when missing.
pub struct Target {
    backend: Backend,
    shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("store", &self.shown)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Opens the store, creating it in the format of new stores when missing.
    pub async fn open(name: &StoreName) -> Result<Self> {
        Self::open_in(name, KeyFormat::NEW_STORES).await
    }

    /// Opens the store, creating it with `new_store_key_format` when missing
    /// (`copy` creates its target in its source's format, so the stored key
    /// texts it copies mean the same keys).
    pub async fn open_in(name: &StoreName, new_store_key_format: KeyFormat) -> Result<Self> {
        let shown = name.to_string();
        let fail = |e: PersistentError| CliError::backend("open", &shown, e);
        let backend = match name {
            StoreName::Sqlite { path, table } => Backend::Sqlite(
                SqliteBackend::builder(path)
                    .table(table)
                    .new_store_key_format(new_store_key_format)
                    .build()
                    .await
                    .map_err(fail)?,
            ),
            StoreName::Csv { path } => Backend::Csv(Box::new(
                CsvBackend::builder(path)
                    .new_store_key_format(new_store_key_format)
                    .build(),
            )),
            StoreName::Postgres {
                url, schema, table, ..
            } => Backend::Postgres(
                PostgresBackend::builder(url.as_str())
                    .schema(schema)
                    .table(table)
                    .new_store_key_format(new_store_key_format)
                    .build()
                    .await
                    .map_err(fail)?,
            ),
            StoreName::Redis {
                url, prefix, name, ..
            } => Backend::Redis(
                RedisBackend::builder(url.as_str())
                    .prefix(prefix)
                    .name(name)
                    .new_store_key_format(new_store_key_format)
                    .build()
                    .await
                    .map_err(fail)?,
            ),
        };
        Ok(Self { backend, shown })
    }

    fn json(&self) -> &Json {
        match &self.backend {
            Backend::Sqlite(b) => b,
            Backend::Csv(b) => b.as_ref(),
            Backend::Postgres(b) => b,
            Backend::Redis(b) => b,
        }
    }

    fn fail(&self, action: &'static str) -> impl Fn(PersistentError) -> CliError + '_ {
        move |e| CliError::backend(action, &self.shown, e)
    }

    /// How the store holds keys.
    pub async fn key_format(&self) -> Result<KeyFormat> {
        Ok(match &self.backend {
            Backend::Sqlite(b) => b.key_format(),
            Backend::Csv(b) => b.key_format().await.map_err(self.fail("open"))?,
            Backend::Postgres(b) => b.key_format(),
            Backend::Redis(b) => b.key_format(),
        })
    }

    /// The store as shown to the user (password redacted).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The stored text of a key in this store.
    pub async fn text_of(&self, key: &Value) -> Result<String> {
        Ok(crate::entry::key_text(self.key_format().await?, key))
    }

    pub async fn len(&self) -> Result<usize> {
        self.json().len().await.map_err(self.fail("read"))
    }

    pub async fn contains(&self, key: &Value) -> Result<bool> {
        self.json()
            .contains_key(key)
            .await
            .map_err(self.fail("read"))
    }

    /// Applies a batch: all of it or none of it on every bundled backend.
    pub async fn apply(&self, batch: &[BatchOp<Value, Value>]) -> Result<()> {
        self.json()
            .apply_batch(batch)
            .await
            .map_err(self.fail("write to"))
    }

    /// Whether the store keeps deadlines (the backend's
    /// `capabilities().expiry`): not in a legacy-key PostgreSQL table or
    /// Redis map.
    pub fn expiry(&self) -> bool {
        self.json().capabilities().expiry
    }

    /// Inserts entries whose keys the store does not hold (for `copy` into
    /// an empty store), with their deadlines, in one transaction.
    /// PostgreSQL takes them with `COPY` (through the backend when the
    /// table does not have the deadline column yet: the backend adds it);
    /// the other backends through their atomic batches.
    pub async fn insert_new(&self, entries: Vec<Entry>) -> Result<()> {
        if let Backend::Postgres(pg) = &self.backend {
            if super::bulk::can_copy_in(pg, &self.shown, &entries).await? {
                return super::bulk::copy_in(pg, &self.shown, &entries).await;
            }
        }
        let format = self.key_format().await?;
        let batch = entries
            .into_iter()
            .map(|e| {
                let key = key_of(format, &e.key, &self.shown)?;
                Ok(match e.expires_at {
                    None => BatchOp::Put {
                        key,
                        value: e.value,
                    },
                    Some(ms) => BatchOp::PutExpiring {
                        expires_at: deadline(ms).ok_or_else(|| {
                            CliError::read(
                                "write to",
                                &self.shown,
                                format!(
                                    "the deadline {ms} of the key {} is beyond this platform's clock",
                                    crate::entry::show_key(&e.key)
                                ),
                            )
                        })?,
                        key,
                        value: e.value,
                    },
                })
            })
            .collect::<Result<Vec<BatchOp<Value, Value>>>>()?;
        self.apply(&batch).await
    }

    /// After [`insert_new`](Self::insert_new): tells other instances to
    /// reload what was written around the backend.
    pub async fn announce_inserts(&self) -> Result<()> {
        match &self.backend {
            Backend::Postgres(pg) => super::bulk::announce(pg, &self.shown).await,
            _ => Ok(()),
        }
    }

    /// Whether writes of several batches at once go faster (a server).
    pub fn concurrent(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_) | Backend::Redis(_))
    }

    pub async fn clear(&self) -> Result<()> {
        self.json().clear().await.map_err(self.fail("clear"))
    }

    /// Makes every write durable (fsync, checkpoint, or the server's equivalent).
    pub async fn flush(&self) -> Result<()> {
        self.json().flush().await.map_err(self.fail("flush"))
    }

    /// Rewrites a CSV log with its live entries only.
    pub async fn compact(&self) -> Result<()> {
        match &self.backend {
            Backend::Csv(csv) => csv.compact().await.map_err(self.fail("compact")),
            _ => Err(CliError::Unsupported {
                command: "compact",
                store: self.shown.clone(),
                why: "only CSV logs need compacting (SQLite: VACUUM; PostgreSQL: VACUUM; Redis: nothing to do)",
            }),
        }
    }

    /// The feed of changes other instances make (PostgreSQL and Redis).
    pub async fn watch(&self) -> Result<Option<RemoteChanges<Value>>> {
        self.json().watch().await.map_err(self.fail("watch"))
    }

    pub async fn load_keys(&self, keys: &[Value]) -> Result<Vec<(Value, Option<Value>)>> {
        self.json().load_keys(keys).await.map_err(self.fail("read"))
    }

    /// Closes a SQLite pool cleanly (the others close on drop).
    pub async fn close(self) {
        if let Backend::Sqlite(sqlite) = &self.backend {
            sqlite.close().await;
        }
    }
}

/// The deadline stored as `ms` milliseconds since the Unix epoch; `None`
/// when the platform's clock cannot hold it.
pub fn deadline(ms: i64) -> Option<std::time::SystemTime> {
    persistent_map_core::codec::deadline_from_millis(ms)
}

/// The key a stored key text of the store `shown` stands for, as the JSON
/// the backend encodes back to that same text.
///
/// # Errors
///
/// When the JSON would be stored as another text (a JSON text not in the
/// compact form `serde_json` writes, such as an object whose fields are not
/// in alphabetical order): writing it would make a second key.
pub fn key_of(format: KeyFormat, text: &str, shown: &str) -> Result<Value> {
    // Every text reads as a `Value`: as JSON, or else as a string.
    let key = format
        .decode(text)
        .unwrap_or_else(|_| Value::String(text.to_owned()));
    if format.encode(&key).ok().as_deref() == Some(text) {
        return Ok(key);
    }
    Err(CliError::read(
        "write to",
        shown,
        format!(
            "the key text {} would be stored as another text; copy such keys with the application",
            crate::entry::show_key(text)
        ),
    ))
}
