//! FHIR R4 JSON to [`Element`]: a single pass over the text, guided by the type information of
//! each element, that refuses what FHIR's JSON format forbids.
//!
//! Refused, each with its `line:column` and FHIRPath-style location: malformed JSON,
//! duplicate keys (and two types given for one choice element), unknown elements, a JSON type
//! that does not fit the element (a number where a string belongs, an object for a
//! primitive, an array for a single value), `null` (except as a filler in primitive arrays
//! that have an extension at that position), empty strings, arrays and objects, a missing or
//! unknown `resourceType`, and a `resourceType` other than the one expected.
//!
//! JSON syntax errors stop the parse; every other problem is recorded and parsing goes on,
//! so a caller (the validator) sees all of them at once. [`parse`] turns any problem into an
//! error; [`parse_with`] returns the tree and the list.

use super::element::{Element, Primitive, PrimitiveExtras, Property, Scalar, Value, Values};
use super::json::{line_col, Cursor, Peek, SyntaxError};
use super::schema::{self, ElementInfo, ElementType, PrimitiveKind, TypeInfo, TypeKind};
use std::fmt::{self, Write as _};

/// Parse settings.
#[derive(Debug, Clone)]
pub struct ParseOptions<'a> {
    /// Deepest nesting of JSON objects and arrays accepted.
    pub max_depth: usize,
    /// The resource type the caller expects (the type in a REST URL, say).
    pub resource_type: Option<&'a str>,
    /// Accept `//` and `/* */` comments (not FHIR JSON; off by default).
    pub allow_comments: bool,
}

impl Default for ParseOptions<'_> {
    fn default() -> Self {
        ParseOptions {
            max_depth: 128,
            resource_type: None,
            allow_comments: false,
        }
    }
}

/// How serious a parse issue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueKind {
    /// The text is not JSON (or nests too deeply); nothing was parsed.
    Syntax,
    /// The JSON does not fit FHIR's structure at this place.
    Structure,
}

/// One problem found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseIssue {
    /// Syntax or structure.
    pub kind: IssueKind,
    /// Byte offset in the input.
    pub offset: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// FHIRPath-style location (`Patient.name[0].given[1]`); empty for syntax errors.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)?;
        if !self.location.is_empty() {
            write!(f, " (at {})", self.location)?;
        }
        Ok(())
    }
}

/// The input was refused: every issue found, first one first.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ParseError {
    /// The issues, in input order; never empty.
    pub issues: Vec<ParseIssue>,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

/// The outcome of [`parse_with`]: the resource (absent after a syntax error or when the top
/// level is not a resource at all) and every issue found.
#[derive(Debug)]
pub struct Parsed {
    /// The resource, as far as it could be read.
    pub resource: Option<Element>,
    /// The issues; empty when the input is well-formed FHIR JSON.
    pub issues: Vec<ParseIssue>,
}

/// Parses one resource, refusing input with any issue.
///
/// # Errors
/// [`ParseError`] listing every issue when the input is not well-formed FHIR R4 JSON.
pub fn parse(text: &str) -> Result<Element, ParseError> {
    parse_strict(text, &ParseOptions::default())
}

/// Like [`parse`], with options.
///
/// # Errors
/// [`ParseError`] listing every issue.
pub fn parse_strict(text: &str, options: &ParseOptions<'_>) -> Result<Element, ParseError> {
    let parsed = parse_with(text, options);
    match (parsed.resource, parsed.issues.is_empty()) {
        (Some(r), true) => Ok(r),
        (_, _) => Err(ParseError {
            issues: parsed.issues,
        }),
    }
}

