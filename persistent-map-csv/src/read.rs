//! Reading files: format versions 2 to 5 with their torn-tail rule, and
//! 0.1.x files.
//!
//! # What is repaired, and what is an error
//!
//! The backend appends each change, or each batch (its marker and all its
//! records), with one write call, so a crash leaves a prefix of the last
//! write at the end of the file. Kernels split a write at page-cache page
//! boundaries (a process killed mid-write, or a power cut during
//! write-back), so the prefix ends either inside a record or, by chance, at
//! a page boundary that falls between two records.
//!
//! Only that is repaired on open, by cutting the file where the interrupted
//! write began:
//! - the last record is incomplete (no final newline, a tail of NUL bytes,
//!   or cut inside a quoted field): it is cut off, and so is the batch it
//!   belongs to, whose earlier records were written by the same call;
//! - the last batch has fewer records than its marker promises, every one
//!   of them complete, and the file ends at a [`PAGE`] boundary.
//!
//! A batch marker that promises more records than follow it when the file
//! ends elsewhere, after complete records only, is an error naming the
//! marker's line, and nothing is cut. A crash cannot leave that, but a bit
//! flip or a hand edit of the count can, and the records after it (which may
//! be acknowledged changes written by later appends) are then kept for
//! whoever repairs the file. A marker inside a batch is already an error.
//! A flipped count in a file that also ends in a torn record, or a file that
//! ends at a page boundary by chance, cannot be told from a crash by its
//! structure: the first needs two faults, the second is one length in 4096.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::SeekFrom;
use std::path::Path;

use csv_async::{AsyncReaderBuilder, ByteRecord, StringRecord};
use persistent_map_core::codec::key_from_text;
use persistent_map_core::{render_key, EntryPart, PersistentError, Result};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::error::{at, from_csv};
use crate::format::{parse_entry, Entry};

/// One change read from a file with a header, in file order.
#[derive(Debug)]
pub(crate) struct Change {
    /// The line the record starts on.
    pub(crate) line: u64,
    /// The key as text.
    pub(crate) key: String,
    /// The value as JSON, or `None` for a tombstone.
    pub(crate) value: Option<String>,
    /// The deadline of a put, in milliseconds since the Unix epoch.
    pub(crate) expires_at: Option<i64>,
}

/// A record (or a batch) at the end of the file that was not completely
/// written, found by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Torn {
    /// The length of the complete part of the file.
    pub(crate) keep_len: u64,
    /// The line the incomplete part starts on.
    pub(crate) line: u64,
}

/// What [`scan`] learned about a file.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Data rows and batch markers in the complete part of the file.
    pub(crate) rows: u64,
    /// [`key_hash`] of every live key.
    pub(crate) live: HashSet<u64>,
    /// The deadline of every live key that has one, by key text.
    pub(crate) deadlines: HashMap<String, i64>,
    /// The incomplete tail, if the file has one.
    pub(crate) torn: Option<Torn>,
}

/// A fingerprint of a key's text, to count live keys without keeping them.
///
/// A collision only makes the compaction trigger slightly off; it never
/// changes what is stored.
pub(crate) fn key_hash(key: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// The granularity at which the kernel splits an interrupted write: the
/// smallest page-cache page on the platforms we support.
const PAGE: u64 = 4096;

struct PendingBatch {
    start: u64,
    line: u64,
    len: u64,
    remaining: u64,
    changes: Vec<Change>,
}

/// Replays records in order, holding back a batch until it is complete.
struct Replay<'p, F> {
    path: &'p Path,
    /// Whether records have the deadline field.
    deadlines: bool,
    apply: F,
    scan: Scan,
    batch: Option<PendingBatch>,
}

