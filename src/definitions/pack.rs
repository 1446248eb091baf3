//! The rerunnable step that turns the official R4 definition bundles into the compact pack the
//! binary embeds (`definitions/r4/`). Run it with `imagio-gateway definitions pack`.
//!
//! What it keeps: every StructureDefinition (resources, data types, core extensions, core
//! profiles) with its snapshot, stripped of narrative and prose the gateway never reads; the
//! ValueSets bound from those definitions with strength `required` or `extensible`, the
//! CodeSystems they draw on and their expansions; every SearchParameter, stripped to what
//! indexing and query parsing need. Each output file has one resource per line, preceded by
//! its canonical URL and a tab, so the loader can index a file without parsing it.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// What can go wrong while packing.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// A source file could not be read or an output file written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A source file is not the JSON Bundle it should be.
    #[error("{path}: {message}")]
    Format {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// Counts of what a pack run wrote, for the command's report.
#[derive(Debug, Default)]
pub struct PackReport {
    /// StructureDefinitions written.
    pub structure_definitions: usize,
    /// ValueSets written.
    pub value_sets: usize,
    /// CodeSystems written.
    pub code_systems: usize,
    /// SearchParameters written.
    pub search_parameters: usize,
    /// Total bytes written.
    pub bytes: usize,
}

const SD_SOURCES: &[&str] = &[
    "profiles-types.json",
    "profiles-resources.json",
    "extension-definitions.json",
    "profiles-others.json",
];
const TERMINOLOGY_SOURCES: &[&str] = &["valuesets.json", "v3-codesystems.json", "v2-tables.json"];

/// Top-level StructureDefinition properties the gateway reads.
const SD_KEEP: &[&str] = &[
    "resourceType",
    "id",
    "url",
    "version",
    "name",
    "status",
    "fhirVersion",
    "kind",
    "abstract",
    "context",
    "contextInvariant",
    "type",
    "baseDefinition",
    "derivation",
];

/// ElementDefinition properties the gateway reads (plus every `fixed*`, `pattern*`,
/// `minValue*`, `maxValue*` and `defaultValue*`).
const ELEMENT_KEEP: &[&str] = &[
    "id",
    "path",
    "representation",
    "sliceName",
    "sliceIsConstraining",
    "slicing",
    "min",
    "max",
    "base",
    "contentReference",
    "type",
    "maxLength",
    "condition",
    "constraint",
    "mustSupport",
    "isModifier",
    "isSummary",
    "binding",
];
const ELEMENT_KEEP_PREFIX: &[&str] = &["fixed", "pattern", "minValue", "maxValue", "defaultValue"];

/// Packs the definitions found in `source` (the folder of the official bundles) into `out`.
///
/// # Errors
/// Fails when a source bundle is missing or malformed, or an output file cannot be written.
pub fn pack(source: &Path, out: &Path) -> Result<PackReport, PackError> {
    let mut report = PackReport::default();
    fs::create_dir_all(out).map_err(|e| io(out, e))?;

    // StructureDefinitions, and the value sets their bindings need.
    let mut sds: BTreeMap<String, String> = BTreeMap::new();
    let mut bound_sets: BTreeSet<String> = BTreeSet::new();
    for name in SD_SOURCES {
        for res in bundle_resources(&source.join(name))? {
            if res.get("resourceType").and_then(Value::as_str) != Some("StructureDefinition") {
                continue;
            }
            let sd = strip_structure_definition(&res, &mut bound_sets);
            let url = str_of(&sd, "url").to_string();
            sds.insert(url.clone(), line(&url, &sd));
        }
    }
    report.structure_definitions = sds.len();
    report.bytes += write_lines(&out.join("structuredefinitions.tsv"), sds.values())?;

    // Terminology: bound ValueSets, the CodeSystems they include, and expansions.
    let mut value_sets: BTreeMap<String, Value> = BTreeMap::new();
    let mut code_systems: BTreeMap<String, Value> = BTreeMap::new();
    for name in TERMINOLOGY_SOURCES {
        for res in bundle_resources(&source.join(name))? {
            let url = str_of(&res, "url").to_string();
            match res.get("resourceType").and_then(Value::as_str) {
                Some("ValueSet") => {
                    value_sets.entry(url).or_insert(res);
                }
                Some("CodeSystem") => {
                    code_systems.entry(url).or_insert(res);
                }
                _ => {}
            }
        }
    }
    let mut expansions: BTreeMap<String, Value> = BTreeMap::new();
    for res in bundle_resources(&source.join("expansions.json"))? {
        if let Some(exp) = res.get("expansion") {
            expansions.insert(str_of(&res, "url").to_string(), exp.clone());
        }
    }
    // Close over ValueSet includes so an included set is present too.
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut queue: Vec<String> = bound_sets.into_iter().collect();
    while let Some(url) = queue.pop() {
        let url = url.split('|').next().unwrap_or_default().to_string();
        if !wanted.insert(url.clone()) {
            continue;
        }
        if let Some(vs) = value_sets.get(&url) {
            for inc in compose_parts(vs) {
                for v in inc
                    .get("valueSet")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(s) = v.as_str() {
                        queue.push(s.to_string());
                    }
                }
            }
        }
    }
    let mut vs_lines = Vec::new();
    let mut systems: BTreeSet<String> = BTreeSet::new();
    for url in &wanted {
        let Some(vs) = value_sets.get(url) else {
            continue;
        };
        let mut vs = strip_conformance(vs);
        for inc in compose_parts(&vs) {
            if let Some(s) = inc.get("system").and_then(Value::as_str) {
                systems.insert(s.to_string());
            }
        }
        if let (Some(exp), Some(obj)) = (expansions.get(url), vs.as_object_mut()) {
            obj.insert("expansion".into(), strip_expansion(exp));
        }
        vs_lines.push(line(url, &vs));
    }
    report.value_sets = vs_lines.len();
    report.bytes += write_lines(&out.join("valuesets.tsv"), vs_lines.iter())?;

    let mut cs_lines = Vec::new();
    for url in &systems {
        if let Some(cs) = code_systems.get(url) {
            cs_lines.push(line(url, &strip_code_system(cs)));
        }
    }
    report.code_systems = cs_lines.len();
    report.bytes += write_lines(&out.join("codesystems.tsv"), cs_lines.iter())?;

    // Search parameters.
    let mut sp_lines = BTreeMap::new();
    for res in bundle_resources(&source.join("search-parameters.json"))? {
        let mut o = Map::new();
        for k in [
            "resourceType",
            "id",
            "url",
            "name",
            "code",
            "base",
            "type",
            "expression",
            "target",
            "multipleOr",
            "multipleAnd",
            "comparator",
            "modifier",
            "chain",
            "component",
        ] {
            if let Some(v) = res.get(k) {
                o.insert(k.into(), v.clone());
            }
        }
        let url = str_of(&res, "url").to_string();
        sp_lines.insert(url.clone(), line(&url, &Value::Object(o)));
    }
    report.search_parameters = sp_lines.len();
    report.bytes += write_lines(&out.join("searchparameters.tsv"), sp_lines.values())?;

    // Compartment definitions (which search parameters put a resource in a compartment).
    let mut cd_lines = BTreeMap::new();
    for res in bundle_resources(&source.join("profiles-resources.json"))? {
        if res.get("resourceType").and_then(Value::as_str) != Some("CompartmentDefinition") {
            continue;
        }
        let cd = pick(
            &res,
            &["resourceType", "id", "url", "name", "code", "resource"],
        );
        let url = str_of(&res, "url").to_string();
        cd_lines.insert(url.clone(), line(&url, &cd));
    }
    report.bytes += write_lines(&out.join("compartments.tsv"), cd_lines.values())?;
    Ok(report)
}

