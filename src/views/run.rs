//! Running a [`View`] over one resource: the rows it gives, as [`Cell`]s.
//!
//! The algorithm of the specification: a resource passes if every `where` path is true;
//! each selection is evaluated on each item its `forEach`/`forEachOrNull`/`repeat` chooses
//! (or on its parent's focus); its own columns make one partial row, its nested selections
//! and its `unionAll` (the branches' rows concatenated) make more, and the partial rows are
//! cross-joined. A `forEach` over nothing removes the rows it would have joined; a
//! `forEachOrNull` over nothing keeps them with nulls.

use super::definition::{Column, Iterate, Select, View};
use super::ViewError;
use crate::fhirpath::{Collection, Context, Expression, Item};
use crate::model::{Element, Scalar};

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// No value.
    Null,
    /// A Boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A decimal, with its text as written (`1.50`).
    Number(String),
    /// A string (dates and times in their FHIR text form).
    Str(String),
    /// A complex value, as its FHIR JSON.
    Json(String),
    /// The values of a `collection` column.
    List(Vec<Cell>),
}

/// A row: one cell per column of the view, in order.
pub type Row = Vec<Cell>;

/// The rows `view` makes of `resource` (none if it is of another type or fails a `where`).
///
/// # Errors
/// [`ViewError::Eval`] when a path fails, a `where` path is not Boolean, or a column without
/// `collection` finds several values.
pub fn rows(view: &View, resource: &Element) -> Result<Vec<Row>, ViewError> {
    if resource.type_name() != view.resource {
        return Ok(Vec::new());
    }
    let r = Runner { view, resource };
    for w in &view.wheres {
        let result = r.eval(w, Item::Element(resource))?;
        match &result[..] {
            [] => return Ok(Vec::new()),
            [item] => match item.as_bool() {
                Some(true) => {}
                Some(false) => return Ok(Vec::new()),
                None => {
                    return Err(r.error(format!("where path '{}' must give a Boolean", w.source())))
                }
            },
            _ => return Err(r.error(format!("where path '{}' gave several values", w.source()))),
        }
    }
    r.select(&view.root, &Item::Element(resource))
}

struct Runner<'v> {
    view: &'v View,
    resource: &'v Element,
}

impl<'v> Runner<'v> {
    fn error(&self, message: String) -> ViewError {
        ViewError::Eval {
            resource: format!(
                "{}/{}",
                self.resource.type_name(),
                self.resource.id().unwrap_or("?")
            ),
            message,
        }
    }

    fn eval(&self, expr: &'v Expression, focus: Item<'v>) -> Result<Collection<'v>, ViewError> {
        let mut ctx = Context::new(self.resource).with_focus(focus);
        for c in &self.view.constants {
            ctx = ctx.with_variable(&c.name, c.value.collection());
        }
        expr.evaluate(&ctx).map_err(|e| self.error(e.to_string()))
    }

    fn select(&self, sel: &'v Select, focus: &Item<'v>) -> Result<Vec<Row>, ViewError> {
        let foci: Vec<Option<Item<'v>>> = match &sel.iterate {
            Iterate::Here => vec![Some(focus.clone())],
            Iterate::ForEach(e) => self
                .eval(e, focus.clone())?
                .into_vec()
                .into_iter()
                .map(Some)
                .collect(),
            Iterate::ForEachOrNull(e) => {
                let items = self.eval(e, focus.clone())?.into_vec();
                if items.is_empty() {
                    vec![None]
                } else {
                    items.into_iter().map(Some).collect()
                }
            }
            Iterate::Repeat(paths) => self.repeat(paths, focus)?.into_iter().map(Some).collect(),
        };
        let mut out = Vec::new();
        for f in foci {
            let Some(f) = f else {
                out.push(vec![Cell::Null; sel.width]);
                continue;
            };
            let mut acc: Vec<Row> = vec![self.columns(&sel.columns, &f)?];
            for nested in &sel.select {
                let rows = self.select(nested, &f)?;
                acc = cross(&acc, &rows);
                if acc.is_empty() {
                    break;
                }
            }
            if !sel.union_all.is_empty() && !acc.is_empty() {
                let mut union = Vec::new();
                for branch in &sel.union_all {
                    union.extend(self.select(branch, &f)?);
                }
                acc = cross(&acc, &union);
            }
            out.extend(acc);
        }
        Ok(out)
    }

    /// The items reached by applying the paths to the focus, then to each result, depth
    /// first in document order.
    fn repeat(
        &self,
        paths: &'v [Expression],
        focus: &Item<'v>,
    ) -> Result<Vec<Item<'v>>, ViewError> {
        let mut out = Vec::new();
        for p in paths {
            for item in self.eval(p, focus.clone())?.into_vec() {
                let below = self.repeat(paths, &item)?;
                out.push(item);
                out.extend(below);
            }
        }
        Ok(out)
    }

    fn columns(&self, cols: &'v [Column], focus: &Item<'v>) -> Result<Row, ViewError> {
        let mut row = Vec::with_capacity(cols.len());
        for c in cols {
            let values = self.eval(&c.path, focus.clone())?;
            let cell = if c.collection {
                Cell::List(values.iter().map(cell).collect())
            } else {
                match &values[..] {
                    [] => Cell::Null,
                    [one] => cell(one),
                    _ => {
                        return Err(self.error(format!(
                            "column '{}' (path '{}') found {} values and is not a collection",
                            c.name,
                            c.path.source(),
                            values.len()
                        )))
                    }
                }
            };
            row.push(cell);
        }
        Ok(row)
    }
}

/// Every row of `a` joined with every row of `b`.
fn cross(a: &[Row], b: &[Row]) -> Vec<Row> {
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in a {
        for y in b {
            let mut r = x.clone();
            r.extend(y.iter().cloned());
            out.push(r);
        }
    }
    out
}

/// The cell for one FHIRPath item.
fn cell(item: &Item<'_>) -> Cell {
    match item {
        Item::Primitive(p) => match &p.value {
            None => Cell::Null,
            Some(Scalar::Bool(b)) => Cell::Bool(*b),
            Some(Scalar::Number(n)) => match n.parse::<i64>() {
                Ok(i) if !n.contains(['.', 'e', 'E']) => Cell::Int(i),
                _ => Cell::Number(n.to_string()),
            },
            Some(Scalar::String(s)) => Cell::Str(s.to_string()),
        },
        Item::Element(e) => Cell::Json(crate::model::to_json(e)),
        Item::Boolean(b) => Cell::Bool(*b),
        Item::Integer(i) => Cell::Int(*i),
        Item::Decimal(d) => Cell::Number(d.to_string()),
        other => other.to_string_value().map_or(Cell::Null, Cell::Str),
    }
}
