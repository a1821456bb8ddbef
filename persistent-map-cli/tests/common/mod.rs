//! What the command's tests share: running the built binary, and the
//! server URLs from the environment with the workspace's skip/require rule.

#![allow(dead_code)]

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Set to `1` (by `scripts/test.sh`) to fail, not skip, when no server is configured.
pub const REQUIRE_VAR: &str = "PERSISTENT_MAP_REQUIRE_SERVERS";

/// What a run of the command did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts exit code 0 and returns stdout.
    #[track_caller]
    pub fn ok(self) -> String {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        self.stdout
    }

    /// Asserts the exit code and returns the run.
    #[track_caller]
    pub fn code(self, code: i32) -> Self {
        assert_eq!(self.code, code, "expected exit code {code}: {self:#?}");
        self
    }

    /// Both streams, to search for text.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_persistent-map")
}

/// Runs the command in `dir` with `args`.
pub fn run_in(dir: &Path, args: &[&str]) -> Run {
    let output = Command::new(binary())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    Run::from(output)
}

/// Runs the command with `input` on its standard input.
pub fn run_with_input(args: &[&str], input: &[u8]) -> Run {
    let mut child = Command::new(binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut stdin = child.stdin.take().expect("a piped stdin");
    // The command may stop reading early (a refused line): a broken pipe is fine.
    let _ = stdin.write_all(input);
    drop(stdin);
    Run::from(child.wait_with_output().expect("the binary ends"))
}

/// Runs the command in the current directory.
pub fn run(args: &[&str]) -> Run {
    run_in(Path::new("."), args)
}

fn required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1")
}

/// The server URL in `var`, or `None` after printing a visible skip.
///
/// # Panics
///
/// When it is unset and `PERSISTENT_MAP_REQUIRE_SERVERS=1`.
pub fn url_or_skip(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                !required(),
                "{var} is not set but {REQUIRE_VAR}=1: run the tests through scripts/test-servers.sh"
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIP: {test}: {var} is not set (run scripts/test-servers.sh cargo test)"
            );
            None
        }
    }
}

/// Prints a line past the test harness's output capture.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:016x}", fastrand::u64(..))
}

/// A store URL of a file in `dir`.
pub fn file_url(scheme: &str, dir: &Path, name: &str) -> String {
    format!("{scheme}:{}", dir.join(name).display())
}

/// Writes entries through `set`, one process per entry.
pub fn set_all(store: &str, entries: &[(&str, &str)]) {
    for (key, value) in entries {
        run(&["set", store, key, value]).ok();
    }
}

/// A few entries with awkward keys and values: numbers, text that looks
/// like JSON, unicode, newlines, formulas, nesting.
pub const AWKWARD: &[(&str, &str)] = &[
    (
        "alice",
        r#"{"name": "Alice", "age": 30, "tags": ["a", "b"]}"#,
    ),
    ("42", "[1, 2.5, -3, true, null]"),
    (r#"{"id":7}"#, r#""composite key""#),
    (r#""quoted key""#, "0.1"),
    ("Zürich", r#""naïve ☃ text""#),
    ("line\nbreak", r#""a,b\nc""#),
    ("=SUM(A1)", r#""=HYPERLINK(\"x\")""#),
    ("empty", r#""""#),
    ("big", "18446744073709551615"),
    ("nul", r#""a\u0000b""#),
];

/// Runs a blocking future of set-up code on a runtime of its own.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

/// A deadline far ahead (2100-01-01), in ms since the Unix epoch.
pub const FUTURE: i64 = 4_102_444_800_000;

/// Entries with and without deadlines, one long past (stored, not swept):
/// (key, value, deadline in ms).
pub fn expiring_entries() -> Vec<(serde_json::Value, serde_json::Value, Option<i64>)> {
    use serde_json::json;
    vec![
        (json!(7), json!([1, 2]), Some(FUTURE + 123)),
        (json!("gone"), json!("expired, not swept"), Some(1_000)),
        (json!("later"), json!(1), Some(FUTURE)),
        (json!("plain"), json!({"a": 1}), None),
    ]
}

/// `dump` of [`expiring_entries`].
pub const EXPIRING_DUMP: &str = "{\"key\":\"7\",\"value\":[1,2],\"expires_at\":4102444800123}\n\
{\"key\":\"gone\",\"value\":\"expired, not swept\",\"expires_at\":1000}\n\
{\"key\":\"later\",\"value\":1,\"expires_at\":4102444800000}\n\
{\"key\":\"plain\",\"value\":{\"a\":1}}\n";

type Json =
    dyn persistent_map_core::StorageBackend<serde_json::Value, serde_json::Value> + Send + Sync;

/// Writes [`expiring_entries`] through a backend, as an application's map would.
pub async fn write_expiring(backend: &Json) {
    use persistent_map_core::BatchOp;
    let batch: Vec<_> = expiring_entries()
        .into_iter()
        .map(|(key, value, at)| match at {
            None => BatchOp::Put { key, value },
            Some(ms) => BatchOp::PutExpiring {
                key,
                value,
                expires_at: std::time::UNIX_EPOCH
                    + std::time::Duration::from_millis(u64::try_from(ms).expect("after 1970")),
            },
        })
        .collect();
    backend.apply_batch(&batch).await.expect("written");
}

/// Reads [`expiring_entries`] back through a backend and asserts each
/// value and deadline.
pub async fn assert_expiring(backend: &Json) {
    let expected = expiring_entries();
    let keys: Vec<_> = expected.iter().map(|(key, _, _)| key.clone()).collect();
    let found = backend.load_keys_with_expiry(&keys).await.expect("read");
    for ((key, value, at), (_, got)) in expected.into_iter().zip(found) {
        let (got_value, got_at) = got.unwrap_or_else(|| panic!("{key} is missing"));
        assert_eq!(got_value, value, "{key}");
        let got_ms = got_at.map(|t| {
            i64::try_from(
                t.duration_since(std::time::UNIX_EPOCH)
                    .expect("after 1970")
                    .as_millis(),
            )
            .expect("fits")
        });
        assert_eq!(got_ms, at, "the deadline of {key}");
    }
}

/// `info` of a store holding [`expiring_entries`] shows their deadlines.
#[track_caller]
pub fn assert_deadlines_in_info(store: &str) {
    let info = run(&["info", store]).ok();
    assert!(
        info.contains("deadlines:      3 entries (1 past their deadline, not swept yet)"),
        "{info}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&run(&["--json", "info", store]).ok()).expect("json");
    assert_eq!(json["deadlines"]["with_deadline"], 3, "{json}");
    assert_eq!(json["deadlines"]["expired"], 1, "{json}");
}
