//! The one error type of persistent-map, with the context a user needs to act on it.

use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;

/// A boxed error from a driver or a third-party backend.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Shorthand `Result` with the error defaulting to [`PersistentError`].
pub type Result<T, E = PersistentError> = std::result::Result<T, E>;

/// Where in a store something happened: the store (a file path, a table, a hash),
/// and where known the line and the key.
///
/// It prints as `data.csv, line 12` or `table "kv", key "alice"`.
///
/// ```
/// use persistent_map_core::Location;
///
/// let at = Location::new("data.csv").with_line(12).with_key("\"alice\"");
/// assert_eq!(at.to_string(), "data.csv, line 12, key \"alice\"");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Location {
    /// The store: a file path, a table, a hash, as the backend names it.
    pub store: String,
    /// The 1-based line in a file, where the backend reads lines.
    pub line: Option<u64>,
    /// The key concerned, rendered as JSON (keys need not implement `Display`).
    pub key: Option<String>,
}

impl Location {
    /// A location naming only the store.
    #[must_use]
    pub fn new(store: impl Into<String>) -> Self {
        Self {
            store: store.into(),
            line: None,
            key: None,
        }
    }

    /// Adds the 1-based line number.
    #[must_use]
    pub fn with_line(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }

    /// Adds the key, already rendered (see [`render_key`]).
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.store)?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ", key {key}")?;
        }
        Ok(())
    }
}

/// Renders a key for an error message as JSON, cut to a readable length.
///
/// Keys only need `Serialize`, not `Display`, so errors show them the way
/// they are stored.
pub fn render_key<K: serde::Serialize + ?Sized>(key: &K) -> String {
    const MAX: usize = 120;
    let mut text = serde_json::to_string(key).unwrap_or_else(|_| String::from("<unprintable key>"));
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// What a map or a backend was doing when an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// Opening the store or loading it into the cache.
    Open,
    /// Loading entries.
    Load,
    /// Writing one or more changes.
    Write,
    /// Making earlier writes durable.
    Flush,
    /// Removing every entry.
    Clear,
    /// Rewriting the store to drop dead records.
    Compact,
    /// Closing the store.
    Close,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Open => "open",
            Operation::Load => "load",
            Operation::Write => "write",
            Operation::Flush => "flush",
            Operation::Clear => "clear",
            Operation::Compact => "compact",
            Operation::Close => "close",
        })
    }
}

/// Errors of persistent-map and of every backend.
///
/// Each variant carries what a user needs to find the problem: the backend,
/// the file or table, and where known the line and the key. The underlying
/// cause is available through [`std::error::Error::source`].
///
/// `?` converts [`std::io::Error`] and [`serde_json::Error`] into this type,
/// as in 0.1.x, so backends written for 0.1.x compile unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistentError {
    /// The backend's driver or storage engine failed.
    #[error("{backend} backend failed to {operation} {location}")]
    Backend {
        /// The backend's name, e.g. `sqlite`.
        backend: &'static str,
        /// What was being done.
        operation: Operation,
        /// The store (and key) concerned.
        location: Location,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// A file operation failed.
    #[error("i/o error on {}", path_or_unknown(.path))]
    Io {
        /// The file or directory, where known.
        path: Option<PathBuf>,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The medium is full: nothing of the failed change was kept.
    #[error("storage full: could not write to {}", .path.display())]
    StorageFull {
        /// The file that could not grow.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A key or value could not be encoded, or a stored one could not be decoded
    /// (for example because the value type changed since it was written).
    #[error("cannot {} {what} at {location}", if *.decoding { "decode" } else { "encode" })]
    Codec {
        /// `true` when reading stored data, `false` when encoding a new change.
        decoding: bool,
        /// `"key"` or `"value"`.
        what: &'static str,
        /// Where: file and line, or table and key.
        location: Location,
        /// The serde error.
        #[source]
        source: BoxError,
    },

    /// The stored data is damaged or not in a format this version can read.
    /// Nothing was changed on disk.
    #[error("corrupt store at {location}: {reason}")]
    Corrupt {
        /// Where the damage was found.
        location: Location,
        /// What is wrong, in a few words.
        reason: String,
    },

    /// The store was written by a newer release in a format this one does not know.
    #[error(
        "store at {location} has format version {found}; this release reads up to {supported}"
    )]
    UnsupportedFormat {
        /// The store.
        location: Location,
        /// The version found in the store.
        found: u32,
        /// The newest version this release reads.
        supported: u32,
    },

    /// Another process (or another map in this one) holds the store.
    #[error("{} is locked by another writer", .path.display())]
    Locked {
        /// The locked file.
        path: PathBuf,
    },

    /// A server could not be reached.
    #[error("{backend} backend cannot connect to {endpoint}")]
    Connection {
        /// The backend's name.
        backend: &'static str,
        /// The host and port (credentials removed).
        endpoint: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// The backend cannot do what was asked (for example an atomic batch).
    #[error("{backend} backend does not support {feature}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// The missing capability.
        feature: &'static str,
    },

    /// The map was closed.
    #[error("the map is closed")]
    Closed,

    /// The map's writer task stopped for a reason other than `close` (its
    /// tokio runtime shut down, or it panicked): every later write fails
    /// with this error, which says why. Reads keep working.
    #[error("the map's writer stopped: {reason}")]
    WriterStopped {
        /// What stopped it.
        reason: String,
    },

    /// One failure reported to several callers, e.g. every change of a failed
    /// batch or every caller waiting on one failed flush.
    #[error(transparent)]
    Shared(std::sync::Arc<PersistentError>),

    /// A third-party backend's own error.
    #[error(transparent)]
    Other(BoxError),
}

