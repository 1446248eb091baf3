//! The FHIRPath `System.Quantity` value type (FHIRPath N1 / 2.0.0 §4.1.8,
//! §6.1 equality and equivalence, §6.2 comparison, §6.6 math).
//!
//! A [`Quantity`] is a decimal value with a unit. The unit is either a UCUM
//! code (`mg`, `[in_i]`, `mm[Hg]`, `mg/dL`, `1`, `%` …) or one of the eight
//! FHIRPath calendar duration keywords (`year` … `millisecond`), which are
//! stored in their singular form.
//!
//! # Unit support
//!
//! Units are resolved against a built-in table of UCUM atoms (mass, length,
//! volume, time, amount of substance, dimensionless ratios, pressure, energy,
//! international units and a few others), with the UCUM metric prefixes on
//! the metric atoms, exponents (`m2`, `s-1`), `.` products, `/` quotients,
//! parentheses, `10*n` powers of ten and `{annotations}`. A unit that cannot be
//! resolved is *opaque*: it is comparable only with exactly the same code.
//!
//! The temperatures `Cel` and `[degF]` are supported for equality, equivalence
//! and ordering (converted through kelvin), but only on their own: they cannot
//! be part of a compound unit, and `+`/`-` on them requires identical units.
//!
//! # Calendar durations (N1 §6.1.1, §6.1.3)
//!
//! * `week`, `day`, `hour`, `minute`, `second` and `millisecond` are the same
//!   as UCUM `wk`, `d`, `h`, `min`, `s` and `ms`: `7 days = 1 'wk'` is `true`.
//! * `year` and `month` are variable calendar durations. They compare with each
//!   other (`1 year = 12 months`), but not with any definite duration:
//!   `1 year = 1 'a'` and `1 month < 40 days` are empty.
//! * For equivalence (`~`) they are matched with their UCUM counterparts
//!   (`1 year ~ 1 'a'`, `1 month ~ 1 'mo'`) and otherwise counted as 365 and
//!   30 days (`1 year ~ 365 days`).
//!
//! # Results of arithmetic
//!
//! `+` and `-` return the result in the more granular of the two units
//! (`3 'm' + 3 'cm'` is `303 'cm'`). `*` and `/` combine the units; a factor of
//! the right operand that has the same dimension as a factor of the left one
//! is first expressed in the more granular of the two, so
//! `2.0 'cm' * 2.0 'm'` is `400.00 'cm2'` (equal to `0.040 'm2'`).
//! Incompatible units, division by zero and decimal overflow give `None`,
//! which the evaluator reports as empty.

use std::cmp::Ordering;
use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};

/// Error from [`Quantity::parse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text is not of the form `number ['unit' | calendar keyword]`.
    #[error("not a quantity: {0:?}")]
    Syntax(String),
}

/// One of the FHIRPath calendar duration keywords.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CalendarUnit {
    /// `year` / `years`.
    Year,
    /// `month` / `months`.
    Month,
    /// `week` / `weeks`.
    Week,
    /// `day` / `days`.
    Day,
    /// `hour` / `hours`.
    Hour,
    /// `minute` / `minutes`.
    Minute,
    /// `second` / `seconds`.
    Second,
    /// `millisecond` / `milliseconds`.
    Millisecond,
}

/// All calendar units, longest first.
const CALENDAR_UNITS: [CalendarUnit; 8] = [
    CalendarUnit::Year,
    CalendarUnit::Month,
    CalendarUnit::Week,
    CalendarUnit::Day,
    CalendarUnit::Hour,
    CalendarUnit::Minute,
    CalendarUnit::Second,
    CalendarUnit::Millisecond,
];

impl CalendarUnit {
    /// Recognises a keyword in its singular or plural form (`day`, `days`).
    pub fn from_keyword(keyword: &str) -> Option<Self> {
        CALENDAR_UNITS
            .into_iter()
            .find(|unit| unit.keyword() == keyword || unit.plural() == keyword)
    }

    /// The singular keyword, e.g. `day`.
    pub fn keyword(self) -> &'static str {
        match self {
            Self::Year => "year",
            Self::Month => "month",
            Self::Week => "week",
            Self::Day => "day",
            Self::Hour => "hour",
            Self::Minute => "minute",
            Self::Second => "second",
            Self::Millisecond => "millisecond",
        }
    }

    /// The plural keyword, e.g. `days`.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Year => "years",
            Self::Month => "months",
            Self::Week => "weeks",
            Self::Day => "days",
            Self::Hour => "hours",
            Self::Minute => "minutes",
            Self::Second => "seconds",
            Self::Millisecond => "milliseconds",
        }
    }

    /// The UCUM counterpart: `a`, `mo`, `wk`, `d`, `h`, `min`, `s`, `ms`.
    ///
    /// Only `week` and finer are *equal* to their counterpart; `year` and
    /// `month` are merely equivalent to `a` and `mo`.
    pub fn ucum_code(self) -> &'static str {
        match self {
            Self::Year => "a",
            Self::Month => "mo",
            Self::Week => "wk",
            Self::Day => "d",
            Self::Hour => "h",
            Self::Minute => "min",
            Self::Second => "s",
            Self::Millisecond => "ms",
        }
    }

    /// Whether this is a variable-length calendar duration (year or month).
    pub fn is_variable(self) -> bool {
        matches!(self, Self::Year | Self::Month)
    }
}

/// A FHIRPath quantity: a decimal value and a UCUM unit or calendar keyword.
///
/// The derived `PartialEq` is structural (same value, same unit string); use
/// [`Quantity::equals`] and [`Quantity::equivalent`] for the FHIRPath
/// operators.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quantity {
    /// The numeric value, with the scale it was written with.
    pub value: Decimal,
    /// A UCUM code, or a singular calendar keyword such as `day`.
    pub unit: String,
}

impl Quantity {
    /// Creates a quantity; a plural calendar keyword (`days`) is stored in its
    /// singular form (`day`). Any other unit is kept as given.
    pub fn new(value: Decimal, unit: impl Into<String>) -> Self {
        let unit = unit.into();
        let unit = match CalendarUnit::from_keyword(&unit) {
            Some(calendar) => calendar.keyword().to_owned(),
            None => unit,
        };
        Self { value, unit }
    }

    /// Creates a calendar duration from a keyword (`4 days`); `None` when the
    /// keyword is not one of the eight calendar units.
    pub fn from_calendar_keyword(value: Decimal, keyword: &str) -> Option<Self> {
        CalendarUnit::from_keyword(keyword).map(|unit| Self {
            value,
            unit: unit.keyword().to_owned(),
        })
    }

