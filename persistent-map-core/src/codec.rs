//! Text encodings shared by backends that store keys and values as text
//! (SQLite, CSV, Postgres, Redis), so a store is readable by a person and
//! interchangeable between backends.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// How a store writes keys as text: the encoding a store was created with,
/// which it records (a format version in a meta table, a header) and keeps.
///
/// Both formats store a key that serializes to a JSON string (a `String`, a
/// newtype around one, a unit enum variant, a UUID, a date) as that string,
/// unquoted, when they can, so text keys stay readable (`alice`, `user:7`),
/// and every other key as its JSON text: `42`, `[1,"a"]`, `{"id":7}`, `null`.
/// They differ for string keys whose text is itself JSON:
///
/// * [`Legacy`](Self::Legacy) (persistent-map 0.1.x and 0.2.0 stores) stores
///   every string unquoted, so a key type that can be both a string and
///   something else maps two keys to one text: `Option<String>` keys `None`
///   and `Some("null")` both become `null`, and after a reopen only one of
///   them remains.
/// * [`Distinct`](Self::Distinct) (every store this release creates) quotes
///   such a string: `Some("null")` is stored as `"null"`. A stored text that
///   parses as JSON is then exactly the key's JSON, one that does not is a
///   raw string, so distinct keys always get distinct texts.
///
/// ```
/// use persistent_map_core::codec::KeyFormat;
///
/// let none: Option<String> = None;
/// let text_null = Some("null".to_string());
///
/// // The legacy format cannot tell them apart.
/// assert_eq!(KeyFormat::Legacy.encode(&none)?, "null");
/// assert_eq!(KeyFormat::Legacy.encode(&text_null)?, "null");
///
/// // The distinct format can, and reads each back.
/// assert_eq!(KeyFormat::Distinct.encode(&none)?, "null");
/// assert_eq!(KeyFormat::Distinct.encode(&text_null)?, r#""null""#);
/// assert_eq!(KeyFormat::Distinct.decode::<Option<String>>("null")?, None);
/// assert_eq!(KeyFormat::Distinct.decode::<Option<String>>(r#""null""#)?, text_null);
///
/// // Ordinary keys look the same in both.
/// assert_eq!(KeyFormat::Distinct.encode("user:7")?, "user:7");
/// assert_eq!(KeyFormat::Distinct.encode(&42_u32)?, "42");
/// assert_eq!(KeyFormat::Distinct.encode("42")?, r#""42""#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyFormat {
    /// Every string key unquoted, as 0.1.x wrote keys (`key.to_string()`):
    /// [`key_to_text`] and [`key_from_text`]. Stores created before this
    /// format had a name keep it, since rewriting them silently could change
    /// keys other programs read.
    Legacy,
    /// A string key unquoted only when its text does not parse as JSON,
    /// quoted otherwise: one text per key, whatever the key type. The format
    /// of every new store ([`KeyFormat::NEW_STORES`]).
    Distinct,
}

impl KeyFormat {
    /// The format a backend gives a store it creates.
    pub const NEW_STORES: Self = Self::Distinct;

    /// Encodes `key` as this format stores it.
    ///
    /// # Errors
    ///
    /// When the key cannot be serialized to JSON (e.g. a map with non-string keys).
    pub fn encode<K: Serialize + ?Sized>(self, key: &K) -> Result<String, serde_json::Error> {
        match self {
            Self::Legacy => key_to_text(key),
            Self::Distinct => distinct_key_to_text(key),
        }
    }

    /// Decodes a key text this format stored.
    ///
    /// # Errors
    ///
    /// When the text is not a `K` in this format (for example because the
    /// key type changed since it was written).
    pub fn decode<K: DeserializeOwned>(self, text: &str) -> Result<K, serde_json::Error> {
        match self {
            Self::Legacy => key_from_text(text),
            Self::Distinct => distinct_key_from_text(text),
        }
    }
}

