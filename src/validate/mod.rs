//! Validation of resources against the base specification and the study profiles: the
//! `validate` stage of the pipeline (ingest ──> map ──> **validate** ──> pseudonymize ──>
//! store ──> serve). It reads conformance resources from a
//! [`Registry`](crate::definitions::Registry) and reports problems; it never changes data.
//!
//! An invalid resource is data, not an error: [`Validator::validate`] returns the list of
//! [`Issue`]s (empty when the resource conforms). Profiles that cannot be resolved are
//! reported as errors, never passed silently.
//!
//! - [`issue`]: what validation reports, and its rendering as an OperationOutcome.
//! - [`snapshot`]: snapshot generation for profiles that carry only a differential.
//! - [`profile`]: a snapshot compiled into a tree for checking.
//! - `check` and `slicing`: the walk of an instance against a profile.
//! - [`pattern`]: `fixed[x]` and `pattern[x]` comparison.
//! - [`primitive`]: lexical rules of primitive types.
//! - [`terminology`]: ValueSet expansion and code membership for bindings and Codings.

pub mod bench;
mod check;
pub mod cli;
pub mod issue;
pub mod pattern;
pub mod primitive;
pub mod profile;
mod questionnaire;
mod slicing;
pub mod snapshot;
pub mod terminology;
pub mod xhtml;

pub use issue::{has_errors, operation_outcome, Issue, IssueType, Severity};

use crate::definitions::{core_url, Registry};
use crate::fhirpath::Expression;
use crate::model::schema::FastHash;
use crate::model::{self, Element, ParseOptions};
use check::Walk;
use profile::Profile;
use snapshot::{SnapshotError, Snapshots};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};
use terminology::Terminology;

/// Validator settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Severity of an extension whose definition the registry does not hold.
    pub unknown_extension: Severity,
    /// Accept comments in the JSON given to [`Validator::validate_json`].
    pub allow_comments: bool,
    /// Report what looks like an HTML tag inside a `markdown` value as an error (it would
    /// be escaped, or worse, rendered, by whoever displays it).
    pub no_html_in_markdown: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            unknown_extension: Severity::Warning,
            allow_comments: false,
            no_html_in_markdown: false,
        }
    }
}

