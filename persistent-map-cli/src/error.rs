//! The one error type of the command, with the context a user needs: the
//! store, the key, the file and line. Exit code 2 for usage errors, 1 for
//! everything else.

use std::path::PathBuf;

use persistent_map_core::{BoxError, PersistentError};

/// Everything that can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is wrong: a bad store URL, argument or combination.
    #[error("{0}")]
    Usage(String),

    /// A backend failed (through the persistent-map backend crates).
    #[error("cannot {action} {store}")]
    Backend {
        /// What was being done, e.g. `open` or `write to`.
        action: &'static str,
        /// The store, password redacted.
        store: String,
        /// Boxed: the error is large, and every result carries its size.
        #[source]
        source: Box<PersistentError>,
    },

    /// Reading a store directly (SQL, Redis commands, the CSV file) failed.
    #[error("cannot {action} {store}")]
    Read {
        action: &'static str,
        store: String,
        #[source]
        source: BoxError,
    },

    /// A store's file does not exist (read commands never create one).
    #[error("no store at {store}: {} does not exist", .path.display())]
    Missing { store: String, path: PathBuf },

    /// A record of a store is damaged: it does not decode.
    #[error("bad record in {store} at {location}: {reason}")]
    BadRecord {
        store: String,
        location: String,
        reason: String,
    },

    /// A file of the command itself (dump output, load input) failed.
    #[error("cannot {action} {}", .path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A line of a load input is not an entry.
    #[error("{}, line {line}: {reason}", .path.display())]
    Input {
        path: PathBuf,
        line: u64,
        reason: String,
    },

    /// A key that `get` did not find.
    #[error("key {key} not found in {store}")]
    NotFound { store: String, key: String },

    /// `copy` into a store that holds entries, without `--replace`.
    #[error("target {store} is not empty ({entries} entries); use --replace to clear it first")]
    NotEmpty { store: String, entries: usize },

    /// The command does not apply to this kind of store.
    #[error("{command} does not apply to {store}: {why}")]
    Unsupported {
        command: &'static str,
        store: String,
        why: &'static str,
    },

    /// `verify` found problems (already reported one by one).
    #[error("{store} failed verification: {problems} problem(s) found")]
    Verify { store: String, problems: usize },

    /// `copy` read back something else than it wrote.
    #[error("copy to {store} did not verify: {reason}")]
    CopyMismatch { store: String, reason: String },
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }

    /// A backend error while doing `action` on `store`.
    pub fn backend(action: &'static str, store: impl ToString, source: PersistentError) -> Self {
        CliError::Backend {
            action,
            store: store.to_string(),
            source: Box::new(source),
        }
    }

    /// A direct read of `store` that failed.
    pub fn read(action: &'static str, store: impl ToString, source: impl Into<BoxError>) -> Self {
        CliError::Read {
            action,
            store: store.to_string(),
            source: source.into(),
        }
    }

    /// A file of the command's own that failed.
    pub fn file(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CliError::File {
            action,
            path: path.into(),
            source,
        }
    }

    /// Whether this is a write to a closed pipe (`dump | head`), which ends
    /// the command quietly.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::File { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// The result type of the command.
pub type Result<T, E = CliError> = std::result::Result<T, E>;
