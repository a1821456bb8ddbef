//! `load STORE FILE`: JSON Lines into a store, in atomic batches.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use persistent_map_core::BatchOp;
use serde::Serialize;
use serde_json::Value;

use super::stdout_error;
use crate::entry::Line;
use crate::error::{CliError, Result};
use crate::output::Output;
use crate::store::{StoreName, Target};

/// Reads `{"key": …, "value": …}` lines one by one, skipping blank lines.
struct Input {
    reader: Box<dyn BufRead + Send>,
    path: PathBuf,
    line: u64,
    text: String,
    /// Bytes read so far, for the progress bar.
    read: u64,
}

impl Input {
    fn open(path: &Path) -> Result<Self> {
        let reader: Box<dyn BufRead + Send> = if path == Path::new("-") {
            Box::new(std::io::BufReader::new(std::io::stdin()))
        } else {
            Box::new(std::io::BufReader::with_capacity(
                1 << 16,
                std::fs::File::open(path).map_err(|e| CliError::file("open", path, e))?,
            ))
        };
        Ok(Self {
            reader,
            path: if path == Path::new("-") {
                PathBuf::from("stdin")
            } else {
                path.to_path_buf()
            },
            line: 0,
            text: String::new(),
            read: 0,
        })
    }

    fn next(&mut self) -> Result<Option<(Value, Value)>> {
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
                reason: format!("not a {{\"key\": …, \"value\": …}} line ({e})"),
            })?;
            return Ok(Some((line.key, line.value)));
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
    let from_stdin = file == Path::new("-");
    // A file is checked whole first, so a bad line writes nothing.
    if !from_stdin {
        let mut input = Input::open(file)?;
        while input.next()?.is_some() {}
    }
    let size = if from_stdin {
        None
    } else {
        std::fs::metadata(file).ok().map(|m| m.len())
    };
    let target = Target::open(&name).await?;
    if replace {
        target.clear().await?;
    }
    let key_format = target.key_format().await?;
    let bar = out.progress(size, "loading");
    let mut input = Input::open(file)?;
    let capacity = usize::try_from(batch_size).unwrap_or(usize::MAX);
    let mut batch = Vec::with_capacity(capacity.min(65_536));
    let (mut loaded, mut batches) = (0_u64, 0_u64);
    loop {
        let next = input.next()?;
        let done = next.is_none();
        if let Some((key, value)) = next {
            // A string is a stored key text, as `dump` writes it; other
            // JSON is the key itself.
            let key = match key {
                Value::String(text) => target.key_of(key_format, &text)?,
                key => key,
            };
            batch.push(BatchOp::Put { key, value });
        }
        if batch.len() >= capacity || (done && !batch.is_empty()) {
            target.apply(&batch).await?;
            loaded += batch.len() as u64;
            batches += 1;
            batch.clear();
            bar.set_position(input.read);
        }
        if done {
            break;
        }
    }
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
