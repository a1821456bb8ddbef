//! Reading a CSV store read-only: the file is replayed here, with
//! csv-async, instead of through `CsvBackend`, whose open takes the file's
//! lock and cuts a torn tail off the file. The rules are the backend's
//! (see persistent-map-csv's README), through its `read_header` and
//! `read_record`: a header `persistent-map-csv/<version>,key,value[,expires_at]`,
//! then `put`, `del` and `batch` records (with a deadline field from version 4); a torn last record or an
//! incomplete last batch is left out, not an error; a file without the
//! header is a persistent-map 0.1.x file.
//!
//! The log is replayed whole, so the live entries are held in memory,
//! sorted by key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use csv_async::{AsyncReaderBuilder, ByteRecord};
use persistent_map_core::codec::KeyFormat;
use persistent_map_core::PersistentError;
use persistent_map_csv::{FileLayout, Record};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{
    parse_value, Batcher, CsvDetails, Deadlines, Details, Problem, Report, Sink, StoreName,
};
use crate::entry::{show_key, Entry};
use crate::error::{CliError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    /// Format version 2 to 5: the layout its header states.
    Current(FileLayout),
    /// No header: a persistent-map 0.1.x file, or an empty one.
    Legacy,
}

#[derive(Debug)]
pub struct CsvSource {
    path: PathBuf,
    shown: String,
    header: Option<Header>,
    /// Live entries: the value and the deadline in ms, if any.
    entries: BTreeMap<String, (Value, Option<i64>)>,
    /// Data records of the complete part of the file.
    records: u64,
    problems: Vec<Problem>,
    notes: Vec<String>,
    torn_line: Option<u64>,
}

/// One record, read but not applied.
enum Change {
    Put(String, Value, Option<i64>),
    Del(String),
}

struct PendingBatch {
    line: u64,
    remaining: u64,
    changes: Vec<Change>,
}

impl CsvSource {
    pub async fn open(name: &StoreName, path: &Path) -> Result<Self> {
        let shown = name.to_string();
        let mut source = Self {
            path: path.to_path_buf(),
            shown,
            header: None,
            entries: BTreeMap::new(),
            records: 0,
            problems: Vec::new(),
            notes: Vec::new(),
            torn_line: None,
        };
        let start = match read_range(path, 0, Some(4096)).await {
            Ok(start) => start,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CliError::Missing {
                    store: source.shown,
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(CliError::read("read", &source.shown, e)),
        };
        match parse_header(path, &start) {
            Ok(Some(layout)) => {
                source.header = Some(Header::Current(layout));
                source.replay(layout).await?;
            }
            Ok(None) => {
                source.header = Some(Header::Legacy);
                if !start.is_empty() {
                    source.notes.push(String::from(
                        "a persistent-map 0.1.x file (no header): each value is read from its CSV \
                         fields (one field: a number, boolean or string; several: an array), and the \
                         library rewrites the file in format 2 (4 if that write stores a deadline) on its \
                         first write",
                    ));
                }
                source.replay_legacy().await?;
            }
            Err(reason) => source.problems.push(Problem {
                location: String::from("line 1"),
                reason,
            }),
        }
        Ok(source)
    }

    fn io(&self, e: impl Into<persistent_map_core::BoxError>) -> CliError {
        CliError::read("read", &self.shown, e)
    }

    /// Replays a file with a header. Bad records are collected as problems
    /// and skipped, so `verify` reports every one of them.
    async fn replay(&mut self, layout: FileLayout) -> Result<()> {
        let file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| self.io(e))?;
        let len = file.metadata().await.map_err(|e| self.io(e))?.len();
        let mut reader = AsyncReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(layout.delimiter)
            .create_reader(file);
        let mut batch: Option<PendingBatch> = None;
        let (mut current, mut next) = (ByteRecord::new(), ByteRecord::new());
        let (mut has_current, mut is_header) = (false, true);
        // One record of look-ahead: only the last record may be torn.
        while reader
            .read_byte_record(&mut next)
            .await
            .map_err(|e| self.io(e))?
        {
            if is_header {
                is_header = false;
                continue;
            }
            if has_current {
                self.record(&current, layout, &mut batch);
            }
            std::mem::swap(&mut current, &mut next);
            has_current = true;
        }
        if has_current {
            let (start, line) = position(&current);
            let tail = read_range(&self.path, start, Some(len.saturating_sub(start)))
                .await
                .map_err(|e| self.io(e))?;
            let quotes = tail.iter().filter(|&&b| b == b'"').count();
            if !tail.is_empty() && (tail.last() != Some(&b'\n') || quotes % 2 == 1) {
                self.torn(line, "an incompletely written last record");
            } else {
                self.record(&current, layout, &mut batch);
            }
        }
        if let Some(batch) = batch {
            self.torn(batch.line, "an incomplete last batch");
        }
        Ok(())
    }

