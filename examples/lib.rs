//! Support code for the examples: the third-party style backend that
//! `custom_backend` runs and that `tests/custom_backend_conformance.rs` checks.

pub mod json_file_backend;
