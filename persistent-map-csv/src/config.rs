//! Options of a [`CsvBackend`] and the builder that sets them.

use persistent_map_core::codec::KeyFormat;
use std::path::PathBuf;
use std::time::Duration;

use crate::backend::CsvBackend;
use crate::files::{real_io, Io};

/// The byte that separates the columns of a record.
///
/// It is used when the backend creates a file. An existing file keeps the
/// delimiter written in its header line, whatever this option says, so a
/// changed option never makes an existing file unreadable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Delimiter {
    /// `,` (the default).
    #[default]
    Comma,
    /// `;`, common where `,` is the decimal separator.
    Semicolon,
    /// A tab character.
    Tab,
    /// `|`.
    Pipe,
}

impl Delimiter {
    /// The delimiter as the byte written to the file.
    #[must_use]
    pub const fn as_byte(self) -> u8 {
        match self {
            Delimiter::Comma => b',',
            Delimiter::Semicolon => b';',
            Delimiter::Tab => b'\t',
            Delimiter::Pipe => b'|',
        }
    }

    /// The delimiter written as `byte`, if it is one this crate writes.
    #[must_use]
    pub const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b',' => Some(Delimiter::Comma),
            b';' => Some(Delimiter::Semicolon),
            b'\t' => Some(Delimiter::Tab),
            b'|' => Some(Delimiter::Pipe),
            _ => None,
        }
    }
}

/// When the file is rewritten to drop records that no longer count
/// (replaced values and tombstones), see [`CsvBackend::compact`].
///
/// ```
/// use persistent_map_csv::Compaction;
///
/// // Compact once at least 10 000 rows are dead and they are at least
/// // three quarters of the file.
/// let policy = Compaction::when_dead(10_000, 75);
/// assert_ne!(policy, Compaction::Manual);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compaction {
    /// Only an explicit [`CsvBackend::compact`] rewrites the file.
    Manual,
    /// After a write, compact when both limits are reached. Requiring a
    /// share of the file (not only a count) keeps the cost of compaction
    /// proportional to the writes that made it necessary.
    DeadRows {
        /// The least number of dead rows.
        min_dead_rows: u64,
        /// The least share of dead rows among all rows, in percent (values
        /// above 100 act as 100).
        min_dead_percent: u8,
    },
}

impl Compaction {
    /// Compact after a write once at least `min_dead_rows` rows are dead and
    /// they make up at least `min_dead_percent` percent of all rows.
    #[must_use]
    pub const fn when_dead(min_dead_rows: u64, min_dead_percent: u8) -> Self {
        Compaction::DeadRows {
            min_dead_rows,
            min_dead_percent,
        }
    }

    /// Whether a file of `rows` data rows of which `live` are live should be compacted.
    pub(crate) fn is_due(self, rows: u64, live: u64) -> bool {
        match self {
            Compaction::Manual => false,
            Compaction::DeadRows {
                min_dead_rows,
                min_dead_percent,
            } => {
                let dead = rows.saturating_sub(live);
                let percent = u128::from(min_dead_percent.min(100));
                dead > 0
                    && dead >= min_dead_rows
                    && u128::from(dead) * 100 >= percent * u128::from(rows)
            }
        }
    }
}

impl Default for Compaction {
    /// At least 1000 dead rows that are at least half of the file.
    fn default() -> Self {
        Compaction::when_dead(1000, 50)
    }
}

/// When written records are forced to the disk with fsync.
///
/// Either way an acknowledged write has reached the operating system, so it
/// survives the process being killed; this option is about power loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SyncPolicy {
    /// Only [`flush`](persistent_map_core::PersistentMap::flush) syncs (the
    /// default): writes are fast, and a power cut may lose what was written
    /// since the last flush.
    #[default]
    OnFlush,
    /// Every write is synced before it is acknowledged: nothing acknowledged
    /// is lost to a power cut, at the price of one fsync per batch.
    EveryWrite,
}

