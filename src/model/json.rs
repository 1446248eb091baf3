//! A small, strict JSON reader and writer, the bottom layer of the element model.
//!
//! FHIR needs things general-purpose JSON libraries do not give together: the exact text of
//! every number (`1.50` must stay `1.50`), byte offsets of every value for `line:column`
//! messages, refusal of duplicate keys, and a nesting limit. [`Cursor`] is a pull reader the
//! typed parser in [`super::parse`] drives directly, so no intermediate tree is built; [`Json`]
//! is a generic tree on top of it for code (and tests) that want untyped JSON with exact
//! numbers. [`write_str`] writes a JSON string literal.

use std::borrow::Cow;

/// A JSON syntax error at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    /// Byte offset in the input where the problem was found.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

/// The kind of the next JSON value, as seen from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// `{`
    Object,
    /// `[`
    Array,
    /// `"`
    String,
    /// `-` or a digit
    Number,
    /// `true` or `false`
    Bool,
    /// `null`
    Null,
    /// End of input.
    End,
    /// Anything else: a syntax error at this point.
    Invalid,
}

/// A pull reader over JSON text that tracks its byte offset.
#[derive(Clone)]
pub struct Cursor<'a> {
    src: &'a [u8],
    text: &'a str,
    pos: usize,
    comments: bool,
}

impl<'a> Cursor<'a> {
    /// Starts reading `text` at its beginning (a UTF-8 byte-order mark is skipped).
    pub fn new(text: &'a str) -> Self {
        let pos = if text.starts_with('\u{feff}') { 3 } else { 0 };
        Cursor {
            src: text.as_bytes(),
            text,
            pos,
            comments: false,
        }
    }

    /// Also accepts `//` and `/* */` comments where white space may stand. FHIR JSON has no
    /// comments; this is for hand-written files whose authors ask for it.
    pub fn allow_comments(mut self) -> Self {
        self.comments = true;
        self
    }

