//! FHIRPath (normative release N1, 2.0.0, as used by FHIR R4): parsed once into an AST,
//! evaluated many times over the element model.
//!
//! - [`lexer`], [`parser`], [`ast`]: text to syntax tree, errors with positions.

pub mod ast;
pub mod lexer;
pub mod parser;
