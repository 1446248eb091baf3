//! Parsing of FHIR search parameters (R4 search.html) into conditions over the `search_*`
//! index tables, and their rendering as SQL text and bind values meaning the same on SQLite
//! and PostgreSQL.

use super::index::UCUM;
use super::{date_range, param_targets, param_type};
use crate::fhirpath::quantity::Quantity;
use rust_decimal::Decimal;

/// One condition on a resource; a [`Clause`] is satisfied when any of its conditions is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// A token value: `system|code`, `code`, `|code` or `system|`.
    Token {
        /// Parameter code.
        param: String,
        /// Required system (`Some("")` for "no system").
        system: Option<String>,
        /// Required code.
        code: Option<String>,
    },
    /// `:text` of a token: a display text starting with `value` (lower-cased).
    TokenText {
        /// Parameter code.
        param: String,
        /// The lower-cased start of the text.
        value: String,
    },
    /// A string value (lower-cased): starts-with, `:exact` or `:contains`.
    Str {
        /// Parameter code.
        param: String,
        /// `start`, `exact` or `contains`.
        mode: &'static str,
        /// The text.
        value: String,
    },
    /// A date comparison: the search value covers `lo..=hi`.
    Date {
        /// Parameter code (`_lastUpdated` for the version's instant).
        param: String,
        /// `eq ne lt le gt ge sa eb ap`.
        prefix: &'static str,
        /// First instant the value covers.
        lo: String,
        /// Last instant the value covers.
        hi: String,
    },
    /// A reference: equal to `exact`, or (for a bare id) ending in `/id`.
    Reference {
        /// Parameter code.
        param: String,
        /// Target texts that match exactly.
        exact: Vec<String>,
        /// A bare id: any `Type/id` matches.
        id: Option<String>,
    },
    /// `:identifier` of a reference: `Reference.identifier` is `system|value` (or `value`).
    RefIdentifier {
        /// Parameter code.
        param: String,
        /// Required system, when given.
        system: Option<String>,
        /// Required value (any, for `system|`).
        value: String,
    },
    /// A quantity or number comparison (`[prefix]number[|system|code]`).
    Quantity {
        /// Parameter code.
        param: String,
        /// `eq ne lt le gt ge sa eb ap`.
        prefix: &'static str,
        /// The implicit range of the number and the number: `[low, number, high]`.
        range: [Decimal; 3],
        /// Which units match when compared as written.
        unit: UnitMatch,
        /// The unit in UCUM base units and `[low, number, high]` in it, when it converts.
        canon: Option<(String, Decimal, Decimal, Decimal)>,
    },
    /// A uri: equal, `:below` (starts with the value) or `:above` (a path prefix of it).
    Uri {
        /// Parameter code.
        param: String,
        /// `exact`, `below` or `above`.
        mode: &'static str,
        /// The uri.
        value: String,
    },
    /// `:missing`: the resource has no (`true`) or some (`false`) value of the parameter.
    Missing {
        /// Parameter code.
        param: String,
        /// The index tables of the parameter's type (a value in any of them is one).
        tables: &'static [&'static str],
        /// `true` to find resources without a value.
        missing: bool,
    },
    /// `:not`: none of the conditions holds (resources without a value match).
    Not(Vec<Cond>),
    /// A chained parameter: the reference `param` points to a current resource of type
    /// `target` that satisfies any of `inner`.
    Chain {
        /// The reference parameter code.
        param: String,
        /// The type of the referenced resources.
        target: String,
        /// Conditions (OR) on the referenced resource.
        inner: Vec<Cond>,
        /// Only referenced resources of this site count (set for site clients by
        /// [`Parsed::restrict_chains`], so a chain never reveals another site's data).
        site: Option<String>,
    },
    /// `_id`.
    Id(String),
}

/// Which units a quantity search value accepts, compared as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitMatch {
    /// A bare number: any unit.
    Any,
    /// `number||unit`: the coded unit or the human unit equals it.
    CodeOrUnit(String),
    /// `number|system|code`.
    Coded {
        /// The unit system.
        system: String,
        /// The coded unit (any when empty).
        code: String,
    },
}

/// Conditions joined by OR (one parameter's comma-separated values).
pub type Clause = Vec<Cond>;

/// A parsed search request.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// Clauses joined by AND.
    pub clauses: Vec<Clause>,
    /// `_count` (default 20, at most 1000).
    pub count: i64,
    /// `_offset` (paging).
    pub offset: i64,
    /// `_total=accurate`.
    pub total: bool,
    /// `_summary=count`.
    pub summary_count: bool,
    /// Parameters not understood (name and why), ignored unless handling is strict.
    pub unknown: Vec<String>,
    /// The parameters that were used, to rebuild `self`/`next` links.
    pub used: Vec<(String, String)>,
    /// `_sort`, `_include`, `_revinclude`, `_elements`, `_summary`, `_cursor`: what comes
    /// back and in which order (`super::result`).
    pub shape: super::result::Shape,
}

const PREFIXES: [&str; 9] = ["eq", "ne", "lt", "le", "gt", "ge", "sa", "eb", "ap"];

/// Why a parameter is not used: ignored with a warning (or 400 under strict handling), or
/// an error (always 400).
enum Problem {
    Unknown(String),
    Bad(String),
}

