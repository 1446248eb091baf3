//! Lexer for FHIRPath (N1 / 2.0.0) expressions.
//!
//! [`tokenize`] turns the whole source into a vector of [`Token`]s ending with
//! [`TokenKind::Eof`]. Whitespace (` `, `\t`, `\r`, `\n`) and comments (`// ...`
//! to end of line, `/* ... */`) are skipped. Words are not classified here:
//! every `[A-Za-z_][A-Za-z0-9_]*` word, keyword or not, is a
//! [`TokenKind::Identifier`], because whether `as`, `is`, `in`, `contains`,
//! `year`, ... are keywords depends on where the parser meets them.
//!
//! Tokens that need no unescaping carry only their span; the parser slices the
//! source for their text. String literals, backtick-delimited identifiers and
//! `%` variables carry their unescaped text, built with one allocation per
//! token (runs of unescaped characters are copied as whole slices).
//!
//! Date/time literals are taken in their lexical shape only (digit counts and
//! separators); whether `@2015-13-45` is a real date is decided later.

use super::ast::Pos;
use thiserror::Error;

/// A syntax error in a FHIRPath expression.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("at {line}:{col}: {message}")]
pub struct ParseError {
    /// Byte offset of the offending position in the source.
    pub pos: Pos,
    /// 1-based line of `pos`.
    pub line: u32,
    /// 1-based column of `pos`, counted in characters.
    pub col: u32,
    /// What went wrong.
    pub message: String,
}

impl ParseError {
    /// Creates an error at byte offset `pos` of `src`, computing its line and column.
    pub fn new(src: &str, pos: Pos, message: impl Into<String>) -> Self {
        let (line, col) = line_col(src, pos);
        ParseError {
            pos,
            line,
            col,
            message: message.into(),
        }
    }
}

/// The 1-based line and column (in characters) of byte offset `pos` in `src`.
///
/// Lines are separated by `\n`. An offset past the end, or inside a multi-byte
/// character, is clamped to the preceding character boundary.
pub fn line_col(src: &str, pos: Pos) -> (u32, u32) {
    let mut end = (pos as usize).min(src.len());
    while !src.is_char_boundary(end) {
        end -= 1;
    }
    let before = src.get(..end).unwrap_or("");
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let col = before.get(line_start..).unwrap_or("").chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(col).unwrap_or(u32::MAX),
    )
}

/// The kinds of FHIRPath tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    /// A plain word `[A-Za-z_][A-Za-z0-9_]*`, including keywords (text is the span).
    Identifier,
    /// A backtick-delimited identifier, escapes resolved.
    DelimitedIdentifier(String),
    /// A single-quoted string literal, escapes resolved.
    String(String),
    /// `[0-9]+('.'[0-9]+)?` (text is the span).
    Number,
    /// `[0-9]+L`, a FHIRPath 2.1 long literal (text is the span, with the `L`).
    Long,
    /// `@` date (text is the span, with the `@`).
    Date,
    /// `@` date-time (text is the span, with the `@`).
    DateTime,
    /// `@T` time (text is the span, with the `@`).
    Time,
    /// `%name`, `` %`name` `` or `%'name'`, carrying the bare name.
    Variable(String),
    /// `$this`.
    This,
    /// `$index`.
    Index,
    /// `$total`.
    Total,
    /// `.`
    Dot,
    /// `,`
    Comma,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `[`
    LBracket,
    /// `]`
    RBracket,
    /// `{`
    LBrace,
    /// `}`
    RBrace,
    /// `+`
    Plus,
    /// `-`
    Minus,
    /// `*`
    Star,
    /// `/`
    Slash,
    /// `&`
    Amp,
    /// `|`
    Pipe,
    /// `<`
    Lt,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `>=`
    Ge,
    /// `=`
    Eq,
    /// `~`
    Tilde,
    /// `!=`
    Ne,
    /// `!~`
    NotTilde,
    /// End of input (always the last token).
    Eof,
}

/// A token with its byte span in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// What the token is.
    pub kind: TokenKind,
    /// Byte offset of the first character.
    pub start: Pos,
    /// Byte offset just past the last character.
    pub end: Pos,
}

