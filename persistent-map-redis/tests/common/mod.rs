//! What the server tests share: the server URL from the environment, a
//! scratch key prefix per test, and a throwaway server for restart tests.

#![allow(dead_code)]

pub mod server;

use std::io::Write as _;

/// The variable naming the server the tests use.
pub const URL_VAR: &str = "PERSISTENT_MAP_REDIS_URL";

/// Set to `1` (by `scripts/test.sh`) to fail, not skip, when no server is configured.
pub const REQUIRE_VAR: &str = "PERSISTENT_MAP_REQUIRE_SERVERS";

fn required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1")
}

/// Why the server tests cannot run, or `None` when they can.
///
/// # Panics
///
/// When no server is configured and `PERSISTENT_MAP_REQUIRE_SERVERS=1`.
pub fn skip_reason() -> Option<&'static str> {
    if std::env::var(URL_VAR).is_ok_and(|v| !v.is_empty()) {
        return None;
    }
    assert!(
        !required(),
        "{URL_VAR} is not set but {REQUIRE_VAR}=1: run the tests through scripts/test-servers.sh"
    );
    Some(
        "no Redis server (set PERSISTENT_MAP_REDIS_URL, or run scripts/test-servers.sh cargo test)",
    )
}

/// The server URL, or `None` after printing a visible skip for `test`.
pub fn url_or_skip(test: &str) -> Option<String> {
    if let Some(reason) = skip_reason() {
        let _ = writeln!(std::io::stderr(), "SKIP: {test}: {reason}");
        return None;
    }
    std::env::var(URL_VAR).ok()
}

/// Prints a line past the test harness's output capture.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", fastrand::u64(..))
}

/// A key prefix of one test's own; every key under it is deleted when this
/// value is dropped.
pub struct Scratch {
    pub url: String,
    pub prefix: String,
}

impl Scratch {
    pub fn new(url: String) -> Self {
        Self {
            url,
            prefix: unique("pm-test"),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let url = self.url.clone();
        let pattern = format!("{}:*", self.prefix);
        // Drop may run inside a runtime: clean up on a thread of its own.
        let done = std::thread::spawn(move || -> redis::RedisResult<()> {
            let client = redis::Client::open(url)?;
            let mut conn = client.get_connection()?;
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn)?;
            if !keys.is_empty() {
                redis::cmd("DEL").arg(&keys).exec(&mut conn)?;
            }
            Ok(())
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            report(&format!(
                "warning: could not delete test keys {}:*",
                self.prefix
            ));
        }
    }
}
