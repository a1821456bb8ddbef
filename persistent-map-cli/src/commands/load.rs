//! `load STORE FILE`: JSON Lines into a store, in atomic batches.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use persistent_map_core::codec::KeyFormat;
use persistent_map_core::BatchOp;
use serde::Serialize;
use serde_json::Value;

use super::stdout_error;
use crate::entry::Line;
use crate::error::{CliError, Result};
use crate::output::Output;
use crate::store::{deadline, key_of, StoreName, Target};

/// Reads `{"key": …, "value": …[, "expires_at": <ms>]}` lines one by one,
/// skipping blank lines.
struct Input {
    reader: std::io::BufReader<std::fs::File>,
    path: PathBuf,
    line: u64,
    text: String,
    /// Bytes read so far, for the progress bar.
    read: u64,
}

impl Input {
    /// Opens `path`, naming it `shown` in errors.
    fn open(path: &Path, shown: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| CliError::file("open", shown, e))?;
        Ok(Self {
            reader: std::io::BufReader::with_capacity(1 << 16, file),
            path: shown.to_path_buf(),
            line: 0,
            text: String::new(),
            read: 0,
        })
    }

    fn next(&mut self) -> Result<Option<Line>> {
        loop {
            self.text.clear();
            let n = self
                .reader
                .read_line(&mut self.text)
                .map_err(|e| CliError::file("read", &self.path, e))?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            self.read += n as u64;
            if self.text.trim().is_empty() {
                continue;
            }
            let line: Line = serde_json::from_str(&self.text).map_err(|e| CliError::Input {
                path: self.path.clone(),
                line: self.line,
                reason: format!(
                    "not a {{\"key\": …, \"value\": …[, \"expires_at\": <ms>]}} line ({e})"
                ),
            })?;
            return Ok(Some(line));
        }
    }
}

#[derive(Serialize)]
struct Loaded {
    store: String,
    loaded: u64,
    batches: u64,
    replaced: bool,
}

pub async fn run(
    out: Output,
    store: &str,
    file: &Path,
    replace: bool,
    batch_size: u64,
) -> Result<()> {
    let name = StoreName::parse(store)?;
    // Standard input is kept in a temporary file first, so that it is checked
    // whole like a file: a bad line (or a broken pipe) then writes nothing,
    // and above all `--replace` does not clear the store for input that
    // turns out unusable.
    let spooled = if file == Path::new("-") {
        Some(blocking(spool_stdin).await??)
    } else {
        None
    };
    let (path, shown) = match &spooled {
        Some(temp) => (temp.path().to_path_buf(), PathBuf::from("stdin")),
        None => (file.to_path_buf(), file.to_path_buf()),
    };
    let size = {
        let (path, shown) = (path.clone(), shown.clone());
        blocking(move || check_whole(&path, &shown)).await??
    };
    let target = Target::open(&name).await?;
    // A key text must mean one key in the store's format, and a deadline
    // needs a store that keeps them: checked for every line before the
    // store is cleared or written.
    let keys = Keys {
        format: target.key_format().await?,
        store: target.shown().to_owned(),
        expiry: target.expiry(),
    };
    {
        let (path, shown, keys) = (path.clone(), shown.clone(), keys.clone());
        blocking(move || check_keys(&path, &shown, &keys)).await??;
    }
    if replace {
        target.clear().await?;
    }
    let bar = out.progress(Some(size), "loading");
    let capacity = usize::try_from(batch_size).unwrap_or(usize::MAX).max(1);
    // The file is read on a blocking thread, a batch ahead of the writes.
    let (batches_tx, mut batches_rx) = tokio::sync::mpsc::channel(1);
    let reader = tokio::task::spawn_blocking(move || {
        read_batches(&path, &shown, &keys, capacity, &batches_tx)
    });
    let (mut loaded, mut batches) = (0_u64, 0_u64);
    while let Some((batch, read)) = batches_rx.recv().await {
        let batch: Vec<BatchOp<Value, Value>> = batch;
        target.apply(&batch).await?;
        loaded += batch.len() as u64;
        batches += 1;
        bar.set_position(read);
    }
    reader
        .await
        .map_err(|e| CliError::file("read", "the input", std::io::Error::other(e)))??;
    target.flush().await?;
    target.close().await;
    bar.finish_and_clear();
    let summary = Loaded {
        store: name.to_string(),
        loaded,
        batches,
        replaced: replace,
    };
    out.result(&summary, || {
        format!("loaded {loaded} entries into {name} in {batches} batches")
    })
    .map_err(stdout_error)
}

