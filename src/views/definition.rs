//! Reading and checking a SQL on FHIR v2 ViewDefinition: the JSON is turned into a [`View`]
//! (expressions compiled, constants converted, output columns listed) and every problem the
//! specification lets one find before running is reported with its place in the JSON
//! (`select[0].column[2]`).

use serde_json::{Map, Value as JsonValue};

use super::ViewError;
use crate::fhirpath::ast::{Expr, ExprKind};
use crate::fhirpath::temporal::{Date, DateTime, Time};
use crate::fhirpath::value::{parse_decimal, Text};
use crate::fhirpath::{parser, Collection, Expression, Item};
use crate::model::schema::{self, Max, TypeInfo, TypeKind};

/// A checked ViewDefinition, ready to run.
#[derive(Debug)]
pub struct View {
    /// `name`, if given.
    pub name: Option<String>,
    /// The resource type the view reads (`Patient`).
    pub resource: String,
    /// The constants, referenced in paths as `%name`.
    pub constants: Vec<Constant>,
    /// The `where` paths; a resource makes rows only if all are true.
    pub wheres: Vec<Expression>,
    /// The top-level selection (its columns and nested selections are the view's).
    pub root: Select,
    /// The output columns in order.
    pub columns: Vec<ColumnInfo>,
}

/// A named constant value.
#[derive(Debug)]
pub struct Constant {
    /// Its name.
    pub name: String,
    /// Its value as a FHIRPath System item.
    pub value: ConstValue,
}

/// A constant's value (owned, turned into an item for each evaluation).
#[derive(Debug, Clone)]
pub enum ConstValue {
    /// `valueBoolean`
    Boolean(bool),
    /// `valueInteger` and the other integer types.
    Integer(i64),
    /// `valueDecimal`
    Decimal(rust_decimal::Decimal),
    /// The string-like types.
    String(String),
    /// `valueDate`
    Date(Date),
    /// `valueDateTime`, `valueInstant`
    DateTime(DateTime),
    /// `valueTime`
    Time(Time),
}

impl ConstValue {
    /// The value as a one-item collection.
    pub fn collection<'a>(&self) -> Collection<'a> {
        Collection::one(match self {
            Self::Boolean(b) => Item::Boolean(*b),
            Self::Integer(i) => Item::Integer(*i),
            Self::Decimal(d) => Item::Decimal(*d),
            Self::String(s) => Item::String(Text::owned(s.as_str())),
            Self::Date(d) => Item::Date(*d),
            Self::DateTime(d) => Item::date_time(*d),
            Self::Time(t) => Item::Time(*t),
        })
    }
}

/// One output column, as callers (CSV header, Parquet schema) see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Its name.
    pub name: String,
    /// Its declared FHIR type (`string`, `integer`, `decimal`, `boolean`, `date`, ...).
    pub fhir_type: Option<String>,
    /// Whether it holds a list of values.
    pub collection: bool,
}

/// A selection: columns, nested selections and unions, evaluated on each item its
/// `forEach`/`forEachOrNull`/`repeat` gives (or on its parent's focus).
#[derive(Debug)]
pub struct Select {
    /// How the focus is chosen.
    pub iterate: Iterate,
    /// Own columns.
    pub columns: Vec<Column>,
    /// Nested selections (cross-joined with the own columns).
    pub select: Vec<Select>,
    /// `unionAll` branches (their rows concatenated, then cross-joined).
    pub union_all: Vec<Select>,
    /// Number of output columns of this selection (own, nested and union).
    pub width: usize,
}

/// How a selection chooses the items it is evaluated on.
#[derive(Debug)]
pub enum Iterate {
    /// The parent's focus.
    Here,
    /// Each item of the path; none gives no rows.
    ForEach(Expression),
    /// Each item of the path; none gives one row of nulls.
    ForEachOrNull(Expression),
    /// The items the paths reach, applied again and again from each result.
    Repeat(Vec<Expression>),
}

