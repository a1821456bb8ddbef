//! `get`, `set` and `rm`: one key at a time.

use persistent_map_core::BatchOp;
use serde_json::{json, Value};

use super::stdout_error;
use crate::entry::{key_from_arg, key_text, show_key};
use crate::error::{CliError, Result};
use crate::output::Output;
use crate::store::{Source, StoreName, Target};

pub async fn get(out: Output, store: &str, key: &str) -> Result<()> {
    let name = StoreName::parse(store)?;
    let source = Source::open(&name).await?;
    let text = key_text(source.key_format().await?, &key_from_arg(key));
    let (value, expires_at) = source
        .lookup(&text)
        .await?
        .ok_or_else(|| CliError::NotFound {
            store: name.to_string(),
            key: show_key(&text),
        })?;
    // Shown as stored: an entry past its deadline that no sweep removed yet
    // is still there.
    let mut shown = json!({ "key": text, "value": value });
    if let Some(ms) = expires_at {
        shown["expires_at"] = json!(ms);
    }
    out.result(&shown, || value.to_string())
        .map_err(stdout_error)
}

pub async fn set(out: Output, store: &str, key: &str, value: &str) -> Result<()> {
    let name = StoreName::parse(store)?;
    let key = key_from_arg(key);
    let value: Value = serde_json::from_str(value).map_err(|e| {
        CliError::Usage(format!(
            "VALUE is not JSON ({e}); to store a text, quote it: '\"{value}\"'"
        ))
    })?;
    let target = Target::open(&name).await?;
    target
        .apply(&[BatchOp::Put {
            key: key.clone(),
            value,
        }])
        .await?;
    target.flush().await?;
    let text = target.text_of(&key).await?;
    target.close().await;
    out.result(&json!({ "key": text, "set": true }), || {
        format!("set {} in {name}", show_key(&text))
    })
    .map_err(stdout_error)
}

pub async fn rm(out: Output, store: &str, key: &str) -> Result<()> {
    let name = StoreName::parse(store)?;
    let key = key_from_arg(key);
    let target = Target::open(&name).await?;
    let present = target.contains(&key).await?;
    if present {
        target
            .apply(&[BatchOp::Delete { key: key.clone() }])
            .await?;
        target.flush().await?;
    }
    let text = target.text_of(&key).await?;
    target.close().await;
    out.result(&json!({ "key": text, "removed": present }), || {
        if present {
            format!("removed {} from {name}", show_key(&text))
        } else {
            format!("{} was not in {name}", show_key(&text))
        }
    })
    .map_err(stdout_error)
}
