//! Loading a whole table fast.
//!
//! Streaming `SELECT key, value` costs one driver round trip and one row
//! object per entry, more than decoding the entry itself. So the table is
//! read in chunks of rows in rowid order, each chunk packed by SQLite into
//! one JSON array of `[key, value]` pairs, or `[key, value, deadline]`
//! triples when deadlines are read (`json_group_array`), which is decoded
//! straight into the map's keys and values while SQLite builds the next
//! chunk. All chunks are read in one transaction: one snapshot.
//!
//! Only rows whose key and value are text (and deadline an integer or
//! NULL) take part; anything else turns into an element the decoder
//! refuses. When a chunk does not decode, or the table has no rowid, the
//! rows are read one by one instead, which reports the exact key that is
//! wrong.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::time::SystemTime;

use persistent_map_core::codec::KeyFormat;
use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde::Deserializer;
use sqlx::sqlite::SqliteConnection;

/// Rows per chunk: big enough that a round trip per chunk is noise, small
/// enough that a chunk's text stays in the hundreds of kilobytes.
pub(crate) const CHUNK_ROWS: i64 = 4096;

/// The chunk query for `table`, with each row's deadline or without:
/// rows after rowid `?1`, at most `?2` of them.
pub(crate) fn chunk_sql(table: &str, deadlines: bool) -> String {
    let (check, element, columns) = if deadlines {
        (
            " AND typeof(expires_at) IN ('integer', 'null')",
            "json_array(key, json(value), expires_at)",
            "key, value, expires_at",
        )
    } else {
        ("", "json_array(key, json(value))", "key, value")
    };
    format!(
        "SELECT max(rowid), count(*), json_group_array(\
            CASE WHEN typeof(key) = 'text' AND typeof(value) = 'text'{check} \
                 THEN {element} ELSE json_array() END) \
         FROM (SELECT rowid, {columns} FROM \"{table}\" WHERE rowid > ?1 ORDER BY rowid LIMIT ?2)"
    )
}

/// One chunk as SQLite returned it.
pub(crate) struct Chunk {
    /// The last rowid in it.
    pub(crate) last: i64,
    pub(crate) rows: i64,
    pub(crate) json: String,
}

/// Fetches the chunk after rowid `after`; `None` past the last row.
pub(crate) async fn fetch_chunk(
    conn: &mut SqliteConnection,
    sql: &str,
    after: i64,
) -> Result<Option<Chunk>, sqlx::Error> {
    let (last, rows, json): (Option<i64>, i64, String) = sqlx::query_as(sql)
        .bind(after)
        .bind(CHUNK_ROWS)
        .fetch_one(conn)
        .await?;
    Ok(last
        .filter(|_| rows > 0)
        .map(|last| Chunk { last, rows, json }))
}

/// A sink for entries and their deadlines (`None`: no deadline, or not read).
pub(crate) type Sink<'s, K, V> = dyn FnMut(K, V, Option<SystemTime>) + Send + 's;

