//! A store as an append-only log of JSON lines in one file, declaring
//! `Durability::OnFlush`: honest, or with one of the lies the crash and
//! sync cases must catch.

use std::collections::HashMap;
use std::hash::Hash;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use persistent_map_conformance::{async_trait, StoreFactory};
use persistent_map_core::{Capabilities, Durability, PersistentError, Result, StorageBackend};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

/// What the log file does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileDefect {
    /// Nothing: every acknowledged line is in the file, and flush syncs it.
    None,
    /// Keeps acknowledged lines in its own memory until `flush`.
    BuffersUntilFlush,
    /// Keeps acknowledged lines in memory until `flush` or until it is
    /// dropped: an orderly drop keeps them, a kill loses them.
    WritesOnDrop,
    /// Writes every line at once, but its `flush` does not sync.
    SkipsSync,
}

/// The log-file backend.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    defect: FileDefect,
    /// Lines acknowledged but not yet written (the buffering defects).
    pending: Mutex<Vec<u8>>,
}

impl LogFile {
    fn new(path: PathBuf, defect: FileDefect) -> Self {
        Self {
            path,
            defect,
            pending: Mutex::new(Vec::new()),
        }
    }

    fn io(&self, err: std::io::Error) -> PersistentError {
        PersistentError::io(&self.path, err)
    }

    async fn append(&self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(|e| self.io(e))?;
        file.write_all(bytes).await.map_err(|e| self.io(e))?;
        file.flush().await.map_err(|e| self.io(e))
    }

    async fn record(&self, line: Value) -> Result<()> {
        let mut bytes = serde_json::to_vec(&line)?;
        bytes.push(b'\n');
        match self.defect {
            FileDefect::BuffersUntilFlush | FileDefect::WritesOnDrop => {
                self.pending
                    .lock()
                    .expect("not poisoned")
                    .extend_from_slice(&bytes);
                Ok(())
            }
            FileDefect::None | FileDefect::SkipsSync => self.append(&bytes).await,
        }
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let pending = std::mem::take(self.pending.get_mut().expect("not poisoned"));
        if self.defect == FileDefect::WritesOnDrop && !pending.is_empty() {
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .and_then(|mut file| file.write_all(&pending));
        }
    }
}

#[async_trait]
impl<K, V> StorageBackend<K, V> for LogFile
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(self.io(e)),
        };
        let mut out = HashMap::new();
        // A line cut by a kill is the one repair allowed: an incomplete last record.
        for line in text.lines().filter(|l| !l.is_empty()) {
            let Ok(Value::Array(mut parts)) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let value = (parts.len() == 2).then(|| parts.pop()).flatten();
            let key: K = serde_json::from_value(parts.pop().unwrap_or_default())?;
            match value {
                Some(value) => out.insert(key, serde_json::from_value(value)?),
                None => out.remove(&key),
            };
        }
        Ok(out)
    }

    async fn save(&self, key: K, value: V) -> Result<()> {
        let line = Value::Array(vec![
            serde_json::to_value(&key)?,
            serde_json::to_value(&value)?,
        ]);
        self.record(line).await
    }

    async fn delete(&self, key: &K) -> Result<()> {
        self.record(Value::Array(vec![serde_json::to_value(key)?]))
            .await
    }

    async fn flush(&self) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending.lock().expect("not poisoned"));
        self.append(&pending).await?;
        if self.defect == FileDefect::SkipsSync {
            return Ok(());
        }
        match tokio::fs::File::open(&self.path).await {
            Ok(file) => file.sync_all().await.map_err(|e| self.io(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new().with_durability(Durability::OnFlush)
    }
}

/// Opens log files in a temporary directory, or the parent's file in a child.
pub struct LogFileFactory {
    defect: FileDefect,
    dir: Option<tempfile::TempDir>,
    path: Option<PathBuf>,
}

impl LogFileFactory {
    pub fn new(defect: FileDefect) -> Self {
        Self {
            defect,
            dir: None,
            path: None,
        }
    }

    fn open(&self) -> Result<LogFile> {
        let path = self
            .path
            .clone()
            .ok_or_else(|| PersistentError::Other("reopen before fresh".into()))?;
        Ok(LogFile::new(path, self.defect))
    }
}

#[async_trait]
impl StoreFactory for LogFileFactory {
    type Backend = LogFile;

    async fn fresh(&mut self) -> Result<LogFile> {
        let dir = tempfile::tempdir()?;
        self.path = Some(dir.path().join("log.jsonl"));
        self.dir = Some(dir);
        self.open()
    }

    async fn reopen(&mut self) -> Result<LogFile> {
        self.open()
    }

    fn locator(&self) -> Option<String> {
        Some(self.path.as_ref()?.to_str()?.to_owned())
    }

    async fn attach(&mut self, locator: &str) -> Result<LogFile> {
        self.path = Some(PathBuf::from(locator));
        self.open()
    }

    fn files(&self) -> Vec<PathBuf> {
        self.path.iter().cloned().collect()
    }
}
