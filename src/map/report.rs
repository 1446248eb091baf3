//! The machine-readable report of a `map` run (`map --report FILE`): the same diagnostics
//! as the human-readable report, as JSON, listed once in input order and grouped per
//! source row and per produced resource.
//!
//! ```json
//! { "mapping": "nl01", "rows": 3, "resources": 31, "errors": 1, "warnings": 0,
//!   "issues": [ { "severity": "error",
//!                 "source": { "file": "x.csv", "row": 4, "column": 6, "header": "Datum" },
//!                 "mapping": { "file": "mapping.toml", "line": 140 },
//!                 "resource": "Observation/nl01-0004-size-l1", "location": null,
//!                 "message": "...", "text": "error: x.csv:4:6 [Datum]: ..." } ],
//!   "byRow": [ { "file": "x.csv", "row": 4, "issues": [0] } ],
//!   "byResource": [ { "resource": "Observation/nl01-0004-size-l1", "issues": [0] } ] }
//! ```
//!
//! `issues` indexes in `byRow` and `byResource` point into `issues`. For a FHIR source,
//! `source` also has `entry` (whether `row` is a Bundle entry index) and `sourceResource`
//! (`Type/id` read), and `header` is the column's FHIRPath expression.

use super::{Diagnostic, Outcome, SourcePos};
use crate::validate::Severity;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

fn source(s: &SourcePos) -> Value {
    let mut m = Map::new();
    m.insert("file".into(), json!(s.file));
    m.insert("row".into(), json!(s.row));
    if let Some((c, h)) = &s.column {
        m.insert("column".into(), json!(c));
        m.insert("header".into(), json!(h));
    }
    if let Some(f) = &s.fhir {
        m.insert("entry".into(), json!(f.entry));
        m.insert("sourceResource".into(), json!(f.resource));
    }
    Value::Object(m)
}

fn issue(d: &Diagnostic) -> Value {
    json!({
        "severity": d.severity.code(),
        "source": d.source.as_ref().map(source),
        "mapping": d.mapping.as_ref().map(|(f, l)| json!({ "file": f, "line": l })),
        "resource": d.resource,
        "location": d.location,
        "message": d.message,
        "text": d.to_string(),
    })
}

/// The JSON report of a run of mapping `name`.
pub fn to_json(name: &str, outcome: &Outcome) -> Value {
    let count =
        |f: fn(Severity) -> bool| outcome.diagnostics.iter().filter(|d| f(d.severity)).count();
    let mut by_row: Vec<(String, u32, Vec<usize>)> = Vec::new();
    let mut by_resource: Vec<(String, Vec<usize>)> = Vec::new();
    let mut rows: HashMap<(&str, u32), usize> = HashMap::new();
    let mut resources: HashMap<&str, usize> = HashMap::new();
    for (i, d) in outcome.diagnostics.iter().enumerate() {
        if let Some(s) = &d.source {
            let at = *rows.entry((s.file.as_str(), s.row)).or_insert_with(|| {
                by_row.push((s.file.clone(), s.row, Vec::new()));
                by_row.len() - 1
            });
            by_row[at].2.push(i);
        }
        if let Some(r) = &d.resource {
            let at = *resources.entry(r.as_str()).or_insert_with(|| {
                by_resource.push((r.clone(), Vec::new()));
                by_resource.len() - 1
            });
            by_resource[at].1.push(i);
        }
    }
    json!({
        "mapping": name,
        "rows": outcome.rows,
        "resources": outcome.resources,
        "errors": count(Severity::is_error),
        "warnings": count(|s| s == Severity::Warning),
        "issues": outcome.diagnostics.iter().map(issue).collect::<Vec<_>>(),
        "byRow": by_row.iter().map(|(f, r, l)| json!({ "file": f, "row": r, "issues": l })).collect::<Vec<_>>(),
        "byResource": by_resource.iter().map(|(r, l)| json!({ "resource": r, "issues": l })).collect::<Vec<_>>(),
    })
}
