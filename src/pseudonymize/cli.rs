//! `imagio-gateway deidentify`: the policy applied at the site, to files, with the same
//! pseudonyms as the server would give (same policy, key and site code).

use super::Pseudonymizer;
use crate::model::json::Json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Deepest JSON nesting read (as the server's default).
const MAX_DEPTH: usize = 128;

/// De-identifies one JSON document (a resource or a Bundle); `name` names it in errors.
///
/// # Errors
/// `name:line:column: message` for JSON that does not parse, `name: location: reason`
/// when the policy refuses it.
pub fn deidentify_text(
    p: &Pseudonymizer,
    site: &str,
    text: &str,
    name: &str,
) -> Result<String, String> {
    let json = Json::parse(text, MAX_DEPTH).map_err(|e| {
        let (line, column) = line_column(text, e.offset);
        format!("{name}:{line}:{column}: {}", e.message)
    })?;
    if !matches!(json, Json::Object(_)) || json.get("resourceType").is_none() {
        return Err(format!("{name}: not a FHIR resource (no resourceType)"));
    }
    p.apply(site, json)
        .map(|j| j.to_text())
        .map_err(|u| format!("{name}: {u}"))
}

/// De-identifies NDJSON text line by line (blank lines skipped).
///
/// # Errors
/// The first failing line, as `name:line: ...`.
pub fn deidentify_ndjson(
    p: &Pseudonymizer,
    site: &str,
    text: &str,
    name: &str,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{name}:{}", i + 1);
        out.push_str(&deidentify_text(p, site, line, &at)?);
        out.push('\n');
    }
    Ok(out)
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, column)
}

/// Files named by `paths`: files as given, folders walked for `*.json` and `*.ndjson`.
fn inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|f| {
                    f.is_file() && f.extension().is_some_and(|x| x == "json" || x == "ndjson")
                })
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Runs `deidentify`: every input file de-identified into `out` (same file name), or to
/// standard output without `out`. Exit 0 when all were written, 1 when the policy refused
/// some (nothing written for them), 2 when inputs or the output cannot be used.
pub fn run(p: &Pseudonymizer, site: &str, paths: &[PathBuf], out: Option<&Path>) -> ExitCode {
    let files = match inputs(paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = out {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("error: {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    }
    let mut refused = 0;
    for f in &files {
        let name = f.display().to_string();
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {name}: {e}");
                return ExitCode::from(2);
            }
        };
        let ndjson = f.extension().is_some_and(|x| x == "ndjson");
        let result = if ndjson {
            deidentify_ndjson(p, site, &text, &name)
        } else {
            deidentify_text(p, site, &text, &name).map(|mut t| {
                t.push('\n');
                t
            })
        };
        let done = match result {
            Ok(d) => d,
            Err(e) => {
                eprintln!("refused {e}");
                refused += 1;
                continue;
            }
        };
        match (out, f.file_name()) {
            (Some(dir), Some(file)) => {
                let target = dir.join(file);
                if let Err(e) = std::fs::write(&target, done) {
                    eprintln!("error: {}: {e}", target.display());
                    return ExitCode::from(2);
                }
                eprintln!("de-identified {name} -> {}", target.display());
            }
            _ => print!("{done}"),
        }
    }
    if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
