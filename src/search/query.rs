//! Parsing of FHIR search parameters (R4 search.html) into conditions over the `search_*`
//! index tables, and their rendering as SQL text and bind values meaning the same on SQLite
//! and PostgreSQL.

use super::{date_range, param_type};

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
    /// `_id`.
    Id(String),
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

/// Parses the search parameters of `res_type`. Errors (a malformed value of a known
/// parameter) are messages for a 400.
///
/// # Errors
/// When a value of a known parameter cannot be understood.
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
        let kind = match name {
            "_id" => Some("id"),
            "_lastUpdated" => Some("date"),
            _ => param_type(res_type, name),
        };
        let Some(kind) = kind else {
            p.unknown
                .push(format!("unknown search parameter {key} for {res_type}"));
            continue;
        };
        let supported = match (kind, modifier) {
            (_, None) => true,
            ("string", Some("exact" | "contains")) => true,
            ("reference", Some(m)) => m.chars().next().is_some_and(char::is_uppercase),
            _ => false,
        };
        if !supported {
            p.unknown.push(format!(
                "modifier :{} of {name} is not supported",
                modifier.unwrap_or_default()
            ));
            continue;
        }
        let mut clause = Clause::new();
        for v in split_values(value) {
            clause.push(cond(kind, name, modifier, &v)?);
        }
        if !clause.is_empty() {
            p.clauses.push(clause);
        }
        p.used.push((key.clone(), value.clone()));
    }
    Ok(p)
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

fn cond(kind: &str, name: &str, modifier: Option<&str>, v: &str) -> Result<Cond, String> {
    let param = name.to_string();
    Ok(match kind {
        "id" => Cond::Id(v.to_string()),
        "token" => match v.split_once('|') {
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
        },
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
            let (prefix, rest) = match PREFIXES.iter().find(|p| v.starts_with(**p)) {
                Some(p) => (*p, &v[2..]),
                None => ("eq", v),
            };
            let (lo, hi) =
                date_range(rest).ok_or_else(|| format!("{name}={v} is not a date value"))?;
            Cond::Date {
                param,
                prefix,
                lo,
                hi,
            }
        }
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

impl Cond {
    /// This condition as SQL over the resource row `r` (`r.res_type`, `r.res_id`,
    /// `r.last_updated`).
    pub fn sql(&self, res_type: &str, out: &mut Vec<Piece>) {
        let s = |out: &mut Vec<Piece>, t: &str| out.push(Piece::Sql(t.to_string()));
        let b = |out: &mut Vec<Piece>, t: &str| out.push(Piece::Bind(t.to_string()));
        let owner = |out: &mut Vec<Piece>, table: &str, param: &str| {
            out.push(Piece::Sql(format!(
                "r.res_id IN (SELECT x.res_id FROM {table} x WHERE x.res_type = "
            )));
            out.push(Piece::Bind(res_type.to_string()));
            out.push(Piece::Sql(" AND x.param = ".into()));
            out.push(Piece::Bind(param.to_string()));
        };
        match self {
            Cond::Id(id) => {
                s(out, "r.res_id = ");
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
                    ("r.last_updated", "r.last_updated")
                } else {
                    owner(out, "search_date", param);
                    s(out, " AND ");
                    ("x.low", "x.high")
                };
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
    for clause in &parsed.clauses {
        out.push(Piece::Sql(" AND (".into()));
        for (i, c) in clause.iter().enumerate() {
            if i > 0 {
                out.push(Piece::Sql(" OR ".into()));
            }
            out.push(Piece::Sql("(".into()));
            c.sql(res_type, &mut out);
            out.push(Piece::Sql(")".into()));
        }
        out.push(Piece::Sql(")".into()));
    }
    out
}