    /// Parses the string form accepted by `toQuantity()`:
    /// `(+|-)?digits(.digits)?` optionally followed by a quoted UCUM unit
    /// (`'mg'`, with `\'` and `\\` escapes) or a calendar keyword (`days`).
    /// Without a unit the unit is `'1'`.
    ///
    /// # Errors
    ///
    /// [`QuantityError::Syntax`] when the text does not have that form, e.g.
    /// an unquoted UCUM code (`1 wk`).
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let syntax = || QuantityError::Syntax(text.to_owned());
        let trimmed = text.trim();
        let number_len = number_prefix_len(trimmed).ok_or_else(syntax)?;
        let (number, rest) = trimmed.split_at(number_len);
        let number = number.strip_prefix('+').unwrap_or(number);
        let value = Decimal::from_str_exact(number).map_err(|_| syntax())?;
        let rest = rest.trim_start();
        if rest.is_empty() {
            return Ok(Self::new(value, "1"));
        }
        if rest.len() == trimmed.len() - number_len {
            // A unit must be separated from the number by whitespace.
            return Err(syntax());
        }
        if let Some(quoted) = rest.strip_prefix('\'') {
            let unit = unquote(quoted).ok_or_else(syntax)?;
            return Ok(Self::new(value, unit));
        }
        Self::from_calendar_keyword(value, rest).ok_or_else(syntax)
    }

    /// The calendar unit, when the unit is a calendar keyword (not a UCUM
    /// code: `'d'` gives `None`).
    pub fn calendar_unit(&self) -> Option<CalendarUnit> {
        CalendarUnit::from_keyword(&self.unit)
    }

    /// Whether the unit is a calendar duration keyword.
    pub fn is_calendar_duration(&self) -> bool {
        self.calendar_unit().is_some()
    }

    /// Whether the two quantities can be compared with `=` and `<` (the
    /// 2.1 `comparable()` function): same dimension, or the same opaque unit.
    pub fn is_comparable(&self, other: &Quantity) -> bool {
        common_scale(self, other, Mode::Equality).is_some()
    }

    /// FHIRPath `=`: `Some(true/false)` after conversion to a common unit,
    /// `None` (empty) when the units are not comparable.
    pub fn equals(&self, other: &Quantity) -> Option<bool> {
        let (a, b) = common_scale(self, other, Mode::Equality)?;
        Some(a.base == b.base)
    }

    /// FHIRPath `~`: the values are converted to a common unit and rounded to
    /// the precision of the least precise operand (its last written decimal
    /// place, trailing zeroes ignored, measured in the common unit). Units
    /// that cannot be compared give `false`.
    pub fn equivalent(&self, other: &Quantity) -> bool {
        let Some((a, b)) = common_scale(self, other, Mode::Equivalence) else {
            return false;
        };
        let steps = (a.step(&self.value), b.step(&other.value));
        let (Some(step_a), Some(step_b)) = steps else {
            return a.base == b.base;
        };
        let step = step_a.max(step_b);
        match (round_to_step(a.base, step), round_to_step(b.base, step)) {
            (Some(x), Some(y)) => x == y,
            _ => a.base == b.base,
        }
    }

    /// FHIRPath ordering (`<`, `<=`, `>`, `>=`); `None` (empty) when the units
    /// are not comparable.
    pub fn compare(&self, other: &Quantity) -> Option<Ordering> {
        let (a, b) = common_scale(self, other, Mode::Equality)?;
        Some(a.base.cmp(&b.base))
    }

    /// Expresses the quantity in another unit of the same dimension (a UCUM
    /// code or a calendar keyword); `None` when the units are not comparable
    /// or the conversion overflows.
    pub fn convert_to(&self, unit: &str) -> Option<Quantity> {
        let target = Quantity::new(Decimal::ONE, unit);
        if target.unit == self.unit {
            return Some(self.clone());
        }
        let (from, to) = common_scale(self, &target, Mode::Equality)?;
        let value = to.in_unit(from.base)?;
        Some(Quantity::new(value, target.unit))
    }

    /// FHIRPath `+` on two quantities; the result is in the more granular
    /// unit. `None` when the units are not comparable (or on overflow).
    pub fn add(&self, other: &Quantity) -> Option<Quantity> {
        self.add_signed(other, false)
    }

    /// FHIRPath `-` on two quantities; the result is in the more granular
    /// unit. `None` when the units are not comparable (or on overflow).
    pub fn subtract(&self, other: &Quantity) -> Option<Quantity> {
        self.add_signed(other, true)
    }

    /// FHIRPath `*` on two quantities; the units are multiplied. `None` when a
    /// unit cannot take part in a product (opaque, temperature, calendar year
    /// or month, unless the other unit is `'1'`) or on overflow.
    pub fn multiply(&self, other: &Quantity) -> Option<Quantity> {
        self.product(other, false)
    }

    /// FHIRPath `/` on two quantities; the units are divided. `None` on
    /// division by zero, for units that cannot take part in a quotient (see
    /// [`Quantity::multiply`]) or on overflow.
    pub fn divide(&self, other: &Quantity) -> Option<Quantity> {
        if other.value.is_zero() {
            return None;
        }
        self.product(other, true)
    }

    /// Multiplies the value by a number, keeping the unit; `None` on overflow.
    pub fn scale(&self, factor: Decimal) -> Option<Quantity> {
        let value = self.value.checked_mul(factor)?;
        Some(Self {
            value,
            unit: self.unit.clone(),
        })
    }

    /// Divides the value by a number, keeping the unit; `None` on division by
    /// zero or overflow.
    pub fn divide_by(&self, divisor: Decimal) -> Option<Quantity> {
        if divisor.is_zero() {
            return None;
        }
        let value = self.value.checked_div(divisor)?;
        Some(Self {
            value,
            unit: self.unit.clone(),
        })
    }

    /// The value in UCUM base units (m, g, s, mol, K, C, cd, [iU]) and the code of that
    /// unit (`m`, `m-3.g`, `1` when dimensionless), so that quantities of one dimension
    /// compare as plain numbers: `7 'mm'` and `0.7 'cm'` both give `0.007 'm'`. Temperatures
    /// go to kelvin. `None` for calendar years and months, units the table does not
    /// resolve, and on overflow.
    pub fn to_base_units(&self) -> Option<(Decimal, String)> {
        let (ratio, offset) = match unit_kind(&self.unit) {
            UnitKind::Linear(ratio) => (ratio, None),
            UnitKind::Affine(ratio, offset) => (ratio, Some(offset)),
            UnitKind::Variable(_) | UnitKind::Opaque => return None,
        };
        let shifted = match offset {
            Some(offset) => self.value.checked_add(offset)?,
            None => self.value,
        };
        let base = shifted
            .checked_mul(ratio.factor)?
            .checked_div(ratio.divisor)?;
        Some((base, base_unit_code(&ratio.dim)))
    }

    fn add_signed(&self, other: &Quantity, negate: bool) -> Option<Quantity> {
        let other_value = if negate { -other.value } else { other.value };
        if self.unit == other.unit {
            let value = self.value.checked_add(other_value)?;
            return Some(Self::new(value, self.unit.clone()));
        }
        let (a, b) = common_scale(self, other, Mode::Equality)?;
        if a.offset.is_some() || b.offset.is_some() {
            // Temperatures on an interval scale: only identical units add.
            return None;
        }
        let (target, target_scale) = if b.factor < a.factor {
            (other, b)
        } else {
            (self, a)
        };
        let other_base = if negate { -b.base } else { b.base };
        let sum = a.base.checked_add(other_base)?;
        let value = target_scale.in_unit(sum)?;
        Some(Self::new(value, target.unit.clone()))
    }

    fn product(&self, other: &Quantity, divide: bool) -> Option<Quantity> {
        let combine = |x: Decimal, y: Decimal| {
            if divide {
                x.checked_div(y)
            } else {
                x.checked_mul(y)
            }
        };
        if other.unit == "1" {
            let value = combine(self.value, other.value)?;
            return Some(Self::new(value, self.unit.clone()));
        }
        if self.unit == "1" && !divide {
            let value = self.value.checked_mul(other.value)?;
            return Some(Self::new(value, other.unit.clone()));
        }
        let mut left = parse_unit(ucum_form(&self.unit)?)?;
        let mut right = parse_unit(ucum_form(&other.unit)?)?;
        let (left_factor, right_factor) = unify_terms(&mut left, &mut right)?;
        let left_value = self.value.checked_mul(left_factor)?;
        let right_value = other.value.checked_mul(right_factor)?;
        let value = combine(left_value, right_value)?;
        let sign = if divide { -1 } else { 1 };
        let mut terms = left;
        for term in right {
            push_term(&mut terms, term.code, term.exp * sign, term.atom);
        }
        let (numeric, terms) = fold_numeric_terms(terms)?;
        let value = value.checked_mul(numeric)?;
        Some(Self::new(value, format_terms(&terms)))
    }
}

