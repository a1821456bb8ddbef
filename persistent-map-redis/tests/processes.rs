//! Two OS processes on one hash: each writes keys of its own and keys both
//! write, and each sees the other's writes through the change feed
//! (pub/sub); at the end both maps and a fresh load agree.
//!
//! The test re-runs its own executable twice as the children (the ignored
//! test `child`, selected by `--exact --ignored`), talking to them over
//! their standard input and output.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{report, url_or_skip, Scratch};
use persistent_map_core::PersistentMap;
use persistent_map_redis::RedisBackend;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The backend's name in the figures line.
const BACKEND: &str = "redis";

/// The children's settings, passed in the environment.
const ROLE_VAR: &str = "PM_TEST_CHILD_ROLE";
const URL_VAR: &str = "PM_TEST_CHILD_URL";
const STORE_VAR: &str = "PM_TEST_CHILD_STORE";

/// Keys each child writes for itself, and keys both write.
const OWN: usize = 50;
const SHARED: usize = 10;

/// How long anything may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// Lines of the protocol carry this, to tell them from the harness's.
const TAG: &str = "pm-child:";

async fn open(url: &str, store: &str) -> PersistentMap<String, String, RedisBackend> {
    let backend = RedisBackend::builder(url)
        .prefix(store)
        .name("shared")
        .connect_timeout(Duration::from_secs(30))
        .build()
        .await
        .expect("open the backend");
    PersistentMap::new(backend).await.expect("open the map")
}

fn snapshot(map: &PersistentMap<String, String, RedisBackend>) -> BTreeMap<String, String> {
    map.iter().collect()
}

/// Polls `check` until it holds, or fails naming `what` after [`DEADLINE`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn say(line: &str) {
    let mut out = tokio::io::stdout();
    out.write_all(format!("{TAG}{line}\n").as_bytes())
        .await
        .expect("stdout");
    out.flush().await.expect("stdout");
}

async fn expect_line(lines: &mut Lines<BufReader<tokio::io::Stdin>>, want: &str) {
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("the parent answers in time")
        .expect("stdin")
        .expect("the parent keeps stdin open");
    assert_eq!(line, want);
}

/// One child: run only by [`two_processes_follow_each_other`].
#[tokio::test]
#[ignore = "the child process of two_processes_follow_each_other, which runs it"]
async fn child() {
    let role = std::env::var(ROLE_VAR).expect("run by the parent test");
    let other = if role == "a" { "b" } else { "a" };
    let url = std::env::var(URL_VAR).expect("url");
    let store = std::env::var(STORE_VAR).expect("store");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();

    let map = open(&url, &store).await;
    say("ready").await;
    expect_line(&mut stdin, "go").await;

    let started = Instant::now();
    for i in 0..OWN {
        map.insert(format!("{role}-{i}"), format!("{role}{i}"))
            .await
            .expect("insert");
        if i < SHARED {
            map.insert(format!("shared-{i}"), format!("{role}{i}"))
                .await
                .expect("insert");
        }
    }
    eventually(&format!("{role} to see every key of {other}"), || {
        (0..OWN).all(|i| map.get(&format!("{other}-{i}")) == Some(format!("{other}{i}")))
    })
    .await;
    say(&format!("saw {}", started.elapsed().as_millis())).await;

    // Nothing is written any more: the map must settle on what the store holds.
    expect_line(&mut stdin, "check").await;
    let fresh = open(&url, &store).await;
    let stored = snapshot(&fresh);
    fresh.close().await.expect("close");
    eventually(&format!("{role} to agree with the store"), || {
        snapshot(&map) == stored
    })
    .await;
    let json = serde_json::to_string(&snapshot(&map)).expect("json");
    say(&format!("state {json}")).await;
    map.close().await.expect("close");
}

struct Running {
    process: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Running {
    fn spawn(role: &str, url: &str, store: &str) -> Self {
        let mut process = Command::new(std::env::current_exe().expect("test executable"))
            .args([
                "child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE_VAR, role)
            .env(URL_VAR, url)
            .env(STORE_VAR, store)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the child");
        let stdin = process.stdin.take().expect("stdin");
        let lines = BufReader::new(process.stdout.take().expect("stdout")).lines();
        Self {
            process,
            stdin,
            lines,
        }
    }

    /// The rest of the next protocol line starting with `prefix`.
    async fn wait_for(&mut self, prefix: &str) -> String {
        let want = format!("{TAG}{prefix}");
        let read = async {
            while let Some(line) = self.lines.next_line().await.expect("child stdout") {
                // The harness may have begun the line ("test child ... ").
                if let Some(at) = line.find(&want) {
                    return line[at + want.len()..].trim().to_owned();
                }
            }
            panic!("the child ended before saying {prefix:?}");
        };
        tokio::time::timeout(DEADLINE * 2, read)
            .await
            .unwrap_or_else(|_| panic!("the child never said {prefix:?}"))
    }

    async fn tell(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("child stdin");
        self.stdin.flush().await.expect("child stdin");
    }
}

#[tokio::test]
async fn two_processes_follow_each_other() {
    let Some(url) = url_or_skip("two_processes_follow_each_other") else {
        return;
    };
    let scratch = Scratch::new(url);
    let mut children = [
        Running::spawn("a", &scratch.url, &scratch.prefix),
        Running::spawn("b", &scratch.url, &scratch.prefix),
    ];
    for child in &mut children {
        child.wait_for("ready").await;
    }
    for child in &mut children {
        child.tell("go").await;
    }
    let mut saw = Vec::new();
    for child in &mut children {
        saw.push(child.wait_for("saw").await);
    }
    for child in &mut children {
        child.tell("check").await;
    }
    let mut states = Vec::new();
    for child in &mut children {
        let json = child.wait_for("state").await;
        let state: BTreeMap<String, String> = serde_json::from_str(&json).expect("state");
        states.push(state);
    }
    for child in &mut children {
        let status = tokio::time::timeout(DEADLINE, child.process.wait())
            .await
            .expect("the child ends")
            .expect("wait");
        assert!(status.success(), "a child failed: {status}");
    }

    let fresh = open(&scratch.url, &scratch.prefix).await;
    let stored = snapshot(&fresh);
    fresh.close().await.expect("close");
    assert_eq!(stored.len(), 2 * OWN + SHARED, "{stored:?}");
    for i in 0..SHARED {
        let value = &stored[&format!("shared-{i}")];
        assert!(
            *value == format!("a{i}") || *value == format!("b{i}"),
            "shared-{i} = {value}"
        );
    }
    assert_eq!(states[0], stored, "process a disagrees with the store");
    assert_eq!(states[1], stored, "process b disagrees with the store");
    report(&format!(
        "figures[{BACKEND} two processes]: {} writes each ({OWN} own, {SHARED} shared); \
         a saw all of b's after {} ms, b saw all of a's after {} ms (from the start of its own writes)",
        OWN + SHARED,
        saw[0],
        saw[1]
    ));
}