fn io(path: &Path, source: std::io::Error) -> PackError {
    PackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bundle_resources(path: &Path) -> Result<Vec<Value>, PackError> {
    let text = fs::read_to_string(path).map_err(|e| io(path, e))?;
    let bundle: Value = serde_json::from_str(&text).map_err(|e| PackError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .ok_or_else(|| PackError::Format {
            path: path.to_path_buf(),
            message: "not a Bundle with entries".into(),
        })?;
    Ok(entries
        .iter()
        .filter_map(|e| e.get("resource").cloned())
        .collect())
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn line(url: &str, v: &Value) -> String {
    format!("{url}\t{v}")
}

fn write_lines<'a>(
    path: &Path,
    lines: impl Iterator<Item = &'a String>,
) -> Result<usize, PackError> {
    let mut text = String::new();
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    fs::write(path, &text).map_err(|e| io(path, e))?;
    Ok(text.len())
}

fn strip_structure_definition(sd: &Value, bound: &mut BTreeSet<String>) -> Value {
    let mut o = Map::new();
    for k in SD_KEEP {
        if let Some(v) = sd.get(*k) {
            o.insert((*k).into(), v.clone());
        }
    }
    let elements: Vec<Value> = sd
        .pointer("/snapshot/element")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|el| strip_element(el, bound))
        .collect();
    let mut snapshot = Map::new();
    snapshot.insert("element".into(), Value::Array(elements));
    o.insert("snapshot".into(), Value::Object(snapshot));
    Value::Object(o)
}

fn strip_element(el: &Value, bound: &mut BTreeSet<String>) -> Value {
    let mut o = Map::new();
    let Some(src) = el.as_object() else {
        return Value::Object(o);
    };
    for (k, v) in src {
        let keep = ELEMENT_KEEP.contains(&k.as_str())
            || ELEMENT_KEEP_PREFIX.iter().any(|p| k.starts_with(p));
        if !keep {
            continue;
        }
        let v = match k.as_str() {
            "constraint" => Value::Array(
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| pick(c, &["key", "severity", "human", "expression", "source"]))
                    .collect(),
            ),
            "binding" => {
                let strength = str_of(v, "strength");
                if let Some(vs) = v.get("valueSet").and_then(Value::as_str) {
                    if strength == "required" || strength == "extensible" {
                        bound.insert(vs.to_string());
                    }
                }
                pick(v, &["strength", "valueSet"])
            }
            "slicing" => pick(v, &["discriminator", "ordered", "rules"]),
            "base" => pick(v, &["path", "min", "max"]),
            _ => v.clone(),
        };
        o.insert(k.clone(), v);
    }
    Value::Object(o)
}

