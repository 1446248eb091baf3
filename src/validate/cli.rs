//! `imagio-gateway validate`: validate FHIR JSON files from the command line.
//!
//! Exit status: 0 when no issue is an error or fatal, 1 when one is, 2 on a usage or file
//! error (a `--load` file that cannot be read or is not a definition, a missing input).

use super::{has_errors, operation_outcome, Issue, Validator};
use crate::definitions::Registry;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// How to print the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// One OperationOutcome (JSON) per input file, one per line.
    #[default]
    Json,
    /// One line per issue: `file:line:column: severity: location: message`.
    Text,
}

/// Runs the subcommand. `registry` holds the definitions to check against (the R4 core plus
/// the study profiles, see [`crate::profiles::study_registry`]); `loads` are definition files
/// added on top (StructureDefinition, ValueSet, CodeSystem, or Bundles of them), `profiles`
/// canonical URLs every input is checked against (besides the profiles it claims), `files`
/// the inputs.
pub fn run(
    registry: Registry,
    loads: &[PathBuf],
    profiles: &[String],
    files: &[PathBuf],
    format: Format,
) -> ExitCode {
    let mut registry = registry;
    for path in loads {
        if let Err(e) = load_into(&mut registry, path) {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if files.is_empty() {
        eprintln!("error: no input files");
        return ExitCode::from(2);
    }
    let validator = Validator::new(registry);
    let mut any_error = false;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        let issues = validator.validate_json(&text, profiles);
        any_error |= has_errors(&issues);
        let _ = match format {
            Format::Json => writeln!(out, "{}", operation_outcome(&issues)),
            Format::Text => write_text(&mut out, path, &issues),
        };
    }
    if any_error {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn write_text(out: &mut impl std::io::Write, path: &Path, issues: &[Issue]) -> std::io::Result<()> {
    if issues.is_empty() {
        return writeln!(out, "{}: ok", path.display());
    }
    for i in issues {
        writeln!(out, "{}:{i}", path.display())?;
    }
    Ok(())
}

/// Adds the definitions in a JSON file to a registry.
///
/// # Errors
/// A message when the file cannot be read, is not JSON, or holds no definition.
pub fn load_into(registry: &mut Registry, path: &Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    registry.add(value).map_err(|e| e.to_string())
}