    /// The current byte offset.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// An error at the current offset.
    pub fn error(&self, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            offset: self.pos,
            message: message.into(),
        }
    }

    /// Skips white space and tells the kind of the next value.
    pub fn peek(&mut self) -> Peek {
        self.skip_ws();
        match self.src.get(self.pos) {
            None => Peek::End,
            Some(b'{') => Peek::Object,
            Some(b'[') => Peek::Array,
            Some(b'"') => Peek::String,
            Some(b'-' | b'0'..=b'9') => Peek::Number,
            Some(b't' | b'f') => Peek::Bool,
            Some(b'n') => Peek::Null,
            Some(_) => Peek::Invalid,
        }
    }

    #[inline(always)]
    fn skip_ws(&mut self) {
        // Most tokens follow one another directly (a value after `:` and a space is the
        // exception): nothing to skip, decided without a call.
        if let Some(&b) = self.src.get(self.pos) {
            if b > b' ' && b != b'/' {
                return;
            }
        }
        self.skip_ws_run();
    }

    /// The white space (and comments, when allowed) at the current offset.
    #[inline(never)]
    fn skip_ws_run(&mut self) {
        loop {
            // Line breaks, then indentation in runs of spaces: eight bytes at a time, the
            // leading spaces of a word being its low bytes that equal a space.
            while let Some(b'\n' | b'\r' | b'\t') = self.src.get(self.pos) {
                self.pos += 1;
            }
            while let Some(w) = self
                .src
                .get(self.pos..self.pos + 8)
                .and_then(|w| <[u8; 8]>::try_from(w).ok())
            {
                let x = u64::from_le_bytes(w) ^ u64::from_le_bytes(*b"        ");
                if x != 0 {
                    self.pos += (x.trailing_zeros() / 8) as usize;
                    break;
                }
                self.pos += 8;
            }
            if let Some(b' ' | b'\n' | b'\r' | b'\t') = self.src.get(self.pos) {
                self.pos += 1;
                continue;
            }
            if !self.comments || self.src.get(self.pos) != Some(&b'/') {
                return;
            }
            let rest = &self.text[self.pos..];
            let skip = if rest.starts_with("//") {
                rest.find('\n').unwrap_or(rest.len())
            } else if let Some(body) = rest.strip_prefix("/*") {
                match body.find("*/") {
                    Some(end) => end + 4,
                    None => return,
                }
            } else {
                return;
            };
            self.pos += skip;
        }
    }

    /// Consumes `byte` after optional white space.
    ///
    /// # Errors
    /// When the next byte is something else.
    #[inline(always)]
    pub fn expect(&mut self, byte: u8) -> Result<(), SyntaxError> {
        self.skip_ws();
        if self.src.get(self.pos) == Some(&byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{}'", byte as char)))
        }
    }

    fn unexpected(&self, wanted: &str) -> SyntaxError {
        match self.text.get(self.pos..).and_then(|s| s.chars().next()) {
            None => self.error(format!("unexpected end of input, expected {wanted}")),
            Some(c) => self.error(format!("unexpected character '{c}', expected {wanted}")),
        }
    }

    /// Consumes `b` if it comes next (after white space); tells whether it did.
    #[inline(always)]
    pub fn eat(&mut self, b: u8) -> bool {
        self.skip_ws();
        if self.src.get(self.pos) == Some(&b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Starts an object: consumes `{` and tells whether the object is empty (then also
    /// consumes `}`).
    ///
    /// # Errors
    /// When no object starts here.
    pub fn begin_object(&mut self) -> Result<bool, SyntaxError> {
        self.expect(b'{')?;
        Ok(self.eat(b'}'))
    }

    /// Reads the next key of an object, or `None` at its end. Call after [`Cursor::begin_object`]
    /// returned `false`, and after each value.
    ///
    /// # Errors
    /// On a syntax error.
    pub fn next_key(&mut self, first: bool) -> Result<Option<(Cow<'a, str>, usize)>, SyntaxError> {
        if !first {
            self.skip_ws();
            match self.src.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(None);
                }
                _ => return Err(self.unexpected("',' or '}'")),
            }
        }
        self.skip_ws();
        if self.src.get(self.pos) != Some(&b'"') {
            return Err(self.unexpected("a property name in double quotes"));
        }
        let at = self.pos;
        let key = self.string()?;
        self.expect(b':')?;
        Ok(Some((key, at)))
    }

    /// Starts an array: consumes `[` and tells whether it is empty (then also consumes `]`).
    ///
    /// # Errors
    /// When no array starts here.
    pub fn begin_array(&mut self) -> Result<bool, SyntaxError> {
        self.expect(b'[')?;
        Ok(self.eat(b']'))
    }

    /// After an array item: consumes `,` (returns `true`, another item follows) or `]`.
    ///
    /// # Errors
    /// On anything else.
    pub fn array_next(&mut self) -> Result<bool, SyntaxError> {
        self.skip_ws();
        match self.src.get(self.pos) {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(b']') => {
                self.pos += 1;
                Ok(false)
            }
            _ => Err(self.unexpected("',' or ']'")),
        }
    }

    /// Reads a string value, unescaped; borrowed when it has no escapes.
    ///
    /// # Errors
    /// On a malformed string.
    pub fn string(&mut self) -> Result<Cow<'a, str>, SyntaxError> {
        self.expect(b'"')?;
        let start = self.pos;
        // Fast path: scan to the closing quote; bail to the slow path at the first escape.
        self.pos += self.src.get(start..).map_or(0, plain_prefix);
        loop {
            match self.src.get(self.pos) {
                Some(b'"') => {
                    let s = &self.text[start..self.pos];
                    self.pos += 1;
                    return Ok(Cow::Borrowed(s));
                }
                Some(b'\\') => break,
                Some(c) if *c < 0x20 => {
                    return Err(self.error("control character in string (must be escaped)"))
                }
                Some(_) => self.pos += 1,
                None => return Err(self.error("unterminated string")),
            }
        }
        let mut out = String::with_capacity(self.pos - start + 16);
        out.push_str(&self.text[start..self.pos]);
        loop {
            let run = self.pos;
            while let Some(&c) = self.src.get(self.pos) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.text[run..self.pos]);
            match self.src.get(self.pos) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(&mut out)?;
                }
                Some(_) => return Err(self.error("control character in string (must be escaped)")),
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), SyntaxError> {
        let c = self.src.get(self.pos).copied();
        self.pos += 1;
        match c {
            Some(b'"') => out.push('"'),
            Some(b'\\') => out.push('\\'),
            Some(b'/') => out.push('/'),
            Some(b'b') => out.push('\u{8}'),
            Some(b'f') => out.push('\u{c}'),
            Some(b'n') => out.push('\n'),
            Some(b'r') => out.push('\r'),
            Some(b't') => out.push('\t'),
            Some(b'u') => {
                let hi = self.hex4()?;
                let ch = if (0xD800..0xDC00).contains(&hi) {
                    if self.src.get(self.pos) != Some(&b'\\')
                        || self.src.get(self.pos + 1) != Some(&b'u')
                    {
                        return Err(self.error("unpaired surrogate in \\u escape"));
                    }
                    self.pos += 2;
                    let lo = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(self.error("invalid low surrogate in \\u escape"));
                    }
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                match char::from_u32(ch) {
                    Some(c) => out.push(c),
                    None => return Err(self.error("invalid \\u escape")),
                }
            }
            _ => {
                self.pos -= 1;
                return Err(self.error("invalid escape sequence"));
            }
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let digits = self
            .text
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("truncated \\u escape"))?;
        let v = u32::from_str_radix(digits, 16).map_err(|_| self.error("invalid \\u escape"))?;
        self.pos += 4;
        Ok(v)
    }

    /// Reads a number and returns its exact text, checked against JSON's number grammar.
    ///
    /// # Errors
    /// On a malformed number.
    pub fn number(&mut self) -> Result<&'a str, SyntaxError> {
        self.skip_ws();
        let start = self.pos;
        let b = self.src;
        let mut p = self.pos;
        if b.get(p) == Some(&b'-') {
            p += 1;
        }
        match b.get(p) {
            Some(b'0') => p += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = b.get(p) {
                    p += 1;
                }
            }
            _ => {
                self.pos = p;
                return Err(self.error("invalid number"));
            }
        }
        if b.get(p) == Some(&b'.') {
            p += 1;
            let digits = p;
            while let Some(b'0'..=b'9') = b.get(p) {
                p += 1;
            }
            if p == digits {
                self.pos = p;
                return Err(self.error("invalid number: digits expected after '.'"));
            }
        }
        if let Some(b'e' | b'E') = b.get(p) {
            p += 1;
            if let Some(b'+' | b'-') = b.get(p) {
                p += 1;
            }
            let digits = p;
            while let Some(b'0'..=b'9') = b.get(p) {
                p += 1;
            }
            if p == digits {
                self.pos = p;
                return Err(self.error("invalid number: digits expected in exponent"));
            }
        }
        if let Some(b'0'..=b'9') = b.get(p) {
            self.pos = p;
            return Err(self.error("invalid number: leading zero"));
        }
        self.pos = p;
        Ok(&self.text[start..p])
    }

    /// Reads `true` or `false`.
    ///
    /// # Errors
    /// On anything else.
    pub fn boolean(&mut self) -> Result<bool, SyntaxError> {
        self.skip_ws();
        if self.src[self.pos..].starts_with(b"true") {
            self.pos += 4;
            Ok(true)
        } else if self.src[self.pos..].starts_with(b"false") {
            self.pos += 5;
            Ok(false)
        } else {
            Err(self.unexpected("a value"))
        }
    }

    /// Reads `null`.
    ///
    /// # Errors
    /// On anything else.
    pub fn null(&mut self) -> Result<(), SyntaxError> {
        self.skip_ws();
        if self.src[self.pos..].starts_with(b"null") {
            self.pos += 4;
            Ok(())
        } else {
            Err(self.unexpected("a value"))
        }
    }

    /// Skips one value of any kind, checking its syntax (but not duplicate keys).
    ///
    /// # Errors
    /// On a syntax error, or nesting deeper than `depth_left`.
    pub fn skip_value(&mut self, depth_left: usize) -> Result<(), SyntaxError> {
        match self.peek() {
            Peek::Object => {
                if depth_left == 0 {
                    return Err(self.error("JSON nested too deeply"));
                }
                let mut first = !self.begin_object()?;
                if !first {
                    return Ok(());
                }
                while self.next_key(first)?.is_some() {
                    first = false;
                    self.skip_value(depth_left - 1)?;
                }
                Ok(())
            }
            Peek::Array => {
                if depth_left == 0 {
                    return Err(self.error("JSON nested too deeply"));
                }
                if self.begin_array()? {
                    return Ok(());
                }
                loop {
                    self.skip_value(depth_left - 1)?;
                    if !self.array_next()? {
                        return Ok(());
                    }
                }
            }
            Peek::String => self.string().map(|_| ()),
            Peek::Number => self.number().map(|_| ()),
            Peek::Bool => self.boolean().map(|_| ()),
            Peek::Null => self.null(),
            Peek::End | Peek::Invalid => Err(self.unexpected("a value")),
        }
    }

    /// Checks that only white space remains.
    ///
    /// # Errors
    /// When anything else follows.
    pub fn finish(&mut self) -> Result<(), SyntaxError> {
        match self.peek() {
            Peek::End => Ok(()),
            _ => Err(self.error("unexpected content after the end of the JSON value")),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = text
        .get(line_start..offset)
        .map_or(offset - line_start, |s| s.chars().count())
        + 1;
    (line, column)
}

/// The line starts of a text, for many `line:column` look-ups in it: the same answers as
/// [`line_col`], which scans the text from its beginning at every call.
#[derive(Debug, Clone)]
pub struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset of the start of each line (the first is 0).
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    /// Indexes the lines of `text`.
    pub fn new(text: &'a str) -> Self {
        const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        const NEWLINES: u64 = 0x0a0a_0a0a_0a0a_0a0a;
        let bytes = text.as_bytes();
        let mut starts = vec![0];
        let mut at = 0;
        // Eight bytes at a time: the high bit of each byte of `zero` is set exactly when
        // that byte of `w` is a newline (no carry crosses bytes, unlike the shorter test).
        for c in bytes.chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            let x = u64::from_le_bytes(w) ^ NEWLINES;
            let mut zero = !(((x & LOW7) + LOW7) | x | LOW7);
            while zero != 0 {
                starts.push(at + (zero.trailing_zeros() / 8) as usize + 1);
                zero &= zero - 1;
            }
            at += 8;
        }
        starts.extend(
            bytes[at..]
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| at + i + 1),
        );
        LineIndex { text, starts }
    }

    /// The 1-based line and column (in characters) of a byte offset, as [`line_col`].
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        // Lines that start at or before the offset (a start right after it belongs to the
        // next line).
        let line = self.starts.partition_point(|&s| s <= offset);
        let line_start = self.starts.get(line.wrapping_sub(1)).copied().unwrap_or(0);
        let column = self
            .text
            .get(line_start..offset)
            .map_or(offset - line_start, |s| s.chars().count())
            + 1;
        (line, column)
    }
}

