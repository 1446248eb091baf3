//! The data dictionary: the study model rendered for people who map site data to it, from
//! the snapshots of the study profiles (`imagio-gateway profiles doc`).
//!
//! One table per profile (element, cardinality, type, binding or fixed value, must support,
//! meaning), the profile's rules, a table of the extensions, the code lists of the study
//! CodeSystems, the ValueSets and the ConceptMaps. The document is built once as a list of
//! [`Block`]s and then written as Markdown or HTML, so both formats say the same thing.
//! Output is deterministic: `profiles/DATA-DICTIONARY.md` is this rendering of the embedded
//! profiles, and a test fails when it is not current.

use super::CANONICAL_BASE;
use crate::definitions::{Kind, Registry};
use crate::validate::snapshot::{SnapshotError, Snapshots};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// The order of the canonical model table (study brief); profiles not listed follow, by title.
const MODEL_ORDER: &[&str] = &[
    "imagio-study",
    "imagio-site",
    "imagio-subject",
    "imagio-enrolment",
    "imagio-liver-tumour-diagnosis",
    "imagio-target-lesion",
    "imagio-tumour-size",
    "imagio-thermal-ablation",
    "imagio-ablation-margin",
    "imagio-recurrence-event",
    "imagio-follow-up-assessment",
    "imagio-complication",
    "imagio-imaging-study",
    "imagio-journey",
];

/// Output format of the data dictionary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// GitHub-flavoured Markdown.
    #[default]
    Markdown,
    /// A standalone HTML page.
    Html,
}

