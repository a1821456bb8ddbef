//! Entries as the tool handles them, without the application's types: the
//! key as its stored text, the value as JSON. Also how keys given on the
//! command line are read, the JSON Lines form of `dump`, and the checksum
//! `copy` compares.

use persistent_map_core::codec::KeyFormat;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One entry: the key's stored text (in the store's
/// `persistent_map_core::codec::KeyFormat`: string keys as themselves, other
/// keys as JSON), the value as JSON, and its deadline if it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Value,
    /// When the entry expires, in whole milliseconds since the Unix epoch
    /// (negative before it), as every backend stores it; `None`: never.
    /// Signed because the stores' fields are: a deadline before 1970 is
    /// carried over too, not refused.
    pub expires_at: Option<i64>,
}

/// A line of `dump` output and `load` input.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub key: Value,
    pub value: Value,
    /// The deadline in ms since the Unix epoch; absent (or `null`): never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl Entry {
    /// Appends the entry as one JSON Lines record,
    /// `{"key":…,"value":…}\n`, with `"expires_at":<ms>` after the value
    /// only when the entry has a deadline (so dumps of entries without
    /// deadlines are what they were before deadlines came).
    ///
    /// A stored key text is always dumped as a JSON string: read without
    /// the application's key type, `42` is the text `"42"`. Loading it
    /// stores the same text again, so a dump, load, dump round trip is
    /// byte-identical.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            key: &'a str,
            value: &'a Value,
            #[serde(skip_serializing_if = "Option::is_none")]
            expires_at: Option<i64>,
        }
        // Serializing a str and a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(
            &mut *out,
            &Borrowed {
                key: &self.key,
                value: &self.value,
                expires_at: self.expires_at,
            },
        );
        out.push(b'\n');
    }
}

/// The stored text of a key given as JSON, in a store's key `format`: a
/// JSON string as its text (quoted in the distinct format when that text is
/// itself JSON), anything else as its compact JSON.
pub fn key_text(format: KeyFormat, key: &Value) -> String {
    // A serde_json::Value always serializes.
    format.encode(key).unwrap_or_default()
}

/// A key given on the command line: JSON (`"alice"`, `42`, `{"id":7}`) or,
/// when it is not JSON, plain text (`alice`).
pub fn key_from_arg(arg: &str) -> Value {
    serde_json::from_str(arg).unwrap_or_else(|_| Value::String(arg.to_owned()))
}

/// A key text shown in messages: as a JSON string, cut to a readable length.
pub fn show_key(key: &str) -> String {
    persistent_map_core::render_key(key)
}

/// An order-independent checksum over encoded entries: the entry count, and
/// the wrapping sum and the xor of a 64-bit FNV-1a hash of each entry's key
/// text, compact value JSON and deadline (hashed only when there is one, so
/// the checksum of entries without deadlines is what it was before
/// deadlines came). Stores that list their entries in different orders give
/// the same checksum for the same entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksum {
    pub entries: u64,
    sum: u64,
    xor: u64,
}

impl Checksum {
    pub fn add(&mut self, entry: &Entry) {
        let mut hash = Fnv::new();
        hash.bytes(entry.key.as_bytes());
        hash.bytes(&[0xff]);
        // Writing into the hasher cannot fail.
        let _ = serde_json::to_writer(&mut hash, &entry.value);
        if let Some(ms) = entry.expires_at {
            // 0xff never occurs in UTF-8 JSON: the value ends before it.
            hash.bytes(&[0xff]);
            hash.bytes(&ms.to_le_bytes());
        }
        let h = hash.0;
        self.entries += 1;
        self.sum = self.sum.wrapping_add(h);
        self.xor ^= h;
    }

    /// The checksum as 32 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}{:016x}", self.sum, self.xor)
    }
}

/// FNV-1a, 64 bits: stable across processes and releases.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

impl std::io::Write for Fnv {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_from_the_command_line() {
        for format in [KeyFormat::Legacy, KeyFormat::Distinct] {
            let text = |arg: &str| key_text(format, &key_from_arg(arg));
            assert_eq!(text("alice"), "alice");
            assert_eq!(text("\"alice\""), "alice");
            assert_eq!(text("42"), "42");
            assert_eq!(text("{\"id\": 7}"), "{\"id\":7}");
            assert_eq!(text("not json {"), "not json {");
        }
        assert_eq!(key_text(KeyFormat::Legacy, &key_from_arg("\"42\"")), "42");
        assert_eq!(
            key_text(KeyFormat::Distinct, &key_from_arg("\"42\"")),
            "\"42\""
        );
        assert_eq!(key_text(KeyFormat::Distinct, &key_from_arg("null")), "null");
        assert_eq!(
            key_text(KeyFormat::Distinct, &key_from_arg("\"null\"")),
            "\"null\""
        );
    }

    #[test]
    fn lines_and_checksums() {
        let entry = Entry {
            key: "42".into(),
            value: json!({"b": 1, "a": [true, null]}),
            expires_at: None,
        };
        let mut out = Vec::new();
        entry.write_line(&mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "{\"key\":\"42\",\"value\":{\"a\":[true,null],\"b\":1}}\n"
        );
        let other = Entry {
            key: "x".into(),
            value: json!(1),
            expires_at: None,
        };
        let (mut one, mut two) = (Checksum::default(), Checksum::default());
        one.add(&entry);
        one.add(&other);
        two.add(&other);
        two.add(&entry);
        assert_eq!(one, two);
        let mut three = Checksum::default();
        three.add(&entry);
        three.add(&Entry {
            key: "x".into(),
            value: json!(2),
            expires_at: None,
        });
        assert_ne!(one.hex(), three.hex());

        let expiring = Entry {
            expires_at: Some(1_767_225_600_000),
            ..entry.clone()
        };
        let mut line = Vec::new();
        expiring.write_line(&mut line);
        assert_eq!(
            String::from_utf8(line).expect("utf-8"),
            "{\"key\":\"42\",\"value\":{\"a\":[true,null],\"b\":1},\"expires_at\":1767225600000}\n"
        );
        let (mut plain, mut with_deadline, mut later) = (
            Checksum::default(),
            Checksum::default(),
            Checksum::default(),
        );
        plain.add(&entry);
        with_deadline.add(&expiring);
        later.add(&Entry {
            expires_at: Some(1_767_225_600_001),
            ..entry
        });
        assert_ne!(plain, with_deadline, "the deadline counts");
        assert_ne!(with_deadline, later);
    }

    #[test]
    fn load_lines_take_a_deadline_and_nothing_else() {
        let line: Line = serde_json::from_str(r#"{"key":"k","value":1,"expires_at":5}"#)
            .expect("a line with a deadline");
        assert_eq!(line.expires_at, Some(5));
        let line: Line = serde_json::from_str(r#"{"key":"k","value":1}"#).expect("a plain line");
        assert_eq!(line.expires_at, None);
        for bad in [
            r#"{"key":"k","value":1,"expires_at":"soon"}"#,
            r#"{"key":"k","value":1,"expires_at":1.5}"#,
            r#"{"key":"k","value":1,"ttl":5}"#,
        ] {
            assert!(serde_json::from_str::<Line>(bad).is_err(), "{bad}");
        }
    }
}
