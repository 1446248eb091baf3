//! The FHIRPath operators on single items: equality (`=`), equivalence (`~`), ordering
//! (`<` ...) and arithmetic (`+ - * / div mod`), after the implicit conversions of FHIR values
//! to System values. Collection-level rules (empty propagation, singleton checks) live in the
//! evaluator; these functions see one item per side.

use std::cmp::Ordering;
use std::ptr;
use std::rc::Rc;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use super::ast::BinaryOp;
use super::quantity::{equivalent_decimals, Quantity};
use super::temporal::DateTime;
use super::value::{Item, Shared, SystemValue, Text};
use crate::model::{Element, Primitive, Value};

/// `=` on two items: `Some(equal)`, or `None` when it cannot be known (date/time values of
/// different precision, primitives without a value).
pub(crate) fn equals(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    match (a, b) {
        (Item::Element(x), Item::Element(y)) => {
            if let (Some(p), Some(q)) = (a.to_system(), b.to_system()) {
                return system_equals(&p, &q);
            }
            Some(elements_equal(x, y, false))
        }
        (Item::Type(x), Item::Type(y)) => Some(x == y),
        (Item::Primitive(x), Item::Primitive(y)) if ptr::eq(*x, *y) => {
            x.value.as_ref().map(|_| true)
        }
        _ => match (a.to_system(), b.to_system()) {
            (Some(x), Some(y)) => system_equals(&x, &y),
            _ if is_valueless(a) || is_valueless(b) => None,
            _ => Some(false),
        },
    }
}

/// `~` on two items: never unknown.
pub(crate) fn equivalent(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (a, b) {
        (Item::Element(x), Item::Element(y)) => {
            if let (Some(p), Some(q)) = (a.to_system(), b.to_system()) {
                return system_equivalent(&p, &q);
            }
            elements_equal(x, y, true)
        }
        (Item::Type(x), Item::Type(y)) => x == y,
        _ => match (a.to_system(), b.to_system()) {
            (Some(x), Some(y)) => system_equivalent(&x, &y),
            _ => is_valueless(a) && is_valueless(b),
        },
    }
}

/// A FHIR primitive that carries only extensions.
fn is_valueless(item: &Item<'_>) -> bool {
    matches!(item, Item::Primitive(p) if p.value.is_none())
}

/// A numeric value as a decimal, for mixed Integer/Decimal operations.
fn as_decimal(v: &SystemValue<'_>) -> Option<Decimal> {
    match v {
        SystemValue::Integer(i) => Some(Decimal::from(*i)),
        SystemValue::Decimal(d) => Some(*d),
        _ => None,
    }
}

/// `=` on System values.
pub(crate) fn system_equals(a: &SystemValue<'_>, b: &SystemValue<'_>) -> Option<bool> {
    use SystemValue as V;
    match (a, b) {
        (V::Boolean(x), V::Boolean(y)) => Some(x == y),
        (V::Integer(x), V::Integer(y)) => Some(x == y),
        (V::Integer(_) | V::Decimal(_), V::Integer(_) | V::Decimal(_)) => {
            Some(as_decimal(a)? == as_decimal(b)?)
        }
        (V::String(x), V::String(y)) => Some(x == y),
        (V::Date(x), V::Date(y)) => x.equals(y),
        (V::Date(x), V::DateTime(y)) => DateTime::from(*x).equals(y),
        (V::DateTime(x), V::Date(y)) => x.equals(&DateTime::from(*y)),
        (V::DateTime(x), V::DateTime(y)) => x.equals(y),
        (V::Time(x), V::Time(y)) => x.equals(y),
        (V::Quantity(x), V::Quantity(y)) => x.equals(y),
        _ => Some(false),
    }
}

