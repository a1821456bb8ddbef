//! The command against real PostgreSQL and Redis servers, named by
//! `PERSISTENT_MAP_POSTGRES_URL` and `PERSISTENT_MAP_REDIS_URL` (see
//! `scripts/test-servers.sh`). Each test uses a schema or key prefix of its
//! own and removes it afterwards.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    assert_deadlines_in_info, assert_expiring, block_on, file_url, run, set_all, unique,
    url_or_skip, write_expiring, AWKWARD, EXPIRING_DUMP, FUTURE,
};
use persistent_map_core::codec::KeyFormat;
use persistent_map_core::StorageBackend as _;
use persistent_map_postgres::PostgresBackend;
use persistent_map_redis::RedisBackend;
use sqlx::Connection as _;

const POSTGRES: &str = "PERSISTENT_MAP_POSTGRES_URL";
const REDIS: &str = "PERSISTENT_MAP_REDIS_URL";

/// A schema of one test's own, dropped with everything in it at the end.
struct PgScratch {
    url: String,
    schema: String,
}

impl PgScratch {
    fn new(url: String) -> Self {
        Self {
            url,
            schema: unique("pm_cli"),
        }
    }

    fn store(&self, table: &str) -> String {
        with_params(&self.url, &format!("schema={}&table={table}", self.schema))
    }

    fn exec(&self, sql: &str) {
        block_on(async {
            let mut conn = sqlx::PgConnection::connect(&self.url)
                .await
                .expect("connects");
            sqlx::query(sql).execute(&mut conn).await.expect("runs");
            conn.close().await.expect("closes");
        });
    }
}

impl Drop for PgScratch {
    fn drop(&mut self) {
        self.exec(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        ));
    }
}

/// Every key under a prefix of one test's own, deleted at the end.
struct RedisScratch {
    url: String,
    prefix: String,
}

impl RedisScratch {
    fn new(url: String) -> Self {
        Self {
            url,
            prefix: unique("pm-cli"),
        }
    }

    fn store(&self, name: &str) -> String {
        with_params(&self.url, &format!("prefix={}&name={name}", self.prefix))
    }

    fn cmd(&self, args: &[&str]) {
        let client = redis::Client::open(self.url.as_str()).expect("a url");
        let mut conn = client.get_connection().expect("connects");
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.exec(&mut conn).expect("runs");
    }
}

impl Drop for RedisScratch {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _ = redis::cmd("DEL").arg(&keys).exec(&mut conn);
        }
    }
}

fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// Inserts `password` into a server URL (trust auth and a Redis without a
/// password ignore it, or refuse it without echoing it).
fn with_password(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a url");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:{password}@{host}")
}

/// The round trip and copy rules on one server store.
fn round_trip_through(server_store: &str, second_store: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = file_url("sqlite", dir.path(), "app.db");
    set_all(&sqlite, AWKWARD);

    // SQLite -> server, verified by count and checksum.
    let copied = run(&["--json", "copy", &sqlite, server_store]).ok();
    let parsed: serde_json::Value = serde_json::from_str(&copied).expect("json");
    assert_eq!(parsed["entries"], AWKWARD.len());
    assert_eq!(parsed["verified"], true);

    // A non-empty target is refused.
    let refused = run(&["copy", &sqlite, server_store]).code(1);
    assert!(refused.stderr.contains("is not empty"), "{refused:?}");

    // dump, load, dump: byte-identical, and identical to SQLite's dump.
    let first = run(&["dump", server_store]).ok();
    assert_eq!(first, run(&["dump", &sqlite]).ok());
    let file = dir.path().join("dump.jsonl");
    std::fs::write(&file, &first).expect("written");
    run(&["load", second_store, file.to_str().expect("utf-8")]).ok();
    assert_eq!(run(&["dump", second_store]).ok(), first);
    run(&[
        "load",
        second_store,
        file.to_str().expect("utf-8"),
        "--replace",
    ])
    .ok();
    assert_eq!(run(&["dump", second_store]).ok(), first);

    // get, set, rm.
    assert_eq!(
        run(&["get", server_store, "alice"]).ok(),
        "{\"age\":30,\"name\":\"Alice\",\"tags\":[\"a\",\"b\"]}\n"
    );
    run(&["set", server_store, "new", "[1]"]).ok();
    assert_eq!(run(&["get", server_store, "new"]).ok(), "[1]\n");
    run(&["rm", server_store, "new"]).ok();
    run(&["get", server_store, "new"]).code(1);

    let info = run(&["info", server_store]).ok();
    assert!(
        info.contains(&format!("entries:        {}", AWKWARD.len())),
        "{info}"
    );
    assert!(info.contains("format version: "), "{info}");
    assert!(run(&["verify", server_store]).ok().contains("ok:"));

    // Back to a file: the same dump again.
    let back = file_url("csv", dir.path(), "back.csv");
    run(&["copy", server_store, &back]).ok();
    assert_eq!(run(&["dump", &back]).ok(), first);
}

