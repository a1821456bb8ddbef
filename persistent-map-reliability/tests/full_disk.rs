//! Group 3: full disks and I/O errors.
//!
//! On a small real file system (a tmpfs, and a loop-mounted ext4 image
//! where the machine allows it; a visible SKIP otherwise) a map writes until
//! the disk is full: the error is `StorageFull` naming the path, the failed
//! change is absent after reopening, the cache equals the store, everything
//! flushed before is intact, and once space is freed the next writes succeed
//! with no damage in the middle of the file. Then `strace -e inject` fails
//! the K-th `write`/`pwrite64` with ENOSPC, or the K-th `fsync`/`fdatasync`
//! with EIO, for a sweep of K: every error reaches the caller, no flush
//! reports success after a failed sync (CSV), nothing flushed or
//! acknowledged is lost.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use persistent_map_core::{PersistentError, PersistentMap, StorageBackend};
use persistent_map_csv::CsvBackend;
use persistent_map_reliability::child::{error_chain, Backend, ChildArgs, Mode, Running};
use persistent_map_reliability::cycle::judge_run;
use persistent_map_reliability::model::{State, Verdict};
use persistent_map_reliability::oracle::{expect_csv, Expect};
use persistent_map_reliability::{figures, scaled, skip, stores};
use persistent_map_sqlite::SqliteBackend;

const BIN: &str = env!("CARGO_BIN_EXE_pm-child");
const STRACE: &str = "/usr/bin/strace";

/// A mounted file system, unmounted on drop.
struct Mount {
    dir: PathBuf,
    _holder: tempfile::TempDir,
    image: Option<PathBuf>,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
    }
}

fn tmpfs(size: &str) -> Result<Mount, String> {
    let holder = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = holder.path().join("mnt");
    std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(Mount {
            dir,
            _holder: holder,
            image: None,
        })
    } else {
        Err(String::from("cannot mount a tmpfs (needs root)"))
    }
}

fn ext4(size_mib: u64) -> Result<Mount, String> {
    let holder = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = holder.path().join("mnt");
    std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
    let image = holder.path().join("fs.img");
    let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
    file.set_len(size_mib << 20).map_err(|e| e.to_string())?;
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0"])
        .arg(&image)
        .output()
        .map_err(|e| format!("mkfs.ext4 not available: {e}"))?;
    if !made.status.success() {
        return Err(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&made.stderr)
        ));
    }
    let mounted = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(&dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !mounted.status.success() {
        return Err(format!(
            "cannot loop-mount an ext4 image: {}",
            String::from_utf8_lossy(&mounted.stderr).trim()
        ));
    }
    Ok(Mount {
        dir,
        _holder: holder,
        image: Some(image),
    })
}

#[derive(Debug, Default)]
struct Full {
    full_errors: u64,
    named_path: u64,
    failed_absent: u64,
    cache_eq_store: u64,
    flushed_intact: u64,
    writes_after_free: u64,
    clean_file: u64,
}

