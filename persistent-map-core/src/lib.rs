#![doc = include_str!("../README.md")]

mod backend;
mod batch;
mod behind;
mod builder;
mod cache;
mod closure;
pub mod codec;
mod detached;
mod error;
mod events;
mod health;
mod map;
mod outcome;
mod queue;
mod stats;
mod sweep;
#[cfg(feature = "metrics")]
mod telemetry;
mod writer;

pub use backend::{BatchOp, Capabilities, Durability, RemoteChange, RemoteChanges, StorageBackend};
pub use batch::{Batch, Transaction};
pub use builder::{
    PersistentMapBuilder, WriteBehind, DEFAULT_EVENT_CAPACITY, DEFAULT_MAX_BATCH,
    DEFAULT_MAX_PENDING, DEFAULT_SWEEP_INTERVAL,
};
pub use error::{
    render_key, BoxError, CodecDirection, EntryPart, ErrorKind, Location, Operation,
    PersistentError, Result,
};
pub use events::{MapEvent, Origin, Subscription};
pub use map::PersistentMap;
pub use stats::{MapStats, DEFAULT_MAP_NAME};

/// Re-exported so backend authors use the same `async_trait` as the core.
pub use async_trait::async_trait;