#[test]
fn postgres_round_trip_copy_and_keys() {
    let Some(url) = url_or_skip(POSTGRES, "postgres_round_trip_copy_and_keys") else {
        return;
    };
    let scratch = PgScratch::new(url);
    round_trip_through(&scratch.store("kv"), &scratch.store("second"));
}

#[test]
fn postgres_verify_reports_bad_rows() {
    let Some(url) = url_or_skip(POSTGRES, "postgres_verify_reports_bad_rows") else {
        return;
    };
    let scratch = PgScratch::new(url);
    let store = scratch.store("kv");
    set_all(&store, &[("good", "1")]);
    scratch.exec(&format!(
        "INSERT INTO \"{}\".kv (key, value) VALUES (E'\\x01\\x01bad', '1')",
        scratch.schema
    ));
    let report = run(&["verify", &store]).code(1);
    assert!(report.stdout.contains("escape is damaged"), "{report:?}");
    assert!(report.stdout.contains("bad"), "{report:?}");
    let missing = scratch.store("nothing_here");
    let report = run(&["verify", &missing]).code(1);
    assert!(report.stdout.contains("no such table"), "{report:?}");
    // Read commands create nothing.
    assert!(run(&["info", &missing]).ok().contains("no map here yet"));
}

#[test]
fn redis_round_trip_copy_and_keys() {
    let Some(url) = url_or_skip(REDIS, "redis_round_trip_copy_and_keys") else {
        return;
    };
    let scratch = RedisScratch::new(url);
    round_trip_through(&scratch.store("kv"), &scratch.store("second"));
}

#[test]
fn redis_verify_reports_bad_values() {
    let Some(url) = url_or_skip(REDIS, "redis_verify_reports_bad_values") else {
        return;
    };
    let scratch = RedisScratch::new(url);
    let store = scratch.store("kv");
    set_all(&store, &[("good", "1")]);
    scratch.cmd(&[
        "HSET",
        &format!("{}:kv", scratch.prefix),
        "broken",
        "{not json",
    ]);
    let report = run(&["verify", &store]).code(1);
    assert!(
        report
            .stdout
            .contains("key \"broken\": the value is not JSON"),
        "{report:?}"
    );
    let dump = run(&["dump", &store]).code(1);
    assert!(dump.stderr.contains("key \"broken\""), "{dump:?}");
}

#[test]
fn passwords_in_urls_are_never_printed() {
    let secret = "s3cret-Pa55word";
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = file_url("sqlite", dir.path(), "a.db");
    set_all(&sqlite, &[("k", "1")]);
    let mut checked = 0;
    // Unreachable servers: the error names the server, never the password.
    for url in [
        format!("postgres://app:{secret}@127.0.0.1:1/db?table=kv"),
        format!("redis://:{secret}@127.0.0.1:1/0"),
        format!("mysql://app:{secret}@127.0.0.1/db"),
        format!("postgres://app:{secret}@127.0.0.1:1/db?tabel=kv"),
    ] {
        for args in [
            vec!["info", url.as_str()],
            vec!["--json", "info", url.as_str()],
            vec!["copy", sqlite.as_str(), url.as_str()],
        ] {
            let failed = run(&args);
            assert_ne!(failed.code, 0, "{failed:?}");
            assert!(!failed.all().contains(secret), "{args:?}: {failed:?}");
            checked += 1;
        }
    }
    // Reachable servers (trust auth accepts any password; Redis without a
    // password refuses AUTH without echoing it).
    if let Some(url) = url_or_skip(POSTGRES, "passwords_in_urls_are_never_printed (postgres)") {
        let scratch = PgScratch::new(url.clone());
        let user = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .map_or("postgres", |(user, _)| {
                user.split(':').next().unwrap_or("postgres")
            });
        let store = with_params(
            &with_password(&url, user, secret),
            &format!("schema={}&table=kv", scratch.schema),
        );
        for args in [
            vec!["copy", sqlite.as_str(), store.as_str()],
            vec!["info", store.as_str()],
            vec!["--json", "info", store.as_str()],
            vec!["verify", store.as_str()],
        ] {
            let done = run(&args);
            assert!(!done.all().contains(secret), "{args:?}: {done:?}");
            done.ok();
            checked += 1;
        }
        let info = run(&["info", &store]).ok();
        assert!(info.contains(":***@"), "{info}");
    }
    if let Some(url) = url_or_skip(REDIS, "passwords_in_urls_are_never_printed (redis)") {
        let store = with_password(&url, "", secret);
        let failed = run(&["copy", &sqlite, &store]);
        assert!(!failed.all().contains(secret), "{failed:?}");
        checked += 1;
    }
    // Each server's part ran only where its server is configured.
    println!("password checks against servers: {checked}");
}