impl fmt::Display for Quantity {
    /// The FHIRPath `toString()` form: `4.5 'mg'`, `1 week`, `4 days`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.calendar_unit() {
            Some(unit) if self.value.abs() == Decimal::ONE => {
                write!(f, "{} {}", self.value, unit.keyword())
            }
            Some(unit) => write!(f, "{} {}", self.value, unit.plural()),
            None => {
                let escaped = self.unit.replace('\\', "\\\\").replace('\'', "\\'");
                write!(f, "{} '{}'", self.value, escaped)
            }
        }
    }
}

/// The number of decimal places a decimal was written with (its scale):
/// `1.58700` has 5, `4` has 0.
pub fn decimal_precision(value: &Decimal) -> u32 {
    value.scale()
}

/// FHIRPath decimal equivalence: both values are rounded (half away from
/// zero) to the number of decimal places of the least precise operand,
/// trailing zeroes ignored, then compared. `1.2 / 1.8 ~ 0.67` is `true`.
pub fn equivalent_decimals(a: &Decimal, b: &Decimal) -> bool {
    let places = a.normalize().scale().min(b.normalize().scale());
    let round =
        |d: &Decimal| d.round_dp_with_strategy(places, RoundingStrategy::MidpointAwayFromZero);
    round(a) == round(b)
}

// ---------------------------------------------------------------------------
// Parsing helpers for `Quantity::parse`.

/// Length of a leading `(+|-)?digits(.digits)?`, if there is one.
fn number_prefix_len(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut pos = usize::from(matches!(bytes.first(), Some(b'+' | b'-')));
    let int_digits = count_digits(&bytes[pos..]);
    if int_digits == 0 {
        return None;
    }
    pos += int_digits;
    if bytes.get(pos) == Some(&b'.') {
        let frac_digits = count_digits(&bytes[pos + 1..]);
        if frac_digits == 0 {
            return None;
        }
        pos += 1 + frac_digits;
    }
    Some(pos)
}

fn count_digits(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| b.is_ascii_digit()).count()
}

/// Reads a quoted unit after its opening quote; the closing quote must end the
/// text. Handles `\'` and `\\`.
fn unquote(text: &str) -> Option<String> {
    let mut unit = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => unit.push(chars.next()?),
            '\'' => return chars.as_str().trim().is_empty().then_some(unit),
            _ => unit.push(c),
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Unit resolution.

/// Number of base dimensions: length, mass, time, amount of substance,
/// temperature, electric charge, luminous intensity, international unit.
const DIMS: usize = 8;
type Dim = [i8; DIMS];

const NONE: Dim = [0; DIMS];
const LENGTH: Dim = [1, 0, 0, 0, 0, 0, 0, 0];
const MASS: Dim = [0, 1, 0, 0, 0, 0, 0, 0];
const TIME: Dim = [0, 0, 1, 0, 0, 0, 0, 0];
const AMOUNT: Dim = [0, 0, 0, 1, 0, 0, 0, 0];
const TEMPERATURE: Dim = [0, 0, 0, 0, 1, 0, 0, 0];
const CHARGE: Dim = [0, 0, 0, 0, 0, 1, 0, 0];
const LUMINOUS: Dim = [0, 0, 0, 0, 0, 0, 1, 0];
const INTERNATIONAL_UNIT: Dim = [0, 0, 0, 0, 0, 0, 0, 1];
const VOLUME: Dim = [3, 0, 0, 0, 0, 0, 0, 0];
const FREQUENCY: Dim = [0, 0, -1, 0, 0, 0, 0, 0];
const PRESSURE: Dim = [-1, 1, -2, 0, 0, 0, 0, 0];
const FORCE: Dim = [1, 1, -2, 0, 0, 0, 0, 0];
const ENERGY: Dim = [2, 1, -2, 0, 0, 0, 0, 0];
const POWER: Dim = [2, 1, -3, 0, 0, 0, 0, 0];
const CURRENT: Dim = [0, 0, -1, 0, 0, 1, 0, 0];
const VOLTAGE: Dim = [2, 1, -2, 0, 0, -1, 0, 0];
const CATALYTIC: Dim = [0, 0, -1, 1, 0, 0, 0, 0];
const ABSORBED_DOSE: Dim = [2, 0, -2, 0, 0, 0, 0, 0];

/// The UCUM code of the product of base units with exponents `dim` (`m-3.g`; `1` for none).
fn base_unit_code(dim: &Dim) -> String {
    const BASE: [&str; DIMS] = ["m", "g", "s", "mol", "K", "C", "cd", "[iU]"];
    let terms: Vec<String> = BASE
        .iter()
        .zip(dim)
        .filter(|(_, exp)| **exp != 0)
        .map(|(code, exp)| {
            if *exp == 1 {
                (*code).to_owned()
            } else {
                format!("{code}{exp}")
            }
        })
        .collect();
    if terms.is_empty() {
        "1".to_owned()
    } else {
        terms.join(".")
    }
}

/// A UCUM unit atom (possibly with a prefix applied): its factor to the base
/// units (m, g, s, mol, K, C, cd, [iU]) as `factor / divisor`, its dimension,
/// and whether it takes metric prefixes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Atom {
    factor: Decimal,
    divisor: Decimal,
    dim: Dim,
    metric: bool,
}

const fn atom_of(factor: Decimal, dim: Dim, metric: bool) -> Atom {
    Atom {
        factor,
        divisor: Decimal::ONE,
        dim,
        metric,
    }
}

impl Atom {
    /// Whether this atom is smaller than (or as small as) `other`.
    fn is_finer_or_equal(&self, other: &Atom) -> Option<bool> {
        let mine = self.factor.checked_mul(other.divisor)?;
        let theirs = other.factor.checked_mul(self.divisor)?;
        Some(mine <= theirs)
    }

    /// How many of `finer` make one of `self`.
    fn ratio_to(&self, finer: &Atom) -> Option<Decimal> {
        let numerator = self.factor.checked_mul(finer.divisor)?;
        let denominator = self.divisor.checked_mul(finer.factor)?;
        numerator.checked_div(denominator)
    }
}

