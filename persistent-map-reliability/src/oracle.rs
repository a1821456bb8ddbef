//! An independent reading of the CSV format, to say what a load of a
//! (possibly damaged) file must return.
//!
//! It understands only the records the harness writes (no quoted fields, no
//! carriage returns); for anything else it says [`Expect::Unknown`], and a
//! load is then only required to be Ok or an error with a location.

use crate::model::State;

/// What a load of a file must give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Exactly these entries (a torn tail cut off).
    Entries(State),
    /// An error naming this (1-based) line, or another bad line.
    Error(u64),
    /// The oracle cannot tell.
    Unknown,
}

/// The headers of versions 2 to 5, with the number of fields of their
/// records. Versions 4 and 5 add a deadline field. Even and odd versions
/// differ only in how a key whose text is JSON is written: quoted in the odd
/// ones, which (like any quoted field) the oracle leaves as unknown.
/// Unquoted keys read the same in all of them.
const HEADERS: [(&[u8], usize); 4] = [
    (b"persistent-map-csv/2,key,value\n", 3),
    (b"persistent-map-csv/3,key,value\n", 3),
    (b"persistent-map-csv/4,key,value,expires_at\n", 4),
    (b"persistent-map-csv/5,key,value,expires_at\n", 4),
];

/// Reads `bytes` (a whole file of version 2 to 5) as the format defines it,
/// for `String` keys and `u64` values. A deadline is checked (empty, or an
/// integer number of milliseconds) but does not change what a load
/// returns: expired entries are loaded too.
#[must_use]
pub fn expect_csv(bytes: &[u8]) -> Expect {
    let Some((body, width)) = HEADERS
        .iter()
        .find_map(|(header, width)| bytes.strip_prefix(*header).map(|body| (body, *width)))
    else {
        return Expect::Unknown;
    };
    if body.iter().any(|&b| b == b'"' || b == b'\r') {
        return Expect::Unknown;
    }
    // A last line without its newline is a torn record; so is a tail of NUL
    // bytes (a power cut that extended the file but not its data).
    let complete_len = body.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let mut state = State::new();
    // Values are decoded when a change is applied: a batch only once it is
    // complete, as the backend does, so a bad value in a torn batch is cut
    // off with it rather than reported.
    // The marker's line, the records still to come, and those read.
    let mut batch: Option<(u64, u64, Vec<Pending>)> = None;
    for (index, line) in body[..complete_len].split(|&b| b == b'\n').enumerate() {
        let number = index as u64 + 2;
        if line.is_empty() {
            // The csv reader skips blank lines (and the split's last piece).
            continue;
        }
        let fields: Vec<&[u8]> = line.split(|&b| b == b',').collect();
        if fields.len() != width {
            return Expect::Error(number);
        }
        if !deadline_fits(fields[0], fields.get(3).copied().unwrap_or_default()) {
            return Expect::Error(number);
        }
        let Ok(op) = std::str::from_utf8(fields[0]) else {
            return Expect::Error(number);
        };
        let Ok(key) = std::str::from_utf8(fields[1]) else {
            return Expect::Error(number);
        };
        let Ok(value) = std::str::from_utf8(fields[2]) else {
            return Expect::Error(number);
        };
        let change = match op {
            "put" if value.is_empty() => return Expect::Error(number),
            "put" => Pending {
                line: number,
                key: key.to_owned(),
                value: Some(value.to_owned()),
            },
            "del" if !value.is_empty() => return Expect::Error(number),
            "del" => Pending {
                line: number,
                key: key.to_owned(),
                value: None,
            },
            "batch" => match value.parse::<u64>() {
                Ok(n) if n > 0 && key.is_empty() && batch.is_none() => {
                    batch = Some((number, n, Vec::new()));
                    continue;
                }
                _ => return Expect::Error(number),
            },
            _ => return Expect::Error(number),
        };
        match batch.as_mut() {
            Some((_, left, changes)) => {
                changes.push(change);
                *left -= 1;
                if *left == 0 {
                    if let Some((_, _, changes)) = batch.take() {
                        for change in changes {
                            if let Err(line) = apply(&mut state, change) {
                                return Expect::Error(line);
                            }
                        }
                    }
                }
            }
            None => {
                if let Err(line) = apply(&mut state, change) {
                    return Expect::Error(line);
                }
            }
        }
    }
    // An incomplete batch at the end is what an interrupted write leaves, and
    // is discarded, only if the file ends in a torn record or at a page
    // boundary (where the kernel splits a write); otherwise its marker's
    // count is wrong.
    match batch {
        Some((marker, _, _)) if complete_len == body.len() && !bytes.len().is_multiple_of(4096) => {
            Expect::Error(marker)
        }
        _ => Expect::Entries(state),
    }
}

/// Whether `deadline` is what a record with op `op` may hold: a `put` an
/// empty field or digits (after a `-` before the epoch) that fit an `i64`,
/// any other record an empty field.
fn deadline_fits(op: &[u8], deadline: &[u8]) -> bool {
    if deadline.is_empty() {
        return true;
    }
    let Ok(text) = std::str::from_utf8(deadline) else {
        return false;
    };
    let digits = text.strip_prefix('-').unwrap_or(text);
    op == b"put"
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && text.parse::<i64>().is_ok()
}

/// A change read but not yet applied.
struct Pending {
    line: u64,
    key: String,
    value: Option<String>,
}

fn apply(state: &mut State, change: Pending) -> Result<(), u64> {
    match change.value {
        Some(text) => {
            let value = serde_json::from_str::<u64>(&text).map_err(|_| change.line)?;
            state.insert(change.key, value);
        }
        None => {
            state.remove(&change.key);
        }
    }
    Ok(())
}
