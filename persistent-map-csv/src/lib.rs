#![doc = include_str!("../README.md")]

mod backend;
mod changes;
mod compaction;
mod config;
mod deadline;
mod error;
mod files;
mod format;
mod lock;
mod read;
mod thread;

pub use backend::CsvBackend;
pub use config::{Compaction, CsvBackendBuilder, Delimiter, SyncPolicy, DEFAULT_LOCK_TIMEOUT};

/// Test support (feature `fault-injection`), not part of the stable API.
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub mod fault {
    pub use crate::files::FileIo;
}