/// Parses the search parameters of `res_type`. Errors (a malformed value of a known
/// parameter, an ambiguous chain) are messages for a 400.
///
/// # Errors
/// When a value of a known parameter cannot be understood, or a chain's target type is
/// ambiguous.
pub fn parse(res_type: &str, pairs: &[(String, String)]) -> Result<Parsed, String> {
    let mut p = Parsed {
        count: 20,
        ..Default::default()
    };
    for (key, value) in pairs {
        if super::result::parse_param(&mut p, res_type, key, value)? {
            continue;
        }
        let (name, modifier) = match key.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (key.as_str(), None),
        };
        match name {
            "_count" => {
                p.count = value
                    .parse::<i64>()
                    .ok()
                    .filter(|c| *c >= 0)
                    .ok_or_else(|| format!("_count={value} is not a count"))?
                    .min(1000);
                continue;
            }
            "_offset" => {
                p.offset = value
                    .parse::<i64>()
                    .ok()
                    .filter(|c| *c >= 0)
                    .ok_or_else(|| format!("_offset={value} is not an offset"))?;
                continue;
            }
            "_total" => {
                p.total = value == "accurate";
                p.used.push((key.clone(), value.clone()));
                continue;
            }
            "_summary" if value == "count" => {
                p.summary_count = true;
                p.used.push((key.clone(), value.clone()));
                continue;
            }
            "_format" | "_pretty" => continue,
            _ => {}
        }
        match clause(res_type, key, name, modifier, value) {
            Ok(clause) => {
                if !clause.is_empty() {
                    p.clauses.push(clause);
                }
                p.used.push((key.clone(), value.clone()));
            }
            Err(Problem::Unknown(why)) => p.unknown.push(why),
            Err(Problem::Bad(why)) => return Err(why),
        }
    }
    Ok(p)
}

/// The type of parameter `name` of `res_type` (`id` for `_id`), if it is searchable.
fn kind_of(res_type: &str, name: &str) -> Option<&'static str> {
    match name {
        "_id" => Some("id"),
        "_lastUpdated" => Some("date"),
        _ => param_type(res_type, name),
    }
}

/// The index tables of a parameter type.
fn tables_of(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        // A CodeableConcept with only a text, a Reference with only an identifier.
        "token" => &["search_token", "search_token_text"],
        "reference" => &["search_reference", "search_reference_identifier"],
        "string" => &["search_string"],
        "date" => &["search_date"],
        "quantity" | "number" => &["search_quantity"],
        "uri" => &["search_uri"],
        _ => return None,
    })
}

/// The conditions (OR) of one `key=value` pair, `key` being `name[:modifier]`.
fn clause(
    res_type: &str,
    key: &str,
    name: &str,
    modifier: Option<&str>,
    value: &str,
) -> Result<Clause, Problem> {
    if let Some((head, rest)) = key.split_once('.') {
        return chain(res_type, key, head, rest, value);
    }
    let kind = kind_of(res_type, name).ok_or_else(|| {
        Problem::Unknown(format!("unknown search parameter {key} for {res_type}"))
    })?;
    let unsupported =
        |m: &str| Problem::Unknown(format!("modifier :{m} of {name} is not supported"));
    let param = name.to_string();
    let values = split_values(value);
    match (kind, modifier) {
        (_, Some("missing")) => {
            let tables = tables_of(kind)
                .filter(|_| name != "_lastUpdated")
                .ok_or_else(|| unsupported("missing"))?;
            let missing = match value {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(Problem::Bad(format!(
                        "{key}={value}: :missing takes true or false"
                    )))
                }
            };
            return Ok(vec![Cond::Missing {
                param,
                tables,
                missing,
            }]);
        }
        ("token", Some("not")) => {
            // None of the values: resources without any value match too.
            let inner: Vec<Cond> = values.iter().map(|v| token(&param, v)).collect();
            return Ok(if inner.is_empty() {
                Vec::new()
            } else {
                vec![Cond::Not(inner)]
            });
        }
        ("token", Some("text")) => {
            return Ok(values
                .iter()
                .map(|v| Cond::TokenText {
                    param: param.clone(),
                    value: v.to_lowercase(),
                })
                .collect());
        }
        ("reference", Some("identifier")) => {
            return Ok(values
                .iter()
                .map(|v| match v.split_once('|') {
                    Some((sys, val)) => Cond::RefIdentifier {
                        param: param.clone(),
                        system: Some(sys.to_string()),
                        value: val.to_string(),
                    },
                    None => Cond::RefIdentifier {
                        param: param.clone(),
                        system: None,
                        value: v.clone(),
                    },
                })
                .collect());
        }
        (_, None) | ("string", Some("exact" | "contains")) | ("uri", Some("below" | "above")) => {}
        ("reference", Some(m)) if m.chars().next().is_some_and(char::is_uppercase) => {}
        (_, Some(m)) => return Err(unsupported(m)),
    }
    values
        .iter()
        .map(|v| cond(kind, name, modifier, v).map_err(Problem::Bad))
        .collect()
}

