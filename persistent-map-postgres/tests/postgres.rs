//! PostgreSQL-specific behaviour: connection errors, the table format,
//! coherence between instances (with its latency), and a server restart in
//! the middle of a write stream.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::server::{free_port, PgServer};
use common::{report, url_or_skip, Scratch};
use persistent_map_core::codec::KeyFormat;
use persistent_map_core::{PersistentError, PersistentMap, StorageBackend};
use persistent_map_postgres::{PostgresBackend, Watch};
use serde::{Deserialize, Serialize};

async fn open(scratch: &Scratch, table: &str) -> PostgresBackend {
    PostgresBackend::builder(&scratch.url)
        .schema(&scratch.schema)
        .table(table)
        .pool_size(2)
        .build()
        .await
        .expect("backend opens")
}

/// How long a condition may take on a loaded machine (2 cores shared with
/// other builds): generous, since a passing run never waits for it.
const DEADLINE: Duration = Duration::from_secs(60);

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what} did not happen within {DEADLINE:?}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

/// Every way a URL can carry a password: in the user info (with characters
/// that confuse a hand-written parser), and as a query parameter.
fn urls_with_passwords(port: u16) -> Vec<String> {
    vec![
        format!("postgres://app:s3cret@127.0.0.1:{port}/app"),
        format!("postgres://app:s3cret%2Fs3cret@127.0.0.1:{port}/app"),
        format!("postgres://app:s3cret@127.0.0.1:{port}"),
        format!("postgres://app@127.0.0.1:{port}?password=s3cret"),
        format!("postgres://app@127.0.0.1:{port}/app?x=1&password=s3cret#frag"),
    ]
}

/// The error, its Debug form and every cause, as one text.
fn shown(err: &PersistentError) -> String {
    let mut shown = format!("{err} / {err:?}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        shown.push_str(&format!(" / {cause}"));
        source = cause.source();
    }
    shown
}

#[tokio::test]
async fn connection_refused_names_the_endpoint_and_hides_the_password() {
    let port = free_port(); // bound then released: nothing listens there
    let mut refused = 0;
    for url in urls_with_passwords(port) {
        let builder = PostgresBackend::builder(&url).connect_timeout(Duration::from_secs(10));
        let debug = format!("{builder:?}");
        assert!(!debug.contains("s3cret"), "the password leaked: {debug}");
        let err = builder
            .build()
            .await
            .expect_err("nothing listens on the port");
        let shown = shown(&err);
        assert!(!shown.contains("s3cret"), "the password leaked: {shown}");
        let PersistentError::Connection {
            backend, endpoint, ..
        } = &err
        else {
            // A URL this driver does not take is refused before connecting.
            assert!(
                matches!(err, PersistentError::Backend { .. }),
                "{url}: {err:?}"
            );
            continue;
        };
        assert_eq!(*backend, "postgres");
        assert_eq!(endpoint, &format!("127.0.0.1:{port}"));
        assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
        refused += 1;
    }
    assert!(refused >= 3, "only {refused} URLs got as far as connecting");
}

#[tokio::test]
async fn invalid_names_and_urls_are_refused_before_connecting() {
    for (schema, table) in [("public", "bad name"), ("1st", "kv"), ("public", "pg_x")] {
        let err = PostgresBackend::builder("postgres://127.0.0.1:1/db")
            .schema(schema)
            .table(table)
            .build()
            .await
            .expect_err("invalid name");
        assert!(matches!(err, PersistentError::Backend { .. }), "{err:?}");
    }
    let err = PostgresBackend::new("mysql://user:s3cret@host/db")
        .await
        .expect_err("not a postgres url");
    assert!(!format!("{err:?}").contains("s3cret"), "{err:?}");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    age: u32,
}

