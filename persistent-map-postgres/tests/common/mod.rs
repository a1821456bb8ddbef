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

/// Creates, in `schema` (created if missing), a table as a release before
/// expiry created it: the layout of formats 2 and 3 (`key`, `value`,
/// `key_hash`), recorded as format `version`, holding `rows` (stored key,
/// value JSON).
pub async fn create_pre_expiry_table(
    url: &str,
    schema: &str,
    table: &str,
    version: i32,
    rows: &[(&str, &str)],
) {
    let setup = sqlx::PgPool::connect(url).await.expect("connect");
    let statements = [
        format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""),
        format!(
            "CREATE OR REPLACE FUNCTION \"{schema}\".persistent_map_key_hash(text) RETURNS bytea \
             LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE \
             AS $$ SELECT sha256(convert_to($1, 'UTF8')) $$"
        ),
        format!(
            "CREATE TABLE \"{schema}\".\"{table}\" (key TEXT NOT NULL, value JSONB NOT NULL, \
             key_hash BYTEA GENERATED ALWAYS AS (\"{schema}\".persistent_map_key_hash(key)) STORED PRIMARY KEY)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS \"{schema}\".persistent_map_meta \
             (table_name TEXT PRIMARY KEY, format_version INTEGER NOT NULL)"
        ),
    ];
    for sql in statements {
        sqlx::query(&sql)
            .execute(&setup)
            .await
            .expect("set up an old table");
    }
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".persistent_map_meta VALUES ($1, $2)"
    ))
    .bind(table)
    .bind(version)
    .execute(&setup)
    .await
    .expect("record its version");
    for (key, value) in rows {
        sqlx::query(&format!(
            "INSERT INTO \"{schema}\".\"{table}\" (key, value) VALUES ($1, $2::jsonb)"
        ))
        .bind(key)
        .bind(value)
        .execute(&setup)
        .await
        .expect("an old row");
    }
    setup.close().await;
}
