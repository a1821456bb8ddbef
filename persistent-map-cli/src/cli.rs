//! The command line: every command, argument and example of `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const STORES: &str = "\
Stores are named by URL:
  sqlite:PATH[?table=T]                      a table of a SQLite file (default table kv)
  csv:PATH                                   a CSV log
  postgres://USER[:PASS]@HOST[:PORT]/DB[?table=T&schema=S]
                                             a PostgreSQL table (default public.kv)
  redis://[:PASS@]HOST[:PORT]/DB[?prefix=P&name=N]
                                             a Redis hash P:N (default persistent-map:kv)
A password in a URL is never printed.

Keys and values are JSON; keys may also be given as plain text. A key is
stored as text (a string as itself, anything else as its JSON), so `dump`
shows every key as a JSON string.

Exit codes: 0 success, 1 error, 2 usage error.";

const EXAMPLES: &str = "\
Examples:
  persistent-map info sqlite:app.db
  persistent-map dump sqlite:app.db --out app.jsonl
  persistent-map load 'postgres://app@db.internal/app?table=kv' app.jsonl
  persistent-map copy sqlite:app.db 'postgres://app@db.internal/app' --replace
  persistent-map get csv:users.csv alice
  persistent-map set redis://127.0.0.1/0 alice '{\"age\": 30}'
  persistent-map verify csv:users.csv && persistent-map compact csv:users.csv
  persistent-map --json info sqlite:app.db | jq .entries";

/// Inspect, dump, load, verify, compact, copy and watch persistent-map stores.
#[derive(Debug, Parser)]
#[command(name = "persistent-map", version, about, before_long_help = None, after_help = EXAMPLES, after_long_help = format!("{STORES}\n\n{EXAMPLES}"))]
pub struct Cli {
    /// Print results as JSON, for scripts (no progress bars).
    #[arg(long, global = true)]
    pub json: bool,

    /// No progress bars and no notes on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The backend, format version, entry count, size, and the JSON shape of
    /// keys and values; for CSV also the live/dead record ratio and the last
    /// compaction.
    #[command(
        after_help = "Examples:\n  persistent-map info sqlite:app.db\n  persistent-map --json info csv:users.csv"
    )]
    Info {
        /// The store URL.
        store: String,
        /// Entries whose JSON shape is summarised, in key order (0: all).
        #[arg(long, default_value_t = 10_000)]
        sample: u64,
    },

    /// Every entry as JSON Lines, `{"key": …, "value": …}`, sorted by key.
    ///
    /// Streams in constant memory from SQLite and PostgreSQL. A CSV log is
    /// replayed whole in memory first (later records override earlier ones),
    /// and Redis keys are gathered and sorted in memory before the values
    /// are read in chunks.
    #[command(
        after_help = "Examples:\n  persistent-map dump sqlite:app.db > app.jsonl\n  persistent-map dump 'postgres://app@db/app?table=users' --out users.jsonl"
    )]
    Dump {
        /// The store URL.
        store: String,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },

    /// A plain `key,value` CSV table for spreadsheets, one row per live
    /// entry, sorted by key.
    ///
    /// String values are written as their text, other values as JSON. A
    /// cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is
    /// prefixed with `'`, so that opening the file never runs a formula.
    #[command(after_help = "Example:\n  persistent-map export sqlite:app.db --csv app.csv")]
    Export {
        /// The store URL.
        store: String,
        /// The CSV file to write.
        #[arg(long, value_name = "FILE")]
        csv: PathBuf,
    },

    /// Loads JSON Lines written by `dump` into a store, in batches, each
    /// batch atomic.
    ///
    /// The input is checked whole before anything is written (stdin is kept
    /// in a temporary file first), so a bad line leaves the store as it was,
    /// even with --replace. If a batch fails, the batches before it stay
    /// written.
    #[command(
        after_help = "Examples:\n  persistent-map load sqlite:copy.db app.jsonl\n  persistent-map dump csv:a.csv | persistent-map load sqlite:b.db - --replace"
    )]
    Load {
        /// The store URL (created if missing).
        store: String,
        /// The JSON Lines file, or `-` for stdin.
        file: PathBuf,
        /// Remove every entry of the store first.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        batch: BatchArgs,
    },

    /// Prints the value stored under KEY as JSON (exit code 1 if absent).
    #[command(
        after_help = "Examples:\n  persistent-map get sqlite:app.db alice\n  persistent-map get sqlite:app.db '{\"id\":7}'"
    )]
    Get {
        /// The store URL.
        store: String,
        /// The key, as JSON or plain text.
        #[arg(allow_hyphen_values = true)]
        key: String,
    },

    /// Stores VALUE under KEY.
    #[command(
        after_help = "Examples:\n  persistent-map set sqlite:app.db alice '{\"age\": 30}'\n  persistent-map set sqlite:app.db greeting '\"hello\"'"
    )]
    Set {
        /// The store URL (created if missing).
        store: String,
        /// The key, as JSON or plain text.
        #[arg(allow_hyphen_values = true)]
        key: String,
        /// The value, as JSON (a string needs its quotes: '"text"').
        #[arg(allow_hyphen_values = true)]
        value: String,
    },

    /// Removes KEY (not an error when it is absent).
    #[command(after_help = "Example:\n  persistent-map rm sqlite:app.db alice")]
    Rm {
        /// The store URL.
        store: String,
        /// The key, as JSON or plain text.
        #[arg(allow_hyphen_values = true)]
        key: String,
    },

    /// Decodes every record and checks the store's structure (SQLite:
    /// `PRAGMA integrity_check`; CSV: the header, every record, batches).
    /// Reports each bad record with its location and exits with 1 if any.
    /// Never changes the store.
    #[command(after_help = "Example:\n  persistent-map verify csv:users.csv || echo damaged")]
    Verify {
        /// The store URL.
        store: String,
    },

    /// Rewrites a CSV log with only its live entries.
    #[command(after_help = "Example:\n  persistent-map compact csv:users.csv")]
    Compact {
        /// The store URL (CSV only).
        store: String,
    },

    /// Copies every entry of FROM into TO, in batches, then verifies TO:
    /// its entry count and a checksum over the encoded entries.
    ///
    /// Refuses a TO that holds entries unless --replace is given.
    #[command(
        after_help = "Examples:\n  persistent-map copy sqlite:app.db 'postgres://app@db.internal/app'\n  persistent-map copy csv:old.csv sqlite:new.db --replace"
    )]
    Copy {
        /// The store to read.
        from: String,
        /// The store to write (created if missing).
        to: String,
        /// Remove every entry of TO first.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        batch: BatchArgs,
    },

    /// Prints the changes other instances make to a shared store
    /// (PostgreSQL or Redis) as they happen, until interrupted.
    ///
    /// Each change is printed with the key's current value, or as removed;
    /// a resync means changes may have been missed (after a reconnection).
    #[command(
        after_help = "Example:\n  persistent-map --json watch 'postgres://app@db.internal/app'"
    )]
    Watch {
        /// The store URL.
        store: String,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, Args)]
pub struct BatchArgs {
    /// Entries per batch (each batch one transaction).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch_size: u64,
}
