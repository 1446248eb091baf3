//! Terminology for the profile validator: expands FHIR R4 ValueSets from the registry and
//! answers "is this code in that ValueSet?" for bindings, and "does this code exist?" for
//! Codings outside bindings.
//!
//! In the pipeline it sits under `validate`: the profile checker hands it a binding's ValueSet
//! URL and an element's `system`/`code`/`display`, and turns the [`Membership`] into issues.
//!
//! # How a ValueSet is expanded
//! Following the R4 `ValueSet.compose` rules:
//! - each `include` selects the codes meeting *all* its conditions: its `system` (all the
//!   codes, the listed `concept`s, or those passing every `filter`) and every ValueSet of its
//!   `valueSet` list (intersection, as the element's comment says; the R4 definition text says
//!   union, later versions say intersection);
//! - the includes are united, then each `exclude` (same shape) is taken away;
//! - filters over a CodeSystem the registry holds in full: `is-a`, `descendent-of` (and the R5
//!   spelling `descendant-of`), `is-not-a`, `generalizes`, `=`, `in`, `not-in`, `regex` on the
//!   code (`concept`/`code`), and `=`, `in`, `not-in`, `regex`, `exists` on a concept property
//!   the CodeSystem carries.
//!
//! What cannot be enumerated (a system the registry does not hold or holds only as a stub,
//! such as SNOMED CT or LOINC; UCUM, a grammar; a filter the held copy cannot evaluate) makes
//! that system *open*: the ValueSet's published `expansion.contains` then supplies the codes
//! known to be members, and any other code of an open system is
//! [`Unverifiable`](Membership::Unverifiable), never rejected. An explicit `concept` list is
//! always enumerable, whatever its system.
//!
//! Abstract codes (R4 concept property `notSelectable`, or `abstract`, when the CodeSystem
//! carries it; `abstract` in a published expansion) are kept in the expansion but are not
//! valid values. Codes listed explicitly in a compose are taken as selectable. The embedded
//! pack keeps only `code`, `display` and nesting of each concept, so for the packed R4 code
//! systems abstract and deprecated codes count as members, and hierarchy given by the `child`
//! property (v3 polyhierarchy) is not seen; loaded CodeSystems that carry these properties
//! are handled.
//!
//! Expansions are computed once per ValueSet and cached; a membership check on a cached
//! expansion is a pair of hash lookups with borrowed keys.

use crate::definitions::{Kind, Registry};
use crate::model::schema::FastHash;
use regex::Regex;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

/// The most codes one expansion may hold; larger ones fail with [`TerminologyError::TooLarge`].
pub const MAX_EXPANSION: usize = 100_000;

/// The UCUM system URL: a grammar of units, never enumerable.
const UCUM: &str = "http://unitsofmeasure.org";

/// How many unknown system URLs the CodeSystem cache remembers (bounds memory when data
/// carries arbitrary systems).
const MAX_NEGATIVE_CACHE: usize = 10_000;

/// Why an expansion could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TerminologyError {
    /// The registry has no ValueSet with this URL.
    #[error("unknown ValueSet '{0}'")]
    UnknownValueSet(String),
    /// A ValueSet includes itself, directly or through others; `chain` is the path of URLs.
    #[error("ValueSet '{url}' includes itself: {chain}")]
    Cycle {
        /// The ValueSet met twice.
        url: String,
        /// The include path, `a -> b -> a`.
        chain: String,
    },
    /// The expansion would hold more than [`MAX_EXPANSION`] codes.
    #[error("the expansion of ValueSet '{url}' exceeds {limit} codes")]
    TooLarge {
        /// The ValueSet being expanded.
        url: String,
        /// The limit that was hit.
        limit: usize,
    },
}

/// The answer to "is this code in this ValueSet?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// The code is a (selectable) member. Displays are checked separately, by
    /// [`Terminology::display_mismatch`].
    Member,
    /// The code is certainly not a valid member: it is unknown in a held CodeSystem, outside
    /// an enumerable ValueSet, or abstract.
    NotMember {
        /// Why, for people.
        reason: String,
    },
    /// Membership cannot be decided: the code belongs to a system the gateway cannot
    /// enumerate and is not listed in the ValueSet.
    Unverifiable {
        /// Why, for people.
        reason: String,
    },
}

impl Membership {
    /// Whether the code is a member.
    pub fn is_member(&self) -> bool {
        matches!(self, Membership::Member)
    }
}

/// One code of an expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpansionEntry {
    display: Option<Box<str>>,
    selectable: bool,
}

impl ExpansionEntry {
    /// The display the ValueSet or CodeSystem gives the code, if any.
    pub fn display(&self) -> Option<&str> {
        self.display.as_deref()
    }

    /// Whether the code may be used as a value (false for abstract codes).
    pub fn is_selectable(&self) -> bool {
        self.selectable
    }
}

/// A system whose codes an expansion cannot enumerate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSystem {
    /// The code system URL.
    pub system: String,
    /// Why it is open, for people ("SNOMED CT is not held by the gateway").
    pub reason: String,
}

/// Codes by system, then by code.
type CodeMap = HashMap<Box<str>, HashMap<Box<str>, ExpansionEntry, FastHash>, FastHash>;

/// The expanded content of a ValueSet: its codes with displays, and what is not enumerable.
#[derive(Debug, Clone)]
pub struct Expansion {
    url: Box<str>,
    codes: CodeMap,
    open: Vec<OpenSystem>,
    open_all: Option<String>,
    case_insensitive: Vec<Box<str>>,
    len: usize,
}

impl Expansion {
    /// The ValueSet URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The entry of a code of a system, if the expansion lists it (selectable or not).
    pub fn get(&self, system: &str, code: &str) -> Option<&ExpansionEntry> {
        let codes = self.codes.get(system)?;
        if let Some(e) = codes.get(code) {
            return Some(e);
        }
        if self.case_insensitive.iter().any(|s| &**s == system) {
            return codes
                .iter()
                .find(|(c, _)| c.eq_ignore_ascii_case(code))
                .map(|(_, e)| e);
        }
        None
    }

    /// Whether the expansion lists the code as a selectable member.
    pub fn contains(&self, system: &str, code: &str) -> bool {
        self.get(system, code).is_some_and(|e| e.selectable)
    }

    /// How many codes are listed (abstract ones included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no code is listed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every member is listed: no open system and nothing indeterminate.
    pub fn is_complete(&self) -> bool {
        self.open.is_empty() && self.open_all.is_none()
    }

    /// The systems whose codes could not be enumerated.
    pub fn open_systems(&self) -> &[OpenSystem] {
        &self.open
    }

    /// Why codes of `system` beyond those listed cannot be ruled out, if they cannot.
    pub fn open_reason(&self, system: &str) -> Option<&str> {
        self.open
            .iter()
            .find(|o| o.system == system)
            .map(|o| o.reason.as_str())
            .or(self.open_all.as_deref())
    }

    /// Every listed code: `(system, code, entry)`, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &ExpansionEntry)> {
        self.codes
            .iter()
            .flat_map(|(s, m)| m.iter().map(move |(c, e)| (&**s, &**c, e)))
    }

    /// The systems (with entries) that list `code`.
    fn find_code<'a>(
        &'a self,
        code: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a ExpansionEntry)> {
        self.codes
            .keys()
            .filter_map(move |s| self.get(s, code).map(|e| (&**s, e)))
    }

    /// The first reason anything is open, if anything is.
    fn any_open_reason(&self) -> Option<&str> {
        self.open_all
            .as_deref()
            .or_else(|| self.open.first().map(|o| o.reason.as_str()))
    }
}

/// ValueSet expansion and code checks over a [`Registry`], with cached expansions.
///
/// `Send + Sync`: share one per registry (behind an `Arc`) across validation threads.
#[derive(Debug)]
pub struct Terminology {
    registry: Arc<Registry>,
    expansions: RwLock<HashMap<Box<str>, Arc<Expansion>, FastHash>>,
    systems: RwLock<HashMap<Box<str>, Option<Arc<CodeSystemIndex>>, FastHash>>,
}

