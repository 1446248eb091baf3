//! Declarative mappings: site CSV exports into resources of the study profiles, the `map`
//! stage of the pipeline (ingest ──> **map** ──> validate ──> pseudonymize ──> store ──>
//! serve). A mapping is a TOML file (`mappings/README.md` is its reference); running it
//! reads the inputs once, produces one transaction Bundle of `PUT`s with ids derived from
//! the source keys (running it twice gives the same Bundle), and reports every problem with
//! the source `file:row:column` and the mapping `file:line` it comes from.
//!
//! - [`spec`]: the mapping format, read with lines.
//! - [`source`]: CSV decoding, dialects, header aliases, empty markers.
//! - [`convert`]: numbers, dates (incl. Excel serials), units, yes/no.
//! - [`conceptmap`]: local codes to study Codings through ConceptMaps.
//! - `eval`: rules applied to rows; [`out`]: the produced JSON with provenance.
//! - [`check`]: static checks of a mapping (`mapping check`); [`fixture`]: `mapping test`.
//! - [`cli`]: the `map`, `mapping check` and `mapping test` subcommands.
//!
//! Work is linear in the input: each file is read once, joins go through a hash index
//! built once per joined source, resources are deduplicated by id through a hash map.

pub mod check;
pub mod cli;
pub mod conceptmap;
pub mod convert;
mod eval;
pub mod fhir;
pub mod fixture;
pub mod out;
mod render;
pub mod report;
pub mod source;
pub mod spec;

pub use spec::{load, Mapping};

use crate::validate::{Severity, Validator};
use out::{CellRef, Prov};
use source::Table;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why a mapping could not run at all (a usage error, exit status 2). Problems in the data
/// are [`Diagnostic`]s instead.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The mapping file is wrong.
    #[error("{file}:{line}: {message}")]
    Mapping {
        /// The mapping file name.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The inputs do not fit the mapping's sources.
    #[error("{0}")]
    Inputs(String),
    /// The Bundle could not be written.
    #[error("cannot write the Bundle: {0}")]
    Write(std::io::Error),
    /// The study profiles could not be loaded.
    #[error("study profiles: {0}")]
    Profiles(#[from] crate::profiles::ProfilesError),
}

/// A source position: file, row (line), and cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePos {
    /// Input file name.
    pub file: String,
    /// 1-based line of the row.
    pub row: u32,
    /// 1-based cell number and its header, when one cell is meant (for a FHIR source:
    /// the column's FHIRPath expression).
    pub column: Option<(u32, String)>,
    /// For a FHIR source: how the row is counted and the resource it was read from.
    pub fhir: Option<FhirPos>,
}

/// The position of a row of a FHIR source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirPos {
    /// `row` is a Bundle entry index (0-based); otherwise a line (NDJSON, 1-based).
    pub entry: bool,
    /// `Type/id` of the source resource.
    pub resource: String,
}

impl fmt::Display for SourcePos {
    /// `patients.csv:4:3 [Geboortedatum]`, `export.json:entry[3] Condition/c1 [code.text]`
    /// or `export.ndjson:7 Condition/c1 [code.text]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.fhir {
            None => {
                write!(f, "{}:{}", self.file, self.row)?;
                if let Some((c, h)) = &self.column {
                    write!(f, ":{c} [{h}]")?;
                }
            }
            Some(p) => {
                if p.entry {
                    write!(f, "{}:entry[{}] {}", self.file, self.row, p.resource)?;
                } else {
                    write!(f, "{}:{} {}", self.file, self.row, p.resource)?;
                }
                if let Some((_, h)) = &self.column {
                    write!(f, " [{h}]")?;
                }
            }
        }
        Ok(())
    }
}