/// Waits for a watcher to end; one still running at the deadline (its feed
/// never delivered) is killed and fails the test instead of hanging it.
fn finish_within(mut child: std::process::Child, deadline: Duration) -> std::process::Output {
    let until = std::time::Instant::now() + deadline;
    while child.try_wait().expect("polls").is_none() {
        if std::time::Instant::now() >= until {
            let _ = child.kill();
            panic!("the watcher did not end within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn redis_watch_prints_changes_of_other_instances() {
    let Some(url) = url_or_skip(REDIS, "redis_watch_prints_changes_of_other_instances") else {
        return;
    };
    let scratch = RedisScratch::new(url);
    let store = scratch.store("kv");
    set_all(&store, &[("first", "1")]);
    let mut watcher = Command::new(common::binary())
        .args(["--json", "watch", &store, "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut stderr = BufReader::new(watcher.stderr.take().expect("piped"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("reads");
    assert!(line.starts_with("watching"), "{line}");
    run(&["set", &store, "alice", "{\"age\": 31}"]).ok();
    run(&["rm", &store, "first"]).ok();
    let output = finish_within(watcher, Duration::from_secs(60));
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        printed,
        "{\"key\":\"alice\",\"value\":{\"age\":31}}\n{\"key\":\"first\",\"removed\":true}\n"
    );
}

#[test]
fn postgres_watch_prints_changes_of_other_instances() {
    let Some(url) = url_or_skip(POSTGRES, "postgres_watch_prints_changes_of_other_instances")
    else {
        return;
    };
    let scratch = PgScratch::new(url);
    let store = scratch.store("kv");
    set_all(&store, &[("first", "1")]);
    let mut watcher = Command::new(common::binary())
        .args(["watch", &store, "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut stderr = BufReader::new(watcher.stderr.take().expect("piped"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("reads");
    assert!(line.starts_with("watching"), "{line}");
    run(&["set", &store, "bob", "2"]).ok();
    let output = finish_within(watcher, Duration::from_secs(60));
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "set \"bob\" = 2\n");
}

async fn postgres_backend(url: &str, schema: &str, table: &str) -> PostgresBackend {
    PostgresBackend::builder(url)
        .schema(schema)
        .table(table)
        .build()
        .await
        .expect("opens")
}

async fn redis_backend(url: &str, prefix: &str, name: &str, keys: KeyFormat) -> RedisBackend {
    RedisBackend::builder(url)
        .prefix(prefix)
        .name(name)
        .new_store_key_format(keys)
        .build()
        .await
        .expect("opens")
}

#[test]
fn deadlines_travel_between_servers_and_files() {
    let test = "deadlines_travel_between_servers_and_files";
    let (Some(pg_url), Some(redis_url)) = (url_or_skip(POSTGRES, test), url_or_skip(REDIS, test))
    else {
        return;
    };
    let (pg, redis) = (PgScratch::new(pg_url), RedisScratch::new(redis_url));
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("app.db");
    block_on(async {
        let backend = persistent_map_sqlite::SqliteBackend::builder(&db)
            .build()
            .await
            .expect("opens");
        write_expiring(&backend).await;
        backend.close().await;
    });
    let sqlite = file_url("sqlite", dir.path(), "app.db");

    // SQLite -> PostgreSQL: the bulk COPY path writes the deadlines.
    let postgres = pg.store("kv");
    let copied = run(&["--json", "copy", &sqlite, &postgres]).ok();
    let copied: serde_json::Value = serde_json::from_str(&copied).expect("json");
    assert_eq!(copied["verified"], true, "{copied}");
    block_on(async {
        assert_expiring(&postgres_backend(&pg.url, &pg.schema, "kv").await).await;
    });
    assert_eq!(run(&["dump", &postgres]).ok(), EXPIRING_DUMP);
    assert_deadlines_in_info(&postgres);
    assert!(run(&["verify", &postgres]).ok().contains("ok:"));
    assert_eq!(
        run(&["--json", "get", &postgres, "later"]).ok(),
        format!("{{\"expires_at\":{FUTURE},\"key\":\"later\",\"value\":1}}\n")
    );

    // PostgreSQL -> CSV.
    let csv = file_url("csv", dir.path(), "from-pg.csv");
    run(&["copy", &postgres, &csv]).ok();
    assert_eq!(run(&["dump", &csv]).ok(), EXPIRING_DUMP);

    // CSV -> Redis.
    let redis_store = redis.store("kv");
    run(&["copy", &csv, &redis_store]).ok();
    block_on(async {
        let backend = redis_backend(&redis.url, &redis.prefix, "kv", KeyFormat::NEW_STORES).await;
        assert_expiring(&backend).await;
    });
    assert_eq!(run(&["dump", &redis_store]).ok(), EXPIRING_DUMP);
    assert_deadlines_in_info(&redis_store);
    assert!(run(&["verify", &redis_store]).ok().contains("ok:"));

    // load into each server keeps them too.
    let file = dir.path().join("dump.jsonl");
    std::fs::write(&file, EXPIRING_DUMP).expect("written");
    for second in [pg.store("second"), redis.store("second")] {
        run(&["load", &second, file.to_str().expect("utf-8")]).ok();
        assert_eq!(run(&["dump", &second]).ok(), EXPIRING_DUMP, "{second}");
    }
    block_on(async {
        assert_expiring(&postgres_backend(&pg.url, &pg.schema, "second").await).await;
    });

    // A score that is not a whole number of milliseconds is reported.
    redis.cmd(&[
        "ZADD",
        &format!("{}:kv:expiry", redis.prefix),
        "1.5",
        "later",
    ]);
    let report = run(&["verify", &redis_store]).code(1);
    assert!(
        report
            .stdout
            .contains("key \"later\": the deadline \"1.5\" is not a whole number of milliseconds"),
        "{report:?}"
    );
}

#[test]
fn stores_without_expiry_refuse_deadlines_before_anything_is_written() {
    let test = "stores_without_expiry_refuse_deadlines_before_anything_is_written";
    let (Some(pg_url), Some(redis_url)) = (url_or_skip(POSTGRES, test), url_or_skip(REDIS, test))
    else {
        return;
    };
    let (pg, redis) = (PgScratch::new(pg_url), RedisScratch::new(redis_url));
    let dir = tempfile::tempdir().expect("temp dir");
    // A legacy-key Redis map (format 1) keeps no deadlines.
    block_on(async {
        let backend = redis_backend(&redis.url, &redis.prefix, "old", KeyFormat::Legacy).await;
        backend
            .apply_batch(&[persistent_map_core::BatchOp::Put {
                key: serde_json::json!("kept"),
                value: serde_json::json!(1),
            }])
            .await
            .expect("written");
        assert!(!persistent_map_core::StorageBackend::<serde_json::Value, serde_json::Value>::capabilities(&backend).expiry);
    });
    let old = redis.store("old");
    let before = run(&["dump", &old]).ok();
    let file = dir.path().join("dump.jsonl");
    std::fs::write(&file, EXPIRING_DUMP).expect("written");
    let refused = run(&["load", &old, file.to_str().expect("utf-8"), "--replace"]).code(1);
    assert!(
        refused.stderr.contains("line 1") && refused.stderr.contains("keeps no deadlines"),
        "{refused:?}"
    );
    assert_eq!(run(&["dump", &old]).ok(), before, "nothing written");

    // A copy of a legacy-key SQLite table with deadlines (format 3) into a
    // new PostgreSQL table, created in the legacy key format, is refused.
    let db = dir.path().join("legacy.db");
    block_on(async {
        let backend = persistent_map_sqlite::SqliteBackend::builder(&db)
            .new_store_key_format(KeyFormat::Legacy)
            .build()
            .await
            .expect("opens");
        write_expiring(&backend).await;
        backend.close().await;
    });
    let sqlite = file_url("sqlite", dir.path(), "legacy.db");
    assert!(run(&["info", &sqlite]).ok().contains("format version: 3"));
    let postgres = pg.store("legacy");
    let refused = run(&["copy", &sqlite, &postgres]).code(2);
    assert!(
        refused.stderr.contains("3 entries with a deadline")
            && refused.stderr.contains("keeps no deadlines"),
        "{refused:?}"
    );
    assert_eq!(run(&["dump", &postgres]).ok(), "", "nothing copied");
}