/// Validates resources against the definitions of one [`Registry`]. Build one and share it:
/// snapshots, compiled profiles, expansions and compiled invariants are cached inside.
pub struct Validator {
    registry: Arc<Registry>,
    terminology: Terminology,
    snapshots: Snapshots,
    profiles: RwLock<HashMap<String, Arc<Profile>, FastHash>>,
    /// Core definitions by type name (the walk asks for them at every complex value).
    core: RwLock<HashMap<String, Option<Arc<Profile>>, FastHash>>,
    expressions: RwLock<HashMap<String, Arc<Expression>, FastHash>>,
    /// The type each profile URL constrains (`None`: not in the registry), as looked up.
    profile_types: RwLock<HashMap<String, Option<String>, FastHash>>,
    /// The profile checked for a resource type when a resource claims none.
    defaults: HashMap<String, String>,
    /// Profiles every resource of a type must meet (ImplementationGuide `global`).
    globals: HashMap<String, Vec<String>>,
    /// Settings.
    pub options: Options,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("defaults", &self.defaults)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Validator {
    /// A validator over `registry`, with default options.
    pub fn new(registry: Registry) -> Validator {
        let registry = Arc::new(registry);
        let mut globals: HashMap<String, Vec<String>> = HashMap::new();
        for ig in registry.loaded(crate::definitions::Kind::ImplementationGuide) {
            for g in ig
                .get("global")
                .and_then(|g| g.as_array())
                .into_iter()
                .flatten()
            {
                if let (Some(t), Some(p)) = (
                    g.get("type").and_then(|v| v.as_str()),
                    g.get("profile").and_then(|v| v.as_str()),
                ) {
                    globals
                        .entry(t.to_string())
                        .or_default()
                        .push(p.to_string());
                }
            }
        }
        Validator {
            globals,
            terminology: Terminology::new(registry.clone()),
            registry,
            snapshots: Snapshots::default(),
            profiles: RwLock::new(HashMap::with_hasher(FastHash)),
            core: RwLock::new(HashMap::with_hasher(FastHash)),
            expressions: RwLock::new(HashMap::with_hasher(FastHash)),
            profile_types: RwLock::new(HashMap::with_hasher(FastHash)),
            defaults: HashMap::new(),
            options: Options::default(),
        }
    }

    /// Sets the profile checked for resources of `resource_type` that claim no profile.
    pub fn set_default_profile(&mut self, resource_type: &str, url: &str) {
        self.defaults
            .insert(resource_type.to_string(), url.to_string());
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The terminology service.
    pub fn terminology(&self) -> &Terminology {
        &self.terminology
    }

    /// The compiled profile for a StructureDefinition URL.
    ///
    /// # Errors
    /// When the profile, its base or a type it needs is unknown, or its snapshot cannot be
    /// generated.
    pub fn profile(&self, url: &str) -> Result<Arc<Profile>, SnapshotError> {
        let url = url.split('|').next().unwrap_or(url);
        if let Ok(cache) = self.profiles.read() {
            if let Some(p) = cache.get(url) {
                return Ok(p.clone());
            }
        }
        let elements = self.snapshots.get(&self.registry, url)?;
        let sd = self
            .registry
            .get(crate::definitions::Kind::StructureDefinition, url)
            .ok_or_else(|| SnapshotError::UnknownProfile(url.to_string()))?;
        let compiled = Arc::new(Profile::compile(&sd, &elements));
        if let Ok(mut cache) = self.profiles.write() {
            cache.insert(url.to_string(), compiled.clone());
        }
        Ok(compiled)
    }

    /// The compiled profile for a URL (without `|version`) if it was compiled already; no
    /// look-up otherwise.
    pub(crate) fn cached_profile(&self, url: &str) -> Option<Arc<Profile>> {
        self.profiles.read().ok()?.get(url).cloned()
    }

    /// The type a profile constrains (`Observation` for the vital-signs profile); `None`
    /// when the registry does not hold it.
    pub fn profile_type(&self, url: &str) -> Option<String> {
        self.with_profile_type(url, |t| t.map(str::to_string))
    }

    /// Calls `f` with the type a profile constrains (see [`Validator::profile_type`])
    /// without copying it out of the cache.
    pub(crate) fn with_profile_type<R>(&self, url: &str, f: impl FnOnce(Option<&str>) -> R) -> R {
        if let Ok(cache) = self.profile_types.read() {
            if let Some(t) = cache.get(url) {
                return f(t.as_deref());
            }
        }
        let t = self.lookup_profile_type(url);
        f(t.as_deref())
    }

    /// Looks up and caches the type a profile constrains.
    fn lookup_profile_type(&self, url: &str) -> Option<String> {
        let t = self
            .registry
            .get(crate::definitions::Kind::StructureDefinition, url)
            .and_then(|sd| sd.get("type").and_then(|t| t.as_str()).map(str::to_string));
        if let Ok(mut cache) = self.profile_types.write() {
            cache.insert(url.to_string(), t.clone());
        }
        t
    }

    /// The compiled core definition of a type (`Patient`, `HumanName`).
    pub fn core_profile(&self, type_name: &str) -> Option<Arc<Profile>> {
        if let Ok(cache) = self.core.read() {
            if let Some(p) = cache.get(type_name) {
                return p.clone();
            }
        }
        let p = self.profile(&core_url(type_name)).ok();
        if let Ok(mut cache) = self.core.write() {
            cache.insert(type_name.to_string(), p.clone());
        }
        p
    }

    /// A compiled FHIRPath expression, cached by its text.
    ///
    /// # Errors
    /// When the expression does not compile.
    pub fn expression(&self, src: &str) -> Result<Arc<Expression>, crate::fhirpath::Error> {
        if let Ok(cache) = self.expressions.read() {
            if let Some(e) = cache.get(src) {
                return Ok(e.clone());
            }
        }
        let e = Arc::new(Expression::compile(src)?);
        if let Ok(mut cache) = self.expressions.write() {
            cache.insert(src.to_string(), e.clone());
        }
        Ok(e)
    }

    /// Validates a parsed resource against its core definition, the profiles it claims in
    /// `meta.profile`, the default profile for its type, and `profiles`. `source` is the
    /// JSON it was parsed from, for `line:column` in the issues.
    pub fn validate(
        &self,
        resource: &Element,
        source: Option<&str>,
        profiles: &[String],
    ) -> Vec<Issue> {
        self.validate_least(resource, source, profiles, Severity::Information)
    }

    /// [`Validator::validate`], keeping only the issues at least as serious as `least`.
    fn validate_least(
        &self,
        resource: &Element,
        source: Option<&str>,
        profiles: &[String],
        least: Severity,
    ) -> Vec<Issue> {
        let mut walk = Walk::new(self, source);
        walk.least = least;
        walk.location.push_str(resource.type_name());
        self.resource_with(&mut walk, resource, profiles);
        dedup(walk.issues)
    }

    /// Parses and validates JSON text: the parse problems (with `line:column`) followed by
    /// the validation issues of what could be read.
    pub fn validate_json(&self, text: &str, profiles: &[String]) -> Vec<Issue> {
        self.validate_json_least(text, profiles, Severity::Information)
    }

    /// What [`Validator::validate_json`] reports that is at least as serious as `least`
    /// (`Severity::Error`: the errors and fatal issues), in the same order: checks that
    /// can only report less serious issues are skipped.
    pub fn validate_json_least(
        &self,
        text: &str,
        profiles: &[String],
        least: Severity,
    ) -> Vec<Issue> {
        let parsed = model::parse_with(text, &self.parse_options());
        self.parsed_least(&parsed, text, profiles, least)
    }

    /// The parse settings [`Validator::validate_json`] reads text with.
    pub fn parse_options(&self) -> ParseOptions<'static> {
        ParseOptions {
            allow_comments: self.options.allow_comments,
            ..ParseOptions::default()
        }
    }

    /// What [`Validator::validate_json`] reports for `text`, given what
    /// [`model::parse_with`] made of it with [`Validator::parse_options`]: for callers that
    /// parsed the text already and keep the tree, so it is not parsed a second time.
    pub fn validate_parsed(
        &self,
        parsed: &model::Parsed,
        text: &str,
        profiles: &[String],
    ) -> Vec<Issue> {
        self.parsed_least(parsed, text, profiles, Severity::Information)
    }

    /// [`Validator::validate_parsed`], keeping only the issues at least as serious as
    /// `least` (parse issues are errors or fatal, always kept).
    fn parsed_least(
        &self,
        parsed: &model::Parsed,
        text: &str,
        profiles: &[String],
        least: Severity,
    ) -> Vec<Issue> {
        let mut issues: Vec<Issue> = parsed
            .issues
            .iter()
            .map(|p| Issue {
                severity: match p.kind {
                    model::parse::IssueKind::Syntax => Severity::Fatal,
                    model::parse::IssueKind::Structure => Severity::Error,
                },
                kind: match p.kind {
                    model::parse::IssueKind::Syntax => IssueType::Invalid,
                    model::parse::IssueKind::Structure => IssueType::Structure,
                },
                message: p.message.clone(),
                location: p.location.clone(),
                line: Some(p.line),
                column: Some(p.column),
                rule: None,
            })
            .collect();
        if let Some(r) = &parsed.resource {
            // Where parsing already refused a value, the walk would only report its absence
            // again ("minimum required"): the parse issue says it better.
            let found = self.validate_least(r, Some(text), profiles, least);
            if parsed.issues.is_empty() {
                issues.extend(found);
            } else {
                let refused: std::collections::HashSet<&str> =
                    parsed.issues.iter().map(|p| p.location.as_str()).collect();
                issues.extend(found.into_iter().filter(|i| {
                    !(i.kind == IssueType::Required && refused.contains(i.location.as_str()))
                }));
            }
        }
        issues
    }

    /// A SearchParameter derived from another must keep its type.
    fn search_parameter(&self, walk: &mut Walk<'_, '_>, sp: &Element) {
        let (Some(from), Some(ty)) = (sp.str("derivedFrom"), sp.str("type")) else {
            return;
        };
        let base = self
            .registry
            .get(crate::definitions::Kind::SearchParameter, from);
        let Some(base_type) = base
            .as_ref()
            .and_then(|b| b.get("type"))
            .and_then(|t| t.as_str())
        else {
            return;
        };
        if base_type != ty {
            walk.report(
                Severity::Error,
                IssueType::BusinessRule,
                sp.pos,
                format!("the type {ty} differs from the type {base_type} of the SearchParameter it derives from ({from})"),
                None,
            );
        }
    }

    /// Checks a resource met during a walk (top level, contained, or a Bundle entry).
    pub(crate) fn check_resource<'a>(
        &self,
        walk: &mut Walk<'_, 'a>,
        e: &'a Element,
        type_profiles: Option<&[String]>,
    ) {
        self.resource_with(walk, e, type_profiles.unwrap_or(&[]));
    }