/// A chained parameter `ref[:Type].param[:modifier]=value`, one level deep.
fn chain(
    res_type: &str,
    key: &str,
    head: &str,
    rest: &str,
    value: &str,
) -> Result<Clause, Problem> {
    if rest.contains('.') {
        return Err(Problem::Unknown(format!(
            "{key}: chained parameters deeper than one level are not supported"
        )));
    }
    let (name, target) = match head.split_once(':') {
        Some((n, t)) => (n, Some(t)),
        None => (head, None),
    };
    if param_type(res_type, name) != Some("reference") {
        return Err(Problem::Unknown(format!(
            "{key}: {name} is not a reference parameter of {res_type}, so it cannot be chained"
        )));
    }
    let targets = param_targets(res_type, name).unwrap_or_default();
    let target = match target {
        Some(t) if targets.iter().any(|x| x == t) => t.to_string(),
        Some(t) if targets.is_empty() && crate::model::schema::is_resource_type(t) => t.to_string(),
        Some(t) => {
            return Err(Problem::Bad(format!(
                "{key}: {t} is not a target type of {res_type}.{name} (one of {})",
                targets.join(", ")
            )))
        }
        None => match targets.as_slice() {
            [only] => only.clone(),
            _ => {
                let may = if targets.is_empty() {
                    "any type".to_string()
                } else {
                    targets.join(", ")
                };
                let example = targets.first().map_or("Patient", String::as_str);
                return Err(Problem::Bad(format!(
                    "{key}: {res_type}.{name} may refer to {may}; name the type, as in \
                     {name}:{example}.{rest}"
                )));
            }
        },
    };
    let (inner_name, inner_modifier) = match rest.split_once(':') {
        Some((n, m)) => (n, Some(m)),
        None => (rest, None),
    };
    let inner = clause(&target, rest, inner_name, inner_modifier, value).map_err(|p| match p {
        Problem::Unknown(why) => Problem::Unknown(format!("{key}: {why}")),
        Problem::Bad(why) => Problem::Bad(format!("{key}: {why}")),
    })?;
    Ok(if inner.is_empty() {
        Vec::new()
    } else {
        vec![Cond::Chain {
            param: name.to_string(),
            target,
            inner,
            site: None,
        }]
    })
}

/// Splits on unescaped commas, unescaping `\,` `\|` `\$` `\\`.
fn split_values(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    if let Some(last) = out.last_mut() {
                        last.push(n);
                    }
                }
            }
            ',' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out.retain(|v| !v.is_empty());
    out
}

/// A token value: `system|code`, `code`, `|code` or `system|`.
fn token(param: &str, v: &str) -> Cond {
    let param = param.to_string();
    match v.split_once('|') {
        Some((s, c)) => Cond::Token {
            param,
            system: Some(s.to_string()),
            code: (!c.is_empty()).then(|| c.to_string()),
        },
        None => Cond::Token {
            param,
            system: None,
            code: Some(v.to_string()),
        },
    }
}

/// `10^exp`, when it fits a decimal.
fn pow10(exp: i32) -> Option<Decimal> {
    if exp < 0 {
        Decimal::try_new(1, exp.unsigned_abs()).ok()
    } else {
        let mut out = Decimal::ONE;
        for _ in 0..exp {
            out = out.checked_mul(Decimal::TEN)?;
        }
        Some(out)
    }
}

/// A search number and the range its precision implies (`100` covers `[99.5, 100.5)`,
/// `1.50` covers `[1.495, 1.505)`, `1.5e2` covers `[145, 155)`).
fn number_range(text: &str) -> Option<(Decimal, Decimal, Decimal)> {
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (text, 0),
    };
    let m = Decimal::from_str_exact(mantissa.strip_prefix('+').unwrap_or(mantissa)).ok()?;
    let scale = i32::try_from(m.scale()).ok()?;
    let n = if exp >= 0 {
        m.checked_mul(pow10(exp)?)?
    } else {
        m.checked_div(pow10(-exp)?)?
    };
    let half = pow10(exp - scale)?.checked_div(Decimal::TWO)?;
    Some((n.checked_sub(half)?, n, n.checked_add(half)?))
}

