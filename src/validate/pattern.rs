//! `fixed[x]` and `pattern[x]`: comparing an instance value with a JSON value from a profile.
//!
//! Fixed means equal in every property and no more; pattern means every property the pattern
//! has is present with a matching value, and each item of a pattern array is matched by some
//! item of the instance (FHIR R4, ElementDefinition.pattern[x]).

use crate::model::{Element, Scalar, Value};
use rust_decimal::Decimal;
use serde_json::Value as Json;
use std::str::FromStr;

/// Whether `v` equals the fixed value exactly.
pub fn equals(v: &Value, fixed: &Json) -> bool {
    compare(v, fixed, true)
}

/// Whether `v` matches the pattern.
pub fn matches(v: &Value, pattern: &Json) -> bool {
    compare(v, pattern, false)
}

/// Orders a value against a `minValue[x]`/`maxValue[x]` limit: numbers numerically, dates,
/// date-times and times chronologically, quantities by value when the units agree. `None`
/// when they cannot be ordered.
pub fn compare_to(v: &Value, limit: &Json) -> Option<std::cmp::Ordering> {
    use crate::fhirpath::temporal::{Date, DateTime, Time};
    match (v, limit) {
        (Value::Primitive(p), Json::Number(n)) => {
            let a = Decimal::from_str(p.as_str()?).ok()?;
            let b = Decimal::from_str(&n.to_string()).ok()?;
            Some(a.cmp(&b))
        }
        (Value::Primitive(p), Json::String(s)) => {
            let a = p.as_str()?;
            match &*p.info.name {
                "date" => Date::parse_fhir(a)
                    .ok()?
                    .compare(&Date::parse_fhir(s).ok()?),
                "dateTime" | "instant" => DateTime::parse_fhir(a)
                    .ok()?
                    .compare(&DateTime::parse_fhir(s).ok()?),
                "time" => Time::parse_fhir(a)
                    .ok()?
                    .compare(&Time::parse_fhir(s).ok()?),
                _ => None,
            }
        }
        (Value::Element(e), Json::Object(q)) if e.info.is_a("Quantity") => {
            // Compared after UCUM conversion where the units are commensurable.
            use crate::fhirpath::quantity::Quantity;
            let unit_a = e.str("code").or(e.str("unit")).unwrap_or("1");
            let unit_b = q
                .get("code")
                .or(q.get("unit"))
                .and_then(Json::as_str)
                .unwrap_or("1");
            let a = Quantity::new(Decimal::from_str(e.str("value")?).ok()?, unit_a);
            let b = Quantity::new(
                Decimal::from_str(&q.get("value")?.to_string()).ok()?,
                unit_b,
            );
            a.compare(&b)
        }
        _ => None,
    }
}

fn compare(v: &Value, j: &Json, exact: bool) -> bool {
    match v {
        Value::Primitive(p) => match &p.value {
            Some(s) => scalar_eq(s, j),
            None => false,
        },
        Value::Element(e) => match j {
            Json::Object(map) => element_matches(e, map, exact),
            _ => false,
        },
    }
}

fn scalar_eq(s: &Scalar, j: &Json) -> bool {
    match (s, j) {
        (Scalar::Bool(a), Json::Bool(b)) => a == b,
        (Scalar::String(a), Json::String(b)) => **a == **b,
        (Scalar::Number(a), Json::Number(b)) => {
            match (Decimal::from_str(a), Decimal::from_str(&b.to_string())) {
                (Ok(x), Ok(y)) => x == y,
                _ => **a == *b.to_string(),
            }
        }
        _ => false,
    }
}

fn element_matches(e: &Element, map: &serde_json::Map<String, Json>, exact: bool) -> bool {
    for (key, want) in map {
        if key == "resourceType" {
            if e.type_name() != want.as_str().unwrap_or_default() {
                return false;
            }
            continue;
        }
        let Some(child) = e.info.child(key.trim_start_matches('_')) else {
            return false;
        };
        let prop = e
            .props
            .iter()
            .find(|p| p.element == child.element && p.type_index == child.type_index);
        let Some(prop) = prop else {
            return false;
        };
        let ok = match want {
            Json::Array(items) => {
                if exact {
                    items.len() == prop.values.len()
                        && items
                            .iter()
                            .zip(prop.values.iter())
                            .all(|(w, v)| compare(v, w, true))
                } else {
                    items
                        .iter()
                        .all(|w| prop.values.iter().any(|v| compare(v, w, false)))
                }
            }
            single => prop.values.iter().any(|v| compare(v, single, exact)),
        };
        if !ok {
            return false;
        }
    }
    if exact {
        // No property beyond those fixed.
        let fixed_count = map.keys().filter(|k| *k != "resourceType").count();
        return e.props.len() == fixed_count;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obs(value: &str) -> Element {
        crate::model::parse(&format!(
            r#"{{"resourceType":"Observation","status":"final","code":{value}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn pattern_and_fixed() {
        let o = obs(
            r#"{"coding":[{"system":"http://loinc.org","code":"8480-6","display":"Systolic"},{"code":"x"}],"text":"BP"}"#,
        );
        let code = &o.values("code")[0];
        let pattern = json!({"coding": [{"system": "http://loinc.org", "code": "8480-6"}]});
        assert!(matches(code, &pattern));
        assert!(!equals(code, &pattern));
        assert!(!matches(
            code,
            &json!({"coding": [{"system": "http://loinc.org", "code": "8462-4"}]})
        ));
        assert!(!matches(code, &json!({"text": "bp"})));
        let exact = obs(r#"{"text":"BP"}"#);
        assert!(equals(&exact.values("code")[0], &json!({"text": "BP"})));
        let status = &o.values("status")[0];
        assert!(equals(status, &json!("final")));
        assert!(!equals(status, &json!("amended")));
    }

    #[test]
    fn numbers_compare_as_decimals() {
        let q = crate::model::parse(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50,"unit":"mm"}}"#,
        )
        .unwrap();
        let v = &q.values("value")[0];
        assert!(matches(v, &json!({"value": 1.5})));
        assert!(!matches(v, &json!({"value": 2})));
    }
}
