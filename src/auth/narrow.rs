//! Enforcement of scopes narrowed by search parameters (SMART App Launch 2.2.0,
//! "finer-grained resource constraints using search parameters"). A token holding
//! `system/Observation.rs?category=...|laboratory` reads and searches only the
//! Observations that search finds:
//! - searches get the narrowing ANDed to their own parameters ([`narrow_search`]);
//! - a single resource (read, vread, history entry, Bundle `GET` entry) that does not match
//!   is treated as absent ([`readable`], [`in_history`]);
//! - a create or update whose result would not match, or an update or delete of a resource
//!   that does not match, is refused ([`check_write`], [`check_existing`]).
//!
//! A single resource is matched in memory against the index rows of its content
//! ([`crate::search::index`]), with the same comparisons the store's search SQL makes, so
//! the answer is the one `GET Type?_id=ID&<narrowing>` would give, for old versions too.
//! A narrowing that is not made of search parameters of the type matches nothing.

use super::current;
use super::scopes::{Interaction, Reach, ScopeError, Scopes};
use crate::search::{Clause, Cond, IndexRow, Parsed};
use crate::store::Stored;

/// The most clauses the OR of several narrowed scopes may expand into when ANDed to a
/// search; beyond it the search matches nothing (and a warning is logged).
const MAX_CLAUSES: usize = 64;

/// The resources of one type an interaction may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Every resource.
    All,
    /// The resources matching any of these searches (each a list of clauses, ANDed);
    /// nothing when empty.
    Any(Vec<Vec<Clause>>),
}

impl Filter {
    /// The filter of what the scopes leave (`reach`) on `res_type`.
    pub fn of(res_type: &str, reach: &Reach) -> Filter {
        match reach {
            Reach::Everything => Filter::All,
            Reach::Nothing => Filter::Any(Vec::new()),
            Reach::Matching(searches) => Filter::Any(
                searches
                    .iter()
                    .filter_map(|pairs| clauses_of(res_type, pairs).ok())
                    .collect(),
            ),
        }
    }

    /// Whether the resource `id` (last updated at `last_updated`, with these index rows)
    /// passes.
    pub fn matches(&self, id: &str, last_updated: &str, rows: &[IndexRow]) -> bool {
        match self {
            Filter::All => true,
            Filter::Any(searches) => searches.iter().any(|clauses| {
                clauses.iter().all(|clause| {
                    clause
                        .iter()
                        .any(|c| cond_matches(c, id, last_updated, rows))
                })
            }),
        }
    }

    /// The clauses to AND to a search so that it finds only what passes: the OR of the
    /// searches turned into a conjunction of ORs (distributing). Empty for [`Filter::All`].
    pub fn clauses(&self) -> Vec<Clause> {
        let Filter::Any(searches) = self else {
            return Vec::new();
        };
        let mut out: Vec<Clause> = match searches.split_first() {
            None => return vec![nothing()],
            Some((first, _)) => first.clone(),
        };
        for search in &searches[1..] {
            if out.len().saturating_mul(search.len()) > MAX_CLAUSES {
                tracing::warn!(
                    "narrowed scopes expand into more than {MAX_CLAUSES} search clauses; the search finds nothing"
                );
                return vec![nothing()];
            }
            let mut next = Vec::with_capacity(out.len() * search.len());
            for have in &out {
                for add in search {
                    let mut c = have.clone();
                    c.extend(add.iter().cloned());
                    next.push(c);
                }
            }
            out = next;
        }
        out
    }
}

/// A clause no resource satisfies (`_id` of a value that is not a FHIR id).
fn nothing() -> Clause {
    vec![Cond::Id("/".into())]
}

/// The clauses of one narrowing on `res_type`: every parameter must be a search parameter
/// of the type that the server understands, each giving one clause.
fn clauses_of(res_type: &str, pairs: &[(String, String)]) -> Result<Vec<Clause>, String> {
    let parsed = crate::search::parse(res_type, pairs)?;
    if let Some(u) = parsed.unknown.first() {
        return Err(u.clone());
    }
    if parsed.clauses.len() != pairs.len() {
        return Err("a narrowing parameter has no value".into());
    }
    if !parsed.clauses.iter().flatten().all(evaluable) {
        return Err(
            "quantity, number and chained parameters cannot narrow a scope (only token, \
             string, date, reference and uri parameters, their modifiers, _id and _lastUpdated)"
                .into(),
        );
    }
    Ok(parsed.clauses)
}

