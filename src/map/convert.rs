//! Conversions of cell text into FHIR values: numbers with a declared decimal separator,
//! dates in the declared formats (including Excel serial dates), unit conversion and
//! booleans. Pure functions; the caller turns an `Err` into a diagnostic naming the cell.

use rust_decimal::Decimal;
use std::str::FromStr;

/// A declared date format: a pattern of `dd`, `mm`, `yyyy`, `yy` and separators, or an
/// Excel serial day number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DateFormat {
    /// A pattern (`dd-mm-yyyy`), kept as its tokens.
    Pattern(String, Vec<DateToken>),
    /// An Excel serial date (days since 1899-12-30, the 1900 date system).
    Excel,
}

/// One token of a date pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DateToken {
    /// Day of month, one or two digits.
    Day,
    /// Month, one or two digits.
    Month,
    /// Four-digit year.
    Year4,
    /// Two-digit year, resolved with the pivot.
    Year2,
    /// A literal separator character.
    Sep(char),
}

impl DateFormat {
    /// Parses a declared format (`dd-mm-yyyy`, `yyyy-mm-dd`, `dd/mm/yy`, `excel`).
    ///
    /// # Errors
    /// A message when the pattern has no day, month or year, or an unknown letter.
    pub fn parse(text: &str) -> Result<DateFormat, String> {
        if text.eq_ignore_ascii_case("excel") {
            return Ok(DateFormat::Excel);
        }
        let mut tokens = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (tok, len) = if rest.starts_with("yyyy") {
                (DateToken::Year4, 4)
            } else if rest.starts_with("yy") {
                (DateToken::Year2, 2)
            } else if rest.starts_with("dd") {
                (DateToken::Day, 2)
            } else if rest.starts_with("mm") {
                (DateToken::Month, 2)
            } else {
                let c = rest.chars().next().unwrap_or(' ');
                if c.is_ascii_alphanumeric() {
                    return Err(format!(
                        "date format '{text}': unknown '{c}' (use dd, mm, yyyy, yy and separators, or excel)"
                    ));
                }
                (DateToken::Sep(c), c.len_utf8())
            };
            tokens.push(tok);
            rest = &rest[len..];
        }
        let has = |t: &DateToken| tokens.contains(t);
        if !has(&DateToken::Day)
            || !has(&DateToken::Month)
            || !(has(&DateToken::Year4) || has(&DateToken::Year2))
        {
            return Err(format!(
                "date format '{text}' needs a day (dd), a month (mm) and a year (yyyy or yy)"
            ));
        }
        Ok(DateFormat::Pattern(text.to_string(), tokens))
    }

    /// The format as declared.
    pub fn name(&self) -> &str {
        match self {
            DateFormat::Pattern(name, _) => name,
            DateFormat::Excel => "excel",
        }
    }
}

/// A calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ymd {
    /// Year.
    pub year: i32,
    /// Month, 1-12.
    pub month: u32,
    /// Day, 1-31.
    pub day: u32,
}

impl std::fmt::Display for Ymd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl Ymd {
    /// Appends the date as `YYYY-MM-DD` (as its `Display`, without formatting machinery).
    pub fn write(&self, out: &mut String) {
        write_year(self.year, out);
        out.push('-');
        push_2(self.month, out);
        out.push('-');
        push_2(self.day, out);
    }
}

/// Appends a year as at least four digits (`{:04}`).
pub fn write_year(year: i32, out: &mut String) {
    if (0..=9999).contains(&year) {
        let y = year.unsigned_abs();
        push_2(y / 100, out);
        push_2(y % 100, out);
    } else {
        use std::fmt::Write;
        let _ = write!(out, "{year:04}");
    }
}

/// Appends a number below 100 as two digits.
fn push_2(n: u32, out: &mut String) {
    out.push(char::from(b'0' + (n / 10 % 10) as u8));
    out.push(char::from(b'0' + (n % 10) as u8));
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// A date from year, month and day when they make a real calendar date.
pub fn ymd(year: i32, month: u32, day: u32) -> Option<Ymd> {
    ((1..=9999).contains(&year) && (1..=12).contains(&month) && day >= 1)
        .then_some(())
        .filter(|()| day <= days_in_month(year, month))
        .map(|()| Ymd { year, month, day })
}

/// The date `days` days after 1970-01-01 (civil-from-days).
fn from_days(days: i64) -> Option<Ymd> {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).ok()?;
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).ok()?;
    let year = i32::try_from(yoe + era * 400 + i64::from(month <= 2)).ok()?;
    ymd(year, month, day)
}

