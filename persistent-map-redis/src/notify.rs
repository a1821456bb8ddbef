//! The messages instances sharing a hash publish to each other.

use serde::{Deserialize, Serialize};

/// A batch touching more keys than this publishes one "reload everything"
/// message instead of a long list.
const MAX_KEYS: usize = 10_000;

/// One message, as JSON: `{"from":"<instance>","keys":["a","b"]}` or
/// `{"from":"<instance>","resync":true}`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Message {
    /// The publishing backend instance.
    pub(crate) from: String,
    /// Changed keys (hash fields), when not a resync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) keys: Vec<String>,
    /// Every key may have changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) resync: bool,
}

/// The message announcing that `keys` changed.
pub(crate) fn payload(from: &str, keys: &[&str]) -> String {
    if keys.len() > MAX_KEYS {
        return resync(from);
    }
    json(&Message {
        from: from.to_owned(),
        keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        resync: false,
    })
}

/// The message asking every other instance to reload the whole hash.
pub(crate) fn resync(from: &str) -> String {
    json(&Message {
        from: from.to_owned(),
        keys: Vec::new(),
        resync: true,
    })
}

fn json(message: &Message) -> String {
    // A struct of strings and a bool always serializes.
    serde_json::to_string(message).unwrap_or_default()
}

/// Reads a message; `None` for one this release does not understand.
pub(crate) fn parse(payload: &[u8]) -> Option<Message> {
    serde_json::from_slice(payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = parse(payload("me", &["a", "\u{0}b"]).as_bytes()).expect("parses");
        assert_eq!((m.from.as_str(), m.keys.len(), m.resync), ("me", 2, false));
        let keys: Vec<String> = (0..=MAX_KEYS).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert!(
            parse(payload("me", &refs).as_bytes())
                .expect("parses")
                .resync
        );
    }
}