    fn resource_with<'a>(&self, walk: &mut Walk<'_, 'a>, e: &'a Element, extra: &[String]) {
        let type_name = e.type_name();
        // The URLs are borrowed (from the caller, the resource and the settings).
        let mut urls: Vec<&str> = extra.iter().map(String::as_str).collect();
        for m in e.values("meta") {
            if let Some(meta) = m.as_element() {
                for p in meta.values("profile") {
                    if let Some(u) = p.as_primitive().and_then(model::Primitive::as_str) {
                        urls.push(u);
                    }
                }
            }
        }
        if urls.is_empty() {
            if let Some(d) = self.defaults.get(type_name) {
                urls.push(d);
            }
        }
        if let Some(g) = self.globals.get(type_name) {
            urls.extend(g.iter().map(String::as_str));
        }
        urls.retain(|u| !u.is_empty());
        urls.dedup();
        if type_name == "StructureDefinition" {
            structure_definition(self, walk, e);
        }
        if type_name == "SearchParameter" {
            self.search_parameter(walk, e);
        }
        let saved_entries = if type_name == "Bundle" {
            bundle_links(walk, e);
            let entries = bundle_entries(walk, e);
            Some(std::mem::replace(&mut walk.bundle_entries, entries))
        } else {
            None
        };
        let mut checked = false;
        for &url in &urls {
            match self.profile(url) {
                Ok(p) if p.type_name == type_name => {
                    walk.resource(e, &p);
                    checked = true;
                }
                Ok(p) => walk.report(
                    Severity::Error,
                    IssueType::Structure,
                    e.pos,
                    format!("profile {url} is for {}, not {type_name}", p.type_name),
                    None,
                ),
                Err(err) => walk.report(
                    Severity::Error,
                    IssueType::NotSupported,
                    e.pos,
                    format!("profile {url} cannot be checked: {err}"),
                    None,
                ),
            }
        }
        if !checked {
            match self.core_profile(type_name) {
                Some(core) => walk.resource(e, &core),
                None => walk.report(
                    Severity::Fatal,
                    IssueType::NotSupported,
                    e.pos,
                    format!("no definition for resource type {type_name}"),
                    None,
                ),
            }
        }
        if type_name == "QuestionnaireResponse" {
            questionnaire::check(walk, e);
        }
        if let Some(saved) = saved_entries {
            walk.bundle_entries = saved;
        }
    }
}

