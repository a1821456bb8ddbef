//! The record layout of format versions 2 to 5: the header line, the three
//! record kinds, and their encoding with csv-async. Versions 2 and 3 have
//! three columns; 4 and 5 add a fourth, the deadline. Even versions write
//! keys in [`KeyFormat::Legacy`] (every string key unquoted), odd ones in
//! [`KeyFormat::Distinct`].
//!
//! ```text
//! persistent-map-csv/5,key,value,expires_at   header: format tag and version, then column names
//! put,alice,"{""age"":30}",                   key as text, value as JSON, no deadline
//! put,session,1,1767225600000                 a deadline: milliseconds since the Unix epoch
//! del,alice,,                                 tombstone: alice is removed
//! batch,,2,                                   the next 2 records are one all-or-nothing batch
//! put,bob,1,
//! put,carol,2,
//! ```

use std::path::Path;

use csv_async::ByteRecord;
use persistent_map_core::codec::KeyFormat;
use persistent_map_core::{PersistentError, Result};

use crate::error::at;

/// What the first column of the header starts with.
pub(crate) const FORMAT_TAG: &str = "persistent-map-csv/";
/// The newest format this release reads, and the one of the files it creates.
pub(crate) const FORMAT_VERSION: u32 = 5;

/// The oldest format with a header: keys in [`KeyFormat::Legacy`], no deadlines.
const LEGACY_VERSION: u32 = 2;

/// The name of the deadline column in the header.
const DEADLINE_COLUMN: &[u8] = b"expires_at";

/// How a file lays out its records: its key format, and whether its
/// records have the deadline field. Together they make its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) key_format: KeyFormat,
    pub(crate) deadlines: bool,
}

impl Layout {
    /// The layout of a file this release creates with keys in `key_format`:
    /// version 5, or in the legacy key format (for a tool that copies a
    /// legacy file's key texts) version 2, which 0.2.0 reads too; it gets
    /// the deadline field with its first deadline, like any version 2 file.
    pub(crate) fn new_store(key_format: KeyFormat) -> Self {
        Self {
            key_format,
            deadlines: !matches!(key_format, KeyFormat::Legacy),
        }
    }

    /// This layout with the deadline field: what a file moves to when it
    /// gets its first deadline.
    pub(crate) fn with_deadlines(self) -> Self {
        Self {
            deadlines: true,
            ..self
        }
    }

    /// The header version of a file in this layout.
    pub(crate) fn version(self) -> u32 {
        let distinct = u32::from(!matches!(self.key_format, KeyFormat::Legacy));
        let deadlines = if self.deadlines { 2 } else { 0 };
        LEGACY_VERSION + distinct + deadlines
    }

    /// The layout of header version `version`, if this release knows it.
    fn of_version(version: u32) -> Option<Self> {
        let offset = version.checked_sub(LEGACY_VERSION)?;
        if version > FORMAT_VERSION {
            return None;
        }
        Some(Self {
            key_format: if offset % 2 == 0 {
                KeyFormat::Legacy
            } else {
                KeyFormat::Distinct
            },
            deadlines: offset >= 2,
        })
    }
}

const OP_PUT: &str = "put";
const OP_DEL: &str = "del";
const OP_BATCH: &str = "batch";

/// What the first line of a file says about its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// Format version 2 to 5, with the delimiter it was written with and
    /// the layout its version stands for.
    Current { delimiter: u8, layout: Layout },
    /// No header: a file written by persistent-map 0.1.x (or an empty file).
    Legacy,
}

/// The header line of a file in `layout`, terminator included.
pub(crate) fn header_line(delimiter: u8, layout: Layout) -> Vec<u8> {
    let mut line = format!("{FORMAT_TAG}{}", layout.version()).into_bytes();
    line.extend_from_slice(&columns(delimiter, layout));
    line.push(b'\n');
    line
}

/// The column names after the version, each behind the delimiter.
fn columns(delimiter: u8, layout: Layout) -> Vec<u8> {
    let mut names: Vec<&[u8]> = vec![b"key", b"value"];
    if layout.deadlines {
        names.push(DEADLINE_COLUMN);
    }
    let mut out = Vec::new();
    for name in names {
        out.push(delimiter);
        out.extend_from_slice(name);
    }
    out
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
    let layout = Layout::of_version(version).ok_or_else(|| {
        PersistentError::corrupt(
            at(path).with_line(1),
            format!("unknown format version {version}"),
        )
    })?;
    let rest = &rest[digits..];
    let &delimiter = rest.first().ok_or_else(malformed)?;
    let line_end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| {
        PersistentError::corrupt(at(path).with_line(1), "header line is incomplete")
    })?;
    let line = rest[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&rest[..line_end]);
    if line != columns(delimiter, layout).as_slice() {
        return Err(malformed());
    }
    Ok(Header::Current { delimiter, layout })
}

