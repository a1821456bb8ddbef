//! Damaged files, bad locations and second writers in this process: each
//! gives the documented outcome and leaves the data intact. A second writer
//! in another process is tested with real child processes in
//! `persistent-map-reliability/tests/two_processes.rs`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use persistent_map_core::{
    CodecDirection, EntryPart, PersistentError, PersistentMap, StorageBackend,
};
use persistent_map_csv::CsvBackend;

const HEADER: &str = "persistent-map-csv/2,key,value\n";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("file is readable")
}

fn append_raw(path: &Path, bytes: &str) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("opens");
    file.write_all(bytes.as_bytes()).expect("appends");
}

async fn open(
    path: &Path,
) -> persistent_map_core::Result<PersistentMap<String, String, CsvBackend>> {
    PersistentMap::new(CsvBackend::new(path)).await
}

/// Opens with a short lock timeout, where a test expects to be locked out.
async fn open_impatient(
    path: &Path,
) -> persistent_map_core::Result<PersistentMap<String, String, CsvBackend>> {
    PersistentMap::new(
        CsvBackend::builder(path)
            .lock_timeout(Duration::from_millis(100))
            .build(),
    )
    .await
}

/// Writes `a` and `b` through a map and closes it; returns the file's text.
async fn two_entries(path: &Path) -> String {
    let map = open(path).await.expect("opens");
    map.insert("a".into(), "one".into()).await.expect("inserts");
    map.insert("b\nc".into(), "two".into())
        .await
        .expect("inserts");
    map.close().await.expect("closes");
    drop(map);
    read(path)
}

async fn assert_torn_tail_is_cut(tail: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("torn.csv");
    let complete = two_entries(&path).await;
    append_raw(&path, tail);

    let map = open(&path).await.expect("a torn tail is not an error");
    assert_eq!(map.len(), 2, "tail {tail:?}");
    assert_eq!(map.get("a"), Some("one".into()));
    assert_eq!(map.get("b\nc"), Some("two".into()));
    assert_eq!(read(&path), complete, "the torn tail {tail:?} is cut off");

    map.insert("later".into(), "fine".into())
        .await
        .expect("inserts");
    map.close().await.expect("closes");
    drop(map);
    let map = open(&path).await.expect("reopens");
    assert_eq!(map.len(), 3);
    assert_eq!(map.get("later"), Some("fine".into()));
}

#[tokio::test]
async fn a_record_cut_mid_line_is_discarded_and_cut_off() {
    assert_torn_tail_is_cut("put,x,\"\"\"hal").await;
    assert_torn_tail_is_cut("put,x,\"\"\"half\"\"\"").await;
    assert_torn_tail_is_cut("pu").await;
    assert_torn_tail_is_cut("put,x,1").await;
}

#[tokio::test]
async fn a_record_cut_inside_a_quoted_newline_is_discarded() {
    // Ends with a newline, but inside the quoted key.
    assert_torn_tail_is_cut("put,\"key with\n").await;
}

#[tokio::test]
async fn a_batch_cut_inside_its_last_record_is_discarded_as_a_whole() {
    assert_torn_tail_is_cut("batch,,3,\nput,x,\"\"\"1\"\"\",\nput,y,\"\"\"2").await;
    assert_torn_tail_is_cut("batch,,2,\nput,x,\"\"\"1\"\"\",\nput,y,\"\"\"2").await;
    assert_torn_tail_is_cut("batch,,2,\nput,x,\"\"\"1\"\"\",\npu").await;
    assert_torn_tail_is_cut("batch,,2,\nba").await;
    // Cut inside a deadline.
    assert_torn_tail_is_cut("batch,,2,\nput,x,\"\"\"1\"\"\",17672").await;
    assert_torn_tail_is_cut("put,x,\"\"\"1\"\"\",1767").await;
}

#[tokio::test]
async fn a_batch_cut_at_a_page_boundary_between_records_is_discarded() {
    // The kernel splits an interrupted write at a page boundary; when one
    // falls between two records, the last record is complete.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("paged.csv");
    let complete = two_entries(&path).await;
    let head = "batch,,3,\nput,x,\"\"\"";
    let tail = "\"\"\",1767225600000\n";
    let pad = 4096 - (complete.len() + head.len() + tail.len()) % 4096;
    let cut = format!("{head}{}{tail}", "p".repeat(pad));
    append_raw(&path, &cut);
    assert_eq!(std::fs::metadata(&path).expect("stat").len() % 4096, 0);

    let map = open(&path).await.expect("a batch cut at a page boundary");
    assert_eq!(map.len(), 2);
    assert_eq!(map.get("x"), None);
    assert_eq!(read(&path), complete, "the interrupted batch is cut off");
}