impl Terminology {
    /// Terminology over a shared registry.
    pub fn new(registry: Arc<Registry>) -> Terminology {
        Terminology {
            registry,
            expansions: RwLock::new(HashMap::with_hasher(FastHash)),
            systems: RwLock::new(HashMap::with_hasher(FastHash)),
        }
    }

    /// Terminology over a copy of `registry` (the copy shares the resources).
    pub fn from_registry(registry: &Registry) -> Terminology {
        Terminology::new(Arc::new(registry.clone()))
    }

    /// The registry read from.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The expansion of a ValueSet (a `|version` suffix is ignored), computed on first use and
    /// cached.
    ///
    /// # Errors
    /// [`TerminologyError::UnknownValueSet`] when the registry has no such ValueSet (a missing
    /// *included* ValueSet is not an error: it makes the expansion indeterminate),
    /// [`TerminologyError::Cycle`] when it includes itself, directly or not, and
    /// [`TerminologyError::TooLarge`] past [`MAX_EXPANSION`] codes.
    pub fn expand(&self, valueset_url: &str) -> Result<Arc<Expansion>, TerminologyError> {
        self.expand_in(bare_url(valueset_url), &mut Vec::new())
    }

    /// Checks a code against a ValueSet. See [`Membership`] for the three answers.
    ///
    /// `system` is `None` for `code`-typed elements: the code then matches when exactly one
    /// system of the expansion lists it; when several do, `display` (if given) picks the one
    /// whose display it matches, else the answer is `Unverifiable`. Displays are not judged
    /// here: use [`Terminology::display_mismatch`].
    ///
    /// # Errors
    /// As [`Terminology::expand`]: an unknown ValueSet, a cycle, or a too large expansion.
    pub fn validate_code(
        &self,
        valueset_url: &str,
        system: Option<&str>,
        code: &str,
        display: Option<&str>,
    ) -> Result<Membership, TerminologyError> {
        let exp = self.expand(valueset_url)?;
        Ok(match system {
            Some(system) => self.member_in_system(&exp, system, code),
            None => self.member_code_only(&exp, code, display),
        })
    }

    /// A message when `display` matches none of the displays known for the code (that of the
    /// ValueSet's expansion or compose, and that of the held CodeSystem), comparing without
    /// regard to case and runs of white space. `None` when it matches, when no display is
    /// known, or when the ValueSet cannot be expanded. A warning, not a membership failure.
    pub fn display_mismatch(
        &self,
        valueset_url: &str,
        system: Option<&str>,
        code: &str,
        display: &str,
    ) -> Option<String> {
        let exp = self.expand(valueset_url).ok();
        let (system, listed) = match (system, exp.as_deref()) {
            (Some(s), Some(e)) => (s, e.get(s, code).and_then(ExpansionEntry::display)),
            (Some(s), None) => (s, None),
            (None, Some(e)) => {
                let mut hits = e.find_code(code);
                let (s, entry) = hits.next()?;
                (s, entry.display())
            }
            (None, None) => return None,
        };
        self.mismatch(system, code, listed, display)
    }

    /// Whether a CodeSystem defines a code: `Some(true)`/`Some(false)` when the registry holds
    /// the system, `None` when it does not (or holds only part of it and the code is not in
    /// that part), e.g. SNOMED CT, LOINC, UCUM.
    pub fn code_system_has(&self, system: &str, code: &str) -> Option<bool> {
        let cs = self.code_system(system)?;
        if cs.find(code).is_some() {
            Some(true)
        } else if cs.complete {
            Some(false)
        } else {
            None
        }
    }

    /// The display a held CodeSystem gives a code (`None` when the system is not held, the
    /// code is unknown or has no display).
    pub fn display_of(&self, system: &str, code: &str) -> Option<String> {
        let cs = self.code_system(system)?;
        let i = cs.find(code)?;
        cs.concepts[i].display.as_deref().map(str::to_string)
    }

    /// For Codings outside bindings: a message when `display` differs from the display a held
    /// CodeSystem gives the code (as [`Terminology::display_mismatch`] compares); `None` when
    /// it matches or nothing is known.
    pub fn check_display(&self, system: &str, code: &str, display: &str) -> Option<String> {
        self.mismatch(system, code, None, display)
    }

    fn member_in_system(&self, exp: &Expansion, system: &str, code: &str) -> Membership {
        if let Some(entry) = exp.get(system, code) {
            return found(system, code, entry);
        }
        if self.code_system_has(system, code) == Some(false) {
            return Membership::NotMember {
                reason: format!("unknown code '{code}' in system {system}"),
            };
        }
        if let Some(reason) = exp.open_reason(system) {
            return Membership::Unverifiable {
                reason: format!("{reason}; code '{code}' cannot be verified"),
            };
        }
        Membership::NotMember {
            reason: format!(
                "code '{code}' of system {system} is not in ValueSet {}",
                exp.url
            ),
        }
    }

    fn member_code_only(&self, exp: &Expansion, code: &str, display: Option<&str>) -> Membership {
        let mut hits = exp.find_code(code);
        let (first, second) = (hits.next(), hits.next());
        match (first, second) {
            (Some((system, entry)), None) => found(system, code, entry),
            (Some(_), Some(_)) => {
                let by_display = display.and_then(|d| {
                    let mut same = exp.find_code(code).filter(|(s, e)| {
                        self.display_matches(s, code, e.display(), d) == Some(true)
                    });
                    match (same.next(), same.next()) {
                        (Some(one), None) => Some(one),
                        _ => None,
                    }
                });
                if let Some((system, entry)) = by_display {
                    return found(system, code, entry);
                }
                let systems: Vec<&str> = exp.find_code(code).map(|(s, _)| s).collect();
                Membership::Unverifiable {
                    reason: format!(
                        "code '{code}' is ambiguous in ValueSet {}: it is in {}",
                        exp.url,
                        systems.join(", ")
                    ),
                }
            }
            (None, _) => match exp.any_open_reason() {
                Some(reason) => Membership::Unverifiable {
                    reason: format!("{reason}; code '{code}' cannot be verified"),
                },
                None => Membership::NotMember {
                    reason: format!("code '{code}' is not in ValueSet {}", exp.url),
                },
            },
        }
    }

    /// A mismatch message when `given` equals none of the known displays of the code.
    fn mismatch(
        &self,
        system: &str,
        code: &str,
        listed: Option<&str>,
        given: &str,
    ) -> Option<String> {
        if self.display_matches(system, code, listed, given)? {
            return None;
        }
        let expected = listed
            .map(str::to_string)
            .or_else(|| self.display_of(system, code))?;
        Some(format!(
            "display '{given}' of code '{code}' in {system} should be '{expected}'"
        ))
    }

    /// Whether `given` equals the `listed` display or the held CodeSystem's display of the
    /// code; `None` when neither is known.
    fn display_matches(
        &self,
        system: &str,
        code: &str,
        listed: Option<&str>,
        given: &str,
    ) -> Option<bool> {
        let cs = self.code_system(system);
        let from_cs = cs
            .as_deref()
            .and_then(|cs| cs.find(code).map(|i| &cs.concepts[i]))
            .and_then(|c| c.display.as_deref());
        let mut known = listed.into_iter().chain(from_cs).peekable();
        known.peek()?;
        Some(known.any(|k| same_display(k, given)))
    }

    // ---- expansion ----

