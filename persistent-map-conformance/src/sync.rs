//! "Flushed means durable", checked where it can be: on Linux, a child
//! process (this test executable run again) writes and flushes under
//! `strace`, and the trace must show a sync of a file of the store issued
//! after the last write to one.
//!
//! Why not elsewhere: no other platform has a tracer the suite can count on
//! (macOS `dtruss` needs System Integrity Protection off and root, Windows
//! has no standard one), and nothing short of tracing system calls tells a
//! synced write from an unsynced one: both read back the same until the
//! power goes.

use persistent_map_core::{Durability, PersistentMap, StorageBackend};

use crate::child::{self, ChildRun};
use crate::factory::StoreFactory;
use crate::harness::skip_notice;

const CASE: &str = "flush_syncs_the_store_files";

/// The system calls that make data durable.
const SYNC_CALLS: [&str; 6] = [
    "fsync",
    "fdatasync",
    "sync_file_range",
    "msync",
    "sync",
    "syncfs",
];
/// The system calls that hand data to a file.
const WRITE_CALLS: [&str; 5] = ["write", "pwrite64", "writev", "pwritev", "pwritev2"];
/// The system call the child makes on purpose to mark where it is in the
/// trace: nothing else in a test process asks for its parent's id.
const MARK_CALL: &str = "getppid";

/// "Flushed means durable: when `flush` returns `Ok`, every change
/// acknowledged before the call is durable on the medium (fsync or the
/// medium's equivalent)": between the first acknowledged write and the
/// return of `flush`, the trace of a child that writes and flushes shows a
/// sync call (`fsync`, `fdatasync`, `sync_file_range`, `msync`, `sync`,
/// `syncfs`) on a file of the store, issued after the last write to one.
///
/// Held to it: backends that declare [`Durability::OnFlush`] or
/// [`Durability::OnAcknowledge`] and whose factory names the store's files
/// ([`files`](StoreFactory::files)) and opens it in another process
/// ([`locator`](StoreFactory::locator), [`attach`](StoreFactory::attach)).
/// Runs on Linux with `strace` installed, and prints a `SKIP:` notice
/// otherwise.
pub async fn flush_syncs_the_store_files<F: StoreFactory>(mut factory: F) {
    if let Some(locator) = child::role(CASE) {
        return write_and_flush(factory, &locator).await;
    }
    let backend = factory.fresh().await.expect("factory opens a fresh store");
    let durability = StorageBackend::<String, String>::capabilities(&backend).durability;
    if !matches!(durability, Durability::OnFlush | Durability::OnAcknowledge) {
        skip_notice(
            CASE,
            &format!(
                "the backend declares {durability:?}, which does not promise that flush syncs"
            ),
        );
        return;
    }
    let files = factory.files();
    if files.is_empty() {
        skip_notice(
            CASE,
            &"the factory names no files (StoreFactory::files): not a file store",
        );
        return;
    }
    let Some(locator) = factory.locator() else {
        skip_notice(
            CASE,
            &"the factory gives no locator (StoreFactory::locator and attach) \
              to open its store from a child process",
        );
        return;
    };
    drop(backend);
    if let Err(why) = tracer() {
        skip_notice(CASE, &why);
        return;
    }
    let trace_dir = std::env::temp_dir().join(format!(
        "pm-conformance-strace-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&trace_dir).expect("a directory for the trace");
    let trace = trace_dir.join("trace");
    let calls: Vec<&str> = SYNC_CALLS
        .iter()
        .chain(WRITE_CALLS.iter())
        .chain([MARK_CALL].iter())
        .copied()
        .collect();
    let wrapper: Vec<std::ffi::OsString> = vec![
        "strace".into(),
        "-f".into(),
        "-qq".into(),
        "-y".into(),
        "-e".into(),
        format!("trace={}", calls.join(",")).into(),
        "-o".into(),
        trace.clone().into(),
        "--".into(),
    ];
    let run = ChildRun::start(CASE, &locator, &wrapper)
        .unwrap_or_else(|why| panic!("{CASE}: cannot start the child under strace: {why}"));
    let (events, stderr) = run.finish().await;
    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&trace_dir);
    assert!(
        events.iter().any(|event| event == "flushed"),
        "{CASE}: the child under strace did not write and flush ({events:?}):\n{stderr}"
    );
    let roots: Vec<String> = files
        .iter()
        .map(|path| {
            std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.clone())
                .display()
                .to_string()
        })
        .collect();
    if let Err(why) = check_trace(&text, &roots) {
        panic!(
            "{CASE}: the backend declares {durability:?}, but {why} \
             (store files: {roots:?})"
        );
    }
}