/// Checks that every narrowed scope on a concrete type is made of search parameters the
/// server understands for that type (a `*` narrowing is judged per type when used).
///
/// # Errors
/// The first scope that is not.
pub fn check(scopes: &Scopes) -> Result<(), ScopeError> {
    for s in &scopes.0 {
        if let (Some(t), false) = (&s.resource, s.query.is_empty()) {
            clauses_of(t, &s.query).map_err(|e| ScopeError(format!("{s}: {e}")))?;
        }
    }
    Ok(())
}

/// Whether one condition holds for a resource, with the comparisons of
/// [`crate::search::Cond::sql`].
fn cond_matches(c: &Cond, id: &str, last_updated: &str, rows: &[IndexRow]) -> bool {
    match c {
        Cond::Id(want) => want == id,
        Cond::Token {
            param,
            system,
            code,
        } => rows.iter().any(|r| match r {
            IndexRow::Token {
                param: p,
                system: s,
                code: k,
            } => {
                p == param
                    && code.as_ref().is_none_or(|c| c == k)
                    && system.as_ref().is_none_or(|want| want == s)
            }
            _ => false,
        }),
        Cond::Str { param, mode, value } => rows.iter().any(|r| match r {
            IndexRow::String { param: p, value: v } if p == param => match *mode {
                "exact" => *v == value.to_lowercase(),
                "contains" => v.contains(value.as_str()),
                _ => v.starts_with(value.as_str()),
            },
            _ => false,
        }),
        Cond::Date {
            param,
            prefix,
            lo,
            hi,
        } => {
            if param == "_lastUpdated" {
                return date_holds(prefix, last_updated, last_updated, lo, hi);
            }
            rows.iter().any(|r| match r {
                IndexRow::Date {
                    param: p,
                    low,
                    high,
                } if p == param => date_holds(prefix, low, high, lo, hi),
                _ => false,
            })
        }
        Cond::Reference { param, exact, id } => rows.iter().any(|r| match r {
            IndexRow::Reference { param: p, target } if p == param => {
                exact.contains(target)
                    || id
                        .as_ref()
                        .is_some_and(|i| target.ends_with(&format!("/{i}")))
            }
            _ => false,
        }),
        Cond::TokenText { param, value } => rows.iter().any(|r| match r {
            IndexRow::TokenText { param: p, text } if p == param => {
                text.to_lowercase().starts_with(value.as_str())
            }
            _ => false,
        }),
        Cond::RefIdentifier {
            param,
            system,
            value,
        } => rows.iter().any(|r| match r {
            IndexRow::ReferenceIdentifier {
                param: p,
                system: s,
                value: v,
            } if p == param => {
                system.as_ref().is_none_or(|want| want == s) && (value.is_empty() || value == v)
            }
            _ => false,
        }),
        Cond::Uri { param, mode, value } => rows.iter().any(|r| match r {
            IndexRow::Uri { param: p, uri } if p == param => match *mode {
                "below" => uri.starts_with(value.as_str()),
                "above" => crate::search::uri_prefixes(value).contains(uri),
                _ => uri == value,
            },
            _ => false,
        }),
        Cond::Missing { param, missing, .. } => {
            let has = rows.iter().any(|r| row_param(r) == param);
            has != *missing
        }
        Cond::Not(inner) => !inner
            .iter()
            .any(|c| cond_matches(c, id, last_updated, rows)),
        // Refused in narrowings by `clauses_of`: they need other resources (a chain) or
        // the search's numeric comparisons (quantities), which are not evaluated here.
        Cond::Quantity { .. } | Cond::Chain { .. } => false,
    }
}

/// The parameter code of an index row.
fn row_param(r: &IndexRow) -> &str {
    match r {
        IndexRow::Token { param, .. }
        | IndexRow::String { param, .. }
        | IndexRow::Date { param, .. }
        | IndexRow::Reference { param, .. }
        | IndexRow::TokenText { param, .. }
        | IndexRow::ReferenceIdentifier { param, .. }
        | IndexRow::Quantity { param, .. }
        | IndexRow::Uri { param, .. } => param,
    }
}

