//! Compaction: the live entries of a file, re-encoded without dead rows.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use persistent_map_core::codec::KeyFormat;
use persistent_map_core::Result;

use crate::format::{header_line, Encoder};
use crate::read::{key_hash, scan};

/// A compacted file's contents, ready to replace the old file.
#[derive(Debug)]
pub(crate) struct Compacted {
    /// The header and one `put` record per live key.
    pub(crate) contents: Vec<u8>,
    /// [`key_hash`] of every live key.
    pub(crate) live: HashSet<u64>,
}

impl Compacted {
    /// The number of data rows in [`contents`](Self::contents).
    pub(crate) fn rows(&self) -> u64 {
        self.live.len() as u64
    }
}

/// Reads the version 2 or 3 file at `path` and encodes its live entries in
/// the order of their last write, under the header of the same version: the
/// file keeps its `key_format`.
///
/// Works on the key text, without decoding keys or values: the text of a
/// key is what identifies it in the file. An incomplete tail is left out,
/// like a load would. A malformed record is an error and nothing is written.
pub(crate) async fn compact_contents(
    path: &Path,
    delimiter: u8,
    key_format: KeyFormat,
) -> Result<Compacted> {
    let mut live: HashMap<String, (u64, String)> = HashMap::new();
    let mut seq = 0_u64;
    scan(path, delimiter, |change| {
        seq += 1;
        match change.value {
            Some(value) => {
                live.insert(change.key, (seq, value));
            }
            None => {
                live.remove(&change.key);
            }
        }
        Ok(())
    })
    .await?;

    let mut ordered: Vec<(String, (u64, String))> = live.into_iter().collect();
    ordered.sort_unstable_by_key(|(_, (seq, _))| *seq);
    let mut encoder = Encoder::new(delimiter, header_line(delimiter, key_format));
    let mut hashes = HashSet::with_capacity(ordered.len());
    for (key, (_, value)) in &ordered {
        encoder.put(key, value);
        hashes.insert(key_hash(key));
    }
    Ok(Compacted {
        contents: encoder.finish(),
        live: hashes,
    })
}
