//! The `pm-child` protocol: its options, how to run it, and what it printed.
//!
//! The child prints one line per event on stdout, written with a single
//! `writev` call each and never buffered, so whatever it printed before a
//! `SIGKILL` reaches the parent, and fault injection aimed at `write` calls
//! never hits the report itself:
//!
//! ```text
//! opened <entries>          the map is open
//! open_err <kind> <error>   it did not open
//! ack <i>                   change i returned Ok
//! err <i> <kind> <error>    change i returned an error
//! flushed <n>               a flush returned Ok: changes 0..n are durable
//! flush_err <n> <kind> <error>
//! compacted <n> | compact_err <n> <kind> <error>
//! entry <key> <value>       load-only mode: one loaded entry (key as JSON)
//! loaded <entries> | load_err <kind> <error>
//! closed | close_err <kind> <error>
//! done                      main is about to return
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use persistent_map_core::PersistentError;

use crate::model::State;

/// The storage engine a child opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `SqliteBackend`.
    Sqlite,
    /// `CsvBackend`.
    Csv,
}

/// How the child's map persists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every write returns once the backend accepted it.
    Through,
    /// Writes return once queued.
    Behind,
}

/// Where the child aborts on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// Nowhere.
    None,
    /// CSV: right after the `crash_at`-th append reached the file, before
    /// it is synced or acknowledged.
    CsvAppend,
    /// SQLite: right after the `crash_at`-th commit, before the map hears of it.
    SqliteCommit,
    /// CSV: in the `crash_at`-th rewrite (compaction), between the rename and
    /// the directory sync.
    CsvCompactRename,
}

/// How the child ends once its changes are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `flush().await`, then `close().await`.
    Close,
    /// Return from `main` without flushing (the map is dropped).
    Return,
    /// `std::process::abort()` without flushing.
    Abort,
}

/// The options of one child run.
#[derive(Debug, Clone)]
pub struct ChildArgs {
    /// The engine.
    pub backend: Backend,
    /// The store: a CSV file or a SQLite database file.
    pub path: PathBuf,
    /// Write-through or write-behind.
    pub mode: Mode,
    /// The stream seed.
    pub seed: u64,
    /// The size of the key space.
    pub keys: u32,
    /// How many changes to make (`u64::MAX`: until killed).
    pub ops: u64,
    /// A prefix put before every key, to tell two children's keys apart.
    pub key_prefix: String,
    /// Flush after every this many changes (0: never).
    pub flush_every: u64,
    /// CSV: compact after every this many changes (0: never).
    pub compact_every: u64,
    /// Where to abort.
    pub crash: Crash,
    /// At which occurrence of the crash point (1-based).
    pub crash_at: u64,
    /// How to end.
    pub exit: Exit,
    /// SQLite: `synchronous = FULL` instead of `NORMAL`.
    pub sync_full: bool,
    /// SQLite: the `DELETE` rollback journal instead of WAL.
    pub journal_delete: bool,
    /// SQLite: the busy timeout; CSV: the lock timeout; in milliseconds.
    pub busy_ms: u64,
    /// After opening, wait for a line (or EOF) on stdin before writing.
    pub hold: bool,
    /// Before opening, print `ready` and wait for a line (or EOF) on stdin,
    /// so that several children can be let go at the same instant.
    pub gate: bool,
    /// Only load the store and print its entries.
    pub load_only: bool,
}

impl ChildArgs {
    /// A write-through run of `ops` changes on `path`, closing at the end.
    #[must_use]
    pub fn new(backend: Backend, path: impl Into<PathBuf>, mode: Mode, seed: u64) -> Self {
        Self {
            backend,
            path: path.into(),
            mode,
            seed,
            keys: 32,
            ops: u64::MAX,
            key_prefix: String::new(),
            flush_every: 0,
            compact_every: 0,
            crash: Crash::None,
            crash_at: 1,
            exit: Exit::Close,
            sync_full: false,
            journal_delete: false,
            busy_ms: 5000,
            hold: false,
            gate: false,
            load_only: false,
        }
    }

