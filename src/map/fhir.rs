//! FHIR sources: a site EHR's export (a Bundle of any type, one resource, or NDJSON) read
//! as rows. A FHIR source's `select` (a FHIRPath predicate) picks the resources that are
//! its rows; its columns are FHIRPath expressions over each resource (declared under
//! `[sources.NAME.columns]`, or written inline in a rule as `{ path = "..." }`), so every
//! rule construct of CSV sources (ids, joins, lookups, ConceptMaps, conditions) works on
//! them unchanged. Only what the rules produce reaches the Bundle: names, addresses and
//! record numbers of the export are dropped by construction.
//!
//! A row's position is its Bundle entry index (`export.json:entry[3]`) or its NDJSON line
//! (`export.ndjson:7`), with the resource read (`Condition/c-17`); a cell's position is
//! the column's FHIRPath expression.

use super::source::{decode, Row, Table};
use super::spec::{visit_specs, Encoding, Mapping, Spec};
use super::{Diagnostic, SourcePos};
use crate::fhirpath::{Context, Expression};
use crate::model::{self, Element};
use crate::validate::Severity;
use std::collections::HashSet;
use std::sync::Arc;

/// The resources behind the rows of a FHIR table.
#[derive(Debug)]
pub struct FhirRows {
    /// Per row, the resource it was read from.
    pub resources: Vec<Element>,
    /// Per row, `Type/id` of that resource (`Type` alone without an id).
    pub labels: Vec<String>,
    /// Whether row numbers are Bundle entry indexes (0-based) rather than lines.
    pub bundle: bool,
    /// Cells (row, column) whose value could not be read (already reported).
    pub failed: HashSet<(u32, u32)>,
}

/// Whether a file name says NDJSON (`.ndjson`, `.jsonl`), compared case-insensitively.
pub fn is_ndjson(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".ndjson") || lower.ends_with(".jsonl")
}

/// A column to evaluate: its name, display text, expression, lookup and mapping line.
struct Col<'m> {
    name: String,
    text: &'m str,
    expr: Arc<Expression>,
    lookup: Option<&'m str>,
    line: usize,
}

/// The columns of FHIR source `si`: the declared ones, then every `path` a rule of the
/// source reads (once per expression text).
fn columns(mapping: &Mapping, si: usize) -> Vec<Col<'_>> {
    let mut cols: Vec<Col> = Vec::new();
    if let Some(f) = &mapping.sources[si].fhir {
        for c in &f.columns {
            cols.push(Col {
                name: c.name.clone(),
                text: &c.text,
                expr: c.expr.clone(),
                lookup: c.lookup.as_deref(),
                line: c.line,
            });
        }
    }
    for rule in mapping.resources.iter().filter(|r| r.from == si) {
        visit_specs(&rule.content, &mut |spec, line| {
            if let Spec::Column(c) = spec {
                if let Some(e) = &c.path {
                    if !cols.iter().any(|x| x.name == c.column) {
                        cols.push(Col {
                            name: c.column.clone(),
                            text: &c.column,
                            expr: e.clone(),
                            lookup: None,
                            line,
                        });
                    }
                }
            }
        });
    }
    cols
}

/// The resources of an input with their row numbers (entry index or line), and whether
/// they came from a Bundle.
///
/// # Errors
/// A message when the file is not FHIR JSON (naming the line).
fn resources(text: &str, name: &str) -> Result<(Vec<(u32, Element)>, bool), String> {
    let mut out = Vec::new();
    if is_ndjson(name) {
        for (i, line) in text.split('\n').enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let parsed = model::parse_with(line, &model::ParseOptions::default());
            match parsed.resource {
                Some(r) => out.push((n, r)),
                None => {
                    let why = parsed
                        .issues
                        .first()
                        .map_or_else(|| "not a FHIR resource".to_string(), |i| i.message.clone());
                    return Err(format!("line {n}: {why}"));
                }
            }
        }
        return Ok((out, false));
    }
    let parsed = model::parse_with(text, &model::ParseOptions::default());
    let Some(top) = parsed.resource else {
        let why = parsed
            .issues
            .first()
            .map_or_else(|| "not a FHIR resource".to_string(), ToString::to_string);
        return Err(why);
    };
    if top.type_name() != "Bundle" {
        return Ok((vec![(1, top)], false));
    }
    for (i, entry) in top.values("entry").iter().enumerate() {
        let Some(resource) = entry
            .as_element()
            .and_then(|e| e.values("resource").first())
            .and_then(model::Value::as_element)
        else {
            continue;
        };
        out.push((u32::try_from(i).unwrap_or(u32::MAX), resource.clone()));
    }
    Ok((out, true))
}