/// The built-in UCUM atoms, with their exact UCUM definitions.
fn lookup_atom(code: &str) -> Option<Atom> {
    let d = Decimal::new;
    let atom = match code {
        // Base units and their metric relatives.
        "m" => atom_of(Decimal::ONE, LENGTH, true),
        "g" => atom_of(Decimal::ONE, MASS, true),
        "s" => atom_of(Decimal::ONE, TIME, true),
        "mol" | "eq" | "osm" => atom_of(Decimal::ONE, AMOUNT, true),
        "K" => atom_of(Decimal::ONE, TEMPERATURE, true),
        "C" => atom_of(Decimal::ONE, CHARGE, true),
        "cd" => atom_of(Decimal::ONE, LUMINOUS, true),
        "[iU]" | "[IU]" => atom_of(Decimal::ONE, INTERNATIONAL_UNIT, true),
        "L" | "l" => atom_of(d(1, 3), VOLUME, true),
        "t" => atom_of(d(1_000_000, 0), MASS, true),
        "Hz" | "Bq" => atom_of(Decimal::ONE, FREQUENCY, true),
        "Ci" => atom_of(d(37_000_000_000, 0), FREQUENCY, true),
        "Pa" => atom_of(d(1000, 0), PRESSURE, true),
        "bar" => atom_of(d(100_000_000, 0), PRESSURE, true),
        "m[Hg]" => atom_of(d(133_322_000, 0), PRESSURE, true),
        "m[H2O]" => atom_of(d(9_806_650, 0), PRESSURE, true),
        "N" => atom_of(d(1000, 0), FORCE, true),
        "J" => atom_of(d(1000, 0), ENERGY, true),
        "cal" => atom_of(d(4184, 0), ENERGY, true),
        "W" => atom_of(d(1000, 0), POWER, true),
        "A" => atom_of(Decimal::ONE, CURRENT, true),
        "V" => atom_of(d(1000, 0), VOLTAGE, true),
        "kat" => atom_of(Decimal::ONE, CATALYTIC, true),
        "U" => Atom {
            divisor: d(60, 0),
            ..atom_of(d(1, 6), CATALYTIC, true)
        },
        "Gy" | "Sv" => atom_of(Decimal::ONE, ABSORBED_DOSE, true),
        // Time.
        "min" => atom_of(d(60, 0), TIME, false),
        "h" => atom_of(d(3600, 0), TIME, false),
        "d" => atom_of(d(86_400, 0), TIME, false),
        "wk" => atom_of(d(604_800, 0), TIME, false),
        "a" | "a_j" => atom_of(d(31_557_600, 0), TIME, false),
        "mo" | "mo_j" => atom_of(d(2_629_800, 0), TIME, false),
        "a_g" => atom_of(d(31_556_952, 0), TIME, false),
        "mo_g" => atom_of(d(2_629_746, 0), TIME, false),
        // Customary mass and length.
        "[lb_av]" => atom_of(d(45_359_237, 5), MASS, false),
        "[oz_av]" => atom_of(d(28_349_523_125, 9), MASS, false),
        "[gr]" => atom_of(d(6_479_891, 8), MASS, false),
        "[in_i]" => atom_of(d(254, 4), LENGTH, false),
        "[ft_i]" => atom_of(d(3048, 4), LENGTH, false),
        "[yd_i]" => atom_of(d(9144, 4), LENGTH, false),
        "[mi_i]" => atom_of(d(1_609_344, 3), LENGTH, false),
        // US volumes (1 [gal_us] = 231 [in_i]3).
        "[gal_us]" => atom_of(d(3_785_411_784, 12), VOLUME, false),
        "[qt_us]" => atom_of(d(946_352_946, 12), VOLUME, false),
        "[pt_us]" => atom_of(d(473_176_473, 12), VOLUME, false),
        "[cup_us]" => atom_of(d(2_365_882_365, 13), VOLUME, false),
        "[foz_us]" => atom_of(d(295_735_295_625, 16), VOLUME, false),
        "[tbs_us]" => atom_of(d(1_478_676_478_125, 17), VOLUME, false),
        "[tsp_us]" => atom_of(d(492_892_159_375, 17), VOLUME, false),
        // Other pressure.
        "atm" => atom_of(d(101_325_000, 0), PRESSURE, false),
        // Dimensionless.
        "%" => atom_of(d(1, 2), NONE, false),
        "[ppth]" => atom_of(d(1, 3), NONE, false),
        "[ppm]" => atom_of(d(1, 6), NONE, false),
        "[ppb]" => atom_of(d(1, 9), NONE, false),
        "[pptr]" => atom_of(d(1, 12), NONE, false),
        "10*" | "10^" => atom_of(d(10, 0), NONE, false),
        _ => return None,
    };
    Some(atom)
}

/// The UCUM metric prefixes as powers of ten.
fn lookup_prefix(code: &str) -> Option<i32> {
    let exponent = match code {
        "Y" => 24,
        "Z" => 21,
        "E" => 18,
        "P" => 15,
        "T" => 12,
        "G" => 9,
        "M" => 6,
        "k" => 3,
        "h" => 2,
        "da" => 1,
        "d" => -1,
        "c" => -2,
        "m" => -3,
        "u" => -6,
        "n" => -9,
        "p" => -12,
        "f" => -15,
        "a" => -18,
        "z" => -21,
        "y" => -24,
        _ => return None,
    };
    Some(exponent)
}

/// `10^exponent` as a decimal (exponent within ±28).
fn power_of_ten(exponent: i32) -> Option<Decimal> {
    let magnitude = exponent.unsigned_abs();
    if magnitude > 28 {
        return None;
    }
    if exponent < 0 {
        return Decimal::try_new(1, magnitude).ok();
    }
    let value = 10i128.checked_pow(magnitude)?;
    Decimal::try_from_i128_with_scale(value, 0).ok()
}

/// Resolves a unit symbol: an atom, or a metric prefix followed by a metric
/// atom. Whole-atom matches win (`cd` is candela, `min` is minute).
fn resolve_symbol(symbol: &str) -> Option<Atom> {
    if let Some(atom) = lookup_atom(symbol) {
        return Some(atom);
    }
    for split in [2, 1] {
        let (Some(prefix), Some(rest)) = (symbol.get(..split), symbol.get(split..)) else {
            continue;
        };
        let (Some(exponent), Some(atom)) = (lookup_prefix(prefix), lookup_atom(rest)) else {
            continue;
        };
        if atom.metric {
            let factor = atom.factor.checked_mul(power_of_ten(exponent)?)?;
            return Some(Atom { factor, ..atom });
        }
    }
    None
}

/// One factor of a unit term: `code` raised to `exp`.
#[derive(Debug, Clone, PartialEq)]
struct Term {
    code: String,
    exp: i32,
    atom: Atom,
}

/// Parses a UCUM unit expression into its factors (annotations dropped).
fn parse_unit(unit: &str) -> Option<Vec<Term>> {
    let mut parser = UnitParser {
        bytes: unit.as_bytes(),
        pos: 0,
    };
    let terms = parser.term(0)?;
    (parser.pos == parser.bytes.len()).then_some(terms)
}

/// Recursive-descent parser over the UCUM term grammar.
struct UnitParser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// Maximum nesting of parentheses in a unit.
const MAX_UNIT_DEPTH: usize = 8;