/// `~` on System values: strings ignore case and collapse whitespace, decimals compare at
/// the precision of the less precise operand.
pub(crate) fn system_equivalent(a: &SystemValue<'_>, b: &SystemValue<'_>) -> bool {
    use SystemValue as V;
    match (a, b) {
        (V::Boolean(x), V::Boolean(y)) => x == y,
        (V::Integer(x), V::Integer(y)) => x == y,
        (V::Integer(_) | V::Decimal(_), V::Integer(_) | V::Decimal(_)) => {
            match (as_decimal(a), as_decimal(b)) {
                (Some(x), Some(y)) => equivalent_decimals(&x, &y),
                _ => false,
            }
        }
        (V::String(x), V::String(y)) => strings_equivalent(x, y),
        (V::Date(x), V::Date(y)) => x.equivalent(y),
        (V::Date(x), V::DateTime(y)) => DateTime::from(*x).equivalent(y),
        (V::DateTime(x), V::Date(y)) => x.equivalent(&DateTime::from(*y)),
        (V::DateTime(x), V::DateTime(y)) => x.equivalent(y),
        (V::Time(x), V::Time(y)) => x.equivalent(y),
        (V::Quantity(x), V::Quantity(y)) => x.equivalent(y),
        _ => false,
    }
}

/// String equivalence: case-insensitive, runs of whitespace count as one space, leading and
/// trailing whitespace ignored.
fn strings_equivalent(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.split_whitespace()
            .flat_map(|w| w.chars().flat_map(char::to_lowercase).chain(Some(' ')))
            .collect::<String>()
    };
    a == b || norm(a) == norm(b)
}

/// Structural equality (or equivalence) of two complex values: same type, same properties,
/// equal values in the same order.
fn elements_equal(a: &Element, b: &Element, equiv: bool) -> bool {
    if ptr::eq(a, b) {
        return true;
    }
    if a.info.name != b.info.name || a.props.len() != b.props.len() {
        return false;
    }
    a.props.iter().zip(&b.props).all(|(p, q)| {
        p.element == q.element
            && p.type_index == q.type_index
            && p.values.len() == q.values.len()
            && p.values
                .iter()
                .zip(&q.values)
                .all(|(x, y)| values_equal(x, y, equiv))
    })
}

fn values_equal(a: &Value, b: &Value, equiv: bool) -> bool {
    match (a, b) {
        (Value::Element(x), Value::Element(y)) => elements_equal(x, y, equiv),
        (Value::Primitive(x), Value::Primitive(y)) => primitives_equal(x, y, equiv),
        _ => false,
    }
}

fn primitives_equal(a: &Primitive, b: &Primitive, equiv: bool) -> bool {
    let (x, y) = (Item::Primitive(a), Item::Primitive(b));
    let same_value = match (x.to_system(), y.to_system()) {
        (Some(p), Some(q)) if equiv => system_equivalent(&p, &q),
        (Some(p), Some(q)) => system_equals(&p, &q) == Some(true),
        (None, None) => a.value.is_none() && b.value.is_none(),
        _ => false,
    };
    let (ea, eb) = (a.extensions(), b.extensions());
    same_value
        && ea.len() == eb.len()
        && ea.iter().zip(eb).all(|(p, q)| elements_equal(p, q, equiv))
}

/// Ordering of two items (`<`, `>`, `<=`, `>=`): `Ok(None)` when unknown (different date
/// precisions, incomparable units, a primitive without a value).
///
/// # Errors
///
/// The items are of types that do not compare (a number with a string, ...).
pub(crate) fn compare(a: &Item<'_>, b: &Item<'_>) -> Result<Option<Ordering>, String> {
    use SystemValue as V;
    let (Some(x), Some(y)) = (a.to_system(), b.to_system()) else {
        if is_valueless(a) || is_valueless(b) {
            return Ok(None);
        }
        return Err(format!(
            "cannot compare {} with {}",
            a.output_type(),
            b.output_type()
        ));
    };
    Ok(match (&x, &y) {
        (V::Integer(p), V::Integer(q)) => Some(p.cmp(q)),
        (V::Integer(_) | V::Decimal(_), V::Integer(_) | V::Decimal(_)) => {
            as_decimal(&x).zip(as_decimal(&y)).map(|(p, q)| p.cmp(&q))
        }
        (V::String(p), V::String(q)) => Some(p.cmp(q)),
        (V::Date(p), V::Date(q)) => p.compare(q),
        (V::Date(p), V::DateTime(q)) => DateTime::from(*p).compare(q),
        (V::DateTime(p), V::Date(q)) => p.compare(&DateTime::from(*q)),
        (V::DateTime(p), V::DateTime(q)) => p.compare(q),
        (V::Time(p), V::Time(q)) => p.compare(q),
        (V::Quantity(p), V::Quantity(q)) => p.compare(q),
        _ => {
            return Err(format!(
                "cannot compare {} with {}",
                x.system_type().output_name(),
                y.system_type().output_name()
            ))
        }
    })
}

