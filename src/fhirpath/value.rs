//! The values FHIRPath expressions work on: [`Item`]s gathered in [`Collection`]s.
//!
//! An item is either a FHIR node, a reference into the element tree that keeps its FHIR type
//! (`Patient.birthDate` is a FHIR `date`, `Observation.value` the concrete choice type), or a
//! System value (`Boolean`, `Integer`, `Decimal`, `String`, `Date`, `DateTime`, `Time`,
//! `Quantity`) made by a literal, an operator or a function. Nodes are never copied out of the
//! tree, and strings borrow from the tree or the compiled expression where they can, so
//! navigation allocates nothing per step.
//!
//! FHIR primitives convert to System values implicitly where operators and functions need
//! them ([`Item::to_system`]): `date` to `Date`, `dateTime` and `instant` to `DateTime`,
//! `time` to `Time`, `decimal` to `Decimal`, the integer kinds to `Integer`, `boolean` to
//! `Boolean`, every other primitive to `String`, and `Quantity` (and its profiles such as
//! `Age`) to a System `Quantity`.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::rc::Rc;
use std::str::FromStr;

use rust_decimal::Decimal;
use smallvec::SmallVec;

use super::quantity::Quantity;
use super::temporal::{Date, DateTime, Time};
use crate::model::schema::{PrimitiveKind, TypeInfo, TypeKind};
use crate::model::{Element, Primitive, Scalar, Value};

/// A value either borrowed (from the element tree or the compiled expression) or made during
/// evaluation and shared by reference count, so items clone cheaply.
#[derive(Debug)]
pub enum Shared<'a, T: ?Sized> {
    /// Borrowed for the lifetime of the evaluation result.
    Borrowed(&'a T),
    /// Made by the evaluation.
    Owned(Rc<T>),
}

impl<T: ?Sized> Clone for Shared<'_, T> {
    fn clone(&self) -> Self {
        match self {
            Shared::Borrowed(r) => Shared::Borrowed(r),
            Shared::Owned(rc) => Shared::Owned(Rc::clone(rc)),
        }
    }
}

impl<T: ?Sized> Deref for Shared<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Shared::Borrowed(r) => r,
            Shared::Owned(rc) => rc,
        }
    }
}

/// String contents of a System `String`.
pub type Text<'a> = Shared<'a, str>;

impl<'a> Text<'a> {
    /// A string made during evaluation.
    pub fn owned(s: impl Into<Rc<str>>) -> Self {
        Shared::Owned(s.into())
    }
}

/// The System (FHIRPath) primitive types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SystemType {
    /// `System.Boolean`
    Boolean,
    /// `System.Integer`
    Integer,
    /// `System.Decimal`
    Decimal,
    /// `System.String`
    String,
    /// `System.Date`
    Date,
    /// `System.DateTime`
    DateTime,
    /// `System.Time`
    Time,
    /// `System.Quantity`
    Quantity,
}

impl SystemType {
    /// The type for a name in the `System` namespace (`Integer`), if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "Boolean" => Self::Boolean,
            "Integer" => Self::Integer,
            "Decimal" => Self::Decimal,
            "String" => Self::String,
            "Date" => Self::Date,
            "DateTime" => Self::DateTime,
            "Time" => Self::Time,
            "Quantity" => Self::Quantity,
            _ => return None,
        })
    }

    /// The name in the `System` namespace (`Integer`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Boolean => "Boolean",
            Self::Integer => "Integer",
            Self::Decimal => "Decimal",
            Self::String => "String",
            Self::Date => "Date",
            Self::DateTime => "DateTime",
            Self::Time => "Time",
            Self::Quantity => "Quantity",
        }
    }

    /// The name results are reported with (`integer`, `dateTime`, `Quantity`), as the HL7
    /// conformance suite writes output types.
    pub fn output_name(self) -> &'static str {
        match self {
            Self::Boolean => "boolean",
            Self::Integer => "integer",
            Self::Decimal => "decimal",
            Self::String => "string",
            Self::Date => "date",
            Self::DateTime => "dateTime",
            Self::Time => "time",
            Self::Quantity => "Quantity",
        }
    }
}

/// A type as `type()` reports it: namespace and name (`System.Integer`, `FHIR.Patient`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeName {
    /// `System` or `FHIR`.
    pub namespace: &'static str,
    /// The type's name in that namespace.
    pub name: &'static str,
}