/// A column of a selection.
#[derive(Debug)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its path.
    pub path: Expression,
    /// Whether it holds a list.
    pub collection: bool,
    /// Declared type.
    pub fhir_type: Option<String>,
}

/// The FHIR types a column may declare.
const COLUMN_TYPES: &[&str] = &[
    "base64Binary",
    "boolean",
    "canonical",
    "code",
    "date",
    "dateTime",
    "decimal",
    "id",
    "instant",
    "integer",
    "integer64",
    "markdown",
    "oid",
    "positiveInt",
    "string",
    "time",
    "unsignedInt",
    "uri",
    "url",
    "uuid",
];

/// Whether `name` is a valid SQL on FHIR column or view name.
fn sql_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses and checks a ViewDefinition from JSON text.
///
/// # Errors
/// [`ViewError::Invalid`] naming the place and the problem.
pub fn parse_view(text: &str) -> Result<View, ViewError> {
    let json: JsonValue = serde_json::from_str(text).map_err(|e| ViewError::Invalid {
        at: format!("line {} column {}", e.line(), e.column()),
        message: format!("not JSON: {e}"),
    })?;
    view_from_json(&json)
}

/// Checks a ViewDefinition given as JSON.
///
/// # Errors
/// [`ViewError::Invalid`] naming the place and the problem.
pub fn view_from_json(json: &JsonValue) -> Result<View, ViewError> {
    let invalid = |at: &str, message: String| ViewError::Invalid {
        at: at.to_string(),
        message,
    };
    let obj = json
        .as_object()
        .ok_or_else(|| invalid("", "a ViewDefinition must be a JSON object".into()))?;
    if let Some(rt) = obj.get("resourceType") {
        if rt.as_str() != Some("ViewDefinition") {
            return Err(invalid(
                "resourceType",
                format!("expected ViewDefinition, found {rt}"),
            ));
        }
    }
    let name = match obj.get("name") {
        None => None,
        Some(JsonValue::String(n)) if sql_name(n) => Some(n.clone()),
        Some(other) => {
            return Err(invalid(
                "name",
                format!("{other} is not a valid view name (letters, digits, `_`; a letter first)"),
            ))
        }
    };
    let resource = obj
        .get("resource")
        .and_then(JsonValue::as_str)
        .ok_or_else(|| invalid("resource", "a ViewDefinition needs `resource`".into()))?;
    let res_info = schema::type_info(resource)
        .filter(|t| t.kind == TypeKind::Resource && schema::is_resource_type(resource))
        .ok_or_else(|| invalid("resource", format!("unknown resource type '{resource}'")))?;
    let mut constants = Vec::new();
    for (i, c) in array(obj, "constant", "")?.iter().enumerate() {
        let at = format!("constant[{i}]");
        let c = c
            .as_object()
            .ok_or_else(|| invalid(&at, "a constant must be an object".into()))?;
        let cname = c
            .get("name")
            .and_then(JsonValue::as_str)
            .filter(|n| sql_name(n))
            .ok_or_else(|| invalid(&at, "a constant needs a valid `name`".into()))?;
        if constants.iter().any(|k: &Constant| k.name == cname) {
            return Err(invalid(&at, format!("constant '{cname}' is defined twice")));
        }
        let value = constant_value(c).map_err(|m| invalid(&at, m))?;
        constants.push(Constant {
            name: cname.to_string(),
            value,
        });
    }
    let names: Vec<&str> = constants.iter().map(|c| c.name.as_str()).collect();
    let mut wheres = Vec::new();
    for (i, w) in array(obj, "where", "")?.iter().enumerate() {
        let at = format!("where[{i}]");
        let path = w
            .get("path")
            .and_then(JsonValue::as_str)
            .ok_or_else(|| invalid(&at, "a where needs a `path`".into()))?;
        wheres.push(compile(path, &at, &names)?);
    }
    let selects = array(obj, "select", "")?;
    if selects.is_empty() {
        return Err(invalid(
            "select",
            "a ViewDefinition needs at least one select".into(),
        ));
    }
    let mut columns = Vec::new();
    let mut select = Vec::new();
    for (i, s) in selects.iter().enumerate() {
        select.push(selection(
            s,
            &format!("select[{i}]"),
            Some(res_info),
            &names,
            &mut columns,
        )?);
    }
    let width = columns.len();
    Ok(View {
        name,
        resource: resource.to_string(),
        constants,
        wheres,
        root: Select {
            iterate: Iterate::Here,
            columns: Vec::new(),
            select,
            union_all: Vec::new(),
            width,
        },
        columns,
    })
}

