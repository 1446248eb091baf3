//! The mapping author's subcommands: `map`, `mapping check` and `mapping test`.
//!
//! Exit status: 0 when everything is valid (or every fixture passes), 1 when a row, a
//! produced resource or a fixture has an error, 2 on a usage error (a mapping that does not
//! parse, an input that cannot be read or fits no source, unknown profiles folder).

use super::{check, fixture, load, run, study_validator, Diagnostic, Input, MapError};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn usage(e: &MapError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<Input>, MapError> {
    paths.iter().map(|p| Input::read(p)).collect()
}

/// `map`: runs `mapping` over `inputs`, writes the Bundle to `out` (or standard output),
/// the report (one diagnostic per line and a summary) to standard error and, with
/// `report`, the same diagnostics as JSON ([`super::report`]) to that file.
/// `warnings` also reports validation warnings; `no_validate` skips validation.
pub fn map(
    profiles_dir: Option<&Path>,
    mapping: &Path,
    inputs: &[PathBuf],
    out: Option<&Path>,
    report: Option<&Path>,
    warnings: bool,
    no_validate: bool,
) -> ExitCode {
    let m = match load(mapping) {
        Ok(m) => m,
        Err(e) => return usage(&e),
    };
    let inputs = match read_all(inputs) {
        Ok(i) => i,
        Err(e) => return usage(&e),
    };
    let validator = if no_validate {
        None
    } else {
        match study_validator(profiles_dir) {
            Ok(v) => Some(v),
            Err(e) => return usage(&e),
        }
    };
    // Inputs that fit no source are a usage error: found before any output is made.
    if let Err(e) = super::assign(&m, &inputs) {
        return usage(&e);
    }
    let result = match out {
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => run(
                &m,
                &inputs,
                validator.as_ref(),
                warnings,
                &mut std::io::BufWriter::new(f),
            ),
            Err(source) => Err(MapError::Io {
                path: path.to_path_buf(),
                source,
            }),
        },
        None => run(
            &m,
            &inputs,
            validator.as_ref(),
            warnings,
            &mut std::io::BufWriter::new(std::io::stdout().lock()),
        ),
    };
    let outcome = match result {
        Ok(o) => o,
        Err(e) => return usage(&e),
    };
    let mut text = String::new();
    for d in &outcome.diagnostics {
        text.push_str(&d.to_string());
        text.push('\n');
    }
    eprintln!("{text}{}: {}", m.name, outcome.summary());
    if let Some(path) = report {
        let json = super::report::to_json(&m.name, &outcome);
        let written = serde_json::to_string_pretty(&json)
            .map_err(std::io::Error::other)
            .and_then(|s| std::fs::write(path, s + "\n"));
        if let Err(e) = written {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if outcome.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn print(diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        println!("{d}");
    }
}

/// `mapping check`: static checks, one line per finding; exit 1 when one is an error.
pub fn check(profiles_dir: Option<&Path>, mapping: &Path, samples: &[PathBuf]) -> ExitCode {
    let m = match load(mapping) {
        Ok(m) => m,
        Err(e) => return usage(&e),
    };
    let samples = match read_all(samples) {
        Ok(s) => s,
        Err(e) => return usage(&e),
    };
    let validator = match study_validator(profiles_dir) {
        Ok(v) => v,
        Err(e) => return usage(&e),
    };
    let found = check::check(&m, &samples, &validator);
    print(&found);
    let errors = found.iter().filter(|d| d.severity.is_error()).count();
    println!(
        "{}: {} errors, {} warnings",
        m.file_name,
        errors,
        found.len() - errors
    );
    if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `mapping test`: runs the fixtures of a mapping folder (`update` rewrites the expected
/// files); exit 1 when a fixture fails.
pub fn test(profiles_dir: Option<&Path>, dir: &Path, update: bool) -> ExitCode {
    let loaded = fixture::mapping_file(dir).and_then(|p| load(&p));
    let m = match loaded {
        Ok(m) => m,
        Err(e) => return usage(&e),
    };
    let validator = match study_validator(profiles_dir) {
        Ok(v) => v,
        Err(e) => return usage(&e),
    };
    let results = match fixture::run_fixtures(&m, dir, &validator, update) {
        Ok(r) => r,
        Err(e) => return usage(&e),
    };
    if results.is_empty() {
        eprintln!("error: {}: no fixtures/NAME folders", dir.display());
        return ExitCode::from(2);
    }
    let mut failed = 0;
    for r in &results {
        if update {
            println!("updated {} ({} resources)", r.name, r.resources);
        } else if r.differences.is_empty() {
            println!("ok   {} ({} resources)", r.name, r.resources);
        } else {
            failed += 1;
            println!("FAIL {}", r.name);
            for d in &r.differences {
                println!("     {d}");
            }
        }
    }
    println!(
        "{}: {} fixtures, {} passed, {failed} failed",
        m.name,
        results.len(),
        results.len() - failed
    );
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
