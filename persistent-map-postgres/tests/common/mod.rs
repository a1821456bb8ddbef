//! What the server tests share: the server URL from the environment, a
//! scratch schema per test, and a throwaway server for restart tests.

#![allow(dead_code)]

pub mod server;

use std::io::Write as _;

/// The variable naming the server the tests use.
pub const URL_VAR: &str = "PERSISTENT_MAP_POSTGRES_URL";

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
    Some("no PostgreSQL server (set PERSISTENT_MAP_POSTGRES_URL, or run scripts/test-servers.sh cargo test)")
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
    format!("{prefix}_{:016x}", fastrand::u64(..))
}

/// A schema of one test's own, dropped with everything in it when this
/// value is dropped.
pub struct Scratch {
    pub url: String,
    pub schema: String,
}

impl Scratch {
    pub fn new(url: String) -> Self {
        Self {
            url,
            schema: unique("pm_test"),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let url = self.url.clone();
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
        // Drop may run inside a runtime: clean up on a thread of its own.
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for clean-up");
            runtime.block_on(async move {
                use sqlx::Connection as _;
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::query(&sql).execute(&mut conn).await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            report(&format!(
                "warning: could not drop test schema {}",
                self.schema
            ));
        }
    }
}
