//! The data every workload uses: the same keys and ~100-byte values.

/// A value of about 100 bytes, different for every `i`.
pub fn value(i: u64) -> String {
    format!("{i:020}-{}", "v".repeat(79))
}

/// The key of entry `i`.
pub fn key(i: u64) -> String {
    format!("key-{i:012}")
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub ops: u64,
    pub secs: f64,
}

impl Run {
    pub fn rate(self) -> f64 {
        self.ops as f64 / self.secs
    }
}