/// One problem found while mapping: in a row, a produced resource, or a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// How serious.
    pub severity: Severity,
    /// Where in the inputs.
    pub source: Option<SourcePos>,
    /// Mapping file name and line of the rule.
    pub mapping: Option<(String, usize)>,
    /// The produced resource (`Patient/nl01-p001`).
    pub resource: Option<String>,
    /// FHIRPath location in the resource, for validation issues.
    pub location: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    /// `error: patients.csv:4:3 [Geboortedatum]: mapping.toml:27: Patient/x: birthDate: msg`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.severity.code())?;
        if let Some(s) = &self.source {
            write!(f, "{s}: ")?;
        }
        if let Some((file, line)) = &self.mapping {
            write!(f, "{file}:{line}: ")?;
        }
        if let Some(r) = &self.resource {
            write!(f, "{r}: ")?;
        }
        if let Some(l) = &self.location {
            write!(f, "{l}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Every problem, in input order per resource rule.
    pub diagnostics: Vec<Diagnostic>,
    /// Data rows read.
    pub rows: usize,
    /// Resources in the Bundle.
    pub resources: usize,
}

impl Outcome {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity.is_error())
    }

    /// The counts line: `12 rows, 30 resources, 2 errors, 1 warning`.
    pub fn summary(&self) -> String {
        let count = |s: Severity| self.diagnostics.iter().filter(|d| d.severity == s).count();
        let errors = count(Severity::Error) + count(Severity::Fatal);
        let warnings = count(Severity::Warning);
        let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        format!(
            "{}, {}, {}, {}",
            plural(self.rows, "row"),
            plural(self.resources, "resource"),
            plural(errors, "error"),
            plural(warnings, "warning")
        )
    }
}

/// An input file: its name (as diagnostics show it and as matched against source
/// patterns) and its bytes.
#[derive(Debug, Clone)]
pub struct Input {
    /// File name.
    pub name: String,
    /// Content.
    pub bytes: Vec<u8>,
}

