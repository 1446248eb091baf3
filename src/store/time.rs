//! Instants as the store writes them: `meta.lastUpdated` text in UTC with milliseconds
//! (`2026-11-27T20:15:03.123Z`), which sorts as text in both databases, and the HTTP date
//! (`Fri, 27 Nov 2026 20:15:03 GMT`) that `Last-Modified` carries.

use std::time::{SystemTime, UNIX_EPOCH};

/// The current instant as FHIR `instant` text in UTC with milliseconds.
pub fn now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let millis = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
    instant(millis)
}

/// Milliseconds since 1970-01-01T00:00:00Z as `YYYY-MM-DDThh:mm:ss.sssZ`.
pub fn instant(millis: i64) -> String {
    let secs = millis.div_euclid(1000);
    let ms = millis.rem_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// An instant written by [`instant`] (or any `YYYY-MM-DDThh:mm:ss...Z` text) as an HTTP date
/// (RFC 9110 IMF-fixdate); `None` when the text does not have that shape.
pub fn http_date(instant: &str) -> Option<String> {
    let num = |r: std::ops::Range<usize>| instant.get(r).and_then(|s| s.parse::<i64>().ok());
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let weekday = WEEKDAYS[usize::try_from(days.rem_euclid(7)).ok()?];
    let month = MONTHS[usize::try_from(mo - 1).ok()?];
    Some(format!(
        "{weekday}, {d:02} {month} {y:04} {h:02}:{mi:02}:{s:02} GMT"
    ))
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian calendar, in
/// 400-year eras of 146,097 days, with years starting in March so the leap day comes last).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of `civil_from_days`).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_and_http_dates() {
        assert_eq!(instant(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(instant(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(instant(1_795_810_503_000), "2026-11-27T20:15:03.000Z");
        assert_eq!(
            http_date("2026-11-27T20:15:03.000Z").as_deref(),
            Some("Fri, 27 Nov 2026 20:15:03 GMT")
        );
        assert_eq!(
            http_date("1970-01-01T00:00:00Z").as_deref(),
            Some("Thu, 01 Jan 1970 00:00:00 GMT")
        );
        assert_eq!(http_date("nonsense"), None);
        for days in [-800_000, -1, 0, 59, 60, 11_016, 20_000, 3_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