fn cond(kind: &str, name: &str, modifier: Option<&str>, v: &str) -> Result<Cond, String> {
    let param = name.to_string();
    Ok(match kind {
        "id" => Cond::Id(v.to_string()),
        "token" => token(name, v),
        "string" => Cond::Str {
            param,
            mode: match modifier {
                Some("exact") => "exact",
                Some("contains") => "contains",
                _ => "start",
            },
            value: if modifier == Some("exact") {
                v.to_string()
            } else {
                v.to_lowercase()
            },
        },
        "date" => {
            let (prefix, rest) = split_prefix(v);
            let (lo, hi) =
                date_range(rest).ok_or_else(|| format!("{name}={v} is not a date value"))?;
            Cond::Date {
                param,
                prefix,
                lo,
                hi,
            }
        }
        "quantity" | "number" => {
            let (prefix, rest) = split_prefix(v);
            let mut parts = rest.splitn(3, '|');
            let number = parts.next().unwrap_or_default();
            let (system, code) = match (parts.next(), parts.next()) {
                (None, _) => (String::new(), String::new()),
                (Some(s), Some(c)) if kind == "quantity" => (s.to_string(), c.to_string()),
                _ => return Err(format!("{name}={v} is not a {kind} value")),
            };
            let (lo, n, hi) =
                number_range(number).ok_or_else(|| format!("{name}={v} is not a {kind} value"))?;
            let canon = if code.is_empty() || !(system.is_empty() || system == UCUM) {
                None
            } else {
                let base = |x: Decimal| Quantity::new(x, code.as_str()).to_base_units();
                match (base(lo), base(n), base(hi)) {
                    (Some((clo, unit)), Some((cn, _)), Some((chi, _))) => {
                        Some((unit, clo, cn, chi))
                    }
                    _ => None,
                }
            };
            let unit = match (system.is_empty(), code.is_empty()) {
                (true, true) => UnitMatch::Any,
                (true, false) => UnitMatch::CodeOrUnit(code),
                (false, _) => UnitMatch::Coded { system, code },
            };
            Cond::Quantity {
                param,
                prefix,
                range: [lo, n, hi],
                unit,
                canon,
            }
        }
        "uri" => Cond::Uri {
            param,
            mode: match modifier {
                Some("below") => "below",
                Some("above") => "above",
                _ => "exact",
            },
            value: v.to_string(),
        },
        _ => {
            // reference
            let mut exact = vec![v.to_string()];
            let mut id = None;
            if let Some(t) = modifier {
                exact = vec![format!("{t}/{v}")];
            } else if !v.contains('/') {
                id = Some(v.to_string());
            } else if v.contains("://") {
                // An absolute URL: also the relative `Type/id` it ends in.
                let parts: Vec<&str> = v.rsplitn(3, '/').collect();
                if parts.len() == 3 {
                    exact.push(format!("{}/{}", parts[1], parts[0]));
                }
            }
            Cond::Reference { param, exact, id }
        }
    })
}

/// A comparison prefix (`eq` when there is none) and the rest of the value.
fn split_prefix(v: &str) -> (&'static str, &str) {
    match PREFIXES.iter().find(|p| v.starts_with(**p)) {
        Some(p) => (*p, &v[2..]),
        None => ("eq", v),
    }
}

/// A piece of SQL: text, or a text value to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// SQL text.
    Sql(String),
    /// A bound value.
    Bind(String),
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// The comparison of a value range `low..=high` (SQL columns) with a search value whose
/// implicit range is `lo..hi` around `n`, for a quantity or number prefix.
fn number_cmp(out: &mut Vec<Piece>, cols: (&str, &str), prefix: &str, [lo, n, hi]: [Decimal; 3]) {
    let (low, high) = cols;
    let text = match prefix {
        "ne" => format!("NOT ({low} >= {lo} AND {high} < {hi})"),
        "lt" => format!("{low} < {n}"),
        "le" => format!("{low} <= {n}"),
        "gt" => format!("{high} > {n}"),
        "ge" => format!("{high} >= {n}"),
        "sa" => format!("{low} >= {hi}"),
        "eb" => format!("{high} < {lo}"),
        "ap" => {
            // Within 10% of the value (or its implicit range, when that is wider).
            let tenth = n.abs() / Decimal::TEN;
            let a_lo = lo.min(n.checked_sub(tenth).unwrap_or(Decimal::MIN));
            let a_hi = hi.max(n.checked_add(tenth).unwrap_or(Decimal::MAX));
            format!("{low} <= {a_hi} AND {high} >= {a_lo}")
        }
        _ => format!("{low} >= {lo} AND {high} < {hi}"),
    };
    out.push(Piece::Sql(text));
}

/// The prefixes of a uri at its path boundaries, itself included, for `:above`
/// (`http://a.org/fhir/ValueSet/1`: `http://a.org`, `http://a.org/`, `http://a.org/fhir`, ...).
pub fn uri_prefixes(value: &str) -> Vec<String> {
    let from = value.find("://").map_or(0, |i| i + 3);
    let mut out: Vec<String> = value
        .char_indices()
        .filter(|(i, c)| *c == '/' && *i > from)
        .flat_map(|(i, _)| [value[..i].to_string(), value[..=i].to_string()])
        .collect();
    out.push(value.to_string());
    out.dedup();
    out
}

impl Cond {
    /// This condition as SQL over the resource row `r` (`r.res_type`, `r.res_id`,
    /// `r.last_updated`).
    pub fn sql(&self, res_type: &str, out: &mut Vec<Piece>) {
        self.sql_on(res_type, "r", false, out);
    }

    /// The same condition written as correlated `EXISTS` probes of the index tables (by
    /// their owner index) instead of `IN` lists: cheaper when another condition already
    /// narrows the rows to a few, as the lists would hold every match of this one.
    pub fn sql_probe(&self, res_type: &str, out: &mut Vec<Piece>) {
        self.sql_on(res_type, "r", true, out);
    }

    /// [`Cond::sql_probe`] correlated with the index row aliased `row` (another
    /// condition's) instead of the resource row; only for [`Cond::on_index_table`]
    /// conditions, whose SQL names no column of the resource row but `res_id`.
    pub fn sql_probe_from(&self, res_type: &str, row: &str, out: &mut Vec<Piece>) {
        self.sql_on(res_type, row, true, out);
    }

