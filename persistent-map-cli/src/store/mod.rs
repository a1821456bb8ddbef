//! Stores: read directly and read-only (`Source`), or written through the
//! persistent-map backend crates (`Target`).
//!
//! Reading goes around the backends on purpose: opening a backend creates a
//! missing store, stamps a 0.1.x store with the current format version and
//! cuts a torn CSV tail, and the backends' trait has no ordered, streaming
//! read. The readers here never change a store.

mod bulk;
mod csv;
mod name;
mod postgres;
mod redis;
mod shape;
mod sqlite;
mod target;

use persistent_map_core::async_trait;
use persistent_map_core::codec::KeyFormat;
use serde::Serialize;

pub use name::{passwords, StoreName};
pub use shape::Shape;
pub use target::{deadline, key_of, Target};

use crate::entry::Entry;
use crate::error::Result;

/// Entries per batch handed to a [`Sink`].
pub const SCAN_BATCH: usize = 1024;

/// The order a scan lists entries in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// By key text, byte by byte: stable, and the same on every backend.
    Key,
    /// Whatever is cheapest for the store.
    Any,
}

/// Whether a scan goes on after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Receives the entries of a scan, batch by batch.
#[async_trait]
pub trait Sink: Send {
    async fn batch(&mut self, entries: Vec<Entry>) -> Result<Flow>;
}

/// What `info` shows beyond the entries.
#[derive(Debug, Default, Serialize)]
pub struct Details {
    /// Whether the map's table, hash or file exists.
    pub exists: bool,
    /// The format version, as the store records it.
    pub format_version: Option<String>,
    /// Bytes on disk or on the server.
    pub size_bytes: Option<u64>,
    /// What `size_bytes` counts.
    pub size_note: String,
    /// Entries with a deadline; `None` for a store whose format has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadlines: Option<Deadlines>,
    /// CSV only: records, live and dead, last rewrite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csv: Option<CsvDetails>,
}

/// How many entries carry a deadline.
#[derive(Debug, Default, Serialize)]
pub struct Deadlines {
    /// Entries with a deadline.
    pub with_deadline: u64,
    /// Of those, the ones whose deadline has passed: still stored until a
    /// map's sweep removes them.
    pub expired: u64,
}

/// The clock as stores hold deadlines: ms since the Unix epoch.
pub fn now_millis() -> i64 {
    persistent_map_core::codec::deadline_to_millis(std::time::SystemTime::now()).unwrap_or(i64::MAX)
}

/// The CSV log's own figures.
#[derive(Debug, Default, Serialize)]
pub struct CsvDetails {
    /// Data records (puts and tombstones) in the complete part of the file.
    pub records: u64,
    pub live: u64,
    pub dead: u64,
    /// `live / records`, 1 for an empty file.
    pub live_ratio: f64,
    /// When the file was last written whole (created, migrated or
    /// compacted), from its creation time; `None` when the file system does
    /// not record it.
    pub last_rewrite: Option<String>,
    /// The line a torn last record starts on (cut at the next open).
    pub torn_tail_line: Option<u64>,
}

/// A bad record or structure found by `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// Where: line, key, row, as the store has them.
    pub location: String,
    pub reason: String,
}

/// What `verify` found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Entries (or records) checked.
    pub checked: u64,
    pub problems: Vec<Problem>,
    /// Not errors, worth knowing (a torn CSV tail, a 0.1.x store).
    pub notes: Vec<String>,
}

impl Report {
    pub fn problem(&mut self, location: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            location: location.into(),
            reason: reason.into(),
        });
    }
}

/// A store opened for reading only.
#[derive(Debug)]
pub enum Source {
    Sqlite(sqlite::SqliteSource),
    Csv(csv::CsvSource),
    Postgres(postgres::PostgresSource),
    Redis(redis::RedisSource),
}