/// One record, read but not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// `put,<key text>,<value JSON>[,<deadline>]`
    Put {
        key: String,
        value: String,
        /// Milliseconds since the Unix epoch; `None` for an empty field,
        /// or a file without the deadline column.
        expires_at: Option<i64>,
    },
    /// `del,<key text>,[,]`: the tombstone of a removed key.
    Del { key: String },
    /// `batch,,<n>[,]`: the next `n` records were written as one batch.
    Batch { len: u64 },
}

/// Why a record is malformed, in a few words, and its key where that is
/// what the damage concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed {
    pub(crate) reason: String,
    pub(crate) key: Option<String>,
}

impl From<String> for Malformed {
    fn from(reason: String) -> Self {
        Self { reason, key: None }
    }
}

impl From<&str> for Malformed {
    fn from(reason: &str) -> Self {
        Self::from(reason.to_owned())
    }
}

/// Reads one record of a file whose records have the deadline field if
/// `deadlines`, or says why it is malformed.
pub(crate) fn parse_entry(record: &ByteRecord, deadlines: bool) -> Result<Entry, Malformed> {
    let fields = if deadlines { 4 } else { 3 };
    if record.len() != fields {
        return Err(format!("expected {fields} fields, found {}", record.len()).into());
    }
    let field = |i: usize| -> Result<&str, Malformed> {
        let bytes = record.get(i).unwrap_or_default();
        std::str::from_utf8(bytes)
            .map_err(|_| Malformed::from(format!("field {} is not valid UTF-8", i + 1)))
    };
    let (op, key, value) = (field(0)?, field(1)?, field(2)?);
    let deadline = if deadlines { field(3)? } else { "" };
    match op {
        OP_PUT if value.is_empty() => Err("put record without a value".into()),
        OP_PUT => Ok(Entry::Put {
            key: key.to_owned(),
            value: value.to_owned(),
            expires_at: parse_deadline(deadline).map_err(|reason| Malformed {
                reason,
                key: Some(key.to_owned()),
            })?,
        }),
        OP_DEL if !value.is_empty() => Err("del record with a value".into()),
        OP_DEL if !deadline.is_empty() => Err("del record with a deadline".into()),
        OP_DEL => Ok(Entry::Del {
            key: key.to_owned(),
        }),
        OP_BATCH if !deadline.is_empty() => Err("batch marker with a deadline".into()),
        OP_BATCH => match value.parse::<u64>() {
            Ok(len) if len > 0 && key.is_empty() => Ok(Entry::Batch { len }),
            _ => Err(format!("malformed batch marker {key:?},{value:?}").into()),
        },
        other => Err(format!("unknown op {other:?}").into()),
    }
}

/// A deadline field: empty for none, else an integer number of
/// milliseconds since the Unix epoch, digits only (with `-` before the epoch).
fn parse_deadline(field: &str) -> Result<Option<i64>, String> {
    if field.is_empty() {
        return Ok(None);
    }
    let digits = field.strip_prefix('-').unwrap_or(field);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "the deadline {field:?} is not an integer number of milliseconds"
        ));
    }
    field
        .parse()
        .map(Some)
        .map_err(|_| format!("the deadline {field:?} is out of range"))
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
    /// Whether records get the deadline field.
    deadlines: bool,
}

impl Encoder {
    /// An encoder of records in `layout` whose buffer starts with `prefix`
    /// (e.g. the header line).
    pub(crate) fn new(delimiter: u8, layout: Layout, prefix: Vec<u8>) -> Self {
        let writer = csv_core::WriterBuilder::new().delimiter(delimiter).build();
        Self {
            writer,
            out: prefix,
            deadlines: layout.deadlines,
        }
    }

    /// Runs one step of the writer on room enough for `most` bytes.
    fn step(&mut self, most: usize, write: impl FnOnce(&mut csv_core::Writer, &mut [u8]) -> usize) {
        let start = self.out.len();
        self.out.resize(start + most, 0);
        let written = write(&mut self.writer, &mut self.out[start..]);
        self.out.truncate(start + written);
    }

