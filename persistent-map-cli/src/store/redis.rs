//! Reading a Redis store read-only, with Redis commands: the hash
//! `<prefix>:<name>` (one field per key text, the value's JSON), its
//! `<prefix>:<name>:meta` hash and, from format 3, the sorted set
//! `<prefix>:<name>:expiry` of deadlines (member: the field, score: ms), as
//! persistent-map-redis names and reads them.
//!
//! `HSCAN` lists fields in no stable order and may list one twice, so a
//! scan gathers the field names, sorts them, and reads the values with
//! `HMGET` in chunks: the keys (not the values) are held in memory. Redis
//! has no snapshot: a store written meanwhile is read as it changes.

use std::time::Duration;

use persistent_map_core::codec::KeyFormat;
use serde_json::Value;

use super::{parse_value, Batcher, Deadlines, Details, Report, Sink, StoreName, SCAN_BATCH};
use crate::entry::{show_key, Entry};
use crate::error::{CliError, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one reply may take (a page of a scan, a batch of writes).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct RedisSource {
    conn: redis::aio::MultiplexedConnection,
    hash: String,
    meta: String,
    expiry: String,
    shown: String,
}

impl std::fmt::Debug for RedisSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSource")
            .field("hash", &self.hash)
            .field("store", &self.shown)
            .finish_non_exhaustive()
    }
}