impl<'a> UnitParser<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn term(&mut self, depth: usize) -> Option<Vec<Term>> {
        if depth > MAX_UNIT_DEPTH {
            return None;
        }
        let mut terms = Vec::new();
        let mut sign = 1;
        if self.peek() == Some(b'/') {
            self.pos += 1;
            sign = -1;
        }
        loop {
            for term in self.component(depth)? {
                push_term(&mut terms, term.code, term.exp * sign, term.atom);
            }
            match self.peek() {
                Some(b'.') => sign = 1,
                Some(b'/') => sign = -1,
                _ => return Some(terms),
            }
            self.pos += 1;
        }
    }

    fn component(&mut self, depth: usize) -> Option<Vec<Term>> {
        match self.peek()? {
            b'(' => {
                self.pos += 1;
                let inner = self.term(depth + 1)?;
                (self.peek() == Some(b')')).then_some(())?;
                self.pos += 1;
                self.skip_annotation()?;
                Some(inner)
            }
            b'{' => {
                self.skip_annotation()?;
                Some(Vec::new())
            }
            b'0'..=b'9' => self.numeric_component(),
            _ => {
                let symbol = self.symbol()?;
                let atom = resolve_symbol(symbol)?;
                let exp = self.exponent()?.unwrap_or(1);
                self.skip_annotation()?;
                Some(vec![Term {
                    code: symbol.to_owned(),
                    exp,
                    atom,
                }])
            }
        }
    }

    /// `10*n`, `10^n` or a plain integer factor.
    fn numeric_component(&mut self) -> Option<Vec<Term>> {
        let rest = self.bytes.get(self.pos..)?;
        if rest.starts_with(b"10*") || rest.starts_with(b"10^") {
            let code = if rest[2] == b'*' { "10*" } else { "10^" };
            self.pos += 3;
            let exp = self.exponent()?.unwrap_or(1);
            self.skip_annotation()?;
            let atom = lookup_atom(code)?;
            return Some(vec![Term {
                code: code.to_owned(),
                exp,
                atom,
            }]);
        }
        let len = count_digits(rest);
        let digits = std::str::from_utf8(rest.get(..len)?).ok()?;
        self.pos += len;
        self.skip_annotation()?;
        let factor = Decimal::from_str_exact(digits).ok()?;
        if factor == Decimal::ONE {
            return Some(Vec::new());
        }
        Some(vec![Term {
            code: digits.to_owned(),
            exp: 1,
            atom: atom_of(factor, NONE, false),
        }])
    }

    /// A unit symbol: letters and `%_'` outside brackets, anything inside.
    fn symbol(&mut self) -> Option<&'a str> {
        let bytes: &'a [u8] = self.bytes;
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c == b'[' {
                let close = self.bytes[self.pos..].iter().position(|&b| b == b']')?;
                self.pos += close + 1;
            } else if c.is_ascii_alphabetic() || matches!(c, b'%' | b'_' | b'\'') {
                self.pos += 1;
            } else {
                break;
            }
        }
        let symbol = std::str::from_utf8(bytes.get(start..self.pos)?).ok()?;
        (!symbol.is_empty()).then_some(symbol)
    }

    /// An optional signed integer exponent.
    fn exponent(&mut self) -> Option<Option<i32>> {
        let start = self.pos;
        if matches!(self.peek(), Some(b'+' | b'-')) {
            self.pos += 1;
        }
        let len = count_digits(self.bytes.get(self.pos..)?);
        if len == 0 {
            self.pos = start;
            return Some(None);
        }
        self.pos += len;
        let text = std::str::from_utf8(self.bytes.get(start..self.pos)?).ok()?;
        let text = text.strip_prefix('+').unwrap_or(text);
        text.parse::<i32>().ok().filter(|e| e.abs() <= 24).map(Some)
    }

    fn skip_annotation(&mut self) -> Option<()> {
        if self.peek() == Some(b'{') {
            let close = self.bytes[self.pos..].iter().position(|&b| b == b'}')?;
            self.pos += close + 1;
        }
        Some(())
    }
}

/// Appends a factor, merging it with an existing factor of the same code.
fn push_term(terms: &mut Vec<Term>, code: String, exp: i32, atom: Atom) {
    if let Some(existing) = terms.iter_mut().find(|t| t.code == code) {
        existing.exp += exp;
    } else {
        terms.push(Term { code, exp, atom });
    }
    terms.retain(|t| t.exp != 0);
}

/// `base^exp` for a non-negative exponent.
fn decimal_power(base: Decimal, exp: u32) -> Option<Decimal> {
    let mut result = Decimal::ONE;
    for _ in 0..exp {
        result = result.checked_mul(base)?;
    }
    Some(result)
}

/// `base^exp` for a possibly negative exponent.
fn decimal_pow(base: Decimal, exp: i32) -> Option<Decimal> {
    let result = decimal_power(base, exp.unsigned_abs())?;
    if exp < 0 {
        Decimal::ONE.checked_div(result)
    } else {
        Some(result)
    }
}

/// The factor to base units (as `factor / divisor`, so that `km/h` stays
/// exact) and the dimension of a parsed unit.
fn canonical(terms: &[Term]) -> Option<Ratio> {
    let mut factor = Decimal::ONE;
    let mut divisor = Decimal::ONE;
    let mut dim = NONE;
    for term in terms {
        let power = term.exp.unsigned_abs();
        let (up, down) = (
            decimal_power(term.atom.factor, power)?,
            decimal_power(term.atom.divisor, power)?,
        );
        let (up, down) = if term.exp > 0 { (up, down) } else { (down, up) };
        factor = factor.checked_mul(up)?;
        divisor = divisor.checked_mul(down)?;
        for (total, part) in dim.iter_mut().zip(term.atom.dim) {
            let scaled = i32::from(part) * term.exp + i32::from(*total);
            *total = i8::try_from(scaled).ok()?;
        }
    }
    Some(Ratio {
        factor,
        divisor,
        dim,
    })
}

/// A unit's size in base units, `factor / divisor`, and its dimension.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ratio {
    factor: Decimal,
    divisor: Decimal,
    dim: Dim,
}

/// Expresses factors of `right` that share a dimension with a factor of
/// `left` in the more granular of the two atoms. Returns the multipliers to
/// apply to the left and right values.
fn unify_terms(left: &mut [Term], right: &mut [Term]) -> Option<(Decimal, Decimal)> {
    let mut left_factor = Decimal::ONE;
    let mut right_factor = Decimal::ONE;
    for r in right.iter_mut() {
        if r.atom.dim == NONE {
            continue;
        }
        let Some(l) = left
            .iter_mut()
            .find(|l| l.atom.dim == r.atom.dim && l.code != r.code)
        else {
            continue;
        };
        if l.atom.is_finer_or_equal(&r.atom)? {
            let ratio = r.atom.ratio_to(&l.atom)?;
            right_factor = right_factor.checked_mul(decimal_pow(ratio, r.exp)?)?;
            r.code.clone_from(&l.code);
            r.atom = l.atom;
        } else {
            let ratio = l.atom.ratio_to(&r.atom)?;
            left_factor = left_factor.checked_mul(decimal_pow(ratio, l.exp)?)?;
            l.code.clone_from(&r.code);
            l.atom = r.atom;
        }
    }
    Some((left_factor, right_factor))
}

/// Removes plain integer factors (`100`) from a product, returning their value.
fn fold_numeric_terms(terms: Vec<Term>) -> Option<(Decimal, Vec<Term>)> {
    let mut factor = Decimal::ONE;
    let mut kept = Vec::with_capacity(terms.len());
    for term in terms {
        if term.code.bytes().all(|b| b.is_ascii_digit()) {
            factor = factor.checked_mul(decimal_pow(term.atom.factor, term.exp)?)?;
        } else {
            kept.push(term);
        }
    }
    Some((factor, kept))
}

/// Writes factors as a UCUM code: `cm2`, `g/m`, `mg/dL`, `1/min`, `1`.
fn format_terms(terms: &[Term]) -> String {
    let power = |t: &Term| {
        let exp = t.exp.abs();
        if exp == 1 {
            t.code.clone()
        } else {
            format!("{}{}", t.code, exp)
        }
    };
    let numerator: Vec<String> = terms.iter().filter(|t| t.exp > 0).map(power).collect();
    let mut unit = if numerator.is_empty() {
        "1".to_owned()
    } else {
        numerator.join(".")
    };
    for term in terms.iter().filter(|t| t.exp < 0) {
        unit.push('/');
        unit.push_str(&power(term));
    }
    unit
}

