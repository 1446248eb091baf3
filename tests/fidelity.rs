//! Round-trip fidelity of the element model: every R4 specification example and every
//! Synthea bundle parses, and serializes back to JSON equal to the input (exact number
//! text; key order may differ).

use imagio_gateway::model::{self, json::Json};
use std::path::{Path, PathBuf};

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// Parses, serializes (compact and pretty) and compares; returns a description of each failure.
fn round_trip(files: &[PathBuf]) -> Vec<String> {
    let mut failures = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).expect("readable file");
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let original = Json::parse(&text, 256).expect("source is JSON");
        let resource = match model::parse(&text) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{name}: parse: {e}"));
                continue;
            }
        };
        for (style, out) in [
            ("compact", model::to_json(&resource)),
            ("pretty", model::to_json_pretty(&resource)),
        ] {
            match Json::parse(&out, 256) {
                Ok(back) => {
                    if let Some(d) = original.first_difference(&back, "") {
                        failures.push(format!("{name} ({style}): {d}"));
                    }
                }
                Err(e) => failures.push(format!("{name} ({style}): output is not JSON: {e}")),
            }
        }
    }
    failures
}

#[test]
fn every_r4_example_round_trips() {
    let files = json_files(&shared().join("fhir-r4/examples"));
    assert_eq!(files.len(), 705, "the R4 example set is complete");
    let failures = round_trip(&files);
    assert!(
        failures.is_empty(),
        "{} of {} examples fail:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn every_synthea_bundle_round_trips() {
    let files = json_files(&shared().join("samples/synthea"));
    assert_eq!(files.len(), 14);
    let failures = round_trip(&files);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
