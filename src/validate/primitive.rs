//! Lexical checks of primitive values against the R4 datatype definitions (the `regex`
//! extensions of each primitive's `value` element, written out as small functions: faster
//! than regular expressions and with better messages).

use crate::fhirpath::temporal::{Date, DateTime, Time};

/// Checks `value` (the JSON text of a string-typed primitive, or a number's text) against
/// the lexical rules of FHIR primitive type `code`. Returns a description of the problem.
pub fn check(code: &str, value: &str) -> Option<String> {
    let ok = match code {
        "id" => {
            (1..=64).contains(&value.len())
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
        "code" => {
            !value.is_empty()
                && !value.starts_with(char::is_whitespace)
                && !value.ends_with(char::is_whitespace)
                && code_inside_ok(value)
        }
        "uri" | "url" | "canonical" => !value.is_empty() && !has_whitespace(value),
        "oid" => value.strip_prefix("urn:oid:").is_some_and(is_oid),
        "uuid" => value.strip_prefix("urn:uuid:").is_some_and(is_uuid),
        "date" => Date::parse_fhir(value).is_ok(),
        "dateTime" => DateTime::parse_fhir(value).is_ok(),
        "instant" => {
            // An instant has at least seconds and always a time zone.
            value.len() >= 20 && DateTime::parse_fhir(value).is_ok()
        }
        "time" => Time::parse_fhir(value).is_ok() && value.len() >= 8,
        "base64Binary" => is_base64(value),
        "integer" => value.parse::<i32>().is_ok(),
        "positiveInt" => value.parse::<i32>().is_ok_and(|v| v > 0),
        "unsignedInt" => value.parse::<i32>().is_ok_and(|v| v >= 0),
        "decimal" => is_decimal(value),
        _ => true,
    };
    (!ok).then(|| format!("'{}' is not a valid {code}", truncate(value)))
}

/// Whether a code has neither two spaces in a row nor a line break or tab (all ASCII, so
/// the bytes of other characters never look like them).
fn code_inside_ok(value: &str) -> bool {
    let mut space = false;
    for &b in value.as_bytes() {
        match b {
            b'\n' | b'\r' | b'\t' => return false,
            b' ' if space => return false,
            b' ' => space = true,
            _ => space = false,
        }
    }
    true
}

/// Whether a text has white space (as `char::is_whitespace`), without decoding ASCII text.
fn has_whitespace(value: &str) -> bool {
    if value.is_ascii() {
        value.bytes().any(|b| matches!(b, b' ' | 0x09..=0x0d))
    } else {
        value.contains(char::is_whitespace)
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 60 {
        let t: String = s.chars().take(57).collect();
        format!("{t}...")
    } else {
        s.to_string()
    }
}

fn is_oid(s: &str) -> bool {
    let mut parts = s.split('.');
    let first_ok = parts.next().is_some_and(|p| matches!(p, "0" | "1" | "2"));
    first_ok
        && s.contains('.')
        && parts.all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p == "0" || !p.starts_with('0'))
        })
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_base64(s: &str) -> bool {
    let chars: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if chars.len() % 4 != 0 {
        return false;
    }
    let pad = chars.iter().rev().take_while(|&&b| b == b'=').count();
    pad <= 2
        && chars[..chars.len() - pad]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn is_decimal(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    digits(int)
        && (int == "0" || !int.starts_with('0'))
        && frac.is_none_or(digits)
        && exp.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)))
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn lexical_rules() {
        for (code, good, bad) in [
            ("id", "a-1.B", "a_b"),
            ("code", "final", " final"),
            ("uri", "http://x/y", "http://x y"),
            ("oid", "urn:oid:1.2.840.10008", "urn:oid:1.02"),
            (
                "uuid",
                "urn:uuid:a5e3c7a2-0f2f-4c0e-9d8b-0123456789ab",
                "urn:uuid:123",
            ),
            ("date", "2020-02-29", "2021-02-29"),
            ("dateTime", "2015-02-07T13:28:17-05:00", "2015-02-07T13:28"),
            ("instant", "2015-02-07T13:28:17.239+02:00", "2015-02-07"),
            ("time", "14:30:00", "25:00:00"),
            ("base64Binary", "aGVsbG8=", "aGVsbG8"),
            ("positiveInt", "1", "0"),
            ("unsignedInt", "0", "-1"),
            ("decimal", "1.50", "01.5"),
        ] {
            assert_eq!(check(code, good), None, "{code} {good}");
            assert!(check(code, bad).is_some(), "{code} {bad}");
        }
        for (code, bad) in [
            ("code", "a  b"),
            ("code", "a\tb"),
            ("code", "a\nb"),
            ("uri", "http://x\u{a0}y"),
            ("uri", "http://x\u{b}y"),
        ] {
            assert!(check(code, bad).is_some(), "{code} {bad}");
        }
    }
}