    fn torn(&mut self, line: u64, what: &str) {
        self.torn_line = Some(line);
        self.notes.push(format!(
            "line {line}: {what} (left by a crash during an unflushed write): left out here, \
             and cut off the file the next time the library opens it"
        ));
    }

    fn record(
        &mut self,
        record: &ByteRecord,
        layout: FileLayout,
        batch: &mut Option<PendingBatch>,
    ) {
        let (_, line) = position(record);
        let change = match parse_record(record, layout) {
            Ok(Parsed::Batch(len)) => {
                if batch.is_some() {
                    self.bad(line, None, String::from("batch marker inside a batch"));
                } else {
                    *batch = Some(PendingBatch {
                        line,
                        remaining: len,
                        changes: Vec::new(),
                    });
                }
                return;
            }
            Ok(Parsed::Change(change)) => Some(change),
            Err((key, reason)) => {
                self.bad(line, key.as_deref(), reason);
                None
            }
        };
        match batch {
            Some(pending) => {
                if let Some(change) = change {
                    pending.changes.push(change);
                }
                pending.remaining = pending.remaining.saturating_sub(1);
                if pending.remaining == 0 {
                    if let Some(done) = batch.take() {
                        for change in done.changes {
                            self.apply(change);
                        }
                    }
                }
            }
            None => {
                if let Some(change) = change {
                    self.apply(change);
                }
            }
        }
    }

    fn apply(&mut self, change: Change) {
        self.records += 1;
        match change {
            Change::Put(key, value, expires_at) => {
                self.entries.insert(key, (value, expires_at));
            }
            Change::Del(key) => {
                self.entries.remove(&key);
            }
        }
    }

    fn bad(&mut self, line: u64, key: Option<&str>, reason: String) {
        let location = match key {
            Some(key) => format!("line {line}, key {}", show_key(key)),
            None => format!("line {line}"),
        };
        self.problems.push(Problem { location, reason });
    }

