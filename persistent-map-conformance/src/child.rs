//! Running a case's other half in a child process: a copy of the current
//! test executable, told by environment variables which case it is part of
//! and which store to open.
//!
//! The child is the same test run again with `<test name> --exact`, which
//! both `cargo test` (libtest) and `cargo nextest` accept. The test's name
//! comes from the name libtest gives the thread that runs it. The child
//! reports on its standard output, one line per event, each written with
//! one unbuffered write so that what it printed before a kill reaches the
//! parent whole; the parent gives it orders on its standard input, one line
//! each, for cases whose children must act in step.

use std::ffi::OsString;
use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines, Stdin};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Names the case a child process runs the child half of.
const ROLE_VAR: &str = "PERSISTENT_MAP_CONFORMANCE_CHILD";
/// The store the child opens, as the parent factory's `locator` gave it.
const LOCATOR_VAR: &str = "PERSISTENT_MAP_CONFORMANCE_LOCATOR";
/// Which part of the case the child plays, for cases with several children.
const PART_VAR: &str = "PERSISTENT_MAP_CONFORMANCE_PART";
/// Starts every line the child reports, so the test harness's own output
/// (`running 1 test`) is told apart.
const PREFIX: &str = "pm-conformance: ";

/// How long the parent waits for a line from the child. Generous: the
/// child builds nothing, but a loaded 2-core machine may be slow to start
/// a process and open a store.
pub(crate) const PATIENCE: Duration = Duration::from_secs(120);

/// The locator to open when this process is the child half of `case`.
pub(crate) fn role(case: &str) -> Option<String> {
    if std::env::var_os(ROLE_VAR).is_some_and(|role| role == case) {
        std::env::var(LOCATOR_VAR).ok()
    } else {
        None
    }
}

/// The part this child plays, as [`ChildRun::start_as`] named it.
pub(crate) fn part() -> Option<String> {
    std::env::var(PART_VAR).ok()
}

/// Reports one event to the parent.
pub(crate) fn report(line: &str) {
    // One write per line, straight to the file descriptor (past libtest's
    // capture of `print!`), so a kill never splits or loses a finished line.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(format!("{PREFIX}{line}\n").as_bytes());
    let _ = stdout.flush();
}

/// Why the current test cannot be re-run as a child, or its name.
pub(crate) fn current_test() -> Result<String, String> {
    match std::thread::current().name() {
        Some(name) if name != "main" => Ok(name.to_owned()),
        _ => Err(String::from(
            "the test runs on an unnamed thread, so its name for `--exact` is unknown \
             (run it under libtest or nextest)",
        )),
    }
}

/// The orders the parent gives this child process, one per line.
pub(crate) struct Orders {
    lines: Lines<BufReader<Stdin>>,
}

impl Orders {
    /// Reads the child's standard input (through tokio's blocking-pool
    /// reader, so no runtime worker waits on it).
    pub(crate) fn new() -> Self {
        Self {
            lines: BufReader::new(tokio::io::stdin()).lines(),
        }
    }

    /// Waits for the parent's next order, which must be `want`.
    ///
    /// # Panics
    ///
    /// When another order comes, when none comes within [`PATIENCE`], or
    /// when the parent closed the pipe (it ended or gave up on the case).
    pub(crate) async fn expect(&mut self, want: &str) {
        let line = tokio::time::timeout(PATIENCE, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no order {want:?} from the parent within {PATIENCE:?}"))
            .unwrap_or_else(|err| panic!("reading the parent's orders: {err}"))
            .unwrap_or_else(|| panic!("the parent stopped before ordering {want:?}"));
        assert_eq!(line, want, "the parent's order");
    }
}

/// A running child half of `case`.
pub(crate) struct ChildRun {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    orders: ChildStdin,
}

impl ChildRun {
    /// Starts the current test executable as the child half of `case` on
    /// the store `locator`, run by `wrapper` (for example `strace` and its
    /// options) when one is given.
    pub(crate) fn start(case: &str, locator: &str, wrapper: &[OsString]) -> Result<Self, String> {
        Self::spawn(case, None, locator, wrapper)
    }

    /// Starts the child half of `case` on the store `locator`, playing
    /// `part` (read in the child with [`part`]).
    pub(crate) fn start_as(case: &str, part: &str, locator: &str) -> Result<Self, String> {
        Self::spawn(case, Some(part), locator, &[])
    }

    fn spawn(
        case: &str,
        part: Option<&str>,
        locator: &str,
        wrapper: &[OsString],
    ) -> Result<Self, String> {
        let test = current_test()?;
        let exe = std::env::current_exe()
            .map_err(|err| format!("the path of the test executable: {err}"))?;
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&exe);
                command
            }
            None => Command::new(&exe),
        };
        command
            .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE_VAR, case)
            .env(LOCATOR_VAR, locator)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(part) = part {
            command.env(PART_VAR, part);
        }
        let mut child = command
            .spawn()
            .map_err(|err| format!("starting {}: {err}", exe.display()))?;
        let stdout = child.stdout.take().ok_or("the child's standard output")?;
        let orders = child.stdin.take().ok_or("the child's standard input")?;
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
            orders,
        })
    }

    /// Gives the child the order `line` (read by [`Orders::expect`]).
    ///
    /// # Panics
    ///
    /// When the child's standard input is closed: the child has ended.
    pub(crate) async fn order(&mut self, line: &str) {
        let sent = self.orders.write_all(format!("{line}\n").as_bytes()).await;
        let flushed = match sent {
            Ok(()) => self.orders.flush().await,
            Err(err) => Err(err),
        };
        if let Err(err) = flushed {
            let stderr = self.stderr_after_kill().await;
            panic!("ordering the child {line:?}: {err}\n{stderr}");
        }
    }

    /// The next event the child reports, `None` when its output ended.
    pub(crate) async fn next(&mut self) -> Option<String> {
        loop {
            let line = tokio::time::timeout(PATIENCE, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("the child reported nothing for {PATIENCE:?}"))
                .ok()??;
            // Anywhere in the line: libtest may have printed `test <name> ... `
            // without a line end before it.
            if let Some((_, event)) = line.split_once(PREFIX) {
                return Some(event.to_owned());
            }
        }
    }

    /// Kills the child (`SIGKILL` on Unix) and waits until it is gone.
    pub(crate) async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for the child to end and returns every event it reported,
    /// with its standard error for a report. (Its exit status says little:
    /// the test it is part of may assert that the parent half fails.)
    pub(crate) async fn finish(mut self) -> (Vec<String>, String) {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr).await;
        }
        let _ = tokio::time::timeout(PATIENCE, self.child.wait()).await;
        (events, stderr)
    }

    /// Everything the child wrote to its standard error so far, after
    /// killing it, for a failure message.
    pub(crate) async fn stderr_after_kill(&mut self) -> String {
        let _ = self.child.kill().await;
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr).await;
        }
        stderr
    }
}