fn pick(v: &Value, keys: &[&str]) -> Value {
    let mut o = Map::new();
    for k in keys {
        if let Some(x) = v.get(*k) {
            o.insert((*k).into(), x.clone());
        }
    }
    Value::Object(o)
}

fn compose_parts(vs: &Value) -> Vec<&Value> {
    ["include", "exclude"]
        .iter()
        .filter_map(|k| vs.pointer(&format!("/compose/{k}")))
        .filter_map(Value::as_array)
        .flatten()
        .collect()
}

fn strip_conformance(v: &Value) -> Value {
    pick(
        v,
        &[
            "resourceType",
            "id",
            "url",
            "version",
            "name",
            "status",
            "compose",
        ],
    )
}

fn strip_expansion(exp: &Value) -> Value {
    pick(exp, &["identifier", "timestamp", "total", "contains"])
}

fn strip_code_system(cs: &Value) -> Value {
    let mut o = pick(
        cs,
        &[
            "resourceType",
            "id",
            "url",
            "version",
            "name",
            "status",
            "caseSensitive",
            "hierarchyMeaning",
            "content",
            "count",
        ],
    );
    if let (Some(obj), Some(concepts)) = (o.as_object_mut(), cs.get("concept")) {
        obj.insert("concept".into(), strip_concepts(concepts));
    }
    o
}

fn strip_concepts(concepts: &Value) -> Value {
    Value::Array(
        concepts
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let mut o = pick(c, &["code", "display"]);
                let Some(obj) = o.as_object_mut() else {
                    return o;
                };
                // Properties that change membership: abstract and deprecated codes, and
                // extra parents of v3 hierarchies.
                let props: Vec<Value> = c
                    .get("property")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|p| {
                        matches!(
                            str_of(p, "code"),
                            "notSelectable"
                                | "abstract"
                                | "status"
                                | "deprecated"
                                | "parent"
                                | "child"
                                | "subsumedBy"
                        )
                    })
                    .cloned()
                    .collect();
                if !props.is_empty() {
                    obj.insert("property".into(), Value::Array(props));
                }
                if let Some(sub) = c.get("concept") {
                    obj.insert("concept".into(), strip_concepts(sub));
                }
                o
            })
            .collect(),
    )
}
