//! The per-patient date shift: full dates (`YYYY-MM-DD`, with or without a time) moved by
//! a number of days, on the proleptic Gregorian calendar.

use crate::model::json::Json;
use crate::store::time::{civil_from_days as civil, days_from_civil};

/// Shifts every full date or dateTime string of `json` by `days`, except in `meta`.
pub fn shift_all(json: &mut Json, days: i64) {
    if days == 0 {
        return;
    }
    match json {
        Json::Object(members) => {
            for (k, v) in members.iter_mut() {
                if k != "meta" {
                    shift_all(v, days);
                }
            }
        }
        Json::Array(items) => {
            for v in items {
                shift_all(v, days);
            }
        }
        Json::String(s) => {
            if let Some(new) = shift(s, days) {
                *s = new;
            }
        }
        _ => {}
    }
}

/// `text` moved by `days` when it is a full date, a dateTime or an instant.
pub fn shift(text: &str, days: i64) -> Option<String> {
    let b = text.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| {
        b[r.clone()]
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| text[r].parse::<i64>().ok())
            .flatten()
    };
    let (y, m, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let rest = &text[10..];
    if !(rest.is_empty() || rest.starts_with('T')) || !(1..=12).contains(&m) {
        return None;
    }
    if d < 1 || d > days_in_month(y, m) {
        return None;
    }
    let (ny, nm, nd) = civil(days_from_civil(y, m, d) + days);
    if !(1..=9999).contains(&ny) {
        return None;
    }
    Some(format!("{ny:04}-{nm:02}-{nd:02}{rest}"))
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_dates_and_keeps_times() {
        assert_eq!(shift("2020-02-28", 1).as_deref(), Some("2020-02-29"));
        assert_eq!(
            shift("2020-12-31T23:59:00Z", 1).as_deref(),
            Some("2021-01-01T23:59:00Z")
        );
        assert_eq!(shift("2021-03-01", -1).as_deref(), Some("2021-02-28"));
        assert_eq!(shift("1970-01-01", -365).as_deref(), Some("1969-01-01"));
        assert_eq!(shift("2020", 5), None);
        assert_eq!(shift("2020-02", 5), None);
        assert_eq!(shift("2020-02-30", 5), None);
        assert_eq!(shift("2020-01-01 note", 5), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        for z in [-800_000, -1, 0, 59, 18_000, 2_900_000] {
            let (y, m, d) = civil(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }
}