impl Input {
    /// Reads a file.
    ///
    /// # Errors
    /// When it cannot be read.
    pub fn read(path: &Path) -> Result<Input, MapError> {
        let bytes = std::fs::read(path).map_err(|source| MapError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        Ok(Input { name, bytes })
    }
}

/// Which sources each input belongs to: the one whose `files` pattern matches its name,
/// or, for FHIR exports, every FHIR source whose pattern matches (each selects its own
/// resources from the file).
///
/// # Errors
/// An input matching no source, or several when one of them is a CSV source, or a source
/// without input.
pub fn assign(mapping: &Mapping, inputs: &[Input]) -> Result<Vec<Vec<usize>>, MapError> {
    let mut out = Vec::new();
    for input in inputs {
        let hits: Vec<usize> = mapping
            .sources
            .iter()
            .enumerate()
            .filter(|(_, s)| source::matches_pattern(&s.files, &input.name))
            .map(|(i, _)| i)
            .collect();
        if hits.is_empty() {
            return Err(MapError::Inputs(format!(
                "{}: matches no source of the mapping ({})",
                input.name,
                patterns(mapping)
            )));
        }
        if hits.len() > 1 && hits.iter().any(|&i| mapping.sources[i].fhir.is_none()) {
            return Err(MapError::Inputs(format!(
                "{}: matches several sources ({}); make the files patterns distinct",
                input.name,
                patterns(mapping)
            )));
        }
        out.push(hits);
    }
    for (i, s) in mapping.sources.iter().enumerate() {
        if !out.iter().any(|h| h.contains(&i)) {
            return Err(MapError::Inputs(format!(
                "no input for source '{}' (files = \"{}\")",
                s.name, s.files
            )));
        }
    }
    Ok(out)
}

fn patterns(m: &Mapping) -> String {
    m.sources
        .iter()
        .map(|s| format!("{} = \"{}\"", s.name, s.files))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs a mapping over inputs: writes the transaction Bundle to `bundle` (resource by
/// resource: only the Bundle's text leaves memory, no tree is kept) and returns every
/// diagnostic. With a validator, each produced resource is validated against the profile
/// it claims and the issues are traced back to mapping lines and source cells (`warnings`
/// keeps validation warnings too; errors are always kept).
///
/// # Errors
/// When the inputs do not fit the mapping's sources ([`assign`]), or writing fails.
pub fn run(
    mapping: &Mapping,
    inputs: &[Input],
    validator: Option<&Validator>,
    warnings: bool,
    bundle: &mut dyn std::io::Write,
) -> Result<Outcome, MapError> {
    let assignment = assign(mapping, inputs)?;
    let mut diagnostics = Vec::new();
    let mut tables = Vec::new();
    for (input, &src) in inputs
        .iter()
        .zip(&assignment)
        .flat_map(|(i, srcs)| srcs.iter().map(move |s| (i, s)))
    {
        let source = &mapping.sources[src];
        let read = if source.fhir.is_some() {
            fhir::read(&input.bytes, &input.name, src, mapping).map(|(t, found)| {
                diagnostics.extend(found);
                t
            })
        } else {
            source::decode(&input.bytes, source.dialect.encoding)
                .and_then(|text| Table::read(&text, &input.name, src, source))
        };
        match read {
            Ok(t) => tables.push(t),
            Err(message) => diagnostics.push(Diagnostic {
                severity: Severity::Error,
                source: Some(SourcePos {
                    file: input.name.clone(),
                    row: 0,
                    column: None,
                    fhir: None,
                }),
                mapping: Some((mapping.file_name.clone(), source.line)),
                resource: None,
                location: None,
                message,
            }),
        }
    }
    let rows = tables.iter().map(|t| t.rows.len()).sum();
    let mut engine = eval::Engine::new(mapping, &tables, diagnostics);
    let mut issues = Vec::new();
    let mut writer = BundleWriter::new(bundle, &mapping.base);
    writer.start();
    let resources = engine.produce(validator.is_some(), &mut |p| {
        if let Some(v) = validator {
            validate_one(mapping, &tables, v, *p, warnings, &mut issues);
        }
        writer.entry(p.type_name, p.id, p.text);
    });
    writer.finish();
    if let Some(e) = writer.error {
        return Err(MapError::Write(e));
    }
    let mut diagnostics = engine.into_diagnostics();
    diagnostics.extend(issues);
    // The report reads per input row: by file, then row, then mapping line (stable, so
    // problems of one row keep the order of the rules).
    fn order(d: &Diagnostic) -> (Option<(&str, u32)>, Option<usize>) {
        (
            d.source.as_ref().map(|s| (s.file.as_str(), s.row)),
            d.mapping.as_ref().map(|m| m.1),
        )
    }
    diagnostics.sort_by(|a, b| order(a).cmp(&order(b)));
    Ok(Outcome {
        diagnostics,
        rows,
        resources,
    })
}

/// A produced resource, serialized.
#[derive(Debug)]
pub struct Produced {
    /// Resource type.
    pub type_name: String,
    /// Its id.
    pub id: String,
    /// The profile it claims.
    pub profile: String,
    /// The resource as indented JSON, indented for its place in a Bundle entry (lines
    /// after the first by [`ENTRY_DEPTH`] levels more; line numbers are those of the
    /// resource alone).
    pub text: String,
    /// The provenance of each line of `text`.
    pub lines: Vec<Prov>,
    /// The provenance of the resource as a whole (its rule).
    pub root: Prov,
    /// The row it came from (table, row).
    pub row: (usize, usize),
    /// Content members (JSON names) whose value could not be made (already reported):
    /// validation does not report them missing again.
    pub failed: Vec<String>,
}

/// A produced resource as the engine hands it over: borrowed from its buffers, which
/// the next resource reuses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Made<'a> {
    /// Resource type.
    pub type_name: &'a str,
    /// Its id.
    pub id: &'a str,
    /// The profile it claims.
    pub profile: &'a String,
    /// As [`Produced::text`].
    pub text: &'a str,
    /// As [`Produced::lines`] (empty unless asked for).
    pub lines: &'a [Prov],
    /// As [`Produced::root`].
    pub root: Prov,
    /// As [`Produced::row`].
    pub row: (usize, usize),
    /// As [`Produced::failed`].
    pub failed: &'a [String],
}

impl Made<'_> {
    /// An owned copy.
    fn to_produced(self) -> Produced {
        Produced {
            type_name: self.type_name.to_string(),
            id: self.id.to_string(),
            profile: self.profile.clone(),
            text: self.text.to_string(),
            lines: self.lines.to_vec(),
            root: self.root,
            row: self.row,
            failed: self.failed.to_vec(),
        }
    }
}

/// How deep a resource sits in the transaction Bundle (`entry` > item > `resource`): the
/// depth [`Produced::text`] is indented for.
pub const ENTRY_DEPTH: usize = 3;

/// Writes the transaction Bundle entry by entry, in the layout of [`out::write`] (the
/// same text as writing the Bundle as one tree).
struct BundleWriter<'w> {
    out: &'w mut dyn std::io::Write,
    base: &'w str,
    count: usize,
    error: Option<std::io::Error>,
    /// The text of the entry being written (kept to reuse its allocation).
    buf: String,
    /// The entry's relative URL (likewise).
    url: String,
    /// Whether `base` needs no escaping in JSON.
    plain_base: bool,
}

/// Whether a text is written in JSON as it is (between quotes).
fn json_plain(s: &str) -> bool {
    render::json_plain(s.as_bytes())
}

