//! Broken backends that need more than the in-memory wrapper: a store in a
//! file, for the cases that kill a child process or trace its syncs.

pub mod log_file;
