//! The stored form of keys and values: what PostgreSQL cannot hold as is.
//!
//! PostgreSQL `TEXT` cannot contain the character U+0000, and `JSONB`
//! refuses the escape `\u0000` inside a string. Keys and values are stored
//! as the table's [`KeyFormat`](persistent_map_core::codec::KeyFormat) and
//! [`value_to_json`](persistent_map_core::codec::value_to_json) give them,
//! except for these rare cases, which get a reversible escape:
//!
//! * a key text containing U+0000, or starting with U+0001, is stored as
//!   U+0001 followed by the text with U+0001 written as U+0001 `1` and U+0000
//!   as U+0001 `0`;
//! * a value whose JSON contains `\u0000` (or that is itself an object whose
//!   only key is [`VALUE_MARKER`]) is stored as
//!   `{"persistent_map:json": "<its JSON text>"}`.
//!
//! Every other key and value is stored exactly as the other text backends
//! store it, so the table stays readable and queryable with SQL.

use std::borrow::Cow;

/// Starts an escaped key.
const KEY_ESCAPE: char = '\u{1}';

/// The only key of an object wrapping a value JSONB cannot hold.
pub const VALUE_MARKER: &str = "persistent_map:json";

/// What the JSON text of a wrapped value starts with, as this crate writes
/// it (no whitespace) and as PostgreSQL prints a JSONB object (a space after
/// the colon).
const WRAPPED_PREFIX: &str = "{\"persistent_map:json\":";
const PRINTED_PREFIX: &str = "{\"persistent_map:json\": ";

/// The stored form of a key text (the key encoded in the table's
/// [`KeyFormat`](persistent_map_core::codec::KeyFormat)): unchanged,
/// unless it holds U+0000 (which PostgreSQL text cannot) or starts with
/// U+0001, the escape. For tools that read or write the table directly.
///
/// ```
/// use persistent_map_postgres::{load_key, store_key};
///
/// assert_eq!(store_key("alice"), "alice");
/// let odd = "a\u{0}b";
/// assert_eq!(load_key(&store_key(odd)).as_deref(), Some(odd));
/// ```
pub fn store_key(text: &str) -> Cow<'_, str> {
    if !text.contains('\0') && !text.starts_with(KEY_ESCAPE) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 4);
    out.push(KEY_ESCAPE);
    for c in text.chars() {
        match c {
            KEY_ESCAPE => {
                out.push(KEY_ESCAPE);
                out.push('1');
            }
            '\0' => {
                out.push(KEY_ESCAPE);
                out.push('0');
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The key text of a stored key ([`store_key`] undone), or `None` when the
/// escape is damaged.
pub fn load_key(stored: &str) -> Option<Cow<'_, str>> {
    let Some(body) = stored.strip_prefix(KEY_ESCAPE) else {
        return Some(Cow::Borrowed(stored));
    };
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c == KEY_ESCAPE {
            match chars.next() {
                Some('1') => out.push(KEY_ESCAPE),
                Some('0') => out.push('\0'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(Cow::Owned(out))
}

/// The stored (JSONB) form of a value's JSON text: unchanged, unless JSONB
/// cannot hold it as it is (it contains `\u0000`) or it looks like a
/// wrapped value; then `{"persistent_map:json": "<the JSON text>"}`.
///
/// # Errors
///
/// When the wrapper cannot be written (never for valid JSON text).
pub fn store_value(json: &str) -> Result<Cow<'_, str>, serde_json::Error> {
    if !json.contains("\\u0000") && !json.starts_with(WRAPPED_PREFIX) {
        return Ok(Cow::Borrowed(json));
    }
    let mut wrapper = serde_json::Map::with_capacity(1);
    wrapper.insert(
        VALUE_MARKER.to_owned(),
        serde_json::Value::String(json.to_owned()),
    );
    serde_json::to_string(&wrapper).map(Cow::Owned)
}

/// The JSON text of a value from the stored JSONB as PostgreSQL prints it
/// ([`store_value`] undone).
pub fn load_value(printed: String) -> String {
    if !printed.starts_with(PRINTED_PREFIX) {
        return printed;
    }
    match serde_json::from_str::<serde_json::Value>(&printed) {
        Ok(serde_json::Value::Object(mut object)) if object.len() == 1 => {
            match object.remove(VALUE_MARKER) {
                Some(serde_json::Value::String(inner)) => inner,
                _ => printed,
            }
        }
        _ => printed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_plain_keys_are_untouched() {
        for text in [
            "plain",
            "",
            "\u{0}nul",
            "\u{1}soh",
            "a\u{1}b\u{0}c",
            "\u{1}",
        ] {
            let stored = store_key(text);
            assert!(!stored.contains('\0'), "{stored:?}");
            assert_eq!(load_key(&stored).as_deref(), Some(text));
        }
        assert!(matches!(store_key("plain"), Cow::Borrowed("plain")));
        assert_eq!(load_key("\u{1}\u{1}x"), None);
    }

    #[test]
    fn values_jsonb_cannot_hold_are_wrapped() {
        let nul = serde_json::to_string("\u{0}nul").expect("json");
        let stored = store_value(&nul).expect("wrap");
        let parsed: serde_json::Value = serde_json::from_str(&stored).expect("json");
        let inner = parsed[VALUE_MARKER].as_str().expect("wrapped text");
        assert!(!inner.contains('\0'), "no NUL left for JSONB to refuse");
        let printed = stored.replacen("json\":", "json\": ", 1);
        assert_eq!(load_value(printed), nul);

        let tricky = format!("{WRAPPED_PREFIX}\"x\"}}");
        let stored = store_value(&tricky).expect("wrap");
        assert_ne!(stored, tricky);
        assert_eq!(
            load_value(stored.replacen("json\":", "json\": ", 1)),
            tricky
        );

        assert!(matches!(store_value("{\"a\":1}"), Ok(Cow::Borrowed(_))));
        assert_eq!(load_value("{\"a\": 1}".to_owned()), "{\"a\": 1}");
    }
}
