//! Compaction: the live entries of a file, re-encoded without dead rows.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use persistent_map_core::Result;

use crate::format::{header_line, Encoder, Layout};
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

/// A live entry: its last write's sequence number, value and deadline.
type Live = (u64, String, Option<i64>);

/// Reads the file at `path`, in `layout`, and encodes its live entries (with
/// their deadlines, expired or not) in the order of their last write, under
/// the header of layout `to`: the same one, or the same one with the
/// deadline field, for a file that gets its first deadline. Either way the
/// file keeps its key format.
///
/// Works on the key text, without decoding keys or values: the text of a
/// key is what identifies it in the file. An incomplete tail is left out,
/// like a load would. A malformed record is an error and nothing is written.
pub(crate) async fn compact_contents(
    path: &Path,
    delimiter: u8,
    layout: Layout,
    to: Layout,
) -> Result<Compacted> {
    // Per live key: when it was last written, its value and its deadline.
    let mut live: HashMap<String, Live> = HashMap::new();
    let mut seq = 0_u64;
    scan(path, delimiter, layout.deadlines, |change| {
        seq += 1;
        match change.value {
            Some(value) => {
                live.insert(change.key, (seq, value, change.expires_at));
            }
            None => {
                live.remove(&change.key);
            }
        }
        Ok(())
    })
    .await?;

    let mut ordered: Vec<(String, Live)> = live.into_iter().collect();
    ordered.sort_unstable_by_key(|(_, (seq, ..))| *seq);
    let mut encoder = Encoder::new(delimiter, to, header_line(delimiter, to));
    let mut hashes = HashSet::with_capacity(ordered.len());
    for (key, (_, value, expires_at)) in &ordered {
        encoder.put(key, value, *expires_at);
        hashes.insert(key_hash(key));
    }
    Ok(Compacted {
        contents: encoder.finish(),
        live: hashes,
    })
}
