//! One file per command; `run` dispatches.

mod copy;
mod dump;
mod export;
mod info;
mod keys;
mod load;
mod verify;
mod watch;

use crate::cli::Command;
use crate::error::Result;
use crate::output::Output;

pub async fn run(command: Command, out: Output) -> Result<()> {
    match command {
        Command::Info { store, sample } => info::run(out, &store, sample).await,
        Command::Dump { store, out: file } => dump::run(out, &store, file.as_deref()).await,
        Command::Export { store, csv } => export::run(out, &store, &csv).await,
        Command::Load {
            store,
            file,
            replace,
            batch,
        } => load::run(out, &store, &file, replace, batch.batch_size).await,
        Command::Get { store, key } => keys::get(out, &store, &key).await,
        Command::Set { store, key, value } => keys::set(out, &store, &key, &value).await,
        Command::Rm { store, key } => keys::rm(out, &store, &key).await,
        Command::Verify { store } => verify::run(out, &store).await,
        Command::Compact { store } => verify::compact(out, &store).await,
        Command::Copy {
            from,
            to,
            replace,
            batch,
        } => copy::run(out, &from, &to, replace, batch.batch_size).await,
        Command::Watch { store, count } => watch::run(out, &store, count).await,
    }
}

/// Writing a result to stdout failed.
fn stdout_error(e: std::io::Error) -> crate::error::CliError {
    crate::error::CliError::file("write to", "stdout", e)
}
