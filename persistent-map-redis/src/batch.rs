//! A batch's `MULTI`/`EXEC` transaction: its net changes as hash, sorted-set
//! and script commands, and its announcement.

use persistent_map_core::{render_key, Operation, PersistentError, Result};
use persistent_map_server_support::NetChange;

use crate::backend::{announcement, RedisBackend, MAX_KEYS};
use crate::config::Watch;
use crate::error::BACKEND;
use crate::expiry::{MAX_SCORE, RAISE_VERSION, SWEEP};

/// A batch's transaction, ready to run.
pub(crate) struct BatchWrites {
    /// `MULTI` ... `EXEC`.
    pub(crate) pipe: redis::Pipeline,
    /// Whether it records format 3 (it sets the map's first deadline).
    pub(crate) moves_to_expiry_format: bool,
}

impl RedisBackend {
    /// The transaction of a batch's net changes (each key once, so the
    /// commands may come in any order): `HDEL` of the removed fields, `HSET`
    /// of the new values, `ZREM` of the deadlines a removal or a put without
    /// one clears, `ZADD` of the new deadlines, one `EVAL` of [`SWEEP`] for
    /// the conditional removals, [`RAISE_VERSION`] when the map gets its
    /// first deadline, and the `PUBLISH` of the keys put or removed.
    ///
    /// # Errors
    ///
    /// [`PersistentError::Unsupported`] for a deadline in a map of format 1
    /// (legacy keys), [`PersistentError::Backend`] naming the key for a
    /// deadline a score cannot hold exactly.
    pub(crate) fn batch_pipeline(&self, net: &[(String, NetChange)]) -> Result<BatchWrites> {
        let inner = &*self.inner;
        let expiry = self.expiry_possible();
        let mut removed: Vec<&str> = Vec::new();
        let mut undated: Vec<&str> = Vec::new();
        let mut announced: Vec<&str> = Vec::with_capacity(net.len());
        let mut values = redis::cmd("HSET");
        values.arg(&inner.hash_key);
        let mut deadlines = redis::cmd("ZADD");
        deadlines.arg(&inner.expiry_key);
        let mut sweep = redis::cmd("EVAL");
        let channel = match inner.watch {
            Watch::Enabled => inner.channel.as_str(),
            Watch::Disabled => "",
        };
        sweep
            .arg(SWEEP)
            .arg(2)
            .arg(&inner.hash_key)
            .arg(&inner.expiry_key)
            .arg(channel)
            .arg(&inner.instance)
            .arg(MAX_KEYS);
        let (mut puts, mut dated, mut swept) = (0, 0, 0);
        for (field, change) in net {
            match change {
                NetChange::Put { value, expires_at } => {
                    values.arg(field).arg(value);
                    puts += 1;
                    match expires_at {
                        Some(ms) => {
                            deadlines.arg(self.score(field, *ms)?).arg(field);
                            dated += 1;
                        }
                        None => undated.push(field),
                    }
                    announced.push(field);
                }
                NetChange::Delete => {
                    removed.push(field);
                    undated.push(field);
                    announced.push(field);
                }
                // Nothing can have expired where nothing has a deadline.
                NetChange::DeleteExpired { now } if expiry => {
                    sweep.arg(*now).arg(field);
                    swept += 1;
                }
                NetChange::DeleteExpired { .. } => {}
                // A kind of change this release does not know: never skipped.
                _ => return Err(PersistentError::unknown_change(BACKEND)),
            }
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !removed.is_empty() {
            pipe.cmd("HDEL").arg(&inner.hash_key).arg(&removed).ignore();
        }
        if puts > 0 {
            pipe.add_command(values).ignore();
        }
        if expiry && !undated.is_empty() {
            pipe.cmd("ZREM")
                .arg(&inner.expiry_key)
                .arg(&undated)
                .ignore();
        }
        if dated > 0 {
            pipe.add_command(deadlines).ignore();
        }
        if swept > 0 {
            pipe.add_command(sweep).ignore();
        }
        let moves_to_expiry_format = dated > 0 && self.version() < crate::backend::EXPIRY_VERSION;
        if moves_to_expiry_format {
            pipe.cmd("EVAL")
                .arg(RAISE_VERSION)
                .arg(1)
                .arg(&inner.meta_key)
                .arg(crate::backend::EXPIRY_VERSION)
                .ignore();
        }
        if inner.watch == Watch::Enabled && !announced.is_empty() {
            pipe.cmd("PUBLISH")
                .arg(&inner.channel)
                .arg(announcement(&inner.instance, &announced))
                .ignore();
        }
        Ok(BatchWrites {
            pipe,
            moves_to_expiry_format,
        })
    }

    /// The score of a deadline of `ms` milliseconds, checked: a map of
    /// format 1 has no deadlines, and a score (a double) holds whole
    /// milliseconds exactly only up to [`MAX_SCORE`].
    fn score(&self, field: &str, ms: i64) -> Result<i64> {
        if !self.expiry_possible() {
            return Err(PersistentError::Unsupported {
                backend: BACKEND,
                feature: "expiry in a map of format 1 (legacy keys; see the crate documentation to move it)",
            });
        }
        if ms.unsigned_abs() > MAX_SCORE.unsigned_abs() {
            return Err(PersistentError::backend(
                BACKEND,
                Operation::Write,
                self.location().with_key(render_key(field)),
                "a deadline beyond what a sorted-set score holds exactly (2^53 ms from 1970)",
            ));
        }
        Ok(ms)
    }
}
