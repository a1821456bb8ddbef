//! Redis-specific behaviour: connection errors, a flush the server refuses,
//! the hash format, coherence between instances (with its latency), and a
//! server restart in the middle of a write stream.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::server::{free_port, RedisServer};
use common::{report, unique, url_or_skip, Scratch};
use persistent_map_core::codec::KeyFormat;
use persistent_map_core::{ErrorKind, PersistentError, PersistentMap, StorageBackend};
use persistent_map_redis::{RedisBackend, Watch};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

async fn open(scratch: &Scratch, name: &str) -> RedisBackend {
    RedisBackend::builder(&scratch.url)
        .prefix(&scratch.prefix)
        .name(name)
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
        format!("redis://user:s3cret@127.0.0.1:{port}/0"),
        format!("redis://user:s3cret%2Fs3cret@127.0.0.1:{port}/0"),
        format!("redis://user:s3cret@127.0.0.1:{port}"),
        format!("redis://user@127.0.0.1:{port}?password=s3cret"),
        format!("redis://user@127.0.0.1:{port}/0?x=1&password=s3cret#frag"),
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
        let builder = RedisBackend::builder(&url).connect_timeout(Duration::from_secs(10));
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
        assert_eq!(*backend, "redis");
        assert_eq!(endpoint, &format!("127.0.0.1:{port}"));
        assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
        refused += 1;
    }
    assert!(refused >= 3, "only {refused} URLs got as far as connecting");
}

/// An ACL user of one test's own, deleted when dropped.
struct AclUser {
    admin_url: String,
    name: String,
}

impl Drop for AclUser {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime: clean up on a thread of its own.
        let done = std::thread::spawn(move || -> redis::RedisResult<()> {
            let mut conn = redis::Client::open(url)?.get_connection()?;
            redis::cmd("ACL").arg("DELUSER").arg(&name).exec(&mut conn)
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            report(&format!("warning: could not delete ACL user {}", self.name));
        }
    }
}

#[tokio::test]
async fn the_declared_durability_follows_the_servers_persistence_settings() {
    const TEST: &str = "the_declared_durability_follows_the_servers_persistence_settings";
    let Some(url) = url_or_skip(TEST) else {
        return;
    };
    let conn = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let setting = |name: &'static str| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async::<std::collections::HashMap<String, String>>(&mut conn)
                .await
                .expect("CONFIG GET")
                .remove(name)
                .expect("the setting")
        }
    };
    let (appendonly, appendfsync) = (setting("appendonly").await, setting("appendfsync").await);
    let backend = RedisBackend::builder(&url)
        .prefix(unique("pm-durability"))
        .build()
        .await
        .expect("opens");
    let declared = StorageBackend::<String, String>::capabilities(&backend).durability;
    match (appendonly.as_str(), appendfsync.as_str()) {
        ("no", _) => assert_eq!(declared, persistent_map_core::Durability::ServerManaged),
        ("yes", "always") => {
            assert_eq!(declared, persistent_map_core::Durability::OnAcknowledge)
        }
        other => report(&format!(
            "{TEST}: declared {declared:?} with appendonly/appendfsync {other:?}"
        )),
    }
}

#[tokio::test]
async fn a_flush_the_server_refuses_is_an_error() {
    const TEST: &str = "a_flush_the_server_refuses_is_an_error";
    let Some(admin_url) = url_or_skip(TEST) else {
        return;
    };
    let name = unique("pm-flush");
    let password = unique("pw");
    let mut admin = redis::Client::open(admin_url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let created: redis::RedisResult<()> = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&name)
        .arg("on")
        .arg(format!(">{password}"))
        .arg(&["~*", "&*", "+@all", "-waitaof"])
        .query_async(&mut admin)
        .await;
    let _user = AclUser {
        admin_url: admin_url.clone(),
        name: name.clone(),
    };
    if let Err(err) = created {
        // Before 7.2 WAITAOF does not exist, so an ACL cannot deny it, and
        // the server answers "unknown command" to every user.
        report(&format!(
            "SKIP: {TEST}: the server cannot deny WAITAOF (Redis before 7.2?): {err}"
        ));
        return;
    }
    let mut url = url::Url::parse(&admin_url).expect("server url");
    url.set_username(&name).expect("user");
    url.set_password(Some(&password)).expect("password");
    let scratch = Scratch::new(url.into());
    let backend = open(&scratch, "kv").await;
    StorageBackend::<String, u64>::save(&backend, "k".into(), 1)
        .await
        .expect("the user may write");
    let err = StorageBackend::<String, u64>::flush(&backend)
        .await
        .expect_err("the ACL refuses the command flush waits with");
    assert!(matches!(err, PersistentError::Backend { .. }), "{err:?}");
    assert!(shown(&err).contains("NOPERM"), "{}", shown(&err));
}

#[tokio::test]
async fn invalid_names_and_urls_are_refused_before_connecting() {
    for (prefix, name) in [
        ("app", "a:b"),
        ("with space", "kv"),
        ("", "kv"),
        ("app", ""),
    ] {
        let err = RedisBackend::builder("redis://127.0.0.1:1")
            .prefix(prefix)
            .name(name)
            .build()
            .await
            .expect_err("invalid name");
        assert!(matches!(err, PersistentError::Backend { .. }), "{err:?}");
    }
    let err = RedisBackend::new("http://user:s3cret@host")
        .await
        .expect_err("not a redis url");
    assert!(!format!("{err:?}").contains("s3cret"), "{err:?}");
}