    fn record(&mut self, fields: [&str; 3], deadline: Option<i64>) {
        for (i, field) in fields.into_iter().enumerate() {
            if i > 0 {
                self.step(2, |w, out| w.delimiter(out).1);
            }
            self.field(field);
        }
        if self.deadlines {
            self.step(2, |w, out| w.delimiter(out).1);
            // No deadline is an empty last field, which writes no bytes
            // (csv-core quotes an empty field only when it is a record's
            // only one): most records skip the call.
            if let Some(ms) = deadline {
                self.field(&ms.to_string());
            }
        }
        self.step(4, |w, out| w.terminator(out).1);
    }

    fn field(&mut self, field: &str) {
        // At most 2 + 2 * len bytes (a field of quotes only, quoted), so
        // one call writes the field whole.
        let input = field.as_bytes();
        self.step(2 + 2 * input.len(), |w, out| w.field(input, out).2);
    }

    /// Appends a `put` record, with its deadline in milliseconds since the
    /// Unix epoch if it has one (only a layout with deadlines stores one).
    pub(crate) fn put(&mut self, key: &str, value: &str, expires_at: Option<i64>) {
        self.record([OP_PUT, key, value], expires_at);
    }

    /// Appends a tombstone.
    pub(crate) fn del(&mut self, key: &str) {
        self.record([OP_DEL, key, ""], None);
    }

