//! The JSON the mapping produces, with provenance: every value remembers the mapping line
//! and the source cell it came from, and the writer records which value is on which output
//! line, so that a validation issue at `line:column` of a produced resource leads back to
//! `mapping.toml:LINE` and `file.csv:ROW:COLUMN`.

use crate::model::json::write_str;
use std::borrow::Cow;

/// A source cell: table (input file), row and cell index, all 0-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CellRef {
    /// Index of the input table.
    pub table: u32,
    /// Row index within the table.
    pub row: u32,
    /// Cell index within the row.
    pub col: u32,
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prov {
    /// Mapping line (0: none).
    pub line: u32,
    /// The source cell, when the value was read from one.
    pub cell: Option<CellRef>,
}

/// A produced JSON value. Keys and texts borrow from the mapping and the inputs (`'k`)
/// where they can, so a resource costs few allocations of its own.
#[derive(Debug, Clone, PartialEq)]
pub enum Out<'k> {
    /// Object: members in order.
    Obj(Vec<(Cow<'k, str>, Val<'k>)>),
    /// Array.
    Arr(Vec<Val<'k>>),
    /// String.
    Str(Cow<'k, str>),
    /// Number, as JSON text.
    Num(Cow<'k, str>),
    /// Boolean.
    Bool(bool),
}

/// A value and its provenance.
#[derive(Debug, Clone)]
pub struct Val<'k> {
    /// The value.
    pub v: Out<'k>,
    /// Where it came from.
    pub prov: Prov,
}

impl PartialEq for Val<'_> {
    /// Values compare by content only (the same resource from two rows is the same).
    fn eq(&self, other: &Self) -> bool {
        self.v == other.v
    }
}

impl<'k> Val<'k> {
    /// A value with provenance.
    pub fn new(v: Out<'k>, prov: Prov) -> Val<'k> {
        Val { v, prov }
    }

    /// A string value.
    pub fn str(s: impl Into<Cow<'k, str>>, prov: Prov) -> Val<'k> {
        Val::new(Out::Str(s.into()), prov)
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Val<'k>> {
        match &self.v {
            Out::Obj(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Writes `v` as indented JSON (two spaces); `lines[i]` is the provenance of output line
/// `i + 1` (the value that starts on it).
pub fn write(v: &Val<'_>, out: &mut String, lines: &mut Vec<Prov>) {
    write_at(v, 0, out, lines);
}

/// Like [`write`], for a value nested `depth` levels deep in an enclosing document: its
/// first line is not indented, the following ones are indented by `depth` more levels
/// (how a resource sits in a Bundle entry, so it can be copied there as it is).
pub fn write_at(v: &Val<'_>, depth: usize, out: &mut String, lines: &mut Vec<Prov>) {
    lines.push(v.prov);
    value(v, depth, out, lines);
    out.push('\n');
}

/// Writes `v` as indented JSON at `depth` levels (its first line not indented, no line
/// break after it), recording the provenance of each further line in `lines`.
pub fn write_value(v: &Val<'_>, depth: usize, out: &mut String, lines: &mut Vec<Prov>) {
    value(v, depth, out, lines);
}

fn newline(indent: usize, out: &mut String, lines: &mut Vec<Prov>, prov: Prov) {
    /// Enough spaces for any depth a mapping nests to; deeper levels repeat it.
    const SPACES: &str = "                                                                ";
    out.push('\n');
    lines.push(prov);
    let mut n = indent * 2;
    while n > 0 {
        let k = n.min(SPACES.len());
        out.push_str(&SPACES[..k]);
        n -= k;
    }
}

fn value(v: &Val<'_>, indent: usize, out: &mut String, lines: &mut Vec<Prov>) {
    match &v.v {
        Out::Str(s) => write_str(out, s),
        Out::Num(n) => out.push_str(n),
        Out::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Out::Obj(members) => {
            out.push('{');
            for (i, (k, m)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(indent + 1, out, lines, m.prov);
                write_str(out, k);
                out.push_str(": ");
                value(m, indent + 1, out, lines);
            }
            if !members.is_empty() {
                newline(indent, out, lines, v.prov);
            }
            out.push('}');
        }
        Out::Arr(items) => {
            out.push('[');
            for (i, m) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(indent + 1, out, lines, m.prov);
                value(m, indent + 1, out, lines);
            }
            if !items.is_empty() {
                newline(indent, out, lines, v.prov);
            }
            out.push(']');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_provenance() {
        let p = |line| Prov { line, cell: None };
        let v = Val::new(
            Out::Obj(vec![
                ("resourceType".into(), Val::str("Patient", p(1))),
                (
                    "identifier".into(),
                    Val::new(
                        Out::Arr(vec![Val::new(
                            Out::Obj(vec![("value".into(), Val::str("x\"y", p(7)))]),
                            p(6),
                        )]),
                        p(5),
                    ),
                ),
                ("active".into(), Val::new(Out::Bool(true), p(9))),
            ]),
            p(2),
        );
        let mut text = String::new();
        let mut lines = Vec::new();
        write(&v, &mut text, &mut lines);
        let expected = "{\n  \"resourceType\": \"Patient\",\n  \"identifier\": [\n    {\n      \"value\": \"x\\\"y\"\n    }\n  ],\n  \"active\": true\n}\n";
        assert_eq!(text, expected);
        assert_eq!(text.lines().count(), lines.len());
        let at = |l: usize| lines[l - 1].line;
        assert_eq!(
            (at(1), at(2), at(3), at(4), at(5), at(8)),
            (2, 1, 5, 6, 7, 9)
        );
        serde_json::from_str::<serde_json::Value>(&text).unwrap();
    }
}
