//! [`Announcement`]: the JSON message instances sharing a store send each
//! other about their writes, and its chunking into bounded payloads.

use serde::{Deserialize, Serialize};

/// One announcement instances sharing a store send each other, as JSON:
/// `{"from":"<instance>","keys":["a","b"]}` or
/// `{"from":"<instance>","resync":true}`.
///
/// `keys` are the keys' texts as the store holds them (usually
/// [`key_to_text`](persistent_map_core::codec::key_to_text)); an empty list is left out of
/// the JSON, and so is `resync` when false. Anything that sends this JSON on
/// the backend's channel is followed, so a script that changes the store
/// behind the maps' back can publish `{"from":"script","resync":true}`.
///
/// ```
/// use persistent_map_server_support::Announcement;
///
/// let sent = Announcement::changed("a1", vec!["alice".to_string()]).to_json();
/// assert_eq!(sent, r#"{"from":"a1","keys":["alice"]}"#);
/// assert_eq!(Announcement::resync("a1").to_json(), r#"{"from":"a1","resync":true}"#);
///
/// let read = Announcement::parse(sent.as_bytes()).expect("understood");
/// assert_eq!((read.from.as_str(), read.keys.len(), read.resync), ("a1", 1, false));
/// assert!(Announcement::parse(b"not json").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Announcement {
    /// The sending backend instance; a listener ignores its own.
    pub from: String,
    /// The changed keys (their stored text), when not a resync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Every key may have changed: the receivers reload the whole store.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resync: bool,
}

impl Announcement {
    /// `from` changed `keys`.
    #[must_use]
    pub fn changed(from: impl Into<String>, keys: Vec<String>) -> Self {
        Self {
            from: from.into(),
            keys,
            resync: false,
        }
    }

    /// `from` asks every other instance to reload the whole store.
    #[must_use]
    pub fn resync(from: impl Into<String>) -> Self {
        Self {
            from: from.into(),
            keys: Vec::new(),
            resync: true,
        }
    }

    /// The JSON text of this announcement (never fails: it holds only
    /// strings and a bool).
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a payload; `None` for one that is not an announcement this
    /// release understands (a listener skips it).
    #[must_use]
    pub fn parse(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice(payload).ok()
    }

    /// The payloads announcing that `from` changed `keys`, for a channel
    /// whose payloads must stay within `max_bytes`: as few payloads as fit,
    /// each at most `max_bytes` long, carrying every key once and in order.
    ///
    /// When that would take more than `max_payloads` payloads, or a single
    /// key does not fit, it is one resync payload instead (the receivers
    /// reload everything, which is always correct). No keys give no
    /// payloads.
    ///
    /// ```
    /// use persistent_map_server_support::Announcement;
    ///
    /// let keys: Vec<String> = (0..100).map(|i| format!("key-{i:03}")).collect();
    /// let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    /// let sent = Announcement::chunked("a1", &refs, 200, 16);
    /// assert!(sent.len() > 1 && sent.iter().all(|p| p.len() <= 200));
    ///
    /// let too_many = Announcement::chunked("a1", &refs, 200, 2);
    /// assert_eq!(too_many, [Announcement::resync("a1").to_json()]);
    /// ```
    #[must_use]
    pub fn chunked(
        from: &str,
        keys: &[&str],
        max_bytes: usize,
        max_payloads: usize,
    ) -> Vec<String> {
        let overhead = Self::changed(from, Vec::new()).to_json().len() + r#","keys":[]"#.len();
        let mut out = Vec::new();
        let mut chunk: Vec<String> = Vec::new();
        let mut size = overhead;
        for key in keys {
            let len = serde_json::to_string(key).map_or(usize::MAX, |k| k.len()) + 1;
            if overhead.saturating_add(len) > max_bytes {
                return vec![Self::resync(from).to_json()];
            }
            if size + len > max_bytes {
                out.push(Self::changed(from, std::mem::take(&mut chunk)).to_json());
                size = overhead;
                if out.len() >= max_payloads {
                    return vec![Self::resync(from).to_json()];
                }
            }
            chunk.push((*key).to_owned());
            size += len;
        }
        if !chunk.is_empty() {
            out.push(Self::changed(from, chunk).to_json());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip() {
        for sent in [
            Announcement::changed("me", vec!["a".into(), "\u{0}b".into(), "\"c\"".into()]),
            Announcement::resync("me"),
            Announcement::changed("me", Vec::new()),
        ] {
            let json = sent.to_json();
            assert_eq!(Announcement::parse(json.as_bytes()), Some(sent), "{json}");
        }
        assert_eq!(
            Announcement::parse(br#"{"from":"sql","resync":true}"#),
            Some(Announcement::resync("sql"))
        );
        assert_eq!(Announcement::parse(br#"{"resync":true}"#), None);
    }

    #[test]
    fn chunks_stay_under_the_limit_and_carry_every_key() {
        const LIMIT: usize = 7900;
        let keys: Vec<String> = (0..2000).map(|i| format!("key-{i:05}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let sent = Announcement::chunked("me", &refs, LIMIT, 16);
        assert!(sent.len() > 1);
        let mut seen = Vec::new();
        for p in &sent {
            assert!(p.len() <= LIMIT, "{}", p.len());
            let m = Announcement::parse(p.as_bytes()).expect("parses");
            assert_eq!(m.from, "me");
            assert!(!m.resync);
            seen.extend(m.keys);
        }
        assert_eq!(seen, keys);
        assert!(Announcement::chunked("me", &[], LIMIT, 16).is_empty());
    }

    #[test]
    fn chunks_respect_the_limits_at_their_edges() {
        let one = Announcement::changed("me", vec!["abc".into()]).to_json();
        let two = Announcement::changed("me", vec!["abc".into(), "def".into()]).to_json();
        let resync = Announcement::resync("me").to_json();
        // The size is counted with one spare byte per payload.
        assert_eq!(
            Announcement::chunked("me", &["abc", "def"], two.len() + 1, 16),
            vec![two.clone()]
        );
        let split = Announcement::chunked("me", &["abc", "def"], two.len(), 16);
        assert_eq!(
            split,
            [
                one.clone(),
                Announcement::changed("me", vec!["def".into()]).to_json()
            ]
        );
        assert_eq!(
            Announcement::chunked("me", &["abc", "def"], two.len(), 1),
            vec![resync.clone()]
        );
        assert_eq!(
            Announcement::chunked("me", &["abc"], one.len() + 1, 1),
            vec![one.clone()]
        );
        assert_eq!(
            Announcement::chunked("me", &["abc"], one.len() - 1, 16),
            [resync]
        );
    }

    #[test]
    fn too_many_or_too_large_keys_become_a_resync() {
        const LIMIT: usize = 7900;
        let resync = Announcement::resync("me").to_json();
        let huge = "x".repeat(LIMIT);
        assert_eq!(
            Announcement::chunked("me", &["a", &huge], LIMIT, 16),
            vec![resync.clone()]
        );

        let keys: Vec<String> = (0..100_000).map(|i| format!("key-{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert_eq!(Announcement::chunked("me", &refs, LIMIT, 16), [resync]);
    }
}
