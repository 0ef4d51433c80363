//! Calendar arithmetic for quota periods and the per-day usage record, in
//! UTC days since 1970-01-01 ("day numbers"). Pure functions, plus the
//! wall-clock reads the usage code makes ([`today`], [`until_next_day`]).
//!
//! Tests move the clock: when the environment variable
//! [`CLOCK_FILE_ENV`] names a file, the time is the Unix time (seconds)
//! written in it instead of the system's. It is read at most every
//! reconciliation tick, never per request.

use std::time::{SystemTime, UNIX_EPOCH};

/// Names a file holding the Unix time in seconds to use instead of the
/// system clock (for tests of period boundaries).
pub const CLOCK_FILE_ENV: &str = "COREGATE_CLOCK_FILE";

/// Unix time in seconds.
pub fn now_unix() -> i64 {
    if let Some(path) = std::env::var_os(CLOCK_FILE_ENV) {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(t) = text.trim().parse::<f64>() {
                if t.is_finite() {
                    return t.floor() as i64;
                }
            }
        }
    }
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(_) => 0,
    }
}

/// How long until the next UTC day begins, by the system clock. None when
/// the clock comes from [`CLOCK_FILE_ENV`] (tests move it by hand) or the
/// system clock is before 1970.
pub fn until_next_day() -> Option<std::time::Duration> {
    if std::env::var_os(CLOCK_FILE_ENV).is_some() {
        return None;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    let into_day = std::time::Duration::new(now.as_secs() % 86_400, now.subsec_nanos());
    std::time::Duration::from_secs(86_400).checked_sub(into_day)
}

/// Today's day number.
pub fn today() -> i64 {
    now_unix().div_euclid(86_400)
}

/// The day number of a civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYY-MM-DD`.
pub fn format_day(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Parses `YYYY-MM-DD` into a day number; None unless it is a real date.
pub fn parse_day(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = s.get(0..4)?.parse().ok()?;
    let m: u32 = s.get(5..7)?.parse().ok()?;
    let d: u32 = s.get(8..10)?.parse().ok()?;
    if !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let day = days_from_civil(y, m, d);
    (civil_from_days(day) == (y, m, d)).then_some(day)
}

/// A quota period, as in API Gateway's `QuotaSettings.period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// A UTC day.
    Day,
    /// Monday 00:00 UTC to the next Monday (ISO weeks).
    Week,
    /// A calendar month, from the 1st 00:00 UTC.
    Month,
}

impl Period {
    pub fn parse(s: &str) -> Option<Period> {
        match s {
            "DAY" => Some(Period::Day),
            "WEEK" => Some(Period::Week),
            "MONTH" => Some(Period::Month),
            _ => None,
        }
    }

    /// The first day of the period holding `day`.
    pub fn start(self, day: i64) -> i64 {
        match self {
            Period::Day => day,
            // Day 0 (1970-01-01) was a Thursday: Monday is 3 days before.
            Period::Week => day - (day + 3).rem_euclid(7),
            Period::Month => {
                let (y, m, _) = civil_from_days(day);
                days_from_civil(y, m, 1)
            }
        }
    }

    /// The first day after the period starting at `start`.
    pub fn end(self, start: i64) -> i64 {
        match self {
            Period::Day => start + 1,
            Period::Week => start + 7,
            Period::Month => {
                let (y, m, _) = civil_from_days(start);
                if m == 12 {
                    days_from_civil(y + 1, 1, 1)
                } else {
                    days_from_civil(y, m + 1, 1)
                }
            }
        }
    }
}
