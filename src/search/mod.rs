//! Search parameter indexing: what a stored resource can be found by. At write time every
//! R4 SearchParameter of the resource's type (of type token, string, date or reference) has
//! its FHIRPath expression evaluated over the resource, and the values become index rows
//! ([`IndexRow`]) that the store keeps beside the version (`search_*` tables), replaced on
//! every write and removed on delete.
//!
//! Normalization, so that queries can be plain comparisons in both databases:
//! - token: `system` and `code` as written (`system` empty when absent); Coding,
//!   CodeableConcept (each coding), Identifier (system, value), ContactPoint (value), and
//!   code/string/uri/boolean primitives;
//! - string: lower-cased text, each part of HumanName (family, given, prefix, suffix, text)
//!   and Address (line, city, district, state, postalCode, country, text) on its own row;
//! - date: the range the value covers, `low` and `high` instants in UTC with milliseconds
//!   (`2020` covers `2020-01-01T00:00:00.000Z` to `2020-12-31T23:59:59.999Z`); Period uses
//!   its start and end, an open end is `9999-12-31T23:59:59.999Z`;
//! - reference: the `reference` text (`Patient/123`, or an absolute URL), and canonical or
//!   uri values as written.

mod index;

mod query;

mod result;

pub use index::{date_range, index, param_type};
pub use query::{parse, where_sql, Clause, Cond, Parsed, Piece};
pub use result::{
    count_sql, encode_cursor, include_targets_sql, page_sql, relative_target, resources_sql,
    revinclude_sql, subset, Cursor, Include, Position, Shape, Sort, SortBy, Summary, CURSOR_PARAM,
    SUBSETTED,
};

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
}
