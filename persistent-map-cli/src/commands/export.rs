//! `export STORE --csv FILE`: a `key,value` table for spreadsheets.

use std::path::Path;

use csv_async::{AsyncWriter, AsyncWriterBuilder};
use indicatif::ProgressBar;
use persistent_map_core::async_trait;
use serde::Serialize;
use serde_json::Value;

use super::stdout_error;
use crate::entry::Entry;
use crate::error::{CliError, Result};
use crate::output::Output;
use crate::store::{Flow, Order, Sink, Source, StoreName};

struct Table<'p> {
    writer: AsyncWriter<tokio::fs::File>,
    path: &'p Path,
    bar: ProgressBar,
    rows: u64,
}

impl Table<'_> {
    fn fail(&self, e: csv_async::Error) -> CliError {
        CliError::file("write to", self.path, std::io::Error::other(e))
    }
}

#[async_trait]
impl Sink for Table<'_> {
    async fn batch(&mut self, entries: Vec<Entry>) -> Result<Flow> {
        for entry in &entries {
            let value = match &entry.value {
                Value::String(text) => neutralise(text),
                other => neutralise(&other.to_string()),
            };
            let key = neutralise(&entry.key);
            if let Err(e) = self
                .writer
                .write_record([key.as_str(), value.as_str()])
                .await
            {
                return Err(self.fail(e));
            }
        }
        self.rows += entries.len() as u64;
        self.bar.inc(entries.len() as u64);
        Ok(Flow::Continue)
    }
}

/// A cell a spreadsheet would read as a formula (`=`, `+`, `-`, `@`, or a
/// tab or carriage return before one) gets a leading `'`, which spreadsheets
/// show as text and never evaluate.
pub fn neutralise(cell: &str) -> String {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{cell}"),
        _ => cell.to_owned(),
    }
}

#[derive(Serialize)]
struct Exported<'a> {
    store: String,
    rows: u64,
    csv: &'a Path,
}

pub async fn run(out: Output, store: &str, path: &Path) -> Result<()> {
    let name = StoreName::parse(store)?;
    let source = Source::open(&name).await?;
    let total = source.count().await?;
    let file = tokio::fs::File::create(path)
        .await
        .map_err(|e| CliError::file("create", path, e))?;
    let mut table = Table {
        writer: AsyncWriterBuilder::new()
            .has_headers(false)
            .create_writer(file),
        path,
        bar: out.progress(Some(total), "exporting"),
        rows: 0,
    };
    if let Err(e) = table.writer.write_record(["key", "value"]).await {
        return Err(table.fail(e));
    }
    source.scan(Order::Key, &mut table).await?;
    if let Err(e) = table.writer.flush().await {
        return Err(CliError::file("write to", path, e));
    }
    table.bar.finish_and_clear();
    let rows = table.rows;
    let summary = Exported {
        store: name.to_string(),
        rows,
        csv: path,
    };
    out.result(&summary, || {
        format!("exported {rows} entries of {name} to {}", path.display())
    })
    .map_err(stdout_error)
}

#[cfg(test)]
mod tests {
    use super::neutralise;

    #[test]
    fn formulas_are_neutralised() {
        assert_eq!(neutralise("=1+1"), "'=1+1");
        assert_eq!(neutralise("+33"), "'+33");
        assert_eq!(neutralise("-5"), "'-5");
        assert_eq!(neutralise("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(neutralise("\t=x"), "'\t=x");
        assert_eq!(neutralise("plain"), "plain");
        assert_eq!(neutralise(""), "");
    }
}