impl Source {
    /// Opens a store read-only. A missing file is an error; a missing table
    /// or hash is an empty store ([`Details::exists`] says which).
    pub async fn open(name: &StoreName) -> Result<Self> {
        Ok(match name {
            StoreName::Sqlite { path, table } => {
                Source::Sqlite(sqlite::SqliteSource::open(name, path, table).await?)
            }
            StoreName::Csv { path } => Source::Csv(csv::CsvSource::open(name, path).await?),
            StoreName::Postgres {
                url, schema, table, ..
            } => Source::Postgres(postgres::PostgresSource::open(name, url, schema, table).await?),
            StoreName::Redis {
                url,
                prefix,
                name: n,
                ..
            } => Source::Redis(redis::RedisSource::open(name, url, prefix, n).await?),
        })
    }

    /// How the store holds keys (the texts [`scan`](Self::scan) hands over
    /// and [`lookup`](Self::lookup) takes).
    pub async fn key_format(&self) -> Result<KeyFormat> {
        match self {
            Source::Sqlite(s) => s.key_format().await,
            Source::Csv(s) => Ok(s.key_format()),
            Source::Postgres(s) => s.key_format().await,
            Source::Redis(s) => s.key_format().await,
        }
    }

    /// The number of entries.
    pub async fn count(&self) -> Result<u64> {
        match self {
            Source::Sqlite(s) => s.count().await,
            Source::Csv(s) => s.count(),
            Source::Postgres(s) => s.count().await,
            Source::Redis(s) => s.count().await,
        }
    }

    /// Hands every entry to `sink`, in batches of [`SCAN_BATCH`]. A record
    /// that does not decode stops the scan with an error naming it.
    pub async fn scan(&self, order: Order, sink: &mut dyn Sink) -> Result<()> {
        match self {
            Source::Sqlite(s) => s.scan(order, sink).await,
            Source::Csv(s) => s.scan(sink).await,
            Source::Postgres(s) => s.scan(order, sink).await,
            Source::Redis(s) => s.scan(sink).await,
        }
    }

    /// The value stored under a key text, with its deadline (ms) if it has one.
    pub async fn lookup(&self, key: &str) -> Result<Option<(serde_json::Value, Option<i64>)>> {
        match self {
            Source::Sqlite(s) => s.lookup(key).await,
            Source::Csv(s) => s.lookup(key),
            Source::Postgres(s) => s.lookup(key).await,
            Source::Redis(s) => s.lookup(key).await,
        }
    }

    pub async fn details(&self) -> Result<Details> {
        match self {
            Source::Sqlite(s) => s.details().await,
            Source::Csv(s) => s.details().await,
            Source::Postgres(s) => s.details().await,
            Source::Redis(s) => s.details().await,
        }
    }

    /// Checks every record and the store's structure, changing nothing.
    pub async fn verify(&self) -> Result<Report> {
        match self {
            Source::Sqlite(s) => s.verify().await,
            Source::Csv(s) => Ok(s.verify()),
            Source::Postgres(s) => s.verify().await,
            Source::Redis(s) => s.verify().await,
        }
    }
}

/// Collects entries into batches of [`SCAN_BATCH`] and hands them on.
pub struct Batcher<'s> {
    sink: &'s mut dyn Sink,
    pending: Vec<Entry>,
    stopped: bool,
}

impl<'s> Batcher<'s> {
    pub fn new(sink: &'s mut dyn Sink) -> Self {
        Self {
            sink,
            pending: Vec::with_capacity(SCAN_BATCH),
            stopped: false,
        }
    }

    /// Whether the sink wants no more entries.
    pub fn done(&self) -> bool {
        self.stopped
    }

    pub async fn push(&mut self, entry: Entry) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.pending.push(entry);
        if self.pending.len() >= SCAN_BATCH {
            let full = std::mem::replace(&mut self.pending, Vec::with_capacity(SCAN_BATCH));
            self.stopped = self.sink.batch(full).await? == Flow::Stop;
        }
        Ok(())
    }

    pub async fn finish(mut self) -> Result<()> {
        if !self.pending.is_empty() && !self.stopped {
            let rest = std::mem::take(&mut self.pending);
            self.sink.batch(rest).await?;
        }
        Ok(())
    }
}

/// Parses a value's stored JSON, or says why it is not JSON.
pub fn parse_value(text: &str) -> std::result::Result<serde_json::Value, String> {
    persistent_map_core::codec::value_from_json(text)
        .map_err(|e| format!("the value is not JSON ({e})"))
}