/// Parses one resource and reports every issue instead of stopping at the first.
pub fn parse_with(text: &str, options: &ParseOptions<'_>) -> Parsed {
    if text.len() > u32::MAX as usize {
        let (line, column) = (1, 1);
        return Parsed {
            resource: None,
            issues: vec![ParseIssue {
                kind: IssueKind::Syntax,
                offset: 0,
                line,
                column,
                location: String::new(),
                message: "input larger than 4 GiB".into(),
            }],
        };
    }
    let mut p = Parser {
        c: if options.allow_comments {
            Cursor::new(text).allow_comments()
        } else {
            Cursor::new(text)
        },
        text,
        issues: Vec::new(),
        path: Vec::new(),
        seen: Vec::new(),
        odd: 0,
    };
    let result = p.top(options);
    let resource = match result {
        Ok(r) => r,
        Err(e) => {
            p.issues.retain(|i| i.offset < e.offset);
            p.push_issue(IssueKind::Syntax, e.offset, e.message, false);
            None
        }
    };
    Parsed {
        resource,
        issues: p.issues,
    }
}

/// One step of the location of the value being parsed.
#[derive(Debug, Clone, Copy)]
enum Seg {
    Root(&'static str),
    Field(&'static ElementInfo, u16),
    Index(usize),
}

struct Parser<'a> {
    c: Cursor<'a>,
    text: &'a str,
    issues: Vec<ParseIssue>,
    path: Vec<Seg>,
    /// Bookkeeping of the objects being read, a stack: each object's entries start where
    /// the stack stood when it began, and are dropped when it ends (one buffer for all).
    seen: Vec<Seen>,
    /// How many `_name` properties and `null` fillers were read so far: only an object that
    /// had one inside needs [`Parser::check_primitives`].
    odd: usize,
}

/// Per-property bookkeeping while an object is read.
#[derive(Clone, Copy, Default)]
struct Seen {
    value: bool,
    extras: bool,
    faulty: bool,
    /// Array lengths of the value and `_` parts, to check they agree.
    value_len: Option<usize>,
    extras_len: Option<usize>,
}

type R<T> = Result<T, SyntaxError>;

impl<'a> Parser<'a> {
    fn location(&self) -> String {
        let mut s = String::new();
        for seg in &self.path {
            match seg {
                Seg::Root(name) => s.push_str(name),
                Seg::Field(def, t) => {
                    s.push('.');
                    s.push_str(&def.name);
                    if def.choice {
                        if let Some(ty) = def.types.get(usize::from(*t)) {
                            let _ = write!(s, ".ofType({})", ty.code);
                        }
                    }
                }
                Seg::Index(i) => {
                    let _ = write!(s, "[{i}]");
                }
            }
        }
        s
    }

    fn push_issue(&mut self, kind: IssueKind, offset: usize, message: String, located: bool) {
        let (line, column) = line_col(self.text, offset);
        let location = if located {
            self.location()
        } else {
            String::new()
        };
        self.issues.push(ParseIssue {
            kind,
            offset,
            line,
            column,
            location,
            message,
        });
    }

    fn issue(&mut self, offset: usize, message: String) {
        self.push_issue(IssueKind::Structure, offset, message, true);
    }

    fn top(&mut self, options: &ParseOptions<'_>) -> R<Option<Element>> {
        if self.c.peek() != Peek::Object {
            let at = self.c.offset();
            self.c.skip_value(options.max_depth)?;
            self.c.finish()?;
            self.issue(at, "a FHIR resource must be a JSON object".into());
            return Ok(None);
        }
        let r = self.resource(options.max_depth, options.resource_type)?;
        self.c.finish()?;
        Ok(r)
    }

    /// Reads an object that must be a resource, its type taken from `resourceType`.
    fn resource(&mut self, depth: usize, expected: Option<&str>) -> R<Option<Element>> {
        let at = self.c.offset();
        let mut look = self.c.clone();
        // Borrowed from the text unless it has escapes.
        let mut found: Option<std::borrow::Cow<'a, str>> = None;
        let mut first = !look.begin_object()?;
        while first || found.is_none() {
            let Some((key, _)) = look.next_key(first)? else {
                break;
            };
            first = false;
            if key == "resourceType" && look.peek() == Peek::String {
                found = Some(look.string()?);
                break;
            }
            look.skip_value(depth)?;
        }
        let info = match found {
            None => {
                self.c.skip_value(depth)?;
                self.issue(at, "resource has no resourceType".into());
                return Ok(None);
            }
            Some(rt) => match schema::type_info(&rt) {
                Some(info)
                    if info.kind == TypeKind::Resource
                        && !matches!(&*info.name, "Resource" | "DomainResource") =>
                {
                    if let Some(want) = expected {
                        if want != &*rt {
                            self.issue(
                                at,
                                format!("resourceType is '{rt}' where '{want}' is expected"),
                            );
                        }
                    }
                    info
                }
                _ => {
                    self.c.skip_value(depth)?;
                    self.issue(at, format!("unknown resourceType '{rt}'"));
                    return Ok(None);
                }
            },
        };
        let root = self.path.is_empty();
        if root {
            self.path.push(Seg::Root(type_name(info)));
        }
        let el = self.object(info, depth);
        if root {
            self.path.pop();
        }
        el.map(Some)
    }