impl<F: FnMut(Change) -> Result<()>> Replay<'_, F> {
    fn record(&mut self, record: &ByteRecord) -> Result<()> {
        let (start, line) = record.position().map_or((0, 0), |p| (p.byte(), p.line()));
        let entry = parse_entry(record, self.deadlines).map_err(|malformed| {
            let location = at(self.path).with_line(line);
            let location = match &malformed.key {
                Some(key) => location.with_key(render_key(key)),
                None => location,
            };
            PersistentError::corrupt(location, malformed.reason)
        })?;
        let change = match entry {
            Entry::Batch { len } => {
                if self.batch.is_some() {
                    return Err(PersistentError::corrupt(
                        at(self.path).with_line(line),
                        "batch marker inside a batch",
                    ));
                }
                self.batch = Some(PendingBatch {
                    start,
                    line,
                    len,
                    remaining: len,
                    changes: Vec::new(),
                });
                return Ok(());
            }
            Entry::Put {
                key,
                value,
                expires_at,
            } => Change {
                line,
                key,
                value: Some(value),
                expires_at,
            },
            Entry::Del { key } => Change {
                line,
                key,
                value: None,
                expires_at: None,
            },
        };
        let Some(batch) = self.batch.as_mut() else {
            return self.apply(change);
        };
        batch.changes.push(change);
        batch.remaining -= 1;
        if batch.remaining == 0 {
            if let Some(batch) = self.batch.take() {
                self.scan.rows += 1;
                for change in batch.changes {
                    self.apply(change)?;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, change: Change) -> Result<()> {
        self.scan.rows += 1;
        let hash = key_hash(&change.key);
        if change.value.is_some() {
            self.scan.live.insert(hash);
        } else {
            self.scan.live.remove(&hash);
        }
        match change.expires_at {
            Some(deadline) => {
                self.scan.deadlines.insert(change.key.clone(), deadline);
            }
            // Skips hashing the key in a file without deadlines.
            None if self.scan.deadlines.is_empty() => {}
            None => {
                self.scan.deadlines.remove(&change.key);
            }
        }
        (self.apply)(change)
    }
}

/// Reads a file with a header (whose records have the deadline field if
/// `deadlines`) and hands every change of its complete part to `apply`, in
/// order. Changes of a batch are handed over only once the whole
/// batch has been read.
///
/// The last record is incomplete (torn) when the file does not end with a
/// newline, or when the record has an odd number of quote characters (it was
/// cut inside a quoted field, which may itself hold newlines). A torn last
/// record, and a batch the file ends in, are what an interrupted write
/// leaves (see the module docs for when a batch is): [`Scan::torn`] says
/// where the complete part ends, and the caller decides whether to cut the
/// file there. Anything else is an error naming its line; nothing is changed.
pub(crate) async fn scan<F>(path: &Path, delimiter: u8, deadlines: bool, apply: F) -> Result<Scan>
where
    F: FnMut(Change) -> Result<()>,
{
    let io = |e| PersistentError::io(path, e);
    let file = tokio::fs::File::open(path).await.map_err(io)?;
    let len = file.metadata().await.map_err(io)?.len();
    let mut reader = AsyncReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .create_reader(file);

    let mut replay = Replay {
        path,
        deadlines,
        apply,
        scan: Scan::default(),
        batch: None,
    };
    // The header was checked by the caller; the first record is skipped.
    let mut current = ByteRecord::new();
    let mut next = ByteRecord::new();
    let mut has_current = false;
    let mut is_header = true;
    // One record of look-ahead: only the last record may be torn, so a
    // record is judged once it is known whether another one follows.
    while reader
        .read_byte_record(&mut next)
        .await
        .map_err(|e| from_csv(path, e))?
    {
        if is_header {
            is_header = false;
            continue;
        }
        if has_current {
            replay.record(&current)?;
        }
        std::mem::swap(&mut current, &mut next);
        has_current = true;
    }

    let mut torn = None;
    if has_current {
        let (start, line) = current.position().map_or((0, 0), |p| (p.byte(), p.line()));
        if is_torn(path, start, len).await? {
            torn = Some(Torn {
                keep_len: start,
                line,
            });
        } else {
            replay.record(&current)?;
        }
    }
    if let Some(batch) = replay.batch.take() {
        if torn.is_none() && !len.is_multiple_of(PAGE) {
            return Err(PersistentError::corrupt(
                at(path).with_line(batch.line),
                format!(
                    "batch marker promises {} records but the file ends after {} complete ones",
                    batch.len,
                    batch.changes.len()
                ),
            ));
        }
        torn = Some(Torn {
            keep_len: batch.start,
            line: batch.line,
        });
    }
    replay.scan.torn = torn;
    Ok(replay.scan)
}

/// Whether the bytes from `start` to the end of the file are an incompletely
/// written record.
///
/// Values are JSON, which has no raw newline, deadlines are digits, and
/// only keys are quoted when they hold one; so a newline is a record end exactly when an even
/// number of quote characters (doubled quotes count twice) precede it.
async fn is_torn(path: &Path, start: u64, len: u64) -> Result<bool> {
    if start >= len {
        return Ok(false);
    }
    let tail = read_range(path, start, len).await?;
    let quotes = tail.iter().filter(|&&b| b == b'"').count();
    Ok(tail.last() != Some(&b'\n') || quotes % 2 == 1)
}

async fn read_range(path: &Path, start: u64, end: u64) -> Result<Vec<u8>> {
    let io = |e| PersistentError::io(path, e);
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    file.seek(SeekFrom::Start(start)).await.map_err(io)?;
    let mut bytes = Vec::with_capacity(usize::try_from(end - start).unwrap_or(0));
    file.take(end - start)
        .read_to_end(&mut bytes)
        .await
        .map_err(io)?;
    Ok(bytes)
}

/// Reads the start of a file, up to and including its first newline (or
/// the whole file if it has none, up to a limit), or `None` if it does not exist.
pub(crate) async fn read_start(path: &Path) -> Result<Option<Vec<u8>>> {
    const LIMIT: u64 = 4096;
    let io = |e| PersistentError::io(path, e);
    let file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mut start = Vec::new();
    let mut reader = tokio::io::BufReader::new(file).take(LIMIT);
    tokio::io::AsyncBufReadExt::read_until(&mut reader, b'\n', &mut start)
        .await
        .map_err(io)?;
    Ok(Some(start))
}

/// Reads a header-less file written by persistent-map 0.1.x: each record is
/// the key's text, then the value's fields as csv's serde support wrote
/// them. Later records win, as they did in 0.1.x.
///
/// A last record that was cut short (no final newline) and does not decode
/// is left out with a warning; any other record that does not decode is an
/// error naming its line and key.
pub(crate) async fn read_legacy<K, V>(path: &Path) -> Result<HashMap<K, V>>
where
    K: Eq + std::hash::Hash + DeserializeOwned,
    V: DeserializeOwned,
{
    let io = |e| PersistentError::io(path, e);
    let file = tokio::fs::File::open(path).await.map_err(io)?;
    let len = file.metadata().await.map_err(io)?.len();
    let mut reader = AsyncReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .create_reader(file);
    let mut entries = HashMap::new();
    let mut record = StringRecord::new();
    // Decoded one record late, so a failure can be judged against whether
    // it was the last record.
    let mut pending: Option<Result<(K, V)>> = None;
    while reader
        .read_record(&mut record)
        .await
        .map_err(|e| from_csv(path, e))?
    {
        if let Some(done) = pending.take() {
            let (key, value) = done?;
            entries.insert(key, value);
        }
        pending = Some(decode_legacy(path, &record));
    }
    match pending {
        Some(Ok((key, value))) => {
            entries.insert(key, value);
        }
        Some(Err(err)) => {
            let ends_with_newline = len > 0 && read_range(path, len - 1, len).await? == b"\n";
            if ends_with_newline {
                return Err(err);
            }
            tracing::warn!(
                path = %path.display(),
                error = %err,
                "left out the incomplete last record of a 0.1.x file"
            );
        }
        None => {}
    }
    Ok(entries)
}

fn decode_legacy<K, V>(path: &Path, record: &StringRecord) -> Result<(K, V)>
where
    K: DeserializeOwned,
    V: DeserializeOwned,
{
    let line = record.position().map_or(0, |p| p.line());
    let key_text = record.get(0).unwrap_or_default();
    let location = at(path).with_line(line).with_key(render_key(key_text));
    let key = key_from_text(key_text)
        .map_err(|e| PersistentError::decode(EntryPart::Key, location.clone(), e))?;
    let (_, value): (String, V) = record
        .deserialize(None)
        .map_err(|e| PersistentError::decode(EntryPart::Value, location, e))?;
    Ok((key, value))
}