/// `Type/id` of a resource.
fn label(r: &Element) -> String {
    match r.id() {
        Some(id) => format!("{}/{id}", r.type_name()),
        None => r.type_name().to_string(),
    }
}

/// Reads an input of FHIR source `si` as a table: the selected resources as rows, the
/// columns' values as cells. Problems with single values (an expression giving several
/// values, a value not in the column's lookup table) are returned as diagnostics, their
/// cell left empty.
///
/// # Errors
/// A message when the file is not UTF-8 FHIR JSON or NDJSON.
pub fn read(
    bytes: &[u8],
    file: &str,
    si: usize,
    mapping: &Mapping,
) -> Result<(Table, Vec<Diagnostic>), String> {
    let text = decode(bytes, Encoding::Utf8)?;
    let (all, bundle) = resources(&text, file)?;
    let src = &mapping.sources[si];
    let cols = columns(mapping, si);
    let mut diagnostics = Vec::new();
    let mut resources = Vec::new();
    let mut labels = Vec::new();
    let mut rows = Vec::new();
    let mut failed = HashSet::new();
    let pos = |n: u32, label: &str, col: Option<&Col>, ci: usize| SourcePos {
        file: file.to_string(),
        row: n,
        column: col.map(|c| {
            (
                u32::try_from(ci + 1).unwrap_or(u32::MAX),
                c.text.to_string(),
            )
        }),
        fhir: Some(super::FhirPos {
            entry: bundle,
            resource: label.to_string(),
        }),
    };
    let mut problem = |source: SourcePos, line: usize, message: String| {
        diagnostics.push(Diagnostic {
            severity: Severity::Error,
            source: Some(source),
            mapping: Some((mapping.file_name.clone(), line)),
            resource: None,
            location: None,
            message,
        });
    };
    for (n, resource) in all {
        let lbl = label(&resource);
        if let Some(f) = &src.fhir {
            if let Some((select, text, line)) = &f.select {
                match select.evaluate_predicate(&Context::new(&resource)) {
                    Ok(Some(true)) => {}
                    Ok(_) => continue,
                    Err(e) => {
                        problem(
                            pos(n, &lbl, None, 0),
                            *line,
                            format!("select '{text}': {e}"),
                        );
                        continue;
                    }
                }
            }
        }
        let mut cells = Vec::with_capacity(cols.len());
        for (ci, c) in cols.iter().enumerate() {
            let ctx = Context::new(&resource);
            let value = match c.expr.evaluate(&ctx) {
                Err(e) => Err(format!("fhirpath: {e}")),
                Ok(items) if items.len() > 1 => Err(format!(
                    "'{}' gives {} values where one is expected (narrow it with where() or first())",
                    c.name,
                    items.len()
                )),
                Ok(items) => match items.first() {
                    None => Ok(String::new()),
                    Some(item) => item.to_string_value().ok_or_else(|| {
                        format!(
                            "'{}' gives a {}, not a single value (select a primitive, such as .code or .value)",
                            c.name,
                            item.output_type()
                        )
                    }),
                },
            };
            let value = value.and_then(|v| match (c.lookup, v.trim().is_empty()) {
                (Some(l), false) => {
                    let table = mapping.lookups.get(l);
                    table
                        .and_then(|t| t.entries.get(&v.trim().to_lowercase()))
                        .cloned()
                        .ok_or_else(|| {
                            format!(
                                "value '{}' is not in lookup table '{l}' (line {})",
                                v.trim(),
                                table.map_or(0, |t| t.line)
                            )
                        })
                }
                _ => Ok(v),
            });
            match value {
                Ok(v) => cells.push(v),
                Err(message) => {
                    problem(pos(n, &lbl, Some(c), ci), c.line, message);
                    let at = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
                    failed.insert((at(rows.len()), at(ci)));
                    cells.push(String::new());
                }
            }
        }
        rows.push(Row {
            line: n,
            cells: csv::StringRecord::from(cells),
        });
        labels.push(lbl);
        resources.push(resource);
    }
    let names = cols.iter().map(|c| c.name.clone()).collect();
    let headers = cols.iter().map(|c| c.text.to_string()).collect();
    let mut table = Table::from_columns(si, file, names, headers, rows);
    table.fhir = Some(Box::new(FhirRows {
        resources,
        labels,
        bundle,
        failed,
    }));
    Ok((table, diagnostics))
}
