//! Deadlines in Redis: a sorted set beside the map's hash (member: the
//! hash field, score: the deadline in milliseconds since the Unix epoch),
//! and the Lua scripts that change it inside a batch's `MULTI`/`EXEC`.
//!
//! Redis 7.0 has no per-field expiry in a hash, and a sweep must remove an
//! entry only if its deadline has passed, as stored when the transaction
//! runs: only a script can test and remove in one step. Scripts are sent
//! with `EVAL` (the server caches them by their SHA-1): an `EVALSHA` of a
//! script the server has not seen would fail at `EXEC` time, after the
//! other commands of the transaction ran.

use std::time::SystemTime;

use persistent_map_core::codec::deadline_from_millis;

/// The largest deadline (in milliseconds, either side of the epoch) a
/// sorted-set score, a double, holds exactly: 2^53, in the year 287396.
pub(crate) const MAX_SCORE: i64 = 1 << 53;

/// Removes each field whose deadline is at or before its clock, with its
/// deadline, and announces the removed fields (only those) on the channel.
///
/// `KEYS[1]`: the hash, `KEYS[2]`: the deadlines. `ARGV[1]`: the channel
/// (empty: announce nothing), `ARGV[2]`: the instance, `ARGV[3]`: the most
/// keys one announcement lists (more: a resync), then a clock and a field
/// for each swept key.
pub(crate) const SWEEP: &str = r"
local removed = {}
for i = 4, #ARGV, 2 do
  local field = ARGV[i + 1]
  local deadline = redis.call('ZSCORE', KEYS[2], field)
  if deadline and tonumber(deadline) <= tonumber(ARGV[i]) then
    redis.call('HDEL', KEYS[1], field)
    redis.call('ZREM', KEYS[2], field)
    removed[#removed + 1] = field
  end
end
if ARGV[1] ~= '' and #removed > 0 then
  local message
  if #removed > tonumber(ARGV[3]) then
    message = cjson.encode({from = ARGV[2], resync = true})
  else
    message = cjson.encode({from = ARGV[2], keys = removed})
  end
  redis.call('PUBLISH', ARGV[1], message)
end
return #removed
";

/// Records format version `ARGV[1]` in the meta hash `KEYS[1]`, unless it
/// holds that version or a later one (a newer release's).
pub(crate) const RAISE_VERSION: &str = r"
local found = tonumber(redis.call('HGET', KEYS[1], 'format_version') or '0')
if found and found < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'format_version', ARGV[1])
end
return 0
";

/// The deadline a score stands for; `Err` with what is wrong when it is
/// not a whole number of milliseconds the platform's clock holds.
pub(crate) fn deadline_of_score(score: &str) -> Result<SystemTime, String> {
    let millis = score_millis(score)?;
    deadline_from_millis(millis)
        .ok_or_else(|| format!("the deadline {millis} is beyond what this platform's clock holds"))
}

/// The deadline a score of the deadlines' sorted set (as `ZSCORE` or
/// `ZRANGE ... WITHSCORES` print it) stands for, in milliseconds since the
/// Unix epoch, as this backend reads it; `Err` with what is wrong when it
/// is not a whole number of milliseconds. For tools that read a map
/// without opening a backend.
///
/// ```
/// assert_eq!(persistent_map_redis::score_millis("1700000000123"), Ok(1_700_000_000_123));
/// assert!(persistent_map_redis::score_millis("1.5").is_err());
/// ```
///
/// # Errors
///
/// The reason, in a few words, when the score is not a whole number of
/// milliseconds.
pub fn score_millis(score: &str) -> Result<i64, String> {
    score
        .parse()
        .map_err(|_| format!("the deadline {score:?} is not a whole number of milliseconds"))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn scores_are_whole_milliseconds() {
        assert_eq!(
            deadline_of_score("1700000000123"),
            Ok(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
        assert_eq!(
            deadline_of_score("-5"),
            Ok(UNIX_EPOCH - Duration::from_millis(5))
        );
        for bad in ["1.5", "inf", "-inf", "1.7e+20", "", "x"] {
            assert!(deadline_of_score(bad).is_err(), "{bad}");
        }
    }
}
