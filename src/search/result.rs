//! The result side of a search (R4 search.html, "Modifying Search Results"): `_sort`,
//! keyset paging with an opaque `_cursor`, `_include` and `_revinclude` (one level),
//! `_elements` and `_summary`, and the SQL of the page, count and include queries.
//!
//! Paging is by keyset, not offset: a page is "the `_count` matches after (or before) this
//! position in the sort order", where a position is the sort key values of one resource plus
//! its id (the tie-breaker). The `next` and `previous` links carry the position of the last
//! and first resource of the page, so a resource created, updated or deleted between two
//! fetches never shifts the others: none is seen twice and none that existed throughout with
//! an unchanged sort key is skipped. Without `_sort` the order is by id, which never
//! changes; with `_sort=_lastUpdated` an update moves a resource (its key changed).
//!
//! A resource's sort key for a parameter is its lowest indexed value for an ascending sort and
//! its highest for a descending one (dates: the start of the earliest range, the end of the
//! latest); resources without a value come last in either direction.

use super::{param_type, Parsed, Piece};
use crate::model::json::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// What one sort key orders by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortBy {
    /// The logical id.
    Id,
    /// `meta.lastUpdated`.
    LastUpdated,
    /// A search parameter of the type (string, date, token or reference).
    Param {
        /// Parameter code.
        name: String,
        /// Its type.
        kind: &'static str,
    },
}

/// One key of `_sort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sort {
    /// What it orders by.
    pub by: SortBy,
    /// `-` given: descending.
    pub desc: bool,
}

/// One `_include` or `_revinclude` (`Type:param[:Target]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// The type holding the reference.
    pub source: String,
    /// The reference parameter; `None` for `*` (every reference parameter).
    pub param: Option<String>,
    /// Only targets of this type.
    pub target: Option<String>,
}

/// `_summary` other than `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    /// Elements marked as summary in the base definition (and mandatory ones).
    True,
    /// `text`, `id`, `meta` and mandatory elements.
    Text,
    /// Everything but `text`.
    Data,
    /// The whole resource.
    False,
}

/// A position in the sort order: the sort key values of one resource (`None`: it has no
/// value) and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// One value per sort key.
    pub keys: Vec<Option<String>>,
    /// The id, the last tie-breaker.
    pub id: String,
}

/// A decoded `_cursor`: the page after (or before) a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The page is the matches before the position (a `previous` link).
    pub before: bool,
    /// The position itself belongs to the page.
    pub inclusive: bool,
    /// Where the page starts (after) or ends (before).
    pub at: Position,
}

/// The result parameters of a search.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// `_sort` keys, in order.
    pub sort: Vec<Sort>,
    /// `_include`s.
    pub include: Vec<Include>,
    /// `_revinclude`s.
    pub revinclude: Vec<Include>,
    /// `_elements` (element names), if given.
    pub elements: Option<Vec<String>>,
    /// `_summary` (not `count`), if given.
    pub summary: Option<Summary>,
    /// `_cursor`: which page.
    pub cursor: Option<Cursor>,
}

/// The code system and code of the tag on resources returned with some elements left out.
pub const SUBSETTED: (&str, &str) = (
    "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "SUBSETTED",
);

/// The search parameter name of the paging cursor.
pub const CURSOR_PARAM: &str = "_cursor";

