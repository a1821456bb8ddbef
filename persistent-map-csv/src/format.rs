//! The record layout of format versions 2 and 3: the header line, the three
//! record kinds, and their encoding with csv-async. The two versions differ
//! only in how keys are written: version 2 in [`KeyFormat::Legacy`] (every
//! string key unquoted), version 3 in [`KeyFormat::Distinct`].
//!
//! ```text
//! persistent-map-csv/3,key,value     header: format tag and version, then column names
//! put,alice,"{""age"":30}"           key as text, value as JSON
//! del,alice,                         tombstone: alice is removed
//! batch,,2                           the next 2 records are one all-or-nothing batch
//! put,bob,1
//! put,carol,2
//! ```

use std::path::Path;

use csv_async::ByteRecord;
use persistent_map_core::codec::KeyFormat;
use persistent_map_core::{PersistentError, Result};

use crate::error::at;

/// What the first column of the header starts with.
pub(crate) const FORMAT_TAG: &str = "persistent-map-csv/";
/// The newest format this release reads, and the one of the files it creates.
pub(crate) const FORMAT_VERSION: u32 = 3;

/// The oldest format with a header: keys in [`KeyFormat::Legacy`].
const LEGACY_VERSION: u32 = 2;

/// The header version of a file whose keys are in `format`.
fn version_of(format: KeyFormat) -> u32 {
    match format {
        KeyFormat::Legacy => LEGACY_VERSION,
        _ => FORMAT_VERSION,
    }
}

const OP_PUT: &str = "put";
const OP_DEL: &str = "del";
const OP_BATCH: &str = "batch";

/// What the first line of a file says about its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// Format version 2 or 3, with the delimiter it was written with and
    /// the key format its version stands for.
    Current {
        delimiter: u8,
        key_format: KeyFormat,
    },
    /// No header: a file written by persistent-map 0.1.x (or an empty file).
    Legacy,
}

/// The header line of a file whose keys are in `key_format`, terminator included.
pub(crate) fn header_line(delimiter: u8, key_format: KeyFormat) -> Vec<u8> {
    let mut line = format!("{FORMAT_TAG}{}", version_of(key_format)).into_bytes();
    line.push(delimiter);
    line.extend_from_slice(b"key");
    line.push(delimiter);
    line.extend_from_slice(b"value\n");
    line
}