    fn expand_in(
        &self,
        url: &str,
        stack: &mut Vec<Box<str>>,
    ) -> Result<Arc<Expansion>, TerminologyError> {
        if let Some(e) = read(&self.expansions).get(url) {
            return Ok(e.clone());
        }
        if stack.iter().any(|u| &**u == url) {
            let chain: Vec<&str> = stack.iter().map(|u| &**u).chain([url]).collect();
            return Err(TerminologyError::Cycle {
                url: url.to_string(),
                chain: chain.join(" -> "),
            });
        }
        let vs = self
            .registry
            .get(Kind::ValueSet, url)
            .ok_or_else(|| TerminologyError::UnknownValueSet(url.to_string()))?;
        stack.push(url.into());
        let set = self.compute(url, &vs, stack);
        stack.pop();
        let exp = Arc::new(self.finish(url, set?)?);
        write(&self.expansions).insert(url.into(), exp.clone());
        Ok(exp)
    }

    /// The codes of a ValueSet resource: its compose, completed by its published expansion
    /// for what the compose leaves open.
    fn compute(
        &self,
        url: &str,
        vs: &Value,
        stack: &mut Vec<Box<str>>,
    ) -> Result<CodeSet, TerminologyError> {
        let published = vs.get("expansion");
        let Some(compose) = vs.get("compose") else {
            return Ok(match published {
                Some(p) => published_only(url, p),
                None => CodeSet::indeterminate(format!(
                    "ValueSet {url} has neither a compose nor an expansion"
                )),
            });
        };
        let mut set = CodeSet::default();
        for inc in array(compose, "include") {
            let part = self.compose_part(url, inc, stack)?;
            set.union(part);
            check_size(url, set.len())?;
        }
        for exc in array(compose, "exclude") {
            let part = self.compose_part(url, exc, stack)?;
            set.subtract(&part);
        }
        if let Some(p) = published {
            if set.has_open() {
                set.fill_from_published(p);
            }
        }
        Ok(set)
    }

    /// One `include` or `exclude`: the intersection of its system part and its ValueSets.
    fn compose_part(
        &self,
        url: &str,
        part: &Value,
        stack: &mut Vec<Box<str>>,
    ) -> Result<CodeSet, TerminologyError> {
        let mut acc = match part.get("system").and_then(Value::as_str) {
            Some(system) => Some(self.system_part(url, system, part)?),
            None => None,
        };
        for vs in array(part, "valueSet").filter_map(Value::as_str) {
            let other = match self.expand_in(bare_url(vs), stack) {
                Ok(e) => CodeSet::from_expansion(&e),
                Err(TerminologyError::UnknownValueSet(missing)) => CodeSet::indeterminate(format!(
                    "ValueSet {url} includes ValueSet {missing}, which the gateway does not hold"
                )),
                Err(e) => return Err(e),
            };
            acc = Some(match acc {
                Some(a) => a.intersect(&other),
                None => other,
            });
        }
        // An include with neither system nor valueSet is invalid (vsd-1) and selects nothing.
        Ok(acc.unwrap_or_default())
    }

    /// The codes an include/exclude selects from its `system`.
    fn system_part(
        &self,
        url: &str,
        system: &str,
        part: &Value,
    ) -> Result<CodeSet, TerminologyError> {
        let cs = self.code_system(system);
        let listed: Vec<&Value> = array(part, "concept").collect();
        let filters: Vec<&Value> = array(part, "filter").collect();
        let mut set = CodeSet::default();
        if !listed.is_empty() {
            for c in listed {
                let Some(code) = c.get("code").and_then(Value::as_str) else {
                    continue;
                };
                let display = c.get("display").and_then(Value::as_str).or_else(|| {
                    let cs = cs.as_deref()?;
                    cs.concepts[cs.find(code)?].display.as_deref()
                });
                set.insert(system, code, display, true);
            }
            if filters.is_empty() {
                return Ok(set);
            }
        }
        let cs = match cs {
            Some(cs) if cs.complete && system != UCUM => cs,
            other => {
                let reason = not_enumerable_reason(system, other.as_deref());
                return Ok(CodeSet::open(system, reason));
            }
        };
        let selected = match apply_filters(&cs, &filters) {
            Ok(mask) => mask,
            Err(reason) => return Ok(CodeSet::open(system, reason)),
        };
        check_size(url, selected.iter().filter(|s| **s).count())?;
        let mut from_cs = CodeSet::default();
        for (i, _) in selected.iter().enumerate().filter(|(_, s)| **s) {
            let c = &cs.concepts[i];
            from_cs.insert(system, &c.code, c.display.as_deref(), c.selectable);
        }
        if set.is_empty() {
            Ok(from_cs)
        } else {
            // Both concepts and filters (invalid, vsd-3): keep what satisfies both.
            Ok(set.intersect(&from_cs))
        }
    }

    /// Freezes a computed set into an [`Expansion`].
    fn finish(&self, url: &str, set: CodeSet) -> Result<Expansion, TerminologyError> {
        let len = set.len();
        check_size(url, len)?;
        let case_insensitive = set
            .codes
            .keys()
            .filter(|s| self.code_system(s).is_some_and(|cs| !cs.case_sensitive))
            .cloned()
            .collect();
        Ok(Expansion {
            url: url.into(),
            codes: set.codes,
            open: set
                .open
                .into_iter()
                .map(|(system, reason)| OpenSystem { system, reason })
                .collect(),
            open_all: set.open_all,
            case_insensitive,
            len,
        })
    }

    // ---- code systems ----

    /// The index of a CodeSystem the registry holds, built on first use.
    fn code_system(&self, system: &str) -> Option<Arc<CodeSystemIndex>> {
        let system = bare_url(system);
        if let Some(hit) = read(&self.systems).get(system) {
            return hit.clone();
        }
        let index = self
            .registry
            .get(Kind::CodeSystem, system)
            .map(|cs| Arc::new(CodeSystemIndex::build(&cs)));
        let mut cache = write(&self.systems);
        if index.is_some() || cache.len() < MAX_NEGATIVE_CACHE {
            cache.insert(system.into(), index.clone());
        }
        index
    }
}

// ---- the working set of an expansion ----

/// Codes known to be in a set, plus where membership is open.
#[derive(Debug, Default, Clone)]
struct CodeSet {
    codes: CodeMap,
    /// Systems (with a reason) where codes beyond `codes` may be members.
    open: BTreeMap<String, String>,
    /// Set when *any* system may have further members (an unknown included ValueSet).
    open_all: Option<String>,
}

impl CodeSet {
    fn open(system: &str, reason: String) -> CodeSet {
        let mut s = CodeSet::default();
        s.open.insert(system.to_string(), reason);
        s
    }

    fn indeterminate(reason: String) -> CodeSet {
        CodeSet {
            open_all: Some(reason),
            ..CodeSet::default()
        }
    }

    fn from_expansion(e: &Expansion) -> CodeSet {
        CodeSet {
            codes: e.codes.clone(),
            open: e
                .open
                .iter()
                .map(|o| (o.system.clone(), o.reason.clone()))
                .collect(),
            open_all: e.open_all.clone(),
        }
    }

    fn len(&self) -> usize {
        self.codes.values().map(HashMap::len).sum()
    }

    fn is_empty(&self) -> bool {
        self.codes.values().all(HashMap::is_empty)
    }

    fn has_open(&self) -> bool {
        !self.open.is_empty() || self.open_all.is_some()
    }

    fn open_reason(&self, system: &str) -> Option<&String> {
        self.open.get(system).or(self.open_all.as_ref())
    }

    fn has_system(&self, system: &str) -> bool {
        self.codes.get(system).is_some_and(|m| !m.is_empty())
    }

    /// Adds a code; a code met twice keeps its first display and is selectable if either is.
    fn insert(&mut self, system: &str, code: &str, display: Option<&str>, selectable: bool) {
        let codes = match self.codes.get_mut(system) {
            Some(m) => m,
            None => self.codes.entry(system.into()).or_default(),
        };
        match codes.get_mut(code) {
            Some(e) => {
                e.selectable |= selectable;
                if e.display.is_none() {
                    e.display = display.map(Into::into);
                }
            }
            None => {
                codes.insert(
                    code.into(),
                    ExpansionEntry {
                        display: display.map(Into::into),
                        selectable,
                    },
                );
            }
        }
    }

