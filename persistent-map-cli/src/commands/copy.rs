//! `copy FROM TO`: every entry of one store into another, with its
//! deadline, in batches, reading and writing at the same time, then
//! verified (count and checksum, deadlines included).

use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use persistent_map_core::async_trait;
use serde::Serialize;
use tokio::sync::mpsc;

use super::stdout_error;
use crate::entry::{Checksum, Entry};
use crate::error::{CliError, Result};
use crate::output::Output;
use crate::store::{Flow, Order, Sink, Source, StoreName, Target};

/// Batches read ahead of the writer.
const READ_AHEAD: usize = 8;

/// Batches written at once to a server.
const WRITERS: usize = 2;

/// Hands batches to the writer, summing the checksum of what it read.
struct Reader {
    tx: mpsc::Sender<Vec<Entry>>,
    checksum: Checksum,
}

#[async_trait]
impl Sink for Reader {
    async fn batch(&mut self, entries: Vec<Entry>) -> Result<Flow> {
        for entry in &entries {
            self.checksum.add(entry);
        }
        // A closed channel means the writer failed; it reports why.
        Ok(match self.tx.send(entries).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        })
    }
}

/// Sums the checksum of a store read back.
struct Summer(Checksum);

#[async_trait]
impl Sink for Summer {
    async fn batch(&mut self, entries: Vec<Entry>) -> Result<Flow> {
        for entry in &entries {
            self.0.add(entry);
        }
        Ok(Flow::Continue)
    }
}

#[derive(Serialize)]
struct Copied {
    from: String,
    to: String,
    entries: u64,
    checksum: String,
    verified: bool,
    seconds: f64,
    /// Of which reading and writing.
    copy_seconds: f64,
    /// Of which reading the target back.
    verify_seconds: f64,
}

pub async fn run(out: Output, from: &str, to: &str, replace: bool, batch_size: u64) -> Result<()> {
    let started = Instant::now();
    let (from, to) = (StoreName::parse(from)?, StoreName::parse(to)?);
    if from.same_store(&to) {
        return Err(CliError::Usage(format!(
            "FROM and TO are the same store: {from}"
        )));
    }
    let source = Source::open(&from).await?;
    let total = source.count().await?;
    // The entries are copied as stored key texts, which mean the same keys
    // only in the same key format: a new target gets the source's format,
    // an existing one must have it.
    let key_format = source.key_format().await?;
    let target = Target::open_in(&to, key_format).await?;
    let target_format = target.key_format().await?;
    if target_format != key_format {
        return Err(CliError::Usage(format!(
            "{to} stores keys in the {target_format:?} key format and {from} in the \
             {key_format:?} one: the stored key texts cannot be copied between them; \
             copy into a new store, which gets the source's format"
        )));
    }
    // Deadlines are copied with their entries, those already past too (as
    // stored: the target's sweep removes them); a target that keeps none
    // would make them permanent, so it is refused before anything is written.
    let with_deadline = source
        .details()
        .await?
        .deadlines
        .map_or(0, |d| d.with_deadline);
    if with_deadline > 0 && !target.expiry() {
        return Err(CliError::Usage(format!(
            "{from} has {with_deadline} entries with a deadline and {to} keeps no deadlines \
             (a store in the legacy key format): copying would make them permanent"
        )));
    }
    let existing = target.len().await?;
    if existing > 0 {
        if !replace {
            return Err(CliError::NotEmpty {
                store: to.to_string(),
                entries: existing,
            });
        }
        target.clear().await?;
    }

    let bar = out.progress(Some(total), "copying");
    let (tx, mut rx) = mpsc::channel::<Vec<Entry>>(READ_AHEAD);
    let reading = tokio::spawn(async move {
        let mut reader = Reader {
            tx,
            checksum: Checksum::default(),
        };
        source.scan(Order::Any, &mut reader).await?;
        Ok::<_, CliError>(reader.checksum)
    });
    let capacity = usize::try_from(batch_size).unwrap_or(usize::MAX);
    // A server takes a few batches at once, each in a transaction of its own.
    let in_flight = if target.concurrent() { WRITERS } else { 1 };
    let written = async {
        let mut writes = FuturesUnordered::new();
        let mut batch: Vec<Entry> = Vec::with_capacity(capacity.min(65_536));
        let mut reading = true;
        loop {
            if !batch.is_empty()
                && writes.len() < in_flight
                && (batch.len() >= capacity || !reading)
            {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(capacity.min(65_536)));
                let n = full.len() as u64;
                let target = &target;
                writes.push(async move { target.insert_new(full).await.map(|()| n) });
                continue;
            }
            if !reading && batch.is_empty() && writes.is_empty() {
                break;
            }
            // Reading on while batches are written: both are polled here.
            let can_read = reading && batch.len() < capacity;
            tokio::select! {
                received = rx.recv(), if can_read => match received {
                    Some(entries) => batch.extend(entries),
                    None => reading = false,
                },
                Some(done) = writes.next(), if !writes.is_empty() => bar.inc(done?),
                else => break,
            }
        }
        target.flush().await?;
        target.announce_inserts().await
    }
    .await;
    if let Err(e) = written {
        reading.abort();
        return Err(e);
    }
    let read = reading
        .await
        .map_err(|e| CliError::read("read", &from, e))??;
    if read.entries != total {
        // The source changed under the copy (or was the target after all).
        return Err(CliError::CopyMismatch {
            store: from.to_string(),
            reason: format!(
                "it held {total} entries when counted and {} when read (was it written meanwhile?)",
                read.entries
            ),
        });
    }
    target.close().await;
    bar.finish_and_clear();

    let copy_seconds = started.elapsed().as_secs_f64();
    let check = out.progress(Some(read.entries), "verifying");
    let mut summer = Summer(Checksum::default());
    let copy = Source::open(&to).await?;
    copy.scan(Order::Any, &mut summer).await?;
    check.finish_and_clear();
    if summer.0.entries != read.entries {
        return Err(CliError::CopyMismatch {
            store: to.to_string(),
            reason: format!(
                "it holds {} entries, {} were copied (was either store written meanwhile?)",
                summer.0.entries, read.entries
            ),
        });
    }
    if summer.0 != read {
        return Err(CliError::CopyMismatch {
            store: to.to_string(),
            reason: format!(
                "checksum {} differs from the source's {} (was either store written meanwhile?)",
                summer.0.hex(),
                read.hex()
            ),
        });
    }
    let copied = Copied {
        from: from.to_string(),
        to: to.to_string(),
        entries: read.entries,
        checksum: read.hex(),
        verified: true,
        seconds: started.elapsed().as_secs_f64(),
        copy_seconds,
        verify_seconds: started.elapsed().as_secs_f64() - copy_seconds,
    };
    out.result(&copied, || {
        format!(
            "copied {} entries from {} to {} in {:.1} s; verified (count and checksum {})",
            copied.entries, copied.from, copied.to, copied.seconds, copied.checksum
        )
    })
    .map_err(stdout_error)
}
