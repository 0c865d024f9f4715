//! Timestamps: parsing the two accepted text forms into microseconds since the Unix epoch (UTC),
//! and formatting them back. Hand-written (no chrono) so the SmartModule stays small and fast.

use thiserror::Error;

/// Why a timestamp string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("expected `YYYY-MM-DD HH:MM:SS` (UTC) or RFC 3339, {problem}")]
pub struct TimestampError {
    problem: &'static str,
}

fn bad(problem: &'static str) -> TimestampError {
    TimestampError { problem }
}

const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// Parses `YYYY-MM-DD HH:MM:SS` (read as UTC) or RFC 3339 (`2022-10-02T13:00:15.123Z`,
/// `2022-10-02T15:00:15+02:00`; `t`/`z` and a space separator accepted) into microseconds
/// since the Unix epoch, UTC. Fractions finer than a microsecond are truncated.
pub fn parse_timestamp(s: &str) -> Result<i64, TimestampError> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return Err(bad("too short"));
    }
    let year = digits(&b[0..4]).ok_or(bad("bad year"))? as i64;
    if b[4] != b'-' || b[7] != b'-' {
        return Err(bad("bad date separator"));
    }
    let month = digits(&b[5..7]).ok_or(bad("bad month"))?;
    let day = digits(&b[8..10]).ok_or(bad("bad day"))?;
    if !matches!(b[10], b' ' | b'T' | b't') {
        return Err(bad("bad date/time separator"));
    }
    let hour = digits(&b[11..13]).ok_or(bad("bad hour"))?;
    if b[13] != b':' || b[16] != b':' {
        return Err(bad("bad time separator"));
    }
    let minute = digits(&b[14..16]).ok_or(bad("bad minute"))?;
    let second = digits(&b[17..19]).ok_or(bad("bad second"))?;
    if !(1..=12).contains(&month) {
        return Err(bad("month out of range"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(bad("day out of range"));
    }
    // 60 is a leap second (RFC 3339 allows it); it counts as the next second.
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("time out of range"));
    }
    let mut rest = &b[19..];
    let mut micros: i64 = 0;
    if let Some((&b'.', frac)) = rest.split_first() {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(bad("empty fraction"));
        }
        for (i, c) in frac[..n].iter().enumerate() {
            if i < 6 {
                micros = micros * 10 + i64::from(c - b'0');
            }
        }
        for _ in n..6 {
            micros *= 10;
        }
        rest = &frac[n..];
    }
    let offset_seconds: i64 = match rest {
        [] => {
            if b[10] != b' ' {
                return Err(bad("missing time zone"));
            }
            0
        }
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = digits(&[*h1, *h2]).ok_or(bad("bad zone offset"))?;
            let om = digits(&[*m1, *m2]).ok_or(bad("bad zone offset"))?;
            if oh > 23 || om > 59 {
                return Err(bad("zone offset out of range"));
            }
            let v = i64::from(oh * 3600 + om * 60);
            if *sign == b'-' { -v } else { v }
        }
        _ => return Err(bad("trailing characters")),
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * SECONDS_PER_DAY
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second)
        - offset_seconds;
    Ok(seconds * MICROS_PER_SECOND + micros)
}

/// `YYYY-MM-DD` (UTC) of a timestamp in microseconds since the Unix epoch.
pub fn micros_to_date(micros: i64) -> String {
    day_to_date(micros.div_euclid(MICROS_PER_SECOND * SECONDS_PER_DAY))
}

/// `YYYY-MM-DD` of a day counted from 1970-01-01 (UTC).
pub fn day_to_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// RFC 3339 UTC with microseconds (`2026-11-25T18:32:04.123456Z`), the form of
/// `retrieved_timestamp` in `form.enriched`.
pub fn format_rfc3339_micros(micros: i64) -> String {
    let days = micros.div_euclid(MICROS_PER_SECOND * SECONDS_PER_DAY);
    let in_day = micros.rem_euclid(MICROS_PER_SECOND * SECONDS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let secs = in_day / MICROS_PER_SECOND;
    let frac = in_day % MICROS_PER_SECOND;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_utc() {
        // date -u -d '2022-10-02 13:00:15' +%s  -> 1664715615
        assert_eq!(
            parse_timestamp("2022-10-02 13:00:15"),
            Ok(1_664_715_615_000_000)
        );
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Ok(0));
        assert_eq!(parse_timestamp("1969-12-31 23:59:59"), Ok(-1_000_000));
        // date -u -d '2024-02-29 23:59:59' +%s -> 1709251199
        assert_eq!(
            parse_timestamp("2024-02-29 23:59:59"),
            Ok(1_709_251_199_000_000)
        );
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(
            parse_timestamp("2022-10-02T13:00:15Z"),
            Ok(1_664_715_615_000_000)
        );
        assert_eq!(
            parse_timestamp("2022-10-02T15:00:15+02:00"),
            Ok(1_664_715_615_000_000)
        );
        assert_eq!(
            parse_timestamp("2022-10-02t08:30:15.5-04:30"),
            Ok(1_664_715_615_500_000)
        );
        assert_eq!(
            parse_timestamp("2022-10-02T13:00:15.123456789Z"),
            Ok(1_664_715_615_123_456)
        );
        // date -u -d '2026-11-25 18:32:04' +%s -> 1795631524
        assert_eq!(
            parse_timestamp("2026-11-25T18:32:04.123456Z"),
            Ok(1_795_631_524_123_456)
        );
    }

    #[test]
    fn refuses_bad_text() {
        for s in [
            "",
            "2022-10-02",
            "2022-10-02T13:00:15",
            "2022-13-02 13:00:15",
            "2022-02-29 13:00:15",
            "2022-10-02 24:00:00",
            "2022-10-02 13:00:15x",
            "2022/10/02 13:00:15",
            "2022-10-02T13:00:15.Z",
            "2022-10-02T13:00:15+0200",
            "yesterday at noon!!",
            "２０２２-10-02 13:00:15",
        ] {
            assert!(parse_timestamp(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn formats_back() {
        let t = 1_795_631_524_123_456;
        assert_eq!(format_rfc3339_micros(t), "2026-11-25T18:32:04.123456Z");
        assert_eq!(parse_timestamp(&format_rfc3339_micros(t)), Ok(t));
        assert_eq!(micros_to_date(t), "2026-11-25");
        assert_eq!(micros_to_date(-1), "1969-12-31");
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
