//! The messages instances sharing a table send each other through
//! `pg_notify`, and their size limit.

use serde::{Deserialize, Serialize};

/// PostgreSQL refuses notification payloads of 8000 bytes or more; stay
/// clear of it.
const MAX_PAYLOAD: usize = 7900;

/// A batch whose keys would need more notifications than this sends one
/// "reload everything" notification instead.
const MAX_NOTIFICATIONS: usize = 16;

/// One notification, as JSON: `{"from":"<instance>","keys":["a","b"]}` or
/// `{"from":"<instance>","resync":true}`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Message {
    /// The sending backend instance.
    pub(crate) from: String,
    /// Changed keys (their stored text), when not a resync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) keys: Vec<String>,
    /// Every key may have changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) resync: bool,
}

/// The payloads announcing that `keys` (stored texts) changed: as few as
/// fit the size limit, or a single resync when that would take too many.
pub(crate) fn payloads(from: &str, keys: &[&str]) -> Vec<String> {
    let overhead = json_len(&Message {
        from: from.to_owned(),
        keys: Vec::new(),
        resync: false,
    }) + r#","keys":[]"#.len();
    let mut out = Vec::new();
    let mut chunk: Vec<String> = Vec::new();
    let mut size = overhead;
    for key in keys {
        let len = serde_json::to_string(key).map_or(usize::MAX, |k| k.len()) + 1;
        if overhead.saturating_add(len) > MAX_PAYLOAD {
            return vec![resync(from)];
        }
        if size + len > MAX_PAYLOAD {
            out.push(encode(from, std::mem::take(&mut chunk)));
            size = overhead;
            if out.len() >= MAX_NOTIFICATIONS {
                return vec![resync(from)];
            }
        }
        chunk.push((*key).to_owned());
        size += len;
    }
    if !chunk.is_empty() {
        out.push(encode(from, chunk));
    }
    out
}

/// The payload asking every other instance to reload the whole table.
pub(crate) fn resync(from: &str) -> String {
    json(&Message {
        from: from.to_owned(),
        keys: Vec::new(),
        resync: true,
    })
}

fn encode(from: &str, keys: Vec<String>) -> String {
    json(&Message {
        from: from.to_owned(),
        keys,
        resync: false,
    })
}

fn json(message: &Message) -> String {
    // A struct of strings and a bool always serializes.
    serde_json::to_string(message).unwrap_or_default()
}

fn json_len(message: &Message) -> usize {
    json(message).len()
}

/// Reads a payload; `None` for one this release does not understand.
pub(crate) fn parse(payload: &str) -> Option<Message> {
    serde_json::from_str(payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_under_the_limit_and_carry_every_key() {
        let keys: Vec<String> = (0..2000).map(|i| format!("key-{i:05}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let sent = payloads("me", &refs);
        assert!(sent.len() > 1);
        let mut seen = Vec::new();
        for p in &sent {
            assert!(p.len() <= MAX_PAYLOAD, "{}", p.len());
            let m = parse(p).expect("parses");
            assert_eq!(m.from, "me");
            assert!(!m.resync);
            seen.extend(m.keys);
        }
        assert_eq!(seen, keys);
    }

    #[test]
    fn too_many_or_too_large_keys_become_a_resync() {
        let huge = "x".repeat(MAX_PAYLOAD);
        let sent = payloads("me", &["a", &huge]);
        assert_eq!(sent.len(), 1);
        assert!(parse(&sent[0]).expect("parses").resync);

        let keys: Vec<String> = (0..100_000).map(|i| format!("key-{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let sent = payloads("me", &refs);
        assert_eq!(sent.len(), 1);
        assert!(parse(&sent[0]).expect("parses").resync);
    }
}
