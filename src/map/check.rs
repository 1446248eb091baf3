//! Static checks of a mapping (`imagio-gateway mapping check`), without data:
//! - every column a rule reads exists in a sample file of its source (when samples are
//!   given), and every declared column is found in the sample's header;
//! - every element the content writes exists in the resource type, has the right shape
//!   (a list where the element repeats) and is not forbidden by the claimed profile;
//! - each claimed profile is known and constrains the rule's type;
//! - each ConceptMap's target codes are in the ValueSet it targets, and every code of that
//!   ValueSet is reached from some local code.

use super::source::{self, Table};
use super::spec::{Cond, Mapping, Node, Part, ResourceRule, Spec};
use super::{Diagnostic, Input, SourcePos};
use crate::model::schema::{type_info, TypeInfo};
use crate::validate::{Severity, Validator};

/// Checks a mapping; `samples` are example input files (matched to sources by their
/// `files` pattern). Returns the findings (empty: nothing to say).
pub fn check(mapping: &Mapping, samples: &[Input], validator: &Validator) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let d = |severity, line: usize, source: Option<SourcePos>, message: String| Diagnostic {
        severity,
        source,
        mapping: Some((mapping.file_name.clone(), line)),
        resource: None,
        location: None,
        message,
    };
    // Columns against samples.
    let pairs = samples.iter().flat_map(|sample| {
        let hits: Vec<Option<usize>> = mapping
            .sources
            .iter()
            .enumerate()
            .filter(|(_, s)| source::matches_pattern(&s.files, &sample.name))
            .map(|(i, _)| Some(i))
            .collect();
        let hits = if hits.is_empty() { vec![None] } else { hits };
        hits.into_iter().map(move |h| (sample, h))
    });
    for (sample, si) in pairs {
        let Some(si) = si else {
            out.push(d(
                Severity::Error,
                1,
                None,
                format!("sample {} matches no source's files pattern", sample.name),
            ));
            continue;
        };
        let src = &mapping.sources[si];
        let read = if src.fhir.is_some() {
            super::fhir::read(&sample.bytes, &sample.name, si, mapping).map(|(t, found)| {
                out.extend(found);
                t
            })
        } else {
            source::decode(&sample.bytes, src.dialect.encoding)
                .and_then(|text| Table::read(&text, &sample.name, si, src))
        };
        let table = match read {
            Ok(t) => t,
            Err(m) => {
                out.push(d(
                    Severity::Error,
                    src.line,
                    None,
                    format!("{}: {m}", sample.name),
                ));
                continue;
            }
        };
        let at = |_: ()| {
            Some(SourcePos {
                file: sample.name.clone(),
                row: 1,
                column: None,
                fhir: None,
            })
        };
        for c in &src.columns {
            if table.column(&c.name.replace("{n}", "1")).is_none() {
                out.push(d(
                    Severity::Warning,
                    c.line,
                    at(()),
                    format!(
                        "declared column '{}' matches no header (headers: {})",
                        c.name,
                        table.headers.join(" | ")
                    ),
                ));
            }
        }
        for (name, line) in columns_read(mapping, si) {
            if table.column(&name).is_none() {
                out.push(d(
                    Severity::Error,
                    line,
                    at(()),
                    format!(
                        "column '{name}' is not in the header (headers: {})",
                        table.headers.join(" | ")
                    ),
                ));
            }
        }
    }
    // Elements and profiles.
    for rule in &mapping.resources {
        match validator.profile_type(&rule.profile) {
            None => out.push(d(
                Severity::Error,
                rule.profile_line,
                None,
                format!("unknown profile {}", rule.profile),
            )),
            Some(t) if t != rule.type_name => out.push(d(
                Severity::Error,
                rule.profile_line,
                None,
                format!("{} constrains {t}, not {}", rule.profile, rule.type_name),
            )),
            Some(_) => {}
        }
        let forbidden = forbidden_paths(validator, &rule.profile);
        if let Some(info) = type_info(&rule.type_name) {
            for (k, n) in &rule.content {
                elements(
                    info,
                    &rule.type_name,
                    k,
                    n,
                    &forbidden,
                    rule,
                    &mut |line, m| {
                        out.push(d(Severity::Error, line, None, m));
                    },
                );
            }
        }
        extension_urls(&rule.content, &mut |url, line| {
            if validator.profile_type(url).as_deref() != Some("Extension") {
                out.push(d(
                    Severity::Error,
                    line,
                    None,
                    format!("extension {url} is not defined by the study or R4"),
                ));
            }
        });
    }
    // ConceptMaps against the ValueSets they target.
    let mut names: Vec<&String> = mapping.conceptmaps.keys().collect();
    names.sort();
    for name in names {
        let cm = &mapping.conceptmaps[name];
        let line = cm.line;
        let Some(vs) = &cm.target_value_set else {
            out.push(d(
                Severity::Warning,
                line,
                None,
                format!("ConceptMap '{name}' names no targetCanonical ValueSet: its codes are not checked"),
            ));
            continue;
        };
        let expansion = match validator.terminology().expand(vs) {
            Ok(e) => e,
            Err(e) => {
                out.push(d(
                    Severity::Error,
                    line,
                    None,
                    format!("ConceptMap '{name}': target ValueSet {vs}: {e}"),
                ));
                continue;
            }
        };
        for t in &cm.targets {
            if !expansion.contains(&t.system, &t.code) {
                out.push(d(
                    Severity::Error,
                    line,
                    None,
                    format!(
                        "ConceptMap '{name}' maps to {}|{}, which is not in its target ValueSet {vs}",
                        t.system, t.code
                    ),
                ));
            }
        }
        let mut uncovered: Vec<String> = expansion
            .iter()
            .filter(|(s, c, _)| !cm.targets.iter().any(|t| t.system == *s && t.code == *c))
            .map(|(_, c, _)| c.to_string())
            .collect();
        uncovered.sort();
        if !uncovered.is_empty() {
            out.push(d(
                Severity::Warning,
                line,
                None,
                format!(
                    "ConceptMap '{name}' does not cover {vs}: no local code maps to {}",
                    uncovered.join(", ")
                ),
            ));
        }
    }
    out
}