/// The entries of a Bundle for reference resolution, checking `fullUrl` against each
/// resource's type and id on the way.
fn bundle_entries<'a>(walk: &mut Walk<'_, 'a>, bundle: &'a Element) -> Vec<(String, &'a Element)> {
    let mut out = Vec::new();
    let mut urls_seen = std::collections::HashSet::new();
    let base = walk.location.len();
    for (i, entry) in bundle.values("entry").iter().enumerate() {
        let Some(entry) = entry.as_element() else {
            continue;
        };
        let Some(res) = entry
            .values("resource")
            .first()
            .and_then(model::Value::as_element)
        else {
            continue;
        };
        let full = entry.str("fullUrl").unwrap_or_default().to_string();
        // Only a RESTful fullUrl (`.../Type/id`) says which resource it is.
        let restful = full
            .rsplit('/')
            .nth(1)
            .is_some_and(crate::model::schema::is_resource_type);
        if let (Some(id), true) = (res.id(), restful) {
            let tail = format!("{}/{id}", res.type_name());
            if !full.ends_with(&tail) {
                let _ = write!(walk.location, ".entry[{i}].fullUrl");
                walk.report(
                    Severity::Error,
                    IssueType::Invalid,
                    entry.pos,
                    format!("fullUrl {full} does not match the resource {tail}"),
                    None,
                );
                walk.location.truncate(base);
            }
        }
        if !full.is_empty() && !is_absolute_url(&full) {
            let _ = write!(walk.location, ".entry[{i}]");
            walk.report(
                Severity::Error,
                IssueType::Invalid,
                entry.pos,
                format!("fullUrl must be an absolute URL (not '{full}')"),
                None,
            );
            walk.location.truncate(base);
        }
        // The same fullUrl twice is an error unless the entries are different versions.
        let version = |r: &Element| -> Option<String> {
            r.values("meta")
                .first()
                .and_then(model::Value::as_element)
                .and_then(|m| m.str("versionId"))
                .map(str::to_string)
        };
        // Entries with this fullUrl are looked for only when an earlier one had it.
        if !full.is_empty()
            && !urls_seen.insert(entry.str("fullUrl").unwrap_or_default())
            && out
                .iter()
                .any(|(f, r): &(String, &Element)| *f == full && version(r) == version(res))
        {
            let _ = write!(walk.location, ".entry[{i}]");
            walk.report(
                Severity::Error,
                IssueType::Invalid,
                entry.pos,
                format!("duplicate fullUrl {full} in the Bundle"),
                None,
            );
            walk.location.truncate(base);
        }
        out.push((full, res));
    }
    out
}