    fn union(&mut self, other: CodeSet) {
        for (system, codes) in other.codes {
            for (code, e) in codes {
                self.insert(&system, &code, e.display.as_deref(), e.selectable);
            }
        }
        for (system, reason) in other.open {
            self.open.entry(system).or_insert(reason);
        }
        if self.open_all.is_none() {
            self.open_all = other.open_all;
        }
    }

    /// Codes certainly in both; a system is open when some code of it may be in both.
    fn intersect(&self, other: &CodeSet) -> CodeSet {
        let mut out = CodeSet::default();
        for (system, codes) in &self.codes {
            let Some(theirs) = other.codes.get(system) else {
                continue;
            };
            for (code, e) in codes {
                if let Some(t) = theirs.get(code) {
                    let display = e.display.as_deref().or(t.display.as_deref());
                    out.insert(system, code, display, e.selectable && t.selectable);
                }
            }
        }
        let systems: HashSet<&str> = self
            .open
            .keys()
            .map(String::as_str)
            .chain(other.open.keys().map(String::as_str))
            .chain(self.codes.keys().map(|s| &**s))
            .chain(other.codes.keys().map(|s| &**s))
            .collect();
        for system in systems {
            let (mine, theirs) = (self.open_reason(system), other.open_reason(system));
            let reason = match (mine, theirs) {
                (Some(r), _) if theirs.is_some() || other.has_system(system) => Some(r),
                (_, Some(r)) if self.has_system(system) => Some(r),
                _ => None,
            };
            if let Some(r) = reason {
                out.open.insert(system.to_string(), r.clone());
            }
        }
        if let (Some(r), Some(_)) = (&self.open_all, &other.open_all) {
            out.open_all = Some(r.clone());
        }
        out
    }

    /// Removes the codes certainly in `other`; codes that may be in it make their system open.
    fn subtract(&mut self, other: &CodeSet) {
        let mut newly_open: Vec<(String, String)> = Vec::new();
        for (system, codes) in self.codes.iter_mut() {
            if let Some(theirs) = other.codes.get(system) {
                codes.retain(|code, _| !theirs.contains_key(code));
            }
            if let Some(reason) = other.open_reason(system) {
                if !codes.is_empty() {
                    codes.clear();
                    newly_open.push((system.to_string(), reason.clone()));
                }
            }
        }
        for (system, reason) in newly_open {
            self.open.entry(system).or_insert(reason);
        }
        self.codes.retain(|_, m| !m.is_empty());
    }

    /// Adds the published expansion's codes of the systems left open.
    fn fill_from_published(&mut self, expansion: &Value) {
        let mut found = Vec::new();
        flatten_contains(expansion, &mut found);
        for (system, code, display, selectable) in found {
            if self.open_reason(system).is_some() {
                self.insert(system, code, display, selectable);
            }
        }
    }
}

/// The answer for a code the expansion lists: a member unless abstract.
fn found(system: &str, code: &str, entry: &ExpansionEntry) -> Membership {
    if entry.selectable {
        return Membership::Member;
    }
    Membership::NotMember {
        reason: format!(
            "code '{code}' of system {system} is abstract (not selectable) and cannot be used"
        ),
    }
}

/// A ValueSet with only an expansion: its codes, complete unless `total` says otherwise.
fn published_only(url: &str, expansion: &Value) -> CodeSet {
    let mut found = Vec::new();
    flatten_contains(expansion, &mut found);
    let mut set = CodeSet::default();
    for (system, code, display, selectable) in &found {
        set.insert(system, code, *display, *selectable);
    }
    let total = expansion.get("total").and_then(Value::as_u64);
    if let Some(total) = total.filter(|t| *t > found.len() as u64) {
        set.open_all = Some(format!(
            "ValueSet {url} has only a partial expansion ({} of {total} codes)",
            found.len()
        ));
    }
    set
}

/// `(system, code, display, selectable)` of every entry of `expansion.contains`, nested ones
/// included; entries without system or code (groupers) are skipped.
fn flatten_contains<'a>(node: &'a Value, out: &mut Vec<(&'a str, &'a str, Option<&'a str>, bool)>) {
    for c in array(node, "contains") {
        if let (Some(s), Some(code)) = (
            c.get("system").and_then(Value::as_str),
            c.get("code").and_then(Value::as_str),
        ) {
            let abstract_ = c.get("abstract").and_then(Value::as_bool) == Some(true);
            out.push((
                s,
                code,
                c.get("display").and_then(Value::as_str),
                !abstract_,
            ));
        }
        flatten_contains(c, out);
    }
}

// ---- code systems ----

/// One concept of a held CodeSystem, with its place in the hierarchy.
#[derive(Debug)]
struct Concept {
    code: Box<str>,
    display: Option<Box<str>>,
    selectable: bool,
    parents: Vec<usize>,
    children: Vec<usize>,
    /// Property values as text (`valueCode`, `valueString`, `valueBoolean`...).
    properties: Vec<(Box<str>, Box<str>)>,
}

/// A held CodeSystem flattened for lookups and filters.
#[derive(Debug)]
struct CodeSystemIndex {
    /// `content` is `complete` (or absent): codes not listed do not exist.
    complete: bool,
    content: Box<str>,
    case_sensitive: bool,
    concepts: Vec<Concept>,
    by_code: HashMap<Box<str>, usize>,
    /// Properties declared by the CodeSystem or carried by any concept.
    properties: HashSet<Box<str>>,
}

impl CodeSystemIndex {
    fn build(cs: &Value) -> CodeSystemIndex {
        let content = cs
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or("complete");
        let mut index = CodeSystemIndex {
            complete: content == "complete",
            content: content.into(),
            case_sensitive: cs.get("caseSensitive").and_then(Value::as_bool) != Some(false),
            concepts: Vec::new(),
            by_code: HashMap::new(),
            properties: array(cs, "property")
                .filter_map(|p| p.get("code").and_then(Value::as_str))
                .map(Into::into)
                .collect(),
        };
        let mut links: Vec<(usize, &str, bool)> = Vec::new();
        index.add_concepts(cs, None, &mut links);
        for (i, other, other_is_parent) in links {
            if let Some(j) = index.by_code.get(other).copied() {
                if other_is_parent {
                    index.link(j, i);
                } else {
                    index.link(i, j);
                }
            }
        }
        index
    }

    /// Adds `node.concept[]` under `parent`, recursively. Property-expressed hierarchy
    /// (`parent`, `subsumedBy`, `child`) is collected into `links` as (concept, other code,
    /// other is the parent).
    fn add_concepts<'a>(
        &mut self,
        node: &'a Value,
        parent: Option<usize>,
        links: &mut Vec<(usize, &'a str, bool)>,
    ) {
        for c in array(node, "concept") {
            let Some(code) = c.get("code").and_then(Value::as_str) else {
                continue;
            };
            let i = match self.by_code.get(code) {
                Some(&i) => i,
                None => {
                    self.concepts.push(Concept {
                        code: code.into(),
                        display: None,
                        selectable: true,
                        parents: Vec::new(),
                        children: Vec::new(),
                        properties: Vec::new(),
                    });
                    self.by_code.insert(code.into(), self.concepts.len() - 1);
                    self.concepts.len() - 1
                }
            };
            if self.concepts[i].display.is_none() {
                self.concepts[i].display = c.get("display").and_then(Value::as_str).map(Into::into);
            }
            for p in array(c, "property") {
                let Some(name) = p.get("code").and_then(Value::as_str) else {
                    continue;
                };
                let value = property_value(p);
                if matches!(name, "notSelectable" | "abstract") && value.as_deref() == Some("true")
                {
                    self.concepts[i].selectable = false;
                }
                if let Some(other) = p.get("valueCode").and_then(Value::as_str) {
                    match name {
                        "parent" | "subsumedBy" => links.push((i, other, true)),
                        "child" => links.push((i, other, false)),
                        _ => {}
                    }
                }
                self.properties.insert(name.into());
                if let Some(v) = value {
                    self.concepts[i].properties.push((name.into(), v.into()));
                }
            }
            if let Some(p) = parent {
                self.link(p, i);
            }
            self.add_concepts(c, Some(i), links);
        }
    }