    /// Reads an object of a complex type, backbone element or resource.
    fn object(&mut self, info: &'static TypeInfo, depth: usize) -> R<Element> {
        if depth == 0 {
            return Err(self.c.error("JSON nested too deeply"));
        }
        let pos = self.c.offset();
        // A resource has more properties than most data types: room for them up front.
        let capacity = if info.kind == TypeKind::Resource {
            12
        } else {
            4
        };
        let mut el = Element {
            info,
            props: Vec::with_capacity(capacity),
            pos: pos as u32,
        };
        if self.c.begin_object()? {
            self.issue(
                pos,
                "empty object (FHIR elements must have a value or children)".into(),
            );
            return Ok(el);
        }
        let base = self.seen.len();
        let odd = self.odd;
        let mut first = true;
        let mut resource_type_seen = false;
        while let Some((key, at)) = self.c.next_key(first)? {
            first = false;
            if info.kind == TypeKind::Resource && key == "resourceType" {
                if resource_type_seen {
                    self.issue(at, "duplicate key \"resourceType\"".into());
                }
                resource_type_seen = true;
                // Its value was checked when the type was chosen.
                self.c.skip_value(depth)?;
                continue;
            }
            let (extras, name) = match key.strip_prefix('_') {
                Some(n) => {
                    self.odd += 1;
                    (true, n)
                }
                None => (false, &*key),
            };
            let Some(child) = info.child(name) else {
                self.issue(
                    at,
                    format!("unknown element '{key}' in {}", type_name(info)),
                );
                self.c.skip_value(depth)?;
                continue;
            };
            let def = &info.elements[usize::from(child.element)];
            let ty = &def.types[usize::from(child.type_index)];
            let existing = el.props.iter().position(|p| p.element == child.element);
            if let Some(i) = existing {
                let p = &el.props[i];
                let dup = if p.type_index != child.type_index {
                    Some(format!(
                        "element '{}[x]' is given twice, as '{}' and '{}'",
                        def.name,
                        def.json_name(usize::from(p.type_index)),
                        key
                    ))
                } else if (extras && self.seen[base + i].extras)
                    || (!extras && self.seen[base + i].value)
                {
                    Some(format!("duplicate key \"{key}\""))
                } else {
                    None
                };
                if let Some(msg) = dup {
                    self.issue(at, msg);
                    self.c.skip_value(depth)?;
                    continue;
                }
            }
            let prim = ty.info().and_then(TypeInfo::primitive);
            if extras && prim.is_none() {
                self.issue(
                    at,
                    format!("'{key}' is only allowed for primitive elements"),
                );
                self.c.skip_value(depth)?;
                continue;
            }
            let index = match existing {
                Some(i) => i,
                None => {
                    el.props.push(Property {
                        element: child.element,
                        type_index: child.type_index,
                        values: Values::new(),
                    });
                    self.seen.push(Seen::default());
                    el.props.len() - 1
                }
            };
            let before = self.issues.len();
            self.path.push(Seg::Field(def, child.type_index));
            let mut values = std::mem::take(&mut el.props[index].values);
            let len = match (prim, extras) {
                (Some(kind), false) => self.primitive_values(def, ty, kind, &mut values, depth)?,
                (Some(_), true) => self.primitive_extras(def, ty, &mut values, depth)?,
                (None, _) => self.complex_values(def, ty, &mut values, depth)?,
            };
            el.props[index].values = values;
            self.path.pop();
            let Some(s) = self.seen.get_mut(base + index) else {
                continue;
            };
            if extras {
                s.extras = true;
                s.extras_len = len;
            } else {
                s.value = true;
                s.value_len = len;
            }
            s.faulty |= self.issues.len() > before;
        }
        if self.odd != odd {
            self.check_primitives(&el, base);
        }
        self.seen.truncate(base);
        el.props.retain(|p| !p.values.is_empty());
        if !el.props.is_sorted_by_key(|p| p.element) {
            el.props.sort_by_key(|p| p.element);
        }
        Ok(el)
    }

