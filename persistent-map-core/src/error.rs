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
    #[error("cannot {direction} {part} at {location}")]
    Codec {
        /// Encoding a new change, or decoding stored data.
        direction: CodecDirection,
        /// The key or the value.
        part: EntryPart,
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

    /// The store did not answer in time: a database busy for longer than its
    /// busy timeout, a server that did not reply. Nothing was changed; a
    /// retry may succeed.
    #[error("{backend} backend timed out trying to {operation} {location}")]
    Timeout {
        /// The backend's name.
        backend: &'static str,
        /// What was being done.
        operation: Operation,
        /// The store (and key) concerned.
        location: Location,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// A write whose outcome cannot be known: the connection broke after the
    /// write was sent and before its result came back, so it may or may not
    /// have been applied. A map that gets this from its backend reads the
    /// keys back before it answers; callers of a map see it only when the
    /// store could not be reached to find out.
    #[error("{backend} backend lost the outcome of a {operation} to {location}")]
    OutcomeUnknown {
        /// The backend's name.
        backend: &'static str,
        /// What was being done.
        operation: Operation,
        /// The store (and key) concerned.
        location: Location,
        /// The driver's error.
        #[source]
        source: BoxError,
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
    pub fn decode(part: EntryPart, location: Location, source: impl Into<BoxError>) -> Self {
        PersistentError::Codec {
            direction: CodecDirection::Decode,
            part,
            location,
            source: source.into(),
        }
    }

    /// A key or value that cannot be encoded.
    pub fn encode(part: EntryPart, location: Location, source: impl Into<BoxError>) -> Self {
        PersistentError::Codec {
            direction: CodecDirection::Encode,
            part,
            location,
            source: source.into(),
        }
    }

    /// The refusal of a batch holding a kind of [`BatchOp`](crate::BatchOp)
    /// the backend does not know (one added by a later release).
    #[must_use]
    pub fn unknown_change(backend: &'static str) -> Self {
        PersistentError::Unsupported {
            backend,
            feature: "a kind of change this backend does not know",
        }
    }

    /// Damaged stored data.
    pub fn corrupt(location: Location, reason: impl Into<String>) -> Self {
        PersistentError::Corrupt {
            location,
            reason: reason.into(),
        }
    }

    /// `true` for errors that mean the medium ran out of space (also when
    /// this error only reports such a failure, as a poisoned write-behind
    /// map's does).
    #[must_use]
    pub fn is_storage_full(&self) -> bool {
        self.kind() == ErrorKind::StorageFull
    }

    /// What kind of failure this is, so a caller can decide without
    /// matching every variant. An error that reports another one (a failure
    /// shared by several callers, a poisoned write-behind map's) has the
    /// kind of its cause.
    ///
    /// ```
    /// use persistent_map_core::{ErrorKind, PersistentError};
    ///
    /// let full = PersistentError::io("data.csv", std::io::Error::from(std::io::ErrorKind::StorageFull));
    /// assert_eq!(full.kind(), ErrorKind::StorageFull);
    /// let shared = PersistentError::Shared(std::sync::Arc::new(full));
    /// assert_eq!(shared.kind(), ErrorKind::StorageFull);
    /// assert!(!shared.is_temporary());
    /// ```
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            PersistentError::Backend { .. } => ErrorKind::Backend,
            PersistentError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
                std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::NotConnected => ErrorKind::Connection,
                _ => ErrorKind::Io,
            },
            PersistentError::StorageFull { .. } => ErrorKind::StorageFull,
            PersistentError::Codec { .. } => ErrorKind::Codec,
            PersistentError::Corrupt { .. } => ErrorKind::Corrupt,
            PersistentError::UnsupportedFormat { .. } => ErrorKind::UnsupportedFormat,
            PersistentError::Locked { .. } => ErrorKind::Locked,
            PersistentError::Timeout { .. } => ErrorKind::Timeout,
            PersistentError::OutcomeUnknown { .. } => ErrorKind::OutcomeUnknown,
            PersistentError::Connection { .. } => ErrorKind::Connection,
            PersistentError::Unsupported { .. } => ErrorKind::Unsupported,
            PersistentError::Closed | PersistentError::WriterStopped { .. } => ErrorKind::Closed,
            PersistentError::Shared(cause) => cause.kind(),
            PersistentError::Other(_) => ErrorKind::Other,
        }
    }

    /// Whether trying again later may succeed without anyone fixing
    /// anything: a lock another writer will release, a busy database, a
    /// server that is restarting.
    #[must_use]
    pub fn is_temporary(&self) -> bool {
        self.kind().is_temporary()
    }
}