/// Fills the file system holding `path` through a map, then frees space.
async fn fill<B: StorageBackend<String, String> + Send + Sync + 'static>(
    backend: B,
    path: &Path,
    filler: &Path,
    reopen: impl AsyncFnOnce() -> State2,
    tally: &mut Full,
) {
    let map = PersistentMap::<String, String, _>::new(backend)
        .await
        .expect("opens");
    let value = "v".repeat(2000);
    let mut flushed = std::collections::BTreeMap::new();
    let mut failed_key = None;
    for i in 0..100_000_u64 {
        let key = format!("k{i:06}");
        let mut written = map
            .insert(key.clone(), format!("{i}{value}"))
            .await
            .map(drop);
        if written.is_ok() && i % 20 == 0 {
            // A checkpoint may be what hits the full disk first.
            written = map.flush().await;
            if written.is_ok() {
                flushed = map.iter().collect();
            }
        }
        match written {
            Ok(()) => {}
            Err(err) => {
                if err.is_storage_full()
                    || matches!(&err, PersistentError::Shared(e) if e.is_storage_full())
                {
                    tally.full_errors += 1;
                }
                if error_chain(&err).contains(&path.display().to_string()) {
                    tally.named_path += 1;
                } else {
                    eprintln!(
                        "full-disk error does not name {}: {}",
                        path.display(),
                        error_chain(&err)
                    );
                }
                // A failed flush leaves the acknowledged insert in place.
                failed_key = Some(if map.contains_key(&key) {
                    String::from("none")
                } else {
                    key
                });
                break;
            }
        }
    }
    let failed_key = failed_key.expect("the disk filled up");
    if !map.contains_key(&failed_key) {
        tally.failed_absent += 1;
    }
    // Free space, then write again.
    std::fs::remove_file(filler).expect("frees space");
    let mut ok_after = true;
    for i in 0..5 {
        ok_after &= map
            .insert(format!("after{i}"), String::from("x"))
            .await
            .is_ok();
    }
    if ok_after && map.flush().await.is_ok() {
        tally.writes_after_free += 1;
    }
    let cache: State2 = map.iter().collect();
    map.close().await.expect("closes");
    drop(map);
    let store = reopen().await;
    if store == cache && !store.contains_key(&failed_key) {
        tally.cache_eq_store += 1;
    }
    if flushed.iter().all(|(k, v)| store.get(k) == Some(v)) {
        tally.flushed_intact += 1;
    }
}

type State2 = std::collections::BTreeMap<String, String>;

#[tokio::test]
async fn full_disk_is_storage_full_and_recoverable() {
    let mut tally = Full::default();
    let mut filesystems = 0;
    for name in ["tmpfs", "ext4"] {
        let mut mounted_once = false;
        for backend in [Backend::Csv, Backend::Sqlite] {
            let mounted = if name == "tmpfs" {
                tmpfs("1m")
            } else {
                ext4(4)
            };
            let mount = match mounted {
                Ok(mount) => mount,
                Err(why) => {
                    skip("full_disk", &format!("{name}: {why}"));
                    break;
                }
            };
            if !mounted_once {
                filesystems += 1;
                mounted_once = true;
            }
            let path = mount.dir.join(if backend == Backend::Csv {
                "full.csv"
            } else {
                "full.db"
            });
            let filler = mount.dir.join("filler");
            std::fs::write(&filler, vec![1_u8; 256 << 10]).expect("writes the filler");
            match backend {
                Backend::Csv => {
                    let p = path.clone();
                    fill(
                        CsvBackend::new(&path),
                        &path,
                        &filler,
                        async move || {
                            let csv = CsvBackend::new(&p);
                            let state = StorageBackend::<String, String>::load_all(&csv)
                                .await
                                .expect("reopens");
                            drop(csv);
                            let bytes = std::fs::read(&p).expect("reads");
                            // No damage mid-file: every line a complete record.
                            assert!(
                                bytes.ends_with(b"\n") && !bytes.contains(&0),
                                "clean csv after a full disk"
                            );
                            state.into_iter().collect()
                        },
                        &mut tally,
                    )
                    .await;
                    tally.clean_file += 1;
                }
                Backend::Sqlite => {
                    let p = path.clone();
                    let db = SqliteBackend::new(&path).await.expect("opens");
                    fill(
                        db,
                        &path,
                        &filler,
                        async move || {
                            let db = SqliteBackend::new(&p).await.expect("reopens");
                            let state = StorageBackend::<String, String>::load_all(&db)
                                .await
                                .expect("loads");
                            let integrity = stores::integrity_check(&db).await.expect("checks");
                            assert_eq!(integrity, "ok", "sqlite intact after a full disk");
                            db.close().await;
                            state.into_iter().collect()
                        },
                        &mut tally,
                    )
                    .await;
                    tally.clean_file += 1;
                }
            }
        }
    }
    figures(
        "full_disk",
        &[
            ("filesystems", filesystems),
            ("runs", tally.clean_file),
            ("storage_full_errors", tally.full_errors),
            ("error_names_path", tally.named_path),
            ("failed_op_absent", tally.failed_absent),
            ("cache_eq_store", tally.cache_eq_store),
            ("flushed_intact", tally.flushed_intact),
            ("writes_after_free", tally.writes_after_free),
        ],
    );
    if filesystems == 0 {
        return;
    }
    let runs = tally.clean_file;
    assert_eq!(
        (
            tally.full_errors,
            tally.named_path,
            tally.failed_absent,
            tally.cache_eq_store,
            tally.flushed_intact,
            tally.writes_after_free
        ),
        (runs, runs, runs, runs, runs, runs),
        "{tally:?}"
    );
}