/// An arithmetic operator on two System values: `Ok(None)` for an empty result (division by
/// zero, overflow, units that do not combine).
///
/// # Errors
///
/// The operator is not defined for the operand types, or date/time arithmetic with a unit
/// that is not a time unit.
pub(crate) fn arithmetic<'a>(
    op: BinaryOp,
    a: &SystemValue<'_>,
    b: &SystemValue<'_>,
) -> Result<Option<Item<'a>>, String> {
    use SystemValue as V;
    let quantity = |q: Option<Quantity>| q.map(|q| Item::Quantity(Shared::Owned(Rc::new(q))));
    let result = match (op, a, b) {
        (BinaryOp::Add, V::Integer(x), V::Integer(y)) => x.checked_add(*y).map(Item::Integer),
        (BinaryOp::Sub, V::Integer(x), V::Integer(y)) => x.checked_sub(*y).map(Item::Integer),
        (BinaryOp::Mul, V::Integer(x), V::Integer(y)) => x.checked_mul(*y).map(Item::Integer),
        (BinaryOp::IntDiv, V::Integer(x), V::Integer(y)) => x.checked_div(*y).map(Item::Integer),
        (BinaryOp::Mod, V::Integer(x), V::Integer(y)) => x.checked_rem(*y).map(Item::Integer),
        (_, V::Integer(_) | V::Decimal(_), V::Integer(_) | V::Decimal(_)) => {
            let (Some(x), Some(y)) = (as_decimal(a), as_decimal(b)) else {
                return Ok(None);
            };
            decimal_arithmetic(op, x, y)
        }
        (BinaryOp::Add, V::String(x), V::String(y)) => {
            Some(Item::String(Text::owned(format!("{x}{y}"))))
        }
        (BinaryOp::Add, V::Quantity(x), V::Quantity(y)) => quantity(x.add(y)),
        (BinaryOp::Sub, V::Quantity(x), V::Quantity(y)) => quantity(x.subtract(y)),
        (BinaryOp::Mul, V::Quantity(x), V::Quantity(y)) => quantity(x.multiply(y)),
        (BinaryOp::Div, V::Quantity(x), V::Quantity(y)) => quantity(x.divide(y)),
        (BinaryOp::Mul, V::Quantity(x), V::Integer(_) | V::Decimal(_)) => {
            quantity(as_decimal(b).and_then(|f| x.scale(f)))
        }
        (BinaryOp::Mul, V::Integer(_) | V::Decimal(_), V::Quantity(y)) => {
            quantity(as_decimal(a).and_then(|f| y.scale(f)))
        }
        (BinaryOp::Div, V::Quantity(x), V::Integer(_) | V::Decimal(_)) => {
            quantity(as_decimal(b).and_then(|d| x.divide_by(d)))
        }
        (
            BinaryOp::Add | BinaryOp::Sub,
            V::Date(_) | V::DateTime(_) | V::Time(_),
            V::Quantity(q),
        ) => return temporal_arithmetic(op == BinaryOp::Sub, a, q).map(Some),
        _ => {
            return Err(format!(
                "operator '{}' is not defined for {} and {}",
                op.symbol(),
                a.system_type().output_name(),
                b.system_type().output_name()
            ))
        }
    };
    Ok(result)
}

/// Arithmetic on two decimals (Integer operands already promoted).
fn decimal_arithmetic<'a>(op: BinaryOp, x: Decimal, y: Decimal) -> Option<Item<'a>> {
    match op {
        BinaryOp::Add => x.checked_add(y).map(Item::Decimal),
        BinaryOp::Sub => x.checked_sub(y).map(Item::Decimal),
        BinaryOp::Mul => x.checked_mul(y).map(Item::Decimal),
        BinaryOp::Div => x.checked_div(y).map(Item::Decimal),
        BinaryOp::IntDiv => {
            let q = x.checked_div(y)?.trunc();
            Some(q.to_i64().map_or(Item::Decimal(q), Item::Integer))
        }
        BinaryOp::Mod => x.checked_rem(y).map(Item::Decimal),
        _ => None,
    }
}

