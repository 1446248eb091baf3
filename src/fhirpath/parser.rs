//! Recursive-descent / precedence-climbing parser for FHIRPath (N1 / 2.0.0).
//!
//! [`parse`] tokenizes the whole expression with [`super::lexer::tokenize`] and
//! builds an [`Expr`] tree. Operator precedence, loosest first (all binary
//! operators are left-associative):
//!
//! | level | operators |
//! |-------|-----------|
//! | 1 | `implies` |
//! | 2 | `or` `xor` |
//! | 3 | `and` |
//! | 4 | `in` `contains` |
//! | 5 | `=` `~` `!=` `!~` |
//! | 6 | `<` `>` `<=` `>=` |
//! | 7 | `\|` |
//! | 8 | `is` `as` (followed by a type specifier) |
//! | 9 | `+` `-` `&` |
//! | 10 | `*` `/` `div` `mod` |
//! | 11 | prefix `+` `-` |
//! | 12 | `.` invocation, `[ ]` indexer |
//!
//! so `-5.5.abs()` is `-(5.5.abs())` and `1 > 2 is Boolean` is `1 > (2 is Boolean)`.
//!
//! Words are classified by position: `as`, `is`, `in` and `contains` are
//! operators between operands and identifiers elsewhere (`x.as(T)`,
//! `contains('a')`); `div`, `mod`, `and`, `or`, `xor`, `implies`, `true` and
//! `false` are never identifiers unless backtick-delimited. A number followed by
//! a string is a UCUM quantity (`4.5 'mg'`), a number followed by a calendar
//! keyword ([`CALENDAR_UNITS`]) a calendar quantity (`3 days`).
//!
//! Nesting is bounded by [`MAX_DEPTH`] (both parser recursion and tree depth), so
//! no input can overflow the stack here or in later recursive passes.

use super::ast::{BinaryOp, Expr, ExprKind, Literal, Pos, TypeOp, TypeSpecifier, UnaryOp};
use super::lexer::{tokenize, Token, TokenKind};

pub use super::lexer::{line_col, ParseError};

/// Maximum depth of an expression tree, and of parser recursion (parentheses,
/// arguments, prefix operators); deeper input is a syntax error.
pub const MAX_DEPTH: u32 = 256;

/// Calendar duration keywords that turn a preceding number into a calendar quantity.
pub const CALENDAR_UNITS: [&str; 16] = [
    "year",
    "years",
    "month",
    "months",
    "week",
    "weeks",
    "day",
    "days",
    "hour",
    "hours",
    "minute",
    "minutes",
    "second",
    "seconds",
    "millisecond",
    "milliseconds",
];

/// Parses a complete FHIRPath expression.
///
/// Fails with the position of the first problem on lexical errors, missing or
/// unexpected tokens, leftover input, out-of-range integer literals and
/// nesting deeper than [`MAX_DEPTH`].
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let tokens = tokenize(src)?;
    let eof = tokens.last().cloned().unwrap_or(Token {
        kind: TokenKind::Eof,
        start: 0,
        end: 0,
    });
    let mut parser = Parser {
        src,
        tokens,
        eof,
        i: 0,
        depth: 0,
    };
    let (expr, _) = parser.expression(0).map_err(|e| *e)?;
    let next = parser.peek();
    if next.kind != TokenKind::Eof {
        return Err(*parser.unexpected(next, "expected an operator or end of expression"));
    }
    Ok(*expr)
}

/// An expression together with the depth of its tree. Nodes are born boxed and
/// errors travel boxed, keeping the values moved along the recursive path (and
/// the stack frames of unoptimised builds) small.
type Node = (Box<Expr>, u32);

/// Internal result type; [`parse`] unboxes the error.
type PResult<T> = Result<T, Box<ParseError>>;

/// What an infix token means in operator position.
#[derive(Clone, Copy)]
enum Infix {
    Binary(BinaryOp),
    Type(TypeOp),
}