    /// Replays a 0.1.x file: the key's text, then the value's fields.
    async fn replay_legacy(&mut self) -> Result<()> {
        let file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| self.io(e))?;
        let len = file.metadata().await.map_err(|e| self.io(e))?.len();
        let mut reader = AsyncReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .create_reader(file);
        let mut record = ByteRecord::new();
        let mut pending: Option<(u64, Legacy)> = None;
        while reader
            .read_byte_record(&mut record)
            .await
            .map_err(|e| self.io(e))?
        {
            if let Some((line, done)) = pending.take() {
                self.legacy(line, done);
            }
            pending = Some((position(&record).1, legacy_entry(&record)));
        }
        if let Some((line, done)) = pending {
            let ends_with_newline = len > 0
                && read_range(&self.path, len - 1, Some(1))
                    .await
                    .map_err(|e| self.io(e))?
                    == b"\n";
            if done.is_err() && !ends_with_newline {
                self.torn(line, "an incompletely written last record");
            } else {
                self.legacy(line, done);
            }
        }
        Ok(())
    }

    fn legacy(&mut self, line: u64, done: Legacy) {
        match done {
            Ok((key, value)) => self.apply(Change::Put(key, value, None)),
            Err((key, reason)) => self.bad(line, key.as_deref(), reason),
        }
    }

    /// Fails with the first bad record, for every command but `verify`.
    fn check(&self) -> Result<()> {
        match self.problems.first() {
            Some(problem) => Err(CliError::BadRecord {
                store: self.shown.clone(),
                location: problem.location.clone(),
                reason: problem.reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// How the file holds keys; a missing or empty file is created in the
    /// format of new stores.
    pub fn key_format(&self) -> KeyFormat {
        match self.header {
            Some(Header::Current(layout)) => layout.key_format,
            Some(Header::Legacy) => KeyFormat::Legacy,
            None => KeyFormat::NEW_STORES,
        }
    }

    pub fn count(&self) -> Result<u64> {
        self.check()?;
        Ok(self.entries.len() as u64)
    }

    pub async fn scan(&self, sink: &mut dyn Sink) -> Result<()> {
        self.check()?;
        let mut batcher = Batcher::new(sink);
        for (key, (value, expires_at)) in &self.entries {
            batcher
                .push(Entry {
                    key: key.clone(),
                    value: value.clone(),
                    expires_at: *expires_at,
                })
                .await?;
            if batcher.done() {
                break;
            }
        }
        batcher.finish().await
    }

    /// The value under `key`; a damaged file is an error, as for a scan.
    pub fn lookup(&self, key: &str) -> Result<Option<(Value, Option<i64>)>> {
        self.check()?;
        Ok(self.entries.get(key).cloned())
    }

    pub async fn details(&self) -> Result<Details> {
        self.check()?;
        let meta = tokio::fs::metadata(&self.path)
            .await
            .map_err(|e| self.io(e))?;
        let live = self.entries.len() as u64;
        let format_version = match self.header {
            Some(Header::Current(layout)) => Some(layout.version.to_string()),
            Some(Header::Legacy) if meta.len() > 0 => {
                Some(String::from("1 (persistent-map 0.1.x, no header)"))
            }
            _ => None,
        };
        let deadlines = match self.header {
            Some(Header::Current(layout)) if layout.deadlines => {
                let now = super::now_millis();
                let with: Vec<i64> = self.entries.values().filter_map(|(_, at)| *at).collect();
                Some(Deadlines {
                    with_deadline: with.len() as u64,
                    expired: with.iter().filter(|&&at| at <= now).count() as u64,
                })
            }
            _ => None,
        };
        Ok(Details {
            exists: true,
            format_version,
            deadlines,
            size_bytes: Some(meta.len()),
            size_note: String::from("the CSV file"),
            csv: Some(CsvDetails {
                records: self.records,
                live,
                dead: self.records.saturating_sub(live),
                live_ratio: if self.records == 0 {
                    1.0
                } else {
                    live as f64 / self.records as f64
                },
                last_rewrite: meta.created().ok().map(crate::output::utc_time),
                torn_tail_line: self.torn_line,
            }),
        })
    }

    pub fn verify(&self) -> Report {
        Report {
            checked: self.records,
            problems: self.problems.clone(),
            notes: self.notes.clone(),
        }
    }
}

fn position(record: &ByteRecord) -> (u64, u64) {
    record.position().map_or((0, 0), |p| (p.byte(), p.line()))
}

/// `len` bytes of the file from `start` (all of the rest with `None`).
async fn read_range(path: &Path, start: u64, len: Option<u64>) -> std::io::Result<Vec<u8>> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut bytes = Vec::new();
    match len {
        Some(len) => {
            file.take(len).read_to_end(&mut bytes).await?;
        }
        None => {
            file.read_to_end(&mut bytes).await?;
        }
    }
    Ok(bytes)
}

/// What the first line says (`None`: no header); an error explains a
/// malformed header or a version this tool does not read.
fn parse_header(path: &Path, start: &[u8]) -> std::result::Result<Option<FileLayout>, String> {
    persistent_map_csv::read_header(path, start).map_err(|e| match e {
        PersistentError::UnsupportedFormat {
            found, supported, ..
        } => format!(
            "format version {found}: this tool reads versions 2 to {supported} and 0.1.x files"
        ),
        PersistentError::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    })
}

enum Parsed {
    Change(Change),
    Batch(u64),
}

/// Reads one record of a file with a header, or says why it is bad (with
/// its key when it has one).
fn parse_record(
    record: &ByteRecord,
    layout: FileLayout,
) -> std::result::Result<Parsed, (Option<String>, String)> {
    match persistent_map_csv::read_record(record, layout) {
        Ok(Record::Put {
            key,
            value,
            expires_at,
        }) => match parse_value(&value) {
            Ok(value) => Ok(Parsed::Change(Change::Put(key, value, expires_at))),
            Err(reason) => Err((Some(key), reason)),
        },
        Ok(Record::Del { key }) => Ok(Parsed::Change(Change::Del(key))),
        Ok(Record::Batch { len }) => Ok(Parsed::Batch(len)),
        Ok(other) => Err((None, format!("a record this tool does not know: {other:?}"))),
        Err(bad) => Err((bad.key, bad.reason)),
    }
}

/// A decoded 0.1.x record, or its key (when readable) and what is wrong.
type Legacy = std::result::Result<(String, Value), (Option<String>, String)>;

/// A 0.1.x record: the key's text, then the value's fields as csv's serde
/// support wrote them.
fn legacy_entry(record: &ByteRecord) -> Legacy {
    let text = |bytes: &[u8]| std::str::from_utf8(bytes).map(str::to_owned);
    let key = text(record.get(0).unwrap_or_default())
        .map_err(|_| (None, String::from("the key is not valid UTF-8")))?;
    let fields: Vec<String> = record
        .iter()
        .skip(1)
        .map(text)
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            (
                Some(key.clone()),
                String::from("the value is not valid UTF-8"),
            )
        })?;
    let value = match fields.as_slice() {
        [] => return Err((Some(key), String::from("a record without a value"))),
        [one] => scalar(one),
        many => Value::Array(many.iter().map(|f| scalar(f)).collect()),
    };
    Ok((key, value))
}

/// A CSV field as csv's serde support infers it: a boolean, an integer, a
/// float, or else a string.
fn scalar(field: &str) -> Value {
    match field {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(n) = field.parse::<u64>() {
        return Value::from(n);
    }
    if let Ok(n) = field.parse::<i64>() {
        return Value::from(n);
    }
    if let Some(n) = field
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
    {
        return Value::Number(n);
    }
    Value::String(field.to_owned())
}
