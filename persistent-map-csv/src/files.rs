//! File operations that block, run off the async runtime: atomic
//! replacement, appends that leave no torn record behind, and syncs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use persistent_map_core::{PersistentError, Result};

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
pub(crate) async fn replace_atomically(path: &Path, contents: Vec<u8>) -> Result<Arc<File>> {
    let path = path.to_owned();
    blocking(move || {
        let temp = temp_path(&path);
        let write_temp = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)?;
            file.write_all(&contents)?;
            file.sync_all()
        };
        if let Err(e) = write_temp() {
            let _ = std::fs::remove_file(&temp);
            return Err(PersistentError::io(&temp, e));
        }
        if let Err(e) = std::fs::rename(&temp, &path) {
            let _ = std::fs::remove_file(&temp);
            return Err(PersistentError::io(&path, e));
        }
        let dir = parent_dir(&path);
        sync_dir(&dir).map_err(|e| PersistentError::io(&dir, e))?;
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
}

/// Appends `bytes` with one write call, syncing them if `sync` is set.
///
/// If the write (or the sync) fails, the file is cut back to its previous
/// length so no partial record stays behind. `dirty_tail` is the length
/// left over from an earlier append whose cut failed: it is retried first,
/// and nothing is written while it fails.
pub(crate) async fn append(
    path: &Path,
    file: Arc<File>,
    bytes: Vec<u8>,
    sync: bool,
    dirty_tail: Option<u64>,
) -> Appended {
    let path = path.to_owned();
    let outcome = blocking(move || {
        let mut handle: &File = &file;
        if let Some(len) = dirty_tail {
            if let Err(e) = handle.set_len(len) {
                return Ok(Appended {
                    result: Err(PersistentError::io(&path, e)),
                    dirty_tail: Some(len),
                });
            }
        }
        let before = handle
            .metadata()
            .map_err(|e| PersistentError::io(&path, e))?
            .len();
        let written =
            handle
                .write_all(&bytes)
                .and_then(|()| if sync { handle.sync_data() } else { Ok(()) });
        let Err(e) = written else {
            return Ok(Appended {
                result: Ok(()),
                dirty_tail: None,
            });
        };
        let dirty_tail = match handle.set_len(before) {
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
            dirty_tail,
        })
    })
    .await;
    outcome.unwrap_or_else(|err| Appended {
        result: Err(err),
        dirty_tail,
    })
}

/// Forces everything written to `file` onto the disk.
pub(crate) async fn sync_data(path: &Path, file: Arc<File>) -> Result<()> {
    let path = path.to_owned();
    blocking(move || file.sync_data().map_err(|e| PersistentError::io(&path, e))).await
}

/// Cuts the file at `path` to `len` bytes and syncs the cut.
pub(crate) async fn truncate(path: &Path, len: u64) -> Result<()> {
    let path = path.to_owned();
    blocking(move || {
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| PersistentError::io(&path, e))?;
        file.set_len(len)
            .and_then(|()| file.sync_data())
            .map_err(|e| PersistentError::io(&path, e))
    })
    .await
}
