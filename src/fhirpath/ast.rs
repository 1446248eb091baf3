//! Abstract syntax tree of a FHIRPath (N1 / 2.0.0, as used by FHIR R4) expression.
//!
//! The tree is produced by [`super::parser::parse`]. Parentheses leave no node of
//! their own: they only shape the tree. Every node records the byte offset of the
//! token that introduced it (see [`Expr::pos`]) so that later stages (type checking,
//! evaluation) can report errors against the expression source.
//!
//! [`Expr`] implements [`std::fmt::Display`], printing a fully parenthesised
//! FHIRPath form (`((1 + 2) * 3)`, `Patient.name.where((use = 'official'))`) that
//! parses back to the same tree; it is meant for debugging and test expectations.

use std::fmt;

/// Byte offset in the expression source.
pub type Pos = u32;

/// One node of a FHIRPath expression tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    /// What the node is.
    pub kind: ExprKind,
    /// Byte offset of the token that introduced the node: the operator of a
    /// binary, unary or type operation, the member or function name of an
    /// invocation, the `[` of an indexer, and the first token of anything else.
    pub pos: Pos,
}

/// The kinds of FHIRPath expression nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A literal value (`{}`, `true`, `'text'`, `42`, `@2015-02-04`, `4 'mg'`, ...).
    Literal(Literal),
    /// An identifier at the start of a path or as a bare term, e.g. `Patient`,
    /// `name`, `` `given` `` (stored without backticks, escapes resolved).
    Identifier(String),
    /// `%name`, `` %`name` ``, `%'name'` (the name without the `%` and quotes).
    Variable(String),
    /// `$this`.
    This,
    /// `$index`.
    Index,
    /// `$total`.
    Total,
    /// `base.name`.
    Member {
        /// The expression whose children are selected.
        base: Box<Expr>,
        /// The member name (backticks removed).
        name: String,
    },
    /// `base.name(args)` or, with `base` `None`, a bare `name(args)`.
    Function {
        /// The focus the function is invoked on, `None` for a bare call.
        base: Option<Box<Expr>>,
        /// The function name (backticks removed).
        name: String,
        /// The argument expressions, unevaluated.
        args: Vec<Expr>,
    },
    /// `base[index]`.
    Indexer {
        /// The indexed collection.
        base: Box<Expr>,
        /// The index expression.
        index: Box<Expr>,
    },
    /// `+operand` / `-operand`.
    Unary {
        /// The polarity operator.
        op: UnaryOp,
        /// The operand.
        operand: Box<Expr>,
    },
    /// `lhs op rhs`.
    Binary {
        /// The operator.
        op: BinaryOp,
        /// The left operand.
        lhs: Box<Expr>,
        /// The right operand.
        rhs: Box<Expr>,
    },
    /// `expr is Type` / `expr as Type`.
    TypeOp {
        /// `is` or `as`.
        op: TypeOp,
        /// The tested / converted expression.
        operand: Box<Expr>,
        /// The type named after the operator.
        type_spec: TypeSpecifier,
    },
}

/// Literal values.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `{}`, the empty collection.
    Empty,
    /// `true` / `false`.
    Boolean(bool),
    /// A string literal, escapes resolved.
    String(String),
    /// An integer literal (digits only; the sign is a [`UnaryOp`]).
    Integer(i64),
    /// A FHIRPath 2.1 long literal `123L` (the value without the `L`).
    Long(i64),
    /// A decimal literal, as its exact source text (e.g. `"1.50"`).
    Decimal(String),
    /// `@2015`, `@2015-02`, `@2015-02-04`: the text after the `@`.
    Date(String),
    /// `@2015T`, `@2015-02-04T14:34:28.123+09:00`, ...: the text after the `@`.
    DateTime(String),
    /// `@T14:34:28`: the text after the `@`, including the leading `T`.
    Time(String),
    /// `4.5 'mg'` or `3 days`.
    Quantity {
        /// The exact number text as written (`"4.5"`).
        value: String,
        /// The UCUM code (unquoted, escapes resolved) or, when `calendar` is set,
        /// the calendar keyword as written (`"year"`, `"days"`, ...).
        unit: String,
        /// Whether `unit` is a calendar duration keyword rather than a UCUM string.
        calendar: bool,
    },
}

/// Prefix polarity operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `+`.
    Plus,
    /// `-`.
    Minus,
}

/// Infix operators (all left-associative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `*`.
    Mul,
    /// `/`.
    Div,
    /// `div`.
    IntDiv,
    /// `mod`.
    Mod,
    /// `+`.
    Add,
    /// `-`.
    Sub,
    /// `&`.
    Concat,
    /// `|`.
    Union,
    /// `<`.
    Lt,
    /// `>`.
    Gt,
    /// `<=`.
    Le,
    /// `>=`.
    Ge,
    /// `=`.
    Eq,
    /// `~`.
    Equiv,
    /// `!=`.
    Ne,
    /// `!~`.
    NotEquiv,
    /// `in`.
    In,
    /// `contains`.
    Contains,
    /// `and`.
    And,
    /// `or`.
    Or,
    /// `xor`.
    Xor,
    /// `implies`.
    Implies,
}

