#![doc = include_str!("../README.md")]

mod backend;
mod changes;
mod compaction;
mod config;
mod error;
mod files;
mod format;
mod lock;
mod read;
mod records;
mod thread;

pub use backend::CsvBackend;
pub use config::{Compaction, CsvBackendBuilder, Delimiter, SyncPolicy, DEFAULT_LOCK_TIMEOUT};
pub use records::{read_header, read_record, BadRecord, FileLayout, Record};

/// Test support (feature `fault-injection`), not part of the stable API.
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub mod fault {
    pub use crate::files::FileIo;
}
