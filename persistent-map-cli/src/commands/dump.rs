//! `dump STORE [--out FILE]`: every entry as JSON Lines, sorted by key.

use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use persistent_map_core::async_trait;
use serde::Serialize;

use super::stdout_error;
use crate::entry::Entry;
use crate::error::{CliError, Result};
use crate::output::Output;
use crate::store::{Flow, Order, Sink, Source, StoreName};

/// Writes JSON Lines to stdout or a file.
pub struct Lines {
    out: Box<dyn Write + Send>,
    /// Where the lines go, for errors.
    path: PathBuf,
    line: Vec<u8>,
    bar: ProgressBar,
    pub written: u64,
}

impl Lines {
    /// To `path`, or to stdout with `None`.
    pub fn create(path: Option<&Path>, bar: ProgressBar) -> Result<Self> {
        let (out, path): (Box<dyn Write + Send>, PathBuf) = match path {
            Some(path) => (
                Box::new(std::io::BufWriter::with_capacity(
                    1 << 16,
                    std::fs::File::create(path).map_err(|e| CliError::file("create", path, e))?,
                )),
                path.to_path_buf(),
            ),
            None => (
                Box::new(std::io::BufWriter::with_capacity(
                    1 << 16,
                    std::io::stdout(),
                )),
                PathBuf::from("stdout"),
            ),
        };
        Ok(Self {
            out,
            path,
            line: Vec::with_capacity(256),
            bar,
            written: 0,
        })
    }

    pub fn finish(mut self) -> Result<u64> {
        self.out
            .flush()
            .map_err(|e| CliError::file("write to", &self.path, e))?;
        self.bar.finish_and_clear();
        Ok(self.written)
    }
}

#[async_trait]
impl Sink for Lines {
    async fn batch(&mut self, entries: Vec<Entry>) -> Result<Flow> {
        for entry in &entries {
            self.line.clear();
            entry.write_line(&mut self.line);
            self.out
                .write_all(&self.line)
                .map_err(|e| CliError::file("write to", &self.path, e))?;
        }
        self.written += entries.len() as u64;
        self.bar.inc(entries.len() as u64);
        Ok(Flow::Continue)
    }
}

#[derive(Serialize)]
struct Dumped<'a> {
    store: String,
    entries: u64,
    out: &'a Path,
}

pub async fn run(out: Output, store: &str, file: Option<&Path>) -> Result<()> {
    let name = StoreName::parse(store)?;
    let source = Source::open(&name).await?;
    let total = source.count().await?;
    let mut lines = Lines::create(file, out.progress(Some(total), "dumping"))?;
    source.scan(Order::Key, &mut lines).await?;
    let entries = lines.finish()?;
    match file {
        Some(path) => {
            let summary = Dumped {
                store: name.to_string(),
                entries,
                out: path,
            };
            out.result(&summary, || {
                format!("dumped {entries} entries of {name} to {}", path.display())
            })
            .map_err(stdout_error)
        }
        // stdout holds the lines; a note for a person goes to stderr.
        None => {
            if !out.json {
                out.note(&format!("dumped {entries} entries of {name}"));
            }
            Ok(())
        }
    }
}