/// Decodes a chunk's JSON, handing each entry to `sink`. `false` when some
/// element does not decode (the caller then reads the chunk's rows one by
/// one to name the culprit); entries before it were already handed over.
pub(crate) fn decode_chunk<K, V>(json: &str, format: KeyFormat, sink: &mut Sink<'_, K, V>) -> bool
where
    K: DeserializeOwned,
    V: DeserializeOwned,
{
    let mut de = serde_json::Deserializer::from_str(json);
    let decoded = ChunkSeed {
        sink,
        format,
        _types: PhantomData,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    decoded.is_ok()
}

/// Visits the outer array, sending each entry to the sink as it is decoded.
struct ChunkSeed<'s, 'k, K, V> {
    sink: &'s mut Sink<'k, K, V>,
    format: KeyFormat,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<'de, K: DeserializeOwned, V: DeserializeOwned> DeserializeSeed<'de>
    for ChunkSeed<'_, '_, K, V>
{
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, K: DeserializeOwned, V: DeserializeOwned> Visitor<'de> for ChunkSeed<'_, '_, K, V> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of [key, value] pairs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        let pair = PairVisitor(self.format, PhantomData);
        while let Some(Pair(key, value, deadline)) = entries.next_element_seed(pair)? {
            (self.sink)(key, value, deadline);
        }
        Ok(())
    }
}

/// One `[key text, value]` or `[key text, value, deadline]` element,
/// decoded into the map's types.
struct Pair<K, V>(K, V, Option<SystemTime>);

/// Decodes a [`Pair`], its key text in the table's format.
struct PairVisitor<K, V>(KeyFormat, PhantomData<fn() -> (K, V)>);

impl<K, V> Clone for PairVisitor<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for PairVisitor<K, V> {}

impl<'de, K: DeserializeOwned, V: DeserializeOwned> DeserializeSeed<'de> for PairVisitor<K, V> {
    type Value = Pair<K, V>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Pair<K, V>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, K: DeserializeOwned, V: DeserializeOwned> Visitor<'de> for PairVisitor<K, V> {
    type Value = Pair<K, V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a [key, value] pair")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut pair: A) -> Result<Pair<K, V>, A::Error> {
        use serde::de::Error;
        let text: Cow<'de, str> = pair
            .next_element::<Cow<'de, str>>()?
            .ok_or_else(|| A::Error::custom("a row that is not text"))?;
        let key: K = self.0.decode(&text).map_err(A::Error::custom)?;
        let value: V = pair
            .next_element()?
            .ok_or_else(|| A::Error::custom("a pair without a value"))?;
        // Absent (deadlines not read) or null (none stored): no deadline.
        let deadline = match pair.next_element::<Option<i64>>()?.flatten() {
            None => None,
            Some(ms) => Some(
                persistent_map_core::codec::deadline_from_millis(ms)
                    .ok_or_else(|| A::Error::custom("a deadline out of range"))?,
            ),
        };
        if pair.next_element::<IgnoredAny>()?.is_some() {
            return Err(A::Error::custom("more than a key, a value and a deadline"));
        }
        Ok(Pair(key, value, deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode<K: DeserializeOwned + Send, V: DeserializeOwned + Send>(
        json: &str,
    ) -> (bool, Vec<(K, V)>) {
        decode_in(KeyFormat::Legacy, json)
    }

    fn decode_in<K: DeserializeOwned + Send, V: DeserializeOwned + Send>(
        format: KeyFormat,
        json: &str,
    ) -> (bool, Vec<(K, V)>) {
        let mut got = Vec::new();
        let ok = decode_chunk(json, format, &mut |k, v, _| got.push((k, v)));
        (ok, got)
    }

    fn decode_deadlines(json: &str) -> (bool, Vec<(String, u32, Option<SystemTime>)>) {
        let mut got = Vec::new();
        let ok = decode_chunk(json, KeyFormat::Distinct, &mut |k, v, d| {
            got.push((k, v, d))
        });
        (ok, got)
    }

    #[test]
    fn triples_carry_their_deadlines() {
        let (ok, got) = decode_deadlines(r#"[["a",1,1767225600123],["b",2,null],["c",3,-5]]"#);
        assert!(ok);
        let at = |ms| persistent_map_core::codec::deadline_from_millis(ms);
        assert_eq!(
            got,
            [
                ("a".to_string(), 1, at(1_767_225_600_123)),
                ("b".to_string(), 2, None),
                ("c".to_string(), 3, at(-5)),
            ]
        );
        assert!(!decode_deadlines(r#"[["a",1,"soon"]]"#).0);
        assert!(!decode_deadlines(r#"[["a",1,1.5]]"#).0);
        assert!(!decode_deadlines(r#"[["a",1,2,3]]"#).0);
    }

    #[test]
    fn pairs_decode_into_the_map_types() {
        let (ok, got) = decode::<String, Option<u32>>(r#"[["a",1],["b\"q",null],["42",7]]"#);
        assert!(ok);
        assert_eq!(
            got,
            [
                ("a".to_string(), Some(1)),
                ("b\"q".to_string(), None),
                ("42".to_string(), Some(7))
            ]
        );
        let (ok, got) = decode::<u64, String>(r#"[["42","x"]]"#);
        assert!(ok, "a number key stored as text decodes");
        assert_eq!(got, [(42, "x".to_string())]);
    }

    #[test]
    fn keys_decode_in_the_table_format() {
        let json = r#"[["null",1],["\"null\"",2],["alice",3]]"#;
        let (ok, got) = decode_in::<Option<String>, u32>(KeyFormat::Distinct, json);
        assert!(ok);
        assert_eq!(
            got,
            [
                (None, 1),
                (Some("null".to_string()), 2),
                (Some("alice".to_string()), 3)
            ]
        );
        let (ok, got) = decode_in::<Option<String>, u32>(KeyFormat::Legacy, json);
        assert!(ok);
        assert_eq!(got[1], (Some("\"null\"".to_string()), 2));
    }

    #[test]
    fn anything_else_is_refused() {
        // A row whose key or value is not text arrives as an empty pair.
        assert!(!decode::<String, Option<u32>>(r#"[["a",1],[]]"#).0);
        assert!(!decode::<String, u32>(r#"[["a","not a number"]]"#).0);
        assert!(!decode::<u64, u32>(r#"[["x",1]]"#).0);
        assert!(!decode::<String, u32>(r#"[["a",1,2,3]]"#).0);
        assert!(!decode::<String, u32>(r#"[["a",1]] trailing"#).0);
        assert!(!decode::<String, u32>(r#"[[1,1]]"#).0);
    }
}
