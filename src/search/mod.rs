//! Search: what a stored resource can be found by, and how a query finds it. At write time
//! every R4 SearchParameter of the resource's type (of type token, string, date,
//! reference, quantity, number or uri), and those defined for every resource (`_tag`,
//! `_security`, `_profile`, `_source`), has its FHIRPath expression evaluated over the
//! resource, and the values become index rows ([`IndexRow`]) that the store keeps beside
//! the version (`search_*` tables), replaced on every write and removed on delete.
//! `resolve() is Patient` in an expression (how R4 limits `patient` parameters to one target
//! type) is read as a test of the reference text.
//!
//! Normalization, so that queries can be plain comparisons in both databases:
//! - token: `system` and `code` as written (`system` empty when absent); Coding,
//!   CodeableConcept (each coding), Identifier (system, value), ContactPoint (value), and
//!   code/string/uri/boolean primitives; Coding.display, CodeableConcept.text and
//!   Identifier.type.text, lower-cased, for `:text` (table `search_token_text`);
//! - string: lower-cased text, each part of HumanName (family, given, prefix, suffix, text)
//!   and Address (line, city, district, state, postalCode, country, text) on its own row;
//! - date: the range the value covers, `low` and `high` instants in UTC with milliseconds
//!   (`2020` covers `2020-01-01T00:00:00.000Z` to `2020-12-31T23:59:59.999Z`); Period uses
//!   its start and end, an open end is `9999-12-31T23:59:59.999Z`;
//! - reference: the `reference` text (`Patient/123`, or an absolute URL), and canonical or
//!   uri values as written; `Reference.identifier` (system, value) for `:identifier`
//!   (table `search_reference_identifier`);
//! - quantity (Quantity and its profiles, Money, Range) and number: the range of values
//!   (`low == high` but for a Range, or a `comparator` `<`/`>` that opens one end), with
//!   system, code and unit as written and, when the unit is UCUM (or has no system) and
//!   converts, the range in UCUM base units with the base unit's code (`7 mm` and `0.7 cm`
//!   are both `0.007 m`), as floating point;
//! - uri: as written.
//!
//! Queries ([`parse`], [`where_sql`]): a parameter's comma-separated values are OR-ed, the
//! parameters AND-ed; each condition is an `IN (SELECT res_id FROM search_* ...)` subquery.
//! Modifiers: `:missing` (every type), `:exact`/`:contains` (string), `:not` and `:text`
//! (token; `:not=a,b` matches resources with neither, including those without a value),
//! `:identifier` and `:Type` (reference), `:below`/`:above` (uri); others are reported as
//! not supported (a warning, or 400 under `handling=strict`). Date, quantity and number
//! take the prefixes `eq ne lt le gt ge sa eb ap`; a search number covers the range its
//! precision implies (`100` is `[99.5, 100.5)`), `ap` is within 10%. Quantity values are
//! `number`, `number|system|code` or `number||unit` (code or unit text); with a UCUM unit
//! they compare in base units. Chained parameters one level deep
//! (`subject:Patient.identifier=s|v`, or `patient.name=x` where the reference allows one
//! target type; ambiguous: 400) become one nested subquery over the target's current
//! resources; deeper chains are reported as not supported.

mod index;

mod query;

mod result;

pub use index::{date_range, index, indexed_parameters, param_targets, param_type};
pub use query::{parse, uri_prefixes, where_sql, Clause, Cond, Parsed, Piece};
pub use result::{
    count_sql, encode_cursor, include_targets_sql, page_sql, relative_target, resources_sql,
    revinclude_sql, subset, Cursor, Include, Position, Shape, Sort, SortBy, Summary, CURSOR_PARAM,
    SUBSETTED,
};
use rust_decimal::Decimal;

/// One index row of a resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum IndexRow {
    /// A token parameter value.
    Token {
        /// Search parameter code (`identifier`, `code`).
        param: String,
        /// The system (empty when there is none).
        system: String,
        /// The code or value.
        code: String,
    },
    /// A string parameter value, lower-cased.
    String {
        /// Search parameter code.
        param: String,
        /// The normalized text.
        value: String,
    },
    /// A date parameter value as the range it covers.
    Date {
        /// Search parameter code.
        param: String,
        /// First instant covered.
        low: String,
        /// Last instant covered.
        high: String,
    },
    /// A reference parameter value.
    Reference {
        /// Search parameter code.
        param: String,
        /// `Type/id`, or the URL as written.
        target: String,
    },
    /// A display text of a token parameter (CodeableConcept.text, Coding.display),
    /// lower-cased, for `:text`.
    TokenText {
        /// Search parameter code.
        param: String,
        /// The lower-cased text.
        text: String,
    },
    /// The `identifier` of a Reference, for `:identifier`.
    ReferenceIdentifier {
        /// Search parameter code.
        param: String,
        /// The identifier's system (empty when there is none).
        system: String,
        /// The identifier's value.
        value: String,
    },
    /// A quantity or number parameter value as the range it covers (`low == high` for a
    /// single value; a Range's open end is `Decimal::MIN` or `Decimal::MAX`).
    Quantity {
        /// Search parameter code.
        param: String,
        /// The unit system (empty for numbers and when absent).
        system: String,
        /// The coded unit (empty for numbers and when absent).
        code: String,
        /// The human unit as written (empty for numbers and when absent).
        unit: String,
        /// The lowest value covered.
        low: Decimal,
        /// The highest value covered.
        high: Decimal,
        /// The unit code and range in UCUM base units, when the unit converts.
        canon: Option<(String, Decimal, Decimal)>,
    },
    /// A uri parameter value as written.
    Uri {
        /// Search parameter code.
        param: String,
        /// The uri.
        uri: String,
    },
}
