//! `info STORE`: what a store is and holds.

use persistent_map_core::async_trait;
use serde::Serialize;

use super::stdout_error;
use crate::entry::Entry;
use crate::error::Result;
use crate::output::{bytes, Output};
use crate::store::{Details, Flow, Order, Shape, Sink, Source, StoreName};

#[derive(Serialize)]
struct Info {
    store: String,
    backend: &'static str,
    entries: u64,
    #[serde(flatten)]
    details: Details,
    keys: Shape,
    values: Shape,
}

/// Summarises the shapes of the first `limit` entries (all with 0).
struct Shapes {
    limit: u64,
    keys: Shape,
    values: Shape,
}

#[async_trait]
impl Sink for Shapes {
    async fn batch(&mut self, entries: Vec<Entry>) -> Result<Flow> {
        for entry in &entries {
            if self.limit != 0 && self.keys.sampled >= self.limit {
                return Ok(Flow::Stop);
            }
            self.keys.add_key(&entry.key);
            self.values.add_value(&entry.value);
        }
        Ok(Flow::Continue)
    }
}

pub async fn run(out: Output, store: &str, sample: u64) -> Result<()> {
    let name = StoreName::parse(store)?;
    let source = Source::open(&name).await?;
    let details = source.details().await?;
    let entries = source.count().await?;
    let mut shapes = Shapes {
        limit: sample,
        keys: Shape::default(),
        values: Shape::default(),
    };
    let bar = out.progress(
        Some(entries.min(if sample == 0 { u64::MAX } else { sample })),
        "sampling",
    );
    source.scan(Order::Key, &mut shapes).await?;
    bar.finish_and_clear();
    let info = Info {
        store: name.to_string(),
        backend: name.backend(),
        entries,
        details,
        keys: shapes.keys,
        values: shapes.values,
    };
    out.result(&info, || text(&info)).map_err(stdout_error)
}

fn text(info: &Info) -> String {
    let d = &info.details;
    let mut lines = vec![
        format!("store:          {}", info.store),
        format!("backend:        {}", info.backend),
        format!(
            "format version: {}",
            d.format_version.as_deref().unwrap_or(if d.exists {
                "not recorded"
            } else {
                "- (no map here yet)"
            })
        ),
        format!("entries:        {}", info.entries),
    ];
    if let Some(deadlines) = &d.deadlines {
        lines.push(format!(
            "deadlines:      {} entries ({} past their deadline, not swept yet)",
            deadlines.with_deadline, deadlines.expired
        ));
    }
    lines.extend([format!(
        "size:           {} ({})",
        d.size_bytes.map_or_else(|| String::from("-"), bytes),
        d.size_note
    )]);
    if let Some(csv) = &d.csv {
        lines.push(format!(
            "records:        {} ({} live, {} dead: {:.0}% live)",
            csv.records,
            csv.live,
            csv.dead,
            csv.live_ratio * 100.0
        ));
        lines.push(format!(
            "last rewrite:   {} (file created, migrated or compacted)",
            csv.last_rewrite.as_deref().unwrap_or("unknown")
        ));
        if let Some(line) = csv.torn_tail_line {
            lines.push(format!(
                "torn tail:      from line {line} (left out; cut at the next open)"
            ));
        }
    }
    let sampled = |shape: &Shape| {
        if shape.sampled < info.entries {
            format!(" (first {} entries by key)", shape.sampled)
        } else {
            String::new()
        }
    };
    lines.push(format!(
        "keys:           {}{}",
        info.keys.describe(),
        sampled(&info.keys)
    ));
    lines.push(format!(
        "values:         {}{}",
        info.values.describe(),
        sampled(&info.values)
    ));
    lines.join("\n")
}