/// Runs blocking file work off the runtime's workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| CliError::file("read", "the input", std::io::Error::other(e)))
}

/// Copies standard input into a temporary file, removed when dropped.
fn spool_stdin() -> Result<tempfile::NamedTempFile> {
    let mut temp = tempfile::NamedTempFile::new()
        .map_err(|e| CliError::file("create a temporary file for", "stdin", e))?;
    std::io::copy(&mut std::io::stdin().lock(), temp.as_file_mut())
        .map_err(|e| CliError::file("read", "stdin", e))?;
    Ok(temp)
}

/// The store's key format, which turns a line's key into the key to write,
/// and whether it keeps deadlines.
#[derive(Clone)]
struct Keys {
    format: KeyFormat,
    /// The store, named in errors.
    store: String,
    /// Whether the store keeps deadlines (`capabilities().expiry`).
    expiry: bool,
}

impl Keys {
    /// A string is a stored key text, as `dump` writes it; other JSON is the
    /// key itself.
    fn key(&self, key: Value) -> Result<Value> {
        match key {
            Value::String(text) => key_of(self.format, &text, &self.store),
            key => Ok(key),
        }
    }
}

/// Reads every line once, so a bad line is refused before anything is
/// written; returns the input's size in bytes.
fn check_whole(path: &Path, shown: &Path) -> Result<u64> {
    let mut input = Input::open(path, shown)?;
    while input.next()?.is_some() {}
    Ok(input.read)
}

/// Checks that every key of the input is one key of the store, and that
/// every deadline can be written to it.
fn check_keys(path: &Path, shown: &Path, keys: &Keys) -> Result<()> {
    let mut input = Input::open(path, shown)?;
    while let Some(line) = input.next()? {
        keys.key(line.key)?;
        if let Some(ms) = line.expires_at {
            let refuse = |reason: String| CliError::Input {
                path: shown.to_path_buf(),
                line: input.line,
                reason,
            };
            if !keys.expiry {
                return Err(refuse(format!(
                    "an entry with a deadline, and {} keeps no deadlines (a store in the \
                     legacy key format); load it into a new store, or drop the deadlines",
                    keys.store
                )));
            }
            if deadline(ms).is_none() {
                return Err(refuse(format!(
                    "the deadline {ms} is beyond what this platform's clock holds"
                )));
            }
        }
    }
    Ok(())
}

/// Sends the input's entries in batches of `capacity`, each with the bytes
/// read so far; stops early when the receiver is gone.
fn read_batches(
    path: &Path,
    shown: &Path,
    keys: &Keys,
    capacity: usize,
    batches: &tokio::sync::mpsc::Sender<(Vec<BatchOp<Value, Value>>, u64)>,
) -> Result<()> {
    let mut input = Input::open(path, shown)?;
    let mut batch = Vec::with_capacity(capacity.min(65_536));
    while let Some(line) = input.next()? {
        let key = keys.key(line.key)?;
        let value = line.value;
        batch.push(match line.expires_at {
            None => BatchOp::Put { key, value },
            Some(ms) => BatchOp::PutExpiring {
                key,
                value,
                // Refused by check_keys already, unless the file changed since.
                expires_at: deadline(ms).ok_or_else(|| CliError::Input {
                    path: shown.to_path_buf(),
                    line: input.line,
                    reason: format!("the deadline {ms} is beyond what this platform's clock holds"),
                })?,
            },
        });
        if batch.len() >= capacity {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(capacity.min(65_536)));
            if batches.blocking_send((full, input.read)).is_err() {
                return Ok(());
            }
        }
    }
    if !batch.is_empty() {
        let _ = batches.blocking_send((batch, input.read));
    }
    Ok(())
}
