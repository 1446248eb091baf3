//! Fixture tests of a mapping folder (`imagio-gateway mapping test DIR`).
//!
//! `DIR` holds the mapping (`mapping.toml`, or its only `*.toml`) and `fixtures/NAME/`
//! folders, each with input files, the expected Bundle `expected.json` and, optionally,
//! the expected report `expected-report.txt` (one diagnostic per line, as `map` prints
//! them). Without an expected report a fixture must map without errors. A failure shows
//! which values differ, by JSON path, and which report lines are missing or extra.

use super::{run, Input, MapError, Mapping};
use crate::validate::Validator;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The result of one fixture.
#[derive(Debug)]
pub struct FixtureResult {
    /// The fixture folder name.
    pub name: String,
    /// Differences (empty: passed).
    pub differences: Vec<String>,
    /// Resources produced.
    pub resources: usize,
}

/// The mapping file of a mapping folder.
///
/// # Errors
/// When the folder has no `mapping.toml` and not exactly one `*.toml`.
pub fn mapping_file(dir: &Path) -> Result<PathBuf, MapError> {
    let main = dir.join("mapping.toml");
    if main.is_file() {
        return Ok(main);
    }
    let mut tomls: Vec<PathBuf> = list(dir)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    match tomls.len() {
        1 => Ok(tomls.remove(0)),
        _ => Err(MapError::Inputs(format!(
            "{}: expected mapping.toml or exactly one *.toml",
            dir.display()
        ))),
    }
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, MapError> {
    let io = |source| MapError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        v.push(e.map_err(io)?.path());
    }
    v.sort();
    Ok(v)
}

/// Runs every fixture of a mapping folder; with `update`, writes what the mapping produces
/// as the new expectations instead of comparing.
///
/// # Errors
/// When the folder, the mapping or a fixture's files cannot be read, or a fixture's inputs
/// do not fit the mapping (usage errors).
pub fn run_fixtures(
    mapping: &Mapping,
    dir: &Path,
    validator: &Validator,
    update: bool,
) -> Result<Vec<FixtureResult>, MapError> {
    let fixtures = dir.join("fixtures");
    let mut results = Vec::new();
    for f in list(&fixtures)?.into_iter().filter(|p| p.is_dir()) {
        let name = f
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let mut inputs = Vec::new();
        for p in list(&f)? {
            let file = p.file_name().map(|n| n.to_string_lossy().into_owned());
            if p.is_file()
                && !matches!(
                    file.as_deref(),
                    Some("expected.json" | "expected-report.txt")
                )
            {
                inputs.push(Input::read(&p)?);
            }
        }
        let mut bundle = Vec::new();
        let outcome = run(mapping, &inputs, Some(validator), false, &mut bundle)?;
        let bundle = String::from_utf8_lossy(&bundle).into_owned();
        let report: String = outcome
            .diagnostics
            .iter()
            .map(|d| format!("{d}\n"))
            .collect();
        let expected_json = f.join("expected.json");
        let expected_report = f.join("expected-report.txt");
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text).map_err(|source| MapError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let mut differences = Vec::new();
        if update {
            write(&expected_json, &bundle)?;
            if outcome.diagnostics.is_empty() {
                if expected_report.exists() {
                    std::fs::remove_file(&expected_report).map_err(|source| MapError::Io {
                        path: expected_report.clone(),
                        source,
                    })?;
                }
            } else {
                write(&expected_report, &report)?;
            }
        } else {
            match std::fs::read_to_string(&expected_json) {
                Err(_) => differences.push("expected.json is missing (run with --update)".into()),
                Ok(text) => match (
                    serde_json::from_str::<Value>(&text),
                    serde_json::from_str::<Value>(&bundle),
                ) {
                    (Ok(e), Ok(g)) => json_diff("", &e, &g, &mut differences),
                    (Err(e), _) => differences.push(format!("expected.json is not JSON: {e}")),
                    (_, Err(e)) => differences.push(format!("the Bundle is not JSON: {e}")),
                },
            }
            let expected = std::fs::read_to_string(&expected_report).unwrap_or_default();
            line_diff(&expected, &report, &mut differences);
        }
        results.push(FixtureResult {
            name,
            differences,
            resources: outcome.resources,
        });
    }
    Ok(results)
}

/// Lists differences between two JSON values by path (`entry[3].resource.birthDate`),
/// at most 50.
pub fn json_diff(path: &str, expected: &Value, got: &Value, out: &mut Vec<String>) {
    const LIMIT: usize = 50;
    if out.len() >= LIMIT {
        return;
    }
    let at = |p: &str| {
        if p.is_empty() {
            "(root)".to_string()
        } else {
            p.to_string()
        }
    };
    match (expected, got) {
        (Value::Object(e), Value::Object(g)) => {
            for (k, ev) in e {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match g.get(k) {
                    Some(gv) => json_diff(&p, ev, gv, out),
                    None => out.push(format!("{p}: expected {ev}, missing")),
                }
            }
            for (k, gv) in g {
                if !e.contains_key(k) {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    out.push(format!("{p}: unexpected {gv}"));
                }
            }
        }
        (Value::Array(e), Value::Array(g)) => {
            for i in 0..e.len().max(g.len()) {
                let p = format!("{path}[{i}]");
                match (e.get(i), g.get(i)) {
                    (Some(ev), Some(gv)) => json_diff(&p, ev, gv, out),
                    (Some(ev), None) => out.push(format!("{p}: expected {ev}, missing")),
                    (None, Some(gv)) => out.push(format!("{p}: unexpected {gv}")),
                    (None, None) => {}
                }
            }
        }
        (e, g) if e != g => out.push(format!("{}: expected {e}, got {g}", at(path))),
        _ => {}
    }
    out.truncate(LIMIT);
}

/// Lists report lines expected but not produced (`- line`) and produced but not expected
/// (`+ line`).
pub fn line_diff(expected: &str, got: &str, out: &mut Vec<String>) {
    let e: Vec<&str> = expected.lines().filter(|l| !l.trim().is_empty()).collect();
    let g: Vec<&str> = got.lines().filter(|l| !l.trim().is_empty()).collect();
    for l in &e {
        if !g.contains(l) {
            out.push(format!("report: - {l}"));
        }
    }
    for l in &g {
        if !e.contains(l) {
            out.push(format!("report: + {l}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_by_path() {
        let e: Value = serde_json::from_str(r#"{"entry":[{"a":1,"b":[1,2]},{"c":"x"}]}"#).unwrap();
        let g: Value =
            serde_json::from_str(r#"{"entry":[{"a":2,"b":[1]},{"c":"x","d":true}]}"#).unwrap();
        let mut out = Vec::new();
        json_diff("", &e, &g, &mut out);
        assert_eq!(
            out,
            [
                "entry[0].a: expected 1, got 2",
                "entry[0].b[1]: expected 2, missing",
                "entry[1].d: unexpected true",
            ]
        );
        let mut out = Vec::new();
        line_diff("a\nb\n", "b\nc\n", &mut out);
        assert_eq!(out, ["report: - a", "report: + c"]);
    }
}
