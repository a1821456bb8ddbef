//! A file's header and records as this backend reads them, for tools that
//! read a file without opening a backend (which would take the file's lock
//! and cut a torn tail): the format rules stay in one place.

use std::path::Path;

use csv_async::ByteRecord;
use persistent_map_core::codec::KeyFormat;
use persistent_map_core::Result;

use crate::format::{self, Header};

/// The layout a file's header line states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileLayout {
    /// The delimiter the file is written with.
    pub delimiter: u8,
    /// The format version in the header (2 to 5).
    pub version: u32,
    /// How the file holds keys.
    pub key_format: KeyFormat,
    /// Whether its records have the fourth field, the deadline (versions 4 and 5).
    pub deadlines: bool,
}

/// Reads the layout from the start of a file: `start` holds its first bytes
/// (the whole first line if it has one). `None` for a file without a
/// header: written by persistent-map 0.1.x, or empty.
///
/// ```
/// use std::path::Path;
/// use persistent_map_csv::read_header;
///
/// let layout = read_header(Path::new("a.csv"), b"persistent-map-csv/5,key,value,expires_at\n")?
///     .expect("a header");
/// assert_eq!((layout.version, layout.deadlines), (5, true));
/// assert_eq!(read_header(Path::new("a.csv"), b"alice,30\n")?, None);
/// # Ok::<(), persistent_map_core::PersistentError>(())
/// ```
///
/// # Errors
///
/// [`PersistentError::UnsupportedFormat`](persistent_map_core::PersistentError::UnsupportedFormat)
/// for a version newer than this release reads;
/// [`PersistentError::Corrupt`](persistent_map_core::PersistentError::Corrupt)
/// (line 1) for a malformed header line.
pub fn read_header(path: &Path, start: &[u8]) -> Result<Option<FileLayout>> {
    Ok(match format::parse_header(path, start)? {
        Header::Legacy => None,
        Header::Current { delimiter, layout } => Some(FileLayout {
            delimiter,
            version: layout.version(),
            key_format: layout.key_format,
            deadlines: layout.deadlines,
        }),
    })
}

/// One record of a file with a header, read but not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Record {
    /// `put`: the key's text, the value's JSON text (not yet parsed), and
    /// the deadline in milliseconds since the Unix epoch, if any.
    Put {
        /// The key's stored text.
        key: String,
        /// The value's JSON text.
        value: String,
        /// The deadline, negative before the epoch; `None`: never expires.
        expires_at: Option<i64>,
    },
    /// `del`: the tombstone of a removed key.
    Del {
        /// The key's stored text.
        key: String,
    },
    /// `batch`: the next `len` records are one all-or-nothing batch.
    Batch {
        /// The records of the batch.
        len: u64,
    },
}

/// Why a record is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BadRecord {
    /// What is wrong, in a few words.
    pub reason: String,
    /// The record's key, when the damage concerns it.
    pub key: Option<String>,
}

/// Reads one record (not the header) of a file in `layout`.
///
/// # Errors
///
/// [`BadRecord`] when the record does not follow the layout: a wrong number
/// of fields, an unknown op, a deadline that is not an integer.
pub fn read_record(record: &ByteRecord, layout: FileLayout) -> Result<Record, BadRecord> {
    match format::parse_entry(record, layout.deadlines) {
        Ok(format::Entry::Put {
            key,
            value,
            expires_at,
        }) => Ok(Record::Put {
            key,
            value,
            expires_at,
        }),
        Ok(format::Entry::Del { key }) => Ok(Record::Del { key }),
        Ok(format::Entry::Batch { len }) => Ok(Record::Batch { len }),
        Err(bad) => Err(BadRecord {
            reason: bad.reason,
            key: bad.key,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_follow_the_headers_layout() {
        let path = Path::new("t.csv");
        let old = read_header(path, b"persistent-map-csv/3,key,value\n")
            .expect("parses")
            .expect("a header");
        assert_eq!(
            (old.version, old.key_format, old.deadlines),
            (3, KeyFormat::Distinct, false)
        );
        let new = read_header(path, b"persistent-map-csv/4;key;value;expires_at\n")
            .expect("parses")
            .expect("a header");
        assert_eq!(
            (new.delimiter, new.key_format, new.deadlines),
            (b';', KeyFormat::Legacy, true)
        );
        let put = ByteRecord::from(vec!["put", "k", "1", "17"]);
        assert_eq!(
            read_record(&put, new),
            Ok(Record::Put {
                key: "k".into(),
                value: "1".into(),
                expires_at: Some(17)
            })
        );
        let bad = ByteRecord::from(vec!["put", "k", "1", "soon"]);
        assert_eq!(
            read_record(&bad, new).map_err(|e| e.key),
            Err(Some("k".into()))
        );
        assert!(read_record(&put, old).is_err(), "four fields in version 3");
    }
}
