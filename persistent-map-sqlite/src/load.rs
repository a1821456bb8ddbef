//! Loading a whole table fast.
//!
//! Streaming `SELECT key, value` costs one driver round trip and one row
//! object per entry, more than decoding the entry itself. So the table is
//! read in chunks of rows in rowid order, each chunk packed by SQLite into
//! one JSON array of `[key, value]` pairs (`json_group_array`), which is
//! decoded straight into the map's keys and values while SQLite builds the
//! next chunk. All chunks are read in one transaction: one snapshot.
//!
//! Only rows whose key and value are text take part (anything else turns
//! into an element the decoder refuses). When a chunk does not decode, or
//! the table has no rowid, the rows are read one by one instead, which
//! reports the exact key that is wrong.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use persistent_map_core::codec::KeyFormat;
use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde::Deserializer;
use sqlx::sqlite::SqliteConnection;

/// Rows per chunk: big enough that a round trip per chunk is noise, small
/// enough that a chunk's text stays in the hundreds of kilobytes.
pub(crate) const CHUNK_ROWS: i64 = 4096;

/// The chunk query for `table`: rows after rowid `?1`, at most `?2` of them.
pub(crate) fn chunk_sql(table: &str) -> String {
    format!(
        "SELECT max(rowid), count(*), json_group_array(\
            CASE WHEN typeof(key) = 'text' AND typeof(value) = 'text' \
                 THEN json_array(key, json(value)) ELSE json_array() END) \
         FROM (SELECT rowid, key, value FROM \"{table}\" WHERE rowid > ?1 ORDER BY rowid LIMIT ?2)"
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

/// Decodes a chunk's JSON, handing each entry to `sink`. `false` when some
/// element does not decode (the caller then reads the chunk's rows one by
/// one to name the culprit); entries before it were already handed over.
pub(crate) fn decode_chunk<K, V>(
    json: &str,
    format: KeyFormat,
    sink: &mut (dyn FnMut(K, V) + Send),
) -> bool
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

/// Visits the outer array, sending each pair to the sink as it is decoded.
struct ChunkSeed<'s, K, V> {
    sink: &'s mut (dyn FnMut(K, V) + Send),
    format: KeyFormat,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<'de, K: DeserializeOwned, V: DeserializeOwned> DeserializeSeed<'de> for ChunkSeed<'_, K, V> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, K: DeserializeOwned, V: DeserializeOwned> Visitor<'de> for ChunkSeed<'_, K, V> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of [key, value] pairs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        let pair = PairVisitor(self.format, PhantomData);
        while let Some(Pair(key, value)) = entries.next_element_seed(pair)? {
            (self.sink)(key, value);
        }
        Ok(())
    }
}

/// One `[key text, value]` element, decoded into the map's types.
struct Pair<K, V>(K, V);

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
        if pair.next_element::<IgnoredAny>()?.is_some() {
            return Err(A::Error::custom("more than a key and a value"));
        }
        Ok(Pair(key, value))
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
        let ok = decode_chunk(json, format, &mut |k, v| got.push((k, v)));
        (ok, got)
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
        assert!(!decode::<String, u32>(r#"[["a",1,2]]"#).0);
        assert!(!decode::<String, u32>(r#"[["a",1]] trailing"#).0);
        assert!(!decode::<String, u32>(r#"[[1,1]]"#).0);
    }
}