impl<'w> BundleWriter<'w> {
    /// A writer of the Bundle to `out`, with `fullUrl`s on `base`.
    fn new(out: &'w mut dyn std::io::Write, base: &'w str) -> BundleWriter<'w> {
        let base = base.trim_end_matches('/');
        BundleWriter {
            out,
            base,
            count: 0,
            error: None,
            buf: String::new(),
            url: String::new(),
            plain_base: json_plain(base),
        }
    }
}

impl BundleWriter<'_> {
    fn put(&mut self, s: &str) {
        if self.error.is_none() {
            if let Err(e) = self.out.write_all(s.as_bytes()) {
                self.error = Some(e);
            }
        }
    }

    fn start(&mut self) {
        self.put(
            "{\n  \"resourceType\": \"Bundle\",\n  \"type\": \"transaction\",\n  \"entry\": [",
        );
    }

    fn entry(&mut self, type_name: &str, id: &str, text: &str) {
        if self.plain_base && json_plain(type_name) && json_plain(id) {
            self.plain_entry(type_name, id, text);
            return;
        }
        let mut s = std::mem::take(&mut self.buf);
        s.clear();
        let mut url = std::mem::take(&mut self.url);
        url.clear();
        url.push_str(type_name);
        url.push('/');
        url.push_str(id);
        if self.count > 0 {
            s.push(',');
        }
        s.push_str("\n    {\n      \"fullUrl\": ");
        let rel = url.len();
        url.push_str(self.base);
        url.push('/');
        url.push_str(type_name);
        url.push('/');
        url.push_str(id);
        crate::model::json::write_str(&mut s, &url[rel..]);
        url.truncate(rel);
        s.push_str(",\n      \"resource\": ");
        self.put(&s);
        // The text is already indented for its place in the entry, and written as it is
        // (not copied into the entry's text first).
        self.put(text.trim_end());
        s.clear();
        s.push_str(",\n      \"request\": {\n        \"method\": \"PUT\",\n        \"url\": ");
        crate::model::json::write_str(&mut s, &url);
        s.push_str("\n      }\n    }");
        self.put(&s);
        self.buf = s;
        self.url = url;
        self.count += 1;
    }

    /// [`BundleWriter::entry`] when the base, type and id need no escaping: the same
    /// text, without building the URLs first.
    fn plain_entry(&mut self, type_name: &str, id: &str, text: &str) {
        let mut s = std::mem::take(&mut self.buf);
        s.clear();
        if self.count > 0 {
            s.push(',');
        }
        s.push_str("\n    {\n      \"fullUrl\": \"");
        s.push_str(self.base);
        s.push('/');
        s.push_str(type_name);
        s.push('/');
        s.push_str(id);
        s.push_str("\",\n      \"resource\": ");
        self.put(&s);
        self.put(text.trim_end());
        s.clear();
        s.push_str(",\n      \"request\": {\n        \"method\": \"PUT\",\n        \"url\": \"");
        s.push_str(type_name);
        s.push('/');
        s.push_str(id);
        s.push_str("\"\n      }\n    }");
        self.put(&s);
        self.buf = s;
        self.count += 1;
    }

    fn finish(&mut self) {
        if self.count > 0 {
            self.put("\n  ]\n}\n");
        } else {
            self.put("]\n}\n");
        }
        if self.error.is_none() {
            if let Err(e) = self.out.flush() {
                self.error = Some(e);
            }
        }
    }
}

/// The position of a cell for diagnostics.
fn cell_pos(tables: &[Table], c: CellRef) -> Option<SourcePos> {
    let t = tables.get(c.table as usize)?;
    let row = t.rows.get(c.row as usize)?;
    Some(SourcePos {
        file: t.file.clone(),
        row: row.line,
        column: Some((
            c.col + 1,
            t.headers.get(c.col as usize).cloned().unwrap_or_default(),
        )),
        fhir: fhir_pos(t, c.row as usize),
    })
}

/// The position of a row for diagnostics.
fn row_pos(tables: &[Table], table: usize, row: usize) -> Option<SourcePos> {
    let t = tables.get(table)?;
    Some(SourcePos {
        file: t.file.clone(),
        row: t.rows.get(row)?.line,
        column: None,
        fhir: fhir_pos(t, row),
    })
}

/// The FHIR part of a row's position, for rows of FHIR sources.
fn fhir_pos(t: &Table, row: usize) -> Option<FhirPos> {
    let f = t.fhir.as_ref()?;
    Some(FhirPos {
        entry: f.bundle,
        resource: f.labels.get(row).cloned().unwrap_or_default(),
    })
}