    /// After an object: every primitive needs a value or extensions, and the two arrays of a
    /// repeating primitive must have the same length.
    /// `base` is where the object's entries start in the bookkeeping stack.
    fn check_primitives(&mut self, el: &Element, base: usize) {
        for (k, prop) in el.props.iter().enumerate() {
            let Some(&s) = self.seen.get(base + k) else {
                break;
            };
            if s.faulty {
                continue;
            }
            let def = el.definition(prop);
            if let (Some(a), Some(b)) = (s.value_len, s.extras_len) {
                if a != b {
                    let at = prop.values.first().map_or(el.pos, Value::pos) as usize;
                    let name = def.json_name(usize::from(prop.type_index));
                    self.path.push(Seg::Field(def, prop.type_index));
                    self.issue(at, format!("'{name}' has {a} items but '_{name}' has {b}"));
                    self.path.pop();
                    continue;
                }
            }
            for (i, v) in prop.values.iter().enumerate() {
                if let Value::Primitive(p) = v {
                    if p.value.is_none() && p.extras.is_none() {
                        self.path.push(Seg::Field(def, prop.type_index));
                        if def.array {
                            self.path.push(Seg::Index(i));
                        }
                        self.issue(
                            p.pos as usize,
                            "null where a value is required (null is only allowed as a filler matched by an extension)".into(),
                        );
                        if def.array {
                            self.path.pop();
                        }
                        self.path.pop();
                    }
                }
            }
        }
    }

    /// Runs `item` over the value(s) of an element: once for a single-valued element, once
    /// per item for an array. Checks the JSON shape (array or not, empty, null), returning
    /// the array length when the element repeats.
    fn each_item(
        &mut self,
        def: &'static ElementInfo,
        depth: usize,
        mut item: impl FnMut(&mut Self, usize, bool) -> R<()>,
    ) -> R<Option<usize>> {
        let at = self.c.offset();
        let is_array = self.c.peek() == Peek::Array;
        if def.array != is_array {
            let msg = if def.array {
                format!("'{}' repeats and must be a JSON array", def.name)
            } else {
                format!("'{}' is a single value, not a JSON array", def.name)
            };
            self.issue(at, msg);
            self.c.skip_value(depth)?;
            return Ok(None);
        }
        if !is_array {
            item(self, 0, false)?;
            return Ok(None);
        }
        if depth == 0 {
            return Err(self.c.error("JSON nested too deeply"));
        }
        if self.c.begin_array()? {
            self.issue(at, "empty array (FHIR forbids empty arrays)".into());
            return Ok(Some(0));
        }
        let mut n = 0;
        loop {
            self.path.push(Seg::Index(n));
            item(self, n, true)?;
            self.path.pop();
            n += 1;
            if !self.c.array_next()? {
                return Ok(Some(n));
            }
        }
    }

    fn complex_values(
        &mut self,
        def: &'static ElementInfo,
        ty: &'static ElementType,
        values: &mut Values,
        depth: usize,
    ) -> R<Option<usize>> {
        let info = ty.info();
        let is_resource = &*ty.code == "Resource";
        self.each_item(def, depth, |p, _, _| {
            let at = p.c.offset();
            match p.c.peek() {
                Peek::Object => {
                    let el = if is_resource {
                        p.resource(depth - 1, None)?
                    } else if let Some(info) = info {
                        Some(p.object(info, depth - 1)?)
                    } else {
                        p.issue(at, format!("type '{}' is not known", ty.code));
                        p.c.skip_value(depth)?;
                        None
                    };
                    values.extend(el.map(Value::Element));
                }
                Peek::Null => {
                    p.c.null()?;
                    p.issue(at, "null is not allowed here".into());
                }
                other => {
                    p.issue(
                        at,
                        format!(
                            "'{}' is of type {} and must be a JSON object, not {}",
                            def.name,
                            ty.code,
                            describe(other)
                        ),
                    );
                    p.c.skip_value(depth)?;
                }
            }
            Ok(())
        })
    }

