//! The copy benchmark of issue 14: `copy` of 1,000,000 entries from SQLite
//! to PostgreSQL must run at least 0.5x as fast as a raw bulk insert
//! (`COPY ... FROM STDIN`, one transaction) of the same entries into the
//! same table. Ignored by default; run it on a release build:
//!
//! ```sh
//! ./benchmarks/cli-copy.sh     # or, with a server at hand:
//! PERSISTENT_MAP_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo test --release -p persistent-map-cli --test copy_bench -- --ignored --nocapture
//! ```
//!
//! `COPY_BENCH_ENTRIES` changes the number of entries (default 1,000,000).
//! It prints one `figures[copy_sqlite_to_postgres]:` line.

mod common;

use std::time::Instant;

use common::{block_on, run, unique, url_or_skip};
use sqlx::{Connection as _, Executor as _};

#[test]
#[ignore = "a benchmark: run with --release -- --ignored --nocapture"]
fn copy_sqlite_to_postgres_vs_raw_bulk_insert() {
    let Some(url) = url_or_skip("PERSISTENT_MAP_POSTGRES_URL", "copy benchmark") else {
        return;
    };
    let entries: u64 = std::env::var("COPY_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("source.db");
    let source = format!("sqlite:{}", db.display());
    run(&["set", &source, "seed", "0"]).ok();
    let schema = unique("pm_bench");
    let qualified = format!("\"{schema}\".kv");

    let (rows, baseline) = block_on(async {
        let mut lite = sqlx::SqliteConnection::connect(&format!("sqlite:{}", db.display()))
            .await
            .expect("opens");
        // ~100-byte values, as in benchmarks/run.sh. The source is marked as
        // a legacy-key table (its `user:…` keys read the same in both key
        // formats), as `copy` needs for the format 1 target made below.
        lite.execute(
            format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {entries}) \
                 INSERT OR REPLACE INTO kv (key, value) \
                 SELECT printf('user:%08d', i), json_object('id', i, 'name', printf('user-%d', i), \
                   'active', json('true'), 'payload', lower(hex(randomblob(24)))) FROM n; \
                 DELETE FROM kv WHERE key = 'seed'; \
                 UPDATE persistent_map_meta SET format_version = 1 WHERE table_name = 'kv';"
            )
            .as_str(),
        )
        .await
        .expect("fills the source");
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT key, value FROM kv")
            .fetch_all(&mut lite)
            .await
            .expect("reads");
        lite.close().await.expect("closes");

        let mut pg = sqlx::PgConnection::connect(&url).await.expect("connects");
        pg.execute(
            format!(
                "CREATE SCHEMA \"{schema}\"; \
                 CREATE TABLE {qualified} (key TEXT PRIMARY KEY, value JSONB NOT NULL); CHECKPOINT"
            )
            .as_str(),
        )
        .await
        .expect("creates the table");
        let mut text = Vec::with_capacity(rows.len() * 128);
        for (key, value) in &rows {
            escape(&mut text, key);
            text.push(b'\t');
            escape(&mut text, value);
            text.push(b'\n');
        }
        let started = Instant::now();
        let mut tx = pg.begin().await.expect("begins");
        let mut copy = tx
            .copy_in_raw(&format!("COPY {qualified} (key, value) FROM STDIN"))
            .await
            .expect("copy starts");
        for chunk in text.chunks(1 << 20) {
            copy.send(chunk).await.expect("sends");
        }
        copy.finish().await.expect("copy ends");
        tx.commit().await.expect("commits");
        let baseline = started.elapsed();
        pg.execute(format!("TRUNCATE {qualified}; CHECKPOINT").as_str())
            .await
            .expect("empties the table");
        pg.close().await.expect("closes");
        (rows.len(), baseline)
    });
    assert_eq!(rows as u64, entries);

    let target = format!(
        "{url}{}schema={schema}&table=kv",
        if url.contains('?') { '&' } else { '?' }
    );
    let started = Instant::now();
    let copied = run(&["--json", "copy", &source, &target]).ok();
    let cli = started.elapsed();
    let parsed: serde_json::Value = serde_json::from_str(&copied).expect("json");
    assert_eq!(parsed["entries"], entries);
    assert_eq!(parsed["verified"], true);

    block_on(async {
        let mut pg = sqlx::PgConnection::connect(&url).await.expect("connects");
        pg.execute(format!("DROP SCHEMA \"{schema}\" CASCADE").as_str())
            .await
            .expect("drops");
        pg.close().await.expect("closes");
    });

    let ratio = baseline.as_secs_f64() / cli.as_secs_f64();
    let line = format!(
        "figures[copy_sqlite_to_postgres]: entries={entries} raw_copy_s={:.2} cli_copy_s={:.2} \
         (command's timer {:.2}: copying {:.2}, verifying {:.2}) speed_ratio={ratio:.2} \
         target>=0.5 met={}",
        baseline.as_secs_f64(),
        cli.as_secs_f64(),
        parsed["seconds"].as_f64().unwrap_or_default(),
        parsed["copy_seconds"].as_f64().unwrap_or_default(),
        parsed["verify_seconds"].as_f64().unwrap_or_default(),
        ratio >= 0.5
    );
    common::report(&line);
    assert!(ratio >= 0.5, "{line}");
}

/// COPY's text format: backslash, tab, newline and carriage return escaped.
fn escape(out: &mut Vec<u8>, text: &str) {
    for &b in text.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}
