#![doc = include_str!("../README.md")]

mod backend;
mod compaction;
mod config;
mod error;
mod files;
mod format;
mod lock;
mod read;

pub use backend::CsvBackend;
pub use config::{Compaction, CsvBackendBuilder, Delimiter, SyncPolicy};
