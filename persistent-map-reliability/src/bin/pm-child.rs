//! The child process of the reliability harness: opens a store, runs a
//! seeded stream of changes and reports each acknowledgement on stdout (see
//! `persistent_map_reliability::child` for the protocol).

use std::fs::File;
use std::io::{IoSlice, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use persistent_map_core::{
    async_trait, BatchOp, Capabilities, PersistentError, PersistentMap, Result, StorageBackend,
    WriteBehind,
};
use persistent_map_csv::fault::FileIo;
use persistent_map_csv::{Compaction, CsvBackend};
use persistent_map_reliability::child::{
    error_chain, error_kind, Backend, ChildArgs, Crash, Exit, Mode,
};
use persistent_map_reliability::stream::{op_at, Op};
use persistent_map_sqlite::{JournalMode, SqliteBackend, Synchronous};

/// A writer that hands each buffer to one `writev` call on a duplicate of a
/// standard stream: unbuffered, so a kill loses nothing printed, and not a
/// `write` call, so `strace -e inject=write` never hits the report.
struct Vectored(Option<File>);

impl Vectored {
    fn stdout() -> Self {
        Self(
            std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .map(File::from),
        )
    }

    fn stderr() -> Self {
        Self(
            std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .map(File::from),
        )
    }

    fn line(&mut self, text: &str) {
        let mut bytes = Vec::with_capacity(text.len() + 1);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(b'\n');
        let _ = self.write_all(&bytes);
    }
}

impl Write for Vectored {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            Some(file) => file.write_vectored(&[IoSlice::new(buf)]),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// File I/O that aborts the process at a chosen point.
#[derive(Debug)]
struct CrashIo {
    crash: Crash,
    at: u64,
    seen: AtomicU64,
}

impl CrashIo {
    fn hit(&self, point: Crash) {
        if self.crash == point && self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
            std::process::abort();
        }
    }
}

impl FileIo for CrashIo {
    fn append(&self, file: &File, _path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut handle = file;
        handle.write_all(bytes)?;
        self.hit(Crash::CsvAppend);
        Ok(())
    }

    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        // Called right after the rename of a rewrite.
        self.hit(Crash::CsvCompactRename);
        File::open(dir)?.sync_all()
    }
}

/// A backend that aborts right after the `at`-th commit of its inner
/// backend succeeded, before the map hears of it.
#[derive(Debug)]
struct CrashAfterCommit<B> {
    inner: B,
    at: u64,
    seen: AtomicU64,
}

#[async_trait]
impl<B: StorageBackend<String, u64> + Send + Sync> StorageBackend<String, u64>
    for CrashAfterCommit<B>
{
    async fn load_all(&self) -> Result<std::collections::HashMap<String, u64>> {
        self.inner.load_all().await
    }
    async fn save(&self, key: String, value: u64) -> Result<()> {
        self.apply_batch(&[BatchOp::Put { key, value }]).await
    }
    async fn delete(&self, key: &String) -> Result<()> {
        self.apply_batch(&[BatchOp::Delete { key: key.clone() }])
            .await
    }
    async fn apply_batch(&self, batch: &[BatchOp<String, u64>]) -> Result<()> {
        self.inner.apply_batch(batch).await?;
        if self.at > 0 && self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
            std::process::abort();
        }
        Ok(())
    }
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
    async fn clear(&self) -> Result<()> {
        self.inner.clear().await
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// What the child needs of a backend beyond the trait.
#[async_trait]
trait Store: StorageBackend<String, u64> + Send + Sync + 'static {
    async fn compact(&self) -> Result<()>;
}

#[async_trait]
impl Store for CsvBackend {
    async fn compact(&self) -> Result<()> {
        CsvBackend::compact(self).await
    }
}

#[async_trait]
impl Store for CrashAfterCommit<SqliteBackend> {
    async fn compact(&self) -> Result<()> {
        Ok(())
    }
}

fn report(out: &mut Vectored, tag: &str, err: &PersistentError) {
    out.line(&format!("{tag} {} {}", error_kind(err), error_chain(err)));
}