    fn primitive_values(
        &mut self,
        def: &'static ElementInfo,
        ty: &'static ElementType,
        kind: PrimitiveKind,
        values: &mut Values,
        depth: usize,
    ) -> R<Option<usize>> {
        let Some(info) = ty.info() else {
            return Ok(None);
        };
        let merge = !values.is_empty();
        self.each_item(def, depth, |p, i, in_array| {
            let at = p.c.offset();
            let scalar = if p.c.peek() == Peek::Null && in_array {
                // A filler: its extension must come in the `_` array.
                p.c.null()?;
                p.odd += 1;
                None
            } else {
                p.scalar(def, ty, kind, depth)?
            };
            let pos = at as u32;
            if merge {
                if let Some(Value::Primitive(prim)) = values.get_mut(i) {
                    prim.value = scalar;
                    prim.pos = pos;
                    return Ok(());
                }
            }
            if scalar.is_some() || in_array {
                values.push(Value::Primitive(Primitive {
                    info,
                    value: scalar,
                    extras: None,
                    pos,
                }));
            }
            Ok(())
        })
    }

    fn primitive_extras(
        &mut self,
        def: &'static ElementInfo,
        ty: &'static ElementType,
        values: &mut Values,
        depth: usize,
    ) -> R<Option<usize>> {
        let Some(info) = ty.info() else {
            return Ok(None);
        };
        let merge = !values.is_empty();
        self.each_item(def, depth, |p, i, in_array| {
            let at = p.c.offset();
            let extras = match p.c.peek() {
                Peek::Null if in_array => {
                    p.c.null()?;
                    None
                }
                Peek::Object => {
                    let holder = p.object(info, depth - 1)?;
                    let id = holder.str("id").map(Into::into);
                    let extension = holder
                        .values("extension")
                        .iter()
                        .filter_map(|v| v.as_element().cloned())
                        .collect();
                    Some(Box::new(PrimitiveExtras { id, extension }))
                }
                other => {
                    p.issue(
                        at,
                        format!(
                            "'_{}' must hold a JSON object with id and/or extension, not {}",
                            def.name,
                            describe(other)
                        ),
                    );
                    p.c.skip_value(depth)?;
                    None
                }
            };
            if merge {
                if let Some(Value::Primitive(prim)) = values.get_mut(i) {
                    prim.extras = extras;
                    return Ok(());
                }
            }
            if extras.is_some() || in_array {
                values.push(Value::Primitive(Primitive {
                    info,
                    value: None,
                    extras,
                    pos: at as u32,
                }));
            }
            Ok(())
        })
    }