/// The offset of the first byte of `bytes` that a JSON string cannot hold as it is (a
/// control character, `"` or `\\`), or `bytes.len()`. Eight bytes are tested at a time.
pub fn plain_prefix(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Whether any byte of `x` is zero, or less than `n` (exact for n <= 128).
    let less = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    let mut at = 0;
    for c in bytes.chunks_exact(8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_le_bytes(w);
        // The lowest flagged byte is exact (a borrow only runs upwards from a true hit).
        let hits = less(w, 0x20) | less(w ^ (ONES * 0x22), 1) | less(w ^ (ONES * 0x5c), 1);
        if hits != 0 {
            return at + (hits.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    at + bytes[at..]
        .iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
        .unwrap_or(bytes.len() - at)
}

/// Writes `s` as a JSON string literal (quotes included) onto `out`.
pub fn write_str(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    // Most strings need no escape: copy them whole.
    if plain_prefix(bytes) == bytes.len() {
        out.reserve(bytes.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    out.push('"');
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[run..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => {
                out.push_str("\\u00");
                out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
                out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
            }
        }
        run = i + 1;
    }
    out.push_str(&s[run..]);
    out.push('"');
}

/// Untyped JSON with exact number text and key order kept.
#[derive(Debug, Clone)]
pub enum Json {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number, as written.
    Number(String),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, keys in input order.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses a whole JSON text, refusing duplicate keys and nesting deeper than `max_depth`.
    ///
    /// # Errors
    /// On any syntax error, with its byte offset.
    pub fn parse(text: &str, max_depth: usize) -> Result<Json, SyntaxError> {
        let mut c = Cursor::new(text);
        let v = Self::read(&mut c, max_depth)?;
        c.finish()?;
        Ok(v)
    }

    fn read(c: &mut Cursor<'_>, depth_left: usize) -> Result<Json, SyntaxError> {
        Ok(match c.peek() {
            Peek::Object => {
                if depth_left == 0 {
                    return Err(c.error("JSON nested too deeply"));
                }
                let mut members: Vec<(String, Json)> = Vec::new();
                let mut first = !c.begin_object()?;
                if first {
                    while let Some((k, at)) = c.next_key(first)? {
                        first = false;
                        if members.iter().any(|(m, _)| *m == k) {
                            return Err(SyntaxError {
                                offset: at,
                                message: format!("duplicate key \"{k}\""),
                            });
                        }
                        let v = Self::read(c, depth_left - 1)?;
                        members.push((k.into_owned(), v));
                    }
                }
                Json::Object(members)
            }
            Peek::Array => {
                if depth_left == 0 {
                    return Err(c.error("JSON nested too deeply"));
                }
                let mut items = Vec::new();
                if !c.begin_array()? {
                    loop {
                        items.push(Self::read(c, depth_left - 1)?);
                        if !c.array_next()? {
                            break;
                        }
                    }
                }
                Json::Array(items)
            }
            Peek::String => Json::String(c.string()?.into_owned()),
            Peek::Number => Json::Number(c.number()?.to_string()),
            Peek::Bool => Json::Bool(c.boolean()?),
            Peek::Null => {
                c.null()?;
                Json::Null
            }
            Peek::End | Peek::Invalid => return Err(c.unexpected("a value")),
        })
    }

    /// Structural equality where object key order does not matter and numbers compare by
    /// their exact text (`1.50` differs from `1.5`).
    pub fn same(&self, other: &Json) -> bool {
        match (self, other) {
            (Json::Null, Json::Null) => true,
            (Json::Bool(a), Json::Bool(b)) => a == b,
            (Json::Number(a), Json::Number(b)) => a == b,
            (Json::String(a), Json::String(b)) => a == b,
            (Json::Array(a), Json::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same(y))
            }
            (Json::Object(a), Json::Object(b)) => {
                a.len() == b.len()
                    && a.iter().all(|(k, v)| {
                        b.iter()
                            .find(|(k2, _)| k2 == k)
                            .is_some_and(|(_, v2)| v.same(v2))
                    })
            }
            _ => false,
        }
    }

    /// Describes the first difference between two values (for test failures), with a JSON
    /// pointer-like path; `None` when [`Json::same`] holds.
    pub fn first_difference(&self, other: &Json, path: &str) -> Option<String> {
        match (self, other) {
            (Json::Array(a), Json::Array(b)) if a.len() == b.len() => a
                .iter()
                .zip(b)
                .enumerate()
                .find_map(|(i, (x, y))| x.first_difference(y, &format!("{path}/{i}"))),
            (Json::Object(a), Json::Object(b)) => {
                for (k, v) in a {
                    match b.iter().find(|(k2, _)| k2 == k) {
                        None => return Some(format!("{path}/{k}: missing on the right")),
                        Some((_, v2)) => {
                            if let Some(d) = v.first_difference(v2, &format!("{path}/{k}")) {
                                return Some(d);
                            }
                        }
                    }
                }
                b.iter()
                    .find(|(k, _)| !a.iter().any(|(k2, _)| k2 == k))
                    .map(|(k, _)| format!("{path}/{k}: missing on the left"))
            }
            _ if self.same(other) => None,
            _ => Some(format!("{path}: {self:?} != {other:?}")),
        }
    }
}

impl Json {
    /// Compact JSON text, numbers as written and object keys in their order.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write_to(&mut out);
        out
    }

    /// Appends the compact JSON text to `out`.
    pub fn write_to(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => out.push_str(n),
            Json::String(s) => write_str(out, s),
            Json::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write_to(out);
                }
                out.push(']');
            }
            Json::Object(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, k);
                    out.push(':');
                    v.write_to(out);
                }
                out.push('}');
            }
        }
    }

    /// The member `key` of an object (`None` for other values).
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The member `key` of an object, mutably.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        match self {
            Json::Object(m) => m.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// The items of an array (empty for other values).
    pub fn items(&self) -> &[Json] {
        match self {
            Json::Array(a) => a,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> SyntaxError {
        Json::parse(text, 64).expect_err(text)
    }

    #[test]
    fn numbers_keep_their_text() {
        let v = Json::parse(r#"{"a": 1.50, "b": -0.0e+5, "c": 830}"#, 8).unwrap();
        let Json::Object(m) = v else { panic!() };
        let texts: Vec<_> = m
            .iter()
            .map(|(_, v)| match v {
                Json::Number(n) => n.as_str(),
                _ => "",
            })
            .collect();
        assert_eq!(texts, ["1.50", "-0.0e+5", "830"]);
    }

    #[test]
    fn syntax_errors_have_offsets() {
        assert_eq!(err(r#"{"a": 1,}"#).offset, 8);
        assert_eq!(err(r#"{"a": 01}"#).message, "invalid number: leading zero");
        assert_eq!(err(r#"{"a": 1, "a": 2}"#).message, "duplicate key \"a\"");
        assert_eq!(err(r#"{"a": "x\qy"}"#).message, "invalid escape sequence");
        assert_eq!(err(r#"[1 2]"#).offset, 3);
        assert_eq!(
            Json::parse("[[[1]]]", 2).unwrap_err().message,
            "JSON nested too deeply"
        );
        assert!(err(r#"{"a": 1} x"#).message.contains("after the end"));
    }

    #[test]
    fn escapes_round_trip() {
        let src = "a\"b\\c\n\u{1}é\u{1F600}";
        let mut out = String::new();
        write_str(&mut out, src);
        assert_eq!(out, "\"a\\\"b\\\\c\\n\\u0001é\u{1F600}\"");
        let Json::String(back) = Json::parse(&out, 1).unwrap() else {
            panic!()
        };
        assert_eq!(back, src);
        let Json::String(s) = Json::parse(r#""\ud83d\ude00\u00e9""#, 1).unwrap() else {
            panic!()
        };
        assert_eq!(s, "\u{1F600}é");
    }

    #[test]
    fn comments_only_when_allowed() {
        let text = "// a comment\n{\"a\": /* inline */ 1}";
        assert!(Json::parse(text, 4).is_err());
        let mut c = Cursor::new(text).allow_comments();
        assert!(c.begin_object().is_ok());
        assert_eq!(
            c.next_key(true).unwrap().map(|(k, _)| k.into_owned()),
            Some("a".to_string())
        );
        assert_eq!(c.number(), Ok("1"));
    }

    #[test]
    fn writes_back_what_it_read() {
        let text = r#"{"b":[1.50,true,null],"a":{"x":"q\"\n"}}"#;
        assert_eq!(Json::parse(text, 8).expect("json").to_text(), text);
    }

    #[test]
    fn plain_prefix_stops_at_the_first_byte_to_escape() {
        // At every offset, in and after the eight-byte words, and for each kind of byte.
        for special in [b'"', b'\\', b'\n', 0x00, 0x1f] {
            for at in 0..20 {
                let mut bytes = vec![b'a'; 24];
                bytes[at] = special;
                bytes[at + 2] = b'"';
                assert_eq!(plain_prefix(&bytes), at, "{special:#x} at {at}");
            }
        }
        // Bytes just above the limits, and UTF-8, are plain.
        let plain = "  !#[]^_{~ é € \u{7f}".as_bytes();
        assert_eq!(plain_prefix(plain), plain.len());
        assert_eq!(plain_prefix(b""), 0);
    }

    #[test]
    fn line_index_finds_every_newline() {
        // Newlines next to each other and to the bytes one off (0x0b, 0x09) or a high bit
        // away (0x8a in `\u{28a}`), at every offset of the eight-byte words.
        let text = "\n\n\u{b}\n\t\n\u{28a}\n\nab\ncdefgh\n\u{b}\u{b}\n\n\nxyz\n";
        let index = LineIndex::new(text);
        let expected: Vec<usize> = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        assert_eq!(index.starts, expected);
        for shift in 1..9 {
            let text = format!("{}{text}", "a".repeat(shift));
            let expected: Vec<usize> = std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect();
            assert_eq!(LineIndex::new(&text).starts, expected, "shifted {shift}");
        }
    }

    #[test]
    fn line_index_answers_as_line_col() {
        let text = "{\n  \"a\": \"h\u{e9}llo\",\n\n  \"b\": \"\u{1F600}x\"\n}";
        let index = LineIndex::new(text);
        for offset in 0..=text.len() + 2 {
            assert_eq!(
                index.line_col(offset),
                line_col(text, offset),
                "at {offset}"
            );
        }
        assert_eq!(LineIndex::new("").line_col(0), line_col("", 0));
    }

    #[test]
    fn line_and_column() {
        let t = "{\n  \"é\": x\n}";
        assert_eq!(line_col(t, t.find('x').unwrap()), (2, 8));
        assert_eq!(line_col(t, 0), (1, 1));
    }
}
