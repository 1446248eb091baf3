//! Ingest of site exports through a mapping, the `ingest` stage of the pipeline
//! (**ingest** ──> map ──> validate ──> pseudonymize ──> store ──> serve): what the
//! server's `POST /fhir/ingest/{mapping}` and the bulk `import` command share.
//!
//! - [`Mappings`]: the mapping folders a server offers (`serve --mappings DIR`).
//! - [`read_tables`]: uploaded files decoded and read for their sources, problems as
//!   diagnostics.
//! - [`failed_rows`]: which input rows a set of diagnostics condemns (every resource of a
//!   row with an error is left out, so a row loads whole or not at all).
//! - [`stream`]: CSV files cut into batches of whole records without reading them whole.
//! - [`import`]: `imagio-gateway import`, the streaming bulk import with its report.
//!
//! Both paths write through the server's own transaction path (`serve::ingest`), with the
//! raw input as the ledger payload.

pub mod import;
mod progress;
pub mod stream;

use crate::map::source::Table;
use crate::map::{Diagnostic, MapError, Mapping, Produced, SourcePos};
use crate::validate::Severity;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why ingest could not run (as opposed to problems in the data, which are
/// [`Diagnostic`]s).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A mapping could not be loaded.
    #[error(transparent)]
    Mapping(#[from] MapError),
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Two mapping folders declare the same `[mapping] name`.
    #[error("mappings {0} and {1} have the same name '{2}'")]
    DuplicateName(PathBuf, PathBuf, String),
    /// The inputs do not fit the mapping, or the command was used wrongly.
    #[error("{0}")]
    Usage(String),
    /// The database.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The server state (definitions) could not be built.
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
    /// A batch could not be committed for a reason that is not in its rows.
    #[error("{0}")]
    Commit(String),
}

/// The mappings a server offers, by their `[mapping] name`.
#[derive(Debug, Default, Clone)]
pub struct Mappings {
    by_name: BTreeMap<String, Arc<Mapping>>,
}

impl Mappings {
    /// Loads every `DIR/*/mapping.toml` (a folder per mapping, as in `mappings/`).
    ///
    /// # Errors
    /// When the folder cannot be read, a mapping does not load, or two share a name.
    pub fn load(dir: &Path) -> Result<Mappings, IngestError> {
        let io = |source| IngestError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|e| e.path().join("mapping.toml"))
            .filter(|p| p.is_file())
            .collect();
        folders.sort();
        let mut by_name: BTreeMap<String, Arc<Mapping>> = BTreeMap::new();
        for path in folders {
            let m = crate::map::load(&path)?;
            if let Some(other) = by_name.get(&m.name) {
                return Err(IngestError::DuplicateName(
                    other.path.clone(),
                    path,
                    m.name.clone(),
                ));
            }
            by_name.insert(m.name.clone(), Arc::new(m));
        }
        Ok(Mappings { by_name })
    }

    /// The mapping called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Mapping>> {
        self.by_name.get(name).cloned()
    }

    /// The names offered, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }
}

/// One input file for a source: (source index, file name as diagnostics show it, bytes).
pub type SourceInput<'a> = (usize, String, &'a [u8]);

