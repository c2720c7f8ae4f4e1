//! Times in logs and listings, in UTC, without a calendar dependency.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2026-11-26T14:18:01Z`.
pub fn format_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // civil_from_days, H. Hinnant: days since 1970-01-01 to year, month, day
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The instant of a UTC calendar date and time of day, or `None` when a field is out of
/// range. Years before 1970 give `None` too: no certificate or lease we read is that old.
pub fn from_utc(
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
) -> Option<SystemTime> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    // days_from_civil, H. Hinnant: the inverse of the conversion in `format_utc`
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + i64::from(hour * 3600 + min * 60 + sec);
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Go's `time.Duration` text, to the second: `22h59m58s`, `4m0s`, `12s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec}s"),
        (h, m, sec) => format!("{h}h{m}m{sec}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations_like_go() {
        assert_eq!(format_duration(Duration::from_secs(82_798)), "22h59m58s");
        assert_eq!(format_duration(Duration::from_secs(240)), "4m0s");
        assert_eq!(format_duration(Duration::from_millis(12_900)), "12s");
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_utc(UNIX_EPOCH + Duration::from_secs(1_795_616_281)),
            "2026-11-25T14:18:01Z"
        );
        assert_eq!(
            format_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn calendar_dates_round_trip() {
        let t = from_utc(2026, 11, 25, 14, 18, 1).unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1_795_616_281));
        assert_eq!(from_utc(1970, 1, 1, 0, 0, 0), Some(UNIX_EPOCH));
        for secs in [0u64, 951_782_400, 951_868_799, 4_102_444_800, 1_795_616_281] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            let s = format_utc(t);
            let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap();
            let back = from_utc(
                i64::from(n(0..4)),
                n(5..7),
                n(8..10),
                n(11..13),
                n(14..16),
                n(17..19),
            );
            assert_eq!(back, Some(t), "{s}");
        }
        assert_eq!(from_utc(2026, 13, 1, 0, 0, 0), None);
        assert_eq!(from_utc(2026, 1, 1, 24, 0, 0), None);
        assert_eq!(from_utc(1969, 12, 31, 0, 0, 0), None);
    }
}