    /// The command-line arguments for these options.
    #[must_use]
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!(
                "--backend={}",
                match self.backend {
                    Backend::Sqlite => "sqlite",
                    Backend::Csv => "csv",
                }
            ),
            format!("--path={}", self.path.display()),
            format!(
                "--mode={}",
                match self.mode {
                    Mode::Through => "through",
                    Mode::Behind => "behind",
                }
            ),
            format!("--seed={}", self.seed),
            format!("--keys={}", self.keys),
            format!("--ops={}", self.ops),
            format!("--key-prefix={}", self.key_prefix),
            format!("--flush-every={}", self.flush_every),
            format!("--compact-every={}", self.compact_every),
            format!(
                "--crash={}",
                match self.crash {
                    Crash::None => "none",
                    Crash::CsvAppend => "csv-append",
                    Crash::SqliteCommit => "sqlite-commit",
                    Crash::CsvCompactRename => "csv-compact-rename",
                }
            ),
            format!("--crash-at={}", self.crash_at),
            format!(
                "--exit={}",
                match self.exit {
                    Exit::Close => "close",
                    Exit::Return => "return",
                    Exit::Abort => "abort",
                }
            ),
            format!("--busy-ms={}", self.busy_ms),
        ];
        if self.sync_full {
            args.push(String::from("--sync-full"));
        }
        if self.journal_delete {
            args.push(String::from("--journal-delete"));
        }
        if self.hold {
            args.push(String::from("--hold"));
        }
        if self.gate {
            args.push(String::from("--gate"));
        }
        if self.load_only {
            args.push(String::from("--load-only"));
        }
        args
    }

    /// Reads the options back from command-line arguments.
    ///
    /// # Errors
    ///
    /// A message naming the first argument that is not understood.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut out = Self::new(Backend::Csv, PathBuf::new(), Mode::Through, 0);
        for arg in args {
            let (name, value) = arg.split_once('=').unwrap_or((arg.as_str(), ""));
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("bad number in {arg}"))
            };
            match name {
                "--backend" => {
                    out.backend = match value {
                        "sqlite" => Backend::Sqlite,
                        "csv" => Backend::Csv,
                        _ => return Err(format!("bad backend in {arg}")),
                    }
                }
                "--path" => out.path = PathBuf::from(value),
                "--mode" => {
                    out.mode = match value {
                        "through" => Mode::Through,
                        "behind" => Mode::Behind,
                        _ => return Err(format!("bad mode in {arg}")),
                    }
                }
                "--seed" => out.seed = number()?,
                "--keys" => out.keys = u32::try_from(number()?).map_err(|e| e.to_string())?,
                "--ops" => out.ops = number()?,
                "--key-prefix" => out.key_prefix = value.to_owned(),
                "--flush-every" => out.flush_every = number()?,
                "--compact-every" => out.compact_every = number()?,
                "--crash" => {
                    out.crash = match value {
                        "none" => Crash::None,
                        "csv-append" => Crash::CsvAppend,
                        "sqlite-commit" => Crash::SqliteCommit,
                        "csv-compact-rename" => Crash::CsvCompactRename,
                        _ => return Err(format!("bad crash point in {arg}")),
                    }
                }
                "--crash-at" => out.crash_at = number()?,
                "--exit" => {
                    out.exit = match value {
                        "close" => Exit::Close,
                        "return" => Exit::Return,
                        "abort" => Exit::Abort,
                        _ => return Err(format!("bad exit in {arg}")),
                    }
                }
                "--busy-ms" => out.busy_ms = number()?,
                "--sync-full" => out.sync_full = true,
                "--journal-delete" => out.journal_delete = true,
                "--hold" => out.hold = true,
                "--gate" => out.gate = true,
                "--load-only" => out.load_only = true,
                _ => return Err(format!("unknown argument {arg}")),
            }
        }
        Ok(out)
    }

    /// The command running the child binary `bin` with these options.
    #[must_use]
    pub fn command(&self, bin: &Path) -> Command {
        let mut command = Command::new(bin);
        command.args(self.to_args());
        command
    }
}

/// A short name for the kind of an error, as the child prints it: the
/// name of its [`ErrorKind`](persistent_map_core::ErrorKind).
#[must_use]
pub fn error_kind(err: &PersistentError) -> String {
    format!("{:?}", err.kind())
}

/// An error and its sources on one line.
#[must_use]
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace('\n', " ")
}

/// One reported error: its kind and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    /// The variant, as [`error_kind`] names it.
    pub kind: String,
    /// The message with its sources.
    pub message: String,
}