/// Type operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TypeOp {
    /// `is`.
    Is,
    /// `as`.
    As,
}

/// A (possibly qualified) type name: `FHIR.Patient`, `System.String`, `Patient`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TypeSpecifier {
    /// The namespace qualifier (`FHIR`, `System`), if written.
    pub namespace: Option<String>,
    /// The type name.
    pub name: String,
}

impl UnaryOp {
    /// The operator as written in FHIRPath.
    pub fn symbol(self) -> &'static str {
        match self {
            UnaryOp::Plus => "+",
            UnaryOp::Minus => "-",
        }
    }
}

impl BinaryOp {
    /// The operator as written in FHIRPath.
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::IntDiv => "div",
            BinaryOp::Mod => "mod",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Concat => "&",
            BinaryOp::Union => "|",
            BinaryOp::Lt => "<",
            BinaryOp::Gt => ">",
            BinaryOp::Le => "<=",
            BinaryOp::Ge => ">=",
            BinaryOp::Eq => "=",
            BinaryOp::Equiv => "~",
            BinaryOp::Ne => "!=",
            BinaryOp::NotEquiv => "!~",
            BinaryOp::In => "in",
            BinaryOp::Contains => "contains",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
            BinaryOp::Xor => "xor",
            BinaryOp::Implies => "implies",
        }
    }
}

impl TypeOp {
    /// The operator as written in FHIRPath.
    pub fn symbol(self) -> &'static str {
        match self {
            TypeOp::Is => "is",
            TypeOp::As => "as",
        }
    }
}

/// Words that can never be identifiers unless backtick-delimited.
pub const RESERVED_WORDS: [&str; 8] =
    ["and", "or", "xor", "implies", "div", "mod", "true", "false"];

/// Whether `name` can be written as a plain (undelimited) identifier: it has the
/// shape `[A-Za-z_][A-Za-z0-9_]*` and is not one of [`RESERVED_WORDS`].
pub fn is_plain_identifier(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(b) if b.is_ascii_alphabetic() || *b == b'_' => {}
        _ => return false,
    }
    bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        && !RESERVED_WORDS.contains(&name)
}

/// Writes `text` between `quote` characters, escaping as FHIRPath requires.
fn write_quoted(f: &mut fmt::Formatter<'_>, text: &str, quote: char) -> fmt::Result {
    use fmt::Write;
    f.write_char(quote)?;
    for c in text.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            '\u{c}' => f.write_str("\\f")?,
            c if c == quote => {
                f.write_char('\\')?;
                f.write_char(c)?;
            }
            c if c.is_control() => write!(f, "\\u{:04x}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_char(quote)
}

/// Writes an identifier, backtick-delimiting it when it is not a plain identifier.
fn write_identifier(f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
    if is_plain_identifier(name) {
        f.write_str(name)
    } else {
        write_quoted(f, name, '`')
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Empty => f.write_str("{}"),
            Literal::Boolean(b) => write!(f, "{b}"),
            Literal::String(s) => write_quoted(f, s, '\''),
            Literal::Integer(i) => write!(f, "{i}"),
            Literal::Long(i) => write!(f, "{i}L"),
            Literal::Decimal(d) => f.write_str(d),
            Literal::Date(d) | Literal::DateTime(d) | Literal::Time(d) => write!(f, "@{d}"),
            Literal::Quantity {
                value,
                unit,
                calendar,
            } => {
                write!(f, "{value} ")?;
                if *calendar {
                    f.write_str(unit)
                } else {
                    write_quoted(f, unit, '\'')
                }
            }
        }
    }
}

impl fmt::Display for TypeSpecifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ns) = &self.namespace {
            write_identifier(f, ns)?;
            f.write_str(".")?;
        }
        write_identifier(f, &self.name)
    }
}

/// Prints a fully parenthesised FHIRPath form that parses back to the same tree.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Literal(lit) => write!(f, "{lit}"),
            ExprKind::Identifier(name) => write_identifier(f, name),
            ExprKind::Variable(name) => {
                f.write_str("%")?;
                write_identifier(f, name)
            }
            ExprKind::This => f.write_str("$this"),
            ExprKind::Index => f.write_str("$index"),
            ExprKind::Total => f.write_str("$total"),
            ExprKind::Member { base, name } => {
                write!(f, "{base}.")?;
                write_identifier(f, name)
            }
            ExprKind::Function { base, name, args } => {
                if let Some(base) = base {
                    write!(f, "{base}.")?;
                }
                write_identifier(f, name)?;
                f.write_str("(")?;
                for (i, arg) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{arg}")?;
                }
                f.write_str(")")
            }
            ExprKind::Indexer { base, index } => write!(f, "{base}[{index}]"),
            ExprKind::Unary { op, operand } => write!(f, "({}{operand})", op.symbol()),
            ExprKind::Binary { op, lhs, rhs } => write!(f, "({lhs} {} {rhs})", op.symbol()),
            ExprKind::TypeOp {
                op,
                operand,
                type_spec,
            } => write!(f, "({operand} {} {type_spec})", op.symbol()),
        }
    }
}