/// A date, date-time or time plus or minus a time-valued quantity.
fn temporal_arithmetic<'a>(
    subtract: bool,
    value: &SystemValue<'_>,
    q: &Quantity,
) -> Result<Item<'a>, String> {
    let e = |e: super::temporal::TemporalError| e.to_string();
    Ok(match (value, subtract) {
        (SystemValue::Date(d), false) => Item::Date(d.add(q).map_err(e)?),
        (SystemValue::Date(d), true) => Item::Date(d.subtract(q).map_err(e)?),
        (SystemValue::DateTime(d), false) => Item::date_time(d.add(q).map_err(e)?),
        (SystemValue::DateTime(d), true) => Item::date_time(d.subtract(q).map_err(e)?),
        (SystemValue::Time(t), false) => Item::Time(t.add(q).map_err(e)?),
        (SystemValue::Time(t), true) => Item::Time(t.subtract(q).map_err(e)?),
        _ => return Err("not a date/time value".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhirpath::temporal::{Date, Time};
    use std::borrow::Cow;

    fn date(s: &str) -> SystemValue<'static> {
        SystemValue::Date(Date::parse_literal(s).unwrap())
    }

    fn date_time(s: &str) -> SystemValue<'static> {
        SystemValue::DateTime(DateTime::parse_literal(s).unwrap())
    }

    #[test]
    fn dates_of_different_precision_are_unknown() {
        assert_eq!(
            system_equals(&date("2012-04-15"), &date_time("2012-04-15T10:00:00")),
            None
        );
        assert_eq!(
            system_equals(&date("2012-04-15"), &date("2012-04-16")),
            Some(false)
        );
        assert!(!system_equivalent(
            &date("2012-04-15"),
            &date_time("2012-04-15T10:00:00")
        ));
        let t = |s: &str| SystemValue::Time(Time::parse_literal(s).unwrap());
        assert_eq!(system_equals(&t("T10:30"), &t("T10:30:00")), None);
        assert_eq!(
            system_equals(&t("T10:30:00"), &t("T10:30:00.0")),
            Some(true)
        );
        let lt = compare(
            &Item::Date(Date::parse_literal("2018-03").unwrap()),
            &Item::Date(Date::parse_literal("2018-03-01").unwrap()),
        );
        assert_eq!(lt, Ok(None));
    }

    #[test]
    fn numbers_mix_and_strings_are_equivalent_ignoring_case() {
        let one = SystemValue::Integer(1);
        let one_dec = SystemValue::Decimal(Decimal::new(10, 1));
        assert_eq!(system_equals(&one, &one_dec), Some(true));
        assert!(system_equivalent(
            &SystemValue::String("A  b"),
            &SystemValue::String(" a b")
        ));
        assert_eq!(
            system_equals(&SystemValue::String("a"), &SystemValue::String("A")),
            Some(false)
        );
        assert_eq!(system_equals(&one, &SystemValue::String("1")), Some(false));
    }

    #[test]
    fn arithmetic_results() {
        let i = |n| SystemValue::Integer(n);
        let r = arithmetic(BinaryOp::Div, &i(1), &i(2)).unwrap();
        assert!(matches!(r, Some(Item::Decimal(d)) if d == Decimal::new(5, 1)));
        assert!(arithmetic(BinaryOp::Div, &i(1), &i(0)).unwrap().is_none());
        assert!(arithmetic(BinaryOp::Mod, &i(5), &i(0)).unwrap().is_none());
        assert!(arithmetic(BinaryOp::Add, &i(i64::MAX), &i(1))
            .unwrap()
            .is_none());
        assert!(arithmetic(
            BinaryOp::Sub,
            &SystemValue::String("a"),
            &SystemValue::String("b")
        )
        .is_err());
        let q = SystemValue::Quantity(Cow::Owned(Quantity::new(Decimal::ONE, "mo")));
        assert!(arithmetic(BinaryOp::Add, &date("1973-12-25"), &q).is_err());
    }
}
