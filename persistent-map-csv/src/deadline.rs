//! Deadlines as stored: whole milliseconds since the Unix epoch, in a
//! field of digits, so the millisecond deadlines the map hands over come
//! back exactly.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `time` as milliseconds since the Unix epoch, rounded down (negative
/// before it); `None` beyond the range of an `i64`.
pub(crate) fn to_millis(time: SystemTime) -> Option<i64> {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).ok(),
        Err(before) => {
            let before = before.duration();
            let partial = u128::from(before.subsec_nanos() % 1_000_000 != 0);
            i64::try_from(before.as_millis() + partial)
                .ok()
                .map(|ms| -ms)
        }
    }
}

/// The time `millis` milliseconds after the Unix epoch; `None` when the
/// platform's clock cannot represent it.
pub(crate) fn from_millis(millis: i64) -> Option<SystemTime> {
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
    fn whole_milliseconds_round_trip_exactly() {
        for ms in [0, 1, 1_767_225_600_123, -1, -86_400_000, i64::MAX] {
            let time = from_millis(ms).expect("representable");
            assert_eq!(to_millis(time), Some(ms), "{ms}");
        }
    }

    #[test]
    fn sub_millisecond_parts_round_down() {
        let after = UNIX_EPOCH + Duration::from_micros(1_500);
        assert_eq!(to_millis(after), Some(1));
        let before = UNIX_EPOCH - Duration::from_micros(1_500);
        assert_eq!(to_millis(before), Some(-2));
    }
}