/// Which way a [`PersistentError::Codec`] conversion went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CodecDirection {
    /// Encoding a new change for the store.
    Encode,
    /// Decoding what the store holds.
    Decode,
}

impl fmt::Display for CodecDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CodecDirection::Encode => "encode",
            CodecDirection::Decode => "decode",
        })
    }
}

/// The part of an entry a [`PersistentError::Codec`] concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EntryPart {
    /// The key.
    Key,
    /// The value.
    Value,
}

impl fmt::Display for EntryPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryPart::Key => "key",
            EntryPart::Value => "value",
        })
    }
}

/// What kind of failure a [`PersistentError`] is; see
/// [`PersistentError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The backend's driver or engine failed in a way none of the others
    /// describes.
    Backend,
    /// A file operation failed.
    Io,
    /// The medium is full.
    StorageFull,
    /// A key or value could not be encoded, or a stored one decoded.
    Codec,
    /// The stored data is damaged.
    Corrupt,
    /// The store was written in a newer format.
    UnsupportedFormat,
    /// Another writer holds the store.
    Locked,
    /// The store did not answer in time.
    Timeout,
    /// A server could not be reached.
    Connection,
    /// A write's outcome could not be found out.
    OutcomeUnknown,
    /// The backend cannot do what was asked.
    Unsupported,
    /// The map was closed or its writer stopped.
    Closed,
    /// A third-party backend's own error.
    Other,
}

impl ErrorKind {
    /// Whether a retry may succeed without anyone fixing anything.
    #[must_use]
    pub const fn is_temporary(self) -> bool {
        matches!(
            self,
            ErrorKind::Locked
                | ErrorKind::Timeout
                | ErrorKind::Connection
                | ErrorKind::OutcomeUnknown
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Backend => "backend failure",
            ErrorKind::Io => "i/o error",
            ErrorKind::StorageFull => "storage full",
            ErrorKind::Codec => "encoding or decoding error",
            ErrorKind::Corrupt => "corrupt store",
            ErrorKind::UnsupportedFormat => "unsupported format",
            ErrorKind::Locked => "locked",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection failure",
            ErrorKind::OutcomeUnknown => "outcome unknown",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Closed => "closed",
            ErrorKind::Other => "other",
        })
    }
}

fn is_storage_full(err: &std::io::Error) -> bool {
    if err.kind() == std::io::ErrorKind::StorageFull {
        return true;
    }
    // ENOSPC and EDQUOT, where the standard library reports them only by
    // number.
    #[cfg(target_os = "linux")]
    return matches!(err.raw_os_error(), Some(28 | 122));
    #[cfg(all(unix, not(target_os = "linux")))]
    return matches!(err.raw_os_error(), Some(28 | 69));
    #[cfg(not(unix))]
    return false;
}

impl From<std::io::Error> for PersistentError {
    fn from(source: std::io::Error) -> Self {
        PersistentError::Io { path: None, source }
    }
}

impl From<serde_json::Error> for PersistentError {
    fn from(source: serde_json::Error) -> Self {
        let decoding = matches!(
            source.classify(),
            serde_json::error::Category::Syntax
                | serde_json::error::Category::Data
                | serde_json::error::Category::Eof
        );
        PersistentError::Codec {
            direction: if decoding {
                CodecDirection::Decode
            } else {
                CodecDirection::Encode
            },
            part: EntryPart::Value,
            location: Location::new("json"),
            source: Box::new(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_tell_what_to_do() {
        let locked = PersistentError::Locked {
            path: PathBuf::from("a.csv"),
        };
        assert_eq!(locked.kind(), ErrorKind::Locked);
        assert!(locked.is_temporary());
        let corrupt = PersistentError::corrupt(Location::new("a.csv"), "bad");
        assert_eq!(corrupt.kind(), ErrorKind::Corrupt);
        assert!(!corrupt.is_temporary());
        let refused = PersistentError::Io {
            path: None,
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(refused.kind(), ErrorKind::Connection);
        assert_eq!(PersistentError::Closed.kind(), ErrorKind::Closed);
        let stopped = PersistentError::WriterStopped {
            reason: "gone".into(),
        };
        assert_eq!(stopped.kind(), ErrorKind::Closed);
    }

    #[test]
    fn a_shared_error_answers_for_its_cause() {
        let full = PersistentError::io(
            "a.csv",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        let shared = PersistentError::Shared(std::sync::Arc::new(PersistentError::Shared(
            std::sync::Arc::new(full),
        )));
        assert!(shared.is_storage_full());
        assert_eq!(shared.kind(), ErrorKind::StorageFull);
        assert_eq!(shared.kind().to_string(), "storage full");
    }
}