/// Why the data dictionary could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    /// The study definitions could not be loaded.
    #[error(transparent)]
    Profiles(#[from] super::ProfilesError),
    /// A profile's snapshot could not be generated.
    #[error("{url}: {source}")]
    Snapshot {
        /// The profile.
        url: String,
        /// Why.
        source: SnapshotError,
    },
    /// The output file could not be written.
    #[error("{}: {source}", path.display())]
    Write {
        /// The output file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Runs `imagio-gateway profiles doc`: renders the dictionary of the embedded profiles (or of
/// `dir`) to `out`, or to standard output.
pub fn run(dir: Option<&Path>, format: Format, out: Option<&Path>) -> ExitCode {
    let result = super::study_registry(dir)
        .map_err(DocError::from)
        .and_then(|registry| render(&registry, format))
        .and_then(|text| match out {
            Some(path) => std::fs::write(path, text).map_err(|source| DocError::Write {
                path: path.to_path_buf(),
                source,
            }),
            None => {
                print!("{text}");
                Ok(())
            }
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Renders the data dictionary of the study definitions in `registry` (its loaded
/// resources; the R4 core is only consulted for snapshots).
///
/// # Errors
/// When a profile's snapshot cannot be generated.
pub fn render(registry: &Registry, format: Format) -> Result<String, DocError> {
    let blocks = Dictionary::new(registry).blocks()?;
    Ok(match format {
        Format::Markdown => markdown(&blocks),
        Format::Html => html(&blocks),
    })
}

/// A piece of inline text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inline {
    /// Plain text.
    Text(String),
    /// Code (`code` in Markdown).
    Code(String),
    /// A link to a heading of the document (by its anchor).
    Link {
        /// The link text.
        text: String,
        /// The target heading's anchor.
        anchor: String,
    },
}

/// A block of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// A heading: level (1-3) and text; its anchor is [`anchor`] of the text.
    Heading(u8, String),
    /// A paragraph.
    Paragraph(Vec<Inline>),
    /// A bulleted list.
    List(Vec<Vec<Inline>>),
    /// A table: header cells and rows of cells.
    Table(Vec<String>, Vec<Vec<Vec<Inline>>>),
}

/// The anchor of a heading, as GitHub makes it: lower case, spaces to `-`, punctuation
/// other than `-` and `_` dropped.
pub fn anchor(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

fn text(s: impl Into<String>) -> Inline {
    Inline::Text(s.into())
}

fn code(s: impl Into<String>) -> Inline {
    Inline::Code(s.into())
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn array<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// The heading of a profile's section.
fn profile_heading(sd: &Value) -> String {
    format!("{} ({})", str_of(sd, "title"), str_of(sd, "type"))
}

fn code_system_heading(cs: &Value) -> String {
    format!("Code system: {}", str_of(cs, "title"))
}

fn concept_map_heading(cm: &Value) -> String {
    format!("Concept map: {}", str_of(cm, "title"))
}

const EXTENSIONS_HEADING: &str = "Extensions";
const VALUE_SETS_HEADING: &str = "Value sets";

/// The study definitions of a registry, sorted for rendering.
struct Dictionary<'r> {
    registry: &'r Registry,
    snapshots: Snapshots,
    profiles: Vec<Arc<Value>>,
    extensions: Vec<Arc<Value>>,
    code_systems: Vec<Arc<Value>>,
    value_sets: Vec<Arc<Value>>,
    concept_maps: Vec<Arc<Value>>,
}

impl<'r> Dictionary<'r> {
    fn new(registry: &'r Registry) -> Self {
        let by_title = |kind: Kind| {
            let mut v: Vec<Arc<Value>> = registry.loaded(kind).cloned().collect();
            v.sort_by(|a, b| {
                (str_of(a, "title"), str_of(a, "url")).cmp(&(str_of(b, "title"), str_of(b, "url")))
            });
            v
        };
        let (extensions, mut profiles): (Vec<_>, Vec<_>) = by_title(Kind::StructureDefinition)
            .into_iter()
            .partition(|sd| str_of(sd, "type") == "Extension");
        let rank = |sd: &Value| {
            MODEL_ORDER
                .iter()
                .position(|id| *id == str_of(sd, "id"))
                .unwrap_or(MODEL_ORDER.len())
        };
        profiles.sort_by_key(|sd| rank(sd));
        Dictionary {
            registry,
            snapshots: Snapshots::default(),
            profiles,
            extensions,
            code_systems: by_title(Kind::CodeSystem),
            value_sets: by_title(Kind::ValueSet),
            concept_maps: by_title(Kind::ConceptMap),
        }
    }

    fn snapshot(&self, url: &str) -> Result<Arc<Vec<Value>>, DocError> {
        self.snapshots
            .get(self.registry, url)
            .map_err(|source| DocError::Snapshot {
                url: url.to_string(),
                source,
            })
    }

    fn blocks(&self) -> Result<Vec<Block>, DocError> {
        let mut out = Vec::new();
        let versions: Vec<&str> = {
            let mut v: Vec<&str> = self.profiles.iter().map(|p| str_of(p, "version")).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        out.push(Block::Heading(1, "A-IMAGIO data dictionary".into()));
        out.push(Block::Paragraph(vec![
            text("The A-IMAGIO canonical model as FHIR R4 profiles (version "),
            text(versions.join(", ")),
            text("), generated from the conformance resources under "),
            code("profiles/"),
            text(" by "),
            code("imagio-gateway profiles doc"),
            text(". Do not edit by hand: change the profiles and regenerate."),
        ]));
        out.push(Block::Paragraph(vec![
            text("Canonical base: "),
            code(CANONICAL_BASE),
            text(". Card.: how many times the element occurs; "),
            code("0..0"),
            text(" means it must not be sent (privacy). S (must support): a site sends the element whenever it has the data. A choice element restricted to one type is shown by its JSON name ("),
            code("onsetDateTime"),
            text("). Extensions are listed by their slice name ("),
            code("extension:power"),
            text(") and described in "),
            Inline::Link {
                text: EXTENSIONS_HEADING.into(),
                anchor: anchor(EXTENSIONS_HEADING),
            },
            text("."),
        ]));
        out.push(Block::Heading(2, "Profiles".into()));
        out.push(Block::List(
            self.profiles
                .iter()
                .map(|p| {
                    vec![
                        Inline::Link {
                            text: profile_heading(p),
                            anchor: anchor(&profile_heading(p)),
                        },
                        text(format!(": {}", str_of(p, "description"))),
                    ]
                })
                .collect(),
        ));
        for p in &self.profiles {
            self.profile(p, &mut out)?;
        }
        self.extensions_table(&mut out)?;
        self.code_systems(&mut out);
        self.value_sets_table(&mut out);
        self.concept_maps(&mut out);
        Ok(out)
    }

    fn profile(&self, sd: &Value, out: &mut Vec<Block>) -> Result<(), DocError> {
        let url = str_of(sd, "url");
        out.push(Block::Heading(3, profile_heading(sd)));
        out.push(Block::Paragraph(vec![text(str_of(sd, "description"))]));
        out.push(Block::Paragraph(vec![
            text("Profile: "),
            code(url),
            text(format!(" (based on {})", str_of(sd, "type"))),
        ]));
        let snapshot = self.snapshot(url)?;
        let diff: BTreeMap<&str, &Value> = sd
            .pointer("/differential/element")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|e| (str_of(e, "id"), e))
            .collect();
        let mut rows = Vec::new();
        for (i, e) in snapshot.iter().enumerate() {
            let id = str_of(e, "id");
            if i == 0 || !shown(e, diff.contains_key(id)) {
                continue;
            }
            let d = diff.get(id).copied();
            rows.push(self.element_row(&snapshot, e, d)?);
        }
        out.push(Block::Table(
            [
                "Element",
                "Card.",
                "Type",
                "Binding or value",
                "S",
                "Meaning",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        ));
        let rules: Vec<Vec<Inline>> = diff
            .values()
            .flat_map(|e| array(e, "constraint"))
            .map(|c| {
                vec![
                    code(str_of(c, "key")),
                    text(format!(
                        " ({}): {}. ",
                        str_of(c, "severity"),
                        str_of(c, "human")
                    )),
                    code(str_of(c, "expression")),
                ]
            })
            .collect();
        if !rules.is_empty() {
            out.push(Block::Paragraph(vec![text("Rules:")]));
            out.push(Block::List(rules));
        }
        Ok(())
    }

    fn element_row(
        &self,
        snapshot: &[Value],
        e: &Value,
        d: Option<&Value>,
    ) -> Result<Vec<Vec<Inline>>, DocError> {
        let id = str_of(e, "id");
        let name = display_name(snapshot, id);
        let card = format!(
            "{}..{}",
            e.get("min").and_then(Value::as_u64).unwrap_or(0),
            e.get("max").and_then(Value::as_str).unwrap_or("*")
        );
        let mut types = Vec::new();
        let mut values = self.value_cell(e, d);
        for (k, t) in array(e, "type").enumerate() {
            if k > 0 {
                types.push(text(" | "));
            }
            let type_code = str_of(t, "code");
            let profiles: Vec<&str> = array(t, "profile").filter_map(Value::as_str).collect();
            let targets: Vec<&str> = array(t, "targetProfile")
                .filter_map(Value::as_str)
                .collect();
            if type_code == "Extension" && !profiles.is_empty() {
                for url in profiles {
                    let (ext_type, ext_value) = self.extension_value(url)?;
                    types.push(Inline::Link {
                        text: self.title_of(url),
                        anchor: anchor(EXTENSIONS_HEADING),
                    });
                    types.push(text(format!(" ({ext_type})")));
                    if values.is_empty() {
                        values = ext_value;
                    }
                }
            } else if !targets.is_empty() {
                let names: Vec<String> = targets.iter().map(|u| self.title_of(u)).collect();
                types.push(text(format!("{type_code}({})", names.join(" | "))));
            } else {
                types.push(text(type_code));
            }
        }
        let mut meaning = String::new();
        if let Some(d) = d {
            meaning.push_str(str_of(d, "short"));
            let definition = str_of(d, "definition");
            if !definition.is_empty() && definition != str_of(d, "short") {
                if !meaning.is_empty() {
                    meaning.push_str(". ");
                }
                meaning.push_str(definition);
            }
        }
        let must_support = e
            .get("mustSupport")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(vec![
            vec![code(name)],
            vec![text(card)],
            types,
            values,
            vec![text(if must_support { "S" } else { "" })],
            vec![text(meaning)],
        ])
    }

    /// Binding, fixed or pattern value of an element. Example bindings inherited from the
    /// base say nothing about the study and are left out.
    fn value_cell(&self, e: &Value, d: Option<&Value>) -> Vec<Inline> {
        let mut out = Vec::new();
        let binding = e.get("binding").filter(|b| {
            str_of(b, "strength") != "example" || d.is_some_and(|d| d.get("binding").is_some())
        });
        if let Some(b) = binding {
            let vs = str_of(b, "valueSet");
            out.push(text(format!("{}: ", str_of(b, "strength"))));
            out.push(self.value_set_link(vs));
        }
        if let Some(obj) = e.as_object() {
            for (k, v) in obj {
                let kind = if k.starts_with("fixed") {
                    "fixed"
                } else if k.starts_with("pattern") {
                    "pattern"
                } else {
                    continue;
                };
                if !out.is_empty() {
                    out.push(text("; "));
                }
                out.push(text(format!("{kind} ")));
                out.push(code(describe_value(v)));
            }
        }
        out
    }

    fn value_set_link(&self, url: &str) -> Inline {
        let known = self
            .value_sets
            .iter()
            .any(|vs| str_of(vs, "url") == url.split('|').next().unwrap_or(url));
        if known {
            Inline::Link {
                text: self.value_set_title(url),
                anchor: anchor(VALUE_SETS_HEADING),
            }
        } else {
            code(url)
        }
    }

    fn value_set_title(&self, url: &str) -> String {
        self.registry
            .get(Kind::ValueSet, url)
            .map(|vs| str_of(&vs, "title").to_string())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| url.to_string())
    }

    /// The title of a StructureDefinition (or the last segment of its URL).
    fn title_of(&self, url: &str) -> String {
        self.registry
            .get(Kind::StructureDefinition, url)
            .and_then(|sd| {
                let t = str_of(&sd, "title");
                (!t.is_empty()).then(|| t.to_string())
            })
            .unwrap_or_else(|| url.rsplit('/').next().unwrap_or(url).to_string())
    }

    /// The value type and the binding or pattern of an extension's `value[x]`.
    fn extension_value(&self, url: &str) -> Result<(String, Vec<Inline>), DocError> {
        let snapshot = self.snapshot(url)?;
        let Some(value) = snapshot
            .iter()
            .find(|e| str_of(e, "path") == "Extension.value[x]")
        else {
            return Ok(("complex".into(), Vec::new()));
        };
        let types: Vec<String> = array(value, "type")
            .map(|t| {
                let c = str_of(t, "code");
                let targets: Vec<String> = array(t, "targetProfile")
                    .filter_map(Value::as_str)
                    .map(|u| self.title_of(u))
                    .collect();
                if targets.is_empty() {
                    c.to_string()
                } else {
                    format!("{c}({})", targets.join(" | "))
                }
            })
            .collect();
        let max = value.get("max").and_then(Value::as_str).unwrap_or("1");
        let types = if max == "0" {
            "complex".to_string()
        } else {
            types.join(" | ")
        };
        Ok((types, self.value_cell(value, None)))
    }

    fn extensions_table(&self, out: &mut Vec<Block>) -> Result<(), DocError> {
        out.push(Block::Heading(2, EXTENSIONS_HEADING.into()));
        let mut rows = Vec::new();
        for ext in &self.extensions {
            let url = str_of(ext, "url");
            let (value_type, value) = self.extension_value(url)?;
            let contexts: Vec<&str> = array(ext, "context")
                .map(|c| str_of(c, "expression"))
                .collect();
            rows.push(vec![
                vec![text(str_of(ext, "title"))],
                vec![code(url)],
                vec![text(contexts.join(", "))],
                vec![text(value_type)],
                value,
                vec![text(str_of(ext, "description"))],
            ]);
        }
        out.push(Block::Table(
            [
                "Extension",
                "URL",
                "Used on",
                "Value",
                "Binding or value",
                "Meaning",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        ));
        Ok(())
    }

    fn code_systems(&self, out: &mut Vec<Block>) {
        out.push(Block::Heading(2, "Code systems".into()));
        for cs in &self.code_systems {
            out.push(Block::Heading(3, code_system_heading(cs)));
            out.push(Block::Paragraph(vec![
                text(str_of(cs, "description")),
                text(" System: "),
                code(str_of(cs, "url")),
            ]));
            let mut rows = Vec::new();
            concept_rows(cs, 0, &mut rows);
            out.push(Block::Table(
                ["Code", "Display", "Definition"].map(String::from).to_vec(),
                rows,
            ));
        }
    }

    fn value_sets_table(&self, out: &mut Vec<Block>) {
        out.push(Block::Heading(2, VALUE_SETS_HEADING.into()));
        let mut rows = Vec::new();
        for vs in &self.value_sets {
            let mut content = Vec::new();
            for inc in array(vs.pointer("/compose").unwrap_or(&Value::Null), "include") {
                if !content.is_empty() {
                    content.push(text("; "));
                }
                let system = str_of(inc, "system");
                let concepts: Vec<&Value> = array(inc, "concept").collect();
                let study_cs = self
                    .code_systems
                    .iter()
                    .find(|cs| str_of(cs, "url") == system);
                if concepts.is_empty() {
                    content.push(text("all codes of "));
                    match study_cs {
                        Some(cs) => content.push(Inline::Link {
                            text: code_system_heading(cs),
                            anchor: anchor(&code_system_heading(cs)),
                        }),
                        None => content.push(code(system)),
                    }
                } else {
                    content.push(text("from "));
                    content.push(code(system));
                    content.push(text(": "));
                    for (i, c) in concepts.iter().enumerate() {
                        if i > 0 {
                            content.push(text(", "));
                        }
                        content.push(code(str_of(c, "code")));
                        let display = str_of(c, "display");
                        if !display.is_empty() {
                            content.push(text(format!(" {display}")));
                        }
                    }
                }
            }
            rows.push(vec![
                vec![text(str_of(vs, "title"))],
                vec![code(str_of(vs, "url"))],
                content,
            ]);
        }
        out.push(Block::Table(
            ["Value set", "URL", "Codes"].map(String::from).to_vec(),
            rows,
        ));
    }

    fn concept_maps(&self, out: &mut Vec<Block>) {
        out.push(Block::Heading(2, "Concept maps".into()));
        for cm in &self.concept_maps {
            out.push(Block::Heading(3, concept_map_heading(cm)));
            out.push(Block::Paragraph(vec![
                text(str_of(cm, "description")),
                text(" URL: "),
                code(str_of(cm, "url")),
            ]));
            let mut rows = Vec::new();
            for group in array(cm, "group") {
                let target_system = str_of(group, "target");
                for element in array(group, "element") {
                    for target in array(element, "target") {
                        let mut target_cell = Vec::new();
                        let target_code = str_of(target, "code");
                        if !target_code.is_empty() {
                            target_cell.push(code(format!("{target_system}#{target_code}")));
                            let display = str_of(target, "display");
                            if !display.is_empty() {
                                target_cell.push(text(format!(" {display}")));
                            }
                        }
                        let mut when = Vec::new();
                        for dep in array(target, "dependsOn") {
                            let on = str_of(dep, "property");
                            let on = on.rsplit('/').next().unwrap_or(on);
                            when.push(format!("{on} = {}", str_of(dep, "value")));
                        }
                        if !when.is_empty() {
                            target_cell.push(text(format!(" (when {})", when.join(", "))));
                        }
                        rows.push(vec![
                            vec![
                                code(str_of(element, "code")),
                                text(format!(" {}", str_of(element, "display"))),
                            ],
                            target_cell,
                            vec![text(str_of(target, "equivalence"))],
                            vec![text(str_of(target, "comment"))],
                        ]);
                    }
                }
            }
            out.push(Block::Table(
                ["Source code", "Target", "Equivalence", "Comment"]
                    .map(String::from)
                    .to_vec(),
                rows,
            ));
        }
    }
}

/// Whether a snapshot element gets a row: constrained by the profile (in its differential,
/// except the containers of extension slices), must-support, or a required top-level element.
fn shown(e: &Value, in_differential: bool) -> bool {
    let path = str_of(e, "path");
    let sliced_container = (path.ends_with(".extension") || path.ends_with(".modifierExtension"))
        && e.get("sliceName").is_none();
    if sliced_container {
        return false;
    }
    let must_support = e
        .get("mustSupport")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let required_top =
        path.matches('.').count() == 1 && e.get("min").and_then(Value::as_u64) > Some(0);
    in_differential || must_support || required_top
}

/// The element's id without the root, with each `[x]` that allows one type replaced by that
/// type (`onset[x]` -> `onsetDateTime`).
fn display_name(snapshot: &[Value], id: &str) -> String {
    let mut out = String::new();
    let mut prefix = String::new();
    for (i, seg) in id.split('.').enumerate() {
        if i > 0 {
            prefix.push('.');
        }
        prefix.push_str(seg);
        if i == 0 {
            continue;
        }
        if !out.is_empty() {
            out.push('.');
        }
        let replaced = seg.strip_suffix("[x]").and_then(|stem| {
            let element = snapshot.iter().find(|e| str_of(e, "id") == prefix)?;
            let types: Vec<&str> = array(element, "type").map(|t| str_of(t, "code")).collect();
            match types.as_slice() {
                [only] => Some(format!("{stem}{}", crate::model::schema::capitalize(only))),
                _ => None,
            }
        });
        out.push_str(replaced.as_deref().unwrap_or(seg));
    }
    out
}

/// A fixed or pattern value in short form: a URI as is, codings as `system#code`, a Quantity
/// as its unit.
fn describe_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(o) if o.contains_key("coding") => array(v, "coding")
            .map(|c| format!("{}#{}", str_of(c, "system"), str_of(c, "code")))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(o) if o.contains_key("system") && o.contains_key("code") => {
            let system = str_of(v, "system");
            if system == "http://unitsofmeasure.org" {
                format!("UCUM {}", str_of(v, "code"))
            } else {
                format!("{system}#{}", str_of(v, "code"))
            }
        }
        other => other.to_string(),
    }
}

/// Rows for the concepts of a CodeSystem, children indented under their parent.
fn concept_rows(node: &Value, depth: usize, rows: &mut Vec<Vec<Vec<Inline>>>) {
    for c in array(node, "concept") {
        let indent = "\u{2003}".repeat(depth);
        rows.push(vec![
            vec![text(indent), code(str_of(c, "code"))],
            vec![text(str_of(c, "display"))],
            vec![text(str_of(c, "definition"))],
        ]);
        concept_rows(c, depth + 1, rows);
    }
}

/// Renders blocks as GitHub-flavoured Markdown.
pub fn markdown(blocks: &[Block]) -> String {
    let mut out = String::new();
    for b in blocks {
        match b {
            Block::Heading(level, t) => {
                let _ = writeln!(out, "{} {t}\n", "#".repeat(usize::from(*level)));
            }
            Block::Paragraph(inlines) => {
                let _ = writeln!(out, "{}\n", md_inlines(inlines, false));
            }
            Block::List(items) => {
                for item in items {
                    let _ = writeln!(out, "- {}", md_inlines(item, false));
                }
                out.push('\n');
            }
            Block::Table(head, rows) => {
                let _ = writeln!(out, "| {} |", head.join(" | "));
                let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
                for row in rows {
                    let cells: Vec<String> = row.iter().map(|c| md_inlines(c, true)).collect();
                    let _ = writeln!(out, "| {} |", cells.join(" | "));
                }
                out.push('\n');
            }
        }
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// Inline Markdown; in a table cell a `|` must be escaped even inside code.
fn md_inlines(inlines: &[Inline], in_table: bool) -> String {
    let mut out = String::new();
    for i in inlines {
        match i {
            Inline::Text(t) => out.push_str(&md_escape(t)),
            Inline::Code(c) => {
                let mut c = c.replace('\n', " ");
                if in_table {
                    c = c.replace('|', "\\|");
                }
                // A backtick inside code needs a longer fence.
                let fence = if c.contains('`') { "``" } else { "`" };
                let _ = write!(out, "{fence}{c}{fence}");
            }
            Inline::Link { text, anchor } => {
                let _ = write!(out, "[{}](#{anchor})", md_escape(text));
            }
        }
    }
    out
}

fn md_escape(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    for ch in t.chars() {
        match ch {
            '|' | '*' | '_' | '[' | ']' | '<' | '>' | '\\' | '`' => {
                out.push('\\');
                out.push(ch);
            }
            '\n' => out.push(' '),
            _ => out.push(ch),
        }
    }
    out
}

/// Renders blocks as a standalone HTML page.
pub fn html(blocks: &[Block]) -> String {
    let title = blocks
        .iter()
        .find_map(|b| match b {
            Block::Heading(1, t) => Some(t.as_str()),
            _ => None,
        })
        .unwrap_or("Data dictionary");
    let mut out =
        String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ = writeln!(out, "<title>{}</title>", html_escape(title));
    out.push_str(
        "<style>body{font-family:sans-serif;max-width:80em;margin:auto;padding:1em}\
         table{border-collapse:collapse;margin-bottom:1em}th,td{border:1px solid #ccc;\
         padding:.25em .5em;vertical-align:top;text-align:left}th{background:#f3f3f3}\
         code{font-size:90%}</style>\n</head>\n<body>\n",
    );
    for b in blocks {
        match b {
            Block::Heading(level, t) => {
                let id = anchor(t);
                let _ = writeln!(
                    out,
                    "<h{level} id=\"{}\">{}</h{level}>",
                    html_escape(&id),
                    html_escape(t)
                );
            }
            Block::Paragraph(inlines) => {
                let _ = writeln!(out, "<p>{}</p>", html_inlines(inlines));
            }
            Block::List(items) => {
                out.push_str("<ul>\n");
                for item in items {
                    let _ = writeln!(out, "<li>{}</li>", html_inlines(item));
                }
                out.push_str("</ul>\n");
            }
            Block::Table(head, rows) => {
                out.push_str("<table>\n<tr>");
                for h in head {
                    let _ = write!(out, "<th>{}</th>", html_escape(h));
                }
                out.push_str("</tr>\n");
                for row in rows {
                    out.push_str("<tr>");
                    for cell in row {
                        let _ = write!(out, "<td>{}</td>", html_inlines(cell));
                    }
                    out.push_str("</tr>\n");
                }
                out.push_str("</table>\n");
            }
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn html_inlines(inlines: &[Inline]) -> String {
    let mut out = String::new();
    for i in inlines {
        match i {
            Inline::Text(t) => out.push_str(&html_escape(t)),
            Inline::Code(c) => {
                let _ = write!(out, "<code>{}</code>", html_escape(c));
            }
            Inline::Link { text, anchor } => {
                let _ = write!(
                    out,
                    "<a href=\"#{}\">{}</a>",
                    html_escape(anchor),
                    html_escape(text)
                );
            }
        }
    }
    out
}

fn html_escape(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    for ch in t.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(ch),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_follow_github() {
        assert_eq!(
            anchor("A-IMAGIO subject (Patient)"),
            "a-imagio-subject-patient"
        );
        assert_eq!(
            anchor("Code system: Couinaud segment"),
            "code-system-couinaud-segment"
        );
    }

    #[test]
    fn markdown_escapes_table_cells() {
        let md = markdown(&[Block::Table(
            vec!["a".into()],
            vec![vec![vec![text("x | y"), code("p|q")]]],
        )]);
        assert_eq!(md, "| a |\n|---|\n| x \\| y`p\\|q` |\n");
    }

    #[test]
    fn html_escapes_and_links() {
        let page = html(&[
            Block::Heading(1, "T <1>".into()),
            Block::Paragraph(vec![Inline::Link {
                text: "a&b".into(),
                anchor: "t-1".into(),
            }]),
        ]);
        assert!(page.contains("<h1 id=\"t-1\">T &lt;1&gt;</h1>"));
        assert!(page.contains("<a href=\"#t-1\">a&amp;b</a>"));
    }

    #[test]
    fn the_embedded_dictionary_renders() {
        let registry = crate::profiles::study_registry(None).expect("embedded");
        let md = render(&registry, Format::Markdown).expect("markdown");
        assert!(md.contains("### A-IMAGIO subject (Patient)"));
        assert!(md.contains("`onsetDateTime`"));
        let page = render(&registry, Format::Html).expect("html");
        assert!(page.contains("<h3 id=\"a-imagio-subject-patient\">"));
    }
}