/// Encodes a key as text in the [`KeyFormat::Legacy`] format.
///
/// A key that serializes to a JSON string (a `String`, a newtype around one,
/// a unit enum variant, a UUID, a date) is stored as that string, unquoted, so
/// text keys stay readable and match what persistent-map 0.1.x wrote
/// (`key.to_string()`). Every other key is stored as its JSON text: `42`,
/// `[1,"a"]`, `{"id":7}`.
///
/// The encoding is one-to-one for every key type whose values are all
/// strings or all non-strings, which covers the usual key types. A type that
/// can be both, such as `Option<String>` (`None` and `Some("null")` both
/// become `null`) or an untagged enum of a string and a number (`"42"` and
/// `42`), can map two keys to one stored text; [`KeyFormat::Distinct`] does
/// not, and is what stores created by this release use.
///
/// ```
/// use persistent_map_core::codec::{key_from_text, key_to_text};
///
/// assert_eq!(key_to_text(&"alice")?, "alice");
/// assert_eq!(key_to_text(&42_u32)?, "42");
/// assert_eq!(key_to_text(&(1, "a"))?, r#"[1,"a"]"#);
/// assert_eq!(key_from_text::<String>("42")?, "42");
/// assert_eq!(key_from_text::<u32>("42")?, 42);
///
/// // The legacy format's limit: two keys, one text.
/// assert_eq!(key_to_text(&None::<String>)?, "null");
/// assert_eq!(key_to_text(&Some("null"))?, "null");
/// # Ok::<(), serde_json::Error>(())
/// ```
///
/// # Errors
///
/// When the key cannot be serialized to JSON (e.g. a map with non-string keys).
pub fn key_to_text<K: Serialize + ?Sized>(key: &K) -> Result<String, serde_json::Error> {
    let mut json = serde_json::to_string(key)?;
    if !json.starts_with('"') {
        return Ok(json);
    }
    if json.contains('\\') {
        // Escapes to undo: let the JSON parser do it.
        return serde_json::from_str::<String>(&json);
    }
    // A plain string: drop the quotes in place instead of parsing.
    json.pop();
    json.remove(0);
    Ok(json)
}

/// Decodes a key written by [`key_to_text`] (or by 0.1.x as `to_string()`):
/// the [`KeyFormat::Legacy`] format.
///
/// The text is first read as a JSON string (so a `String` key `"42"` stays a
/// string), then as JSON (so a `u32` key `42` is a number).
///
/// # Errors
///
/// When neither reading gives a `K`; the error is the one of reading it as JSON.
pub fn key_from_text<K: DeserializeOwned>(text: &str) -> Result<K, serde_json::Error> {
    // Read as a string without copying or parsing it first: most keys are
    // strings, and a key type that is not one refuses it at once.
    match K::deserialize(KeyText(text)) {
        Ok(key) => Ok(key),
        Err(_) => serde_json::from_str(text),
    }
}

/// [`KeyFormat::Distinct`] encoding: a JSON string unquoted unless its text
/// parses as JSON.
fn distinct_key_to_text<K: Serialize + ?Sized>(key: &K) -> Result<String, serde_json::Error> {
    let mut json = serde_json::to_string(key)?;
    if !json.starts_with('"') {
        return Ok(json);
    }
    if json.contains('\\') {
        let raw: String = serde_json::from_str(&json)?;
        return Ok(if is_json(&raw) { json } else { raw });
    }
    // Without escapes the string's text is the JSON between the quotes: it
    // is tested in place and, usually, unquoted in place.
    if is_json(&json[1..json.len() - 1]) {
        return Ok(json);
    }
    json.pop();
    json.remove(0);
    Ok(json)
}

/// [`KeyFormat::Distinct`] decoding: JSON if the text is JSON of a `K`, a
/// raw string otherwise.
fn distinct_key_from_text<K: DeserializeOwned>(text: &str) -> Result<K, serde_json::Error> {
    if may_be_json(text) {
        if let Ok(key) = serde_json::from_str(text) {
            return Ok(key);
        }
    }
    K::deserialize(KeyText(text)).map_err(<serde_json::Error as serde::de::Error>::custom)
}

/// Whether `text` is one JSON value (surrounding whitespace allowed), as
/// reading it as a key would find.
fn is_json(text: &str) -> bool {
    may_be_json(text) && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// A cheap first test: JSON text starts with whitespace or the first
/// character of a value, which most readable keys (`alice`, `user:7`) do
/// not, so they skip the parser.
fn may_be_json(text: &str) -> bool {
    matches!(
        text.as_bytes().first(),
        Some(
            b' ' | b'\t' | b'\n' | b'\r' | b'{' | b'[' | b'"' | b'-' | b'0'
                ..=b'9' | b't' | b'f' | b'n'
        )
    )
}

/// Reads a key's stored text as a JSON string holding it would read
/// (newtypes, unit enum variants and `Some` included), without copying it
/// into one first.
struct KeyText<'a>(&'a str);