/// Everything a child printed, parsed.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    /// `opened` was printed.
    pub opened: bool,
    /// The open error, if any.
    pub open_error: Option<Reported>,
    /// Indices of changes acknowledged, in order.
    pub acked: Vec<u64>,
    /// Changes that returned an error.
    pub errors: BTreeMap<u64, Reported>,
    /// The largest `n` of a `flushed n` line: changes `0..n` are durable.
    pub flushed: Option<u64>,
    /// Flushes that returned an error, with the `n` they would have covered.
    pub flush_errors: Vec<(u64, Reported)>,
    /// Compactions that returned.
    pub compactions: u64,
    /// Load-only mode: the entries, if the load succeeded.
    pub loaded: Option<State>,
    /// Load-only mode: the load error.
    pub load_error: Option<Reported>,
    /// `closed` was printed.
    pub closed: bool,
    /// The close error, if any.
    pub close_error: Option<Reported>,
    /// `done` was printed.
    pub done: bool,
    /// Everything on stderr.
    pub stderr: String,
    /// How the child ended; `None` when it was still running at a timeout.
    pub status: Option<ExitStatus>,
    /// The child ran past its timeout and was killed.
    pub timed_out: bool,
}

fn reported(rest: &str) -> Reported {
    let (kind, message) = rest.split_once(' ').unwrap_or((rest, ""));
    Reported {
        kind: kind.to_owned(),
        message: message.to_owned(),
    }
}

impl Transcript {
    /// Parses the child's stdout.
    #[must_use]
    pub fn parse(stdout: &str) -> Self {
        let mut out = Self::default();
        let mut entries = State::new();
        for line in stdout.lines() {
            let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
            let number = |text: &str| text.parse::<u64>().ok();
            match tag {
                "opened" => out.opened = true,
                "open_err" => out.open_error = Some(reported(rest)),
                "ack" => out.acked.extend(number(rest)),
                "err" => {
                    let (i, rest) = rest.split_once(' ').unwrap_or((rest, ""));
                    if let Some(i) = number(i) {
                        out.errors.insert(i, reported(rest));
                    }
                }
                "flushed" => {
                    if let Some(n) = number(rest) {
                        out.flushed = Some(out.flushed.map_or(n, |f| f.max(n)));
                    }
                }
                "flush_err" => {
                    let (n, rest) = rest.split_once(' ').unwrap_or((rest, ""));
                    out.flush_errors
                        .push((number(n).unwrap_or(0), reported(rest)));
                }
                "compacted" => out.compactions += 1,
                "entry" => {
                    let (key, value) = rest.rsplit_once(' ').unwrap_or((rest, ""));
                    let key = serde_json::from_str::<String>(key).ok();
                    if let (Some(key), Some(value)) = (key, number(value)) {
                        entries.insert(key, value);
                    }
                }
                "loaded" => out.loaded = Some(std::mem::take(&mut entries)),
                "load_err" => out.load_error = Some(reported(rest)),
                "closed" => out.closed = true,
                "close_err" => out.close_error = Some(reported(rest)),
                "done" => out.done = true,
                _ => {}
            }
        }
        out
    }

    /// The last acknowledged change, if any.
    #[must_use]
    pub fn last_ack(&self) -> Option<u64> {
        self.acked.last().copied()
    }

    /// The child was killed by a signal or aborted (not a normal exit).
    #[must_use]
    pub fn crashed(&self) -> bool {
        self.status.is_some_and(|s| s.code().is_none())
    }
}

/// A child whose stdout lines arrive on a channel as they are printed.
#[derive(Debug)]
pub struct Running {
    /// The process.
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    /// Starts `command` with piped stdin, stdout and stderr.
    ///
    /// # Errors
    ///
    /// When the process cannot be started.
    pub fn start(mut command: Command) -> std::io::Result<Self> {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn()?;
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = child.stderr.take().map(|mut stderr| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                text
            })
        });
        Ok(Self {
            child,
            lines,
            seen: String::new(),
            stderr,
        })
    }

    /// Waits up to `timeout` for a stdout line satisfying `want`; returns it.
    pub fn wait_line(&mut self, timeout: Duration, want: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if want(&line) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Closes the child's stdin (releases a `--hold` or a `--gate`).
    pub fn release(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Sends `SIGKILL` now and collects the transcript.
    #[must_use]
    pub fn kill(mut self) -> Transcript {
        let _ = self.child.kill();
        self.finish(Duration::from_secs(30))
    }

    /// Waits up to `timeout` for the child to end (killing it past that) and
    /// collects the transcript.
    #[must_use]
    pub fn finish(mut self, timeout: Duration) -> Transcript {
        self.release();
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(None) => {
                    timed_out = true;
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
                Err(_) => break None,
            }
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        let mut transcript = Transcript::parse(&self.seen);
        transcript.status = status;
        transcript.timed_out = timed_out;
        transcript.stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        transcript
    }
}

/// Runs `command` to its end, or kills it after `timeout`.
///
/// # Errors
///
/// When the process cannot be started.
pub fn run(command: Command, timeout: Duration) -> std::io::Result<Transcript> {
    Ok(Running::start(command)?.finish(timeout))
}