#[tokio::test]
async fn the_hash_holds_readable_json_and_the_format_is_recorded() {
    let Some(url) = url_or_skip("the_hash_holds_readable_json_and_the_format_is_recorded") else {
        return;
    };
    let scratch = Scratch::new(url);
    let backend = open(&scratch, "users").await;
    let map: PersistentMap<u32, Vec<String>, _> =
        PersistentMap::new(backend.clone()).await.expect("map");
    map.insert(7, vec!["a".into(), "b".into()])
        .await
        .expect("insert");
    let mut conn = backend.connection();
    let raw: String = conn.hget(backend.hash_key(), "7").await.expect("hget");
    assert_eq!(raw, r#"["a","b"]"#);
    let version: u32 = conn
        .hget(backend.meta_key(), "format_version")
        .await
        .expect("meta");
    // Version 3: keys in the distinct key format, deadlines in a sorted set.
    assert_eq!(version, 3);
    assert_eq!(persistent_map_redis::FORMAT_VERSION, 3);
    map.close().await.expect("close");

    // A key of another type is refused, untouched.
    let _: () = conn
        .set(format!("{}:text", scratch.prefix), "x")
        .await
        .expect("set");
    let err = RedisBackend::builder(&scratch.url)
        .prefix(&scratch.prefix)
        .name("text")
        .build()
        .await
        .expect_err("not a hash");
    assert!(matches!(err, PersistentError::Corrupt { .. }), "{err:?}");

    // A hash written by a newer release is refused.
    let _: () = conn
        .hset(backend.meta_key(), "format_version", 99)
        .await
        .expect("hset");
    let err = RedisBackend::builder(&scratch.url)
        .prefix(&scratch.prefix)
        .name("users")
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
    // Two backends: two connections and two subscribers, as two processes would have.
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
        "redis coherence: write-to-visible latency over {WRITES} writes: median {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    ));
    report(&format!(
        "redis coherence: from the start of the write to visible in the other cache: median {:?}, p99 {:?}",
        percentile(&round_trips, 0.5),
        percentile(&round_trips, 0.99),
    ));

    b.insert("from-b".into(), 7).await.expect("insert");
    eventually("a sees b's write", || a.get("from-b") == Some(7)).await;
    a.remove(&"from-b".to_string()).await.expect("remove");
    eventually("b sees a's removal", || !b.contains_key("from-b")).await;
    a.insert_many((0..20_000).map(|i| (format!("bulk-{i:05}"), i)))
        .await
        .expect("insert_many");
    eventually("b sees the bulk insert", || b.len() == a.len()).await;
    b.clear().await.expect("clear");
    eventually("a sees the clear", || a.is_empty()).await;

    let quiet: PersistentMap<String, u64, _> = PersistentMap::new(
        RedisBackend::builder(&scratch.url)
            .prefix(&scratch.prefix)
            .name("shared")
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
        "a write without a message was followed"
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
/// again: writes fail while it is down, nothing acknowledged is lost (the
/// server fsyncs its append-only file on every write), no failed write shows
/// up, and both instances' caches resynchronise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_in_the_middle_of_a_write_stream() {
    let server = match tokio::task::spawn_blocking(RedisServer::start)
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
        RedisBackend::builder(&url)
            .name("restart")
            .connect_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_secs(2))
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
        let client = redis::Client::open(url.as_str()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let _: () = conn
            .hset("persistent-map:restart", "behind", "1")
            .await
            .expect("write behind the maps' backs");
        acknowledged.insert("behind".into(), 1);
    }

    server.kill();
    for i in 100..105 {
        let err = a.insert(key(i), i).await.expect_err("insert while down");
        // The driver does not say whether a request on a connection that
        // just died went out: the write's outcome is unknown until the map
        // reads it back, which fails while the server is down.
        assert!(
            matches!(&err, PersistentError::Connection { endpoint, .. } if endpoint == &format!("127.0.0.1:{}", server.port))
                || err.kind() == ErrorKind::OutcomeUnknown,
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
        // The manager reconnects on the first command after the restart.
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
    check::<RedisBackend>();
    check::<persistent_map_redis::RedisBuilder>();
    check::<persistent_map_redis::RedisOptions>();
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
    // The other instance reads the announced keys in the hash's format.
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
async fn a_format_1_hash_keeps_the_legacy_key_format() {
    let Some(url) = url_or_skip("a_format_1_hash_keeps_the_legacy_key_format") else {
        return;
    };
    let scratch = Scratch::new(url);
    let backend = open(&scratch, "one").await;
    let mut conn = backend.connection();
    // A hash an earlier 0.2 created: version 1.
    let _: () = conn
        .hset(backend.meta_key(), "format_version", 1)
        .await
        .expect("hset");
    let backend = open(&scratch, "one").await;
    assert_eq!(backend.key_format(), KeyFormat::Legacy);
    let map: PersistentMap<String, u32, _> =
        PersistentMap::new(backend.clone()).await.expect("opens");
    map.insert("42".into(), 1).await.expect("insert");
    map.close().await.expect("close");
    let fields: Vec<String> = conn.hkeys(backend.hash_key()).await.expect("hkeys");
    assert_eq!(fields, ["42"]);
    let version: u32 = conn
        .hget(backend.meta_key(), "format_version")
        .await
        .expect("meta");
    assert_eq!(version, 1, "the hash is not moved to the new format");

    // A hash with entries but no version (its meta hash lost) is taken as
    // legacy, and recorded so.
    let _: () = conn.del(backend.meta_key()).await.expect("del");
    let backend = open(&scratch, "one").await;
    assert_eq!(backend.key_format(), KeyFormat::Legacy);
    let map: PersistentMap<String, u32, _> = PersistentMap::new(backend).await.expect("opens");
    assert_eq!(map.get("42"), Some(1));
    map.close().await.expect("close");
    let version: u32 = conn
        .hget(open(&scratch, "one").await.meta_key(), "format_version")
        .await
        .expect("meta");
    assert_eq!(version, 1);
}