    /// Reads a primitive's JSON scalar, checking its JSON type against the primitive kind.
    fn scalar(
        &mut self,
        def: &ElementInfo,
        ty: &ElementType,
        kind: PrimitiveKind,
        depth: usize,
    ) -> R<Option<Scalar>> {
        let at = self.c.offset();
        let peek = self.c.peek();
        match (peek, kind) {
            (Peek::Bool, PrimitiveKind::Boolean) => Ok(Some(Scalar::Bool(self.c.boolean()?))),
            (Peek::Number, PrimitiveKind::Decimal) => {
                Ok(Some(Scalar::Number(self.c.number()?.into())))
            }
            (Peek::Number, PrimitiveKind::Integer) => {
                let text = self.c.number()?;
                if text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
                    self.issue(
                        at,
                        format!(
                            "'{}' is an {} and must be a whole number, not {text}",
                            def.name, ty.code
                        ),
                    );
                    return Ok(None);
                }
                if text.parse::<i32>().is_err() {
                    self.issue(
                        at,
                        format!(
                            "'{}': {text} is outside the 32-bit range of {}",
                            def.name, ty.code
                        ),
                    );
                    return Ok(None);
                }
                Ok(Some(Scalar::Number(text.into())))
            }
            (Peek::String, PrimitiveKind::String) => {
                let s = self.c.string()?;
                if s.is_empty() {
                    self.issue(at, "empty string (FHIR forbids empty values)".into());
                    return Ok(None);
                }
                Ok(Some(Scalar::String(s.into())))
            }
            (Peek::Null, _) => {
                self.c.null()?;
                self.issue(at, "null is not allowed here".into());
                Ok(None)
            }
            _ => {
                let want = match kind {
                    PrimitiveKind::Boolean => "a JSON boolean",
                    PrimitiveKind::Integer => "a JSON number (integer)",
                    PrimitiveKind::Decimal => "a JSON number",
                    PrimitiveKind::String => "a JSON string",
                };
                self.issue(
                    at,
                    format!(
                        "'{}' is of type {} and must be {want}, not {}",
                        def.name,
                        ty.code,
                        describe(peek)
                    ),
                );
                self.c.skip_value(depth)?;
                Ok(None)
            }
        }
    }
}