/// One item of a collection.
#[derive(Debug, Clone)]
pub enum Item<'a> {
    /// A FHIR resource, complex value or backbone element in the tree.
    Element(&'a Element),
    /// A FHIR primitive in the tree.
    Primitive(&'a Primitive),
    /// `System.Boolean`
    Boolean(bool),
    /// `System.Integer` (64-bit; FHIRPath 2.0 integers are 32-bit, so every one fits).
    Integer(i64),
    /// `System.Decimal`
    Decimal(Decimal),
    /// `System.String`
    String(Text<'a>),
    /// `System.Date`
    Date(Date),
    /// `System.DateTime` (shared: it is larger than the other values, and held inline it
    /// would make every item larger).
    DateTime(Shared<'a, DateTime>),
    /// `System.Time`
    Time(Time),
    /// `System.Quantity`
    Quantity(Shared<'a, Quantity>),
    /// A type, as returned by `type()`; its members are `namespace` and `name`.
    Type(Rc<TypeName>),
}

/// An item converted to its System value, borrowing from the item where it can.
#[derive(Debug, Clone)]
pub enum SystemValue<'b> {
    /// `System.Boolean`
    Boolean(bool),
    /// `System.Integer`
    Integer(i64),
    /// `System.Decimal`
    Decimal(Decimal),
    /// `System.String`
    String(&'b str),
    /// `System.Date`
    Date(Date),
    /// `System.DateTime`
    DateTime(DateTime),
    /// `System.Time`
    Time(Time),
    /// `System.Quantity`
    Quantity(Cow<'b, Quantity>),
}

impl SystemValue<'_> {
    /// The System type of the value.
    pub fn system_type(&self) -> SystemType {
        match self {
            Self::Boolean(_) => SystemType::Boolean,
            Self::Integer(_) => SystemType::Integer,
            Self::Decimal(_) => SystemType::Decimal,
            Self::String(_) => SystemType::String,
            Self::Date(_) => SystemType::Date,
            Self::DateTime(_) => SystemType::DateTime,
            Self::Time(_) => SystemType::Time,
            Self::Quantity(_) => SystemType::Quantity,
        }
    }

    /// The value as an owned item (strings are copied).
    pub fn into_item<'a>(self) -> Item<'a> {
        match self {
            Self::Boolean(b) => Item::Boolean(b),
            Self::Integer(i) => Item::Integer(i),
            Self::Decimal(d) => Item::Decimal(d),
            Self::String(s) => Item::String(Text::owned(s)),
            Self::Date(d) => Item::Date(d),
            Self::DateTime(d) => Item::date_time(d),
            Self::Time(t) => Item::Time(t),
            Self::Quantity(q) => Item::Quantity(Shared::Owned(Rc::new(q.into_owned()))),
        }
    }
}

/// The UCUM code system, whose codes a FHIR `Quantity` uses as its System unit.
pub const UCUM: &str = "http://unitsofmeasure.org";

impl<'a> Item<'a> {
    /// The item for a value of the element tree.
    #[inline]
    pub fn from_value(value: &'a Value) -> Self {
        match value {
            Value::Primitive(p) => Item::Primitive(p),
            Value::Element(e) => Item::Element(e),
        }
    }

    /// A System `DateTime` made during evaluation.
    pub fn date_time(d: DateTime) -> Self {
        Item::DateTime(Shared::Owned(Rc::new(d)))
    }

    /// A System string borrowed from the tree or the expression.
    pub fn str(s: &'a str) -> Self {
        Item::String(Shared::Borrowed(s))
    }

    /// The FHIR type, for items in the element tree.
    pub fn fhir_type(&self) -> Option<&'static TypeInfo> {
        match self {
            Item::Element(e) => Some(e.info),
            Item::Primitive(p) => Some(p.info),
            _ => None,
        }
    }

    /// The System type, for System values.
    pub fn system_type(&self) -> Option<SystemType> {
        Some(match self {
            Item::Boolean(_) => SystemType::Boolean,
            Item::Integer(_) => SystemType::Integer,
            Item::Decimal(_) => SystemType::Decimal,
            Item::String(_) => SystemType::String,
            Item::Date(_) => SystemType::Date,
            Item::DateTime(_) => SystemType::DateTime,
            Item::Time(_) => SystemType::Time,
            Item::Quantity(_) => SystemType::Quantity,
            _ => return None,
        })
    }

    /// The type as `type()` reports it.
    pub fn type_name(&self) -> TypeName {
        match self {
            Item::Element(e) => TypeName {
                namespace: "FHIR",
                name: e.info.fhir_type_name(),
            },
            Item::Primitive(p) => TypeName {
                namespace: "FHIR",
                name: p.info.fhir_type_name(),
            },
            Item::Type(_) => TypeName {
                namespace: "System",
                name: "SimpleTypeInfo",
            },
            other => TypeName {
                namespace: "System",
                name: other.system_type().map_or("Any", SystemType::name),
            },
        }
    }

    /// The type name results are reported with: the FHIR type of a node (`date`, `HumanName`,
    /// `BackboneElement`), or the lower-case System name (`integer`, `dateTime`, `Quantity`).
    pub fn output_type(&self) -> &'static str {
        match self {
            Item::Element(e) => e.info.fhir_type_name(),
            Item::Primitive(p) => p.info.fhir_type_name(),
            Item::Type(_) => "SimpleTypeInfo",
            other => other.system_type().map_or("Any", SystemType::output_name),
        }
    }

    /// Whether the item is a FHIR node.
    pub fn is_node(&self) -> bool {
        matches!(self, Item::Element(_) | Item::Primitive(_))
    }

    /// The System value of the item: itself for System values, the implicit conversion for FHIR
    /// primitives and quantities. `None` for other complex elements, for primitives without a
    /// value and for values that do not parse (a malformed `date` is still a string).
    pub fn to_system(&self) -> Option<SystemValue<'_>> {
        Some(match self {
            Item::Boolean(b) => SystemValue::Boolean(*b),
            Item::Integer(i) => SystemValue::Integer(*i),
            Item::Decimal(d) => SystemValue::Decimal(*d),
            Item::String(s) => SystemValue::String(s),
            Item::Date(d) => SystemValue::Date(*d),
            Item::DateTime(d) => SystemValue::DateTime(**d),
            Item::Time(t) => SystemValue::Time(*t),
            Item::Quantity(q) => SystemValue::Quantity(Cow::Borrowed(&**q)),
            Item::Primitive(p) => return primitive_value(p),
            Item::Element(e) => {
                return element_quantity(e).map(|q| SystemValue::Quantity(Cow::Owned(q)))
            }
            Item::Type(_) => return None,
        })
    }

    /// The string of an item whose System value ([`Item::to_system`]) is a `System.String`
    /// known without parsing: a System string, or a FHIR primitive holding a JSON string
    /// whose type is not one of the date and time types. Two such items are equal (`=`)
    /// exactly when their strings are; `None` for every other item.
    pub fn plain_string(&self) -> Option<&str> {
        match self {
            Item::String(s) => Some(s),
            Item::Primitive(p) => match &p.value {
                Some(Scalar::String(s))
                    if p.info.primitive().is_some() && !is_temporal_name(&p.info.name) =>
                {
                    Some(s)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// The string of a System string or of a string-valued FHIR primitive (`string`, `code`,
    /// `uri`, `date`, ...): what the string functions accept.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Item::String(s) => Some(s),
            Item::Primitive(p) if p.info.primitive() == Some(PrimitiveKind::String) => {
                match &p.value {
                    Some(Scalar::String(s)) => Some(s),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The boolean of a System or FHIR boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Item::Boolean(b) => Some(*b),
            Item::Primitive(p) => match p.value {
                Some(Scalar::Bool(b)) => Some(b),
                _ => None,
            },
            _ => None,
        }
    }

    /// The integer of a System or FHIR integer.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Item::Integer(i) => Some(*i),
            Item::Primitive(p) if p.info.primitive() == Some(PrimitiveKind::Integer) => {
                match &p.value {
                    Some(Scalar::Number(n)) => n.parse().ok(),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The string form `toString()` gives, if the item has one.
    pub fn to_string_value(&self) -> Option<String> {
        self.to_system().map(|v| v.to_string())
    }
}

impl fmt::Display for SystemValue<'_> {
    /// The `toString()` form: `true`, `42`, `1.50` (as written), `2015-02-04`, `14:30:00`,
    /// `4 'mg'`, `1 week`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Boolean(b) => write!(f, "{b}"),
            Self::Integer(i) => write!(f, "{i}"),
            Self::Decimal(d) => write!(f, "{d}"),
            Self::String(s) => f.write_str(s),
            Self::Date(d) => write!(f, "{d}"),
            Self::DateTime(d) => write!(f, "{d}"),
            Self::Time(t) => write!(f, "{t}"),
            Self::Quantity(q) => write!(f, "{q}"),
        }
    }
}

/// The System value of a FHIR primitive.
fn primitive_value(p: &Primitive) -> Option<SystemValue<'_>> {
    let value = p.value.as_ref()?;
    Some(match (value, p.info.primitive()?) {
        (Scalar::Bool(b), _) => SystemValue::Boolean(*b),
        (Scalar::Number(n), PrimitiveKind::Integer) => match n.parse() {
            Ok(i) => SystemValue::Integer(i),
            Err(_) => SystemValue::Decimal(parse_decimal(n)?),
        },
        (Scalar::Number(n), _) => SystemValue::Decimal(parse_decimal(n)?),
        (Scalar::String(s), _) => string_primitive(p.info, s),
    })
}

/// Whether a primitive type's strings parse as dates or times (see [`string_primitive`]).
fn is_temporal_name(name: &str) -> bool {
    matches!(name, "date" | "dateTime" | "instant" | "time")
}

/// A string-valued primitive: the date/time types parse, everything else stays a string.
fn string_primitive<'b>(info: &TypeInfo, s: &'b str) -> SystemValue<'b> {
    let parsed = match &*info.name {
        "date" => Date::parse_fhir(s).ok().map(SystemValue::Date),
        "dateTime" | "instant" => DateTime::parse_fhir(s).ok().map(SystemValue::DateTime),
        "time" => Time::parse_fhir(s).ok().map(SystemValue::Time),
        _ => None,
    };
    parsed.unwrap_or(SystemValue::String(s))
}

/// Parses a JSON number exactly (`1.50` keeps its scale); exponents are accepted.
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    if let Some(d) = parse_plain_decimal(text) {
        return Some(d);
    }
    Decimal::from_str_exact(text)
        .or_else(|_| Decimal::from_scientific(text))
        .or_else(|_| Decimal::from_str(text))
        .ok()
}