/// Handles `key=value` when it is a result parameter of this module (`_sort`, `_include`,
/// `_revinclude`, `_elements`, `_summary` other than `count`, `_cursor`): records it in
/// `p.shape` (and `p.used`, `p.unknown`) and returns `true`; `false` for other parameters.
///
/// # Errors
/// A `_cursor` that is not one this server made.
pub fn parse_param(p: &mut Parsed, res_type: &str, key: &str, value: &str) -> Result<bool, String> {
    let (name, modifier) = match key.split_once(':') {
        Some((n, m)) => (n, Some(m)),
        None => (key, None),
    };
    match (name, modifier) {
        ("_sort", None) => {
            for part in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (desc, code) = match part.strip_prefix('-') {
                    Some(c) => (true, c),
                    None => (false, part),
                };
                let by = match code {
                    "_id" => SortBy::Id,
                    "_lastUpdated" => SortBy::LastUpdated,
                    _ => match param_type(res_type, code) {
                        Some(kind @ ("string" | "date" | "token" | "reference")) => SortBy::Param {
                            name: code.to_string(),
                            kind,
                        },
                        _ => {
                            p.unknown
                                .push(format!("_sort by {code} is not supported for {res_type}"));
                            continue;
                        }
                    },
                };
                p.shape.sort.push(Sort { by, desc });
            }
        }
        ("_include" | "_revinclude", None) => {
            let rev = name == "_revinclude";
            match include(res_type, value, rev) {
                Ok(inc) if rev => p.shape.revinclude.push(inc),
                Ok(inc) => p.shape.include.push(inc),
                Err(why) => {
                    p.unknown.push(why);
                    return Ok(true);
                }
            }
        }
        ("_include" | "_revinclude", Some(m)) => {
            p.unknown.push(format!(
                "{name}:{m} is not supported (includes are one level)"
            ));
            return Ok(true);
        }
        ("_elements", None) => {
            let list: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            p.shape.elements = Some(list);
        }
        ("_summary", None) => {
            p.shape.summary = Some(match value {
                "count" => return Ok(false),
                "true" => Summary::True,
                "text" => Summary::Text,
                "data" => Summary::Data,
                "false" => Summary::False,
                _ => {
                    p.unknown.push(format!("_summary={value} is not supported"));
                    return Ok(true);
                }
            });
        }
        (CURSOR_PARAM, None) => {
            p.shape.cursor = Some(
                decode_cursor(value)
                    .ok_or_else(|| format!("{CURSOR_PARAM} is not a cursor of this server"))?,
            );
            return Ok(true);
        }
        _ => return Ok(false),
    }
    p.used.push((key.to_string(), value.to_string()));
    Ok(true)
}

/// Reads `Type:param[:Target]` (or `Type:*`); for `_include` the type must be the searched
/// one. The error is the warning for an include that cannot be done.
fn include(res_type: &str, value: &str, rev: bool) -> Result<Include, String> {
    let parts: Vec<&str> = value.split(':').collect();
    let name = if rev { "_revinclude" } else { "_include" };
    let (source, param, target) = match parts.as_slice() {
        [s, p] => (*s, *p, None),
        [s, p, t] => (*s, *p, Some(*t)),
        _ => return Err(format!("{name}={value} is not Type:parameter[:Target]")),
    };
    if !crate::model::schema::is_resource_type(source) {
        return Err(format!("{name}={value}: {source} is not a resource type"));
    }
    if !rev && source != res_type {
        return Err(format!(
            "{name}={value}: the source type must be the searched type {res_type}"
        ));
    }
    if let Some(t) = target {
        if !crate::model::schema::is_resource_type(t) {
            return Err(format!("{name}={value}: {t} is not a resource type"));
        }
    }
    let param = if param == "*" {
        None
    } else if param_type(source, param) == Some("reference") {
        Some(param.to_string())
    } else {
        return Err(format!(
            "{name}={value}: {param} is not a reference parameter of {source}"
        ));
    };
    Ok(Include {
        source: source.to_string(),
        param,
        target: target.map(str::to_string),
    })
}