/// Counts each syscall of a clean child run under `strace -c`.
fn syscall_counts(args: &ChildArgs) -> Option<std::collections::HashMap<String, u64>> {
    let log = tempfile::NamedTempFile::new().ok()?;
    let status = Command::new(STRACE)
        .args([
            "-f",
            "-c",
            "-e",
            "trace=write,pwrite64,fsync,fdatasync",
            "-o",
        ])
        .arg(log.path())
        .arg(BIN)
        .args(args.to_args())
        .stdout(std::process::Stdio::null())
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    let text = std::fs::read_to_string(log.path()).ok()?;
    Some(
        text.lines()
            .filter_map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let name = (*cols.last()?).to_owned();
                let calls = cols.get(3)?.parse().ok()?;
                Some((name, calls))
            })
            .collect(),
    )
}

/// Whether the injected call of an strace log was on a file descriptor
/// opened as a directory (`openat(..., O_RDONLY|O_CLOEXEC) = fd` of a path
/// without the store's file name).
fn injected_on_directory(trace: &str) -> bool {
    let mut opened: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for line in trace.lines() {
        if let Some(rest) = line.split_once("openat(AT_FDCWD, \"").map(|(_, r)| r) {
            if let (Some((path, _)), Some((_, fd))) = (rest.split_once('"'), rest.rsplit_once("= "))
            {
                opened.insert(fd.trim().to_owned(), path.to_owned());
            }
        } else if line.contains("(INJECTED)") {
            let fd = line
                .split_once('(')
                .and_then(|(_, r)| r.split_once(')'))
                .map(|(fd, _)| fd.trim().to_owned());
            return fd
                .and_then(|fd| opened.get(&fd))
                .is_some_and(|path| Path::new(path).is_dir());
        }
    }
    false
}

#[derive(Debug, Default)]
struct Sweep {
    directory_syncs: u64,
    runs: u64,
    injected: u64,
    errors_reported: u64,
    swallowed: u64,
    false_flush_ok: u64,
    lost: u64,
    crashed: u64,
}

