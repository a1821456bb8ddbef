//! File operations that block, run off the async runtime (appends and syncs
//! on the store's [`FileThread`], the rare rest on tokio's blocking pool):
//! atomic replacement, appends that leave no torn record behind, and syncs.
//!
//! Every operation that changes what the disk holds goes through a
//! [`FileIo`], so a test can record writes and syncs and build the images a
//! power cut could leave behind.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use persistent_map_core::{PersistentError, Result};

use crate::thread::FileThread;

/// The file operations of the backend that change what the disk holds.
///
/// Test support, not part of the stable API: the real implementation is the
/// default body of every method, and a test implementation (installed with
/// the `fault-injection` feature) records each call before performing it, or
/// fails or aborts on purpose.
#[doc(hidden)]
pub trait FileIo: Send + Sync + fmt::Debug + 'static {
    /// Appends `bytes` to `file` (opened for appending) with one write call.
    fn append(&self, file: &File, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let _ = path;
        let mut handle = file;
        handle.write_all(bytes)
    }

    /// Forces the data written to `file` onto the disk (`fdatasync`).
    fn sync_data(&self, file: &File, path: &Path) -> std::io::Result<()> {
        let _ = path;
        file.sync_data()
    }

    /// Cuts `file` to `len` bytes.
    fn set_len(&self, file: &File, path: &Path, len: u64) -> std::io::Result<()> {
        let _ = path;
        file.set_len(len)
    }

    /// Creates (or truncates) the file at `path`, writes `contents` and
    /// syncs it (`fsync`).
    fn write_synced(&self, path: &Path, contents: &[u8]) -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.write_all(contents)?;
        file.sync_all()
    }

    /// Renames `from` over `to`.
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }

    /// Makes the entries of directory `dir` (a rename) durable.
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        sync_dir(dir)
    }
}

/// The operating system's file operations, unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RealIo;

impl FileIo for RealIo {}

/// The I/O a backend uses.
pub(crate) type Io = Arc<dyn FileIo>;

/// The operating system's file operations, for a backend without a test hook.
pub(crate) fn real_io() -> Io {
    Arc::new(RealIo)
}

/// Runs blocking file work on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PersistentError::Other(Box::new(e)))?
}

/// `path` with `suffix` appended to its file name: `data.csv` -> `data.csv.lock`.
pub(crate) fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// The temporary file a rewrite goes through, in the data file's directory
/// so the final rename stays on one file system and is atomic.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    sidecar(path, ".rewrite.tmp")
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Creates the directory the file lives in, with its parents.
pub(crate) async fn create_parent(path: &Path) -> Result<()> {
    let parent = parent_dir(path);
    tokio::fs::create_dir_all(&parent)
        .await
        .map_err(|e| PersistentError::io(parent, e))
}

/// Removes the temporary file of a rewrite that a crash interrupted. Only
/// called while holding the lock, so no live rewrite can own it.
pub(crate) async fn remove_stale_temp(path: &Path) {
    let temp = temp_path(path);
    match tokio::fs::remove_file(&temp).await {
        Ok(()) => tracing::warn!(
            path = %temp.display(),
            "removed the temporary file of an interrupted rewrite"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // A file that cannot be removed is truncated by the next rewrite.
        Err(e) => {
            tracing::warn!(path = %temp.display(), error = %e, "cannot remove a stale temporary file")
        }
    }
}

/// Opens `path` for appending; every write goes to the end of the file.
fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| PersistentError::io(path, e))
}

/// Opens the existing file at `path` for appending.
pub(crate) async fn open_for_append(path: &Path) -> Result<Arc<File>> {
    let path = path.to_owned();
    blocking(move || open_append(&path).map(Arc::new)).await
}

/// Replaces the file at `path` with `contents`, so that after a crash at
/// any point the file is either the old one or the new one, whole.
///
/// Writes a temporary file next to it, syncs it, renames it over `path`,
/// and syncs the directory so the rename itself is durable. Returns the new
/// file opened for appending.
pub(crate) async fn replace_atomically(
    io: &Io,
    path: &Path,
    contents: Vec<u8>,
) -> Result<Arc<File>> {
    let path = path.to_owned();
    let io = Arc::clone(io);
    blocking(move || {
        let temp = temp_path(&path);
        if let Err(e) = io.write_synced(&temp, &contents) {
            let _ = std::fs::remove_file(&temp);
            return Err(PersistentError::io(&temp, e));
        }
        if let Err(e) = io.rename(&temp, &path) {
            let _ = std::fs::remove_file(&temp);
            return Err(PersistentError::io(&path, e));
        }
        let dir = parent_dir(&path);
        io.sync_dir(&dir)
            .map_err(|e| PersistentError::io(&dir, e))?;
        open_append(&path).map(Arc::new)
    })
    .await
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    // Windows cannot open a directory as a file; its rename is durable once
    // the file system journal commits, which this crate cannot force.
    Ok(())
}