fn path_or_unknown(path: &Option<PathBuf>) -> String {
    path.as_ref().map_or_else(
        || String::from("an unknown path"),
        |p| p.display().to_string(),
    )
}

impl PersistentError {
    /// An I/O error on a known path; `ENOSPC` and `EDQUOT` become [`PersistentError::StorageFull`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if is_storage_full(&source) {
            PersistentError::StorageFull { path, source }
        } else {
            PersistentError::Io {
                path: Some(path),
                source,
            }
        }
    }

    /// A driver error of a named backend.
    pub fn backend(
        backend: &'static str,
        operation: Operation,
        location: Location,
        source: impl Into<BoxError>,
    ) -> Self {
        PersistentError::Backend {
            backend,
            operation,
            location,
            source: source.into(),
        }
    }

    /// A stored key or value that no longer decodes.
    pub fn decode(what: &'static str, location: Location, source: impl Into<BoxError>) -> Self {
        PersistentError::Codec {
            decoding: true,
            what,
            location,
            source: source.into(),
        }
    }

    /// A key or value that cannot be encoded.
    pub fn encode(what: &'static str, location: Location, source: impl Into<BoxError>) -> Self {
        PersistentError::Codec {
            decoding: false,
            what,
            location,
            source: source.into(),
        }
    }

    /// Damaged stored data.
    pub fn corrupt(location: Location, reason: impl Into<String>) -> Self {
        PersistentError::Corrupt {
            location,
            reason: reason.into(),
        }
    }

    /// `true` for errors that mean the medium ran out of space.
    #[must_use]
    pub fn is_storage_full(&self) -> bool {
        matches!(self, PersistentError::StorageFull { .. })
    }
}

fn is_storage_full(err: &std::io::Error) -> bool {
    // ENOSPC = 28, EDQUOT = 122 on Linux; StorageFull is the portable kind.
    err.kind() == std::io::ErrorKind::StorageFull || matches!(err.raw_os_error(), Some(28 | 122))
}

impl From<std::io::Error> for PersistentError {
    fn from(source: std::io::Error) -> Self {
        PersistentError::Io { path: None, source }
    }
}

impl From<serde_json::Error> for PersistentError {
    fn from(source: serde_json::Error) -> Self {
        PersistentError::Codec {
            decoding: matches!(
                source.classify(),
                serde_json::error::Category::Syntax
                    | serde_json::error::Category::Data
                    | serde_json::error::Category::Eof
            ),
            what: "value",
            location: Location::new("json"),
            source: Box::new(source),
        }
    }
}