/// Whether a URL has a scheme (`http:`, `urn:`), as an absolute URL does.
fn is_absolute_url(url: &str) -> bool {
    url.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// Each link relation may occur once in a Bundle.
fn bundle_links(walk: &mut Walk<'_, '_>, bundle: &Element) {
    let mut seen: Vec<&str> = Vec::new();
    let base = walk.location.len();
    for (i, link) in bundle.values("link").iter().enumerate() {
        let Some(rel) = link.as_element().and_then(|l| l.str("relation")) else {
            continue;
        };
        if seen.contains(&rel) {
            let _ = write!(walk.location, ".link[{i}]");
            walk.report(
                Severity::Error,
                IssueType::Invalid,
                link.pos(),
                format!("the link relation '{rel}' can only occur once"),
                None,
            );
            walk.location.truncate(base);
        }
        seen.push(rel);
    }
}

/// A StructureDefinition being validated must yield a snapshot: its differential has to
/// fit its base.
fn structure_definition(validator: &Validator, walk: &mut Walk<'_, '_>, sd: &Element) {
    if sd.get("differential").is_none() || sd.get("snapshot").is_some() {
        return;
    }
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&model::to_json(sd)) else {
        return;
    };
    let url = json
        .get("url")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("urn:imagio:validating")
        .to_string();
    let mut registry = (*validator.registry).clone();
    if registry.add(json).is_err() {
        return;
    }
    if let Err(e) = Snapshots::default().get(&registry, &url) {
        walk.report(
            Severity::Error,
            IssueType::Structure,
            sd.pos,
            format!("snapshot cannot be generated: {e}"),
            None,
        );
    }
}

/// Drops repeated issues (a profile and the core definition may report the same problem).
/// The first of several equal issues is kept, in order.
fn dedup(mut issues: Vec<Issue>) -> Vec<Issue> {
    // The usual handful of issues is compared pairwise, without copying anything.
    const SMALL: usize = 16;
    let same = |a: &Issue, b: &Issue| {
        a.severity == b.severity && a.location == b.location && a.message == b.message
    };
    if issues.len() <= SMALL {
        let mut kept = 0;
        for i in 0..issues.len() {
            if !issues[..kept].iter().any(|k| same(k, &issues[i])) {
                issues.swap(kept, i);
                kept += 1;
            }
        }
        issues.truncate(kept);
        return issues;
    }
    let mut seen = std::collections::HashSet::new();
    issues.retain(|i| seen.insert((i.severity, i.location.clone(), i.message.clone())));
    issues
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(severity: Severity, location: &str, message: &str) -> Issue {
        Issue {
            severity,
            kind: IssueType::Invalid,
            message: message.to_string(),
            location: location.to_string(),
            line: None,
            column: None,
            rule: None,
        }
    }

    #[test]
    fn dedup_keeps_the_first_of_equal_issues_in_order() {
        let a = issue(Severity::Error, "Patient.a", "x");
        let b = issue(Severity::Warning, "Patient.a", "x");
        let c = issue(Severity::Error, "Patient.c", "y");
        let few = vec![a.clone(), b.clone(), a.clone(), c.clone(), b.clone()];
        let kept: Vec<(Severity, String)> = dedup(few)
            .into_iter()
            .map(|i| (i.severity, i.location))
            .collect();
        assert_eq!(
            kept,
            [
                (Severity::Error, "Patient.a".to_string()),
                (Severity::Warning, "Patient.a".to_string()),
                (Severity::Error, "Patient.c".to_string()),
            ]
        );
        // Beyond the pairwise limit, the same answer.
        let many: Vec<Issue> = (0..40)
            .map(|i| issue(Severity::Error, &format!("P.x{}", i % 7), "m"))
            .collect();
        let kept: Vec<String> = dedup(many).into_iter().map(|i| i.location).collect();
        assert_eq!(kept, (0..7).map(|i| format!("P.x{i}")).collect::<Vec<_>>());
    }

    #[test]
    fn validating_a_parsed_tree_reports_what_validating_the_text_does() {
        let validator = Validator::new(crate::definitions::Registry::core());
        let text = "{\"resourceType\": \"Patient\",\n \"gender\": \"nope\",\n \"birthDate\": \"1970-13\", \"foo\": 1}";
        let parsed = model::parse_with(text, &validator.parse_options());
        let direct = validator.validate_json(text, &[]);
        let again = validator.validate_parsed(&parsed, text, &[]);
        let show = |v: &[Issue]| -> Vec<String> {
            v.iter()
                .map(|i| format!("{:?} {} {} {:?}", i.severity, i.location, i.message, i.line))
                .collect()
        };
        assert!(direct.len() >= 3, "{:?}", show(&direct));
        assert_eq!(show(&direct), show(&again));
    }
}