/// The array member `key` of `obj` (absent is empty).
fn array<'j>(
    obj: &'j Map<String, JsonValue>,
    key: &str,
    at: &str,
) -> Result<&'j [JsonValue], ViewError> {
    match obj.get(key) {
        None => Ok(&[]),
        Some(JsonValue::Array(a)) => Ok(a),
        Some(_) => Err(ViewError::Invalid {
            at: join(at, key),
            message: format!("`{key}` must be an array"),
        }),
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// Compiles a path, refusing references to constants that are not defined.
fn compile(path: &str, at: &str, constants: &[&str]) -> Result<Expression, ViewError> {
    let expr = Expression::compile(path).map_err(|e| ViewError::Invalid {
        at: at.to_string(),
        message: format!("path '{path}': {e}"),
    })?;
    if let Ok(ast) = parser::parse(path) {
        let mut missing = None;
        visit(&ast, &mut |e| {
            if let ExprKind::Variable(v) = &e.kind {
                let builtin = matches!(
                    v.as_str(),
                    "resource" | "rootResource" | "context" | "ucum" | "sct" | "loinc"
                ) || v.starts_with("vs-")
                    || v.starts_with("ext-");
                if !builtin && !constants.contains(&v.as_str()) && missing.is_none() {
                    missing = Some(v.clone());
                }
            }
        });
        if let Some(v) = missing {
            return Err(ViewError::Invalid {
                at: at.to_string(),
                message: format!("path '{path}' uses %{v}, which is not a constant of the view"),
            });
        }
    }
    Ok(expr)
}

/// Calls `f` on every node of the syntax tree.
fn visit(e: &Expr, f: &mut impl FnMut(&Expr)) {
    f(e);
    match &e.kind {
        ExprKind::Member { base, .. } => visit(base, f),
        ExprKind::Function { base, args, .. } => {
            if let Some(b) = base {
                visit(b, f);
            }
            for a in args {
                visit(a, f);
            }
        }
        ExprKind::Indexer { base, index } => {
            visit(base, f);
            visit(index, f);
        }
        ExprKind::Unary { operand, .. } => visit(operand, f),
        ExprKind::Binary { lhs, rhs, .. } => {
            visit(lhs, f);
            visit(rhs, f);
        }
        _ => {}
    }
}

/// Reads a `constant`'s `value[x]`.
fn constant_value(c: &Map<String, JsonValue>) -> Result<ConstValue, String> {
    let mut found = None;
    for (k, v) in c {
        if let Some(ty) = k.strip_prefix("value") {
            if found.is_some() {
                return Err("a constant has exactly one value[x]".into());
            }
            found = Some((ty, v));
        }
    }
    let (ty, v) = found.ok_or("a constant needs a value[x]")?;
    let text = || v.as_str().ok_or(format!("value{ty} must be a string"));
    let bad = |what: &str| format!("value{ty}: {v} is not a valid {what}");
    Ok(match ty {
        "Boolean" => ConstValue::Boolean(v.as_bool().ok_or_else(|| bad("boolean"))?),
        "Integer" | "PositiveInt" | "UnsignedInt" | "Integer64" => {
            let i = match v {
                JsonValue::Number(n) => n.as_i64(),
                JsonValue::String(s) if ty == "Integer64" => s.parse().ok(),
                _ => None,
            };
            ConstValue::Integer(i.ok_or_else(|| bad("integer"))?)
        }
        "Decimal" => {
            let JsonValue::Number(n) = v else {
                return Err(bad("decimal"));
            };
            ConstValue::Decimal(parse_decimal(&n.to_string()).ok_or_else(|| bad("decimal"))?)
        }
        "Date" => ConstValue::Date(Date::parse_fhir(text()?).map_err(|_| bad("date"))?),
        "DateTime" | "Instant" => {
            ConstValue::DateTime(DateTime::parse_fhir(text()?).map_err(|_| bad("dateTime"))?)
        }
        "Time" => ConstValue::Time(Time::parse_fhir(text()?).map_err(|_| bad("time"))?),
        "Base64Binary" | "Canonical" | "Code" | "Id" | "Oid" | "String" | "Uri" | "Url"
        | "Uuid" | "Markdown" => ConstValue::String(text()?.to_string()),
        other => {
            return Err(format!(
                "value{other} is not a constant type SQL on FHIR allows"
            ))
        }
    })
}

/// Reads one selection, appending its output columns to `columns` (refusing duplicates).
fn selection(
    json: &JsonValue,
    at: &str,
    focus: Option<&'static TypeInfo>,
    constants: &[&str],
    columns: &mut Vec<ColumnInfo>,
) -> Result<Select, ViewError> {
    let invalid = |at: &str, message: String| ViewError::Invalid {
        at: at.to_string(),
        message,
    };
    let obj = json
        .as_object()
        .ok_or_else(|| invalid(at, "a select must be an object".into()))?;
    let path_of = |key: &str| -> Result<Option<&str>, ViewError> {
        match obj.get(key) {
            None => Ok(None),
            Some(JsonValue::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(&join(at, key), format!("`{key}` must be a string"))),
        }
    };
    let for_each = path_of("forEach")?;
    let for_each_or_null = path_of("forEachOrNull")?;
    let repeat = match obj.get("repeat") {
        None => None,
        Some(JsonValue::Array(a)) => Some(
            a.iter()
                .map(|p| p.as_str())
                .collect::<Option<Vec<&str>>>()
                .ok_or_else(|| invalid(&join(at, "repeat"), "repeat paths are strings".into()))?,
        ),
        Some(_) => {
            return Err(invalid(
                &join(at, "repeat"),
                "`repeat` must be an array".into(),
            ))
        }
    };
    let given = usize::from(for_each.is_some())
        + usize::from(for_each_or_null.is_some())
        + usize::from(repeat.is_some());
    if given > 1 {
        return Err(invalid(
            at,
            "only one of forEach, forEachOrNull and repeat may be given".into(),
        ));
    }
    let (iterate, inner) = if let Some(p) = for_each {
        let e = compile(p, &join(at, "forEach"), constants)?;
        (Iterate::ForEach(e), path_type(p, focus))
    } else if let Some(p) = for_each_or_null {
        let e = compile(p, &join(at, "forEachOrNull"), constants)?;
        (Iterate::ForEachOrNull(e), path_type(p, focus))
    } else if let Some(paths) = repeat {
        if paths.is_empty() {
            return Err(invalid(
                &join(at, "repeat"),
                "repeat needs at least one path".into(),
            ));
        }
        let mut es = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            es.push(compile(p, &format!("{at}.repeat[{i}]"), constants)?);
        }
        (Iterate::Repeat(es), None)
    } else {
        (Iterate::Here, focus)
    };
    let start = columns.len();
    let mut own = Vec::new();
    for (i, c) in array(obj, "column", at)?.iter().enumerate() {
        let cat = format!("{at}.column[{i}]");
        let c = c
            .as_object()
            .ok_or_else(|| invalid(&cat, "a column must be an object".into()))?;
        let name = c
            .get("name")
            .and_then(JsonValue::as_str)
            .ok_or_else(|| invalid(&cat, "a column needs a `name`".into()))?;
        if !sql_name(name) {
            return Err(invalid(
                &cat,
                format!(
                    "'{name}' is not a valid column name (letters, digits, `_`; a letter first)"
                ),
            ));
        }
        let path = c
            .get("path")
            .and_then(JsonValue::as_str)
            .ok_or_else(|| invalid(&cat, format!("column '{name}' needs a `path`")))?;
        let collection = match c.get("collection") {
            None => false,
            Some(JsonValue::Bool(b)) => *b,
            Some(_) => {
                return Err(invalid(
                    &cat,
                    format!("column '{name}': `collection` must be true or false"),
                ))
            }
        };
        let fhir_type = match c.get("type") {
            None => None,
            Some(JsonValue::String(t)) if COLUMN_TYPES.contains(&t.as_str()) => Some(t.clone()),
            Some(t) => {
                return Err(invalid(
                    &cat,
                    format!(
                        "column '{name}': unknown type {t} (one of {})",
                        COLUMN_TYPES.join(", ")
                    ),
                ))
            }
        };
        let expr = compile(path, &cat, constants)?;
        if !collection && path_many(path, inner) == Some(true) {
            return Err(invalid(
                &cat,
                format!(
                    "column '{name}': path '{path}' can give several values; \
                     set \"collection\": true or narrow it (e.g. first())"
                ),
            ));
        }
        if columns.iter().any(|k| k.name == name) {
            return Err(invalid(&cat, format!("column name '{name}' is used twice")));
        }
        columns.push(ColumnInfo {
            name: name.to_string(),
            fhir_type: fhir_type.clone(),
            collection,
        });
        own.push(Column {
            name: name.to_string(),
            path: expr,
            collection,
            fhir_type,
        });
    }
    let mut select = Vec::new();
    for (i, s) in array(obj, "select", at)?.iter().enumerate() {
        select.push(selection(
            s,
            &format!("{at}.select[{i}]"),
            inner,
            constants,
            columns,
        )?);
    }
    let mut union_all = Vec::new();
    let branches = array(obj, "unionAll", at)?;
    let before_union = columns.len();
    let mut first_branch: Option<Vec<ColumnInfo>> = None;
    for (i, s) in branches.iter().enumerate() {
        let uat = format!("{at}.unionAll[{i}]");
        let mut branch_cols = columns[..before_union].to_vec();
        union_all.push(selection(s, &uat, inner, constants, &mut branch_cols)?);
        let mine = branch_cols.split_off(before_union);
        match &first_branch {
            None => first_branch = Some(mine),
            Some(first) => {
                let names = |c: &[ColumnInfo]| {
                    c.iter()
                        .map(|c| c.name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                if first
                    .iter()
                    .map(|c| &c.name)
                    .ne(mine.iter().map(|c| &c.name))
                {
                    return Err(invalid(
                        &uat,
                        format!(
                            "unionAll branches must have the same columns in the same order: \
                             [{}] here, [{}] in the first",
                            names(&mine),
                            names(first)
                        ),
                    ));
                }
            }
        }
    }
    if let Some(first) = first_branch {
        columns.extend(first);
    }
    Ok(Select {
        iterate,
        columns: own,
        select,
        union_all,
        width: columns.len() - start,
    })
}

/// The type a path gives on `focus`, when it is a plain chain of element names.
fn path_type(path: &str, focus: Option<&'static TypeInfo>) -> Option<&'static TypeInfo> {
    let ast = parser::parse(path).ok()?;
    infer(&ast, focus).and_then(|(t, _)| t)
}

/// Whether a path can give several values on `focus` (`None`: cannot tell).
fn path_many(path: &str, focus: Option<&'static TypeInfo>) -> Option<bool> {
    let ast = parser::parse(path).ok()?;
    infer(&ast, focus).map(|(_, many)| many)
}

/// Type (when known) and multiplicity of simple paths: element names, `ofType`, `where`,
/// and the functions that give one value. `None` for anything else (`extension(url)`
/// included), which leaves the check to run time.
fn infer(e: &Expr, focus: Option<&'static TypeInfo>) -> Option<(Option<&'static TypeInfo>, bool)> {
    match &e.kind {
        ExprKind::This => Some((focus, false)),
        ExprKind::Identifier(name) => {
            if let Some(f) = focus {
                if f.kind == TypeKind::Resource && *f.name == **name {
                    return Some((focus, false));
                }
            }
            member(focus?, name, false)
        }
        ExprKind::Member { base, name } => {
            let (t, many) = infer(base, focus)?;
            member(t?, name, many)
        }
        ExprKind::Function { base, name, args } => {
            let (t, many) = match base {
                Some(b) => infer(b, focus)?,
                None => (focus, false),
            };
            match name.as_str() {
                "where" => Some((t, many)),
                "ofType" => {
                    let ty = match args.first().map(|a| &a.kind) {
                        Some(ExprKind::Identifier(n)) => schema::type_info(n),
                        _ => None,
                    };
                    Some((ty, many))
                }
                // An extension chosen by URL is single by convention (profiles slice
                // extensions 0..1); its multiplicity is left to the run-time check.
                "extension" => None,
                "first" | "last" | "single" => Some((t, false)),
                "count" | "exists" | "empty" | "join" | "getResourceKey" | "getReferenceKey"
                | "hasValue" | "not" | "allTrue" | "anyTrue" | "toString" => Some((None, false)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Type and multiplicity of `focus.name`.
fn member(
    focus: &'static TypeInfo,
    name: &str,
    many: bool,
) -> Option<(Option<&'static TypeInfo>, bool)> {
    let (_, el) = focus.element(name)?;
    let repeats = !matches!(el.max, Max::Count(0 | 1));
    let ty = if el.types.len() == 1 {
        el.types[0].info()
    } else {
        None
    };
    Some((ty, many || repeats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        match parse_view(json) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted: {json}"),
        }
    }

    #[test]
    fn refuses_unknown_column_type() {
        let e = err(
            r#"{"resource":"Patient","select":[{"column":[{"name":"a","path":"id","type":"varchar"}]}]}"#,
        );
        assert!(
            e.contains("select[0].column[0]") && e.contains("unknown type"),
            "{e}"
        );
    }

    #[test]
    fn refuses_collection_path_without_collection() {
        let e = err(
            r#"{"resource":"Patient","select":[{"column":[{"name":"f","path":"name.family"}]}]}"#,
        );
        assert!(e.contains("several values"), "{e}");
        let e = err(
            r#"{"resource":"Patient","select":[{"forEach":"contact","column":[{"name":"g","path":"name.given"}]}]}"#,
        );
        assert!(e.contains("several values"), "{e}");
        parse_view(r#"{"resource":"Patient","select":[{"forEach":"name","column":[{"name":"f","path":"family"},{"name":"g","path":"given","collection":true}]}]}"#).unwrap();
        parse_view(r#"{"resource":"Patient","select":[{"column":[{"name":"f","path":"name.family.first()"}]}]}"#).unwrap();
    }

    #[test]
    fn refuses_duplicate_columns_across_selects() {
        let e = err(
            r#"{"resource":"Patient","select":[{"column":[{"name":"id","path":"id"}]},{"forEach":"name","column":[{"name":"id","path":"family"}]}]}"#,
        );
        assert!(
            e.contains("select[1].column[0]") && e.contains("used twice"),
            "{e}"
        );
    }

    #[test]
    fn refuses_mismatched_union_branches_and_unknown_constants() {
        let e = err(
            r#"{"resource":"Patient","select":[{"unionAll":[{"forEach":"telecom","column":[{"name":"v","path":"value"}]},{"forEach":"contact.telecom","column":[{"name":"w","path":"value"}]}]}]}"#,
        );
        assert!(
            e.contains("unionAll[1]") && e.contains("same columns"),
            "{e}"
        );
        let e = err(
            r#"{"resource":"Patient","select":[{"column":[{"name":"v","path":"name.where(use = %u).family.first()"}]}]}"#,
        );
        assert!(e.contains("%u"), "{e}");
        let e = err(r#"{"resource":"Nope","select":[{"column":[{"name":"v","path":"id"}]}]}"#);
        assert!(e.contains("unknown resource type"), "{e}");
    }
}