/// Whether a condition can be judged on one resource's index rows alone.
fn evaluable(c: &Cond) -> bool {
    match c {
        Cond::Quantity { .. } | Cond::Chain { .. } => false,
        Cond::Not(inner) => inner.iter().all(evaluable),
        _ => true,
    }
}

/// A date comparison between a resource's range (`low..=high`) and the search value's
/// (`lo..=hi`), as instants written alike (so text order is time order).
fn date_holds(prefix: &str, low: &str, high: &str, lo: &str, hi: &str) -> bool {
    match prefix {
        "ne" => !(low >= lo && high <= hi),
        "lt" => low < lo,
        "le" => low <= hi,
        "gt" => high > hi,
        "ge" => high >= lo,
        "sa" => low > hi,
        "eb" => high < lo,
        "ap" => low <= hi && high >= lo,
        _ => low >= lo && high <= hi,
    }
}

/// The filter of the caller of the request being handled for `interaction` on
/// `res_type`; everything when there is no caller.
pub fn filter(res_type: &str, interaction: Interaction) -> Filter {
    match current() {
        None => Filter::All,
        Some(p) => Filter::of(res_type, &p.scopes.reach(res_type, interaction)),
    }
}

/// ANDs the caller's narrowing of searches on `res_type` to a parsed search.
pub fn narrow_search(res_type: &str, parsed: &mut Parsed) {
    parsed
        .clauses
        .extend(filter(res_type, Interaction::Search).clauses());
}

/// The index rows of a stored version's content (none for a delete or unreadable text).
fn rows_of(stored: &Stored) -> Vec<IndexRow> {
    stored
        .content
        .as_deref()
        .and_then(|c| crate::model::parse(c).ok())
        .map(|e| crate::search::index(&e))
        .unwrap_or_default()
}

/// Whether `stored` passes `filter` (a delete, having no content, passes only
/// [`Filter::All`]).
fn passes(filter: &Filter, stored: &Stored) -> bool {
    match filter {
        Filter::All => true,
        Filter::Any(_) => {
            !stored.deleted && filter.matches(&stored.id, &stored.last_updated, &rows_of(stored))
        }
    }
}

/// Whether the caller may read this version (read, vread, instance history, Bundle `GET`).
/// A delete is judged by the caller from the version before it.
pub fn readable(stored: &Stored) -> bool {
    passes(&filter(&stored.res_type, Interaction::Read), stored)
}

/// Whether a version is listed in a history Bundle: for instance history (whose resource
/// was found readable) every delete and every readable version; for type and system
/// history (searches) the versions that pass the caller's search narrowing.
pub fn in_history(stored: &Stored, instance: bool) -> bool {
    if instance {
        stored.deleted || readable(stored)
    } else {
        passes(&filter(&stored.res_type, Interaction::Search), stored)
    }
}

/// Checks that the resource `res_type/id` as it is about to be written (its index rows)
/// is within the caller's `interaction` (create or update) scopes.
///
/// # Errors
/// A message for a 403 when it is not.
pub fn check_write(
    interaction: Interaction,
    res_type: &str,
    id: &str,
    rows: &[IndexRow],
) -> Result<(), String> {
    let f = filter(res_type, interaction);
    if f.matches(id, &crate::store::time::now(), rows) {
        Ok(())
    } else {
        Err(format!(
            "the {res_type} as written would be outside the search parameters the token's {} scopes are narrowed to",
            interaction.letter()
        ))
    }
}