impl RedisSource {
    pub async fn open(name: &StoreName, url: &str, prefix: &str, map: &str) -> Result<Self> {
        let shown = name.to_string();
        // The parse error may quote the URL, password included: not shown.
        let client = redis::Client::open(url)
            .map_err(|_| CliError::Usage(format!("invalid Redis URL {shown}")))?;
        let conn = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            client.get_multiplexed_async_connection_with_config(
                // The driver's default 500 ms per reply is too short for
                // a scan of a large hash on a busy server.
                &redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT)),
            ),
        )
        .await
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
        let keys = persistent_map_redis::RedisOptions::new()
            .prefix(prefix)
            .name(map);
        Ok(Self {
            conn,
            hash: keys.hash_key(),
            meta: keys.meta_key(),
            expiry: keys.expiry_key(),
            shown,
        })
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T> {
        let mut conn = self.conn.clone();
        command
            .query_async(&mut conn)
            .await
            .map_err(|e| CliError::read("read", &self.shown, e))
    }

    pub async fn count(&self) -> Result<u64> {
        self.query(redis::cmd("HLEN").arg(&self.hash)).await
    }

    /// Every field name of the hash, sorted, each once.
    async fn fields(&self) -> Result<Vec<Vec<u8>>> {
        let mut fields = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, flat): (u64, Vec<Vec<u8>>) = self
                .query(
                    redis::cmd("HSCAN")
                        .arg(&self.hash)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(SCAN_BATCH),
                )
                .await?;
            fields.extend(flat.into_iter().step_by(2));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        fields.sort_unstable();
        fields.dedup();
        Ok(fields)
    }

    /// Reads the values of `fields` and their deadlines' scores, handing
    /// each present one to `each`.
    async fn values(
        &self,
        fields: &[Vec<u8>],
        mut each: impl FnMut(&[u8], Vec<u8>, Option<String>),
    ) -> Result<()> {
        let values: Vec<Option<Vec<u8>>> = self
            .query(redis::cmd("HMGET").arg(&self.hash).arg(fields))
            .await?;
        // Without the sorted set (older formats, or nothing expires) no
        // entry has a deadline; ZMSCORE answers nil for each.
        let scores: Vec<Option<String>> = self
            .query(redis::cmd("ZMSCORE").arg(&self.expiry).arg(fields))
            .await?;
        for ((field, value), score) in fields.iter().zip(values).zip(scores) {
            // A field removed since the scan is simply gone.
            if let Some(value) = value {
                each(field, value, score);
            }
        }
        Ok(())
    }

    pub async fn scan(&self, sink: &mut dyn Sink) -> Result<()> {
        let fields = self.fields().await?;
        let mut batcher = Batcher::new(sink);
        for chunk in fields.chunks(SCAN_BATCH) {
            let mut decoded = Vec::with_capacity(chunk.len());
            self.values(chunk, |field, value, score| {
                decoded.push(decode(field, &value, score.as_deref()));
            })
            .await?;
            for entry in decoded {
                let entry = entry.map_err(|(location, reason)| CliError::BadRecord {
                    store: self.shown.clone(),
                    location,
                    reason,
                })?;
                batcher.push(entry).await?;
            }
            if batcher.done() {
                break;
            }
        }
        batcher.finish().await
    }

    pub async fn lookup(&self, key: &str) -> Result<Option<(Value, Option<i64>)>> {
        let value: Option<Vec<u8>> = self
            .query(redis::cmd("HGET").arg(&self.hash).arg(key))
            .await?;
        let score: Option<String> = self
            .query(redis::cmd("ZSCORE").arg(&self.expiry).arg(key))
            .await?;
        match value {
            None => Ok(None),
            Some(value) => decode(key.as_bytes(), &value, score.as_deref())
                .map(|e| Some((e.value, e.expires_at)))
                .map_err(|(location, reason)| CliError::BadRecord {
                    store: self.shown.clone(),
                    location,
                    reason,
                }),
        }
    }

    async fn key_type(&self, key: &str) -> Result<String> {
        self.query(redis::cmd("TYPE").arg(key)).await
    }

    /// How the hash holds keys: format version 2 in the distinct key format,
    /// version 1 (or a hash without a version) in the legacy one; a missing
    /// hash is created in the format of new stores.
    pub async fn key_format(&self) -> Result<KeyFormat> {
        let version = self.format_version().await?;
        Ok(match version.as_deref().map(str::parse::<u32>) {
            Some(Ok(version)) if version >= 2 => KeyFormat::Distinct,
            Some(_) => KeyFormat::Legacy,
            None if self.key_type(&self.hash).await? != "none" => KeyFormat::Legacy,
            None => KeyFormat::NEW_STORES,
        })
    }

    async fn format_version(&self) -> Result<Option<String>> {
        if self.key_type(&self.meta).await? != "hash" {
            return Ok(None);
        }
        self.query(redis::cmd("HGET").arg(&self.meta).arg("format_version"))
            .await
    }

    pub async fn details(&self) -> Result<Details> {
        let kind = self.key_type(&self.hash).await?;
        let version = self.format_version().await?;
        let size: Option<u64> = if kind == "none" {
            None
        } else {
            self.query(redis::cmd("MEMORY").arg("USAGE").arg(&self.hash))
                .await
                .ok()
                .flatten()
        };
        let deadlines = if self.key_type(&self.expiry).await? == "zset" {
            let with: u64 = self.query(redis::cmd("ZCARD").arg(&self.expiry)).await?;
            let expired: u64 = self
                .query(
                    redis::cmd("ZCOUNT")
                        .arg(&self.expiry)
                        .arg("-inf")
                        .arg(super::now_millis()),
                )
                .await?;
            Some(Deadlines {
                with_deadline: with,
                expired,
            })
        } else {
            None
        };
        Ok(Details {
            // An empty hash does not exist in Redis; the meta hash stays.
            exists: kind == "hash" || version.is_some(),
            format_version: version,
            deadlines,
            size_bytes: size,
            size_note: String::from("server memory of the hash (MEMORY USAGE, sampled)"),
            csv: None,
        })
    }

    pub async fn verify(&self) -> Result<Report> {
        let mut report = Report::default();
        for (key, expected) in [
            (&self.hash, "hash"),
            (&self.meta, "hash"),
            (&self.expiry, "zset"),
        ] {
            let kind = self.key_type(key).await?;
            if kind != expected && kind != "none" {
                report.problem(
                    format!("key {key:?}"),
                    format!("holds a {kind}, not a persistent-map {expected}"),
                );
                return Ok(report);
            }
        }
        match self.format_version().await? {
            None => report.problem(format!("key {:?}", self.meta), "no format version recorded"),
            Some(v) => match v.parse::<u32>() {
                Ok(v) if v <= persistent_map_redis::FORMAT_VERSION => {}
                Ok(v) => report.problem(
                    format!("key {:?}", self.meta),
                    format!(
                        "format version {v} is newer than this tool reads ({})",
                        persistent_map_redis::FORMAT_VERSION
                    ),
                ),
                Err(_) => report.problem(
                    format!("key {:?}", self.meta),
                    format!("invalid format version {v:?}"),
                ),
            },
        }
        let fields = self.fields().await?;
        for chunk in fields.chunks(SCAN_BATCH) {
            let mut bad = Vec::new();
            let mut checked = 0;
            self.values(chunk, |field, value, score| {
                checked += 1;
                if let Err(problem) = decode(field, &value, score.as_deref()) {
                    bad.push(problem);
                }
            })
            .await?;
            report.checked += checked;
            for (location, reason) in bad {
                report.problem(location, reason);
            }
        }
        Ok(report)
    }
}

/// A field, its value and its deadline's score, or where and why they do
/// not decode.
fn decode(
    field: &[u8],
    value: &[u8],
    score: Option<&str>,
) -> std::result::Result<Entry, (String, String)> {
    let key = std::str::from_utf8(field).map_err(|_| {
        (
            format!("field {}", show_key(&String::from_utf8_lossy(field))),
            String::from("the key is not valid UTF-8"),
        )
    })?;
    let at = || format!("key {}", show_key(key));
    let text = std::str::from_utf8(value)
        .map_err(|_| (at(), String::from("the value is not valid UTF-8")))?;
    let value = parse_value(text).map_err(|reason| (at(), reason))?;
    let expires_at = score
        .map(persistent_map_redis::score_millis)
        .transpose()
        .map_err(|reason| (at(), reason))?;
    Ok(Entry {
        key: key.to_owned(),
        value,
        expires_at,
    })
}
