//! [`FaultProxy`]: a loopback TCP proxy that cuts a connection around a
//! commit, for testing how a backend reports a write whose outcome it lost
//! against a real server.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where a [`FaultProxy`] cuts the next connection that sends a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cut {
    /// Forward what precedes the commit, then close both sides: the server
    /// never receives the commit.
    BeforeCommit,
    /// Forward the commit, wait until the server's reply to it arrives,
    /// drop that reply and close both sides: the commit happened, but the
    /// client never learns it.
    AfterCommit,
    /// As [`AfterCommit`](Self::AfterCommit), then close every connection
    /// and refuse new ones until [`FaultProxy::restore`]: the server is
    /// unreachable just when the client wants to find out what happened.
    AfterCommitThenUnreachable,
}

/// A loopback TCP proxy in front of a real server that can be told to cut
/// a connection right before or right after it forwards a commit.
///
/// The commit is recognised by bytes the client sends (for PostgreSQL the
/// simple query `COMMIT`, for Redis `EXEC`), its reply by bytes the server
/// sends back (PostgreSQL's `COMMIT` command tag, the array reply of `EXEC`).
/// Only the first commit after [`arm`](Self::arm) is cut.
///
/// ```no_run
/// use persistent_map_server_support::{Cut, FaultProxy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let proxy = FaultProxy::start("127.0.0.1:5432", b"COMMIT\0", b"COMMIT\0").await?;
/// let url = format!("postgres://postgres@{}/test", proxy.addr());
/// proxy.arm(Cut::AfterCommit);
/// // ... a write through `url` loses its commit's reply ...
/// assert!(proxy.fired());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    commit: Vec<u8>,
    reply: Vec<u8>,
    state: Mutex<State>,
    /// Bumped to close every open connection.
    kill: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    armed: Option<Cut>,
    fired: bool,
    unreachable: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to
    /// `upstream` (`host:port`). `commit` is what the client sends to
    /// commit, `reply` what the server's reply to it contains.
    ///
    /// # Errors
    ///
    /// When no port can be bound.
    pub async fn start(upstream: &str, commit: &[u8], reply: &[u8]) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            commit: commit.to_vec(),
            reply: reply.to_vec(),
            state: Mutex::default(),
            kill: watch::channel(0).0,
        });
        let accept = tokio::spawn(accept(listener, Arc::clone(&shared)));
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// The proxy's address, to put in the client's URL in place of the server's.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the next commit any connection sends, as `cut` says.
    pub fn arm(&self, cut: Cut) {
        let mut state = self.shared.state();
        state.armed = Some(cut);
        state.fired = false;
    }

    /// Whether the armed cut happened.
    #[must_use]
    pub fn fired(&self) -> bool {
        self.shared.state().fired
    }

    /// Accepts and forwards connections again after
    /// [`Cut::AfterCommitThenUnreachable`].
    pub fn restore(&self) {
        self.shared.state().unreachable = false;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.kill.send_modify(|n| *n += 1);
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((client, _)) = listener.accept().await {
        if shared.state().unreachable {
            drop(client);
            continue;
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Ok(server) = TcpStream::connect(&shared.upstream).await {
                let _ = relay(client, server, &shared).await;
            }
        });
    }
}

/// Where `needle` starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Forwards both ways until either side closes or the armed cut fires.
async fn relay(mut client: TcpStream, mut server: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut kill = shared.kill.subscribe();
    let mut up = vec![0_u8; 64 * 1024];
    let mut down = vec![0_u8; 64 * 1024];
    // The last bytes sent up, so a commit split across two reads is found.
    let mut sent_tail: Vec<u8> = Vec::new();
    // Set once a commit went up under `AfterCommit*`: the server's replies
    // are held back (and collected) until its reply to the commit arrives.
    let mut awaiting: Option<(Cut, Vec<u8>)> = None;
    loop {
        tokio::select! {
            _ = kill.changed() => return Ok(()),
            read = client.read(&mut up) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                let data = &up[..n];
                let mut seen = std::mem::take(&mut sent_tail);
                seen.extend_from_slice(data);
                let armed = shared.state().armed;
                match (armed, find(&seen, &shared.commit)) {
                    (Some(Cut::BeforeCommit), Some(at)) => {
                        let before = at.saturating_sub(seen.len() - n);
                        server.write_all(&data[..before]).await?;
                        let mut state = shared.state();
                        state.armed = None;
                        state.fired = true;
                        return Ok(());
                    }
                    (Some(cut), Some(_)) => {
                        shared.state().armed = None;
                        server.write_all(data).await?;
                        awaiting = Some((cut, Vec::new()));
                    }
                    _ => server.write_all(data).await?,
                }
                let keep = shared.commit.len().saturating_sub(1).min(seen.len());
                sent_tail = seen[seen.len() - keep..].to_vec();
            }
            read = server.read(&mut down) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                let data = &down[..n];
                match &mut awaiting {
                    None => client.write_all(data).await?,
                    Some((cut, held)) => {
                        held.extend_from_slice(data);
                        if find(held, &shared.reply).is_some() {
                            let mut state = shared.state();
                            state.fired = true;
                            if *cut == Cut::AfterCommitThenUnreachable {
                                state.unreachable = true;
                                drop(state);
                                shared.kill.send_modify(|k| *k += 1);
                            }
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}
