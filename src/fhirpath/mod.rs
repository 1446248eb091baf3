//! FHIRPath (normative release N1, 2.0.0, as used by FHIR R4): parsed once into an AST,
//! compiled, evaluated many times over the element model.
//!
//! - [`lexer`], [`parser`], [`ast`]: text to syntax tree, errors with positions.
//! - [`compile`](Expression::compile): syntax tree to the compiled form (functions resolved,
//!   literals converted, types resolved); `check` adds the strict-mode checks.
//! - [`eval`]: [`Expression`], [`Context`] and the evaluator; `functions` and `ops` hold
//!   the functions and operators, [`value`] the items and collections they work on.
//! - [`temporal`] and [`quantity`]: the `Date`/`DateTime`/`Time` and `Quantity` types.
//! - [`cli`]: the `fhirpath` subcommand; [`bench`](mod@bench): its benchmark.

pub mod ast;
pub mod bench;
mod check;
pub mod cli;
mod compile;
mod error;
pub mod eval;
mod functions;
pub mod lexer;
mod ops;
pub mod parser;
pub mod quantity;
pub mod temporal;
pub mod value;

pub use error::Error;
pub use eval::{Context, Expression, Options, TraceFn};
pub use value::{Collection, Item, SystemType, SystemValue, TypeName};