#[tokio::test]
async fn a_format_1_table_keeps_working_in_format_1() {
    let Some(url) = url_or_skip("a_format_1_table_keeps_working_in_format_1") else {
        return;
    };
    let scratch = Scratch::new(url);
    let setup = sqlx::PgPool::connect(&scratch.url).await.expect("connect");
    for sql in [
        format!("CREATE SCHEMA \"{}\"", scratch.schema),
        format!(
            "CREATE TABLE \"{}\".old (key TEXT PRIMARY KEY, value JSONB NOT NULL)",
            scratch.schema
        ),
        format!(
            "CREATE TABLE \"{}\".persistent_map_meta (table_name TEXT PRIMARY KEY, format_version INTEGER NOT NULL)",
            scratch.schema
        ),
        format!(
            "INSERT INTO \"{}\".persistent_map_meta VALUES ('old', 1)",
            scratch.schema
        ),
        format!(
            "INSERT INTO \"{}\".old VALUES ('kept', '\"from format 1\"')",
            scratch.schema
        ),
    ] {
        sqlx::query(&sql).execute(&setup).await.expect("set up a format 1 table");
    }
    let map: PersistentMap<String, String, _> = PersistentMap::new(open(&scratch, "old").await)
        .await
        .expect("opens");
    assert_eq!(map.get("kept"), Some("from format 1".into()));
    map.insert("new".into(), "row".into())
        .await
        .expect("insert");
    map.insert("kept".into(), "updated".into())
        .await
        .expect("upsert");
    map.remove(&"new".to_string()).await.expect("remove");
    map.close().await.expect("close");
    let version: i32 = sqlx::query_scalar(&format!(
        "SELECT format_version FROM \"{}\".persistent_map_meta WHERE table_name = 'old'",
        scratch.schema
    ))
    .fetch_one(&setup)
    .await
    .expect("meta row");
    assert_eq!(version, 1, "a format 1 table is not converted");
    let backend = open(&scratch, "old").await;
    assert_eq!(backend.key_format(), KeyFormat::Legacy);
    let map: PersistentMap<String, String, _> = PersistentMap::new(backend).await.expect("opens");
    map.insert("7".into(), "seven".into())
        .await
        .expect("insert");
    map.close().await.expect("close");
    let seven: String = sqlx::query_scalar(&format!(
        "SELECT value #>> '{{}}' FROM \"{}\".old WHERE key = '7'",
        scratch.schema
    ))
    .fetch_one(&setup)
    .await
    .expect("a string key that looks like JSON is stored unquoted, in the legacy format");
    assert_eq!(seven, "seven");
    sqlx::query(&format!(
        "DELETE FROM \"{}\".old WHERE key = '7'",
        scratch.schema
    ))
    .execute(&setup)
    .await
    .expect("delete");
    let map: PersistentMap<String, String, _> = PersistentMap::new(open(&scratch, "old").await)
        .await
        .expect("reopens");
    assert_eq!(map.get("kept"), Some("updated".into()));
    assert_eq!(map.len(), 1);
    map.close().await.expect("close");
}