/// Decodes and reads each input for its source. A file that cannot be read (bad UTF-8,
/// an unclosed quote, no header) is a diagnostic on its row 0, as `map` reports it.
pub fn read_tables(mapping: &Mapping, inputs: &[SourceInput<'_>]) -> (Vec<Table>, Vec<Diagnostic>) {
    let mut tables = Vec::with_capacity(inputs.len());
    let mut diagnostics = Vec::new();
    for (src, name, bytes) in inputs {
        let source = &mapping.sources[*src];
        let read = if source.fhir.is_some() {
            crate::map::fhir::read(bytes, name, *src, mapping).map(|(t, found)| {
                diagnostics.extend(found);
                t
            })
        } else {
            crate::map::source::decode(bytes, source.dialect.encoding)
                .and_then(|text| Table::read(&text, name, *src, source))
        };
        match read {
            Ok(t) => tables.push(t),
            Err(message) => diagnostics.push(file_diagnostic(mapping, *src, name, 0, message)),
        }
    }
    (tables, diagnostics)
}

/// A problem with a whole file (or from `row` on), at the mapping line of its source.
pub fn file_diagnostic(
    mapping: &Mapping,
    source: usize,
    file: &str,
    row: u32,
    message: String,
) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        source: Some(SourcePos {
            file: file.to_string(),
            row,
            column: None,
            fhir: None,
        }),
        mapping: Some((
            mapping.file_name.clone(),
            mapping.sources.get(source).map_or(0, |s| s.line),
        )),
        resource: None,
        location: None,
        message,
    }
}

/// Checks that every source of the mapping has an input.
///
/// # Errors
/// [`IngestError::Usage`] naming the first source without one.
pub fn require_all_sources(mapping: &Mapping, given: &[usize]) -> Result<(), IngestError> {
    for (i, s) in mapping.sources.iter().enumerate() {
        if !given.contains(&i) {
            return Err(IngestError::Usage(format!(
                "no input for source '{}' of mapping '{}' (sources: {})",
                s.name,
                mapping.name,
                source_names(mapping)
            )));
        }
    }
    Ok(())
}

/// The mapping's source names, comma-separated.
pub fn source_names(mapping: &Mapping) -> String {
    mapping
        .sources
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rows (file name, line) an error diagnostic is about, and the rows that produced a
/// resource an error names: nothing of them may load. Header-level problems (row 0 or 1)
/// are returned separately: they concern the whole file.
pub fn failed_rows(
    tables: &[Table],
    produced: &[Produced],
    diagnostics: &[Diagnostic],
) -> (HashSet<(String, u32)>, Vec<Diagnostic>) {
    let mut rows = HashSet::new();
    let mut whole = Vec::new();
    let mut resources = HashSet::new();
    for d in diagnostics.iter().filter(|d| d.severity.is_error()) {
        match &d.source {
            Some(s) if s.row > 1 => {
                rows.insert((s.file.clone(), s.row));
            }
            Some(_) | None if d.resource.is_none() => whole.push(d.clone()),
            _ => {}
        }
        if let Some(r) = &d.resource {
            resources.insert(r.as_str());
        }
    }
    for p in produced {
        if resources.contains(format!("{}/{}", p.type_name, p.id).as_str()) {
            if let Some(pos) = row_of(tables, p) {
                rows.insert(pos);
            }
        }
    }
    (rows, whole)
}

/// The (file, line) of the row a resource was produced from.
pub fn row_of(tables: &[Table], p: &Produced) -> Option<(String, u32)> {
    let t = tables.get(p.row.0)?;
    Some((t.file.clone(), t.rows.get(p.row.1)?.line))
}

/// Whether a media type (a `Content-Type` value) is one of `names`, parameters ignored.
pub fn media_type_is(content_type: &str, names: &[&str]) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    names.contains(&essence.as_str())
}

/// The FHIR media types (JSON Bundle or resource, NDJSON) that FHIR-source mappings take.
pub const FHIR_TYPES: &[&str] = &[
    "application/fhir+json",
    "application/json",
    "application/fhir+ndjson",
    "application/ndjson",
    "application/x-ndjson",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_mappings_load_by_name() {
        let m = Mappings::load(Path::new("mappings")).expect("mappings");
        assert!(m.names().contains(&"nl01-retrospective"), "{:?}", m.names());
        assert!(m.get("nl01-retrospective").is_some());
        assert!(m.get("nope").is_none());
    }

    #[test]
    fn media_types() {
        assert!(media_type_is("text/CSV; charset=latin1", &["text/csv"]));
        assert!(!media_type_is("text/plain", &["text/csv"]));
        assert!(media_type_is("application/x-ndjson", FHIR_TYPES));
    }
}