    fn link(&mut self, parent: usize, child: usize) {
        if parent == child || self.concepts[parent].children.contains(&child) {
            return;
        }
        self.concepts[parent].children.push(child);
        self.concepts[child].parents.push(parent);
    }

    fn find(&self, code: &str) -> Option<usize> {
        if let Some(&i) = self.by_code.get(code) {
            return Some(i);
        }
        if self.case_sensitive {
            return None;
        }
        self.concepts
            .iter()
            .position(|c| c.code.eq_ignore_ascii_case(code))
    }

    /// `start` and everything reachable from it through `children` (or `parents`).
    fn closure(&self, start: usize, down: bool) -> Vec<bool> {
        let mut seen = vec![false; self.concepts.len()];
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            let next = if down {
                &self.concepts[i].children
            } else {
                &self.concepts[i].parents
            };
            stack.extend(next.iter().copied().filter(|j| !seen[*j]));
        }
        seen
    }
}

/// The text of a concept property's `value[x]`.
fn property_value(p: &Value) -> Option<String> {
    let obj = p.as_object()?;
    let (key, v) = obj.iter().find(|(k, _)| k.starts_with("value"))?;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(_) if key == "valueCoding" => {
            v.get("code").and_then(Value::as_str).map(str::to_string)
        }
        _ => None,
    }
}

/// Which concepts pass every filter (all of them when there is none).
///
/// # Errors
/// The reason, for people, when a filter cannot be evaluated on this CodeSystem.
fn apply_filters(cs: &CodeSystemIndex, filters: &[&Value]) -> Result<Vec<bool>, String> {
    let mut mask = vec![true; cs.concepts.len()];
    for f in filters {
        let passing = apply_filter(cs, f)?;
        for (m, p) in mask.iter_mut().zip(passing) {
            *m &= p;
        }
    }
    Ok(mask)
}

/// Which concepts pass one filter.
fn apply_filter(cs: &CodeSystemIndex, filter: &Value) -> Result<Vec<bool>, String> {
    let field = |k: &str| filter.get(k).and_then(Value::as_str);
    let (Some(property), Some(op), Some(value)) = (field("property"), field("op"), field("value"))
    else {
        return Err(format!("malformed filter {filter}"));
    };
    let unsupported =
        || format!("the filter '{property} {op} {value}' cannot be evaluated by the gateway");
    let n = cs.concepts.len();
    let code_of = |i: usize| &*cs.concepts[i].code;
    let by_code = |pred: &dyn Fn(&str) -> bool| (0..n).map(|i| pred(code_of(i))).collect();
    if matches!(property, "concept" | "code") {
        let hierarchy = |down: bool, keep_self: bool| match cs.find(value) {
            Some(root) => {
                let mut m = cs.closure(root, down);
                m[root] = keep_self;
                m
            }
            None => vec![false; n],
        };
        return Ok(match op {
            "is-a" => hierarchy(true, true),
            "descendent-of" | "descendant-of" => hierarchy(true, false),
            "is-not-a" => hierarchy(true, true).into_iter().map(|b| !b).collect(),
            "generalizes" => hierarchy(false, true),
            "=" => by_code(&|c| c == value),
            "in" => by_code(&|c| in_list(value, c)),
            "not-in" => by_code(&|c| !in_list(value, c)),
            "regex" => {
                let re = anchored(value).ok_or_else(unsupported)?;
                by_code(&|c| re.is_match(c))
            }
            _ => return Err(unsupported()),
        });
    }
    if !cs.properties.contains(property) {
        return Err(unsupported());
    }
    let values = |i: usize| {
        cs.concepts[i]
            .properties
            .iter()
            .filter(move |(k, _)| &**k == property)
            .map(|(_, v)| &**v)
    };
    let any_value = |pred: &dyn Fn(&str) -> bool| (0..n).map(|i| values(i).any(pred)).collect();
    Ok(match op {
        "=" => any_value(&|v| v == value),
        "in" => any_value(&|v| in_list(value, v)),
        "not-in" => (0..n)
            .map(|i| !values(i).any(|v| in_list(value, v)))
            .collect(),
        "regex" => {
            let re = anchored(value).ok_or_else(unsupported)?;
            any_value(&|v| re.is_match(v))
        }
        "exists" => {
            let want = value == "true";
            (0..n).map(|i| values(i).next().is_some() == want).collect()
        }
        _ => return Err(unsupported()),
    })
}

/// Whether `item` is one of the comma-separated `list`.
fn in_list(list: &str, item: &str) -> bool {
    list.split(',').any(|x| x.trim() == item)
}

/// A regex that must match the whole text.
fn anchored(pattern: &str) -> Option<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).ok()
}

/// Why a system's codes cannot be enumerated, for people.
fn not_enumerable_reason(system: &str, cs: Option<&CodeSystemIndex>) -> String {
    let name = system_name(system);
    if system == UCUM {
        return format!("{name} is a grammar of units that the gateway cannot enumerate");
    }
    match cs {
        Some(cs) if !cs.complete && &*cs.content != "not-present" => {
            format!("the gateway holds only a {} of {name}", cs.content)
        }
        _ => format!("{name} is not held by the gateway"),
    }
}

/// A readable name for well-known external code systems, else "code system URL".
fn system_name(system: &str) -> String {
    let known = match system {
        "http://snomed.info/sct" => "SNOMED CT",
        "http://loinc.org" => "LOINC",
        UCUM => "UCUM",
        "http://hl7.org/fhir/sid/icd-10" => "ICD-10",
        "http://hl7.org/fhir/sid/icd-10-cm" => "ICD-10-CM",
        "http://fhir.de/CodeSystem/bfarm/icd-10-gm" => "ICD-10-GM",
        "http://www.nlm.nih.gov/research/umls/rxnorm" => "RxNorm",
        "urn:ietf:bcp:47" => "BCP 47 language tags",
        "urn:ietf:bcp:13" => "MIME types (BCP 13)",
        "urn:iso:std:iso:3166" => "ISO 3166 country codes",
        "urn:iso:std:iso:4217" => "ISO 4217 currency codes",
        _ => return format!("code system {system}"),
    };
    known.to_string()
}

/// Display equality ignoring case and runs of white space, without allocating.
fn same_display(a: &str, b: &str) -> bool {
    fn norm(s: &str) -> impl Iterator<Item = char> + '_ {
        s.split_whitespace()
            .enumerate()
            .flat_map(|(i, w)| (i > 0).then_some(' ').into_iter().chain(w.chars()))
            .flat_map(char::to_lowercase)
    }
    a == b || norm(a).eq(norm(b))
}