/// Asserts that opening fails with a corruption error at `line` of `path`
/// and leaves the file as it was.
async fn assert_refused_at_line(path: &Path, line: u64) {
    let before = read(path);
    let err = open(path).await.expect_err("refused");
    match &err {
        PersistentError::Corrupt { location, .. } => {
            assert_eq!(location.store, path.display().to_string());
            assert_eq!(location.line, Some(line), "{err}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains(&format!("line {line}")), "{text}");
    assert_eq!(read(path), before, "nothing is changed");
}

#[tokio::test]
async fn a_batch_marker_promising_too_many_records_mid_file_is_an_error() {
    // A bit flip turned `batch,,2` into `batch,,6`: the batch's two records
    // and the three single changes written after it are all complete.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("flipped.csv");
    let text = format!(
        "{HEADER}put,a,\"\"\"1\"\"\"\nbatch,,6\nput,b,\"\"\"2\"\"\"\nput,c,\"\"\"3\"\"\"\n\
         put,d,\"\"\"4\"\"\"\ndel,a,\nput,e,\"\"\"5\"\"\"\n"
    );
    std::fs::write(&path, &text).expect("writes");
    assert_refused_at_line(&path, 3).await;
}

#[tokio::test]
async fn a_last_batch_with_complete_records_but_fewer_than_promised_is_an_error() {
    // Every record is complete and the file does not end at a page
    // boundary: not what an interrupted write leaves, so nothing is cut.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("short.csv");
    let text = format!(
        "{HEADER}put,a,\"\"\"1\"\"\"\nbatch,,3\nput,b,\"\"\"2\"\"\"\nput,c,\"\"\"3\"\"\"\n"
    );
    std::fs::write(&path, &text).expect("writes");
    assert_refused_at_line(&path, 3).await;
    std::fs::write(&path, format!("{HEADER}put,a,\"\"\"1\"\"\"\nbatch,,3\n")).expect("writes");
    assert_refused_at_line(&path, 3).await;
}

#[tokio::test]
async fn a_malformed_middle_line_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.csv");
    for bad in [
        "upsert,k,\"\"\"v\"\"\"\n",
        "put,k\n",
        "put,k,\"\"\"v\"\"\",extra\n",
    ] {
        // The multi-line key before the bad record makes record and line numbers differ.
        let text = format!("{HEADER}put,\"multi\nline\",\"\"\"v\"\"\"\n{bad}put,z,\"\"\"v\"\"\"\n");
        std::fs::write(&path, &text).expect("writes");
        let err = open(&path).await.expect_err("malformed line");
        match &err {
            PersistentError::Corrupt { location, .. } => {
                assert_eq!(location.store, path.display().to_string());
                assert_eq!(location.line, Some(4), "{bad:?}: {err}");
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("line 4"), "{err}");
        assert_eq!(read(&path), text, "nothing is changed");
    }
}

#[tokio::test]
async fn an_undecodable_value_is_an_error_with_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("typed.csv");
    let text = two_entries(&path).await;
    let err = PersistentMap::<String, u32, _>::new(CsvBackend::new(&path))
        .await
        .expect_err("strings are not numbers");
    match &err {
        PersistentError::Codec {
            direction: CodecDirection::Decode,
            part: EntryPart::Value,
            location,
            ..
        } => {
            assert_eq!(location.store, path.display().to_string());
            assert_eq!(location.line, Some(2));
            assert_eq!(location.key.as_deref(), Some("\"a\""));
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(read(&path), text, "nothing is changed");
}

#[tokio::test]
async fn an_undecodable_key_is_an_error_with_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.csv");
    let text = format!("{HEADER}put,1,\"\"\"v\"\"\"\nput,two,\"\"\"v\"\"\"\n");
    std::fs::write(&path, &text).expect("writes");
    let err = PersistentMap::<u32, String, _>::new(CsvBackend::new(&path))
        .await
        .expect_err("two is not a number");
    match &err {
        PersistentError::Codec {
            direction: CodecDirection::Decode,
            part: EntryPart::Key,
            location,
            ..
        } => {
            assert_eq!(location.line, Some(3));
            assert_eq!(location.key.as_deref(), Some("\"two\""));
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(read(&path), text);
}

#[tokio::test]
async fn a_newer_format_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("future.csv");
    let text = "persistent-map-csv/9,key,value\nput,a,1\n";
    std::fs::write(&path, text).expect("writes");
    let err = open(&path).await.expect_err("newer format");
    assert!(
        matches!(
            err,
            PersistentError::UnsupportedFormat {
                found: 9,
                supported: 5,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(read(&path), text);
}

#[tokio::test]
async fn an_unwritable_location_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "a regular file").expect("writes");
    let path = blocker.join("sub/data.csv");
    let err = open(&path).await.expect_err("parent is a file");
    match &err {
        PersistentError::Io {
            path: Some(failed), ..
        } => assert!(
            path.starts_with(failed),
            "{failed:?} is on the way to {path:?}"
        ),
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("not-a-dir"), "{err}");

    // A write without a load reports the same.
    let backend = CsvBackend::new(&path);
    let err = StorageBackend::<String, String>::save(&backend, "k".into(), "v".into())
        .await
        .expect_err("parent is a file");
    assert!(
        matches!(err, PersistentError::Io { path: Some(_), .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_second_opener_in_this_process_is_locked_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("locked.csv");
    let first = open(&path).await.expect("opens");
    first.insert("k".into(), "v".into()).await.expect("inserts");

    let err = open_impatient(&path).await.expect_err("second writer");
    match &err {
        PersistentError::Locked { path: locked } => assert_eq!(locked, &path),
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("locked.csv"), "{err}");

    // A write on a second backend is refused too, and nothing is interleaved.
    let second = CsvBackend::builder(&path)
        .lock_timeout(Duration::ZERO)
        .build();
    let err = StorageBackend::<String, String>::save(&second, "x".into(), "y".into())
        .await
        .expect_err("second writer");
    assert!(matches!(err, PersistentError::Locked { .. }), "{err:?}");

    first.close().await.expect("closes");
    drop(first);
    let again = open(&path).await.expect("the lock is released on drop");
    assert_eq!(again.get("k"), Some("v".into()));
    assert_eq!(again.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opener_waits_for_a_lock_being_released() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("handover.csv");
    let first = open(&path).await.expect("opens");
    first.insert("k".into(), "v".into()).await.expect("inserts");
    assert!(
        matches!(
            open_impatient(&path).await,
            Err(PersistentError::Locked { .. })
        ),
        "held by the first map"
    );
    // The second opener starts waiting while the first map still holds the
    // lock; the first lets go meanwhile.
    let second = tokio::spawn({
        let path = path.clone();
        async move { open(&path).await }
    });
    tokio::task::yield_now().await;
    drop(first);
    let second = second
        .await
        .expect("task")
        .expect("the lock released during the wait is taken");
    assert_eq!(second.get("k"), Some("v".into()));
}

#[tokio::test]
async fn a_writer_that_keeps_the_lock_is_refused_after_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("held.csv");
    let _first = open(&path).await.expect("opens");
    let started = std::time::Instant::now();
    let err = open_impatient(&path).await.expect_err("still held");
    assert!(matches!(err, PersistentError::Locked { .. }), "{err:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "the opener waited for the lock timeout before giving up"
    );
}

#[tokio::test]
async fn the_temporary_file_of_an_interrupted_rewrite_is_removed_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crashed.csv");
    let text = two_entries(&path).await;
    let temp = dir.path().join("crashed.csv.rewrite.tmp");
    std::fs::write(&temp, format!("{HEADER}put,a,\"\"\"half-")).expect("writes");

    let map = open(&path).await.expect("opens");
    assert!(!temp.exists(), "leftover temporary file removed");
    assert_eq!(map.len(), 2);
    assert_eq!(read(&path), text);
}

#[tokio::test]
async fn flush_syncs_and_load_reports_the_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("flush.csv");
    let backend = CsvBackend::new(&path);
    // Flushing a backend that wrote nothing touches nothing.
    StorageBackend::<String, String>::flush(&backend)
        .await
        .expect("flushes");
    assert!(!path.exists());
    StorageBackend::<String, String>::save(&backend, "k".into(), "v".into())
        .await
        .expect("saves");
    StorageBackend::<String, String>::flush(&backend)
        .await
        .expect("flushes");
    let caps = StorageBackend::<String, String>::capabilities(&backend);
    assert!(caps.atomic_batch && caps.exclusive_lock);
    assert_eq!(caps.durability, persistent_map_core::Durability::OnFlush);
    assert_eq!(
        StorageBackend::<String, String>::len(&backend)
            .await
            .expect("len"),
        1
    );
}