/// The common case of [`parse_decimal`], on the hot path of every comparison with a FHIR
/// decimal: `-?digits(.digits)?` with at most 19 characters, so the digits fit a `u64`.
fn parse_plain_decimal(text: &str) -> Option<Decimal> {
    let bytes = text.as_bytes();
    let (negative, digits) = match bytes.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let (mut mantissa, mut scale, mut dot) = (0u64, 0u32, false);
    for &b in digits {
        match b {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                scale += u32::from(dot);
            }
            b'.' if !dot => dot = true,
            _ => return None,
        }
    }
    if dot && scale == 0 || digits[0] == b'.' {
        return None;
    }
    let mut d = Decimal::from_i128_with_scale(i128::from(mantissa), scale);
    d.set_sign_negative(negative && mantissa != 0);
    Some(d)
}

/// Whether a FHIR type is `Quantity` or one of its profiles (`Age`, `Duration`, ...).
pub fn is_quantity_type(info: &TypeInfo) -> bool {
    info.kind == TypeKind::Complex
        && (&*info.name == "Quantity" || info.base.as_deref() == Some("Quantity"))
}

/// The System quantity of a FHIR `Quantity` element: its value with the UCUM code as unit
/// when the system is UCUM (or absent), else the human-readable unit; `None` without a value.
pub fn element_quantity(e: &Element) -> Option<Quantity> {
    if !is_quantity_type(e.info) {
        return None;
    }
    let value = e.values("value").first()?.as_primitive()?;
    let value = match value.value.as_ref()? {
        Scalar::Number(n) => parse_decimal(n)?,
        _ => return None,
    };
    let system = e.str("system");
    let code = e.str("code");
    let unit = match (system, code) {
        (Some(UCUM) | None, Some(code)) => code,
        _ => e.str("unit").or(code).unwrap_or("1"),
    };
    Some(Quantity::new(value, unit))
}

