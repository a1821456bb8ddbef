//! The key and value types the suite stores: awkward on purpose.

use std::collections::BTreeMap;

use serde::ser::Error as _;
use serde::{Deserialize, Serialize, Serializer};

/// A nested value with every common serde shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Free text.
    pub name: String,
    /// An optional number.
    pub age: Option<u32>,
    /// A list.
    pub tags: Vec<String>,
    /// A map.
    pub scores: BTreeMap<String, i64>,
    /// A nested struct.
    pub inner: Inner,
    /// An enum with data.
    pub state: State,
}

/// The nested part of a [`Record`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inner {
    /// A flag.
    pub flag: bool,
    /// A float that survives a JSON round trip.
    pub ratio: f64,
    /// An extreme integer.
    pub big: i64,
}

/// An enum with unit, tuple and struct variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum State {
    /// Unit variant.
    Idle,
    /// Tuple variant.
    Busy(u8),
    /// Struct variant.
    Done {
        /// Why it ended.
        reason: String,
    },
}

/// A struct used as a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Point {
    /// Horizontal.
    pub x: i32,
    /// Vertical.
    pub y: i32,
    /// A label with awkward characters.
    pub label: String,
}

/// A value whose serialization fails on demand, to make a backend write fail
/// in a way every backend must notice before it touches the store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Fragile {
    /// The payload.
    pub text: String,
    /// When `true`, serializing this value fails.
    #[serde(skip)]
    pub poisoned: bool,
}

impl Fragile {
    /// A value that serializes normally.
    pub fn ok(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            poisoned: false,
        }
    }

    /// A value whose serialization fails.
    pub fn poisoned() -> Self {
        Self {
            text: String::from("poison"),
            poisoned: true,
        }
    }
}

impl Serialize for Fragile {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.poisoned {
            return Err(S::Error::custom("this value refuses to be serialized"));
        }
        #[derive(Serialize)]
        struct Plain<'a> {
            text: &'a str,
        }
        Plain { text: &self.text }.serialize(serializer)
    }
}

/// Strings that break naive text formats.
pub fn awkward_strings() -> Vec<String> {
    [
        "plain",
        "",
        " leading and trailing ",
        "comma, separated",
        "semi;colon",
        "\"double quotes\"",
        "'single'",
        "new\nline",
        "carriage\r\nreturn",
        "tab\tcharacter",
        "back\\slash",
        "unicode: ñ é ü 中文 🦀",
        "null",
        "42",
        "-1.5e3",
        "true",
        "{\"json\":\"object\"}",
        "[1,2,3]",
        "#comment",
        "put",
        "\u{0}nul",
        "zero\u{200b}width",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// A [`Record`] that differs with `n`.
pub fn record(n: u64) -> Record {
    let mut scores = BTreeMap::new();
    scores.insert(format!("k{n}"), i64::try_from(n).unwrap_or(i64::MAX) - 5);
    scores.insert(String::from("neg"), i64::MIN);
    Record {
        name: format!("record {n}, \"quoted\"\n"),
        age: if n.is_multiple_of(2) {
            Some(n as u32)
        } else {
            None
        },
        tags: (0..n % 4).map(|i| format!("tag{i}")).collect(),
        scores,
        inner: Inner {
            flag: n.is_multiple_of(3),
            ratio: n as f64 / 7.0,
            big: i64::MAX.wrapping_sub(n as i64),
        },
        state: match n % 3 {
            0 => State::Idle,
            1 => State::Busy((n % 256) as u8),
            _ => State::Done {
                reason: format!("finished {n}"),
            },
        },
    }
}