    /// Appends the marker announcing a batch of `len` records.
    pub(crate) fn batch(&mut self, len: usize) {
        self.record([OP_BATCH, "", &len.to_string()], None);
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

    const PLAIN: Layout = Layout {
        key_format: KeyFormat::Distinct,
        deadlines: false,
    };

    #[test]
    fn versions_stand_for_a_key_format_and_the_deadline_field() {
        let cases = [
            (2, KeyFormat::Legacy, false),
            (3, KeyFormat::Distinct, false),
            (4, KeyFormat::Legacy, true),
            (5, KeyFormat::Distinct, true),
        ];
        for (version, key_format, deadlines) in cases {
            let layout = Layout {
                key_format,
                deadlines,
            };
            assert_eq!(layout.version(), version);
            assert_eq!(Layout::of_version(version), Some(layout));
            assert_eq!(layout.with_deadlines().key_format, key_format);
            assert!(layout.with_deadlines().deadlines);
        }
        assert_eq!(
            Layout::new_store(KeyFormat::Distinct).version(),
            FORMAT_VERSION
        );
        assert_eq!(
            Layout::new_store(KeyFormat::Legacy).version(),
            LEGACY_VERSION
        );
        assert_eq!(Layout::of_version(1), None);
        assert_eq!(Layout::of_version(6), None);
    }

    #[test]
    fn header_round_trips_and_old_files_are_legacy() {
        let newest = Layout::new_store(KeyFormat::Distinct);
        let line = header_line(b';', newest);
        assert_eq!(line, b"persistent-map-csv/5;key;value;expires_at\n");
        assert_eq!(
            parse_header(path(), &line).expect("parses"),
            Header::Current {
                delimiter: b';',
                layout: newest
            }
        );
        let legacy = Layout {
            key_format: KeyFormat::Legacy,
            deadlines: false,
        };
        let line = header_line(b',', legacy);
        assert_eq!(line, b"persistent-map-csv/2,key,value\n");
        assert_eq!(
            parse_header(path(), &line).expect("parses"),
            Header::Current {
                delimiter: b',',
                layout: legacy
            }
        );
        assert_eq!(
            parse_header(path(), b"persistent-map-csv/3,key,value\r\n").expect("parses"),
            Header::Current {
                delimiter: b',',
                layout: PLAIN
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
        let newer = parse_header(path(), b"persistent-map-csv/6,key,value,expires_at\n");
        assert!(matches!(
            newer,
            Err(PersistentError::UnsupportedFormat { found: 6, .. })
        ));
        let unknown = parse_header(path(), b"persistent-map-csv/1,key,value\n");
        assert!(matches!(unknown, Err(PersistentError::Corrupt { .. })));
        let broken = parse_header(path(), b"persistent-map-csv/2,kex,value\n");
        assert!(matches!(broken, Err(PersistentError::Corrupt { .. })));
        // The columns must match the version.
        for line in [
            &b"persistent-map-csv/5,key,value\n"[..],
            b"persistent-map-csv/3,key,value,expires_at\n",
            b"persistent-map-csv/4,key,value,expiry\n",
        ] {
            let err = parse_header(path(), line);
            assert!(
                matches!(err, Err(PersistentError::Corrupt { .. })),
                "{err:?}"
            );
        }
    }

    #[test]
    fn awkward_fields_are_quoted() {
        let mut enc = Encoder::new(b',', PLAIN, Vec::new());
        enc.put("a,b", "\"x\"", None);
        enc.del("new\nline");
        enc.batch(2);
        let bytes = enc.finish();
        assert_eq!(
            String::from_utf8(bytes).expect("utf-8"),
            "put,\"a,b\",\"\"\"x\"\"\"\ndel,\"new\nline\",\nbatch,,2\n"
        );
    }

    #[test]
    fn a_layout_with_deadlines_gives_every_record_the_field() {
        let mut enc = Encoder::new(b';', Layout::new_store(KeyFormat::Distinct), Vec::new());
        enc.put("a", "1", Some(1_767_225_600_123));
        enc.put("b", "2", None);
        enc.put("c", "3", Some(-5));
        enc.del("a");
        enc.batch(2);
        let bytes = enc.finish();
        assert_eq!(
            String::from_utf8(bytes).expect("utf-8"),
            "put;a;1;1767225600123\nput;b;2;\nput;c;3;-5\ndel;a;;\nbatch;;2;\n"
        );
    }

    /// A long value that needs quoting is encoded in one pass: a writer
    /// staging it through a small buffer rescanned the rest of the field for
    /// every piece, which took minutes for 32 MiB.
    #[test]
    fn a_long_quoted_value_is_encoded_whole() {
        let value = format!("\"{}\"", "x".repeat(32 << 20));
        let mut enc = Encoder::new(b',', PLAIN, Vec::new());
        enc.put("k", &value, None);
        let bytes = enc.finish();
        assert_eq!(bytes.len(), "put,k,".len() + value.len() + 4 + 1);
        assert!(bytes.starts_with(b"put,k,\"\"\"xx"));
        assert!(bytes.ends_with(b"xx\"\"\"\n"));
    }

    #[test]
    fn entries_are_validated() {
        let rec = |fields: &[&str]| ByteRecord::from(fields.to_vec());
        assert_eq!(
            parse_entry(&rec(&["put", "k", "1"]), false),
            Ok(Entry::Put {
                key: "k".into(),
                value: "1".into(),
                expires_at: None,
            })
        );
        assert_eq!(
            parse_entry(&rec(&["del", "k", ""]), false),
            Ok(Entry::Del { key: "k".into() })
        );
        assert_eq!(
            parse_entry(&rec(&["batch", "", "3"]), false),
            Ok(Entry::Batch { len: 3 })
        );
        assert!(parse_entry(&rec(&["put", "k"]), false).is_err());
        assert!(parse_entry(&rec(&["upsert", "k", "1"]), false).is_err());
        assert!(parse_entry(&rec(&["put", "k", ""]), false).is_err());
        assert!(parse_entry(&rec(&["batch", "", "0"]), false).is_err());
        assert!(parse_entry(&rec(&["put", "k", "1", ""]), false).is_err());
    }

    #[test]
    fn deadline_fields_are_validated() {
        let rec = |fields: &[&str]| ByteRecord::from(fields.to_vec());
        assert_eq!(
            parse_entry(&rec(&["put", "k", "1", "1767225600123"]), true),
            Ok(Entry::Put {
                key: "k".into(),
                value: "1".into(),
                expires_at: Some(1_767_225_600_123),
            })
        );
        assert_eq!(
            parse_entry(&rec(&["put", "k", "1", "-5"]), true),
            Ok(Entry::Put {
                key: "k".into(),
                value: "1".into(),
                expires_at: Some(-5),
            })
        );
        assert_eq!(
            parse_entry(&rec(&["put", "k", "1", ""]), true),
            Ok(Entry::Put {
                key: "k".into(),
                value: "1".into(),
                expires_at: None,
            })
        );
        assert_eq!(
            parse_entry(&rec(&["del", "k", "", ""]), true),
            Ok(Entry::Del { key: "k".into() })
        );
        for bad in ["soon", "1.5", "+5", " 5", "-", "99999999999999999999"] {
            let err = parse_entry(&rec(&["put", "k", "1", bad]), true).expect_err(bad);
            assert_eq!(err.key.as_deref(), Some("k"), "{bad}");
            assert!(err.reason.contains("deadline"), "{bad}: {}", err.reason);
        }
        assert!(parse_entry(&rec(&["del", "k", "", "5"]), true).is_err());
        assert!(parse_entry(&rec(&["batch", "", "2", "5"]), true).is_err());
        assert!(parse_entry(&rec(&["put", "k", "1"]), true).is_err());
    }
}