#[tokio::test]
async fn injected_enospc_and_eio_reach_the_caller() {
    if !Path::new(STRACE).exists() {
        skip(
            "inject_sweep",
            "strace is not installed at /usr/bin/strace: injection sweep not run",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sweep = Sweep::default();
    let points = scaled(12) as u64;
    for backend in [Backend::Csv, Backend::Sqlite] {
        let (write_call, sync_calls): (&str, &[&str]) = match backend {
            Backend::Csv => ("write", &["fdatasync", "fsync"]),
            Backend::Sqlite => ("pwrite64", &["fsync", "fdatasync"]),
        };
        let mut cases: Vec<(String, &str)> = vec![(write_call.to_owned(), "ENOSPC")];
        cases.extend(sync_calls.iter().map(|s| ((*s).to_owned(), "EIO")));
        for (call, errno) in cases {
            let template = {
                let ext = if backend == Backend::Csv { "csv" } else { "db" };
                let counting = dir.path().join(format!("count-{call}.{ext}"));
                let mut a = ChildArgs::new(backend, counting, Mode::Through, 77);
                a.ops = 40;
                a.flush_every = 5;
                a.sync_full = true;
                a
            };
            let counts = syscall_counts(&template).expect("strace -c runs");
            let total = counts.get(&call).copied().unwrap_or(0);
            if total == 0 {
                continue;
            }
            let stride = (total / points).max(1);
            let mut k = 1;
            while k <= total {
                let path = dir.path().join(format!(
                    "{call}-{k}.{}",
                    if backend == Backend::Csv { "csv" } else { "db" }
                ));
                let mut args = template.clone();
                args.path = path.clone();
                let log = dir.path().join(format!("{call}-{k}.strace"));
                let mut command = Command::new(STRACE);
                command
                    .args([
                        "-f",
                        "-qq",
                        "-e",
                        &format!("trace={call},openat"),
                        "-e",
                        &format!("inject={call}:error={errno}:when={k}"),
                        "-o",
                    ])
                    .arg(&log)
                    .arg(BIN)
                    .args(args.to_args());
                let t = Running::start(command)
                    .expect("starts")
                    .finish(Duration::from_secs(60));
                sweep.runs += 1;
                let trace = std::fs::read_to_string(&log).unwrap_or_default();
                let injected = trace.contains("(INJECTED)");
                // SQLite ignores a failed fsync of the directory (after it
                // creates a journal) by design; that is not a swallowed error.
                if backend == Backend::Sqlite && injected_on_directory(&trace) {
                    sweep.directory_syncs += 1;
                    k += stride;
                    continue;
                }
                // Exit code 3: the open failed and said so, which is fine.
                let ended_well = t.status.is_some_and(|s| s.success() || s.code() == Some(3));
                if t.timed_out || !ended_well {
                    eprintln!(
                        "{call} k={k}: child did not finish: {:?} {}",
                        t.status, t.stderr
                    );
                    sweep.crashed += 1;
                }
                let reported = !t.errors.is_empty()
                    || !t.flush_errors.is_empty()
                    || t.open_error.is_some()
                    || t.close_error.is_some();
                if injected {
                    sweep.injected += 1;
                    if reported {
                        sweep.errors_reported += 1;
                    } else {
                        eprintln!("{call} k={k}: injected {errno} but no error reached the caller");
                        sweep.swallowed += 1;
                    }
                }
                // CSV: after a failed sync no later flush may succeed.
                if backend == Backend::Csv && errno == "EIO" {
                    if let Some((first_fail, _)) = t.flush_errors.first() {
                        if t.flushed.is_some_and(|f| f > *first_fail) {
                            eprintln!("{call} k={k}: flush Ok after a failed sync");
                            sweep.false_flush_ok += 1;
                        }
                    }
                }
                if t.opened {
                    let store = stores::reopen(backend, &path)
                        .await
                        .expect("reopens after the injected error")
                        .state;
                    let judged = judge_run(&State::new(), &args, &t, &store);
                    if !matches!(judged.verdict, Verdict::Prefix(_)) {
                        eprintln!("{call} k={k}: {judged:?}");
                        sweep.lost += 1;
                    }
                    if backend == Backend::Csv {
                        let bytes = std::fs::read(&path).expect("reads");
                        if !matches!(expect_csv(&bytes), Expect::Entries(_)) {
                            eprintln!("{call} k={k}: damaged csv");
                            sweep.lost += 1;
                        }
                    }
                }
                k += stride;
            }
        }
    }
    figures(
        "inject_sweep",
        &[
            ("runs", sweep.runs),
            ("injected", sweep.injected),
            ("sqlite_dir_syncs_ignored", sweep.directory_syncs),
            ("errors_reported", sweep.errors_reported),
            ("swallowed", sweep.swallowed),
            ("false_flush_ok", sweep.false_flush_ok),
            ("lost_or_damaged", sweep.lost),
            ("child_crashed", sweep.crashed),
        ],
    );
    assert!(sweep.injected > 0);
    assert_eq!(
        (
            sweep.swallowed,
            sweep.false_flush_ok,
            sweep.lost,
            sweep.crashed
        ),
        (0, 0, 0, 0),
        "{sweep:?}"
    );
}
