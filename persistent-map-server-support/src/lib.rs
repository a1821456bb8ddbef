#![doc = include_str!("../README.md")]

mod announcement;
mod batch;
mod feed;
mod inbox;
mod listen;
#[cfg(feature = "fault-proxy")]
mod proxy;
mod reconnect;
mod redact;

pub use announcement::Announcement;
pub use batch::{encode_batch, NetChange};
pub use feed::Feed;
pub use inbox::Inbox;
pub use listen::Listen;
#[cfg(feature = "fault-proxy")]
pub use proxy::{Cut, FaultProxy};
pub use redact::redact_url;