fn validate_one(
    mapping: &Mapping,
    tables: &[Table],
    validator: &Validator,
    p: Made<'_>,
    warnings: bool,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let (text, lines) = (p.text, p.lines);
    let failed: Vec<String> = if p.failed.is_empty() {
        Vec::new()
    } else {
        let info = crate::model::schema::type_info(p.type_name);
        p.failed
            .iter()
            .filter_map(|k| {
                let child = info?.child(k)?;
                let element = info?.elements.get(child.element as usize)?;
                Some(format!("{}.{}", p.type_name, element.name))
            })
            .collect()
    };
    // Only errors, and warnings when asked for, are reported: the validator need not look
    // for anything less.
    let least = if warnings {
        Severity::Warning
    } else {
        Severity::Error
    };
    for issue in validator.validate_json_least(text, std::slice::from_ref(p.profile), least) {
        if !(issue.severity.is_error() || warnings && issue.severity == Severity::Warning) {
            continue;
        }
        // A value that could not be made was reported with its cell; its absence, and
        // what the element lacks without it, are not news.
        if failed.iter().any(|f| {
            issue.location == *f
                || issue.location.starts_with(&format!("{f}["))
                || issue.location.starts_with(&format!("{f}."))
        }) {
            continue;
        }
        let prov = issue
            .line
            .and_then(|l| lines.get(l.saturating_sub(1)))
            .copied()
            .unwrap_or(p.root);
        diagnostics.push(Diagnostic {
            severity: issue.severity,
            source: prov
                .cell
                .and_then(|c| cell_pos(tables, c))
                .or_else(|| row_pos(tables, p.row.0, p.row.1)),
            mapping: Some((mapping.file_name.clone(), prov.line as usize)),
            resource: Some(format!("{}/{}", p.type_name, p.id)),
            location: Some(issue.location.clone()).filter(|l| !l.is_empty()),
            message: issue.message.clone(),
        });
    }
}

/// A validator over the study profiles (embedded, or the folder given).
///
/// # Errors
/// When the profiles folder cannot be read.
pub fn study_validator(profiles_dir: Option<&Path>) -> Result<Validator, MapError> {
    Ok(Validator::new(crate::profiles::study_registry(
        profiles_dir,
    )?))
}

/// Runs a mapping over tables its caller has read (the server's `/ingest` reads uploads,
/// the bulk `import` reads its inputs in batches) and returns the produced resources with
/// the outcome, instead of writing a Bundle as [`run`] does: the caller decides which
/// resources go on (all or nothing, or only those of rows without errors) and writes them
/// with [`write_bundle`]. `diagnostics` are problems its caller met reading the inputs;
/// they are sorted with the rest, as in [`run`].
pub fn produce(
    mapping: &Mapping,
    tables: &[Table],
    diagnostics: Vec<Diagnostic>,
    validator: Option<&Validator>,
    warnings: bool,
) -> (Vec<Produced>, Outcome) {
    let rows = tables.iter().map(|t| t.rows.len()).sum();
    let mut engine = eval::Engine::new(mapping, tables, diagnostics);
    let mut issues = Vec::new();
    let mut produced = Vec::new();
    let resources = engine.produce(true, &mut |p| {
        if let Some(v) = validator {
            validate_one(mapping, tables, v, *p, warnings, &mut issues);
        }
        produced.push(p.to_produced());
    });
    let mut diagnostics = engine.into_diagnostics();
    diagnostics.extend(issues);
    fn order(d: &Diagnostic) -> (Option<(&str, u32)>, Option<usize>) {
        (
            d.source.as_ref().map(|s| (s.file.as_str(), s.row)),
            d.mapping.as_ref().map(|m| m.1),
        )
    }
    diagnostics.sort_by(|a, b| order(a).cmp(&order(b)));
    (
        produced,
        Outcome {
            diagnostics,
            rows,
            resources,
        },
    )
}

/// Writes produced resources as the transaction Bundle [`run`] writes (`PUT Type/id`
/// entries, `fullUrl`s on the mapping's base).
///
/// # Errors
/// When writing fails.
pub fn write_bundle<'p>(
    mapping: &Mapping,
    produced: impl IntoIterator<Item = &'p Produced>,
    out: &mut dyn std::io::Write,
) -> Result<(), MapError> {
    let mut writer = BundleWriter::new(out, &mapping.base);
    writer.start();
    for p in produced {
        writer.entry(&p.type_name, &p.id, &p.text);
    }
    writer.finish();
    match writer.error {
        Some(e) => Err(MapError::Write(e)),
        None => Ok(()),
    }
}