/// The columns the rules read from source `si` (with `{n}` expanded), with their lines.
pub fn columns_read(mapping: &Mapping, si: usize) -> Vec<(String, usize)> {
    let src = &mapping.sources[si];
    let mut out: Vec<(String, usize)> = Vec::new();
    let mut push = |name: &str, line: usize, ns: &[u32], own: bool| {
        let name = match name.split_once('.') {
            Some((s, rest)) if s == src.name => rest,
            Some((s, _)) if s == "const" || mapping.sources.iter().any(|x| x.name == s) => return,
            _ if !own => return,
            _ => name,
        };
        if name == "n" {
            return;
        }
        let names: Vec<String> = if name.contains("{n}") && !ns.is_empty() {
            ns.iter()
                .map(|n| name.replace("{n}", &n.to_string()))
                .collect()
        } else {
            vec![name.to_string()]
        };
        for n in names {
            if !out.iter().any(|(o, _)| *o == n) {
                out.push((n, line));
            }
        }
    };
    for k in &src.key {
        push(k, src.line, &[], true);
    }
    for j in &src.joins {
        for c in &j.on {
            push(c, j.line, &[], true);
        }
    }
    for (oi, other) in mapping.sources.iter().enumerate() {
        for j in other.joins.iter().filter(|j| j.source == si && oi != si) {
            for c in &j.on {
                push(c, j.line, &[], true);
            }
        }
    }
    for rule in &mapping.resources {
        let own = rule.from == si;
        let ns = rule.repeat.clone();
        for p in &rule.id.parts {
            if let Part::Column(c) = p {
                push(c, rule.id_line, &ns, own);
            }
        }
        if let Some(c) = &rule.when {
            cond_columns(c, &mut |name| push(name, rule.line, &ns, own));
        }
        super::spec::visit_specs(&rule.content, &mut |spec, line| match spec {
            Spec::Column(c) => push(&c.column, line, &ns, own),
            Spec::Template(t) => t.columns().for_each(|c| push(c, line, &ns, own)),
            Spec::If(c, _, _) => cond_columns(c, &mut |name| push(name, line, &ns, own)),
            Spec::Ref(target) => {
                if let Some(r) = mapping.resources.iter().find(|r| &r.name == target) {
                    r.id.columns().for_each(|c| push(c, line, &ns, own));
                }
            }
            Spec::Const(_) | Spec::FhirPath(..) => {}
        });
    }
    out
}