/// Checks that an existing current version may be changed by `interaction` (update or
/// delete) under the caller's scopes.
///
/// # Errors
/// A message for a 403 when it may not.
pub fn check_existing(interaction: Interaction, stored: &Stored) -> Result<(), String> {
    if stored.deleted || passes(&filter(&stored.res_type, interaction), stored) {
        Ok(())
    } else {
        Err(format!(
            "{}/{} is outside the search parameters the token's {} scopes are narrowed to",
            stored.res_type,
            stored.id,
            interaction.letter()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs_rows(category: &str, date: &str) -> Vec<IndexRow> {
        let (low, high) = crate::search::date_range(date).expect("date");
        vec![
            IndexRow::Token {
                param: "category".into(),
                system: "http://terminology.hl7.org/CodeSystem/observation-category".into(),
                code: category.into(),
            },
            IndexRow::Date {
                param: "date".into(),
                low,
                high,
            },
            IndexRow::Reference {
                param: "subject".into(),
                target: "Patient/p1".into(),
            },
        ]
    }

    fn filter_of(scopes: &str) -> Filter {
        let s = Scopes::parse(scopes).expect("scopes");
        Filter::of("Observation", &s.reach("Observation", Interaction::Read))
    }

    #[test]
    fn single_resources_match_like_a_search() {
        let lab = filter_of("system/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory");
        let now = "2026-01-01T00:00:00.000Z";
        assert!(lab.matches("1", now, &obs_rows("laboratory", "2020-05-01")));
        assert!(!lab.matches("1", now, &obs_rows("vital-signs", "2020-05-01")));
        assert!(!lab.matches("1", now, &[]));
        let any_system = filter_of("system/Observation.rs?category=laboratory");
        assert!(any_system.matches("1", now, &obs_rows("laboratory", "2020")));
        let wrong_system = filter_of("system/Observation.rs?category=http://x|laboratory");
        assert!(!wrong_system.matches("1", now, &obs_rows("laboratory", "2020")));
        // Two parameters are ANDed; dates compare as ranges; references by id.
        let both = filter_of("system/Observation.rs?category=laboratory&date=ge2020-01-01");
        assert!(both.matches("1", now, &obs_rows("laboratory", "2020-05-01")));
        assert!(!both.matches("1", now, &obs_rows("laboratory", "2019-05-01")));
        assert!(filter_of("system/Observation.rs?subject=p1").matches(
            "1",
            now,
            &obs_rows("x", "2020")
        ));
        assert!(!filter_of("system/Observation.rs?subject=p2").matches(
            "1",
            now,
            &obs_rows("x", "2020")
        ));
        assert!(filter_of("system/Observation.rs?_id=1").matches("1", now, &[]));
        assert!(!filter_of("system/Observation.rs?_id=1").matches("2", now, &[]));
        assert!(filter_of("system/Observation.rs?_lastUpdated=ge2025").matches("1", now, &[]));
        // Two narrowed scopes are ORed.
        let or = filter_of(
            "system/Observation.rs?category=laboratory system/Observation.rs?category=vital-signs",
        );
        assert!(or.matches("1", now, &obs_rows("vital-signs", "2020")));
        assert!(!or.matches("1", now, &obs_rows("imaging", "2020")));
        // A parameter that is not one of the type's matches nothing.
        let unknown = filter_of("system/*.rs?not-a-param=1");
        assert_eq!(unknown, Filter::Any(Vec::new()));
        assert!(!unknown.matches("1", now, &obs_rows("laboratory", "2020")));
        assert_eq!(filter_of("system/Observation.rs"), Filter::All);
    }

    #[test]
    fn ored_narrowings_become_anded_search_clauses() {
        let f = filter_of(
            "system/Observation.rs?category=laboratory&date=ge2020 system/Observation.rs?code=1234-5",
        );
        // (cat AND date) OR code  ==  (cat OR code) AND (date OR code)
        let clauses = f.clauses();
        assert_eq!(clauses.len(), 2);
        assert!(clauses.iter().all(|c| c.len() == 2));
        assert!(filter_of("system/Observation.rs").clauses().is_empty());
        assert_eq!(Filter::Any(Vec::new()).clauses(), vec![nothing()]);
    }

    #[test]
    fn registration_refuses_narrowings_that_are_not_search_parameters() {
        assert!(
            check(&Scopes::parse("system/Observation.rs?category=laboratory").expect("s")).is_ok()
        );
        assert!(check(&Scopes::parse("system/Observation.rs?colour=red").expect("s")).is_err());
        assert!(
            check(&Scopes::parse("system/Observation.rs?category:exact=x").expect("s")).is_err()
        );
        assert!(check(&Scopes::parse("system/*.rs?colour=red").expect("s")).is_ok());
    }
}