/// Reads the format from the start of a file.
///
/// `start` holds the file's first bytes: the whole first line if the file
/// has one, or the whole file if it is shorter.
pub(crate) fn parse_header(path: &Path, start: &[u8]) -> Result<Header> {
    let Some(rest) = start.strip_prefix(FORMAT_TAG.as_bytes()) else {
        return Ok(Header::Legacy);
    };
    let malformed = || PersistentError::corrupt(at(path).with_line(1), "malformed header line");
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let version: u32 = std::str::from_utf8(&rest[..digits])
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(malformed)?;
    if version > FORMAT_VERSION {
        return Err(PersistentError::UnsupportedFormat {
            location: at(path),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let key_format = match version {
        LEGACY_VERSION => KeyFormat::Legacy,
        FORMAT_VERSION => KeyFormat::Distinct,
        _ => {
            return Err(PersistentError::corrupt(
                at(path).with_line(1),
                format!("unknown format version {version}"),
            ))
        }
    };
    let rest = &rest[digits..];
    let &delimiter = rest.first().ok_or_else(malformed)?;
    let mut expected = vec![delimiter];
    expected.extend_from_slice(b"key");
    expected.push(delimiter);
    expected.extend_from_slice(b"value");
    let line_end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| {
        PersistentError::corrupt(at(path).with_line(1), "header line is incomplete")
    })?;
    let line = rest[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&rest[..line_end]);
    if line != expected.as_slice() {
        return Err(malformed());
    }
    Ok(Header::Current {
        delimiter,
        key_format,
    })
}

/// One record of a version 2 file, read but not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// `put,<key text>,<value JSON>`
    Put { key: String, value: String },
    /// `del,<key text>,`: the tombstone of a removed key.
    Del { key: String },
    /// `batch,,<n>`: the next `n` records were written as one batch.
    Batch { len: u64 },
}

/// Reads one record, or says in a few words why it is malformed.
pub(crate) fn parse_entry(record: &ByteRecord) -> Result<Entry, String> {
    if record.len() != 3 {
        return Err(format!("expected 3 fields, found {}", record.len()));
    }
    let field = |i: usize| -> Result<&str, String> {
        let bytes = record.get(i).unwrap_or_default();
        std::str::from_utf8(bytes).map_err(|_| format!("field {} is not valid UTF-8", i + 1))
    };
    let (op, key, value) = (field(0)?, field(1)?, field(2)?);
    match op {
        OP_PUT if value.is_empty() => Err(String::from("put record without a value")),
        OP_PUT => Ok(Entry::Put {
            key: key.to_owned(),
            value: value.to_owned(),
        }),
        OP_DEL if !value.is_empty() => Err(String::from("del record with a value")),
        OP_DEL => Ok(Entry::Del {
            key: key.to_owned(),
        }),
        OP_BATCH => match value.parse::<u64>() {
            Ok(len) if len > 0 && key.is_empty() => Ok(Entry::Batch { len }),
            _ => Err(format!("malformed batch marker {key:?},{value:?}")),
        },
        other => Err(format!("unknown op {other:?}")),
    }
}

/// Encodes records into one buffer, to be written with a single call.
///
/// Built on csv-core's writer, which csv-async's writer also uses, with the
/// output grown to fit each field whole: a writer with a fixed staging
/// buffer hands a long quoted field over in buffer-sized pieces, and csv-core
/// rescans the rest of the field for quotes on every piece, which made a
/// 32 MiB value take minutes to encode.
pub(crate) struct Encoder {
    writer: csv_core::Writer,
    out: Vec<u8>,
}

impl Encoder {
    /// An encoder whose buffer starts with `prefix` (e.g. the header line).
    pub(crate) fn new(delimiter: u8, prefix: Vec<u8>) -> Self {
        let writer = csv_core::WriterBuilder::new().delimiter(delimiter).build();
        Self {
            writer,
            out: prefix,
        }
    }

    /// Runs one step of the writer on room enough for `most` bytes.
    fn step(&mut self, most: usize, write: impl FnOnce(&mut csv_core::Writer, &mut [u8]) -> usize) {
        let start = self.out.len();
        self.out.resize(start + most, 0);
        let written = write(&mut self.writer, &mut self.out[start..]);
        self.out.truncate(start + written);
    }

    fn record(&mut self, fields: [&str; 3]) {
        for (i, field) in fields.into_iter().enumerate() {
            if i > 0 {
                self.step(2, |w, out| w.delimiter(out).1);
            }
            // At most 2 + 2 * len bytes (a field of quotes only, quoted), so
            // one call writes the field whole.
            let input = field.as_bytes();
            self.step(2 + 2 * input.len(), |w, out| w.field(input, out).2);
        }
        self.step(4, |w, out| w.terminator(out).1);
    }

    /// Appends a `put` record.
    pub(crate) fn put(&mut self, key: &str, value: &str) {
        self.record([OP_PUT, key, value]);
    }

    /// Appends a tombstone.
    pub(crate) fn del(&mut self, key: &str) {
        self.record([OP_DEL, key, ""]);
    }

    /// Appends the marker announcing a batch of `len` records.
    pub(crate) fn batch(&mut self, len: usize) {
        self.record([OP_BATCH, "", &len.to_string()]);
    }

    /// The encoded bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.step(2, |w, out| w.finish(out).1);
        self.out
    }
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("encoded", &self.out.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static Path {
        Path::new("t.csv")
    }

    #[test]
    fn header_round_trips_and_old_files_are_legacy() {
        let line = header_line(b';', KeyFormat::Distinct);
        assert_eq!(line, b"persistent-map-csv/3;key;value\n");
        assert_eq!(
            parse_header(path(), &line).expect("parses"),
            Header::Current {
                delimiter: b';',
                key_format: KeyFormat::Distinct
            }
        );
        let line = header_line(b',', KeyFormat::Legacy);
        assert_eq!(line, b"persistent-map-csv/2,key,value\n");
        assert_eq!(
            parse_header(path(), &line).expect("parses"),
            Header::Current {
                delimiter: b',',
                key_format: KeyFormat::Legacy
            }
        );
        assert_eq!(
            parse_header(path(), b"alice,30\n").expect("parses"),
            Header::Legacy
        );
        assert_eq!(parse_header(path(), b"").expect("parses"), Header::Legacy);
    }

    #[test]
    fn newer_and_broken_headers_are_refused() {
        let newer = parse_header(path(), b"persistent-map-csv/4,key,value\n");
        assert!(matches!(
            newer,
            Err(PersistentError::UnsupportedFormat { found: 4, .. })
        ));
        let unknown = parse_header(path(), b"persistent-map-csv/1,key,value\n");
        assert!(matches!(unknown, Err(PersistentError::Corrupt { .. })));
        let broken = parse_header(path(), b"persistent-map-csv/2,kex,value\n");
        assert!(matches!(broken, Err(PersistentError::Corrupt { .. })));
    }

    #[test]
    fn awkward_fields_are_quoted() {
        let mut enc = Encoder::new(b',', Vec::new());
        enc.put("a,b", "\"x\"");
        enc.del("new\nline");
        enc.batch(2);
        let bytes = enc.finish();
        assert_eq!(
            String::from_utf8(bytes).expect("utf-8"),
            "put,\"a,b\",\"\"\"x\"\"\"\ndel,\"new\nline\",\nbatch,,2\n"
        );
    }

    /// A long value that needs quoting is encoded in one pass: a writer
    /// staging it through a small buffer rescanned the rest of the field for
    /// every piece, which took minutes for 32 MiB.
    #[test]
    fn a_long_quoted_value_is_encoded_whole() {
        let value = format!("\"{}\"", "x".repeat(32 << 20));
        let mut enc = Encoder::new(b',', Vec::new());
        enc.put("k", &value);
        let bytes = enc.finish();
        assert_eq!(bytes.len(), "put,k,".len() + value.len() + 4 + 1);
        assert!(bytes.starts_with(b"put,k,\"\"\"xx"));
        assert!(bytes.ends_with(b"xx\"\"\"\n"));
    }

    #[test]
    fn entries_are_validated() {
        let rec = |fields: &[&str]| ByteRecord::from(fields.to_vec());
        assert_eq!(
            parse_entry(&rec(&["put", "k", "1"])),
            Ok(Entry::Put {
                key: "k".into(),
                value: "1".into()
            })
        );
        assert_eq!(
            parse_entry(&rec(&["del", "k", ""])),
            Ok(Entry::Del { key: "k".into() })
        );
        assert_eq!(
            parse_entry(&rec(&["batch", "", "3"])),
            Ok(Entry::Batch { len: 3 })
        );
        assert!(parse_entry(&rec(&["put", "k"])).is_err());
        assert!(parse_entry(&rec(&["upsert", "k", "1"])).is_err());
        assert!(parse_entry(&rec(&["put", "k", ""])).is_err());
        assert!(parse_entry(&rec(&["batch", "", "0"])).is_err());
    }
}