/// How long opening a store waits for another holder to release its lock,
/// by default.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// The options of one backend, as set by [`CsvBackendBuilder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Options {
    pub(crate) delimiter: Delimiter,
    pub(crate) compaction: Compaction,
    pub(crate) sync: SyncPolicy,
    pub(crate) lock_timeout: Duration,
    pub(crate) new_store_key_format: KeyFormat,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            delimiter: Delimiter::default(),
            compaction: Compaction::default(),
            sync: SyncPolicy::default(),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            new_store_key_format: KeyFormat::NEW_STORES,
        }
    }
}

/// Sets the options of a [`CsvBackend`]; start it with [`CsvBackend::builder`].
///
/// ```
/// use persistent_map_csv::{Compaction, CsvBackend, Delimiter, SyncPolicy};
///
/// let backend = CsvBackend::builder("data/users.csv")
///     .delimiter(Delimiter::Semicolon)
///     .compaction(Compaction::when_dead(500, 50))
///     .sync(SyncPolicy::EveryWrite)
///     .lock_timeout(std::time::Duration::from_secs(1))
///     .build();
/// assert_eq!(backend.path(), std::path::Path::new("data/users.csv"));
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct CsvBackendBuilder {
    path: PathBuf,
    options: Options,
    io: Io,
}

impl CsvBackendBuilder {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            options: Options::default(),
            io: real_io(),
        }
    }

    /// The key format a file this backend creates gets (default
    /// [`KeyFormat::NEW_STORES`]); an existing store keeps its own. Creating
    /// a store in [`KeyFormat::Legacy`] is for tools that copy the stored
    /// texts of a legacy store, which cannot be translated without the
    /// application's key type.
    pub fn new_store_key_format(mut self, format: KeyFormat) -> Self {
        self.options.new_store_key_format = format;
        self
    }

    /// The column delimiter of a newly created file (default [`Delimiter::Comma`]).
    pub fn delimiter(mut self, delimiter: Delimiter) -> Self {
        self.options.delimiter = delimiter;
        self
    }

    /// When dead rows are compacted away (default [`Compaction::default`]).
    pub fn compaction(mut self, compaction: Compaction) -> Self {
        self.options.compaction = compaction;
        self
    }

    /// When writes are synced to the disk (default [`SyncPolicy::OnFlush`]).
    pub fn sync(mut self, sync: SyncPolicy) -> Self {
        self.options.sync = sync;
        self
    }

    /// How long opening the store waits for another holder of its lock to
    /// release it before failing with
    /// [`PersistentError::Locked`](persistent_map_core::PersistentError::Locked)
    /// (default [`DEFAULT_LOCK_TIMEOUT`]). The wait covers a map that was
    /// just dropped and is still letting go of the file; a second writer
    /// that keeps the store open is still refused. `Duration::ZERO` fails at
    /// once.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.options.lock_timeout = timeout;
        self
    }

    /// Makes the backend. Like [`CsvBackend::new`] it touches nothing on
    /// disk: the file is opened, locked and created on first use.
    #[must_use]
    pub fn build(self) -> CsvBackend {
        CsvBackend::with_options(self.path, self.options, self.io)
    }

    /// Test support (feature `fault-injection`), not part of the stable API:
    /// routes every file operation that changes the disk through `io`.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn file_io(mut self, io: std::sync::Arc<dyn crate::files::FileIo>) -> Self {
        self.io = io;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_needs_both_count_and_share() {
        let policy = Compaction::when_dead(10, 50);
        assert!(!policy.is_due(15, 10), "5 dead rows are below the count");
        assert!(!policy.is_due(100, 80), "20 dead rows are below half");
        assert!(policy.is_due(100, 50));
        assert!(!Compaction::Manual.is_due(100, 0));
        assert!(!Compaction::when_dead(0, 0).is_due(5, 5), "nothing dead");
    }

    #[test]
    fn delimiter_bytes_round_trip() {
        for d in [
            Delimiter::Comma,
            Delimiter::Semicolon,
            Delimiter::Tab,
            Delimiter::Pipe,
        ] {
            assert_eq!(Delimiter::from_byte(d.as_byte()), Some(d));
        }
    }
}