    /// Whether this condition is a lookup in one index table (`IN` list or probe by
    /// `res_id`), with no part on the resource row (`_id`, `_lastUpdated`), no absence,
    /// negation or chain.
    pub fn on_index_table(&self) -> bool {
        match self {
            Cond::Token { .. }
            | Cond::TokenText { .. }
            | Cond::Str { .. }
            | Cond::Reference { .. }
            | Cond::RefIdentifier { .. }
            | Cond::Quantity { .. }
            | Cond::Uri { .. } => true,
            Cond::Date { param, .. } => param != "_lastUpdated",
            _ => false,
        }
    }

    /// Whether this condition picks few resources by itself (an equality on a value, not a
    /// range, prefix, absence or negation): the one a query is best driven by.
    pub fn selective(&self) -> bool {
        match self {
            Cond::Id(_) | Cond::RefIdentifier { .. } | Cond::Chain { .. } => true,
            Cond::Token { code, .. } => code.is_some(),
            Cond::Reference { id, .. } => id.is_none(),
            Cond::Str { mode, .. } | Cond::Uri { mode, .. } => *mode == "exact",
            _ => false,
        }
    }

    /// This condition as SQL over the resource row aliased `row`; index tables are aliased
    /// `x` (or `y` inside a chain, whose row is `t`); `probe` writes `EXISTS` probes
    /// instead of `IN` lists.
    fn sql_on(&self, res_type: &str, row: &str, probe: bool, out: &mut Vec<Piece>) {
        let x = if row == "r" { "x" } else { "y" };
        // SQL text: `x.column` in it names a column of the index table of this condition and
        // is written with the alias in use (the texts below contain no other `x.`).
        let s =
            |out: &mut Vec<Piece>, t: &str| out.push(Piece::Sql(t.replace("x.", &format!("{x}."))));
        let b = |out: &mut Vec<Piece>, t: &str| out.push(Piece::Bind(t.to_string()));
        let owner = |out: &mut Vec<Piece>, table: &str, param: &str| {
            out.push(Piece::Sql(if probe {
                format!(
                    "EXISTS (SELECT 1 FROM {table} {x} WHERE {x}.res_id = {row}.res_id \
                     AND {x}.res_type = "
                )
            } else {
                format!("{row}.res_id IN (SELECT {x}.res_id FROM {table} {x} WHERE {x}.res_type = ")
            }));
            out.push(Piece::Bind(res_type.to_string()));
            out.push(Piece::Sql(format!(" AND {x}.param = ")));
            out.push(Piece::Bind(param.to_string()));
        };
        match self {
            Cond::Id(id) => {
                out.push(Piece::Sql(format!("{row}.res_id = ")));
                b(out, id);
            }
            Cond::Token {
                param,
                system,
                code,
            } => {
                owner(out, "search_token", param);
                if let Some(c) = code {
                    s(out, " AND x.code = ");
                    b(out, c);
                }
                if let Some(sys) = system {
                    s(out, " AND x.system = ");
                    b(out, sys);
                }
                s(out, ")");
            }
            Cond::TokenText { param, value } => {
                owner(out, "search_token_text", param);
                s(out, " AND x.text LIKE ");
                b(out, &format!("{}%", like_escape(value)));
                s(out, " ESCAPE '\\')");
            }
            Cond::Str { param, mode, value } => {
                owner(out, "search_string", param);
                match *mode {
                    "exact" => {
                        s(out, " AND x.value = ");
                        b(out, &value.to_lowercase());
                    }
                    "contains" => {
                        s(out, " AND x.value LIKE ");
                        b(out, &format!("%{}%", like_escape(value)));
                        s(out, " ESCAPE '\\'");
                    }
                    _ => {
                        s(out, " AND x.value LIKE ");
                        b(out, &format!("{}%", like_escape(value)));
                        s(out, " ESCAPE '\\'");
                    }
                }
                s(out, ")");
            }
            Cond::Date {
                param,
                prefix,
                lo,
                hi,
            } => {
                let (low, high) = if param == "_lastUpdated" {
                    (format!("{row}.last_updated"), format!("{row}.last_updated"))
                } else {
                    owner(out, "search_date", param);
                    s(out, " AND ");
                    (format!("{x}.low"), format!("{x}.high"))
                };
                let (low, high) = (low.as_str(), high.as_str());
                let cmp = |out: &mut Vec<Piece>, col: &str, op: &str, v: &str| {
                    out.push(Piece::Sql(format!("{col} {op} ")));
                    out.push(Piece::Bind(v.to_string()));
                };
                match *prefix {
                    "ne" => {
                        out.push(Piece::Sql("NOT (".into()));
                        cmp(out, low, ">=", lo);
                        out.push(Piece::Sql(" AND ".into()));
                        cmp(out, high, "<=", hi);
                        out.push(Piece::Sql(")".into()));
                    }
                    "lt" => cmp(out, low, "<", lo),
                    "le" => cmp(out, low, "<=", hi),
                    "gt" => cmp(out, high, ">", hi),
                    "ge" => cmp(out, high, ">=", lo),
                    "sa" => cmp(out, low, ">", hi),
                    "eb" => cmp(out, high, "<", lo),
                    "ap" => {
                        cmp(out, low, "<=", hi);
                        out.push(Piece::Sql(" AND ".into()));
                        cmp(out, high, ">=", lo);
                    }
                    _ => {
                        cmp(out, low, ">=", lo);
                        out.push(Piece::Sql(" AND ".into()));
                        cmp(out, high, "<=", hi);
                    }
                }
                if param != "_lastUpdated" {
                    s(out, ")");
                }
            }
            Cond::Reference { param, exact, id } => {
                owner(out, "search_reference", param);
                s(out, " AND (");
                for (i, e) in exact.iter().enumerate() {
                    if i > 0 {
                        s(out, " OR ");
                    }
                    s(out, "x.target = ");
                    b(out, e);
                }
                if let Some(id) = id {
                    s(out, " OR x.target LIKE ");
                    b(out, &format!("%/{}", like_escape(id)));
                    s(out, " ESCAPE '\\'");
                }
                s(out, "))");
            }
            Cond::RefIdentifier {
                param,
                system,
                value,
            } => {
                owner(out, "search_reference_identifier", param);
                if !value.is_empty() {
                    s(out, " AND x.value = ");
                    b(out, value);
                }
                if let Some(sys) = system {
                    s(out, " AND x.system = ");
                    b(out, sys);
                }
                s(out, ")");
            }
            Cond::Quantity {
                param,
                prefix,
                range,
                unit,
                canon,
            } => {
                owner(out, "search_quantity", param);
                s(out, " AND ((");
                match unit {
                    UnitMatch::Any => {}
                    UnitMatch::CodeOrUnit(u) => {
                        s(out, "(x.code = ");
                        b(out, u);
                        s(out, " OR x.unit = ");
                        b(out, u);
                        s(out, ") AND ");
                    }
                    UnitMatch::Coded { system, code } => {
                        s(out, "x.system = ");
                        b(out, system);
                        if !code.is_empty() {
                            s(out, " AND x.code = ");
                            b(out, code);
                        }
                        s(out, " AND ");
                    }
                }
                number_cmp(
                    out,
                    (&format!("{x}.low"), &format!("{x}.high")),
                    prefix,
                    *range,
                );
                s(out, ")");
                if let Some((code, lo, n, hi)) = canon {
                    s(out, " OR (x.canon_code = ");
                    b(out, code);
                    s(out, " AND ");
                    number_cmp(
                        out,
                        (&format!("{x}.canon_low"), &format!("{x}.canon_high")),
                        prefix,
                        [*lo, *n, *hi],
                    );
                    s(out, ")");
                }
                s(out, "))");
            }
            Cond::Uri { param, mode, value } => {
                owner(out, "search_uri", param);
                match *mode {
                    "below" => {
                        s(out, " AND x.uri LIKE ");
                        b(out, &format!("{}%", like_escape(value)));
                        // LIKE ignores ASCII case on SQLite; uris compare exactly.
                        out.push(Piece::Sql(format!(
                            " ESCAPE '\\' AND substr({x}.uri, 1, {}) = ",
                            value.chars().count()
                        )));
                        b(out, value);
                    }
                    "above" => {
                        s(out, " AND x.uri IN (");
                        for (i, p) in uri_prefixes(value).iter().enumerate() {
                            if i > 0 {
                                s(out, ", ");
                            }
                            b(out, p);
                        }
                        s(out, ")");
                    }
                    _ => {
                        s(out, " AND x.uri = ");
                        b(out, value);
                    }
                }
                s(out, ")");
            }
            Cond::Missing {
                param,
                tables,
                missing,
            } => {
                s(out, if *missing { "NOT (" } else { "(" });
                for (i, table) in tables.iter().enumerate() {
                    if i > 0 {
                        s(out, " OR ");
                    }
                    owner(out, table, param);
                    s(out, ")");
                }
                s(out, ")");
            }
            Cond::Not(inner) => {
                s(out, "NOT (");
                for (i, c) in inner.iter().enumerate() {
                    if i > 0 {
                        s(out, " OR ");
                    }
                    s(out, "(");
                    c.sql_on(res_type, row, probe, out);
                    s(out, ")");
                }
                s(out, ")");
            }
            Cond::Chain {
                param,
                target,
                inner,
                site,
            } => {
                // One query: the referencing rows whose target is `Type/id` of a current
                // resource of the target type satisfying the inner conditions.
                owner(out, "search_reference", param);
                s(out, " AND x.target IN (SELECT ");
                b(out, &format!("{target}/"));
                s(out, " || t.res_id FROM resource t WHERE t.res_type = ");
                b(out, target);
                s(out, " AND NOT t.deleted");
                if let Some(site) = site {
                    s(out, " AND t.site = ");
                    b(out, site);
                    s(out, " AND t.site <> ''");
                }
                s(out, " AND (");
                for (i, c) in inner.iter().enumerate() {
                    if i > 0 {
                        s(out, " OR ");
                    }
                    s(out, "(");
                    c.sql_on(target, "t", false, out);
                    s(out, ")");
                }
                s(out, ")))");
            }
        }
    }
}

