//! `persistent-map`: the command-line tool of persistent-map. Inspect, dump,
//! load, verify, compact, copy and watch stores of every bundled backend,
//! with keys and values as JSON. See the crate's README.md.

mod cli;
mod commands;
mod entry;
mod error;
mod output;
mod store;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use crate::cli::Cli;
use crate::error::CliError;
use crate::output::Output;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output {
        json: cli.json,
        quiet: cli.quiet,
    };
    // Backends log what they repair or doubt (a torn CSV tail, an unsafe
    // pragma); drivers' own notes (sqlx's slow statements) are left out.
    let only_ours = tracing_subscriber::filter::Targets::new().with_target(
        "persistent_map",
        tracing_subscriber::filter::LevelFilter::WARN,
    );
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_filter(only_ours),
        )
        .try_init();
    let result = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(commands::run(cli.command, out)),
        Err(e) => Err(CliError::file("start", "the tokio runtime", e)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is_broken_pipe() => ExitCode::SUCCESS,
        Err(err) => {
            report(&err, out);
            ExitCode::from(err.exit_code())
        }
    }
}

/// Prints an error and its causes on stderr: as text, or with `--json` as
/// `{"error": …, "causes": […], "exit_code": …}`.
fn report(err: &CliError, out: Output) {
    let secrets = store::passwords(std::env::args().skip(1));
    let hide = |text: String| {
        secrets
            .iter()
            .fold(text, |text, secret| text.replace(secret.as_str(), "***"))
    };
    let message = hide(err.to_string());
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        causes.push(hide(cause.to_string()));
        source = cause.source();
    }
    let mut stderr = std::io::stderr().lock();
    if out.json {
        let _ = serde_json::to_writer(
            &mut stderr,
            &serde_json::json!({
                "error": message,
                "causes": causes,
                "exit_code": err.exit_code(),
            }),
        );
        let _ = writeln!(stderr);
    } else {
        let _ = writeln!(stderr, "error: {message}");
        for cause in causes {
            let _ = writeln!(stderr, "  caused by: {cause}");
        }
        if matches!(err, CliError::Usage(_)) {
            let _ = writeln!(
                stderr,
                "\nSee persistent-map --help for store URLs and examples."
            );
        }
    }
}