/// Splits `src` into tokens, ending with [`TokenKind::Eof`].
///
/// Fails on characters outside the FHIRPath alphabet, unterminated strings,
/// delimited identifiers or block comments, unknown escapes, malformed
/// date/time literals, and sources longer than `u32::MAX` bytes.
pub fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    if u32::try_from(src.len()).is_err() {
        return Err(ParseError::new(src, 0, "expression is too long"));
    }
    let mut lexer = Lexer {
        src,
        bytes: src.as_bytes(),
        i: 0,
    };
    let mut tokens = Vec::with_capacity(src.len() / 3 + 2);
    loop {
        let token = lexer.next_token()?;
        let eof = token.kind == TokenKind::Eof;
        tokens.push(token);
        if eof {
            return Ok(tokens);
        }
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

struct Lexer<'a> {
    src: &'a str,
    bytes: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.i).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<u8> {
        self.bytes.get(self.i + offset).copied()
    }

    fn digit_at(&self, offset: usize) -> bool {
        self.peek_at(offset).is_some_and(|b| b.is_ascii_digit())
    }

    /// Byte offsets always fit: [`tokenize`] rejects longer sources.
    fn pos(offset: usize) -> Pos {
        Pos::try_from(offset).unwrap_or(Pos::MAX)
    }

    fn error(&self, at: usize, message: impl Into<String>) -> ParseError {
        ParseError::new(self.src, Self::pos(at), message)
    }

    fn token(&self, kind: TokenKind, start: usize) -> Token {
        Token {
            kind,
            start: Self::pos(start),
            end: Self::pos(self.i),
        }
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) -> Result<(), ParseError> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r' | b'\n') => self.i += 1,
                Some(b'/') if self.peek_at(1) == Some(b'/') => {
                    self.i += 2;
                    while let Some(b) = self.peek() {
                        if b == b'\n' {
                            break;
                        }
                        self.i += 1;
                    }
                }
                Some(b'/') if self.peek_at(1) == Some(b'*') => {
                    let start = self.i;
                    self.i += 2;
                    loop {
                        match self.peek() {
                            None => return Err(self.error(start, "unterminated comment")),
                            Some(b'*') if self.peek_at(1) == Some(b'/') => {
                                self.i += 2;
                                break;
                            }
                            Some(_) => self.i += 1,
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn next_token(&mut self) -> Result<Token, ParseError> {
        self.skip_trivia()?;
        let start = self.i;
        let Some(b) = self.peek() else {
            return Ok(self.token(TokenKind::Eof, start));
        };
        let two = |lexer: &mut Self, kind: TokenKind| {
            lexer.i += 2;
            Ok(lexer.token(kind, start))
        };
        let one = |lexer: &mut Self, kind: TokenKind| {
            lexer.i += 1;
            Ok(lexer.token(kind, start))
        };
        match b {
            b'.' => one(self, TokenKind::Dot),
            b',' => one(self, TokenKind::Comma),
            b'(' => one(self, TokenKind::LParen),
            b')' => one(self, TokenKind::RParen),
            b'[' => one(self, TokenKind::LBracket),
            b']' => one(self, TokenKind::RBracket),
            b'{' => one(self, TokenKind::LBrace),
            b'}' => one(self, TokenKind::RBrace),
            b'+' => one(self, TokenKind::Plus),
            b'-' => one(self, TokenKind::Minus),
            b'*' => one(self, TokenKind::Star),
            b'/' => one(self, TokenKind::Slash),
            b'&' => one(self, TokenKind::Amp),
            b'|' => one(self, TokenKind::Pipe),
            b'=' => one(self, TokenKind::Eq),
            b'~' => one(self, TokenKind::Tilde),
            b'<' if self.peek_at(1) == Some(b'=') => two(self, TokenKind::Le),
            b'<' => one(self, TokenKind::Lt),
            b'>' if self.peek_at(1) == Some(b'=') => two(self, TokenKind::Ge),
            b'>' => one(self, TokenKind::Gt),
            b'!' if self.peek_at(1) == Some(b'=') => two(self, TokenKind::Ne),
            b'!' if self.peek_at(1) == Some(b'~') => two(self, TokenKind::NotTilde),
            b'\'' => {
                let text = self.quoted(b'\'')?;
                Ok(self.token(TokenKind::String(text), start))
            }
            b'`' => {
                let text = self.delimited_identifier()?;
                Ok(self.token(TokenKind::DelimitedIdentifier(text), start))
            }
            b'%' => self.variable(),
            b'$' => self.special_variable(),
            b'@' => self.date_time(),
            b'0'..=b'9' => Ok(self.number()),
            b if is_ident_start(b) => {
                self.i += 1;
                while self.peek().is_some_and(is_ident_char) {
                    self.i += 1;
                }
                Ok(self.token(TokenKind::Identifier, start))
            }
            _ => {
                let c = self.src.get(start..).and_then(|s| s.chars().next());
                Err(match c {
                    Some(c) => self.error(start, format!("unexpected character {c:?}")),
                    None => self.error(start, "unexpected byte"),
                })
            }
        }
    }

    /// Reads a `quote`-delimited run starting at the opening quote, resolving
    /// escapes, and returns its content.
    fn quoted(&mut self, quote: u8) -> Result<String, ParseError> {
        let start = self.i;
        self.i += 1;
        let mut out = String::new();
        let mut run = self.i;
        loop {
            match self.peek() {
                None => {
                    let what = if quote == b'`' {
                        "unterminated delimited identifier"
                    } else {
                        "unterminated string"
                    };
                    return Err(self.error(start, what));
                }
                Some(b) if b == quote => {
                    out.push_str(self.src.get(run..self.i).unwrap_or(""));
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    out.push_str(self.src.get(run..self.i).unwrap_or(""));
                    self.escape(&mut out)?;
                    run = self.i;
                }
                Some(_) => self.i += 1,
            }
        }
    }

    /// Resolves the escape sequence at the current `\` into `out`.
    fn escape(&mut self, out: &mut String) -> Result<(), ParseError> {
        let start = self.i;
        let simple = match self.peek_at(1) {
            Some(b'\'') => '\'',
            Some(b'"') => '"',
            Some(b'`') => '`',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.i += 2;
                let unit = self.hex4(start)?;
                let c = if (0xD800..0xDC00).contains(&unit) {
                    // A high surrogate must be followed by an escaped low surrogate.
                    if self.peek() != Some(b'\\') || self.peek_at(1) != Some(b'u') {
                        return Err(self.error(start, "unpaired surrogate in \\u escape"));
                    }
                    self.i += 2;
                    let low = self.hex4(start)?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(self.error(start, "unpaired surrogate in \\u escape"));
                    }
                    char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
                } else {
                    char::from_u32(unit)
                };
                return match c {
                    Some(c) => {
                        out.push(c);
                        Ok(())
                    }
                    None => Err(self.error(start, "unpaired surrogate in \\u escape")),
                };
            }
            None => return Err(self.error(start, "unterminated escape sequence")),
            Some(_) => {
                let c = self.src.get(start + 1..).and_then(|s| s.chars().next());
                let shown = c.map_or_else(String::new, |c| c.to_string());
                return Err(self.error(start, format!("unknown escape sequence \\{shown}")));
            }
        };
        out.push(simple);
        self.i += 2;
        Ok(())
    }

    /// Reads exactly four hex digits.
    fn hex4(&mut self, escape_start: usize) -> Result<u32, ParseError> {
        let mut value = 0u32;
        for _ in 0..4 {
            let digit = self.peek().and_then(|b| char::from(b).to_digit(16));
            match digit {
                Some(d) => {
                    value = value * 16 + d;
                    self.i += 1;
                }
                None => {
                    return Err(self.error(escape_start, "\\u escape needs four hex digits"));
                }
            }
        }
        Ok(value)
    }

    fn delimited_identifier(&mut self) -> Result<String, ParseError> {
        let start = self.i;
        let text = self.quoted(b'`')?;
        if text.is_empty() {
            return Err(self.error(start, "empty delimited identifier"));
        }
        Ok(text)
    }

    /// `%identifier`, `` %`identifier` `` or `%'string'`.
    fn variable(&mut self) -> Result<Token, ParseError> {
        let start = self.i;
        self.i += 1;
        let name = match self.peek() {
            Some(b'`') => self.delimited_identifier()?,
            Some(b'\'') => {
                let name = self.quoted(b'\'')?;
                if name.is_empty() {
                    return Err(self.error(start, "empty variable name"));
                }
                name
            }
            Some(b) if is_ident_start(b) => {
                let name_start = self.i;
                while self.peek().is_some_and(is_ident_char) {
                    self.i += 1;
                }
                let name = self.src.get(name_start..self.i).unwrap_or("");
                if super::ast::RESERVED_WORDS.contains(&name) {
                    return Err(self.error(
                        name_start,
                        format!("'{name}' is a reserved word; write %`{name}`"),
                    ));
                }
                name.to_owned()
            }
            _ => return Err(self.error(start, "expected a variable name after '%'")),
        };
        Ok(self.token(TokenKind::Variable(name), start))
    }

    /// `$this`, `$index`, `$total`.
    fn special_variable(&mut self) -> Result<Token, ParseError> {
        let start = self.i;
        self.i += 1;
        while self.peek().is_some_and(is_ident_char) {
            self.i += 1;
        }
        let kind = match self.src.get(start + 1..self.i).unwrap_or("") {
            "this" => TokenKind::This,
            "index" => TokenKind::Index,
            "total" => TokenKind::Total,
            other => {
                return Err(self.error(
                    start,
                    format!(
                        "unknown special variable '${other}' (expected $this, $index or $total)"
                    ),
                ))
            }
        };
        Ok(self.token(kind, start))
    }

    /// `[0-9]+('.'[0-9]+)?`, or `[0-9]+L`.
    fn number(&mut self) -> Token {
        let start = self.i;
        while self.digit_at(0) {
            self.i += 1;
        }
        if self.peek() == Some(b'.') && self.digit_at(1) {
            self.i += 1;
            while self.digit_at(0) {
                self.i += 1;
            }
        } else if self.peek() == Some(b'L') && !self.peek_at(1).is_some_and(is_ident_char) {
            self.i += 1;
            return self.token(TokenKind::Long, start);
        }
        self.token(TokenKind::Number, start)
    }

    /// Consumes exactly `n` digits or fails with `what`.
    fn digits(&mut self, n: usize, literal_start: usize, what: &str) -> Result<(), ParseError> {
        for _ in 0..n {
            if !self.digit_at(0) {
                return Err(self.error(
                    literal_start,
                    format!("malformed date/time literal: expected {n} digits for the {what}"),
                ));
            }
            self.i += 1;
        }
        if self.digit_at(0) {
            return Err(self.error(
                literal_start,
                format!("malformed date/time literal: too many digits in the {what}"),
            ));
        }
        Ok(())
    }

    /// `hh(:mm(:ss(.f+)?)?)?`; a separator followed by a digit commits to the
    /// next component.
    fn time_format(&mut self, start: usize) -> Result<(), ParseError> {
        self.digits(2, start, "hour")?;
        if self.peek() == Some(b':') {
            self.i += 1;
            self.digits(2, start, "minutes")?;
            if self.peek() == Some(b':') {
                self.i += 1;
                self.digits(2, start, "seconds")?;
                if self.peek() == Some(b'.') && self.digit_at(1) {
                    self.i += 1;
                    while self.digit_at(0) {
                        self.i += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a complete `Z` or `(+|-)hh:mm` offset starts at the current byte;
    /// returns its length.
    fn timezone_len(&self) -> Option<usize> {
        match self.peek() {
            Some(b'Z') => Some(1),
            Some(b'+' | b'-')
                if self.digit_at(1)
                    && self.digit_at(2)
                    && self.peek_at(3) == Some(b':')
                    && self.digit_at(4)
                    && self.digit_at(5)
                    && !self.digit_at(6) =>
            {
                Some(6)
            }
            _ => None,
        }
    }

    /// Date, date-time and time literals starting with `@`.
    fn date_time(&mut self) -> Result<Token, ParseError> {
        let start = self.i;
        self.i += 1;
        let kind = if self.peek() == Some(b'T') {
            self.i += 1;
            self.time_format(start)?;
            if self.timezone_len().is_some() {
                return Err(self.error(
                    start,
                    "time literals cannot have a timezone offset (use a date-time)",
                ));
            }
            TokenKind::Time
        } else {
            if !self.digit_at(0) {
                return Err(self.error(
                    start,
                    "malformed date/time literal: expected a year or 'T' after '@'",
                ));
            }
            self.digits(4, start, "year")?;
            if self.peek() == Some(b'-') && self.digit_at(1) {
                self.i += 1;
                self.digits(2, start, "month")?;
                if self.peek() == Some(b'-') && self.digit_at(1) {
                    self.i += 1;
                    self.digits(2, start, "day")?;
                }
            }
            if self.peek() == Some(b'T') {
                self.i += 1;
                if self.digit_at(0) {
                    self.time_format(start)?;
                    if let Some(len) = self.timezone_len() {
                        self.i += len;
                    }
                }
                TokenKind::DateTime
            } else {
                TokenKind::Date
            }
        };
        if self.peek().is_some_and(is_ident_char) {
            return Err(self.error(start, "malformed date/time literal"));
        }
        Ok(self.token(kind, start))
    }
}