fn type_name(info: &'static TypeInfo) -> &'static str {
    &info.name
}

fn describe(p: Peek) -> &'static str {
    match p {
        Peek::Object => "an object",
        Peek::Array => "an array",
        Peek::String => "a string",
        Peek::Number => "a number",
        Peek::Bool => "a boolean",
        Peek::Null => "null",
        Peek::End | Peek::Invalid => "invalid JSON",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::write::to_json;

    /// Parses `text` and returns each issue as `line:column location: message`.
    fn issues(text: &str) -> Vec<String> {
        parse_with(text, &ParseOptions::default())
            .issues
            .iter()
            .map(|i| format!("{}:{} {}: {}", i.line, i.column, i.location, i.message))
            .collect()
    }

    fn one(text: &str) -> String {
        let all = issues(text);
        assert_eq!(all.len(), 1, "{all:?}");
        all[0].clone()
    }

    #[test]
    fn keeps_decimals_and_merges_primitive_extensions() {
        let text = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},
            "valueQuantity":{"value":1.50,"unit":"mm"},
            "_status":{"extension":[{"url":"http://e","valueInteger":830}]},
            "note":[{"text":"a"}]}"#;
        let obs = parse(text).unwrap();
        let out = to_json(&obs);
        assert!(out.contains(r#""value":1.50"#), "{out}");
        assert!(out.contains(r#""valueInteger":830"#), "{out}");
        let status = obs.values("status")[0].as_primitive().unwrap();
        assert_eq!(status.as_str(), Some("final"));
        assert_eq!(status.extensions().len(), 1);
        // Canonical order puts status before code before value.
        assert!(out.find("\"status\"") < out.find("\"code\""));
        assert!(out.find("\"code\"") < out.find("\"valueQuantity\""));
    }

    #[test]
    fn primitive_arrays_with_fillers() {
        let text = r#"{"resourceType":"Patient","name":[{"given":["a",null],
            "_given":[null,{"extension":[{"url":"http://e","valueString":"b"}]}]}]}"#;
        let p = parse(text).unwrap();
        let out = to_json(&p);
        assert!(out.contains(r#""given":["a",null]"#), "{out}");
        assert!(out.contains(r#""_given":[null,{"extension""#), "{out}");
    }

    #[test]
    fn refuses_malformed_input_with_positions() {
        assert_eq!(
            one("{\"resourceType\":\"Patient\",\n \"foo\": 1}"),
            "2:2 Patient: unknown element 'foo' in Patient"
        );
        assert_eq!(
            one(r#"{"resourceType":"Patient","birthDate":1970}"#),
            "1:39 Patient.birthDate: 'birthDate' is of type date and must be a JSON string, not a number"
        );
        assert_eq!(
            one(r#"{"resourceType":"Patient","active":"true"}"#),
            "1:36 Patient.active: 'active' is of type boolean and must be a JSON boolean, not a string"
        );
        assert_eq!(
            one(r#"{"resourceType":"Patient","gender":null}"#),
            "1:36 Patient.gender: null is not allowed here"
        );
        assert_eq!(
            one(r#"{"resourceType":"Patient","gender":""}"#),
            "1:36 Patient.gender: empty string (FHIR forbids empty values)"
        );
        assert_eq!(
            one(r#"{"resourceType":"Patient","name":[]}"#),
            "1:34 Patient.name: empty array (FHIR forbids empty arrays)"
        );
        assert_eq!(
            one(r#"{"resourceType":"Patient","name":{"family":"x"}}"#),
            "1:34 Patient.name: 'name' repeats and must be a JSON array"
        );
        assert_eq!(
            one(r#"{"resourceType":"Patient","gender":"male","gender":"female"}"#),
            "1:43 Patient: duplicate key \"gender\""
        );
        assert_eq!(
            one(r#"{"resourceType":"Patient","deceasedBoolean":true,"deceasedDateTime":"2020"}"#),
            "1:50 Patient: element 'deceased[x]' is given twice, as 'deceasedBoolean' and 'deceasedDateTime'"
        );
        assert_eq!(
            one(r#"{"resourceType":"Patiant"}"#),
            "1:1 : unknown resourceType 'Patiant'"
        );
        assert_eq!(one(r#"{"id":"x"}"#), "1:1 : resource has no resourceType");
        assert_eq!(
            one(r#"{"resourceType":"Observation","valueInteger":1.5,"status":"final","code":{"text":"x"}}"#),
            "1:46 Observation.value.ofType(integer): 'value' is an integer and must be a whole number, not 1.5"
        );
        assert_eq!(
            one(r#"{"resourceType":"Patient","name":[{"given":["a",null]}]}"#),
            "1:49 Patient.name[0].given[1]: null where a value is required (null is only allowed as a filler matched by an extension)"
        );
        assert_eq!(
            one(r#"{"resourceType":"Patient","contact":[{}]}"#),
            "1:38 Patient.contact[0]: empty object (FHIR elements must have a value or children)"
        );
    }

    #[test]
    fn syntax_errors_stop_with_a_position() {
        assert_eq!(
            one("{\"resourceType\":\"Patient\",\n\"active\":tru}"),
            "2:10 : unexpected character 't', expected a value"
        );
        assert_eq!(
            one(r#"{"resourceType":"Patient","id":"a""#),
            "1:35 : unexpected end of input, expected ',' or '}'"
        );
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        assert!(
            one(&deep).contains("a FHIR resource must be a JSON object")
                || one(&deep).contains("nested")
        );
    }

    #[test]
    fn expected_type_and_resource_type_anywhere() {
        let text = r#"{"id":"1","resourceType":"Patient"}"#;
        assert_eq!(parse(text).unwrap().id(), Some("1"));
        let opts = ParseOptions {
            resource_type: Some("Observation"),
            ..ParseOptions::default()
        };
        let issues = parse_with(text, &opts).issues;
        assert_eq!(
            issues[0].message,
            "resourceType is 'Patient' where 'Observation' is expected"
        );
    }

    #[test]
    fn contained_and_bundle_resources_are_typed() {
        let text = r#"{"resourceType":"Bundle","type":"collection","entry":[
            {"resource":{"resourceType":"Patient","id":"p","contained":[{"resourceType":"Organization","name":"o"}]}},
            {"resource":{"resourceType":"Nope"}}]}"#;
        let all = issues(text);
        assert_eq!(
            all,
            ["3:25 Bundle.entry[1].resource: unknown resourceType 'Nope'"]
        );
        let b = parse_with(text, &ParseOptions::default()).resource.unwrap();
        let entry = b.values("entry")[0].as_element().unwrap();
        let patient = entry.values("resource")[0].as_element().unwrap();
        assert_eq!(patient.type_name(), "Patient");
        let org = patient.values("contained")[0].as_element().unwrap();
        assert_eq!(org.str("name"), Some("o"));
    }
}