/// The items of a collection, in order; a single item is held inline.
#[derive(Debug, Clone, Default)]
pub struct Collection<'a>(SmallVec<[Item<'a>; 1]>);

impl<'a> Collection<'a> {
    /// The empty collection.
    #[inline]
    pub fn new() -> Self {
        Collection(SmallVec::new())
    }

    /// A collection of one item.
    #[inline]
    pub fn one(item: Item<'a>) -> Self {
        let mut v = SmallVec::new();
        v.push(item);
        Collection(v)
    }

    /// A collection with room for `n` items.
    pub fn with_capacity(n: usize) -> Self {
        Collection(SmallVec::with_capacity(n))
    }

    /// A Boolean result.
    #[inline]
    pub fn boolean(b: bool) -> Self {
        Self::one(Item::Boolean(b))
    }

    /// A Boolean result, or empty for `None`.
    #[inline]
    pub fn from_option(b: Option<bool>) -> Self {
        b.map_or_else(Self::new, Self::boolean)
    }

    /// Appends an item.
    #[inline]
    pub fn push(&mut self, item: Item<'a>) {
        self.0.push(item);
    }

    /// Appends clones of the items of a slice.
    #[inline]
    pub fn extend_from_slice(&mut self, items: &[Item<'a>]) {
        for item in items {
            self.0.push(item.clone());
        }
    }

    /// Appends all items of an iterator.
    pub fn extend(&mut self, items: impl IntoIterator<Item = Item<'a>>) {
        self.0.extend(items);
    }

    /// Shortens the collection to `n` items.
    pub fn truncate(&mut self, n: usize) {
        self.0.truncate(n);
    }

    /// Keeps the items for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&mut Item<'a>) -> bool) {
        self.0.retain(|i| keep(i));
    }

