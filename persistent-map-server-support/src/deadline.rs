//! Deadlines as stores hold them: whole milliseconds since the Unix epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A deadline as whole milliseconds since the Unix epoch (negative before
/// it), rounded down; `None` when it does not fit an `i64`.
///
/// The map hands over whole milliseconds, so for its deadlines the round
/// trip through [`deadline_from_millis`] is exact.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use persistent_map_server_support::{deadline_from_millis, deadline_millis};
///
/// let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
/// assert_eq!(deadline_millis(at), Some(1_700_000_000_123));
/// assert_eq!(deadline_from_millis(1_700_000_000_123), Some(at));
/// ```
#[must_use]
pub fn deadline_millis(at: SystemTime) -> Option<i64> {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).ok(),
        Err(before) => {
            let before = before.duration();
            // Rounded down, as after the epoch: a part of a millisecond
            // before it counts as a whole one.
            let whole = before.as_millis() + u128::from(before.subsec_nanos() % 1_000_000 != 0);
            i64::try_from(whole).ok().map(|ms| -ms)
        }
    }
}

/// The deadline stored as `millis` milliseconds since the Unix epoch
/// ([`deadline_millis`] undone); `None` when the platform's clock cannot
/// represent it.
#[must_use]
pub fn deadline_from_millis(millis: i64) -> Option<SystemTime> {
    let offset = Duration::from_millis(millis.unsigned_abs());
    if millis >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_milliseconds_round_trip_on_both_sides_of_the_epoch() {
        for ms in [0, 1, -1, 1_700_000_000_123, -86_400_000_123, 1 << 53] {
            let at = deadline_from_millis(ms).expect("representable");
            assert_eq!(deadline_millis(at), Some(ms), "{ms}");
        }
    }

    #[test]
    fn parts_of_a_millisecond_are_rounded_down() {
        let after = UNIX_EPOCH + Duration::from_micros(1_500);
        assert_eq!(deadline_millis(after), Some(1));
        let before = UNIX_EPOCH - Duration::from_micros(1_500);
        assert_eq!(deadline_millis(before), Some(-2));
    }
}
