//! `watch STORE`: the changes other instances make to a shared store.

use std::io::Write;

use futures::StreamExt;
use persistent_map_core::RemoteChange;
use serde_json::{json, Value};

use super::stdout_error;
use crate::entry::{key_text, show_key};
use crate::error::{CliError, Result};
use crate::output::Output;
use crate::store::{Source, StoreName, Target};

pub async fn run(out: Output, store: &str, count: Option<u64>) -> Result<()> {
    let name = StoreName::parse(store)?;
    if !matches!(name, StoreName::Postgres { .. } | StoreName::Redis { .. }) {
        return Err(CliError::Unsupported {
            command: "watch",
            store: name.to_string(),
            why: "only shared stores (PostgreSQL, Redis) announce their changes",
        });
    }
    // Watching never creates a store: it must exist already.
    if !Source::open(&name).await?.details().await?.exists {
        return Err(CliError::Unsupported {
            command: "watch",
            store: name.to_string(),
            why: "there is no map there yet",
        });
    }
    let target = Target::open(&name).await?;
    let Some(mut changes) = target.watch().await? else {
        return Err(CliError::Unsupported {
            command: "watch",
            store: name.to_string(),
            why: "the backend has no change feed",
        });
    };
    let key_format = target.key_format().await?;
    out.note(&format!("watching {name} (Ctrl-C to stop)"));
    let mut seen = 0_u64;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    while count.is_none_or(|limit| seen < limit) {
        let change = tokio::select! {
            change = changes.next() => change,
            _ = &mut interrupted => break,
        };
        let Some(change) = change else { break };
        match change {
            RemoteChange::Changed(keys) => {
                for (key, value) in target.load_keys(&keys).await? {
                    print_change(out, key_text(key_format, &key), value.as_ref())?;
                    seen += 1;
                    if count.is_some_and(|limit| seen >= limit) {
                        break;
                    }
                }
            }
            RemoteChange::Resync => {
                out.result(&json!({ "resync": true }), || {
                    String::from("resync: changes may have been missed; read the store again")
                })
                .map_err(stdout_error)?;
            }
            _ => {}
        }
        std::io::stdout().flush().map_err(stdout_error)?;
    }
    Ok(())
}

/// Prints a change of the key stored as `text`.
fn print_change(out: Output, text: String, value: Option<&Value>) -> Result<()> {
    match value {
        Some(value) => out.result(&json!({ "key": text, "value": value }), || {
            format!("set {} = {value}", show_key(&text))
        }),
        None => out.result(&json!({ "key": text, "removed": true }), || {
            format!("removed {}", show_key(&text))
        }),
    }
    .map_err(stdout_error)
}
