//! The FHIR R4 element model: JSON text in, a typed tree out, and back.
//!
//! - [`json`]: the strict JSON reader/writer underneath (exact numbers, offsets, no
//!   duplicate keys).
//! - [`schema`]: per-type element information derived from the R4 StructureDefinitions.
//! - [`element`]: the tree ([`Element`], [`Primitive`], [`Value`]).
//! - [`parse`] and [`write`]: FHIR JSON to the tree and back.
//!
//! The model does no I/O and knows nothing of HTTP, storage or profiles: it is the
//! shape of FHIR data as the base specification defines it.

pub mod element;
pub mod json;
pub mod parse;
pub mod schema;
pub mod write;

pub use element::{Element, Primitive, PrimitiveExtras, Property, Scalar, Value, Values};
pub use parse::{parse, parse_strict, parse_with, ParseError, ParseIssue, ParseOptions, Parsed};
pub use write::{to_json, to_json_pretty};
