#![doc = include_str!("../README.md")]

mod backend;
mod batch;
mod builder;
pub mod codec;
mod error;
pub mod feed;
mod map;
mod pipeline;

pub use backend::{BatchOp, Capabilities, RemoteChange, RemoteChanges, StorageBackend};
pub use batch::{Batch, Transaction};
pub use builder::{PersistentMapBuilder, WriteBehind, DEFAULT_MAX_BATCH};
pub use error::{render_key, BoxError, Location, Operation, PersistentError, Result};
pub use map::PersistentMap;

/// Re-exported so backend authors use the same `async_trait` as the core.
pub use async_trait::async_trait;
