//! Power-loss images for the CSV backend.
//!
//! [`Recorder`] is a [`FileIo`] that performs every file operation and
//! records it. [`Disk`] replays a prefix of the record and tells what a disk
//! could hold if the power had been cut at that point: synced bytes survive,
//! of the unsynced bytes appended to a file a random prefix survives
//! (optionally followed by zeros, as when a file's size reached the disk but
//! its data did not), and a rename survives only once its directory was
//! synced (before that, either name may be found).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use persistent_map_csv::fault::FileIo;

/// One recorded file operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bytes appended to a file.
    Append {
        /// The file.
        path: PathBuf,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// A file's data synced.
    SyncData {
        /// The file.
        path: PathBuf,
    },
    /// A file cut to a length.
    SetLen {
        /// The file.
        path: PathBuf,
        /// The new length.
        len: u64,
    },
    /// A file created with its contents, and synced.
    WriteSynced {
        /// The file.
        path: PathBuf,
        /// Its contents.
        contents: Vec<u8>,
    },
    /// A rename.
    Rename {
        /// The old name.
        from: PathBuf,
        /// The new name.
        to: PathBuf,
    },
    /// A directory synced.
    SyncDir,
}

impl Event {
    /// Whether this operation makes something durable.
    #[must_use]
    pub fn is_sync(&self) -> bool {
        matches!(
            self,
            Event::SyncData { .. } | Event::WriteSynced { .. } | Event::SyncDir
        )
    }
}

/// A [`FileIo`] that performs each operation and records it.
#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    fn push(&self, event: Event) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }

    /// The operations recorded so far.
    #[must_use]
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many operations were recorded so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing was recorded yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FileIo for Recorder {
    fn append(&self, file: &File, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut handle = file;
        handle.write_all(bytes)?;
        self.push(Event::Append {
            path: path.to_owned(),
            bytes: bytes.to_vec(),
        });
        Ok(())
    }

    fn sync_data(&self, file: &File, path: &Path) -> std::io::Result<()> {
        file.sync_data()?;
        self.push(Event::SyncData {
            path: path.to_owned(),
        });
        Ok(())
    }

    fn set_len(&self, file: &File, path: &Path, len: u64) -> std::io::Result<()> {
        file.set_len(len)?;
        self.push(Event::SetLen {
            path: path.to_owned(),
            len,
        });
        Ok(())
    }

    fn write_synced(&self, path: &Path, contents: &[u8]) -> std::io::Result<()> {
        let mut file = File::create(path)?;
        file.write_all(contents)?;
        file.sync_all()?;
        self.push(Event::WriteSynced {
            path: path.to_owned(),
            contents: contents.to_vec(),
        });
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)?;
        self.push(Event::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        File::open(dir)?.sync_all()?;
        self.push(Event::SyncDir);
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
struct Inode {
    durable: Vec<u8>,
    volatile: Vec<u8>,
}

/// A model of what a disk holds: names and file contents, each as the
/// process sees them and as they are durable.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    inodes: Vec<Inode>,
    volatile_names: HashMap<PathBuf, usize>,
    durable_names: HashMap<PathBuf, usize>,
}

/// The file-system block size the simulated write-back works in (ext4's).
const FS_BLOCK: usize = 4096;

/// How a power-cut image treats the unsynced tail of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// The share (0..=1000 per mille) of unsynced appended bytes that survive.
    pub kept_per_mille: u32,
    /// Whether the lost part of the tail reads back as zeros instead of
    /// being absent.
    pub zero_fill: bool,
    /// Whether a rename whose directory was not synced yet survives.
    pub rename_survives: bool,
}

impl Disk {
    /// A disk whose files (name to contents) are all durable.
    #[must_use]
    pub fn with_files(files: &HashMap<PathBuf, Vec<u8>>) -> Self {
        let mut disk = Self::default();
        for (path, contents) in files {
            disk.inodes.push(Inode {
                durable: contents.clone(),
                volatile: contents.clone(),
            });
            let id = disk.inodes.len() - 1;
            disk.volatile_names.insert(path.clone(), id);
            disk.durable_names.insert(path.clone(), id);
        }
        disk
    }

    fn inode(&mut self, path: &Path) -> &mut Inode {
        let id = match self.volatile_names.get(path) {
            Some(&id) => id,
            None => {
                self.inodes.push(Inode::default());
                let id = self.inodes.len() - 1;
                self.volatile_names.insert(path.to_owned(), id);
                id
            }
        };
        &mut self.inodes[id]
    }

    /// Applies one recorded operation.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Append { path, bytes } => self.inode(path).volatile.extend_from_slice(bytes),
            Event::SyncData { path } => {
                let inode = self.inode(path);
                inode.durable = inode.volatile.clone();
            }
            Event::SetLen { path, len } => {
                let len = usize::try_from(*len).unwrap_or(usize::MAX);
                self.inode(path).volatile.resize(len, 0);
            }
            Event::WriteSynced { path, contents } => {
                self.inodes.push(Inode {
                    durable: contents.clone(),
                    volatile: contents.clone(),
                });
                let id = self.inodes.len() - 1;
                self.volatile_names.insert(path.clone(), id);
            }
            Event::Rename { from, to } => {
                if let Some(id) = self.volatile_names.remove(from) {
                    self.volatile_names.insert(to.clone(), id);
                }
            }
            Event::SyncDir => self.durable_names = self.volatile_names.clone(),
        }
    }

    /// The disk after `events`, starting from this one.
    #[must_use]
    pub fn after(&self, events: &[Event]) -> Self {
        let mut disk = self.clone();
        for event in events {
            disk.apply(event);
        }
        disk
    }

    /// What a power cut now could leave: each name and its contents.
    #[must_use]
    pub fn image(&self, cut: Cut) -> HashMap<PathBuf, Vec<u8>> {
        let names = if cut.rename_survives {
            &self.volatile_names
        } else {
            &self.durable_names
        };
        names
            .iter()
            .map(|(path, &id)| {
                let inode = &self.inodes[id];
                let (durable, volatile) = (&inode.durable, &inode.volatile);
                let contents = if volatile.len() >= durable.len() && volatile.starts_with(durable) {
                    let extra = volatile.len() - durable.len();
                    let kept = extra * cut.kept_per_mille.min(1000) as usize / 1000;
                    // Write-back reaches the disk a file-system block at a
                    // time: an append cut short ends on a block boundary
                    // (or at the last synced byte), unless all of it made it.
                    let mut len = durable.len() + kept;
                    if len < volatile.len() {
                        len = (len / FS_BLOCK * FS_BLOCK).max(durable.len());
                    }
                    let mut bytes = volatile[..len].to_vec();
                    if cut.zero_fill {
                        bytes.resize(volatile.len(), 0);
                    }
                    bytes
                } else if cut.kept_per_mille >= 500 {
                    volatile.clone()
                } else {
                    durable.clone()
                };
                (path.clone(), contents)
            })
            .collect()
    }

    /// Writes `image` into `dir` (file names kept, directories dropped).
    ///
    /// # Errors
    ///
    /// When a file cannot be written.
    pub fn write_image(image: &HashMap<PathBuf, Vec<u8>>, dir: &Path) -> std::io::Result<()> {
        for (path, contents) in image {
            if let Some(name) = path.file_name() {
                std::fs::write(dir.join(name), contents)?;
            }
        }
        Ok(())
    }
}
