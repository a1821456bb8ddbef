//! The exclusive advisory lock that keeps a second writer away from a file.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use persistent_map_core::{PersistentError, Result};

use crate::files::{blocking, sidecar};

/// An exclusive lock on `<data file>.lock`, held until dropped.
///
/// The lock lives on a separate file because compaction renames a new data
/// file over the old one: a lock on the data file itself would stay on the
/// replaced file, and a second writer would lock the new one. The lock file
/// is left in place when released; removing it could let two writers lock
/// two different lock files.
///
/// It is an advisory lock (`flock` on Unix, `LockFileEx` on Windows), so it
/// binds only processes that take it. It belongs to the open file, so two
/// backends in one process exclude each other too, and the operating system
/// drops it when the process dies.
#[derive(Debug)]
pub(crate) struct LockFile {
    _file: File,
    path: PathBuf,
}

impl LockFile {
    /// Takes the lock of the store at `data_path`, waiting up to `timeout`
    /// for another holder to release it (a map that was just dropped may
    /// still be letting go of it).
    ///
    /// # Errors
    ///
    /// [`PersistentError::Locked`] naming `data_path` when another backend
    /// still holds it after `timeout`; an I/O error when the lock file cannot
    /// be opened.
    pub(crate) async fn acquire(data_path: &Path, timeout: Duration) -> Result<Self> {
        // Short pauses first: a release under way usually takes well under
        // a millisecond.
        const FIRST_PAUSE: Duration = Duration::from_millis(1);
        const LAST_PAUSE: Duration = Duration::from_millis(50);
        let deadline = Instant::now().checked_add(timeout);
        let mut pause = FIRST_PAUSE;
        loop {
            match Self::try_acquire(data_path).await? {
                Some(lock) => return Ok(lock),
                None => {
                    let now = Instant::now();
                    if deadline.is_some_and(|deadline| now >= deadline) {
                        return Err(PersistentError::Locked {
                            path: data_path.to_owned(),
                        });
                    }
                    let wake = deadline.map_or(now + pause, |deadline| deadline.min(now + pause));
                    tokio::time::sleep_until(wake).await;
                    pause = (pause * 2).min(LAST_PAUSE);
                }
            }
        }
    }

    /// One attempt: `None` when another backend holds the lock.
    async fn try_acquire(data_path: &Path) -> Result<Option<Self>> {
        let data_path = data_path.to_owned();
        blocking(move || {
            let path = sidecar(&data_path, ".lock");
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| PersistentError::io(&path, e))?;
            match file.try_lock() {
                Ok(()) => Ok(Some(Self { _file: file, path })),
                Err(TryLockError::WouldBlock) => Ok(None),
                Err(TryLockError::Error(e)) => Err(PersistentError::io(&path, e)),
            }
        })
        .await
    }

    /// The lock file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}