/// What an [`append`] left behind.
#[derive(Debug)]
pub(crate) struct Appended {
    /// `Ok` when every byte was written (and synced, if asked).
    pub(crate) result: Result<()>,
    /// When a failed append could not be undone, the length the file must
    /// be cut back to before anything else is appended.
    pub(crate) dirty_tail: Option<u64>,
    /// The bytes were written but syncing them failed.
    pub(crate) sync_failed: bool,
    /// The file's length afterwards, where known.
    pub(crate) len: Option<u64>,
}

/// Appends `bytes` with one write call, syncing them if `sync` is set.
///
/// If the write (or the sync) fails, the file is cut back to its previous
/// length so no partial record stays behind. `dirty_tail` is the length
/// left over from an earlier append whose cut failed: it is retried first,
/// and nothing is written while it fails. `len` is the file's length when
/// the caller knows it (it saves a `stat` per append).
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
pub(crate) async fn append(
    thread: &FileThread,
    io: &Io,
    path: &Path,
    file: Arc<File>,
    bytes: Vec<u8>,
    sync: bool,
    dirty_tail: Option<u64>,
    len: Option<u64>,
) -> Appended {
    let path = path.to_owned();
    let io = Arc::clone(io);
    let outcome = thread
        .run(move || {
            let handle: &File = &file;
            let mut known = len;
            if let Some(tail) = dirty_tail {
                if let Err(e) = io.set_len(handle, &path, tail) {
                    return Ok(Appended {
                        result: Err(PersistentError::io(&path, e)),
                        dirty_tail: Some(tail),
                        sync_failed: false,
                        len: None,
                    });
                }
                known = Some(tail);
            }
            let before = match known {
                Some(len) => len,
                None => handle
                    .metadata()
                    .map_err(|e| PersistentError::io(&path, e))?
                    .len(),
            };
            let mut sync_failed = false;
            let written = io.append(handle, &path, &bytes).and_then(|()| {
                if sync {
                    let synced = io.sync_data(handle, &path);
                    sync_failed = synced.is_err();
                    synced
                } else {
                    Ok(())
                }
            });
            let Err(e) = written else {
                return Ok(Appended {
                    result: Ok(()),
                    dirty_tail: None,
                    sync_failed: false,
                    len: Some(before + bytes.len() as u64),
                });
            };
            let dirty_tail = match io.set_len(handle, &path, before) {
                Ok(()) => None,
                Err(cut) => {
                    tracing::warn!(
                        path = %path.display(),
                        error = %cut,
                        "cannot cut a failed append back; retrying before the next write"
                    );
                    Some(before)
                }
            };
            Ok(Appended {
                result: Err(PersistentError::io(&path, e)),
                len: dirty_tail.is_none().then_some(before),
                dirty_tail,
                sync_failed,
            })
        })
        .await;
    outcome.unwrap_or_else(|err| Appended {
        result: Err(err),
        dirty_tail,
        sync_failed: false,
        len: None,
    })
}

/// Forces everything written to `file` onto the disk.
pub(crate) async fn sync_data(
    thread: &FileThread,
    io: &Io,
    path: &Path,
    file: Arc<File>,
) -> Result<()> {
    let path = path.to_owned();
    let io = Arc::clone(io);
    thread
        .sync(move || {
            io.sync_data(&file, &path)
                .map_err(|e| PersistentError::io(&path, e))
        })
        .await
}

/// Cuts the file at `path` to `len` bytes and syncs the cut.
pub(crate) async fn truncate(io: &Io, path: &Path, len: u64) -> Result<()> {
    let path = path.to_owned();
    let io = Arc::clone(io);
    blocking(move || {
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| PersistentError::io(&path, e))?;
        io.set_len(&file, &path, len)
            .and_then(|()| io.sync_data(&file, &path))
            .map_err(|e| PersistentError::io(&path, e))
    })
    .await
}
