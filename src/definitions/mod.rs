//! The FHIR R4 conformance resources the gateway carries: StructureDefinitions of resources,
//! data types and core extensions, bound ValueSets with their CodeSystems and expansions, and
//! SearchParameters.
//!
//! They live in `definitions/r4/*.tsv`, embedded in the binary by `include_str!`. Each line is
//! `canonical-url TAB resource-json`. Nothing is parsed at start-up: the first lookup of a
//! kind scans its file for line starts (a few milliseconds), and each resource is parsed the
//! first time it is asked for, then cached. Memory therefore grows with what is used.
//!
//! The pack is made by [`pack::pack`] (`imagio-gateway definitions pack`); see
//! `definitions/r4/README.md`.

pub mod pack;
mod registry;

pub use registry::{Registry, RegistryError};

use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

/// The kinds of packed definition, one file each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// StructureDefinitions (resources, types, extensions, profiles).
    StructureDefinition,
    /// ValueSets, with their expansion where the specification published one.
    ValueSet,
    /// CodeSystems drawn on by the bound ValueSets.
    CodeSystem,
    /// SearchParameters.
    SearchParameter,
    /// ConceptMaps (none embedded; loaded with mappings and study terminology).
    ConceptMap,
    /// Questionnaires (none embedded; loaded to validate QuestionnaireResponses).
    Questionnaire,
    /// ImplementationGuides (none embedded): their `global` profiles apply to every
    /// resource of a type.
    ImplementationGuide,
    /// CompartmentDefinitions (the five of R4: Patient, Encounter, RelatedPerson,
    /// Practitioner, Device), for the membership of compartments (bulk export).
    CompartmentDefinition,
}

impl Kind {
    /// The kind of a conformance resource by its `resourceType`, if the gateway keeps that kind.
    pub fn of_resource_type(resource_type: &str) -> Option<Kind> {
        match resource_type {
            "StructureDefinition" => Some(Kind::StructureDefinition),
            "ValueSet" => Some(Kind::ValueSet),
            "CodeSystem" => Some(Kind::CodeSystem),
            "SearchParameter" => Some(Kind::SearchParameter),
            "ConceptMap" => Some(Kind::ConceptMap),
            "Questionnaire" => Some(Kind::Questionnaire),
            "ImplementationGuide" => Some(Kind::ImplementationGuide),
            "CompartmentDefinition" => Some(Kind::CompartmentDefinition),
            _ => None,
        }
    }

    const ALL: [Kind; 8] = [
        Kind::StructureDefinition,
        Kind::ValueSet,
        Kind::CodeSystem,
        Kind::SearchParameter,
        Kind::ConceptMap,
        Kind::Questionnaire,
        Kind::ImplementationGuide,
        Kind::CompartmentDefinition,
    ];

    fn text(self) -> &'static str {
        match self {
            Kind::StructureDefinition => {
                include_str!("../../definitions/r4/structuredefinitions.tsv")
            }
            Kind::ValueSet => include_str!("../../definitions/r4/valuesets.tsv"),
            Kind::CodeSystem => include_str!("../../definitions/r4/codesystems.tsv"),
            Kind::SearchParameter => include_str!("../../definitions/r4/searchparameters.tsv"),
            Kind::CompartmentDefinition => include_str!("../../definitions/r4/compartments.tsv"),
            Kind::ConceptMap | Kind::Questionnaire | Kind::ImplementationGuide => "",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// One packed file: where each resource's JSON lies, and the ones parsed so far.
struct Packed {
    lines: HashMap<&'static str, &'static str>,
    parsed: RwLock<HashMap<&'static str, Arc<Value>>>,
}

impl Packed {
    fn index(text: &'static str) -> Packed {
        let mut lines = HashMap::new();
        for l in text.lines() {
            if let Some((url, json)) = l.split_once('\t') {
                lines.insert(url, json);
            }
        }
        Packed {
            lines,
            parsed: RwLock::new(HashMap::new()),
        }
    }
}

fn packed(kind: Kind) -> &'static Packed {
    static FILES: [OnceLock<Packed>; Kind::ALL.len()] =
        [const { OnceLock::new() }; Kind::ALL.len()];
    FILES[kind.slot()].get_or_init(|| Packed::index(kind.text()))
}

/// The canonical URL of the core definition of a resource or data type name.
pub fn core_url(type_name: &str) -> String {
    format!("http://hl7.org/fhir/StructureDefinition/{type_name}")
}

/// Looks up a packed resource by canonical URL (a `|version` suffix is ignored), parsing it on
/// first use. Returns `None` when the pack has no such resource.
pub fn get(kind: Kind, url: &str) -> Option<Arc<Value>> {
    let url = url.split('|').next().unwrap_or(url);
    let file = packed(kind);
    if let Ok(cache) = file.parsed.read() {
        if let Some(v) = cache.get(url) {
            return Some(v.clone());
        }
    }
    let (key, json) = file.lines.get_key_value(url)?;
    // The pack is produced by our own packer from valid JSON; a parse failure means the
    // binary was built from a corrupted pack, which is a bug, reported as absence.
    let value: Value = serde_json::from_str(json).ok()?;
    let value = Arc::new(value);
    if let Ok(mut cache) = file.parsed.write() {
        cache.insert(key, value.clone());
    }
    Some(value)
}

/// The canonical URLs of every packed resource of a kind, in no particular order.
pub fn urls(kind: Kind) -> impl Iterator<Item = &'static str> {
    packed(kind).lines.keys().copied()
}

/// How many resources of each kind the binary carries.
pub fn counts() -> Vec<(Kind, usize)> {
    Kind::ALL
        .iter()
        .map(|k| (*k, packed(*k).lines.len()))
        .collect()
}

/// Writes a one-line-per-kind summary of the embedded definitions.
pub fn report(out: &mut impl std::io::Write) {
    let started = std::time::Instant::now();
    let counts = counts();
    let elapsed = started.elapsed();
    for (kind, n) in counts {
        let _ = writeln!(out, "{kind:?}: {n}");
    }
    let _ = writeln!(out, "indexed in {:.1} ms", elapsed.as_secs_f64() * 1e3);
}
