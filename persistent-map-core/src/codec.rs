//! Text encodings shared by backends that store keys and values as text
//! (SQLite, CSV, Postgres, Redis), so a store is readable by a person and
//! interchangeable between backends.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encodes a key as text.
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
/// `42`), can map two keys to one stored text: do not use such a type as a
/// key on a text backend.
///
/// ```
/// use persistent_map_core::codec::{key_from_text, key_to_text};
///
/// assert_eq!(key_to_text(&"alice")?, "alice");
/// assert_eq!(key_to_text(&42_u32)?, "42");
/// assert_eq!(key_to_text(&(1, "a"))?, r#"[1,"a"]"#);
/// assert_eq!(key_from_text::<String>("42")?, "42");
/// assert_eq!(key_from_text::<u32>("42")?, 42);
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

/// Decodes a key written by [`key_to_text`] (or by 0.1.x as `to_string()`).
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

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn undecodable_key_is_an_error() {
        assert!(key_from_text::<u32>("not a number").is_err());
        assert!(key_from_text::<Composite>("{\"id\":1}").is_err());
    }
}