impl Parsed {
    /// Makes every chained condition consider only referenced resources of `site`: a site
    /// client's chain must not match through another site's resource (that would confirm,
    /// say, another site's patient identifier).
    pub fn restrict_chains(&mut self, site: &str) {
        fn visit(c: &mut Cond, site: &str) {
            match c {
                Cond::Chain { site: s, .. } => *s = Some(site.to_string()),
                Cond::Not(inner) => inner.iter_mut().for_each(|c| visit(c, site)),
                _ => {}
            }
        }
        for clause in &mut self.clauses {
            clause.iter_mut().for_each(|c| visit(c, site));
        }
    }
}

/// The WHERE conditions (after `WHERE`) of a search over current resources `r`.
pub fn where_sql(res_type: &str, parsed: &Parsed) -> Vec<Piece> {
    let mut out = vec![
        Piece::Sql("r.res_type = ".into()),
        Piece::Bind(res_type.to_string()),
        Piece::Sql(" AND NOT r.deleted".into()),
    ];
    // One clause drives the query as `IN` lists (the first selective one, else the first);
    // the others are probed per candidate. A query with a reference and a date
    // (`subject=Patient/x&date=ge2020`) then reads the patient's rows and probes each one's
    // dates, instead of listing every resource dated since 2020.
    let driver = parsed
        .clauses
        .iter()
        .position(|c| c.len() == 1 && c[0].selective())
        .unwrap_or(0);
    // When the driver is one condition on an index table and every other clause is too,
    // the others are probed from the driver's index rows, inside its list: the resource
    // row is then read for the matches only, not for every candidate (a patient's 270
    // Observations, for the 5 dated since 2020).
    let nests = |c: &[Cond]| !c.is_empty() && c.iter().all(Cond::on_index_table);
    if parsed.clauses.len() > 1
        && parsed.clauses[driver].len() == 1
        && parsed.clauses.iter().all(|c| nests(c))
    {
        let mut list = Vec::new();
        parsed.clauses[driver][0].sql(res_type, &mut list);
        // The list's subquery ends with its closing parenthesis: the probes go before it.
        if let Some(Piece::Sql(last)) = list.last_mut() {
            if last.ends_with(')') {
                last.pop();
                out.push(Piece::Sql(" AND (".into()));
                out.extend(list);
                for (n, clause) in parsed.clauses.iter().enumerate() {
                    if n == driver {
                        continue;
                    }
                    out.push(Piece::Sql(" AND (".into()));
                    for (i, c) in clause.iter().enumerate() {
                        if i > 0 {
                            out.push(Piece::Sql(" OR ".into()));
                        }
                        out.push(Piece::Sql("(".into()));
                        c.sql_probe_from(res_type, "x", &mut out);
                        out.push(Piece::Sql(")".into()));
                    }
                    out.push(Piece::Sql(")".into()));
                }
                out.push(Piece::Sql("))".into()));
                return out;
            }
        }
    }
    for (n, clause) in parsed.clauses.iter().enumerate() {
        out.push(Piece::Sql(" AND (".into()));
        for (i, c) in clause.iter().enumerate() {
            if i > 0 {
                out.push(Piece::Sql(" OR ".into()));
            }
            out.push(Piece::Sql("(".into()));
            if n == driver {
                c.sql(res_type, &mut out);
            } else {
                c.sql_probe(res_type, &mut out);
            }
            out.push(Piece::Sql(")".into()));
        }
        out.push(Piece::Sql(")".into()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr as _;

    fn dec(t: &str) -> Decimal {
        Decimal::from_str(t).expect("decimal")
    }

    fn parsed(res_type: &str, q: &[(&str, &str)]) -> Result<Parsed, String> {
        let pairs: Vec<(String, String)> = q
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        parse(res_type, &pairs)
    }

    fn one(res_type: &str, k: &str, v: &str) -> Cond {
        let p = parsed(res_type, &[(k, v)]).expect("parses");
        assert!(p.unknown.is_empty(), "{:?}", p.unknown);
        p.clauses[0][0].clone()
    }

    #[test]
    fn other_index_clauses_are_probed_inside_the_drivers_list() {
        let p = parsed(
            "Observation",
            &[
                ("subject", "Patient/p1"),
                ("date", "ge2020"),
                ("code", "a,b"),
            ],
        )
        .expect("parses");
        let sql = text(&where_sql("Observation", &p));
        // One list (the subject's), the date and the code probed from its index rows.
        assert_eq!(sql.matches("r.res_id IN").count(), 1, "{sql}");
        assert_eq!(sql.matches("y.res_id = x.res_id").count(), 3, "{sql}");
        assert!(!sql.contains("= r.res_id"), "{sql}");
        // `_id` is on the resource row: the clauses are checked on it, as before.
        let p = parsed("Observation", &[("subject", "Patient/p1"), ("_id", "o1")]).expect("parses");
        let sql = text(&where_sql("Observation", &p));
        assert!(!sql.contains("y.res_id"), "{sql}");
    }

    fn text(pieces: &[Piece]) -> String {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Sql(s) => s.clone(),
                Piece::Bind(_) => "?".to_string(),
            })
            .collect()
    }

    #[test]
    fn numbers_carry_their_precision() {
        let r = |t: &str| number_range(t).map(|(a, b, c)| [a, b, c]);
        assert_eq!(r("100"), Some([dec("99.5"), dec("100"), dec("100.5")]));
        assert_eq!(r("1.50"), Some([dec("1.495"), dec("1.50"), dec("1.505")]));
        assert_eq!(r("1.5e2"), Some([dec("145"), dec("150"), dec("155")]));
        assert_eq!(r("-2"), Some([dec("-2.5"), dec("-2"), dec("-1.5")]));
        assert_eq!(r("x1"), None);
    }

    #[test]
    fn quantities_convert_to_base_units() {
        match one(
            "Observation",
            "value-quantity",
            "lt7|http://unitsofmeasure.org|mm",
        ) {
            Cond::Quantity {
                prefix,
                range,
                unit,
                canon,
                ..
            } => {
                assert_eq!(prefix, "lt");
                assert_eq!(range, [dec("6.5"), dec("7"), dec("7.5")]);
                assert_eq!(
                    unit,
                    UnitMatch::Coded {
                        system: UCUM.into(),
                        code: "mm".into()
                    }
                );
                assert_eq!(
                    canon,
                    Some(("m".into(), dec("0.0065"), dec("0.007"), dec("0.0075")))
                );
            }
            c => panic!("{c:?}"),
        }
        match one("Observation", "value-quantity", "5.4||mg") {
            Cond::Quantity { unit, canon, .. } => {
                assert_eq!(unit, UnitMatch::CodeOrUnit("mg".into()));
                assert_eq!(canon.map(|c| c.0), Some("g".into()));
            }
            c => panic!("{c:?}"),
        }
        // a unit outside UCUM compares as written only
        match one("Observation", "value-quantity", "5|http://x.org|tablets") {
            Cond::Quantity { canon, .. } => assert_eq!(canon, None),
            c => panic!("{c:?}"),
        }
        assert!(parsed("Observation", &[("value-quantity", "5|mg")]).is_err());
        assert!(parsed("Observation", &[("value-quantity", "lots")]).is_err());
    }

    #[test]
    fn modifiers() {
        assert!(matches!(
            one("Patient", "gender:not", "male,female"),
            Cond::Not(v) if v.len() == 2
        ));
        assert_eq!(
            one("Observation", "code:text", "Hemo"),
            Cond::TokenText {
                param: "code".into(),
                value: "hemo".into()
            }
        );
        assert_eq!(
            one("Observation", "subject:identifier", "urn:s|42"),
            Cond::RefIdentifier {
                param: "subject".into(),
                system: Some("urn:s".into()),
                value: "42".into()
            }
        );
        assert_eq!(
            one("Patient", "birthdate:missing", "true"),
            Cond::Missing {
                param: "birthdate".into(),
                tables: &["search_date"],
                missing: true
            }
        );
        assert!(parsed("Patient", &[("gender:missing", "maybe")]).is_err());
        let p = parsed("Patient", &[("gender:below", "x")]).expect("parses");
        assert!(p.clauses.is_empty());
        assert_eq!(p.unknown.len(), 1);
        assert!(matches!(
            one("Patient", "_profile:below", "https://a-imagio.eu/fhir/"),
            Cond::Uri { mode: "below", .. }
        ));
        assert!(matches!(
            one("Patient", "_tag", "urn:t|x"),
            Cond::Token { .. }
        ));
    }

    #[test]
    fn chains() {
        match one("Observation", "subject:Patient.identifier", "urn:s|42") {
            Cond::Chain {
                param,
                target,
                inner,
                ..
            } => {
                assert_eq!((param.as_str(), target.as_str()), ("subject", "Patient"));
                assert!(matches!(inner[0], Cond::Token { .. }));
            }
            c => panic!("{c:?}"),
        }
        // Encounter.patient can only point to a Patient
        assert!(matches!(
            one("Encounter", "patient.name", "smith"),
            Cond::Chain { ref target, .. } if target == "Patient"
        ));
        let err = parsed("Observation", &[("subject.name", "smith")]).expect_err("ambiguous");
        assert!(err.contains("subject:"), "{err}");
        assert!(parsed("Observation", &[("subject:Medication.code", "x")]).is_err());
        let p =
            parsed("Observation", &[("subject:Patient.organization.name", "x")]).expect("parses");
        assert!(
            p.unknown[0].contains("deeper than one level"),
            "{:?}",
            p.unknown
        );
        let p = parsed("Observation", &[("status.name", "x")]).expect("parses");
        assert_eq!(p.unknown.len(), 1);
    }

    #[test]
    fn chain_is_one_subquery() {
        let p = parsed("Observation", &[("subject:Patient.name", "smith")]).expect("parses");
        let sql = text(&where_sql("Observation", &p));
        assert_eq!(sql.matches("FROM resource t").count(), 1, "{sql}");
        assert!(
            sql.contains("t.res_id IN (SELECT y.res_id FROM search_string y"),
            "{sql}"
        );
    }

    #[test]
    fn quantity_sql_compares_numbers() {
        let p = parsed("Observation", &[("value-quantity", "ap100||mg")]).expect("parses");
        let sql = text(&where_sql("Observation", &p));
        assert!(sql.contains("x.low <= 110 AND x.high >= 90"), "{sql}");
        assert!(sql.contains("x.canon_code = ?"), "{sql}");
    }

    #[test]
    fn above_prefixes() {
        assert_eq!(
            uri_prefixes("http://a.org/fhir/x"),
            vec![
                "http://a.org",
                "http://a.org/",
                "http://a.org/fhir",
                "http://a.org/fhir/",
                "http://a.org/fhir/x"
            ]
        );
    }
}
