//! The reference model: what a store may hold after a crash, given the
//! changes that were made and how far they were acknowledged or flushed.

use std::collections::BTreeMap;

use crate::stream::Op;

/// A map's contents: key to value.
pub type State = BTreeMap<String, u64>;

/// Applies one change to a model state.
pub fn apply(state: &mut State, op: &Op) {
    match op {
        Op::Put { key, value } => {
            state.insert(key.clone(), *value);
        }
        Op::Del { key } => {
            state.remove(key);
        }
    }
}

/// What a reopened store was found to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The state after the first `n` changes, with `n` within the allowed range.
    Prefix(usize),
    /// Only the state after fewer changes than promised: something kept was lost.
    Lost(usize),
    /// Or a later state than any change made.
    Beyond(usize),
    /// No prefix of the changes: a hole, or a value that was never written.
    Hole,
}

/// Judges `store` against the changes `ops` made from `start`: it must equal
/// the state after the first `n` changes for some `n` in `lo..=hi` (`lo`:
/// every change promised kept, `hi`: every change possibly made).
#[must_use]
pub fn judge(start: &State, ops: &[Op], store: &State, lo: usize, hi: usize) -> Verdict {
    let hi = hi.min(ops.len());
    let mut state = start.clone();
    let mut best_below = None;
    let mut first_above = None;
    for n in 0..=ops.len() {
        if n > 0 {
            apply(&mut state, &ops[n - 1]);
        }
        if &state == store {
            if (lo..=hi).contains(&n) {
                return Verdict::Prefix(n);
            }
            if n < lo {
                best_below = Some(n);
            } else if first_above.is_none() {
                first_above = Some(n);
            }
        }
    }
    match (best_below, first_above) {
        (Some(n), _) => Verdict::Lost(n),
        (None, Some(n)) => Verdict::Beyond(n),
        (None, None) => Verdict::Hole,
    }
}

/// The state after the first `n` of `ops` from `start`.
#[must_use]
pub fn state_after(start: &State, ops: &[Op], n: usize) -> State {
    let mut state = start.clone();
    for op in ops.iter().take(n) {
        apply(&mut state, op);
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: u64) -> Op {
        Op::Put {
            key: k.into(),
            value: v,
        }
    }

    #[test]
    fn judge_tells_prefix_loss_and_hole() {
        let ops = vec![put("a", 1), put("b", 2), put("a", 3)];
        let start = State::new();
        let after = |n| state_after(&start, &ops, n);
        assert_eq!(judge(&start, &ops, &after(2), 2, 3), Verdict::Prefix(2));
        assert_eq!(judge(&start, &ops, &after(1), 2, 3), Verdict::Lost(1));
        // b kept without the earlier a=1: a hole.
        let hole = State::from([("b".to_string(), 2)]);
        assert_eq!(judge(&start, &ops, &hole, 0, 3), Verdict::Hole);
        assert_eq!(judge(&start, &ops, &after(3), 0, 2), Verdict::Beyond(3));
    }
}