    /// The only item, when there is exactly one.
    pub fn into_single(mut self) -> Option<Item<'a>> {
        if self.0.len() == 1 {
            self.0.pop()
        } else {
            None
        }
    }

    /// The items as a vector.
    pub fn into_vec(self) -> Vec<Item<'a>> {
        self.0.into_vec()
    }
}

impl<'a> Deref for Collection<'a> {
    type Target = [Item<'a>];
    #[inline]
    fn deref(&self) -> &[Item<'a>] {
        &self.0
    }
}

impl<'a> IntoIterator for Collection<'a> {
    type Item = Item<'a>;
    type IntoIter = smallvec::IntoIter<[Item<'a>; 1]>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'c, 'a> IntoIterator for &'c Collection<'a> {
    type Item = &'c Item<'a>;
    type IntoIter = std::slice::Iter<'c, Item<'a>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'a> FromIterator<Item<'a>> for Collection<'a> {
    fn from_iter<I: IntoIterator<Item = Item<'a>>>(iter: I) -> Self {
        Collection(iter.into_iter().collect())
    }
}

impl<'a> From<Vec<Item<'a>>> for Collection<'a> {
    fn from(v: Vec<Item<'a>>) -> Self {
        Collection(SmallVec::from_vec(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_stay_small() {
        // Items are moved around on every step: keep them within three words.
        assert!(std::mem::size_of::<Item<'_>>() <= 24);
        assert!(std::mem::size_of::<Collection<'_>>() <= 32);
    }

    #[test]
    fn decimals_keep_their_scale() {
        for text in [
            "0",
            "-0.0",
            "1.50",
            "185",
            "-12.345",
            "123456789.12345678",
            "0.00000001",
        ] {
            let fast = parse_plain_decimal(text).map(|d| d.to_string());
            let exact = Decimal::from_str_exact(text).ok().map(|d| d.to_string());
            assert_eq!(fast, exact, "{text}");
        }
        for text in [
            "1.",
            ".5",
            "1e3",
            "--1",
            "",
            "-",
            "1.2.3",
            "12345678901234567890",
        ] {
            assert!(parse_plain_decimal(text).is_none(), "{text}");
        }
        assert_eq!(
            parse_decimal("1.50").map(|d| d.to_string()).as_deref(),
            Some("1.50")
        );
        assert_eq!(
            parse_decimal("1e2").map(|d| d.to_string()).as_deref(),
            Some("100")
        );
        assert!(parse_decimal("x").is_none());
    }
}
