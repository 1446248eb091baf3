//! SQL on FHIR v2 conformance: runs every case of `tests/data/sql-on-fhir/*.json` (written
//! from the specification; see the README there for why not the official files), writes
//! the pass rate and each failure with its reason to `tests/data/sql-on-fhir-results.md`,
//! and fails when any case fails.

use imagio_gateway::views::{self, output, ViewError};
use serde_json::Value;
use std::path::Path;

/// Runs one test: `Ok(())` when it passes, `Err(reason)` otherwise.
fn run_case(resources: &[imagio_gateway::model::Element], test: &Value) -> Result<(), String> {
    let expect_error = test["expectError"].as_bool() == Some(true);
    let outcome: Result<Vec<Value>, ViewError> = (|| {
        let view = views::view_from_json(&test["view"])?;
        let mut rows = Vec::new();
        for r in resources {
            for row in views::rows(&view, r)? {
                let mut s = String::new();
                output::object(&mut s, &view.columns, &row);
                rows.push(serde_json::from_str(&s).map_err(|e| ViewError::Input(e.to_string()))?);
            }
        }
        Ok(rows)
    })();
    match (outcome, expect_error) {
        (Err(_), true) => Ok(()),
        (Ok(rows), true) => Err(format!("expected an error, got {} rows", rows.len())),
        (Err(e), false) => Err(format!("unexpected error: {e}")),
        (Ok(rows), false) => {
            let want = test["expect"].as_array().cloned().unwrap_or_default();
            let key = |v: &Value| v.to_string();
            let mut got_keys: Vec<String> = rows.iter().map(key).collect();
            let mut want_keys: Vec<String> = want.iter().map(key).collect();
            got_keys.sort();
            want_keys.sort();
            // Numbers compare by value (120.50 and 120.5 are one decimal).
            let same = rows.len() == want.len() && {
                let mut a = rows.clone();
                let mut b = want.clone();
                a.sort_by_key(key);
                b.sort_by_key(key);
                a == b
            };
            if same {
                Ok(())
            } else {
                Err(format!(
                    "rows differ:\n  expected {}\n  got      {}",
                    want_keys.join(" "),
                    got_keys.join(" ")
                ))
            }
        }
    }
}

#[test]
fn sql_on_fhir_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sql-on-fhir");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("case folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let (mut total, mut passed) = (0usize, 0usize);
    let mut failures = Vec::new();
    for file in &files {
        let suite: Value = serde_json::from_str(&std::fs::read_to_string(file).expect("read"))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let resources: Vec<_> = suite["resources"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|r| {
                imagio_gateway::model::parse(&r.to_string())
                    .unwrap_or_else(|e| panic!("{}: resource {}: {e}", file.display(), r["id"]))
            })
            .collect();
        let name = file
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        for test in suite["tests"].as_array().map_or(&[][..], Vec::as_slice) {
            total += 1;
            match run_case(&resources, test) {
                Ok(()) => passed += 1,
                Err(reason) => failures.push(format!(
                    "- `{name}` / {}: {reason}",
                    test["title"].as_str().unwrap_or("?")
                )),
            }
        }
    }
    let mut report = format!(
        "# SQL on FHIR v2 conformance results\n\n\
         Made by `cargo test --release --test views_conformance`: {passed} of {total} cases pass \
         ({} files in `tests/data/sql-on-fhir/`).\n\n## Failures\n\n",
        files.len()
    );
    if failures.is_empty() {
        report.push_str("None.\n");
    } else {
        report.push_str(&failures.join("\n"));
        report.push('\n');
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sql-on-fhir-results.md");
    std::fs::write(&out, &report).expect("write results");
    eprintln!("SQL on FHIR cases: {passed}/{total} pass");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