impl<'de> serde::Deserializer<'de> for KeyText<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_str(self.0)
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        serde::de::value::StrDeserializer::<Self::Error>::new(self.0)
            .deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

/// Encodes a value as JSON text.
///
/// # Errors
///
/// When the value cannot be serialized to JSON.
pub fn value_to_json<V: Serialize + ?Sized>(value: &V) -> Result<String, serde_json::Error> {
    serde_json::to_string(value)
}

/// Decodes a value written by [`value_to_json`].
///
/// # Errors
///
/// When the text is not JSON of a `V` (for example because the value type
/// changed since it was written).
pub fn value_from_json<V: DeserializeOwned>(text: &str) -> Result<V, serde_json::Error> {
    serde_json::from_str(text)
}

/// A deadline (or a sweep's clock) as stores keep it: whole milliseconds
/// since the Unix epoch, negative before it, rounded down; `None` when it
/// does not fit an `i64`.
///
/// A map hands backends whole milliseconds, so for its deadlines the round
/// trip through [`deadline_from_millis`] is exact.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use persistent_map_core::codec::{deadline_from_millis, deadline_to_millis};
///
/// let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
/// assert_eq!(deadline_to_millis(at), Some(1_700_000_000_123));
/// assert_eq!(deadline_from_millis(1_700_000_000_123), Some(at));
/// ```
#[must_use]
pub fn deadline_to_millis(at: std::time::SystemTime) -> Option<i64> {
    match at.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).ok(),
        Err(before) => {
            let before = before.duration();
            // Rounded down, as after the epoch: a part of a millisecond
            // before it counts as a whole one.
            let partial = u128::from(!before.subsec_nanos().is_multiple_of(1_000_000));
            i64::try_from(before.as_millis() + partial)
                .ok()
                .map(|ms| -ms)
        }
    }
}