async fn run<B: Store>(args: &ChildArgs, backend: B, out: &mut Vectored) -> i32 {
    if args.load_only {
        match backend.load_all().await {
            Ok(entries) => {
                let mut sorted: Vec<_> = entries.into_iter().collect();
                sorted.sort();
                for (key, value) in &sorted {
                    let key = serde_json::to_string(key).unwrap_or_default();
                    out.line(&format!("entry {key} {value}"));
                }
                out.line(&format!("loaded {}", sorted.len()));
            }
            Err(err) => report(out, "load_err", &err),
        }
        out.line("done");
        return 0;
    }
    let builder = PersistentMap::builder(backend);
    let builder = match args.mode {
        Mode::Through => builder.write_through(),
        Mode::Behind => {
            builder.write_behind(WriteBehind::new().max_delay(Duration::from_millis(2)))
        }
    };
    let map = match builder.build().await {
        Ok(map) => map,
        Err(err) => {
            report(out, "open_err", &err);
            return 3;
        }
    };
    out.line(&format!("opened {}", map.len()));
    if args.hold {
        let mut line = String::new();
        let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    }
    let mut done = 0_u64;
    while done < args.ops {
        let i = done;
        let result = match op_at(args.seed, args.keys, i) {
            Op::Put { key, value } => map
                .insert(format!("{}{key}", args.key_prefix), value)
                .await
                .map(drop),
            Op::Del { key } => map
                .remove(&format!("{}{key}", args.key_prefix))
                .await
                .map(drop),
        };
        match result {
            Ok(()) => out.line(&format!("ack {i}")),
            Err(err) => report(out, &format!("err {i}"), &err),
        }
        done += 1;
        if args.flush_every > 0 && done.is_multiple_of(args.flush_every) {
            match map.flush().await {
                Ok(()) => out.line(&format!("flushed {done}")),
                Err(err) => report(out, &format!("flush_err {done}"), &err),
            }
        }
        if args.compact_every > 0 && done.is_multiple_of(args.compact_every) {
            match map.backend().compact().await {
                Ok(()) => out.line(&format!("compacted {done}")),
                Err(err) => report(out, &format!("compact_err {done}"), &err),
            }
        }
    }
    match args.exit {
        Exit::Close => {
            match map.flush().await {
                Ok(()) => out.line(&format!("flushed {done}")),
                Err(err) => report(out, &format!("flush_err {done}"), &err),
            }
            match map.close().await {
                Ok(()) => out.line("closed"),
                Err(err) => report(out, "close_err", &err),
            }
        }
        Exit::Return => drop(map),
        Exit::Abort => std::process::abort(),
    }
    out.line("done");
    0
}

async fn open_and_run(args: &ChildArgs, out: &mut Vectored) -> i32 {
    if args.gate {
        out.line("ready");
        // Blocks the runtime's only thread on purpose: nothing else runs yet.
        let _ = std::io::stdin().read_line(&mut String::new());
    }
    match args.backend {
        Backend::Csv => {
            let io = Arc::new(CrashIo {
                crash: args.crash,
                at: args.crash_at,
                seen: AtomicU64::new(0),
            });
            let backend = CsvBackend::builder(&args.path)
                // Compaction runs when the stream asks for it, or with
                // the default policy; small thresholds make it frequent.
                .compaction(Compaction::when_dead(200, 50))
                .lock_timeout(Duration::from_millis(args.busy_ms))
                .file_io(io)
                .build();
            run(args, backend, out).await
        }
        Backend::Sqlite => {
            let opened = SqliteBackend::builder(&args.path)
                .synchronous(if args.sync_full {
                    Synchronous::Full
                } else {
                    Synchronous::Normal
                })
                .journal_mode(if args.journal_delete {
                    JournalMode::Delete
                } else {
                    JournalMode::Wal
                })
                .busy_timeout(Duration::from_millis(args.busy_ms))
                .build()
                .await;
            let inner = match opened {
                Ok(inner) => inner,
                Err(err) => {
                    report(
                        out,
                        if args.load_only {
                            "load_err"
                        } else {
                            "open_err"
                        },
                        &err,
                    );
                    return 3;
                }
            };
            let at = if args.crash == Crash::SqliteCommit {
                args.crash_at
            } else {
                0
            };
            let backend = CrashAfterCommit {
                inner,
                at,
                seen: AtomicU64::new(0),
            };
            run(args, backend, out).await
        }
    }
}

fn main() {
    let mut out = Vectored::stdout();
    let args = match ChildArgs::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            out.line(&format!("usage_err {message}"));
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(Vectored::stderr)
        .init();
    // No I/O driver: its wake-ups are `write` calls on an eventfd, which
    // `strace -e inject=write` would hit instead of the store's writes.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            out.line(&format!("usage_err runtime: {err}"));
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(open_and_run(&args, &mut out));
    drop(runtime);
    std::process::exit(code);
}
