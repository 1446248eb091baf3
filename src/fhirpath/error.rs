//! The errors of FHIRPath compilation and evaluation, one variant per stage the specification
//! names: syntax (the text does not parse), semantic (it parses but cannot mean anything:
//! unknown function, wrong number of arguments, unknown type, and in strict mode unknown
//! elements) and execution (a run-time rule is broken, e.g. `+` on a collection of two).

use super::lexer::{line_col, ParseError};
use thiserror::Error;

/// A FHIRPath error, with its position in the expression.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// The expression does not parse.
    #[error("syntax error {0}")]
    Syntax(#[from] ParseError),
    /// The expression parses but is not valid (found when compiling).
    #[error("semantic error at {line}:{col}: {message}")]
    Semantic {
        /// Byte offset in the expression.
        pos: u32,
        /// 1-based line.
        line: u32,
        /// 1-based column (characters).
        col: u32,
        /// What is wrong.
        message: String,
    },
    /// Evaluation broke a rule of the specification.
    #[error("execution error at {line}:{col}: {message}")]
    Execution {
        /// Byte offset in the expression of the operator or function that failed.
        pos: u32,
        /// 1-based line.
        line: u32,
        /// 1-based column (characters).
        col: u32,
        /// What went wrong.
        message: String,
    },
}

impl Error {
    /// A semantic error at byte offset `pos` of `src`.
    pub fn semantic(src: &str, pos: u32, message: impl Into<String>) -> Self {
        let (line, col) = line_col(src, pos);
        Error::Semantic {
            pos,
            line,
            col,
            message: message.into(),
        }
    }

    /// An execution error at byte offset `pos` of `src`.
    pub fn execution(src: &str, pos: u32, message: impl Into<String>) -> Self {
        let (line, col) = line_col(src, pos);
        Error::Execution {
            pos,
            line,
            col,
            message: message.into(),
        }
    }

    /// The byte offset in the expression the error points at.
    pub fn pos(&self) -> u32 {
        match self {
            Error::Syntax(e) => e.pos,
            Error::Semantic { pos, .. } | Error::Execution { pos, .. } => *pos,
        }
    }
}

/// An execution error inside the evaluator, before the source is at hand to place it.
/// Boxed where it travels so that results stay small on the hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fail {
    pub pos: u32,
    pub message: String,
}

/// The evaluator's result type.
pub(crate) type Res<T> = Result<T, Box<Fail>>;

/// An execution failure at `pos`.
pub(crate) fn fail<T>(pos: u32, message: impl Into<String>) -> Res<T> {
    Err(Box::new(Fail {
        pos,
        message: message.into(),
    }))
}