/// The URL without a `|version` suffix.
fn bare_url(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

/// The elements of an array property (none when absent or not an array).
fn array<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn check_size(url: &str, n: usize) -> Result<(), TerminologyError> {
    if n > MAX_EXPANSION {
        return Err(TerminologyError::TooLarge {
            url: url.to_string(),
            limit: MAX_EXPANSION,
        });
    }
    Ok(())
}

/// A read guard that survives poisoning (the caches hold only complete entries).
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// A write guard that survives poisoning.
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GENDER: &str = "http://hl7.org/fhir/ValueSet/administrative-gender";
    const GENDER_CS: &str = "http://hl7.org/fhir/administrative-gender";
    const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
    const SCT: &str = "http://snomed.info/sct";
    const LOCAL: &str = "http://example.org/fhir/CodeSystem/lesion";

    fn core() -> Terminology {
        Terminology::new(Arc::new(Registry::core()))
    }

    fn member(t: &Terminology, vs: &str, system: Option<&str>, code: &str) -> Membership {
        match t.validate_code(vs, system, code, None) {
            Ok(m) => m,
            Err(e) => panic!("{vs}: {e}"),
        }
    }

    fn is_not_member(m: &Membership) -> bool {
        matches!(m, Membership::NotMember { .. })
    }

    fn is_unverifiable(m: &Membership) -> bool {
        matches!(m, Membership::Unverifiable { .. })
    }

    fn reason(m: &Membership) -> &str {
        match m {
            Membership::Member => "",
            Membership::NotMember { reason } | Membership::Unverifiable { reason } => reason,
        }
    }

    fn vs(id: &str, compose: Value) -> Value {
        json!({"resourceType": "ValueSet", "url": format!("http://example.org/fhir/ValueSet/{id}"),
               "status": "active", "compose": compose})
    }

    fn url(id: &str) -> String {
        format!("http://example.org/fhir/ValueSet/{id}")
    }

    /// lesion (notSelectable) > tumour > {primary, metastasis > liver-met}; lesion > cyst;
    /// other (grade = high); plus `satellite`, a second parent of liver-met by property.
    fn local_registry() -> Registry {
        let mut r = Registry::core();
        let cs = json!({
            "resourceType": "CodeSystem", "url": LOCAL, "status": "active",
            "content": "complete", "caseSensitive": true, "hierarchyMeaning": "is-a",
            "property": [{"code": "grade", "type": "code"}, {"code": "notSelectable", "type": "boolean"}],
            "concept": [
                {"code": "lesion", "display": "Lesion",
                 "property": [{"code": "notSelectable", "valueBoolean": true}],
                 "concept": [
                    {"code": "tumour", "display": "Tumour", "concept": [
                        {"code": "primary", "display": "Primary tumour"},
                        {"code": "metastasis", "display": "Metastasis",
                         "concept": [{"code": "liver-met", "display": "Liver metastasis"}]}]},
                    {"code": "cyst", "display": "Cyst"}]},
                {"code": "other", "display": "Other",
                 "property": [{"code": "grade", "valueCode": "high"}]},
                {"code": "satellite", "display": "Satellite",
                 "property": [{"code": "child", "valueCode": "liver-met"}]}
            ]
        });
        let add = |r: &mut Registry, v: Value| {
            r.add(v)
                .map_err(|e| e.to_string())
                .expect("fixture is a valid resource");
        };
        add(&mut r, cs);
        let filter = |op: &str, property: &str, value: &str| {
            json!({"include": [{"system": LOCAL,
                                "filter": [{"property": property, "op": op, "value": value}]}]})
        };
        add(
            &mut r,
            vs(
                "explicit",
                json!({"include": [{"system": LOCAL,
            "concept": [{"code": "primary"}, {"code": "cyst", "display": "Simple cyst"}]}]}),
            ),
        );
        add(&mut r, vs("is-a", filter("is-a", "concept", "tumour")));
        add(
            &mut r,
            vs(
                "descendent-of",
                filter("descendent-of", "concept", "tumour"),
            ),
        );
        add(
            &mut r,
            vs(
                "descendant-of",
                filter("descendant-of", "concept", "tumour"),
            ),
        );
        add(
            &mut r,
            vs("is-not-a", filter("is-not-a", "concept", "tumour")),
        );
        add(
            &mut r,
            vs("generalizes", filter("generalizes", "concept", "liver-met")),
        );
        add(&mut r, vs("grade-high", filter("=", "grade", "high")));
        add(&mut r, vs("has-grade", filter("exists", "grade", "true")));
        add(&mut r, vs("in", filter("in", "concept", "cyst, other")));
        add(&mut r, vs("regex", filter("regex", "concept", ".*-met")));
        add(&mut r, vs("unknown-property", filter("=", "stage", "II")));
        add(&mut r, vs("whole", json!({"include": [{"system": LOCAL}]})));
        add(
            &mut r,
            vs(
                "exclude",
                json!({
            "include": [{"system": LOCAL, "filter": [{"property": "concept", "op": "is-a", "value": "lesion"}]}],
            "exclude": [{"system": LOCAL, "filter": [{"property": "concept", "op": "is-a", "value": "metastasis"}]}]}),
            ),
        );
        add(
            &mut r,
            vs(
                "intersection",
                json!({"include": [{"valueSet": [url("is-a"), url("descendent-of")]}]}),
            ),
        );
        add(
            &mut r,
            vs(
                "union",
                json!({"include": [{"valueSet": [url("explicit")]}, {"valueSet": [url("grade-high")]}]}),
            ),
        );
        add(
            &mut r,
            vs(
                "cycle-a",
                json!({"include": [{"valueSet": [url("cycle-b")]}]}),
            ),
        );
        add(
            &mut r,
            vs(
                "cycle-b",
                json!({"include": [{"valueSet": [url("cycle-a")]}]}),
            ),
        );
        add(
            &mut r,
            vs(
                "self",
                json!({"include": [{"system": LOCAL}, {"valueSet": [url("self")]}]}),
            ),
        );
        add(
            &mut r,
            vs(
                "mixed",
                json!({"include": [
            {"system": LOCAL, "concept": [{"code": "primary"}]},
            {"system": SCT, "concept": [{"code": "363346000", "display": "Malignant neoplastic disease"}]},
            {"system": "http://loinc.org"}]}),
            ),
        );
        add(
            &mut r,
            vs(
                "exclude-unknown",
                json!({
            "include": [{"system": LOCAL}],
            "exclude": [{"valueSet": ["http://example.org/fhir/ValueSet/not-held"]}]}),
            ),
        );
        add(
            &mut r,
            vs(
                "two-systems",
                json!({"include": [
            {"system": "http://example.org/a", "concept": [{"code": "x", "display": "Ex A"}, {"code": "y"}]},
            {"system": "http://example.org/b", "concept": [{"code": "x", "display": "Ex B"}]}]}),
            ),
        );
        add(
            &mut r,
            json!({"resourceType": "ValueSet", "url": url("expansion-only"), "status": "active",
            "expansion": {"total": 3, "contains": [
                {"system": LOCAL, "code": "primary"},
                {"system": LOCAL, "code": "tumour", "abstract": true,
                 "contains": [{"system": LOCAL, "code": "cyst"}]}]}}),
        );
        add(
            &mut r,
            json!({"resourceType": "ValueSet", "url": url("partial-expansion"), "status": "active",
            "expansion": {"total": 50, "contains": [{"system": LOCAL, "code": "primary"}]}}),
        );
        r
    }

    fn local() -> Terminology {
        Terminology::from_registry(&local_registry())
    }

    fn codes(t: &Terminology, id: &str) -> Vec<String> {
        let exp = t.expand(&url(id)).unwrap_or_else(|e| panic!("{id}: {e}"));
        let mut v: Vec<String> = exp
            .iter()
            .map(|(_, c, e)| {
                if e.is_selectable() {
                    c.to_string()
                } else {
                    format!("({c})")
                }
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn administrative_gender() {
        let t = core();
        for code in ["male", "female", "other", "unknown"] {
            assert_eq!(
                member(&t, GENDER, Some(GENDER_CS), code),
                Membership::Member,
                "{code}"
            );
        }
        let foo = member(&t, GENDER, Some(GENDER_CS), "foo");
        assert!(is_not_member(&foo), "{foo:?}");
        assert_eq!(
            reason(&foo),
            format!("unknown code 'foo' in system {GENDER_CS}")
        );
        assert!(is_not_member(&member(
            &t,
            GENDER,
            Some("http://example.org/x"),
            "male"
        )));
        // `code`-typed elements: no system.
        assert_eq!(member(&t, GENDER, None, "female"), Membership::Member);
        assert!(is_not_member(&member(&t, GENDER, None, "foo")));
        let exp = t.expand(&format!("{GENDER}|4.0.1")).expect("versioned URL");
        assert!(exp.is_complete());
        assert_eq!(exp.len(), 4);
        assert_eq!(
            exp.get(GENDER_CS, "male").and_then(|e| e.display()),
            Some("Male")
        );
    }

    #[test]
    fn displays() {
        let t = core();
        assert_eq!(
            t.display_mismatch(GENDER, Some(GENDER_CS), "male", "Male"),
            None
        );
        assert_eq!(
            t.display_mismatch(GENDER, Some(GENDER_CS), "male", " MALE "),
            None
        );
        let bad = t.display_mismatch(GENDER, Some(GENDER_CS), "male", "Man");
        assert!(
            bad.as_deref().is_some_and(|m| m.contains("'Male'")),
            "{bad:?}"
        );
        assert!(t.display_mismatch(GENDER, None, "male", "Man").is_some());
        assert_eq!(t.check_display(GENDER_CS, "female", "female"), None);
        assert!(t.check_display(GENDER_CS, "female", "Woman").is_some());
        assert_eq!(
            t.check_display(SCT, "22298006", "Myocardial infarction"),
            None
        );
        assert_eq!(t.display_of(GENDER_CS, "other").as_deref(), Some("Other"));
        // The ValueSet's own display counts too.
        let l = local();
        assert_eq!(
            l.display_mismatch(&url("explicit"), Some(LOCAL), "cyst", "Simple cyst"),
            None
        );
        assert_eq!(
            l.display_mismatch(&url("explicit"), Some(LOCAL), "cyst", "cyst"),
            None
        );
        assert!(l
            .display_mismatch(&url("explicit"), Some(LOCAL), "cyst", "Tumour")
            .is_some());
    }

    #[test]
    fn observation_status() {
        let t = core();
        let vs = "http://hl7.org/fhir/ValueSet/observation-status";
        let sys = "http://hl7.org/fhir/observation-status";
        assert_eq!(member(&t, vs, Some(sys), "final"), Membership::Member);
        assert_eq!(member(&t, vs, None, "amended"), Membership::Member);
        assert!(is_not_member(&member(&t, vs, Some(sys), "done")));
        assert_eq!(t.expand(vs).map(|e| e.len()), Ok(8));
    }

    #[test]
    fn is_a_filter_over_held_v3_hierarchy_with_exclude() {
        let t = core();
        let vs = "http://terminology.hl7.org/ValueSet/v3-ActEncounterCode";
        for code in ["AMB", "EMER", "IMP", "ACUTE", "NONAC", "VR"] {
            assert_eq!(
                member(&t, vs, Some(ACT_CODE), code),
                Membership::Member,
                "{code}"
            );
        }
        // The root is excluded explicitly; a code elsewhere in ActCode is not in the set.
        let root = member(&t, vs, Some(ACT_CODE), "_ActEncounterCode");
        assert!(is_not_member(&root), "{root:?}");
        assert!(is_not_member(&member(&t, vs, Some(ACT_CODE), "CASH")));
        assert!(reason(&member(&t, vs, Some(ACT_CODE), "NOPE")).starts_with("unknown code"));
        let exp = t.expand(vs).expect("expands");
        assert!(exp.is_complete());
        assert_eq!(exp.len(), 11, "the published expansion has 11 codes");
    }

    /// For every packed ValueSet the gateway can compute completely, each code of the
    /// specification's published expansion is a member of ours.
    #[test]
    fn computed_expansions_cover_the_published_ones() {
        let t = core();
        let mut checked = 0;
        for url in crate::definitions::urls(Kind::ValueSet) {
            let Some(vs) = t.registry().get(Kind::ValueSet, url) else {
                continue;
            };
            let exp = t.expand(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            if !exp.is_complete() {
                continue;
            }
            let mut published = Vec::new();
            if let Some(p) = vs.get("expansion") {
                flatten_contains(p, &mut published);
            }
            for (system, code, _, _) in published {
                assert!(
                    exp.get(system, code).is_some(),
                    "{url}: {system}#{code} missing"
                );
            }
            checked += 1;
        }
        assert!(checked > 300, "{checked}");
    }

    #[test]
    fn snomed_is_open_but_the_published_expansion_counts() {
        let t = core();
        let vs = "http://hl7.org/fhir/ValueSet/condition-code";
        // Listed explicitly in the compose, and in the published expansion.
        assert_eq!(member(&t, vs, Some(SCT), "160245001"), Membership::Member);
        assert_eq!(member(&t, vs, Some(SCT), "109006"), Membership::Member);
        let unlisted = member(&t, vs, Some(SCT), "999999999");
        assert!(is_unverifiable(&unlisted), "{unlisted:?}");
        assert_eq!(
            reason(&unlisted),
            "SNOMED CT is not held by the gateway; code '999999999' cannot be verified"
        );
        let exp = t.expand(vs).expect("expands");
        assert!(!exp.is_complete());
        assert_eq!(exp.open_systems().len(), 1);
        assert_eq!(exp.open_systems()[0].system, SCT);
        assert_eq!(t.code_system_has(SCT, "109006"), None);
        // body-site: a filter on SNOMED CT, with a truncated published expansion.
        let body = "http://hl7.org/fhir/ValueSet/body-site";
        assert_eq!(member(&t, body, Some(SCT), "106004"), Membership::Member);
        assert!(is_unverifiable(&member(&t, body, Some(SCT), "1234567")));
    }

    #[test]
    fn loinc_explicit_lists_are_enumerable() {
        let t = core();
        let vs = "http://hl7.org/fhir/ValueSet/observation-vitalsignresult";
        let loinc = "http://loinc.org";
        assert_eq!(member(&t, vs, Some(loinc), "8867-4"), Membership::Member);
        let other = member(&t, vs, Some(loinc), "2345-7");
        assert!(is_not_member(&other), "{other:?}");
        assert_eq!(t.code_system_has(loinc, "8867-4"), None);
        // consent-category: a held system, a v3 ValueSet and an explicit LOINC list.
        let cc = "http://hl7.org/fhir/ValueSet/consent-category";
        assert_eq!(member(&t, cc, Some(loinc), "59284-0"), Membership::Member);
        assert!(is_not_member(&member(&t, cc, Some(loinc), "2345-7")));
        assert!(t.expand(cc).is_ok_and(|e| e.is_complete()));
    }

    #[test]
    fn ucum() {
        let t = core();
        let vs = "http://hl7.org/fhir/ValueSet/ucum-units";
        assert_eq!(member(&t, vs, Some(UCUM), "kg"), Membership::Member);
        let exp = t.expand(vs).expect("expands");
        assert!(exp.get(UCUM, "ug/[gal_us]").is_none());
        let odd = member(&t, vs, Some(UCUM), "ug/[gal_us]");
        assert!(is_unverifiable(&odd), "{odd:?}");
        assert!(reason(&odd).starts_with("UCUM is a grammar"), "{odd:?}");
        assert_eq!(t.code_system_has(UCUM, "kg"), None);
        // A ValueSet that lists its UCUM codes is closed.
        let age = "http://hl7.org/fhir/ValueSet/age-units";
        assert_eq!(member(&t, age, Some(UCUM), "a"), Membership::Member);
        assert!(is_not_member(&member(&t, age, Some(UCUM), "s")));
    }

    #[test]
    fn valueset_includes() {
        let t = core();
        let vs = "http://hl7.org/fhir/ValueSet/security-labels";
        let conf = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
        assert_eq!(member(&t, vs, Some(conf), "R"), Membership::Member);
        assert_eq!(member(&t, vs, Some(ACT_CODE), "PSY"), Membership::Member);
        assert!(is_not_member(&member(
            &t,
            vs,
            Some(conf),
            "_Confidentiality"
        )));
        // use-context includes usps-state, which the pack does not hold: indeterminate, but
        // what is listed is still a member, and unknown codes of held systems are rejected.
        let uc = "http://hl7.org/fhir/ValueSet/use-context";
        assert_eq!(member(&t, uc, Some(GENDER_CS), "male"), Membership::Member);
        assert!(is_not_member(&member(&t, uc, Some(GENDER_CS), "foo")));
        let exp = t.expand(uc).expect("expands");
        assert!(!exp.is_complete());
        let odd = member(&t, uc, Some(ACT_CODE), "CASH");
        assert!(is_unverifiable(&odd), "{odd:?}");
        assert!(reason(&odd).contains("usps-state"), "{odd:?}");
    }

    #[test]
    fn unknown_valueset() {
        let t = core();
        let missing = "http://example.org/fhir/ValueSet/missing";
        assert_eq!(
            t.validate_code(missing, None, "x", None),
            Err(TerminologyError::UnknownValueSet(missing.into()))
        );
    }

    #[test]
    fn local_filters() {
        let t = local();
        assert_eq!(codes(&t, "explicit"), ["cyst", "primary"]);
        assert_eq!(
            codes(&t, "is-a"),
            ["liver-met", "metastasis", "primary", "tumour"]
        );
        assert_eq!(
            codes(&t, "descendent-of"),
            ["liver-met", "metastasis", "primary"]
        );
        assert_eq!(
            codes(&t, "descendant-of"),
            ["liver-met", "metastasis", "primary"]
        );
        assert_eq!(
            codes(&t, "is-not-a"),
            ["(lesion)", "cyst", "other", "satellite"]
        );
        assert_eq!(
            codes(&t, "generalizes"),
            ["(lesion)", "liver-met", "metastasis", "satellite", "tumour"]
        );
        assert_eq!(codes(&t, "grade-high"), ["other"]);
        assert_eq!(codes(&t, "has-grade"), ["other"]);
        assert_eq!(codes(&t, "in"), ["cyst", "other"]);
        assert_eq!(codes(&t, "regex"), ["liver-met"]);
        assert_eq!(codes(&t, "whole").len(), 8);
        assert_eq!(
            codes(&t, "exclude"),
            ["(lesion)", "cyst", "primary", "tumour"]
        );
        assert_eq!(
            codes(&t, "intersection"),
            ["liver-met", "metastasis", "primary"]
        );
        assert_eq!(codes(&t, "union"), ["cyst", "other", "primary"]);
        // Abstract codes are in the expansion but are not valid values.
        let abs = member(&t, &url("whole"), Some(LOCAL), "lesion");
        assert!(reason(&abs).contains("abstract"), "{abs:?}");
        assert!(is_not_member(&member(
            &t,
            &url("exclude"),
            Some(LOCAL),
            "liver-met"
        )));
        assert!(is_not_member(&member(
            &t,
            &url("is-a"),
            Some(LOCAL),
            "cyst"
        )));
    }

    #[test]
    fn filters_the_held_copy_cannot_evaluate_leave_the_system_open() {
        let t = local();
        let m = member(&t, &url("unknown-property"), Some(LOCAL), "cyst");
        assert!(is_unverifiable(&m), "{m:?}");
        assert!(reason(&m).contains("'stage = II'"), "{m:?}");
        // Still, a code the CodeSystem does not define is rejected.
        assert!(is_not_member(&member(
            &t,
            &url("unknown-property"),
            Some(LOCAL),
            "nope"
        )));
    }

    #[test]
    fn cycles_are_errors() {
        let t = local();
        assert!(matches!(
            t.expand(&url("cycle-a")),
            Err(TerminologyError::Cycle { .. })
        ));
        match t.expand(&url("self")) {
            Err(TerminologyError::Cycle { url: u, chain }) => {
                assert_eq!(u, url("self"));
                assert_eq!(chain, format!("{0} -> {0}", url("self")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mixed_and_open_systems() {
        let t = local();
        let vs = url("mixed");
        assert_eq!(member(&t, &vs, Some(LOCAL), "primary"), Membership::Member);
        assert!(is_not_member(&member(&t, &vs, Some(LOCAL), "cyst")));
        assert_eq!(member(&t, &vs, Some(SCT), "363346000"), Membership::Member);
        // SNOMED CT is only listed: other codes are not members.
        assert!(is_not_member(&member(&t, &vs, Some(SCT), "22298006")));
        let loinc = member(&t, &vs, Some("http://loinc.org"), "8867-4");
        assert_eq!(
            reason(&loinc),
            "LOINC is not held by the gateway; code '8867-4' cannot be verified"
        );
        // Without a system, an unlisted code might be LOINC.
        assert!(is_unverifiable(&member(&t, &vs, None, "8867-4")));
        // An exclude the gateway cannot evaluate makes the included codes uncertain.
        let m = member(&t, &url("exclude-unknown"), Some(LOCAL), "cyst");
        assert!(is_unverifiable(&m), "{m:?}");
        assert!(is_not_member(&member(
            &t,
            &url("exclude-unknown"),
            Some(LOCAL),
            "nope"
        )));
    }

    #[test]
    fn code_only_lookups() {
        let t = local();
        assert_eq!(
            member(&t, &url("is-a"), None, "primary"),
            Membership::Member
        );
        assert!(is_not_member(&member(&t, &url("is-a"), None, "cyst")));
        let two = url("two-systems");
        assert_eq!(member(&t, &two, None, "y"), Membership::Member);
        let amb = member(&t, &two, None, "x");
        assert!(
            is_unverifiable(&amb) && reason(&amb).contains("ambiguous"),
            "{amb:?}"
        );
        assert_eq!(
            t.validate_code(&two, None, "x", Some("Ex B")),
            Ok(Membership::Member)
        );
    }

    #[test]
    fn expansion_only_valuesets() {
        let t = local();
        let vs = url("expansion-only");
        assert_eq!(codes(&t, "expansion-only"), ["(tumour)", "cyst", "primary"]);
        assert!(t.expand(&vs).is_ok_and(|e| e.is_complete()));
        assert!(is_not_member(&member(&t, &vs, Some(LOCAL), "tumour")));
        let partial = url("partial-expansion");
        assert_eq!(
            member(&t, &partial, Some(LOCAL), "primary"),
            Membership::Member
        );
        assert!(is_unverifiable(&member(&t, &partial, Some(LOCAL), "cyst")));
    }

    #[test]
    fn code_system_has() {
        let t = local();
        assert_eq!(t.code_system_has(LOCAL, "liver-met"), Some(true));
        assert_eq!(t.code_system_has(LOCAL, "Liver-Met"), Some(false));
        assert_eq!(t.code_system_has(LOCAL, "nope"), Some(false));
        assert_eq!(t.code_system_has(ACT_CODE, "AMB"), Some(true));
        assert_eq!(t.code_system_has("http://example.org/unknown", "x"), None);
    }

    #[test]
    fn too_large() {
        let mut r = Registry::core();
        let big = "http://example.org/fhir/CodeSystem/big";
        let concepts: Vec<Value> = (0..=MAX_EXPANSION)
            .map(|i| json!({"code": i.to_string()}))
            .collect();
        r.add(json!({"resourceType": "CodeSystem", "url": big, "content": "complete", "concept": concepts}))
            .map_err(|e| e.to_string())
            .expect("adds");
        r.add(vs("big", json!({"include": [{"system": big}]})))
            .map_err(|e| e.to_string())
            .expect("adds");
        let t = Terminology::from_registry(&r);
        assert_eq!(
            t.expand(&url("big")).map(|e| e.len()),
            Err(TerminologyError::TooLarge {
                url: url("big"),
                limit: MAX_EXPANSION
            })
        );
        assert_eq!(t.code_system_has(big, "100000"), Some(true));
    }

    #[test]
    fn shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Terminology>();
        let t = Arc::new(core());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || member(&t, GENDER, Some(GENDER_CS), "male"))
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().ok(), Some(Membership::Member));
        }
        // Cached: the same expansion comes back.
        let (a, b) = (t.expand(GENDER), t.expand(GENDER));
        assert!(matches!((a, b), (Ok(a), Ok(b)) if Arc::ptr_eq(&a, &b)));
    }
}