/// Parses a date in the first of `formats` that reads it whole; `pivot` resolves two-digit
/// years (`yy < pivot` is 20yy, otherwise 19yy).
///
/// # Errors
/// A message naming the formats tried.
pub fn parse_date(text: &str, formats: &[DateFormat], pivot: u32) -> Result<Ymd, String> {
    let text = super::source::trim(text);
    for f in formats {
        let found = match f {
            DateFormat::Excel => parse_excel(text),
            DateFormat::Pattern(_, tokens) => parse_pattern(text, tokens, pivot),
        };
        if let Some(d) = found {
            return Ok(d);
        }
    }
    let names: Vec<&str> = formats.iter().map(DateFormat::name).collect();
    Err(format!(
        "'{text}' is not a date in the declared formats ({})",
        names.join(", ")
    ))
}

/// An Excel serial day number (1900 date system; serial 60 is Excel's fictitious
/// 1900-02-29 and is refused). Only whole numbers between 1 and 2958465 (9999-12-31).
fn parse_excel(text: &str) -> Option<Ymd> {
    let whole = text
        .strip_suffix(".0")
        .or_else(|| text.strip_suffix(",0"))
        .unwrap_or(text);
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let serial: i64 = whole.parse().ok()?;
    if !(1..=2_958_465).contains(&serial) || serial == 60 {
        return None;
    }
    // 1899-12-30 is day -25569 from 1970-01-01; serials below 60 count from 1899-12-31
    // because Excel counts the non-existent 1900-02-29.
    let offset = if serial < 60 { 1 } else { 0 };
    from_days(serial - 25_569 + offset)
}

fn parse_pattern(text: &str, tokens: &[DateToken], pivot: u32) -> Option<Ymd> {
    let bytes = text.as_bytes();
    let mut pos = 0;
    let (mut day, mut month, mut year) = (None, None, None);
    for tok in tokens {
        match tok {
            DateToken::Sep(c) => {
                if !text[pos..].starts_with(*c) {
                    return None;
                }
                pos += c.len_utf8();
            }
            _ => {
                let (min, max) = match tok {
                    DateToken::Year4 => (4, 4),
                    DateToken::Year2 => (2, 2),
                    _ => (1, 2),
                };
                let mut end = pos;
                while end < bytes.len() && end - pos < max && bytes[end].is_ascii_digit() {
                    end += 1;
                }
                if end - pos < min {
                    return None;
                }
                // One to four ASCII digits: no overflow, no sign.
                let v = bytes[pos..end]
                    .iter()
                    .fold(0u32, |v, &b| v * 10 + u32::from(b - b'0'));
                pos = end;
                match tok {
                    DateToken::Day => day = Some(v),
                    DateToken::Month => month = Some(v),
                    DateToken::Year4 => year = Some(i32::try_from(v).ok()?),
                    _ => {
                        let century = if v < pivot { 2000 } else { 1900 };
                        year = Some(century + i32::try_from(v).ok()?);
                    }
                }
            }
        }
    }
    if pos != bytes.len() {
        return None;
    }
    ymd(year?, month?, day?)
}