/// The UCUM code to use for a unit in products: calendar keywords from week
/// down map to their UCUM counterpart; `year` and `month` have none.
fn ucum_form(unit: &str) -> Option<&str> {
    match CalendarUnit::from_keyword(unit) {
        Some(calendar) if calendar.is_variable() => None,
        Some(calendar) => Some(calendar.ucum_code()),
        None => Some(unit),
    }
}

/// How a unit relates to others.
#[derive(Debug, Clone, PartialEq)]
enum UnitKind {
    /// A calendar `year` (12) or `month` (1), counted in months.
    Variable(Decimal),
    /// A UCUM unit: `value * factor / divisor` base units.
    Linear(Ratio),
    /// A temperature: `(value + offset) * factor / divisor` kelvin.
    Affine(Ratio, Decimal),
    /// Not resolvable: compares only with the same code.
    Opaque,
}

impl UnitKind {
    /// The size of the unit (months for calendar years and months).
    fn ratio(&self) -> Ratio {
        match self {
            Self::Variable(months) => Ratio {
                factor: *months,
                divisor: Decimal::ONE,
                dim: NONE,
            },
            Self::Linear(ratio) | Self::Affine(ratio, _) => *ratio,
            Self::Opaque => ratio_of(Decimal::ONE, Decimal::ONE, NONE),
        }
    }

    fn offset(&self) -> Option<Decimal> {
        match self {
            Self::Affine(_, offset) => Some(*offset),
            _ => None,
        }
    }
}

const fn ratio_of(factor: Decimal, divisor: Decimal, dim: Dim) -> Ratio {
    Ratio {
        factor,
        divisor,
        dim,
    }
}

fn unit_kind(unit: &str) -> UnitKind {
    match CalendarUnit::from_keyword(unit) {
        Some(CalendarUnit::Year) => return UnitKind::Variable(Decimal::from(12)),
        Some(CalendarUnit::Month) => return UnitKind::Variable(Decimal::ONE),
        _ => {}
    }
    let d = Decimal::new;
    match unit {
        "" => UnitKind::Linear(ratio_of(Decimal::ONE, Decimal::ONE, NONE)),
        "Cel" => UnitKind::Affine(
            ratio_of(Decimal::ONE, Decimal::ONE, TEMPERATURE),
            d(27_315, 2),
        ),
        "[degF]" => UnitKind::Affine(ratio_of(d(5, 0), d(9, 0), TEMPERATURE), d(45_967, 2)),
        _ => ucum_form(unit)
            .and_then(parse_unit)
            .and_then(|terms| canonical(&terms))
            .map_or(UnitKind::Opaque, UnitKind::Linear),
    }
}

/// Which operator a common scale is wanted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Equality,
    Equivalence,
}

/// A value on a scale shared with another quantity:
/// `base = (value + offset) * factor`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scaled {
    base: Decimal,
    factor: Decimal,
    offset: Option<Decimal>,
}

impl Scaled {
    /// Scales `value` of a unit of size `ratio`, on the common scale whose
    /// step is one base unit divided by both divisors (only multiplications,
    /// so `36 'km/h' = 10 'm/s'` is exact).
    fn new(
        value: Decimal,
        ratio: Ratio,
        other_divisor: Decimal,
        offset: Option<Decimal>,
    ) -> Option<Self> {
        let factor = ratio.factor.checked_mul(other_divisor)?;
        let shifted = match offset {
            Some(offset) => value.checked_add(offset)?,
            None => value,
        };
        Some(Self {
            base: shifted.checked_mul(factor)?,
            factor,
            offset,
        })
    }

    /// The inverse conversion: a base amount in this scale's unit.
    fn in_unit(&self, base: Decimal) -> Option<Decimal> {
        let value = base.checked_div(self.factor)?;
        match self.offset {
            Some(offset) => value.checked_sub(offset),
            None => Some(value),
        }
    }

    /// The size, on the common scale, of one unit in the last decimal place of
    /// `value` (trailing zeroes ignored).
    fn step(&self, value: &Decimal) -> Option<Decimal> {
        let places = value.normalize().scale();
        Decimal::try_new(1, places).ok()?.checked_mul(self.factor)
    }
}

/// Puts two values with unit sizes `ra` and `rb` on a common scale.
fn scale_pair(
    (a, ra, oa): (Decimal, Ratio, Option<Decimal>),
    (b, rb, ob): (Decimal, Ratio, Option<Decimal>),
) -> Option<(Scaled, Scaled)> {
    Some((
        Scaled::new(a, ra, rb.divisor, oa)?,
        Scaled::new(b, rb, ra.divisor, ob)?,
    ))
}

/// Rounds to the nearest multiple of `step`, as a count of steps.
fn round_to_step(value: Decimal, step: Decimal) -> Option<Decimal> {
    let steps = value.checked_div(step)?;
    Some(steps.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero))
}

/// Puts two quantities on a common scale, or `None` when not comparable.
fn common_scale(a: &Quantity, b: &Quantity, mode: Mode) -> Option<(Scaled, Scaled)> {
    let (kind_a, kind_b) = (unit_kind(&a.unit), unit_kind(&b.unit));
    let comparable = match (&kind_a, &kind_b) {
        (UnitKind::Variable(_), UnitKind::Variable(_)) => true,
        (UnitKind::Variable(_), _) | (_, UnitKind::Variable(_)) => {
            return match mode {
                Mode::Equality => None,
                Mode::Equivalence => calendar_equivalence_scale(a, &kind_a, b, &kind_b),
            };
        }
        (UnitKind::Opaque, UnitKind::Opaque) => a.unit == b.unit,
        (UnitKind::Opaque, _) | (_, UnitKind::Opaque) => false,
        _ => kind_a.ratio().dim == kind_b.ratio().dim,
    };
    if !comparable {
        return None;
    }
    scale_pair(
        (a.value, kind_a.ratio(), kind_a.offset()),
        (b.value, kind_b.ratio(), kind_b.offset()),
    )
}