/// Calls `f` with every constant `url` of an `extension` or `modifierExtension` item.
fn extension_urls(members: &[(String, Node)], f: &mut impl FnMut(&str, usize)) {
    for (k, n) in members {
        let items: &[Node] = match n {
            Node::Array(items, _) => items,
            other => std::slice::from_ref(other),
        };
        for item in items {
            if let Node::Object(inner, _) = item {
                if matches!(k.as_str(), "extension" | "modifierExtension") {
                    for (ik, iv) in inner {
                        if let ("url", Node::Value(Spec::Const(super::spec::Lit::Str(url)), line)) =
                            (ik.as_str(), iv)
                        {
                            f(url, *line);
                        }
                    }
                }
                extension_urls(inner, f);
            }
        }
    }
}

fn cond_columns(c: &Cond, f: &mut impl FnMut(&str)) {
    match c {
        Cond::Present(col) | Cond::In(col, _) => f(col),
        Cond::All(l) | Cond::Any(l) => l.iter().for_each(|c| cond_columns(c, f)),
        Cond::Not(c) => cond_columns(c, f),
        Cond::FhirPath(_) => {}
    }
}

/// Element paths (`Patient.name`, choice suffix removed) the profile forbids (max 0).
fn forbidden_paths(validator: &Validator, profile: &str) -> Vec<String> {
    validator.profile(profile).map_or_else(
        |_| Vec::new(),
        |p| {
            p.nodes
                .iter()
                .filter(|n| n.max == Some(0) && n.slice_name.is_none())
                .map(|n| n.path.trim_end_matches("[x]").to_string())
                .collect()
        },
    )
}

/// Checks one content member `key` (with node `n`) of an element of type `info` at `path`.
fn elements(
    info: &'static TypeInfo,
    path: &str,
    key: &str,
    n: &Node,
    forbidden: &[String],
    rule: &ResourceRule,
    report: &mut impl FnMut(usize, String),
) {
    let Some(child) = info.child(key) else {
        report(
            n.line(),
            format!("'{key}' is not an element of {}", info.fhir_type_name()),
        );
        return;
    };
    let Some(element) = info.elements.get(child.element as usize) else {
        return;
    };
    let child_path = format!("{path}.{}", element.name);
    if forbidden.contains(&child_path) {
        report(
            n.line(),
            format!("{child_path} is not allowed by {} (max 0)", rule.profile),
        );
    }
    let child_info = element
        .types
        .get(child.type_index as usize)
        .and_then(|t| t.info());
    let item = match n {
        Node::Array(items, _) if !element.array => {
            report(
                n.line(),
                format!("{child_path} does not repeat: give one value, not a list"),
            );
            items.first()
        }
        Node::Object(..) if element.array => {
            report(
                n.line(),
                format!("{child_path} repeats: write a list [ {{ ... }} ]"),
            );
            Some(n)
        }
        Node::Array(items, _) => {
            for i in items.iter().skip(1) {
                object_members(child_info, &child_path, i, forbidden, rule, report);
            }
            items.first()
        }
        _ => Some(n),
    };
    if let Some(i) = item {
        object_members(child_info, &child_path, i, forbidden, rule, report);
    }
}

fn object_members(
    info: Option<&'static TypeInfo>,
    path: &str,
    n: &Node,
    forbidden: &[String],
    rule: &ResourceRule,
    report: &mut impl FnMut(usize, String),
) {
    if let (Some(info), Node::Object(members, _)) = (info, n) {
        for (k, m) in members {
            elements(info, path, k, m, forbidden, rule, report);
        }
    }
}
