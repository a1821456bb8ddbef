//! A write whose `EXEC` reply is lost, against a real server: a loopback
//! proxy between the backend and the server cuts the connection right
//! before or right after it forwards `EXEC`. The map must answer with the
//! truth: `Ok` when the write committed, a typed error when it did not or
//! when the server cannot be reached to find out.

mod common;

use std::time::Duration;

use common::{url_or_skip, Scratch};
use persistent_map_core::{ErrorKind, PersistentMap};
use persistent_map_redis::{RedisBackend, Watch};
use persistent_map_server_support::{Cut, FaultProxy};

/// What the backend sends to commit (the end of its `MULTI` pipeline).
const EXEC: &[u8] = b"$4\r\nEXEC\r\n";

/// The start of `EXEC`'s reply, an array: the replies before it (to `MULTI`
/// and the queued commands) are simple strings.
const EXEC_REPLY: &[u8] = b"*";

/// A proxy in front of the server of `url`, and `url` pointing at it.
async fn proxied(url: &str) -> (FaultProxy, String) {
    let mut through = url::Url::parse(url).expect("server url");
    let upstream = format!(
        "{}:{}",
        through.host_str().expect("a host"),
        through.port().unwrap_or(6379)
    );
    let proxy = FaultProxy::start(&upstream, EXEC, EXEC_REPLY)
        .await
        .expect("proxy");
    through.set_host(Some("127.0.0.1")).expect("host");
    through.set_port(Some(proxy.addr().port())).expect("port");
    (proxy, through.to_string())
}

async fn backend(url: &str, scratch: &Scratch) -> RedisBackend {
    RedisBackend::builder(url)
        .prefix(&scratch.prefix)
        .name("outcome")
        .watch(Watch::Disabled)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("open")
}

/// What a fresh backend, straight to the server, finds under `key`.
async fn stored(scratch: &Scratch, key: &str) -> Option<u32> {
    let map: PersistentMap<String, u32, _> =
        PersistentMap::new(backend(&scratch.url, scratch).await)
            .await
            .expect("open");
    let found = map.get(key);
    map.close().await.expect("close");
    found
}

#[tokio::test]
async fn a_commit_whose_reply_is_lost_is_read_back_and_acknowledged() {
    let Some(url) = url_or_skip("a_commit_whose_reply_is_lost_is_read_back_and_acknowledged")
    else {
        return;
    };
    let scratch = Scratch::new(url);
    let (proxy, through) = proxied(&scratch.url).await;
    let map: PersistentMap<String, u32, _> = PersistentMap::new(backend(&through, &scratch).await)
        .await
        .expect("open");

    proxy.arm(Cut::AfterCommit);
    let inserted = map.insert("k".into(), 7).await;
    assert!(proxy.fired(), "the proxy never saw the commit");
    // Before: the backend reported a Connection error although the
    // transaction had been applied.
    assert!(
        inserted.is_ok(),
        "the write committed, so the insert must succeed: {inserted:?}"
    );
    assert_eq!(map.get("k"), Some(7));
    assert_eq!(stored(&scratch, "k").await, Some(7));
    map.close().await.expect("close");
}

#[tokio::test]
async fn a_connection_cut_before_commit_fails_the_write_and_leaves_nothing() {
    let Some(url) =
        url_or_skip("a_connection_cut_before_commit_fails_the_write_and_leaves_nothing")
    else {
        return;
    };
    let scratch = Scratch::new(url);
    let (proxy, through) = proxied(&scratch.url).await;
    let map: PersistentMap<String, u32, _> = PersistentMap::new(backend(&through, &scratch).await)
        .await
        .expect("open");

    proxy.arm(Cut::BeforeCommit);
    let err = map
        .insert("k".into(), 7)
        .await
        .expect_err("the commit never reached the server");
    assert!(proxy.fired(), "the proxy never saw the commit");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::OutcomeUnknown | ErrorKind::Connection
        ),
        "{err:?}"
    );
    assert_eq!(map.get("k"), None, "the cache must not hold a failed write");
    assert_eq!(stored(&scratch, "k").await, None);

    // The map goes on working through the proxy.
    map.insert("k".into(), 8).await.expect("insert");
    assert_eq!(stored(&scratch, "k").await, Some(8));
    map.close().await.expect("close");
}

#[tokio::test]
async fn a_lost_commit_reply_with_the_server_unreachable_is_an_error() {
    let Some(url) = url_or_skip("a_lost_commit_reply_with_the_server_unreachable_is_an_error")
    else {
        return;
    };
    let scratch = Scratch::new(url);
    let (proxy, through) = proxied(&scratch.url).await;
    let backend = RedisBackend::builder(&through)
        .prefix(&scratch.prefix)
        .name("outcome")
        .watch(Watch::Disabled)
        // The read-back fails fast once the proxy refuses connections.
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("open");
    let map: PersistentMap<String, u32, _> = PersistentMap::new(backend).await.expect("open");

    proxy.arm(Cut::AfterCommitThenUnreachable);
    let err = map
        .insert("k".into(), 7)
        .await
        .expect_err("nothing can tell the map the write committed");
    assert!(proxy.fired(), "the proxy never saw the commit");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::OutcomeUnknown | ErrorKind::Connection
        ),
        "{err:?}"
    );
    // It did commit: the store holds it, whatever the caller was told.
    proxy.restore();
    assert_eq!(stored(&scratch, "k").await, Some(7));
    drop(map);
}