/// Parses a number written with `decimal` as the decimal separator (`4,5` with `,`).
/// Spaces are ignored; a thousands separator is refused as ambiguous.
///
/// # Errors
/// A message when the text is not a number.
pub fn parse_number(text: &str, decimal: char) -> Result<Decimal, String> {
    if let Some(d) = plain_number(text.as_bytes(), decimal) {
        return Ok(d);
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let other = if decimal == ',' { '.' } else { ',' };
    if compact.contains(other) {
        return Err(format!(
            "'{}' is not a number with decimal separator '{decimal}'",
            text.trim()
        ));
    }
    let normal = compact.replace(decimal, ".");
    let ok = !normal.is_empty()
        && normal
            .trim_start_matches(['-', '+'])
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.')
        && normal.bytes().any(|b| b.is_ascii_digit());
    ok.then(|| Decimal::from_str(&normal).ok())
        .flatten()
        .ok_or_else(|| format!("'{}' is not a number", text.trim()))
}

/// The common case of [`parse_number`] without allocating: optional `-`, digits, and
/// optionally `decimal` followed by digits, at most 18 digits in all. `None` for anything
/// else (which the general path reads).
fn plain_number(bytes: &[u8], decimal: char) -> Option<Decimal> {
    let sep = u8::try_from(decimal).ok().filter(u8::is_ascii)?;
    let (negative, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    let (int, frac) = match digits.iter().position(|&b| b == sep) {
        Some(i) => (&digits[..i], Some(&digits[i + 1..])),
        None => (digits, None),
    };
    let all_digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if !all_digits(int) || frac.is_some_and(|f| !all_digits(f)) {
        return None;
    }
    let frac = frac.unwrap_or_default();
    if int.len() + frac.len() > 18 {
        return None;
    }
    let mut m: i64 = 0;
    for &b in int.iter().chain(frac) {
        m = m * 10 + i64::from(b - b'0');
    }
    let scale = u32::try_from(frac.len()).ok()?;
    Some(Decimal::new(if negative { -m } else { m }, scale))
}

/// Unit factors to a base unit per dimension: length (m), mass (g), time (s), power (W),
/// energy (J), volume (L). UCUM codes.
const UNITS: &[(&str, &str, &str)] = &[
    ("mm", "length", "0.001"),
    ("cm", "length", "0.01"),
    ("m", "length", "1"),
    ("mg", "mass", "0.001"),
    ("g", "mass", "1"),
    ("kg", "mass", "1000"),
    ("s", "time", "1"),
    ("min", "time", "60"),
    ("h", "time", "3600"),
    ("d", "time", "86400"),
    ("W", "power", "1"),
    ("kW", "power", "1000"),
    ("J", "energy", "1"),
    ("kJ", "energy", "1000"),
    ("mL", "volume", "0.001"),
    ("L", "volume", "1"),
];

fn unit(code: &str) -> Option<(&'static str, Decimal)> {
    UNITS
        .iter()
        .find(|(c, _, _)| *c == code)
        .and_then(|(_, dim, f)| Decimal::from_str(f).ok().map(|f| (*dim, f)))
}

/// Whether a unit code is one `convert_unit` knows.
pub fn known_unit(code: &str) -> bool {
    unit(code).is_some()
}

/// Converts `value` from unit `from` to unit `to` (UCUM codes of the same dimension).
///
/// # Errors
/// A message when a unit is unknown or the dimensions differ.
pub fn convert_unit(value: Decimal, from: &str, to: &str) -> Result<Decimal, String> {
    let (dim_from, f_from) = unit(from).ok_or_else(|| format!("unknown unit '{from}'"))?;
    let (dim_to, f_to) = unit(to).ok_or_else(|| format!("unknown unit '{to}'"))?;
    if dim_from != dim_to {
        return Err(format!(
            "cannot convert {from} ({dim_from}) to {to} ({dim_to})"
        ));
    }
    value
        .checked_mul(f_from)
        .and_then(|v| v.checked_div(f_to))
        .map(|v| v.normalize())
        .ok_or_else(|| format!("{value} {from} is out of range in {to}"))
}

/// Reads a yes/no cell: `ja j yes y true 1 waar` and `nee n no false 0 onwaar`
/// (case-insensitive).
///
/// # Errors
/// A message naming the value.
pub fn parse_boolean(text: &str) -> Result<bool, String> {
    match text.trim().to_lowercase().as_str() {
        "ja" | "j" | "yes" | "y" | "true" | "1" | "waar" | "oui" | "si" | "sì" => Ok(true),
        "nee" | "n" | "no" | "false" | "0" | "onwaar" | "non" => Ok(false),
        other => Err(format!("'{other}' is not a yes/no value")),
    }
}

/// The JSON text of a decimal: integral values without a fraction, others as written by
/// `rust_decimal` after normalizing (`4.50` is `4.5`).
pub fn number_text(d: Decimal) -> String {
    let mut s = String::new();
    write_number(d, &mut s);
    s
}

/// Appends [`number_text`] of `d` (without formatting machinery when its digits fit in
/// 64 bits).
pub fn write_number(d: Decimal, out: &mut String) {
    let n = d.normalize();
    let Ok(m) = u64::try_from(n.mantissa().unsigned_abs()) else {
        use std::fmt::Write;
        let _ = write!(out, "{n}");
        return;
    };
    if n.is_sign_negative() && m != 0 {
        out.push('-');
    }
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = m;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let digits = &buf[i..];
    let scale = n.scale() as usize;
    let push = |out: &mut String, s: &[u8]| out.extend(s.iter().map(|&b| char::from(b)));
    if scale == 0 {
        push(out, digits);
    } else if digits.len() > scale {
        let (a, b) = digits.split_at(digits.len() - scale);
        push(out, a);
        out.push('.');
        push(out, b);
    } else {
        out.push_str("0.");
        for _ in 0..scale - digits.len() {
            out.push('0');
        }
        push(out, digits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn formats(list: &[&str]) -> Vec<DateFormat> {
        list.iter().map(|f| DateFormat::parse(f).unwrap()).collect()
    }

    #[test]
    fn dates_in_declared_formats() {
        let f = formats(&["dd-mm-yyyy", "yyyy-mm-dd", "dd/mm/yy", "excel"]);
        let d = |s| parse_date(s, &f, 50).map(|d| d.to_string());
        assert_eq!(d("12-01-2022").unwrap(), "2022-01-12");
        assert_eq!(d("5-3-2021").unwrap(), "2021-03-05");
        assert_eq!(d("2021-03-05").unwrap(), "2021-03-05");
        assert_eq!(d("05/03/21").unwrap(), "2021-03-05");
        assert_eq!(d("05/03/51").unwrap(), "1951-03-05");
        assert_eq!(d("44927").unwrap(), "2023-01-01");
        assert_eq!(d("61").unwrap(), "1900-03-01");
        assert_eq!(d("1").unwrap(), "1900-01-01");
        assert_eq!(d("29-02-2024").unwrap(), "2024-02-29");
        let err = d("29-02-2023").unwrap_err();
        assert!(
            err.contains("'29-02-2023'") && err.contains("dd-mm-yyyy"),
            "{err}"
        );
        assert!(d("31-04-2022").is_err());
        assert!(d("12-01-2022x").is_err());
        assert!(d("2022/01/12").is_err());
        assert!(d("60").is_err());
    }

    #[test]
    fn bad_formats_are_refused() {
        assert!(DateFormat::parse("dd-mm").is_err());
        assert!(DateFormat::parse("dd-mm-jjjj").is_err());
    }

    #[test]
    fn numbers_with_decimal_comma() {
        assert_eq!(parse_number("4,5", ',').unwrap().to_string(), "4.5");
        assert_eq!(parse_number(" 12 ", ',').unwrap().to_string(), "12");
        assert_eq!(parse_number("-0,25", ',').unwrap().to_string(), "-0.25");
        assert!(parse_number("1.234,5", ',').is_err());
        assert!(parse_number("4,5", '.').is_err());
        assert!(parse_number("abc", '.').is_err());
        assert!(parse_number("-", '.').is_err());
    }

    #[test]
    fn unit_conversion() {
        let c = |v: &str, f, t| convert_unit(Decimal::from_str(v).unwrap(), f, t);
        assert_eq!(number_text(c("2.35", "cm", "mm").unwrap()), "23.5");
        assert_eq!(number_text(c("3", "cm", "mm").unwrap()), "30");
        assert_eq!(number_text(c("0.1", "kW", "W").unwrap()), "100");
        assert_eq!(number_text(c("90", "s", "min").unwrap()), "1.5");
        assert!(c("1", "cm", "W").is_err());
        assert!(c("1", "inch", "mm").is_err());
    }

    #[test]
    fn number_text_is_display_of_normalized() {
        for t in [
            "0",
            "-0",
            "1",
            "-1",
            "4.50",
            "0.05",
            "-0.25",
            "23.5",
            "30",
            "100.000",
            "0.0001",
            "123456789012345678",
            "-98765.4321",
            "7922816251426433759354395033.5",
            "0.0000000000000000000000000001",
        ] {
            let d = Decimal::from_str(t).unwrap();
            assert_eq!(number_text(d), d.normalize().to_string(), "{t}");
        }
    }

    #[test]
    fn plain_numbers_read_as_the_general_path() {
        for t in [
            "4,5",
            "12",
            "-0,25",
            "0,0",
            "007",
            "1,000",
            "123456789012345678",
        ] {
            let fast = plain_number(t.as_bytes(), ',').unwrap();
            let slow = Decimal::from_str(&t.replace(',', ".")).unwrap();
            assert_eq!((fast, fast.scale()), (slow, slow.scale()), "{t}");
        }
        for t in [
            "",
            "-",
            ",5",
            "5,",
            "1,2,3",
            "+1",
            " 1",
            "1234567890123456789",
        ] {
            assert!(plain_number(t.as_bytes(), ',').is_none(), "{t}");
        }
    }

    #[test]
    fn dates_write_as_display() {
        for (y, m, d) in [(1, 1, 1), (2022, 3, 14), (9999, 12, 31), (999, 10, 5)] {
            let date = Ymd {
                year: y,
                month: m,
                day: d,
            };
            let mut s = String::new();
            date.write(&mut s);
            assert_eq!(s, date.to_string());
        }
    }

    #[test]
    fn booleans() {
        assert!(parse_boolean("Ja").unwrap());
        assert!(!parse_boolean("nee").unwrap());
        assert!(parse_boolean("misschien").is_err());
    }
}
