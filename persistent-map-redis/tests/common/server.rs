//! A throwaway Redis server on 127.0.0.1 (`redis-server` from the Debian
//! package, as `scripts/test-servers.sh` runs it, but with an fsynced
//! append-only file), for tests that stop and start a server.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RedisServer {
    dir: PathBuf,
    pub port: u16,
    child: Mutex<Option<Child>>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisServer {
    /// Starts a server with its data in a temporary directory, or the reason
    /// it cannot.
    pub fn start() -> Result<Self, String> {
        Command::new("redis-server")
            .arg("--version")
            .output()
            .map_err(|_| "no redis-server (apt-get install redis-server)".to_owned())?;
        let dir = std::env::temp_dir().join(super::unique("pm-redis"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let server = Self {
            dir,
            port: free_port(),
            child: Mutex::new(None),
        };
        server.start_again()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and data.
    pub fn start_again(&self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut conn) = client.get_connection() {
                    let pong: redis::RedisResult<String> = redis::cmd("PING").query(&mut conn);
                    if pong.is_ok() {
                        return Ok(());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("redis-server did not answer within 20 s".to_owned())
    }

    /// Kills the server (SIGKILL), as a crash would: only what reached the
    /// fsynced append-only file survives.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
