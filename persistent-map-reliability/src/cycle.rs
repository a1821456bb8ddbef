//! Judging what a child left behind against the model of its stream.

use crate::child::{ChildArgs, Mode, Transcript};
use crate::model::{judge, State, Verdict};
use crate::stream::{op_at, Op};

/// The changes a child may have made, in order: every change up to the one
/// after its last acknowledgement (which may have been made, or queued,
/// without being reported), minus the changes that returned an error.
/// Each comes with its stream index.
#[must_use]
pub fn possible_ops(args: &ChildArgs, transcript: &Transcript) -> Vec<(u64, Op)> {
    let reported = transcript
        .acked
        .iter()
        .chain(transcript.errors.keys())
        .copied()
        .max();
    let end = reported.map_or(1, |last| last + 2).min(args.ops);
    (0..end)
        .filter(|i| !transcript.errors.contains_key(i))
        .map(|i| {
            let op = match op_at(args.seed, args.keys, i) {
                Op::Put { key, value } => Op::Put {
                    key: format!("{}{key}", args.key_prefix),
                    value,
                },
                Op::Del { key } => Op::Del {
                    key: format!("{}{key}", args.key_prefix),
                },
            };
            (i, op)
        })
        .collect()
}

/// How one run was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judged {
    /// The verdict on the store.
    pub verdict: Verdict,
    /// How many of the possible changes were promised by an acknowledgement
    /// (write-through) or a flush (write-behind).
    pub promised: usize,
    /// How many were covered by a flush that returned Ok.
    pub flushed: usize,
}

/// Judges `store` (found on reopen) against a child's run from `start`: it
/// must hold a prefix of the changes covering every promised one.
#[must_use]
pub fn judge_run(
    start: &State,
    args: &ChildArgs,
    transcript: &Transcript,
    store: &State,
) -> Judged {
    let possible = possible_ops(args, transcript);
    let flushed_to = transcript.flushed.unwrap_or(0);
    let flushed = possible.iter().filter(|(i, _)| *i < flushed_to).count();
    let promised = match args.mode {
        Mode::Behind => flushed,
        Mode::Through => {
            let acked_to = transcript.last_ack().map_or(0, |a| a + 1);
            possible.iter().filter(|(i, _)| *i < acked_to).count()
        }
    };
    let ops: Vec<Op> = possible.into_iter().map(|(_, op)| op).collect();
    let verdict = judge(start, &ops, store, promised, ops.len());
    Judged {
        verdict,
        promised,
        flushed,
    }
}

/// The figures of a series of runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Runs judged.
    pub cycles: u64,
    /// Runs whose store lost an acknowledged change (write-through).
    pub acked_lost: u64,
    /// Runs whose store lost a change covered by a returned flush.
    pub flushed_lost: u64,
    /// Runs whose store was no prefix of the changes.
    pub holes: u64,
    /// Runs whose store could not be reopened or failed its integrity check.
    pub corrupt_reopen: u64,
    /// Runs killed before the map was open.
    pub killed_in_open: u64,
    /// Changes acknowledged over all runs.
    pub acked: u64,
    /// Changes or flushes that returned an error.
    pub errors: u64,
}

impl Tally {
    /// Counts one judged run.
    pub fn record(&mut self, mode: Mode, judged: &Judged) {
        self.cycles += 1;
        match judged.verdict {
            Verdict::Prefix(_) => {}
            Verdict::Lost(n) if n < judged.flushed => self.flushed_lost += 1,
            Verdict::Lost(_) => {
                if mode == Mode::Through {
                    self.acked_lost += 1;
                }
            }
            Verdict::Beyond(_) | Verdict::Hole => self.holes += 1,
        }
    }

    /// The figures as name/value pairs.
    #[must_use]
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("cycles", self.cycles),
            ("acked_lost", self.acked_lost),
            ("flushed_lost", self.flushed_lost),
            ("holes", self.holes),
            ("corrupt_reopen", self.corrupt_reopen),
            ("killed_in_open", self.killed_in_open),
            ("acked_ops", self.acked),
            ("errors", self.errors),
        ]
    }
}