struct Parser<'a> {
    src: &'a str,
    tokens: Vec<Token>,
    /// Copy of the final `Eof` token, returned when peeking past the end.
    eof: Token,
    i: usize,
    depth: u32,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> &Token {
        self.tokens.get(self.i).unwrap_or(&self.eof)
    }

    fn peek_kind_at(&self, offset: usize) -> &TokenKind {
        self.tokens
            .get(self.i + offset)
            .map_or(&self.eof.kind, |t| &t.kind)
    }

    fn advance(&mut self) {
        if self.i + 1 < self.tokens.len() {
            self.i += 1;
        }
    }

    /// Moves the unescaped text out of the current token (each token is consumed once).
    fn take_text(&mut self) -> String {
        match self.tokens.get_mut(self.i).map(|t| &mut t.kind) {
            Some(
                TokenKind::String(s) | TokenKind::DelimitedIdentifier(s) | TokenKind::Variable(s),
            ) => std::mem::take(s),
            _ => String::new(),
        }
    }

    fn text(&self, token: &Token) -> &'a str {
        self.src
            .get(token.start as usize..token.end as usize)
            .unwrap_or("")
    }

    fn error(&self, pos: Pos, message: impl Into<String>) -> Box<ParseError> {
        Box::new(ParseError::new(self.src, pos, message))
    }

    /// An error at `token` of the form "`expected`, found 'text'".
    fn unexpected(&self, token: &Token, expected: &str) -> Box<ParseError> {
        if token.kind == TokenKind::Eof {
            self.error(token.start, format!("{expected}, found end of input"))
        } else {
            let text = self.text(token);
            self.error(token.start, format!("{expected}, found '{text}'"))
        }
    }

    fn expect(&mut self, kind: TokenKind, expected: &str) -> PResult<()> {
        let token = self.peek();
        if token.kind == kind {
            self.advance();
            Ok(())
        } else {
            Err(self.unexpected(token, expected))
        }
    }

    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(self.peek().start, "expression is nested too deeply"));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn node(&self, kind: ExprKind, pos: Pos, depth: u32) -> PResult<Node> {
        if depth > MAX_DEPTH {
            return Err(self.error(pos, "expression is nested too deeply"));
        }
        Ok((Box::new(Expr { kind, pos }), depth))
    }

    /// The meaning of the current token in operator position, with its binding
    /// power and position, if it binds at least as tightly as `min_power`.
    fn peek_infix(&self, min_power: u8) -> Option<(Infix, u8, Pos)> {
        use BinaryOp as B;
        let token = self.peek();
        let (infix, power) = match token.kind {
            TokenKind::Star => (Infix::Binary(B::Mul), 10),
            TokenKind::Slash => (Infix::Binary(B::Div), 10),
            TokenKind::Plus => (Infix::Binary(B::Add), 9),
            TokenKind::Minus => (Infix::Binary(B::Sub), 9),
            TokenKind::Amp => (Infix::Binary(B::Concat), 9),
            TokenKind::Pipe => (Infix::Binary(B::Union), 7),
            TokenKind::Lt => (Infix::Binary(B::Lt), 6),
            TokenKind::Gt => (Infix::Binary(B::Gt), 6),
            TokenKind::Le => (Infix::Binary(B::Le), 6),
            TokenKind::Ge => (Infix::Binary(B::Ge), 6),
            TokenKind::Eq => (Infix::Binary(B::Eq), 5),
            TokenKind::Tilde => (Infix::Binary(B::Equiv), 5),
            TokenKind::Ne => (Infix::Binary(B::Ne), 5),
            TokenKind::NotTilde => (Infix::Binary(B::NotEquiv), 5),
            TokenKind::Identifier => match self.text(token) {
                "div" => (Infix::Binary(B::IntDiv), 10),
                "mod" => (Infix::Binary(B::Mod), 10),
                "is" => (Infix::Type(TypeOp::Is), 8),
                "as" => (Infix::Type(TypeOp::As), 8),
                "in" => (Infix::Binary(B::In), 4),
                "contains" => (Infix::Binary(B::Contains), 4),
                "and" => (Infix::Binary(B::And), 3),
                "or" => (Infix::Binary(B::Or), 2),
                "xor" => (Infix::Binary(B::Xor), 2),
                "implies" => (Infix::Binary(B::Implies), 1),
                _ => return None,
            },
            _ => return None,
        };
        (power >= min_power).then_some((infix, power, token.start))
    }

    // The functions on the recursive path (`expression`, `unary`, `postfix`,
    // `invocation`, `indexer`, `term`, `identifier_term`, `arguments`) keep their
    // own locals few and delegate the rest, so that unoptimised builds stay
    // well within a 2 MiB thread stack at `MAX_DEPTH`.

    /// Operators binding at least as tightly as `min_power`, left-associatively.
    fn expression(&mut self, min_power: u8) -> PResult<Node> {
        self.enter()?;
        let mut lhs = self.unary()?;
        while let Some((infix, power, pos)) = self.peek_infix(min_power) {
            self.advance();
            lhs = match infix {
                Infix::Type(op) => self.type_operation(lhs, op, pos)?,
                Infix::Binary(op) => {
                    let rhs = self.expression(power + 1)?;
                    self.binary(lhs, op, rhs, pos)?
                }
            };
        }
        self.leave();
        Ok(lhs)
    }

    /// Builds `lhs is/as TypeSpecifier`, reading the type specifier.
    fn type_operation(&mut self, lhs: Node, op: TypeOp, pos: Pos) -> PResult<Node> {
        let type_spec = self.type_specifier(op)?;
        let kind = ExprKind::TypeOp {
            op,
            operand: lhs.0,
            type_spec,
        };
        self.node(kind, pos, lhs.1 + 1)
    }

    /// Builds `lhs op rhs`.
    fn binary(&self, lhs: Node, op: BinaryOp, rhs: Node, pos: Pos) -> PResult<Node> {
        let depth = lhs.1.max(rhs.1) + 1;
        let kind = ExprKind::Binary {
            op,
            lhs: lhs.0,
            rhs: rhs.0,
        };
        self.node(kind, pos, depth)
    }

    /// Prefix `+` / `-`, binding looser than invocation and indexing.
    fn unary(&mut self) -> PResult<Node> {
        let token = self.peek();
        let op = match token.kind {
            TokenKind::Plus => UnaryOp::Plus,
            TokenKind::Minus => UnaryOp::Minus,
            _ => return self.postfix(),
        };
        let pos = token.start;
        self.advance();
        self.enter()?;
        let operand = self.unary()?;
        self.leave();
        let kind = ExprKind::Unary {
            op,
            operand: operand.0,
        };
        self.node(kind, pos, operand.1 + 1)
    }

    /// A term followed by any number of `.invocation` and `[index]` suffixes.
    fn postfix(&mut self) -> PResult<Node> {
        let mut node = self.term()?;
        loop {
            node = match self.peek().kind {
                TokenKind::Dot => self.invocation(node)?,
                TokenKind::LBracket => self.indexer(node)?,
                _ => return Ok(node),
            };
        }
    }

    /// `.name` or `.name(args)` applied to `base`, at the dot.
    fn invocation(&mut self, base: Node) -> PResult<Node> {
        self.advance();
        let pos = self.peek().start;
        let name = self.member_name()?;
        if self.peek().kind != TokenKind::LParen {
            let kind = ExprKind::Member { base: base.0, name };
            return self.node(kind, pos, base.1 + 1);
        }
        let args = self.arguments()?;
        let kind = ExprKind::Function {
            base: Some(base.0),
            name,
            args: args.0,
        };
        self.node(kind, pos, base.1.max(args.1) + 1)
    }

    /// The identifier after a `.`.
    fn member_name(&mut self) -> PResult<String> {
        let token = self.peek();
        if matches!(
            token.kind,
            TokenKind::This | TokenKind::Index | TokenKind::Total
        ) {
            let text = self.text(token);
            return Err(self.error(token.start, format!("'{text}' cannot follow '.'")));
        }
        self.identifier("expected a member or function name after '.'")
    }

    /// `[index]` applied to `base`, at the bracket.
    fn indexer(&mut self, base: Node) -> PResult<Node> {
        let pos = self.peek().start;
        self.advance();
        let index = self.expression(0)?;
        self.expect(TokenKind::RBracket, "expected ']'")?;
        let depth = base.1.max(index.1) + 1;
        let kind = ExprKind::Indexer {
            base: base.0,
            index: index.0,
        };
        self.node(kind, pos, depth)
    }

    /// Consumes an identifier (plain but not reserved, or delimited) and returns its name.
    fn identifier(&mut self, expected: &str) -> PResult<String> {
        let token = self.peek();
        match token.kind {
            TokenKind::Identifier => {
                let text = self.text(token);
                if super::ast::RESERVED_WORDS.contains(&text) {
                    return Err(self.error(
                        token.start,
                        format!("{expected}, found reserved word '{text}' (quote it as `{text}` to use it as a name)"),
                    ));
                }
                self.advance();
                Ok(text.to_owned())
            }
            TokenKind::DelimitedIdentifier(_) => {
                let name = self.take_text();
                self.advance();
                Ok(name)
            }
            _ => Err(self.unexpected(token, expected)),
        }
    }

    /// `( expression (, expression)* )` or `()`, at the opening parenthesis;
    /// returns the arguments and their greatest depth.
    fn arguments(&mut self) -> PResult<(Vec<Expr>, u32)> {
        self.advance();
        let mut args = (Vec::new(), 0);
        if self.peek().kind == TokenKind::RParen {
            self.advance();
            return Ok(args);
        }
        loop {
            let arg = self.expression(0)?;
            args.1 = args.1.max(arg.1);
            args.0.push(*arg.0);
            if !self.argument_separator()? {
                return Ok(args);
            }
        }
    }

    /// Consumes `,` (returning `true`) or `)` (returning `false`) after an argument.
    fn argument_separator(&mut self) -> PResult<bool> {
        let token = self.peek();
        let more = match token.kind {
            TokenKind::Comma => true,
            TokenKind::RParen => false,
            _ => return Err(self.unexpected(token, "expected ',' or ')' in argument list")),
        };
        self.advance();
        Ok(more)
    }

    /// `identifier ('.' identifier)?` after `is` / `as`.
    fn type_specifier(&mut self, op: TypeOp) -> PResult<TypeSpecifier> {
        let expected = format!("expected a type name after '{}'", op.symbol());
        let first = self.identifier(&expected)?;
        if self.peek().kind != TokenKind::Dot
            || !matches!(
                self.peek_kind_at(1),
                TokenKind::Identifier | TokenKind::DelimitedIdentifier(_)
            )
        {
            return Ok(TypeSpecifier {
                namespace: None,
                name: first,
            });
        }
        self.advance();
        let name = self.identifier(&expected)?;
        if self.peek().kind == TokenKind::Dot {
            return Err(self.error(
                self.peek().start,
                "a type specifier has at most one namespace qualifier \
                 (parenthesise the type expression to navigate from it)",
            ));
        }
        Ok(TypeSpecifier {
            namespace: Some(first),
            name,
        })
    }

    /// Parenthesised expressions, identifiers and function calls, or an [`Self::atom`].
    fn term(&mut self) -> PResult<Node> {
        match self.peek().kind {
            TokenKind::LParen => {
                self.advance();
                let node = self.expression(0)?;
                self.expect(TokenKind::RParen, "expected ')'")?;
                Ok(node)
            }
            TokenKind::Identifier if !self.at_reserved() => self.identifier_term(),
            TokenKind::DelimitedIdentifier(_) => self.identifier_term(),
            _ => self.atom(),
        }
    }

    /// Whether the current token is a reserved word (an operator keyword, `true` or `false`).
    fn at_reserved(&self) -> bool {
        let token = self.peek();
        token.kind == TokenKind::Identifier
            && super::ast::RESERVED_WORDS.contains(&self.text(token))
    }

    /// An identifier term, or a bare function call `name(args)`.
    fn identifier_term(&mut self) -> PResult<Node> {
        let pos = self.peek().start;
        let name = self.identifier("expected an expression")?;
        if self.peek().kind != TokenKind::LParen {
            return self.node(ExprKind::Identifier(name), pos, 1);
        }
        let args = self.arguments()?;
        let kind = ExprKind::Function {
            base: None,
            name,
            args: args.0,
        };
        self.node(kind, pos, args.1 + 1)
    }

    /// Literals and variables: the terms that contain no sub-expression.
    fn atom(&mut self) -> PResult<Node> {
        let token = self.peek();
        let pos = token.start;
        let kind = match &token.kind {
            TokenKind::LBrace => {
                self.advance();
                self.expect(
                    TokenKind::RBrace,
                    "expected '}' (only the empty collection '{}' can be written with braces)",
                )?;
                return self.node(ExprKind::Literal(Literal::Empty), pos, 1);
            }
            TokenKind::Number => return self.number(),
            TokenKind::String(_) => ExprKind::Literal(Literal::String(self.take_text())),
            TokenKind::Long => {
                let text = self.text(token);
                let digits = text.strip_suffix('L').unwrap_or(text);
                let value = digits
                    .parse::<i64>()
                    .map_err(|_| self.error(pos, format!("long literal {text} is out of range")))?;
                ExprKind::Literal(Literal::Long(value))
            }
            TokenKind::Date | TokenKind::DateTime | TokenKind::Time => {
                let text = self.text(token);
                let text = text.strip_prefix('@').unwrap_or(text).to_owned();
                ExprKind::Literal(match token.kind {
                    TokenKind::Date => Literal::Date(text),
                    TokenKind::DateTime => Literal::DateTime(text),
                    _ => Literal::Time(text),
                })
            }
            TokenKind::Variable(_) => ExprKind::Variable(self.take_text()),
            TokenKind::This => ExprKind::This,
            TokenKind::Index => ExprKind::Index,
            TokenKind::Total => ExprKind::Total,
            TokenKind::Identifier if matches!(self.text(token), "true" | "false") => {
                ExprKind::Literal(Literal::Boolean(self.text(token) == "true"))
            }
            _ => return Err(self.unexpected(token, "expected an expression")),
        };
        self.advance();
        self.node(kind, pos, 1)
    }

    /// A number, possibly followed by a unit making it a quantity.
    fn number(&mut self) -> PResult<Node> {
        let token = self.peek();
        let pos = token.start;
        let text = self.text(token);
        self.advance();
        let next = self.peek();
        let lit = match &next.kind {
            TokenKind::String(_) => {
                let value = text.to_owned();
                let unit = self.take_text();
                self.advance();
                Literal::Quantity {
                    value,
                    unit,
                    calendar: false,
                }
            }
            TokenKind::Identifier if CALENDAR_UNITS.contains(&self.text(next)) => {
                let value = text.to_owned();
                let unit = self.text(next).to_owned();
                self.advance();
                Literal::Quantity {
                    value,
                    unit,
                    calendar: true,
                }
            }
            _ if text.contains('.') => Literal::Decimal(text.to_owned()),
            _ => match text.parse::<i64>() {
                Ok(value) => Literal::Integer(value),
                Err(_) => {
                    return Err(self.error(pos, format!("integer literal {text} is out of range")))
                }
            },
        };
        self.node(ExprKind::Literal(lit), pos, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `src` and compares its fully parenthesised form with `expected`.
    #[track_caller]
    fn check(src: &str, expected: &str) {
        match parse(src) {
            Ok(expr) => assert_eq!(expr.to_string(), expected, "source: {src}"),
            Err(e) => panic!("{src:?} failed to parse: {e}"),
        }
    }

    /// Asserts that `src` fails to parse with a message containing `fragment`.
    #[track_caller]
    fn fails(src: &str, fragment: &str) -> ParseError {
        match parse(src) {
            Ok(expr) => panic!("{src:?} parsed unexpectedly as {expr}"),
            Err(e) => {
                assert!(
                    e.to_string().contains(fragment),
                    "{src:?}: error {e} does not mention {fragment:?}"
                );
                e
            }
        }
    }

    #[test]
    fn arithmetic_precedence() {
        check("1 + 2 * 3", "(1 + (2 * 3))");
        check("1 * 2 + 3", "((1 * 2) + 3)");
        check("1 - 2 - 3", "((1 - 2) - 3)");
        check("8 / 4 / 2", "((8 / 4) / 2)");
        check("7 div 2 mod 3 * 4", "(((7 div 2) mod 3) * 4)");
        check("'a' & 'b' + 'c'", "(('a' & 'b') + 'c')");
        check("(1 + 2) * 3", "((1 + 2) * 3)");
        check("2+2", "(2 + 2)");
    }

    #[test]
    fn comparison_and_logic_precedence() {
        check("a | b = c", "((a | b) = c)");
        check("a < b = c > d", "((a < b) = (c > d))");
        check("a = b and c != d", "((a = b) and (c != d))");
        check("a ~ b or c !~ d", "((a ~ b) or (c !~ d))");
        check("a in b and c contains d", "((a in b) and (c contains d))");
        check("a and b or c xor d", "(((a and b) or c) xor d)");
        check("a or b and c", "(a or (b and c))");
        check("a implies b or c", "(a implies (b or c))");
        check("a implies b implies c", "((a implies b) implies c)");
        check("a <= b | c", "(a <= (b | c))");
        check("a >= b + 1", "(a >= (b + 1))");
        check("1 | 2 | 3", "((1 | 2) | 3)");
        check("a = b = c", "((a = b) = c)");
        check("x in y = z", "(x in (y = z))");
    }

    #[test]
    fn type_operators() {
        check("1 > 2 is Boolean", "(1 > (2 is Boolean))");
        check("1 + 2 is Integer", "((1 + 2) is Integer)");
        check("a | b as String", "(a | (b as String))");
        check("true is System.Boolean", "(true is System.Boolean)");
        check("x as FHIR.`Patient`", "(x as FHIR.Patient)");
        check("x is T is U", "((x is T) is U)");
        check("(1 | 1 is Integer).count()", "(1 | (1 is Integer)).count()");
        check(
            "(Observation.value as Quantity).unit",
            "(Observation.value as Quantity).unit",
        );
        check(
            "Patient.name.as(HumanName).use",
            "Patient.name.as(HumanName).use",
        );
        check("x.is(FHIR.Patient)", "x.is(FHIR.Patient)");
        check("x is as", "(x is as)");
        let e = parse("a as FHIR.Quantity").unwrap();
        let ExprKind::TypeOp { type_spec, op, .. } = e.kind else {
            panic!("not a type op")
        };
        assert_eq!(op, TypeOp::As);
        assert_eq!(type_spec.namespace.as_deref(), Some("FHIR"));
        assert_eq!(type_spec.name, "Quantity");
        fails("x is", "expected a type name after 'is'");
        fails("x as 1", "expected a type name after 'as'");
        fails("x is A.B.C", "at most one namespace");
        fails("x is and", "reserved word");
    }

    #[test]
    fn unary_binds_looser_than_invocation() {
        check("-5.5.abs()", "(-5.5.abs())");
        check("-1.convertsToInteger()", "(-1.convertsToInteger())");
        check("-x.y[0]", "(-x.y[0])");
        check("-2 * 3", "((-2) * 3)");
        check("2 * -3", "(2 * (-3))");
        check("1 - -1", "(1 - (-1))");
        check("--1", "(-(-1))");
        check("+1", "(+1)");
        check("-(1 + 2)", "(-(1 + 2))");
        check("(1|2).sort(-$this)", "(1 | 2).sort((-$this))");
        let e = parse("-5").unwrap();
        assert!(matches!(
            e.kind,
            ExprKind::Unary {
                op: UnaryOp::Minus,
                ..
            }
        ));
    }

    #[test]
    fn invocations_and_indexers() {
        check("Patient.name.given", "Patient.name.given");
        check("name.given[0].length()", "name.given[0].length()");
        check("a[b[1]][2 + 3]", "a[b[1]][(2 + 3)]");
        check("where(use = 'x')", "where((use = 'x'))");
        check("iif(a, b, c).d", "iif(a, b, c).d");
        check("x.f( )", "x.f()");
        check("`Patient`.name.`given`", "Patient.name.given");
        check("`div`.`true`", "`div`.`true`");
        check("x.contains('a')", "x.contains('a')");
        check("contains('a') and in.is", "(contains('a') and in.is)");
        check("1.toString()", "1.toString()");
        check("1.5.toString()", "1.5.toString()");
        check("{}.exists()", "{}.exists()");
        check("Patient.day + 1 days", "(Patient.day + 1 days)");
        fails("x.", "expected a member or function name after '.'");
        fails("x.1", "expected a member or function name after '.'");
        fails("x.and", "reserved word");
        fails("x.$this", "cannot follow '.'");
        fails("f(1,)", "expected an expression");
        fails("f(1 2)", "expected ',' or ')'");
        fails("x[1", "expected ']'");
        fails("x[]", "expected an expression");
    }

    #[test]
    fn literals() {
        check("{}", "{}");
        check("true and false", "(true and false)");
        check("'it\\'s'", "'it\\'s'");
        check("007", "7");
        check("1.50", "1.50");
        check("9223372036854775807", "9223372036854775807");
        check("12L", "12L");
        check("4.5 'mg'", "4.5 'mg'");
        check("4 'mg'.value", "4 'mg'.value");
        check("3 days", "3 days");
        check("1 'year'", "1 'year'");
        check("@2015-02-04 + 1 year", "(@2015-02-04 + 1 year)");
        check("-5 'mg'", "(-5 'mg')");
        check("5days", "5 days");
        let lit = |src: &str| match parse(src).map(|e| e.kind) {
            Ok(ExprKind::Literal(l)) => l,
            other => panic!("{src}: {other:?}"),
        };
        assert_eq!(lit("1.0"), Literal::Decimal("1.0".into()));
        assert_eq!(lit("42"), Literal::Integer(42));
        assert_eq!(
            lit("3 weeks"),
            Literal::Quantity {
                value: "3".into(),
                unit: "weeks".into(),
                calendar: true
            }
        );
        assert_eq!(
            lit("2.50 'mm[Hg]'"),
            Literal::Quantity {
                value: "2.50".into(),
                unit: "mm[Hg]".into(),
                calendar: false
            }
        );
        fails("9223372036854775808", "out of range");
        fails("99999999999999999999L", "out of range");
        fails("{1}", "expected '}'");
        fails("1 foo", "expected an operator or end of expression");
        fails("1.5L", "found 'L'");
    }

    #[test]
    fn strings_and_escapes() {
        let string = |src: &str| match parse(src).map(|e| e.kind) {
            Ok(ExprKind::Literal(Literal::String(s))) => s,
            other => panic!("{src}: {other:?}"),
        };
        assert_eq!(
            string(r#"'\\\/\f\r\n\t\"\`\'\u002a'"#),
            "\\/\u{c}\r\n\t\"`'*"
        );
        assert_eq!(string("'\\uD83D\\uDE00 ok'"), "\u{1F600} ok");
        assert_eq!(string("'héllo wörld'"), "héllo wörld");
        assert_eq!(string("''"), "");
        assert_eq!(string("'a\nb'"), "a\nb");
        fails("'abc", "unterminated string");
        fails("'\\q'", "unknown escape sequence \\q");
        fails("'\\u12'", "four hex digits");
        fails("'\\uD800'", "unpaired surrogate");
        fails("'\\", "unterminated escape");
        fails("`abc", "unterminated delimited identifier");
        fails("``", "empty delimited identifier");
        check("`a\\`b`.c", "`a\\`b`.c");
        check("`given name`", "`given name`");
    }

    #[test]
    fn variables() {
        check("%ucum", "%ucum");
        check("%`vs-administrative-gender`", "%`vs-administrative-gender`");
        check("%'ext-x'", "%`ext-x`");
        check("$this.given", "$this.given");
        check("$index + $total", "($index + $total)");
        assert_eq!(
            parse("%'a b'").map(|e| e.kind),
            Ok(ExprKind::Variable("a b".into()))
        );
        fails("%", "expected a variable name");
        fails("%and", "reserved word");
        fails("$foo", "unknown special variable");
        fails("$", "unknown special variable");
    }

    #[test]
    fn date_time_literals() {
        let lit = |src: &str| match parse(src).map(|e| e.kind) {
            Ok(ExprKind::Literal(l)) => l,
            other => panic!("{src}: {other:?}"),
        };
        assert_eq!(lit("@2015"), Literal::Date("2015".into()));
        assert_eq!(lit("@2015-02"), Literal::Date("2015-02".into()));
        assert_eq!(lit("@2015-02-04"), Literal::Date("2015-02-04".into()));
        assert_eq!(lit("@2015T"), Literal::DateTime("2015T".into()));
        assert_eq!(lit("@2015-02T"), Literal::DateTime("2015-02T".into()));
        assert_eq!(
            lit("@2015-02-04T14"),
            Literal::DateTime("2015-02-04T14".into())
        );
        assert_eq!(
            lit("@2015-02-04T14:34:28.123+09:00"),
            Literal::DateTime("2015-02-04T14:34:28.123+09:00".into())
        );
        assert_eq!(
            lit("@2015-02-04T14:34:28Z"),
            Literal::DateTime("2015-02-04T14:34:28Z".into())
        );
        assert_eq!(lit("@T14"), Literal::Time("T14".into()));
        assert_eq!(lit("@T14:34:28.5"), Literal::Time("T14:34:28.5".into()));
        check("@2015-02-04T.is(DateTime)", "@2015-02-04T.is(DateTime)");
        check("@T10:30.is(Time)", "@T10:30.is(Time)");
        check(
            "@2014-01-05T10:30:00.000.hour()",
            "@2014-01-05T10:30:00.000.hour()",
        );
        check("@2015-02-04-1", "(@2015-02-04 - 1)");
        check("@2015-02-04T10:00+1", "(@2015-02-04T10:00 + 1)");
        check("@2015 - 1 'a'", "(@2015 - 1 'a')");
        fails("@2015-0", "expected 2 digits for the month");
        fails("@2015-02-4", "expected 2 digits for the day");
        fails("@201", "expected 4 digits for the year");
        fails("@20155", "too many digits in the year");
        fails("@", "expected a year or 'T'");
        fails("@x", "expected a year or 'T'");
        fails("@2015-02-04T14:", "expected 2 digits for the minutes");
        fails("@T1", "expected 2 digits for the hour");
        fails("@T14:34:28Z", "cannot have a timezone");
        fails("@T14:34:28+10:00", "cannot have a timezone");
        fails("@2015-02-04Tx", "malformed date/time literal");
        fails(
            "@2015-02-04T14:34:28.",
            "expected a member or function name",
        );
    }

    #[test]
    fn comments_and_whitespace() {
        check("2 + 2 // comment + 4", "(2 + 2)");
        check("// line\n  // another\n  2+2", "(2 + 2)");
        check("2 + /* inline $@%^+ * */ 2 = 4", "((2 + 2) = 4)");
        check("2 + 2 \n /* multi\nline */\n+2", "((2 + 2) + 2)");
        check(" \t\r\n a \n", "a");
        fails("2 + 2 /* not finished", "unterminated comment");
    }

    #[test]
    fn syntax_errors_with_positions() {
        let e = fails("2 + 2 /", "expected an expression, found end of input");
        assert_eq!((e.pos, e.line, e.col), (7, 1, 8));
        let e = fails("(1 + 2", "expected ')'");
        assert_eq!(e.pos, 6);
        let e = fails(
            "1 + 2)",
            "expected an operator or end of expression, found ')'",
        );
        assert_eq!(
            e.to_string(),
            "at 1:6: expected an operator or end of expression, found ')'"
        );
        let e = fails("a and\n  or b", "expected an expression, found 'or'");
        assert_eq!((e.line, e.col), (2, 3));
        fails("", "expected an expression, found end of input");
        fails("   ", "found end of input");
        fails("a b", "found 'b'");
        fails("a ! b", "unexpected character '!'");
        fails("a == b", "expected an expression, found '='");
        fails("é", "unexpected character 'é'");
        fails("'x' # 'y'", "unexpected character '#'");
        fails("div", "expected an expression, found 'div'");
        fails("true()", "found '('");
        fails("f(", "found end of input");
        fails("()", "expected an expression, found ')'");
        assert_eq!(line_col("ab\ncé\nx", 6), (2, 3));
        assert_eq!(line_col("ab\ncé\nx", 7), (3, 1));
        assert_eq!(line_col("ab\ncé\nx", 5), (2, 2));
        assert_eq!(line_col("ab", 99), (1, 3));
    }

    #[test]
    fn positions() {
        let e = parse("a.b + c[0]").unwrap();
        assert_eq!(e.pos, 4);
        let ExprKind::Binary { lhs, rhs, .. } = e.kind else {
            panic!()
        };
        assert_eq!(lhs.pos, 2);
        assert_eq!(rhs.pos, 7);
        let ExprKind::Member { base, .. } = lhs.kind else {
            panic!()
        };
        assert_eq!(base.pos, 0);
    }

    #[test]
    fn nesting_limit() {
        let ok = format!("{}1{}", "(".repeat(200), ")".repeat(200));
        check(&ok, "1");
        let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        fails(&deep, "nested too deeply");
        fails(&"-".repeat(100_000), "nested too deeply");
        let chain = vec!["1"; 100_000].join("+");
        fails(&chain, "nested too deeply");
        let path = vec!["a"; 100_000].join(".");
        fails(&path, "nested too deeply");
        let args = format!("{}1{}", "f(".repeat(100_000), ")".repeat(100_000));
        fails(&args, "nested too deeply");
        let chain = vec!["1"; 200].join(" or ");
        assert!(parse(&chain).is_ok());
    }

    #[test]
    fn nesting_at_the_limit_fits_a_small_stack() {
        // Unoptimised builds need about 640 KiB at MAX_DEPTH; leave headroom.
        let worker = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(|| {
                for (open, close) in [("(", ")"), ("f(", ")"), ("a[", "]"), ("-(", ")")] {
                    for n in [120, 250, 300] {
                        let src = format!("{}1{}", open.repeat(n), close.repeat(n));
                        // `-(` costs two levels (prefix operator and parentheses).
                        let levels = if open == "-(" { 2 * n } else { n };
                        let expect_ok = levels < MAX_DEPTH as usize;
                        assert_eq!(parse(&src).is_ok(), expect_ok, "{open} x {n}");
                    }
                }
            })
            .expect("spawn");
        assert!(worker.join().is_ok());
    }

    /// Every prefix and byte-level mutation of `src` must parse or fail, never panic.
    fn no_panic_on_variants(src: &str) {
        for (i, _) in src.char_indices() {
            let _ = parse(&src[..i]);
            let _ = parse(&src[i..]);
        }
        for replacement in ["(", ")", "'", "`", "@", ".", "-", "/*", "\\", "%", "é"] {
            for (i, _) in src.char_indices().step_by(3) {
                let mutated = format!("{}{replacement}{}", &src[..i], &src[i..]);
                let _ = parse(&mutated);
            }
        }
    }

    fn load_suite() -> Vec<(String, String, Option<String>)> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/conformance/fhirpath/tests-fhir-r4.json"
        );
        let text = std::fs::read_to_string(path).expect("conformance suite present");
        let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let mut out = Vec::new();
        for group in json["groups"].as_array().expect("groups") {
            for test in group["tests"].as_array().expect("tests") {
                out.push((
                    test["name"].as_str().unwrap_or("?").to_owned(),
                    test["expression"].as_str().expect("expression").to_owned(),
                    test["expression_invalid"].as_str().map(str::to_owned),
                ));
            }
        }
        out
    }

    #[test]
    fn hl7_r4_suite() {
        let suite = load_suite();
        let (mut parsed, mut valid_total, mut syntax_total) = (0, 0, 0);
        let mut failures = Vec::new();
        let mut other_invalid_parsed = 0;
        let mut other_invalid_total = 0;
        for (name, expr, invalid) in &suite {
            let result = parse(expr);
            if let Ok(ast) = &result {
                parsed += 1;
                // The printed form must parse back to the same tree.
                let printed = ast.to_string();
                match parse(&printed) {
                    Ok(again) => assert_eq!(again.to_string(), printed, "{name}: {expr}"),
                    Err(e) => panic!("{name}: reprint {printed:?} failed: {e}"),
                }
            }
            match (invalid.as_deref(), &result) {
                (None, Ok(_)) => valid_total += 1,
                (None, Err(e)) => {
                    valid_total += 1;
                    failures.push(format!("{name}: {expr:?} should parse: {e}"));
                }
                (Some("syntax"), Ok(ast)) => {
                    syntax_total += 1;
                    failures.push(format!("{name}: {expr:?} should fail, got {ast}"));
                }
                (Some("syntax"), Err(_)) => syntax_total += 1,
                (Some(_), r) => {
                    other_invalid_total += 1;
                    other_invalid_parsed += usize::from(r.is_ok());
                }
            }
        }
        println!(
            "HL7 R4 suite: {parsed}/{} expressions parse; valid {}/{valid_total}; \
             syntax-invalid rejected {}/{syntax_total}; semantic/execution-invalid \
             parsed {other_invalid_parsed}/{other_invalid_total}",
            suite.len(),
            valid_total
                - failures
                    .iter()
                    .filter(|f| f.contains("should parse"))
                    .count(),
            syntax_total
                - failures
                    .iter()
                    .filter(|f| f.contains("should fail"))
                    .count(),
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn no_panics_on_mangled_suite_expressions() {
        for (_, expr, _) in load_suite() {
            no_panic_on_variants(&expr);
        }
        // Pseudo-random strings over the FHIRPath alphabet.
        let alphabet: Vec<char> = "ab1.0()[]{}'`\\@T:-+Z%$,/*|&<>=!~ \nu9éLdiv"
            .chars()
            .collect();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut s = String::new();
            for _ in 0..(state % 24) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            state = state.wrapping_add(0x2545_F491_4F6C_DD1D);
            let _ = parse(&s);
        }
    }
}