/// The deadline stored as `millis` milliseconds since the Unix epoch
/// ([`deadline_to_millis`] undone); `None` when the platform's clock cannot
/// represent it.
#[must_use]
pub fn deadline_from_millis(millis: i64) -> Option<std::time::SystemTime> {
    let offset = std::time::Duration::from_millis(millis.unsigned_abs());
    if millis >= 0 {
        std::time::UNIX_EPOCH.checked_add(offset)
    } else {
        std::time::UNIX_EPOCH.checked_sub(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_trip_in_whole_milliseconds_on_both_sides_of_the_epoch() {
        use std::time::{Duration, UNIX_EPOCH};
        for ms in [0, 1, -1, 1_700_000_000_123, -86_400_000_123, i64::MAX] {
            let at = deadline_from_millis(ms).expect("representable");
            assert_eq!(deadline_to_millis(at), Some(ms), "{ms}");
        }
        assert_eq!(
            deadline_to_millis(UNIX_EPOCH + Duration::from_micros(1_500)),
            Some(1)
        );
        assert_eq!(
            deadline_to_millis(UNIX_EPOCH - Duration::from_micros(1_500)),
            Some(-2)
        );
    }
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Name(String);

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    enum Color {
        Red,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Composite {
        id: u32,
        tag: String,
    }

    fn round_trip<K: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(key: K) -> String {
        let text = key_to_text(&key).expect("encodes");
        let back: K = key_from_text(&text).expect("decodes");
        assert_eq!(back, key, "text {text:?}");
        text
    }

    #[test]
    fn text_like_keys_are_stored_unquoted() {
        assert_eq!(round_trip("plain".to_string()), "plain");
        assert_eq!(round_trip("42".to_string()), "42");
        assert_eq!(round_trip("\"quoted\"".to_string()), "\"quoted\"");
        assert_eq!(round_trip(r#"{"a":1}"#.to_string()), r#"{"a":1}"#);
        assert_eq!(round_trip(String::new()), "");
        assert_eq!(
            round_trip("línea\nnueva, \"x\"".to_string()),
            "línea\nnueva, \"x\""
        );
        assert_eq!(round_trip(Name("bob".into())), "bob");
        assert_eq!(round_trip(Color::Red), "Red");
        assert_eq!(round_trip('c'), "c");
    }

    #[test]
    fn other_keys_are_stored_as_json() {
        assert_eq!(round_trip(42_u64), "42");
        assert_eq!(round_trip(-7_i32), "-7");
        assert_eq!(round_trip(true), "true");
        assert_eq!(round_trip((1_u8, "a".to_string())), r#"[1,"a"]"#);
        assert_eq!(
            round_trip(Composite {
                id: 1,
                tag: "t".into()
            }),
            r#"{"id":1,"tag":"t"}"#
        );
        assert_eq!(round_trip(Some(3_u8)), "3");
    }

    #[test]
    fn keys_that_are_both_strings_and_not_can_collide() {
        // The documented limit of the readable encoding.
        assert_eq!(
            key_to_text(&None::<String>).expect("encodes"),
            key_to_text(&Some("null".to_string())).expect("encodes")
        );
    }

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Number(u32),
    }

    /// Encodes every key in the distinct format, checks the texts differ and
    /// that each decodes to its key; returns the texts.
    fn distinct<K>(keys: &[K]) -> Vec<String>
    where
        K: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let texts: Vec<String> = keys
            .iter()
            .map(|k| KeyFormat::Distinct.encode(k).expect("encodes"))
            .collect();
        for (key, text) in keys.iter().zip(&texts) {
            let back: K = KeyFormat::Distinct.decode(text).expect("decodes");
            assert_eq!(&back, key, "text {text:?}");
            assert_eq!(
                texts.iter().filter(|t| *t == text).count(),
                1,
                "{text:?} is the text of two keys"
            );
        }
        texts
    }

    #[test]
    fn distinct_format_keeps_awkward_keys_apart() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            distinct(&[
                None,
                some("null"),
                some("42"),
                some(""),
                some("\"x\""),
                some("alice"),
                some(" 1"),
                some("true"),
                some("nul"),
            ]),
            [
                "null",
                r#""null""#,
                r#""42""#,
                "",
                r#""\"x\"""#,
                "alice",
                r#"" 1""#,
                r#""true""#,
                "nul",
            ]
        );
        assert_eq!(
            distinct(&[Either::Text("42".into()), Either::Number(42)]),
            [r#""42""#, "42"]
        );
        assert_eq!(
            distinct(&[
                serde_json::json!("[1]"),
                serde_json::json!([1]),
                serde_json::json!("x\ny"),
                serde_json::json!("\n7")
            ]),
            [r#""[1]""#, "[1]", "x\ny", r#""\n7""#]
        );
    }

    #[test]
    fn distinct_format_keeps_ordinary_keys_readable() {
        let f = KeyFormat::Distinct;
        for key in ["plain", "user:7", "línea, \"x\"", "a\\b", "7up", "-", "{"] {
            let text = f.encode(key).expect("encodes");
            assert_eq!(text, key);
            assert_eq!(f.decode::<String>(&text).expect("decodes"), key);
        }
        assert_eq!(f.encode(&Name("bob".into())).expect("encodes"), "bob");
        assert_eq!(
            f.decode::<Name>("bob").expect("decodes"),
            Name("bob".into())
        );
        assert_eq!(f.encode(&Color::Red).expect("encodes"), "Red");
        assert_eq!(f.decode::<Color>("Red").expect("decodes"), Color::Red);
        assert_eq!(f.encode(&42_u64).expect("encodes"), "42");
        assert_eq!(f.decode::<u64>("42").expect("decodes"), 42);
        let composite = Composite {
            id: 1,
            tag: "t".into(),
        };
        let text = f.encode(&composite).expect("encodes");
        assert_eq!(text, r#"{"id":1,"tag":"t"}"#);
        assert_eq!(f.decode::<Composite>(&text).expect("decodes"), composite);
        assert_eq!(
            f.decode::<String>("42")
                .expect("a hand-written raw text reads as itself"),
            "42"
        );
    }

    #[test]
    fn distinct_format_refuses_what_is_not_a_key() {
        let err = KeyFormat::Distinct
            .decode::<u32>("not a number")
            .expect_err("not a u32");
        assert!(err.to_string().contains("not a number"), "{err}");
        assert!(KeyFormat::Distinct
            .decode::<Composite>("{\"id\":1}")
            .is_err());
    }

    #[test]
    fn undecodable_key_is_an_error() {
        assert!(key_from_text::<u32>("not a number").is_err());
        assert!(key_from_text::<Composite>("{\"id\":1}").is_err());
    }
}