/// The equivalence-only scale for a calendar `year`/`month` against a
/// definite time unit: `a`/`mo` are its counterparts, anything else counts a
/// year as 365 days and a month as 30 days.
fn calendar_equivalence_scale(
    a: &Quantity,
    kind_a: &UnitKind,
    b: &Quantity,
    kind_b: &UnitKind,
) -> Option<(Scaled, Scaled)> {
    let (definite, definite_kind) = match kind_a {
        UnitKind::Variable(_) => (b, kind_b),
        _ => (a, kind_a),
    };
    let UnitKind::Linear(definite_ratio) = definite_kind else {
        return None;
    };
    if definite_ratio.dim != TIME {
        return None;
    }
    let counterparts = matches!(definite.unit.as_str(), "a" | "mo");
    let in_seconds = |kind: &UnitKind| match kind {
        UnitKind::Variable(months) => {
            let is_month = *months == Decimal::ONE;
            let seconds = match (counterparts, is_month) {
                (true, true) => lookup_atom("mo")?.factor,
                (true, false) => lookup_atom("a")?.factor,
                (false, true) => Decimal::new(30 * 86_400, 0),
                (false, false) => Decimal::new(365 * 86_400, 0),
            };
            Some(ratio_of(seconds, Decimal::ONE, TIME))
        }
        UnitKind::Linear(ratio) => Some(*ratio),
        _ => None,
    };
    scale_pair(
        (a.value, in_seconds(kind_a)?, None),
        (b.value, in_seconds(kind_b)?, None),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn q(value: &str, unit: &str) -> Quantity {
        let value = Decimal::from_str(value).expect("test decimal");
        Quantity::new(value, unit)
    }

    fn dec(text: &str) -> Decimal {
        Decimal::from_str(text).expect("test decimal")
    }

    // --- construction, parsing and display -------------------------------

    #[test]
    fn plural_keywords_are_normalised() {
        assert_eq!(q("4", "days").unit, "day");
        assert_eq!(q("4", "day").calendar_unit(), Some(CalendarUnit::Day));
        assert_eq!(q("4", "d").calendar_unit(), None);
        assert!(Quantity::from_calendar_keyword(dec("1"), "weeks").is_some());
        assert!(Quantity::from_calendar_keyword(dec("1"), "wk").is_none());
    }

    #[test]
    fn display_matches_to_string() {
        // testQuantityLiteralWkToString, testQuantityLiteralWeekToString
        assert_eq!(q("1", "wk").to_string(), "1 'wk'");
        assert_eq!(q("1", "week").to_string(), "1 week");
        assert_eq!(q("4", "days").to_string(), "4 days");
        assert_eq!(q("4.5", "mg").to_string(), "4.5 'mg'");
        assert_eq!(q("-5.5", "mg").to_string(), "-5.5 'mg'");
        // testStringIntegerLiteralToQuantity
        assert_eq!(
            Quantity::parse("1").map(|x| x.to_string()),
            Ok("1 '1'".to_owned())
        );
    }

    #[test]
    fn parses_to_quantity_strings() {
        assert_eq!(Quantity::parse("1 day"), Ok(q("1", "day")));
        assert_eq!(Quantity::parse("1 'wk'"), Ok(q("1", "wk")));
        assert_eq!(Quantity::parse("-1.50 'mg'"), Ok(q("-1.50", "mg")));
        assert_eq!(Quantity::parse("+2 'it\\'s'"), Ok(q("2", "it's")));
        assert_eq!(Quantity::parse("1.0").map(|x| x.value.scale()), Ok(1));
        // testStringQuantityWeekConvertsToQuantityFalse, testStringDecimalLiteralConvertsToQuantityFalse
        for bad in ["1 wk", "1.a", "", "abc", "1.", "1 'mg", "1 'mg' x", "1'mg'"] {
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
    }

    // --- equality ----------------------------------------------------------

    #[test]
    fn equality_converts_units() {
        // testQuantity1, testQuantity3
        assert_eq!(q("4.0000", "g").equals(&q("4000.0", "mg")), Some(true));
        assert_eq!(q("4", "g").equals(&q("4040", "mg")), Some(false));
        assert_eq!(q("1", "cm").equals(&q("10", "mm")), Some(true));
        assert_eq!(q("100", "mg/dL").equals(&q("1", "g/L")), Some(true));
        assert_eq!(q("1", "[ft_i]").equals(&q("12", "[in_i]")), Some(true));
        assert_eq!(q("1", "[lb_av]").equals(&q("16", "[oz_av]")), Some(true));
        assert_eq!(q("1", "mmol/L").equals(&q("1000", "umol/L")), Some(true));
        assert_eq!(q("36", "km/h").equals(&q("10", "m/s")), Some(true));
        assert_eq!(q("1", "m2").equals(&q("10000", "cm2")), Some(true));
        assert_eq!(q("1", "L").equals(&q("1000", "cm3")), Some(true));
        assert_eq!(q("1", "1").equals(&q("100", "%")), Some(true));
        assert_eq!(q("2", "10*3/uL").equals(&q("2", "10*9/L")), Some(true));
        assert_eq!(q("1", "mL{total}").equals(&q("1", "mL")), Some(true));
    }

    #[test]
    fn observation_pound_comparisons() {
        // testEquality28, testNEquality24, testLessThan22, testGreaterThan22
        let value = q("185", "[lb_av]");
        assert_eq!(value.equals(&q("185", "[lb_av]")), Some(true));
        assert_eq!(value.equals(&q("185", "kg")), Some(false));
        assert_eq!(value.compare(&q("200", "[lb_av]")), Some(Ordering::Less));
        assert_eq!(value.compare(&q("100", "[lb_av]")), Some(Ordering::Greater));
        assert!(value.equivalent(&q("185", "[lb_av]")));
        assert!(!value.equivalent(&q("185", "kg")));
    }

    #[test]
    fn incomparable_units_are_empty() {
        assert_eq!(q("1", "cm").equals(&q("1", "s")), None);
        assert_eq!(q("1", "cm2").equals(&q("1", "cm")), None);
        assert_eq!(q("1", "cm").compare(&q("1", "g")), None);
        assert_eq!(q("1", "foo").equals(&q("1", "bar")), None);
        assert_eq!(q("1", "foo").equals(&q("1", "foo")), Some(true));
        // Comparable1..3
        assert!(q("1", "cm").is_comparable(&q("1", "[in_i]")));
        assert!(!q("1", "cm").is_comparable(&q("1", "[s]")));
        assert!(!q("1", "cm").is_comparable(&q("1", "s")));
    }

    #[test]
    fn calendar_durations_against_ucum() {
        // testQuantity5, testQuantity6
        assert_eq!(q("7", "days").equals(&q("1", "week")), Some(true));
        assert_eq!(q("7", "days").equals(&q("1", "wk")), Some(true));
        // testStringQuantityDayLiteralToQuantity, testStringQuantityWeekLiteralToQuantity
        assert_eq!(q("1", "day").equals(&q("1", "d")), Some(true));
        assert_eq!(q("1", "wk").equals(&q("1", "week")), Some(true));
        assert_eq!(q("1", "second").equals(&q("1", "s")), Some(true));
        assert_eq!(q("1", "millisecond").equals(&q("1", "ms")), Some(true));
        // testStringQuantityMonthLiteralToQuantity, testStringQuantityYearLiteralToQuantity
        assert_eq!(q("1", "mo").equals(&q("1", "month")), None);
        assert_eq!(q("1", "a").equals(&q("1", "year")), None);
        assert_eq!(q("1", "year").equals(&q("365", "days")), None);
        assert_eq!(q("1", "year").equals(&q("12", "months")), Some(true));
        assert_eq!(q("1", "a").equals(&q("12", "mo")), Some(true));
    }

    #[test]
    fn calendar_durations_equivalence() {
        assert!(q("1", "year").equivalent(&q("1", "a")));
        assert!(q("1", "month").equivalent(&q("1", "mo")));
        assert!(q("1", "year").equivalent(&q("365", "days")));
        assert!(q("1", "month").equivalent(&q("30", "d")));
        assert!(q("1", "second").equivalent(&q("1", "s")));
        assert!(!q("2", "years").equivalent(&q("1", "a")));
        assert!(!q("1", "year").equivalent(&q("1", "m")));
    }

    // --- equivalence ---------------------------------------------------------

    #[test]
    fn equivalence_rounds_to_least_precise_operand() {
        // testQuantity2, testQuantity4
        assert!(q("4", "g").equivalent(&q("4000", "mg")));
        assert!(q("4", "g").equivalent(&q("4040", "mg")));
        assert!(q("4040", "mg").equivalent(&q("4", "g")));
        assert!(
            q("4.0", "g").equivalent(&q("4040", "mg")),
            "trailing zeroes ignored"
        );
        assert!(!q("4.01", "g").equivalent(&q("4040", "mg")));
        assert!(q("1.0", "1").equivalent(&q("1", "1")));
        assert!(!q("1", "cm").equivalent(&q("1", "s")));
        assert!(q("37", "Cel").equivalent(&q("98.6", "[degF]")));
    }

    #[test]
    fn decimal_helpers() {
        assert_eq!(decimal_precision(&dec("1.58700")), 5);
        assert_eq!(decimal_precision(&dec("4")), 0);
        // testEquivalent10, 11, 13; testNotEquivalent13
        assert!(equivalent_decimals(&dec("1.10"), &dec("1.1")));
        let ratio = dec("1.2") / dec("1.8");
        assert!(equivalent_decimals(&ratio, &dec("0.67")));
        assert!(!equivalent_decimals(&ratio, &dec("0.6")));
        assert!(equivalent_decimals(&dec("0.0"), &dec("0")));
        assert!(!equivalent_decimals(&dec("1.1"), &dec("1.2")));
    }

    // --- ordering ------------------------------------------------------------

    #[test]
    fn ordering_converts_units() {
        // testQuantity7, testQuantity8
        assert_eq!(
            q("6", "days").compare(&q("1", "week")),
            Some(Ordering::Less)
        );
        assert_eq!(
            q("8", "days").compare(&q("1", "week")),
            Some(Ordering::Greater)
        );
        assert_eq!(q("4", "m").compare(&q("4", "cm")), Some(Ordering::Greater));
        assert_eq!(q("1", "month").compare(&q("40", "days")), None);
        assert_eq!(
            q("11", "months").compare(&q("1", "year")),
            Some(Ordering::Less)
        );
        assert_eq!(
            q("0", "Cel").compare(&q("273.15", "K")),
            Some(Ordering::Equal)
        );
        assert_eq!(
            q("212", "[degF]").compare(&q("100", "Cel")),
            Some(Ordering::Equal)
        );
        assert_eq!(
            q("40", "mm[Hg]").compare(&q("1", "atm")),
            Some(Ordering::Less)
        );
    }

    // --- arithmetic ----------------------------------------------------------

    #[test]
    fn addition_uses_the_more_granular_unit() {
        assert_eq!(q("3", "m").add(&q("3", "cm")), Some(q("303", "cm")));
        assert_eq!(q("3", "m").subtract(&q("3", "cm")), Some(q("297", "cm")));
        assert_eq!(q("1", "day").add(&q("1", "h")), Some(q("25", "h")));
        assert_eq!(q("1", "day").add(&q("2", "days")), Some(q("3", "day")));
        assert_eq!(
            q("1", "year").add(&q("6", "months")),
            Some(q("18", "month"))
        );
        assert_eq!(q("1", "year").add(&q("1", "a")), None);
        assert_eq!(q("1", "cm").add(&q("1", "s")), None);
        assert_eq!(q("1", "Cel").add(&q("1", "K")), None);
        assert_eq!(q("1", "Cel").add(&q("2", "Cel")), Some(q("3", "Cel")));
    }

    #[test]
    fn multiplication_and_division_combine_units() {
        // testQuantity9, testQuantity10, testQuantity11
        let area = q("2.0", "cm").multiply(&q("2.0", "m"));
        assert_eq!(
            area.as_ref().and_then(|a| a.equals(&q("0.040", "m2"))),
            Some(true)
        );
        assert_eq!(area.map(|a| a.unit), Some("cm2".to_owned()));
        let density = q("4.0", "g").divide(&q("2.0", "m"));
        assert_eq!(
            density.as_ref().and_then(|d| d.equals(&q("2", "g/m"))),
            Some(true)
        );
        assert_eq!(density.map(|d| d.unit), Some("g/m".to_owned()));
        let ratio = q("1.0", "m").divide(&q("1.0", "m"));
        assert_eq!(ratio, Some(q("1", "1")));
        // Spec examples.
        assert_eq!(q("12", "cm").multiply(&q("3", "cm")), Some(q("36", "cm2")));
        assert_eq!(q("3", "cm").multiply(&q("12", "cm2")), Some(q("36", "cm3")));
        assert_eq!(q("12", "cm2").divide(&q("3", "cm")), Some(q("4", "cm")));
        assert_eq!(
            q("1", "1").divide(&q("2", "h")).map(|x| x.unit),
            Some("1/h".to_owned())
        );
        assert_eq!(q("60", "km/h").multiply(&q("2", "h")), Some(q("120", "km")));
        assert_eq!(q("2", "days").multiply(&q("3", "1")), Some(q("6", "day")));
        assert_eq!(q("1", "cm").divide(&q("0", "cm")), None);
        assert_eq!(q("1", "foo").multiply(&q("1", "cm")), None);
        assert_eq!(q("1", "year").multiply(&q("1", "cm")), None);
    }

    #[test]
    fn scaling_by_numbers() {
        assert_eq!(q("2.5", "mg").scale(dec("2")), Some(q("5.0", "mg")));
        assert_eq!(q("5", "mg").divide_by(dec("2")), Some(q("2.5", "mg")));
        assert_eq!(q("5", "mg").divide_by(Decimal::ZERO), None);
    }

    #[test]
    fn conversion_to_a_named_unit() {
        assert_eq!(q("1", "g").convert_to("mg"), Some(q("1000", "mg")));
        assert_eq!(q("2", "weeks").convert_to("days"), Some(q("14", "day")));
        assert_eq!(
            q("100", "Cel")
                .convert_to("[degF]")
                .map(|x| x.value.round_dp(6)),
            Some(dec("212"))
        );
        assert_eq!(q("1", "g").convert_to("m"), None);
    }

    #[test]
    fn base_units_make_one_dimension_one_number() {
        let base = |v: &str, u: &str| q(v, u).to_base_units();
        assert_eq!(base("7", "mm"), base("0.7", "cm"));
        assert_eq!(base("7", "mm"), Some((dec("0.007"), "m".to_owned())));
        assert_eq!(base("2", "mg/dL").map(|b| b.1), Some("m-3.g".to_owned()));
        assert_eq!(base("1.5", "kg"), Some((dec("1500"), "g".to_owned())));
        assert_eq!(base("50", "%"), Some((dec("0.5"), "1".to_owned())));
        assert_eq!(base("0", "Cel").map(|b| b.0), Some(dec("273.15")));
        assert_eq!(base("1", "year"), None);
        assert_eq!(base("1", "[s]"), None);
    }

    #[test]
    fn unit_parser_handles_ucum_syntax() {
        let kind = |u: &str| unit_kind(u);
        let dim = |u: &str| match kind(u) {
            UnitKind::Linear(ratio) => Some(ratio.dim),
            _ => None,
        };
        assert_eq!(dim("mm[Hg]"), Some(PRESSURE));
        assert_eq!(dim("/min"), Some(FREQUENCY));
        assert_eq!(dim("kg.m/s2"), Some(FORCE));
        assert_eq!(dim("mol/(L.s)"), Some([-3, 0, -1, 1, 0, 0, 0, 0]));
        assert_eq!(dim("{cells}/uL"), Some([-3, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(dim("m[IU]/L"), Some([-3, 0, 0, 0, 0, 0, 0, 1]));
        assert_eq!(dim("cd"), Some(LUMINOUS));
        assert_eq!(dim("U/L"), Some([-3, 0, -1, 1, 0, 0, 0, 0]));
        for opaque in ["[s]", "ma", "m/", "(m", "m{x", "kmin", "Cel/h", "m99"] {
            assert_eq!(kind(opaque), UnitKind::Opaque, "{opaque}");
        }
    }
}
