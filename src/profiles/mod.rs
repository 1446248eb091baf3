//! The study profiles: the A-IMAGIO canonical model as FHIR R4 conformance resources
//! (StructureDefinitions, extensions, CodeSystems, ValueSets, ConceptMaps), the single
//! source of truth every stage checks study data against.
//!
//! The files live under `profiles/` in the repository (`profiles/README.md` describes the
//! layout). The binary embeds every `*.json` there except `profiles/examples/` and the
//! ViewDefinitions of `profiles/views/` (`src/views` embeds those) (the list is
//! made by `build.rs`); `--profiles DIR` replaces the embedded set with the files of a
//! folder of the same layout, so a study can change its profiles without a rebuild.
//!
//! - [`study_registry`]: the R4 core plus the study definitions, ready for a
//!   [`Validator`](crate::validate::Validator).
//! - [`doc`]: the data dictionary (`imagio-gateway profiles doc`).

pub mod doc;

use crate::definitions::{Registry, RegistryError};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// The canonical base URL of every study definition
/// (`{CANONICAL_BASE}/StructureDefinition/imagio-subject`). The only definitions outside it
/// are the published ones the study defines locally (the `ae-grade` extension and its
/// grade ValueSet).
pub const CANONICAL_BASE: &str = "https://a-imagio.eu/fhir";

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_profiles.rs"));
}

/// Why the study definitions could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfilesError {
    /// A file or folder could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not JSON.
    #[error("{path}: not JSON: {source}")]
    Json {
        /// The file, relative to the profiles folder.
        path: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A file is not a definition the registry keeps.
    #[error("{path}: {source}")]
    Registry {
        /// The file, relative to the profiles folder.
        path: String,
        /// Why the registry refused it.
        source: RegistryError,
    },
    /// The folder holds no definition.
    #[error("{}: no study definitions (*.json outside examples/) found", .0.display())]
    Empty(PathBuf),
}

/// One study definition file: its path under the profiles folder (`/`-separated) and text.
#[derive(Debug, Clone)]
pub struct DefinitionFile {
    /// Path relative to the profiles folder (`extensions/StructureDefinition-ae-grade.json`).
    pub path: String,
    /// The JSON text.
    pub text: Cow<'static, str>,
}

/// The study definition files: the embedded ones, or those of `dir` (every `*.json` below it
/// except the top-level `examples/` folder), sorted by path.
///
/// # Errors
/// When `dir` or a file in it cannot be read, or `dir` holds no definition.
pub fn files(dir: Option<&Path>) -> Result<Vec<DefinitionFile>, ProfilesError> {
    let Some(dir) = dir else {
        return Ok(embedded::EMBEDDED
            .iter()
            .map(|(path, text)| DefinitionFile {
                path: (*path).to_string(),
                text: Cow::Borrowed(*text),
            })
            .collect());
    };
    let mut paths = Vec::new();
    collect(dir, dir, &mut paths)?;
    paths.sort();
    if paths.is_empty() {
        return Err(ProfilesError::Empty(dir.to_path_buf()));
    }
    paths
        .into_iter()
        .map(|rel| {
            let full = dir.join(&rel);
            std::fs::read_to_string(&full)
                .map(|text| DefinitionFile {
                    path: rel,
                    text: Cow::Owned(text),
                })
                .map_err(|source| ProfilesError::Read { path: full, source })
        })
        .collect()
}

/// The `*.json` files below `dir`, relative to `root`, skipping `root/examples` and `root/views`.
fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), ProfilesError> {
    let read = |e| ProfilesError::Read {
        path: dir.to_path_buf(),
        source: e,
    };
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if path.is_dir() {
            if parts.len() == 1 && (parts[0] == "examples" || parts[0] == "views") {
                continue;
            }
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(parts.join("/"));
        }
    }
    Ok(())
}

/// The R4 core definitions plus the study definitions: the embedded ones when `dir` is
/// `None`, otherwise those of `dir` (which replace the embedded set entirely).
///
/// # Errors
/// When a file cannot be read, is not JSON, or is not a definition the registry keeps
/// (StructureDefinition, ValueSet, CodeSystem, ConceptMap, ... or a Bundle of them).
pub fn study_registry(dir: Option<&Path>) -> Result<Registry, ProfilesError> {
    load(&files(dir)?)
}

fn load(files: &[DefinitionFile]) -> Result<Registry, ProfilesError> {
    let mut registry = Registry::core();
    for file in files {
        let value: serde_json::Value =
            serde_json::from_str(&file.text).map_err(|source| ProfilesError::Json {
                path: file.path.clone(),
                source,
            })?;
        registry
            .add(value)
            .map_err(|source| ProfilesError::Registry {
                path: file.path.clone(),
                source,
            })?;
    }
    Ok(registry)
}

/// Loads the study definitions and writes one line saying which are in force (for `serve`).
///
/// # Errors
/// When the study definitions cannot be loaded.
pub fn report(dir: Option<&Path>, out: &mut impl std::io::Write) -> Result<(), ProfilesError> {
    let files = files(dir)?;
    load(&files)?;
    let from = dir.map_or_else(|| "embedded".to_string(), |d| d.display().to_string());
    let _ = writeln!(out, "study definitions: {} files ({from})", files.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::Kind;

    #[test]
    fn embedded_definitions_load() {
        let registry = study_registry(None).expect("embedded definitions load");
        let subject = format!("{CANONICAL_BASE}/StructureDefinition/imagio-subject");
        assert!(registry.get(Kind::StructureDefinition, &subject).is_some());
        assert!(files(None)
            .expect("embedded")
            .iter()
            .all(|f| !f.path.starts_with("examples/")));
    }

    #[test]
    fn a_folder_without_definitions_is_an_error() {
        let dir =
            std::env::temp_dir().join(format!("imagio-empty-profiles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        assert!(matches!(
            study_registry(Some(&dir)),
            Err(ProfilesError::Empty(_))
        ));
        let _ = std::fs::remove_dir(&dir);
    }
}
