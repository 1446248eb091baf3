//! Extraction of [`IndexRow`]s from a resource with the R4 SearchParameter expressions.

use super::IndexRow;
use crate::definitions::{self, Kind};
use crate::fhirpath::quantity::Quantity;
use crate::fhirpath::{Context, Expression, Item};
use crate::model::{Element, Primitive};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

/// A SearchParameter as the indexer uses it.
struct Param {
    code: String,
    kind: ParamKind,
    expression: Expression,
    /// The resource types a reference parameter may point to.
    targets: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ParamKind {
    Token,
    String,
    Date,
    Reference,
    Quantity,
    Number,
    Uri,
}

/// The compiled parameters of each resource type, made on first use of the type.
fn params(res_type: &str) -> Arc<Vec<Param>> {
    static CACHE: OnceLock<RwLock<HashMap<String, Arc<Vec<Param>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| RwLock::new(HashMap::new()));
    if let Some(p) = cache.read().ok().and_then(|c| c.get(res_type).cloned()) {
        return p;
    }
    let built = Arc::new(build(res_type));
    if let Ok(mut c) = cache.write() {
        c.insert(res_type.to_string(), built.clone());
    }
    built
}

fn build(res_type: &str) -> Vec<Param> {
    let mut out = Vec::new();
    for url in definitions::urls(Kind::SearchParameter) {
        let Some(sp) = definitions::get(Kind::SearchParameter, url) else {
            continue;
        };
        let bases: Vec<&str> = sp
            .get("base")
            .and_then(|b| b.as_array())
            .map(|b| b.iter().filter_map(|t| t.as_str()).collect())
            .unwrap_or_default();
        // Parameters of every resource (`_tag`, `_profile`, ...) are written on the abstract
        // type: their paths are taken as paths of this type.
        let base = if bases.contains(&res_type) {
            res_type
        } else if let Some(b) = bases
            .iter()
            .find(|b| matches!(**b, "Resource" | "DomainResource"))
        {
            *b
        } else {
            continue;
        };
        let kind = match sp.get("type").and_then(|t| t.as_str()) {
            Some("token") => ParamKind::Token,
            Some("string") => ParamKind::String,
            Some("date") => ParamKind::Date,
            Some("reference") => ParamKind::Reference,
            Some("quantity") => ParamKind::Quantity,
            Some("number") => ParamKind::Number,
            Some("uri") => ParamKind::Uri,
            _ => continue,
        };
        let (Some(code), Some(expression)) = (
            sp.get("code").and_then(|c| c.as_str()),
            sp.get("expression").and_then(|e| e.as_str()),
        ) else {
            continue;
        };
        // `_id` and `_lastUpdated` are columns of the resource row, not index rows.
        if matches!(code, "_id" | "_lastUpdated") {
            continue;
        }
        // Shared parameters list one path per base type: keep the paths of this type.
        let own: Vec<String> = split_union(expression)
            .into_iter()
            .filter(|part| {
                let p = part.trim().trim_start_matches('(');
                p.starts_with(base) && p[base.len()..].starts_with(['.', ' ', ')']) || p == base
            })
            .map(|part| {
                if base == res_type {
                    part.to_string()
                } else {
                    part.replacen(base, res_type, 1)
                }
            })
            .collect();
        if own.is_empty() {
            continue;
        }
        let joined = own.join(" | ");
        let mut targets: Vec<String> = sp
            .get("target")
            .and_then(|t| t.as_array())
            .map(|t| {
                t.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        // `patient` parameters list Patient and Group but keep `resolve() is Patient` only.
        if let [only] = resolved_types(&joined).as_slice() {
            targets = vec![(*only).to_string()];
        }
        match Expression::compile(&without_resolve(&joined)) {
            Ok(expression) => out.push(Param {
                code: code.to_string(),
                kind,
                expression,
                targets,
            }),
            Err(e) => tracing::debug!(url, error = %e, "search parameter expression not compiled"),
        }
    }
    out
}

/// Replaces `resolve() is T` (how R4 limits `patient` and similar parameters to one target
/// type) with a test of the reference text: at write time the target is not at hand, and
/// `resolve()` finds only contained and Bundle resources.
fn without_resolve(expression: &str) -> String {
    const PATTERN: &str = "resolve() is ";
    let mut out = String::with_capacity(expression.len());
    let mut rest = expression;
    while let Some(at) = rest.find(PATTERN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + PATTERN.len()..];
        let len = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len());
        let t = &after[..len];
        out.push_str(&format!(
            "(reference.startsWith('{t}/') or reference.contains('/{t}/'))"
        ));
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// The distinct types `T` of `resolve() is T` in an expression.
fn resolved_types(expression: &str) -> Vec<&str> {
    let mut out: Vec<&str> = expression
        .split("resolve() is ")
        .skip(1)
        .filter_map(|after| {
            let len = after
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(after.len());
            (len > 0).then(|| &after[..len])
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Splits `a | b | (c | d)` at the top-level `|`s.
fn split_union(expression: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start, mut quoted) = (0i32, 0usize, false);
    for (i, c) in expression.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            '|' if !quoted && depth == 0 => {
                parts.push(expression[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(expression[start..].trim());
    parts
}

/// The codes of the search parameters [`index`] evaluates on resources of `res_type`.
pub fn indexed_parameters(res_type: &str) -> Vec<String> {
    params(res_type).iter().map(|p| p.code.clone()).collect()
}

/// The index rows of a resource: every token, string, date, reference, quantity, number and
/// uri value its type's search parameters (and those of every resource: `_tag`,
/// `_security`, `_profile`, `_source`) find in it, sorted and without duplicates.
pub fn index(resource: &Element) -> Vec<IndexRow> {
    let params = params(resource.type_name());
    let ctx = Context::new(resource);
    let mut rows = Vec::new();
    for p in params.iter() {
        let Ok(found) = p.expression.evaluate(&ctx) else {
            continue;
        };
        for item in &found {
            match p.kind {
                ParamKind::Token => token(&p.code, item, &mut rows),
                ParamKind::String => string(&p.code, item, &mut rows),
                ParamKind::Date => date(&p.code, item, &mut rows),
                ParamKind::Reference => reference(&p.code, item, &mut rows),
                ParamKind::Quantity => quantity(&p.code, item, &mut rows),
                ParamKind::Number => number(&p.code, item, &mut rows),
                ParamKind::Uri => uri(&p.code, item, &mut rows),
            }
        }
    }
    rows.sort();
    rows.dedup();
    rows
}

fn prim_str(p: &Primitive) -> Option<&str> {
    p.as_str().filter(|s| !s.is_empty())
}

fn token(param: &str, item: &Item<'_>, rows: &mut Vec<IndexRow>) {
    let mut push = |system: Option<&str>, code: Option<&str>| {
        if let Some(code) = code {
            rows.push(IndexRow::Token {
                param: param.to_string(),
                system: system.unwrap_or_default().to_string(),
                code: code.to_string(),
            });
        }
    };
    let mut texts = Vec::new();
    match item {
        Item::Primitive(p) => push(None, prim_str(p)),
        Item::Element(e) => match e.info.fhir_type_name() {
            "Coding" => {
                push(e.str("system"), e.str("code"));
                texts.extend(e.str("display"));
            }
            "CodeableConcept" => {
                for c in e.values("coding").iter().filter_map(|v| v.as_element()) {
                    push(c.str("system"), c.str("code"));
                    texts.extend(c.str("display"));
                }
                texts.extend(e.str("text"));
            }
            "Identifier" => {
                push(e.str("system"), e.str("value"));
                let kind = e.values("type").first().and_then(|v| v.as_element());
                texts.extend(kind.and_then(|t| t.str("text")));
            }
            "ContactPoint" => push(None, e.str("value")),
            _ => {}
        },
        Item::Boolean(b) => push(None, Some(if *b { "true" } else { "false" })),
        Item::String(s) => push(None, Some(s)),
        _ => {}
    }
    for t in texts.into_iter().filter(|t| !t.trim().is_empty()) {
        rows.push(IndexRow::TokenText {
            param: param.to_string(),
            text: t.to_lowercase(),
        });
    }
}

fn string(param: &str, item: &Item<'_>, rows: &mut Vec<IndexRow>) {
    let mut push = |text: &str| {
        if !text.is_empty() {
            rows.push(IndexRow::String {
                param: param.to_string(),
                value: text.to_lowercase(),
            });
        }
    };
    match item {
        Item::Primitive(p) => {
            if let Some(s) = prim_str(p) {
                push(s);
            }
        }
        Item::String(s) => push(s),
        Item::Element(e) => {
            let parts: &[&str] = match e.info.fhir_type_name() {
                "HumanName" => &["family", "given", "prefix", "suffix", "text"],
                "Address" => &[
                    "line",
                    "city",
                    "district",
                    "state",
                    "postalCode",
                    "country",
                    "text",
                ],
                _ => &[],
            };
            for part in parts {
                for v in e.values(part) {
                    if let Some(s) = v.as_primitive().and_then(prim_str) {
                        push(s);
                    }
                }
            }
        }
        _ => {}
    }
}

fn date(param: &str, item: &Item<'_>, rows: &mut Vec<IndexRow>) {
    let mut push = |low: Option<(String, String)>, high: Option<(String, String)>| {
        let low = low.map(|(l, _)| l);
        let high = high.map(|(_, h)| h);
        if low.is_none() && high.is_none() {
            return;
        }
        rows.push(IndexRow::Date {
            param: param.to_string(),
            low: low.unwrap_or_else(|| "0001-01-01T00:00:00.000Z".into()),
            high: high.unwrap_or_else(|| "9999-12-31T23:59:59.999Z".into()),
        });
    };
    match item {
        Item::Primitive(p) => {
            let r = prim_str(p).and_then(date_range);
            push(r.clone(), r);
        }
        Item::Element(e) if e.info.fhir_type_name() == "Period" => {
            let start = e.str("start").and_then(date_range);
            let end = e.str("end").and_then(date_range);
            push(start, end);
        }
        _ => {}
    }
}

fn reference(param: &str, item: &Item<'_>, rows: &mut Vec<IndexRow>) {
    let target = match item {
        Item::Element(e) if e.info.fhir_type_name() == "Reference" => {
            let identifier = e.values("identifier").first().and_then(|v| v.as_element());
            if let Some(value) = identifier.and_then(|i| i.str("value")) {
                rows.push(IndexRow::ReferenceIdentifier {
                    param: param.to_string(),
                    system: identifier
                        .and_then(|i| i.str("system"))
                        .unwrap_or_default()
                        .to_string(),
                    value: value.to_string(),
                });
            }
            e.str("reference")
        }
        Item::Primitive(p) => prim_str(p),
        _ => None,
    };
    if let Some(t) = target {
        rows.push(IndexRow::Reference {
            param: param.to_string(),
            target: t.to_string(),
        });
    }
}

/// UCUM's system URI: units coded in it (or coded without a system) convert.
pub(super) const UCUM: &str = "http://unitsofmeasure.org";

/// A JSON number's text as a decimal (`1.50`, `1e-3`).
fn decimal(text: &str) -> Option<Decimal> {
    Decimal::from_str_exact(text)
        .or_else(|_| Decimal::from_scientific(text))
        .ok()
}

/// A Quantity (or Age, Duration, ..., Money) as its system, code, unit and value.
fn quantity_parts(e: &Element) -> Option<(String, String, String, Decimal)> {
    let value = e.str("value").and_then(decimal)?;
    let (system, code) = if e.info.fhir_type_name() == "Money" {
        ("urn:iso:std:iso:4217", e.str("currency"))
    } else {
        (e.str("system").unwrap_or_default(), e.str("code"))
    };
    Some((
        system.to_string(),
        code.unwrap_or_default().to_string(),
        e.str("unit").unwrap_or_default().to_string(),
        value,
    ))
}

/// `low` and `high` of one unit in UCUM base units, when the unit converts.
fn canonical(
    system: &str,
    code: &str,
    low: Decimal,
    high: Decimal,
) -> Option<(String, Decimal, Decimal)> {
    if code.is_empty() || !(system.is_empty() || system == UCUM) {
        return None;
    }
    let base = |v: Decimal| Quantity::new(v, code).to_base_units();
    let convert = |v: Decimal| -> Option<(String, Decimal)> {
        if v == Decimal::MIN || v == Decimal::MAX {
            // An open end of a Range stays open.
            return Some((base(Decimal::ONE)?.1, v));
        }
        let (b, unit) = base(v)?;
        Some((unit, b))
    };
    let (unit, lo) = convert(low)?;
    let (_, hi) = convert(high)?;
    Some((unit, lo, hi))
}

fn quantity(param: &str, item: &Item<'_>, rows: &mut Vec<IndexRow>) {
    let Item::Element(e) = item else { return };
    let mut push = |system: String, code: String, unit: String, low: Decimal, high: Decimal| {
        let canon = canonical(&system, &code, low, high);
        rows.push(IndexRow::Quantity {
            param: param.to_string(),
            system,
            code,
            unit,
            low,
            high,
            canon,
        });
    };
    if e.info.fhir_type_name() == "Range" {
        let part = |name: &str| {
            e.values(name)
                .first()
                .and_then(|v| v.as_element())
                .and_then(quantity_parts)
        };
        let (low, high) = (part("low"), part("high"));
        let Some((system, code, unit, _)) = low.clone().or_else(|| high.clone()) else {
            return;
        };
        push(
            system,
            code,
            unit,
            low.map_or(Decimal::MIN, |l| l.3),
            high.map_or(Decimal::MAX, |h| h.3),
        );
    } else if let Some((system, code, unit, value)) = quantity_parts(e) {
        // `"comparator": "<"` makes the value an open range.
        match e.str("comparator") {
            Some("<" | "<=") => push(system, code, unit, Decimal::MIN, value),
            Some(">" | ">=") => push(system, code, unit, value, Decimal::MAX),
            _ => push(system, code, unit, value, value),
        }
    }
}

fn number(param: &str, item: &Item<'_>, rows: &mut Vec<IndexRow>) {
    let value = match item {
        Item::Primitive(p) => prim_str(p).and_then(decimal),
        Item::Integer(i) => Some(Decimal::from(*i)),
        Item::Decimal(d) => Some(*d),
        _ => None,
    };
    if let Some(v) = value {
        rows.push(IndexRow::Quantity {
            param: param.to_string(),
            system: String::new(),
            code: String::new(),
            unit: String::new(),
            low: v,
            high: v,
            canon: None,
        });
    }
}

fn uri(param: &str, item: &Item<'_>, rows: &mut Vec<IndexRow>) {
    let value = match item {
        Item::Primitive(p) => prim_str(p),
        Item::String(s) => Some(&**s),
        _ => None,
    };
    if let Some(u) = value {
        rows.push(IndexRow::Uri {
            param: param.to_string(),
            uri: u.to_string(),
        });
    }
}

/// The first and last instant (UTC, milliseconds) that a FHIR date, dateTime or instant
/// covers; `None` when the text is not one.
pub fn date_range(text: &str) -> Option<(String, String)> {
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let year = num(0..4)?;
    let day_ms = 86_400_000i64;
    let start_of = |y: i64, m: i64, d: i64| crate::store::time::days_from_civil(y, m, d) * day_ms;
    let (low, high) = match text.len() {
        4 => (start_of(year, 1, 1), start_of(year + 1, 1, 1) - 1),
        7 => {
            let m = num(5..7).filter(|m| (1..=12).contains(m))?;
            let (ny, nm) = if m == 12 {
                (year + 1, 1)
            } else {
                (year, m + 1)
            };
            (start_of(year, m, 1), start_of(ny, nm, 1) - 1)
        }
        10 => {
            let m = num(5..7).filter(|m| (1..=12).contains(m))?;
            let d = num(8..10).filter(|d| (1..=31).contains(d))?;
            let s = start_of(year, m, d);
            (s, s + day_ms - 1)
        }
        n if n >= 19 && text.as_bytes().get(10) == Some(&b'T') => {
            let m = num(5..7).filter(|m| (1..=12).contains(m))?;
            let d = num(8..10).filter(|d| (1..=31).contains(d))?;
            let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
            let mut rest = &text[19..];
            let mut millis = 0i64;
            let mut precise = false;
            if let Some(frac) = rest.strip_prefix('.') {
                let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
                let f = &frac[..digits];
                let padded = format!("{f:0<3}");
                millis = padded.get(..3)?.parse().ok()?;
                precise = digits >= 3;
                rest = &frac[digits..];
            }
            let offset_min = match rest {
                "" | "Z" => 0,
                _ => {
                    let sign = match rest.as_bytes().first()? {
                        b'+' => 1,
                        b'-' => -1,
                        _ => return None,
                    };
                    let oh: i64 = rest.get(1..3)?.parse().ok()?;
                    let om: i64 = rest.get(4..6)?.parse().ok()?;
                    sign * (oh * 60 + om)
                }
            };
            let at = start_of(year, m, d) + ((h * 60 + mi) * 60 + s) * 1000 + millis
                - offset_min * 60_000;
            (at, if precise { at } else { at + 999 })
        }
        _ => return None,
    };
    Some((
        crate::store::time::instant(low),
        crate::store::time::instant(high),
    ))
}

/// The type (`token`, `string`, `date`, `reference`, `quantity`, `number` or `uri`) of
/// search parameter `code` of `res_type` as the indexer knows it; `None` for a parameter
/// that is not indexed.
pub fn param_type(res_type: &str, code: &str) -> Option<&'static str> {
    params(res_type)
        .iter()
        .find(|p| p.code == code)
        .map(|p| match p.kind {
            ParamKind::Token => "token",
            ParamKind::String => "string",
            ParamKind::Date => "date",
            ParamKind::Reference => "reference",
            ParamKind::Quantity => "quantity",
            ParamKind::Number => "number",
            ParamKind::Uri => "uri",
        })
}

/// The resource types reference parameter `code` of `res_type` may point to (empty when
/// the definition does not say); `None` for a parameter that is not indexed.
pub fn param_targets(res_type: &str, code: &str) -> Option<Vec<String>> {
    params(res_type)
        .iter()
        .find(|p| p.code == code)
        .map(|p| p.targets.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_ranges() {
        let r = |t: &str| date_range(t).map(|(l, h)| format!("{l} {h}"));
        assert_eq!(
            r("2020").as_deref(),
            Some("2020-01-01T00:00:00.000Z 2020-12-31T23:59:59.999Z")
        );
        assert_eq!(
            r("2024-02").as_deref(),
            Some("2024-02-01T00:00:00.000Z 2024-02-29T23:59:59.999Z")
        );
        assert_eq!(
            r("2021-03-04").as_deref(),
            Some("2021-03-04T00:00:00.000Z 2021-03-04T23:59:59.999Z")
        );
        assert_eq!(
            r("2021-03-04T10:00:00+02:00").as_deref(),
            Some("2021-03-04T08:00:00.000Z 2021-03-04T08:00:00.999Z")
        );
        assert_eq!(
            r("2021-03-04T10:00:00.123Z").as_deref(),
            Some("2021-03-04T10:00:00.123Z 2021-03-04T10:00:00.123Z")
        );
        assert_eq!(r("yesterday"), None);
        assert_eq!(r("2021-13"), None);
    }

    #[test]
    fn quantities_texts_identifiers_and_resource_parameters() {
        use std::str::FromStr as _;
        let dec = |t: &str| Decimal::from_str(t).expect("decimal");
        let obs = crate::model::parse(
            r#"{"resourceType":"Observation","status":"final",
            "meta":{"tag":[{"system":"urn:t","code":"pilot"}],
            "profile":["https://a-imagio.eu/fhir/StructureDefinition/x"]},
            "code":{"coding":[{"system":"http://loinc.org","code":"8302-2","display":"Body Height"}],
            "text":"Height"},
            "subject":{"identifier":{"system":"urn:s","value":"42"}},
            "valueQuantity":{"value":7,"unit":"mm","system":"http://unitsofmeasure.org","code":"mm"}}"#,
        )
        .expect("observation");
        let rows = index(&obs);
        let has = |r: IndexRow| rows.contains(&r);
        assert!(
            has(IndexRow::Quantity {
                param: "value-quantity".into(),
                system: UCUM.into(),
                code: "mm".into(),
                unit: "mm".into(),
                low: dec("7"),
                high: dec("7"),
                canon: Some(("m".into(), dec("0.007"), dec("0.007"))),
            }),
            "{rows:?}"
        );
        assert!(has(IndexRow::TokenText {
            param: "code".into(),
            text: "body height".into()
        }));
        assert!(has(IndexRow::TokenText {
            param: "code".into(),
            text: "height".into()
        }));
        assert!(has(IndexRow::ReferenceIdentifier {
            param: "subject".into(),
            system: "urn:s".into(),
            value: "42".into()
        }));
        assert!(has(IndexRow::Token {
            param: "_tag".into(),
            system: "urn:t".into(),
            code: "pilot".into()
        }));
        assert!(has(IndexRow::Uri {
            param: "_profile".into(),
            uri: "https://a-imagio.eu/fhir/StructureDefinition/x".into()
        }));
        assert_eq!(param_type("Procedure", "_security"), Some("token"));
        assert_eq!(param_type("Patient", "_id"), None);
        assert_eq!(
            param_targets("Encounter", "patient"),
            Some(vec!["Patient".to_string()])
        );
        let cond = crate::model::parse(
            r#"{"resourceType":"Condition","subject":{"reference":"Patient/p"},
            "onsetRange":{"low":{"value":40,"system":"http://unitsofmeasure.org","code":"a"}}}"#,
        )
        .expect("condition");
        let rows = index(&cond);
        assert!(
            rows.iter().any(|r| matches!(r,
            IndexRow::Quantity { param, low, high, .. }
                if param == "onset-age" && *low == dec("40") && *high == Decimal::MAX)),
            "{rows:?}"
        );
        let lt = crate::model::parse(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},
            "valueQuantity":{"value":1e-3,"comparator":"<","code":"g"}}"#,
        )
        .expect("observation");
        let rows = index(&lt);
        assert!(
            rows.iter().any(|r| matches!(r,
            IndexRow::Quantity { param, low, high, canon: Some((unit, _, _)), .. }
                if param == "value-quantity" && *low == Decimal::MIN
                    && *high == dec("0.001") && unit == "g")),
            "{rows:?}"
        );
    }

    #[test]
    fn resolve_becomes_a_reference_test() {
        assert_eq!(
            without_resolve("Observation.subject.where(resolve() is Patient)"),
            "Observation.subject.where((reference.startsWith('Patient/') or \
             reference.contains('/Patient/')))"
        );
        let obs = crate::model::parse(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},
            "subject":{"reference":"Patient/p1"}}"#,
        )
        .expect("observation");
        assert!(index(&obs).contains(&IndexRow::Reference {
            param: "patient".into(),
            target: "Patient/p1".into()
        }));
        let obs = crate::model::parse(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},
            "subject":{"reference":"Group/g1"}}"#,
        )
        .expect("observation");
        assert!(!index(&obs).iter().any(|r| matches!(r,
            IndexRow::Reference { param, .. } if param == "patient")));
    }

    #[test]
    fn union_split() {
        assert_eq!(
            split_union("A.b | (C.d as Quantity) | E.f.where(g = 'x|y')"),
            vec!["A.b", "(C.d as Quantity)", "E.f.where(g = 'x|y')"]
        );
    }

    #[test]
    fn patient_and_observation_rows() {
        let patient = crate::model::parse(
            r#"{"resourceType":"Patient","identifier":[{"system":"urn:s","value":"42"}],
            "name":[{"family":"Van Dijk","given":["Anna"]}],"gender":"female",
            "birthDate":"1950-03","generalPractitioner":[{"reference":"Practitioner/p1"}]}"#,
        )
        .expect("patient");
        let rows = index(&patient);
        let has = |r: IndexRow| rows.contains(&r);
        assert!(has(IndexRow::Token {
            param: "identifier".into(),
            system: "urn:s".into(),
            code: "42".into()
        }));
        assert!(has(IndexRow::Token {
            param: "gender".into(),
            system: String::new(),
            code: "female".into()
        }));
        assert!(has(IndexRow::String {
            param: "family".into(),
            value: "van dijk".into()
        }));
        assert!(has(IndexRow::String {
            param: "name".into(),
            value: "anna".into()
        }));
        assert!(has(IndexRow::Date {
            param: "birthdate".into(),
            low: "1950-03-01T00:00:00.000Z".into(),
            high: "1950-03-31T23:59:59.999Z".into()
        }));
        assert!(has(IndexRow::Reference {
            param: "general-practitioner".into(),
            target: "Practitioner/p1".into()
        }));
        let obs = crate::model::parse(
            r#"{"resourceType":"Observation","status":"final",
            "code":{"coding":[{"system":"http://loinc.org","code":"21889-1"}]},
            "subject":{"reference":"Patient/x"},"effectivePeriod":{"start":"2020-05-01"}}"#,
        )
        .expect("observation");
        let rows = index(&obs);
        assert!(rows.contains(&IndexRow::Token {
            param: "code".into(),
            system: "http://loinc.org".into(),
            code: "21889-1".into()
        }));
        assert!(rows.contains(&IndexRow::Reference {
            param: "subject".into(),
            target: "Patient/x".into()
        }));
        assert!(rows.contains(&IndexRow::Date {
            param: "date".into(),
            low: "2020-05-01T00:00:00.000Z".into(),
            high: "9999-12-31T23:59:59.999Z".into()
        }));
    }
}