#[tokio::test]
async fn values_are_jsonb_and_the_format_is_recorded() {
    let Some(url) = url_or_skip("values_are_jsonb_and_the_format_is_recorded") else {
        return;
    };
    let scratch = Scratch::new(url);
    let backend = open(&scratch, "users").await;
    assert!(!format!("{backend:?}").contains("password"));
    let map: PersistentMap<String, User, _> =
        PersistentMap::new(backend.clone()).await.expect("map");
    map.insert(
        "ada".into(),
        User {
            name: "Ada".into(),
            age: 36,
        },
    )
    .await
    .expect("insert");
    let name: String = sqlx::query_scalar(&format!(
        "SELECT value->>'name' FROM \"{}\".users WHERE (value->>'age')::int > 30",
        scratch.schema
    ))
    .fetch_one(backend.pool())
    .await
    .expect("jsonb query");
    assert_eq!(name, "Ada");
    let version: i32 = sqlx::query_scalar(&format!(
        "SELECT format_version FROM \"{}\".persistent_map_meta WHERE table_name = 'users'",
        scratch.schema
    ))
    .fetch_one(backend.pool())
    .await
    .expect("meta row");
    assert_eq!(version, persistent_map_postgres::FORMAT_VERSION as i32);
    map.close().await.expect("close");

    // An application's own pool works too, and sees the same table.
    let shared = PostgresBackend::from_pool(
        backend.pool().clone(),
        persistent_map_postgres::PostgresOptions::new()
            .schema(&scratch.schema)
            .table("users"),
    )
    .await
    .expect("from_pool");
    let again: PersistentMap<String, User, _> = PersistentMap::new(shared).await.expect("map");
    assert_eq!(again.get("ada").map(|u| u.age), Some(36));
    again.close().await.expect("close");

    // A table of another shape is refused, untouched.
    sqlx::query(&format!(
        "CREATE TABLE \"{}\".other (id INT PRIMARY KEY)",
        scratch.schema
    ))
    .execute(backend.pool())
    .await
    .expect("create");
    let err = PostgresBackend::builder(&scratch.url)
        .schema(&scratch.schema)
        .table("other")
        .build()
        .await
        .expect_err("foreign table");
    assert!(matches!(err, PersistentError::Corrupt { .. }), "{err:?}");

    // A table written by a newer release is refused.
    sqlx::query(&format!(
        "UPDATE \"{}\".persistent_map_meta SET format_version = 99 WHERE table_name = 'users'",
        scratch.schema
    ))
    .execute(backend.pool())
    .await
    .expect("update");
    let err = PostgresBackend::builder(&scratch.url)
        .schema(&scratch.schema)
        .table("users")
        .build()
        .await
        .expect_err("newer format");
    assert!(
        matches!(err, PersistentError::UnsupportedFormat { found: 99, .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_follow_each_other_with_low_latency() {
    let Some(url) = url_or_skip("two_instances_follow_each_other_with_low_latency") else {
        return;
    };
    let scratch = Scratch::new(url);
    // Two backends: two pools and two listeners, as two processes would have.
    let a: PersistentMap<String, u64, _> = PersistentMap::new(open(&scratch, "shared").await)
        .await
        .expect("a");
    let b: PersistentMap<String, u64, _> = PersistentMap::new(open(&scratch, "shared").await)
        .await
        .expect("b");

    const WRITES: u64 = 200;
    let mut latencies = Vec::with_capacity(WRITES as usize);
    let mut round_trips = Vec::with_capacity(WRITES as usize);
    for i in 0..WRITES {
        let key = format!("k{}", i % 17);
        let started = Instant::now();
        a.insert(key.clone(), i).await.expect("insert");
        let acknowledged = Instant::now();
        let deadline = acknowledged + DEADLINE;
        while b.get(&key) != Some(i) {
            assert!(Instant::now() < deadline, "b never saw {key} = {i}");
            tokio::task::yield_now().await;
        }
        latencies.push(acknowledged.elapsed());
        round_trips.push(started.elapsed());
    }
    latencies.sort();
    round_trips.sort();
    report(&format!(
        "postgres coherence: write-to-visible latency over {WRITES} writes: median {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    ));
    report(&format!(
        "postgres coherence: from the start of the write to visible in the other cache: median {:?}, p99 {:?}",
        percentile(&round_trips, 0.5),
        percentile(&round_trips, 0.99),
    ));

    // The other direction, removals, clear, and a batch too large for
    // one notification.
    b.insert("from-b".into(), 7).await.expect("insert");
    eventually("a sees b's write", || a.get("from-b") == Some(7)).await;
    a.remove(&"from-b".to_string()).await.expect("remove");
    eventually("b sees a's removal", || !b.contains_key("from-b")).await;
    a.insert_many((0..3000).map(|i| (format!("bulk-{i:04}-{}", "x".repeat(20)), i)))
        .await
        .expect("insert_many");
    eventually("b sees the bulk insert", || b.len() == a.len()).await;
    b.clear().await.expect("clear");
    eventually("a sees the clear", || a.is_empty()).await;

    // With the feed disabled, nothing is announced or followed.
    let quiet: PersistentMap<String, u64, _> = PersistentMap::new(
        PostgresBackend::builder(&scratch.url)
            .schema(&scratch.schema)
            .table("shared")
            .watch(Watch::Disabled)
            .build()
            .await
            .expect("backend"),
    )
    .await
    .expect("quiet");
    quiet.insert("quiet".into(), 1).await.expect("insert");
    a.insert("loud".into(), 2).await.expect("insert");
    eventually("b sees a's write", || b.get("loud") == Some(2)).await;
    assert_eq!(
        b.get("quiet"),
        None,
        "a write without notification was followed"
    );
    assert_eq!(
        quiet.get("loud"),
        None,
        "a map without a feed followed a write"
    );
    for map in [&a, &b, &quiet] {
        map.close().await.expect("close");
    }
}

/// Kills the server in the middle of a stream of writes and starts it
/// again: writes fail while it is down, nothing acknowledged is lost, no
/// failed write shows up, and both instances' caches resynchronise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_in_the_middle_of_a_write_stream() {
    let server = match tokio::task::spawn_blocking(PgServer::start)
        .await
        .expect("join")
    {
        Ok(server) => server,
        Err(reason) => {
            assert!(
                std::env::var(common::REQUIRE_VAR).as_deref() != Ok("1"),
                "cannot start a throwaway server: {reason}"
            );
            report(&format!(
                "SKIP: server_restart_in_the_middle_of_a_write_stream: {reason}"
            ));
            return;
        }
    };
    let url = server.url();
    let backend = || {
        PostgresBackend::builder(&url)
            .table("restart")
            .pool_size(2)
            .connect_timeout(Duration::from_millis(500))
            .build()
    };
    let a: PersistentMap<String, u64, _> = PersistentMap::new(backend().await.expect("a"))
        .await
        .expect("a");
    let b: PersistentMap<String, u64, _> = PersistentMap::new(backend().await.expect("b"))
        .await
        .expect("b");

    let mut acknowledged: HashMap<String, u64> = HashMap::new();
    let key = |i: u64| format!("k{}", i % 20);
    for i in 0..100 {
        a.insert(key(i), i).await.expect("insert while up");
        acknowledged.insert(key(i), i);
    }

    // A write no instance announces, made before the server goes away:
    // only the resync after reconnecting can bring it into the caches.
    {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::query("INSERT INTO public.restart (key, value) VALUES ('behind', '1')")
            .execute(&mut conn)
            .await
            .expect("write behind the maps' backs");
        acknowledged.insert("behind".into(), 1);
    }

    let server = tokio::task::spawn_blocking(move || server.kill().map(|()| server))
        .await
        .expect("join")
        .expect("server stops");
    for i in 100..105 {
        let err = a.insert(key(i), i).await.expect_err("insert while down");
        assert!(
            matches!(&err, PersistentError::Connection { endpoint, .. } if endpoint == &format!("127.0.0.1:{}", server.port)),
            "{err:?}"
        );
        assert_eq!(
            a.get(&key(i)),
            acknowledged.get(&key(i)).copied(),
            "phantom in the cache"
        );
    }

    let server = tokio::task::spawn_blocking(move || server.start_again().map(|()| server))
        .await
        .expect("join")
        .expect("server starts again");
    for i in 200..300 {
        // The pool may hand out a connection that died with the server once.
        let deadline = Instant::now() + DEADLINE;
        while let Err(err) = a.insert(key(i), i).await {
            assert!(
                Instant::now() < deadline,
                "writes keep failing after the restart: {err}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        acknowledged.insert(key(i), i);
    }

    let stored: HashMap<String, u64> =
        StorageBackend::<String, u64>::load_all(&backend().await.expect("c"))
            .await
            .expect("load");
    assert_eq!(stored, acknowledged, "the store lost or invented a write");
    eventually("a's cache equals the store", || {
        a.iter().collect::<HashMap<_, _>>() == stored
    })
    .await;
    eventually("b's cache equals the store", || {
        b.iter().collect::<HashMap<_, _>>() == stored
    })
    .await;
    a.close().await.expect("close");
    b.close().await.expect("close");
    drop(server);
}

#[test]
fn public_types_are_send_sync_and_debug() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<PostgresBackend>();
    check::<persistent_map_postgres::PostgresBuilder>();
    check::<persistent_map_postgres::PostgresOptions>();
    check::<Watch>();
}

/// A key that is a string or a number, as an untagged enum: `"42"` and
/// `42` are two keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
enum TextOrNumber {
    Text(String),
    Number(u32),
}

/// `Option<String>` keys whose texts collide in the legacy key format.
fn colliding_keys() -> Vec<(Option<String>, u32)> {
    [
        None,
        Some("null"),
        Some("42"),
        Some(""),
        Some("\"x\""),
        Some("alice"),
    ]
    .into_iter()
    .map(|k| k.map(str::to_owned))
    .zip(1..)
    .collect()
}

#[tokio::test]
async fn keys_that_share_a_legacy_text_stay_distinct_across_a_reopen_and_between_instances() {
    let Some(url) = url_or_skip("keys_that_share_a_legacy_text_stay_distinct") else {
        return;
    };
    let scratch = Scratch::new(url);
    let backend = open(&scratch, "awkward").await;
    assert_eq!(backend.key_format(), KeyFormat::Distinct);
    let map: PersistentMap<Option<String>, u32, _> =
        PersistentMap::new(backend).await.expect("opens");
    let other: PersistentMap<Option<String>, u32, _> =
        PersistentMap::new(open(&scratch, "awkward").await)
            .await
            .expect("opens");
    for (k, v) in colliding_keys() {
        map.insert(k, v).await.expect("insert");
    }
    // The other instance reads the announced keys in the table's format.
    eventually("every key reaches the other instance", || {
        colliding_keys()
            .iter()
            .all(|(k, v)| other.get(k) == Some(*v))
    })
    .await;
    map.close().await.expect("close");
    other.close().await.expect("close");
    let map: PersistentMap<Option<String>, u32, _> =
        PersistentMap::new(open(&scratch, "awkward").await)
            .await
            .expect("reopens");
    let mut got: Vec<(Option<String>, u32)> = map.iter().collect();
    got.sort_by_key(|(_, v)| *v);
    assert_eq!(got, colliding_keys());
    for (k, _) in colliding_keys() {
        assert!(
            StorageBackend::<Option<String>, u32>::contains_key(map.backend(), &k)
                .await
                .expect("contains"),
            "{k:?}"
        );
    }
    map.close().await.expect("close");

    let map: PersistentMap<TextOrNumber, u32, _> =
        PersistentMap::new(open(&scratch, "either").await)
            .await
            .expect("opens");
    map.insert(TextOrNumber::Text("42".into()), 1)
        .await
        .expect("insert");
    map.insert(TextOrNumber::Number(42), 2)
        .await
        .expect("insert");
    map.close().await.expect("close");
    let map: PersistentMap<TextOrNumber, u32, _> =
        PersistentMap::new(open(&scratch, "either").await)
            .await
            .expect("reopens");
    assert_eq!(map.len(), 2);
    assert_eq!(map.get(&TextOrNumber::Text("42".into())), Some(1));
    assert_eq!(map.get(&TextOrNumber::Number(42)), Some(2));
    map.close().await.expect("close");
}

#[tokio::test]
async fn a_format_2_table_keeps_the_legacy_key_format() {
    let Some(url) = url_or_skip("a_format_2_table_keeps_the_legacy_key_format") else {
        return;
    };
    let scratch = Scratch::new(url);
    // A table an earlier 0.2 created.
    common::create_pre_expiry_table(&scratch.url, &scratch.schema, "two", 2, &[]).await;
    let backend = open(&scratch, "two").await;
    assert_eq!(backend.key_format(), KeyFormat::Legacy);
    let map: PersistentMap<String, u32, _> =
        PersistentMap::new(backend.clone()).await.expect("opens");
    map.insert("42".into(), 1).await.expect("insert");
    map.close().await.expect("close");
    let keys: Vec<String> =
        sqlx::query_scalar(&format!("SELECT key FROM \"{}\".two", scratch.schema))
            .fetch_all(backend.pool())
            .await
            .expect("rows");
    assert_eq!(keys, ["42"]);
    let version: i32 = sqlx::query_scalar(&format!(
        "SELECT format_version FROM \"{}\".persistent_map_meta WHERE table_name = 'two'",
        scratch.schema
    ))
    .fetch_one(backend.pool())
    .await
    .expect("meta row");
    assert_eq!(version, 2, "the table is not moved to the new format");
    let map: PersistentMap<String, u32, _> = PersistentMap::new(open(&scratch, "two").await)
        .await
        .expect("reopens");
    assert_eq!(map.get("42"), Some(1));
    map.close().await.expect("close");
}