/// Whether `strace` can run and trace a child here.
fn tracer() -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        return Err(String::from(
            "syncs are checked on Linux only, with strace (see the module docs for why)",
        ));
    }
    match std::process::Command::new("strace")
        .args(["-qq", "-e", "trace=none", "--", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "strace cannot trace here (is ptrace allowed?): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(err) => Err(format!("strace is not installed ({err})")),
    }
}

/// The child half: open, mark, write, mark, flush, mark.
async fn write_and_flush<F: StoreFactory>(mut factory: F, locator: &str) {
    let backend = factory
        .attach(locator)
        .await
        .unwrap_or_else(|err| panic!("{CASE} child: attach {locator}: {err}"));
    let map = PersistentMap::<String, String, _>::new(backend)
        .await
        .unwrap_or_else(|err| panic!("{CASE} child: open a map: {err}"));
    mark();
    for i in 0..20 {
        map.insert(format!("k{i}"), format!("v{i}"))
            .await
            .unwrap_or_else(|err| panic!("{CASE} child: insert: {err}"));
    }
    mark();
    map.flush()
        .await
        .unwrap_or_else(|err| panic!("{CASE} child: flush: {err}"));
    mark();
    // Syncs after the third mark (close, drop) do not count.
    drop(map);
    child::report("flushed");
}

#[cfg(unix)]
fn mark() {
    let _ = std::os::unix::process::parent_id();
}

#[cfg(not(unix))]
fn mark() {}

/// Checks that between the first and the third mark a sync of a store file
/// follows the last write to one.
fn check_trace(text: &str, roots: &[String]) -> Result<(), String> {
    let mut marks = 0;
    let mut last_write = None;
    let mut last_sync = None;
    let mut syncs_elsewhere = 0;
    for (n, line) in text.lines().enumerate() {
        // `<pid> <call>(<args>) = <result>`, or `<... call resumed>` for a
        // call another thread interrupted: the start line carries the fd.
        let call_and_args = line
            .split_once(' ')
            .map_or(line, |(_, rest)| rest)
            .trim_start();
        if call_and_args.starts_with("<...") || call_and_args.starts_with("+++") {
            continue;
        }
        let Some((call, args)) = call_and_args.split_once('(') else {
            continue;
        };
        if call == MARK_CALL {
            marks += 1;
            continue;
        }
        if marks == 0 || marks >= 3 {
            continue;
        }
        let on_store = roots.iter().any(|root| args.contains(root.as_str()));
        if WRITE_CALLS.contains(&call) && on_store {
            last_write = Some(n);
        } else if SYNC_CALLS.contains(&call) {
            // `sync` and `syncfs` cover every file; the others name theirs.
            if on_store || call == "sync" || call == "syncfs" {
                last_sync = Some(n);
            } else {
                syncs_elsewhere += 1;
            }
        }
    }
    if marks < 3 {
        return Err(format!(
            "the trace is incomplete ({marks} of 3 marks): did the child run?"
        ));
    }
    match (last_write, last_sync) {
        (None, _) => Err(String::from(
            "the trace shows no write to a file of the store while the child wrote and flushed",
        )),
        (Some(_), None) => Err(format!(
            "flush returned Ok without any sync call on a file of the store \
             ({syncs_elsewhere} sync calls on other files)"
        )),
        (Some(write), Some(sync)) if sync < write => Err(String::from(
            "the last sync of a store file came before the last write to one: \
             that write was not synced when flush returned",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::check_trace;

    const ROOT: &str = "/tmp/store";

    #[test]
    fn a_sync_after_the_last_write_passes() {
        let trace = "1 getppid() = 0\n\
                     1 write(5</tmp/store/a.csv>, \"x\", 1) = 1\n\
                     1 getppid() = 0\n\
                     2 fsync(5</tmp/store/a.csv> <unfinished ...>\n\
                     1 <... fsync resumed>) = 0\n\
                     1 getppid() = 0\n";
        assert_eq!(check_trace(trace, &[ROOT.into()]), Ok(()));
    }

    #[test]
    fn no_sync_or_a_sync_before_the_last_write_fails() {
        let none = "1 getppid() = 0\n\
                    1 write(5</tmp/store/a.csv>, \"x\", 1) = 1\n\
                    1 getppid() = 0\n\
                    1 fsync(7</tmp/other>) = 0\n\
                    1 getppid() = 0\n";
        assert!(check_trace(none, &[ROOT.into()]).is_err());
        let early = "1 getppid() = 0\n\
                     1 fsync(5</tmp/store/a.csv>) = 0\n\
                     1 write(5</tmp/store/a.csv>, \"x\", 1) = 1\n\
                     1 getppid() = 0\n\
                     1 getppid() = 0\n\
                     1 fsync(5</tmp/store/a.csv>) = 0\n";
        assert!(check_trace(early, &[ROOT.into()]).is_err());
    }
}
