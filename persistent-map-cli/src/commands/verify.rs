//! `verify STORE` (read-only) and `compact STORE` (CSV).

use serde::Serialize;

use super::stdout_error;
use crate::error::{CliError, Result};
use crate::output::{bytes, Output};
use crate::store::{Report, Source, StoreName, Target};

#[derive(Serialize)]
struct Verified {
    store: String,
    ok: bool,
    #[serde(flatten)]
    report: Report,
}

pub async fn run(out: Output, store: &str) -> Result<()> {
    let name = StoreName::parse(store)?;
    let source = Source::open(&name).await?;
    let bar = out.progress(None, "verifying");
    let report = source.verify().await?;
    bar.finish_and_clear();
    let problems = report.problems.len();
    let verified = Verified {
        store: name.to_string(),
        ok: problems == 0,
        report,
    };
    out.result(&verified, || text(&verified))
        .map_err(stdout_error)?;
    if problems > 0 {
        return Err(CliError::Verify {
            store: name.to_string(),
            problems,
        });
    }
    Ok(())
}

fn text(v: &Verified) -> String {
    let mut lines = Vec::new();
    for problem in &v.report.problems {
        lines.push(format!("bad: {}: {}", problem.location, problem.reason));
    }
    for note in &v.report.notes {
        lines.push(format!("note: {note}"));
    }
    if v.ok {
        lines.push(format!(
            "ok: {} ({} records checked)",
            v.store, v.report.checked
        ));
    }
    lines.join("\n")
}

#[derive(Serialize)]
struct Compacted {
    store: String,
    bytes_before: u64,
    bytes_after: u64,
}

pub async fn compact(out: Output, store: &str) -> Result<()> {
    let name = StoreName::parse(store)?;
    let StoreName::Csv { path } = &name else {
        return Err(CliError::Unsupported {
            command: "compact",
            store: name.to_string(),
            why: "only CSV logs need compacting (SQLite and PostgreSQL: VACUUM; Redis: nothing to do)",
        });
    };
    if !path.exists() {
        return Err(CliError::Missing {
            store: name.to_string(),
            path: path.clone(),
        });
    }
    let size = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let before = size();
    let bar = out.progress(None, "compacting");
    let target = Target::open(&name).await?;
    target.compact().await?;
    drop(target);
    bar.finish_and_clear();
    let after = size();
    let summary = Compacted {
        store: name.to_string(),
        bytes_before: before,
        bytes_after: after,
    };
    out.result(&summary, || {
        format!("compacted {name}: {} -> {}", bytes(before), bytes(after))
    })
    .map_err(stdout_error)
}