/// The opaque `_cursor` text of a page after (or before) `at`.
pub fn encode_cursor(cursor: &Cursor) -> String {
    let keys: Vec<serde_json::Value> = cursor
        .at
        .keys
        .iter()
        .map(|k| {
            k.as_ref()
                .map_or(serde_json::Value::Null, |s| s.as_str().into())
        })
        .collect();
    let v = serde_json::json!([
        if cursor.before { "b" } else { "a" },
        cursor.inclusive,
        keys,
        cursor.at.id
    ]);
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Reads a `_cursor` made by [`encode_cursor`].
pub fn decode_cursor(text: &str) -> Option<Cursor> {
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let before = match v.get(0)?.as_str()? {
        "a" => false,
        "b" => true,
        _ => return None,
    };
    let inclusive = v.get(1)?.as_bool()?;
    let mut keys = Vec::new();
    for k in v.get(2)?.as_array()? {
        keys.push(match k {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            _ => return None,
        });
    }
    let id = v.get(3)?.as_str()?.to_string();
    Some(Cursor {
        before,
        inclusive,
        at: Position { keys, id },
    })
}

fn sql(out: &mut Vec<Piece>, text: &str) {
    out.push(Piece::Sql(text.to_string()));
}

fn bind(out: &mut Vec<Piece>, value: &str) {
    out.push(Piece::Bind(value.to_string()));
}

/// `AND` the tenancy condition: only resources of `site` (never unlabelled ones).
fn site_sql(out: &mut Vec<Piece>, site: Option<&str>, table: &str) {
    if let Some(site) = site {
        sql(out, &format!(" AND {table}.site = "));
        bind(out, site);
        sql(out, &format!(" AND {table}.site <> ''"));
    }
}

/// The SQL value of sort key number `i` of resource row `r` (NULL when the resource has
/// none), grouped by resource: the aggregate expression, and the join that brings the index
/// rows (alias `x{i}`) for a parameter. A join with `GROUP BY`, not a correlated subquery:
/// SQLite answers `SELECT MAX(high) ... WHERE res_id = ?` by walking the `(param, high)`
/// index from its end, which is a scan of the whole parameter for every resource.
fn key_sql(i: usize, sort: &Sort) -> (String, Vec<Piece>) {
    let agg = if sort.desc { "MAX" } else { "MIN" };
    let (name, kind) = match &sort.by {
        SortBy::Id => return (format!("{agg}(r.res_id)"), Vec::new()),
        SortBy::LastUpdated => return (format!("{agg}(r.last_updated)"), Vec::new()),
        SortBy::Param { name, kind } => (name, *kind),
    };
    let (table, column) = match kind {
        "string" => ("search_string", "value"),
        "date" if sort.desc => ("search_date", "high"),
        "date" => ("search_date", "low"),
        "token" => ("search_token", "code"),
        _ => ("search_reference", "target"),
    };
    let join = vec![
        Piece::Sql(format!(
            " LEFT JOIN {table} x{i} ON x{i}.res_type = r.res_type \
             AND x{i}.res_id = r.res_id AND x{i}.param = "
        )),
        Piece::Bind(name.clone()),
    ];
    (format!("{agg}(x{i}.{column})"), join)
}

/// The query of one page of matches: the version columns `columns` (over `v`) and the sort
/// key values `k0`, `k1`, ... of at most `limit` current resources of `res_type` matching
/// `parsed` (of `site` only, when given), in sort order, from `parsed`'s cursor and offset.
/// A `before` cursor returns the page in reverse order.
pub fn page_sql(
    res_type: &str,
    parsed: &Parsed,
    site: Option<&str>,
    limit: i64,
    columns: &str,
) -> Vec<Piece> {
    let sorts = &parsed.shape.sort;
    let keys: String = (0..sorts.len()).map(|i| format!(", {{t}}.k{i}")).collect();
    let mut out = Vec::new();
    // Three levels: `s` computes the sort keys of the matches, `p` picks the page from them
    // (only ids and keys, so the sort does not carry resource texts), and the outer query
    // joins the page's versions.
    sql(
        &mut out,
        &format!(
            "SELECT {columns}{} FROM (SELECT s.res_type, s.res_id, s.version_id{} \
             FROM (SELECT r.res_type, r.res_id, r.version_id",
            (0..sorts.len())
                .map(|i| format!(", p.k{i} AS k{i}"))
                .collect::<String>(),
            keys.replace("{t}", "s")
        ),
    );
    let mut joins = Vec::new();
    for (i, s) in sorts.iter().enumerate() {
        let (expr, join) = key_sql(i, s);
        sql(&mut out, &format!(", {expr} AS k{i}"));
        joins.extend(join);
    }
    sql(&mut out, " FROM resource r");
    out.extend(joins);
    sql(&mut out, " WHERE ");
    out.extend(super::where_sql(res_type, parsed));
    site_sql(&mut out, site, "r");
    if !sorts.is_empty() {
        sql(&mut out, " GROUP BY r.res_type, r.res_id, r.version_id");
    }
    sql(&mut out, ") s");
    // The sort components over `{t}`: (expression, ascending in the forward order).
    let mut comps: Vec<(String, bool)> = Vec::new();
    for (i, s) in sorts.iter().enumerate() {
        comps.push((
            format!("(CASE WHEN {{t}}.k{i} IS NULL THEN 1 ELSE 0 END)"),
            true,
        ));
        comps.push((format!("COALESCE({{t}}.k{i}, '')"), !s.desc));
    }
    comps.push(("{t}.res_id".to_string(), true));
    let before = parsed.shape.cursor.as_ref().is_some_and(|c| c.before);
    if let Some(c) = &parsed.shape.cursor {
        let mut values: Vec<Piece> = Vec::new();
        for k in &c.at.keys {
            // The flag is 1 for a missing value (an integer literal, not a bound text).
            values.push(Piece::Sql(if k.is_none() { "1" } else { "0" }.into()));
            values.push(Piece::Bind(k.clone().unwrap_or_default()));
        }
        values.push(Piece::Bind(c.at.id.clone()));
        sql(&mut out, " WHERE (");
        for j in 0..comps.len() {
            if j > 0 {
                sql(&mut out, " OR ");
            }
            sql(&mut out, "(");
            for l in 0..j {
                sql(&mut out, &format!("{} = ", comps[l].0.replace("{t}", "s")));
                out.push(values[l].clone());
                sql(&mut out, " AND ");
            }
            let forward_up = comps[j].1 != before;
            let last = j + 1 == comps.len();
            let op = match (forward_up, last && c.inclusive) {
                (true, false) => ">",
                (true, true) => ">=",
                (false, false) => "<",
                (false, true) => "<=",
            };
            sql(
                &mut out,
                &format!("{} {op} ", comps[j].0.replace("{t}", "s")),
            );
            out.push(values[j].clone());
            sql(&mut out, ")");
        }
        sql(&mut out, ")");
    }
    let order = |t: &str| -> String {
        comps
            .iter()
            .map(|(e, up)| {
                format!(
                    "{} {}",
                    e.replace("{t}", t),
                    if *up != before { "ASC" } else { "DESC" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    sql(&mut out, &format!(" ORDER BY {} LIMIT {limit}", order("s")));
    if parsed.offset > 0 && !before {
        sql(&mut out, &format!(" OFFSET {}", parsed.offset));
    }
    sql(
        &mut out,
        &format!(
            ") p JOIN resource_version v ON v.res_type = p.res_type AND v.res_id = p.res_id \
             AND v.version_id = p.version_id ORDER BY {}",
            order("p")
        ),
    );
    out
}

/// The query counting current resources of `res_type` matching `parsed` (of `site` only,
/// when given), as column `n`.
pub fn count_sql(res_type: &str, parsed: &Parsed, site: Option<&str>) -> Vec<Piece> {
    let mut out = vec![Piece::Sql(
        "SELECT COUNT(*) AS n FROM resource r WHERE ".into(),
    )];
    out.extend(super::where_sql(res_type, parsed));
    site_sql(&mut out, site, "r");
    out
}

/// The query of the reference targets (column `target`) that the resources `ids` of
/// `inc.source` hold in `inc.param` (any reference parameter for `*`).
pub fn include_targets_sql(inc: &Include, ids: &[&str]) -> Vec<Piece> {
    let mut out = Vec::new();
    sql(
        &mut out,
        "SELECT DISTINCT x.target AS target FROM search_reference x WHERE x.res_type = ",
    );
    bind(&mut out, &inc.source);
    if let Some(p) = &inc.param {
        sql(&mut out, " AND x.param = ");
        bind(&mut out, p);
    }
    in_list(&mut out, " AND x.res_id IN (", ids);
    out
}

/// `Type` and `id` of a relative literal reference (`Patient/123`), when it is one to a
/// resource type (of `target` when given).
pub fn relative_target<'a>(reference: &'a str, target: Option<&str>) -> Option<(&'a str, &'a str)> {
    let (t, id) = reference.split_once('/')?;
    if id.is_empty() || id.contains('/') || !crate::model::schema::is_resource_type(t) {
        return None;
    }
    if target.is_some_and(|want| want != t) {
        return None;
    }
    Some((t, id))
}

/// The query of the current resources `refs` (type, id) with the version columns `columns`
/// (of `site` only, when given).
pub fn resources_sql(refs: &[(String, String)], site: Option<&str>, columns: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    sql(
        &mut out,
        &format!(
            "SELECT {columns} FROM resource r JOIN resource_version v \
             ON v.res_type = r.res_type AND v.res_id = r.res_id \
             AND v.version_id = r.version_id WHERE NOT r.deleted"
        ),
    );
    site_sql(&mut out, site, "r");
    sql(&mut out, " AND (");
    for (i, (t, id)) in refs.iter().enumerate() {
        sql(
            &mut out,
            if i > 0 {
                " OR (r.res_type = "
            } else {
                "(r.res_type = "
            },
        );
        bind(&mut out, t);
        sql(&mut out, " AND r.res_id = ");
        bind(&mut out, id);
        sql(&mut out, ")");
    }
    if refs.is_empty() {
        sql(&mut out, "1 = 0");
    }
    sql(&mut out, ") ORDER BY r.res_type, r.res_id");
    out
}

/// The query of the current resources of `inc.source` (of `site` only, when given) that
/// refer, in `inc.param` (any reference parameter for `*`), to one of `targets`
/// (`Type/id`), with the version columns `columns`.
pub fn revinclude_sql(
    inc: &Include,
    targets: &[String],
    site: Option<&str>,
    columns: &str,
) -> Vec<Piece> {
    let mut out = Vec::new();
    sql(
        &mut out,
        &format!(
            "SELECT {columns} FROM resource r JOIN resource_version v \
             ON v.res_type = r.res_type AND v.res_id = r.res_id \
             AND v.version_id = r.version_id WHERE r.res_type = "
        ),
    );
    bind(&mut out, &inc.source);
    sql(&mut out, " AND NOT r.deleted");
    site_sql(&mut out, site, "r");
    sql(
        &mut out,
        " AND r.res_id IN (SELECT x.res_id FROM search_reference x WHERE x.res_type = ",
    );
    bind(&mut out, &inc.source);
    if let Some(p) = &inc.param {
        sql(&mut out, " AND x.param = ");
        bind(&mut out, p);
    }
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    in_list(&mut out, " AND x.target IN (", &refs);
    sql(&mut out, ") ORDER BY r.res_id");
    out
}

/// `prefix` then the bound `values` separated by commas and `)`; `NULL` for none (matches
/// nothing).
fn in_list(out: &mut Vec<Piece>, prefix: &str, values: &[&str]) {
    sql(out, prefix);
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            sql(out, ", ");
        }
        bind(out, v);
    }
    if values.is_empty() {
        sql(out, "NULL");
    }
    sql(out, ")");
}

/// Top-level element names of `res_type` marked `isSummary` in its base definition.
fn summary_elements(res_type: &str) -> Vec<String> {
    let Some(sd) = crate::definitions::get(
        crate::definitions::Kind::StructureDefinition,
        &crate::definitions::core_url(res_type),
    ) else {
        return Vec::new();
    };
    let prefix = format!("{res_type}.");
    sd.pointer("/snapshot/element")
        .and_then(serde_json::Value::as_array)
        .map(|els| {
            els.iter()
                .filter(|e| e.get("isSummary").and_then(serde_json::Value::as_bool) == Some(true))
                .filter_map(|e| e.get("path")?.as_str()?.strip_prefix(&prefix))
                .filter(|rest| !rest.contains('.'))
                .map(|rest| rest.trim_end_matches("[x]").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The stored `content` of a `res_type` resource as `_elements` / `_summary` ask: the
/// requested top-level elements plus `id`, `meta` and mandatory elements, tagged
/// SUBSETTED; the content unchanged when nothing is left out.
pub fn subset(res_type: &str, content: &str, shape: &Shape) -> String {
    let keep: Option<Vec<String>> = match (shape.summary, &shape.elements) {
        (Some(Summary::True), _) => Some(summary_elements(res_type)),
        (Some(Summary::Text), _) => Some(vec!["text".to_string()]),
        (Some(Summary::Data), _) => None,
        (Some(Summary::False), _) => return content.to_string(),
        (None, Some(list)) => Some(list.clone()),
        (None, None) => return content.to_string(),
    };
    let data_only = shape.summary == Some(Summary::Data);
    let Ok(mut json) = Json::parse(content, 256) else {
        return content.to_string();
    };
    let info = crate::model::schema::type_info(res_type);
    let Json::Object(members) = &mut json else {
        return content.to_string();
    };
    let before = members.len();
    members.retain(|(key, _)| {
        let plain = key.strip_prefix('_').unwrap_or(key);
        if matches!(plain, "resourceType" | "id" | "meta") {
            return true;
        }
        if data_only {
            return plain != "text";
        }
        let element = info.and_then(|i| {
            i.child(plain)
                .and_then(|c| i.elements.get(usize::from(c.element)))
        });
        if element.is_some_and(|e| e.min >= 1) {
            return true;
        }
        keep.as_ref().is_some_and(|k| {
            k.iter()
                .any(|want| want == plain || element.is_some_and(|e| *e.name == **want))
        })
    });
    if members.len() == before {
        return content.to_string();
    }
    tag_subsetted(members);
    json.to_text()
}

/// Adds the SUBSETTED tag to `meta.tag` of a resource's members.
fn tag_subsetted(members: &mut Vec<(String, Json)>) {
    let tag = Json::Object(vec![
        ("system".into(), Json::String(SUBSETTED.0.into())),
        ("code".into(), Json::String(SUBSETTED.1.into())),
    ]);
    let at = match members.iter().position(|(k, _)| k == "meta") {
        Some(i) => i,
        None => {
            let at = members
                .iter()
                .position(|(k, _)| k == "id")
                .map_or(members.len().min(1), |p| p + 1);
            members.insert(at, ("meta".into(), Json::Object(Vec::new())));
            at
        }
    };
    let Json::Object(meta) = &mut members[at].1 else {
        return;
    };
    match meta.iter_mut().find(|(k, _)| k == "tag") {
        Some((_, Json::Array(list))) => list.push(tag),
        Some((_, other)) => *other = Json::Array(vec![tag]),
        None => meta.push(("tag".into(), Json::Array(vec![tag]))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = Cursor {
            before: true,
            inclusive: false,
            at: Position {
                keys: vec![Some("smith".into()), None],
                id: "p-1".into(),
            },
        };
        let text = encode_cursor(&c);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(decode_cursor(&text), Some(c));
        assert_eq!(decode_cursor("not a cursor"), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode("[\"x\"]")), None);
    }

    #[test]
    fn sort_include_and_elements_parameters() {
        let pairs: Vec<(String, String)> = [
            ("_sort", "-birthdate,family,_id,bogus"),
            ("_revinclude", "Observation:subject:Patient"),
            ("_include", "Patient:general-practitioner"),
            ("_include:iterate", "Patient:link"),
            ("_include", "Observation:subject"),
            ("_elements", "name, gender"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let p = super::super::parse("Patient", &pairs).expect("parse");
        let sorts: Vec<(SortBy, bool)> = p
            .shape
            .sort
            .iter()
            .map(|s| (s.by.clone(), s.desc))
            .collect();
        assert_eq!(
            sorts,
            vec![
                (
                    SortBy::Param {
                        name: "birthdate".into(),
                        kind: "date"
                    },
                    true
                ),
                (
                    SortBy::Param {
                        name: "family".into(),
                        kind: "string"
                    },
                    false
                ),
                (SortBy::Id, false),
            ]
        );
        assert_eq!(p.shape.revinclude[0].target.as_deref(), Some("Patient"));
        assert_eq!(p.shape.include.len(), 1);
        assert_eq!(p.unknown.len(), 3, "{:?}", p.unknown);
        assert_eq!(
            p.shape.elements,
            Some(vec!["name".to_string(), "gender".to_string()])
        );
    }

    #[test]
    fn subset_keeps_asked_and_mandatory_elements_and_tags() {
        let obs = r#"{"resourceType":"Observation","id":"o","meta":{"versionId":"1"},"status":"final","code":{"text":"x"},"valueQuantity":{"value":1},"note":[{"text":"n"}]}"#;
        let shape = Shape {
            elements: Some(vec!["value".into()]),
            ..Default::default()
        };
        let out: serde_json::Value =
            serde_json::from_str(&subset("Observation", obs, &shape)).expect("json");
        assert_eq!(out["status"], "final");
        assert_eq!(out["code"]["text"], "x");
        assert_eq!(out["valueQuantity"]["value"], 1);
        assert!(out.get("note").is_none());
        assert_eq!(out["meta"]["tag"][0]["code"], "SUBSETTED");
        let data = Shape {
            summary: Some(Summary::Data),
            ..Default::default()
        };
        let with_text =
            r#"{"resourceType":"Patient","id":"p","text":{"status":"generated"},"gender":"male"}"#;
        let out: serde_json::Value =
            serde_json::from_str(&subset("Patient", with_text, &data)).expect("json");
        assert!(out.get("text").is_none());
        assert_eq!(out["gender"], "male");
        assert_eq!(out["meta"]["tag"][0]["code"], "SUBSETTED");
        let summary = Shape {
            summary: Some(Summary::True),
            ..Default::default()
        };
        let p = r#"{"resourceType":"Patient","id":"p","gender":"male","photo":[{"title":"t"}]}"#;
        let out: serde_json::Value =
            serde_json::from_str(&subset("Patient", p, &summary)).expect("json");
        assert_eq!(out["gender"], "male");
        assert!(out.get("photo").is_none());
    }
}
