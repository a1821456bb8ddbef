//! A write whose `COMMIT` reply is lost, against a real server: a loopback
//! proxy between the backend and the server cuts the connection right
//! before or right after it forwards `COMMIT`. The map must answer with the
//! truth: `Ok` when the write committed, a typed error when it did not or
//! when the server cannot be reached to find out.

mod common;

use std::time::{Duration, UNIX_EPOCH};

use common::{url_or_skip, Scratch};
use persistent_map_core::{BatchOp, ErrorKind, PersistentMap, StorageBackend};
use persistent_map_postgres::{PostgresBackend, Watch};
use persistent_map_server_support::{Cut, FaultProxy};

/// What sqlx sends to commit (a simple query) and the command tag the
/// server answers it with.
const COMMIT: &[u8] = b"COMMIT\0";

/// A proxy in front of the server of `url`, and `url` pointing at it.
async fn proxied(url: &str) -> (FaultProxy, String) {
    let mut through = url::Url::parse(url).expect("server url");
    let upstream = format!(
        "{}:{}",
        through.host_str().expect("a host"),
        through.port().unwrap_or(5432)
    );
    let proxy = FaultProxy::start(&upstream, COMMIT, COMMIT)
        .await
        .expect("proxy");
    through.set_host(Some("127.0.0.1")).expect("host");
    through.set_port(Some(proxy.addr().port())).expect("port");
    (proxy, through.to_string())
}

async fn backend(url: &str, scratch: &Scratch) -> PostgresBackend {
    PostgresBackend::builder(url)
        .schema(&scratch.schema)
        .table("outcome")
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
    // Before: the backend reported a Connection error although the write
    // had committed.
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
    let backend = PostgresBackend::builder(&through)
        .schema(&scratch.schema)
        .table("outcome")
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

#[tokio::test]
async fn the_lost_commit_reply_of_a_move_to_format_4_is_read_back_with_its_deadline() {
    let Some(url) = url_or_skip("the_lost_commit_reply_of_a_move_to_format_4_is_read_back") else {
        return;
    };
    let scratch = Scratch::new(url);
    common::create_pre_expiry_table(&scratch.url, &scratch.schema, "outcome", 3, &[]).await;
    let (proxy, through) = proxied(&scratch.url).await;
    let backend = backend(&through, &scratch).await;
    let deadline = UNIX_EPOCH + Duration::from_millis(4_102_444_800_123);
    let batch = [BatchOp::PutExpiring {
        key: "k".to_owned(),
        value: 7_u32,
        expires_at: deadline,
    }];

    proxy.arm(Cut::AfterCommit);
    let err = StorageBackend::<String, u32>::apply_batch(&backend, &batch)
        .await
        .expect_err("the reply was lost");
    assert!(proxy.fired(), "the proxy never saw the commit");
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err:?}");
    // What the map reads back to settle it: the backend does not know the
    // move committed, and must find the deadline anyway.
    let found = StorageBackend::<String, u32>::load_keys_with_expiry(&backend, &["k".to_owned()])
        .await
        .expect("read back");
    assert_eq!(found, [("k".to_owned(), Some((7, Some(deadline))))]);
}
