//! The HL7 validator test cases (`../shared/conformance/validator/`), scored as
//! `../shared/README.md` says: for each JSON case, load the R4 core plus the case's
//! supporting definitions, validate the file, and compare our verdict (any error or fatal
//! issue?) with the HL7 Java validator's; where the case has a profile step, validate again
//! against that profile. Cases that need a terminology server are reported apart.
//!
//! Every disagreement on the cases that need no terminology server must be listed, with its
//! reason, in `tests/data/validator-disagreements.md`; the test fails when the list and the
//! results differ, so the file stays true.

use imagio_gateway::definitions::Registry;
use imagio_gateway::validate::{has_errors, Issue, Validator};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/validator")
}

struct Outcome {
    name: String,
    step: &'static str,
    tx: bool,
    expected_errors: u64,
    ours: Vec<Issue>,
}

fn load(registry: &mut Registry, file: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(dir().join(file)) else {
        return false;
    };
    let Ok(value) = serde_json::from_str::<Value>(&text) else {
        return false;
    };
    registry.add(value).is_ok()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

fn url_of(file: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir().join(file)).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("url").and_then(Value::as_str).map(str::to_string)
}

/// The case's options that the gateway's validator also has, set as the case asks.
fn configured(mut v: Validator, options: &Value) -> Validator {
    v.options.allow_comments = options["allow-comments"] == true;
    v.options.no_html_in_markdown = options["noHtmlInMarkdown"] == true;
    v
}

fn run_cases() -> Vec<Outcome> {
    let text = std::fs::read_to_string(dir().join("cases.json")).expect("cases.json");
    let cases: Value = serde_json::from_str(&text).expect("JSON");
    // The original manifest entries carry what cases.json leaves out: the supporting files
    // of the profile step. They are found by name and file.
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir().join("manifest.json")).expect("manifest.json"),
    )
    .expect("JSON");
    let originals = manifest["test-cases"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for case in cases["cases"].as_array().expect("cases") {
        if case["format"] != "json" {
            continue;
        }
        let Some(java) = case["expected"]["java"].as_object() else {
            continue;
        };
        let name = case["name"].as_str().unwrap_or("?").to_string();
        let file = case["file"].as_str().unwrap_or_default();
        let tx = case["terminology"] == "errors-from-tx-server";
        let Ok(source) = std::fs::read_to_string(dir().join(file)) else {
            continue;
        };
        let mut registry = Registry::core();
        let options = &case["options"];
        for f in strings(options.get("supporting"))
            .iter()
            .chain(strings(options.get("profiles")).iter())
        {
            load(&mut registry, f);
        }
        let profile_source = case["profile"]["source"].as_str().map(str::to_string);
        let mut profile_registry = registry.clone();
        let original = originals
            .iter()
            .find(|o| o["name"] == case["name"] && o["file"] == case["file"]);
        if let Some(o) = original {
            for f in strings(o["profile"].get("supporting")) {
                load(&mut profile_registry, &f);
            }
        }
        let validator = configured(Validator::new(registry), options);
        let expected_errors = java.get("errors").and_then(Value::as_u64).unwrap_or(0);
        out.push(Outcome {
            name: name.clone(),
            step: "base",
            tx,
            expected_errors,
            ours: validator.validate_json(&source, &[]),
        });
        if let (Some(src), Some(pjava)) = (profile_source, case["profile"]["java"].as_object()) {
            load(&mut profile_registry, &src);
            let validator = configured(Validator::new(profile_registry), options);
            let url = url_of(&src).unwrap_or_default();
            out.push(Outcome {
                name,
                step: "profile",
                tx,
                expected_errors: pjava.get("errors").and_then(Value::as_u64).unwrap_or(0),
                ours: validator.validate_json(&source, &[url]),
            });
        }
    }
    out
}

fn listed_disagreements() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/validator-disagreements.md");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("- "))
        .filter_map(|l| l.split(':').next())
        .map(|s| s.trim().to_string())
        .collect()
}

#[test]
fn hl7_validator_cases() {
    let outcomes = run_cases();
    let mut disagreements = BTreeSet::new();
    let mut report = String::new();
    for tx in [false, true] {
        for step in ["base", "profile"] {
            let set: Vec<&Outcome> = outcomes
                .iter()
                .filter(|o| o.tx == tx && o.step == step)
                .collect();
            let agree = set
                .iter()
                .filter(|o| has_errors(&o.ours) == (o.expected_errors > 0))
                .count();
            let exact = set
                .iter()
                .filter(|o| {
                    o.ours.iter().filter(|i| i.severity.is_error()).count() as u64
                        == o.expected_errors
                })
                .count();
            report.push_str(&format!(
                "{} cases, {step} step: verdict agreement {agree}/{} ({:.1}%), exact error count {exact}/{}\n",
                if tx { "terminology-server" } else { "no-terminology" },
                set.len(),
                100.0 * agree as f64 / set.len().max(1) as f64,
                set.len()
            ));
        }
    }
    for o in outcomes.iter().filter(|o| !o.tx) {
        if has_errors(&o.ours) != (o.expected_errors > 0) {
            let key = format!("{} ({})", o.name, o.step);
            let first: Vec<String> = o
                .ours
                .iter()
                .filter(|i| i.severity.is_error())
                .take(3)
                .map(|i| i.to_string())
                .collect();
            eprintln!(
                "DISAGREE {key}: java errors {}, ours {}: {}",
                o.expected_errors,
                o.ours.iter().filter(|i| i.severity.is_error()).count(),
                first.join(" | ")
            );
            disagreements.insert(key);
        }
    }
    println!("{report}");
    let base: Vec<&Outcome> = outcomes.iter().filter(|o| !o.tx).collect();
    let agree = base
        .iter()
        .filter(|o| has_errors(&o.ours) == (o.expected_errors > 0))
        .count();
    let rate = agree as f64 / base.len().max(1) as f64;
    let listed = listed_disagreements();
    let unlisted: Vec<&String> = disagreements.difference(&listed).collect();
    let stale: Vec<&String> = listed.difference(&disagreements).collect();
    assert!(
        unlisted.is_empty() && stale.is_empty(),
        "tests/data/validator-disagreements.md is not current.\nnot listed: {unlisted:?}\nlisted but now agreeing: {stale:?}"
    );
    assert!(
        rate >= 0.90,
        "verdict agreement {:.1}% is below 90%\n{report}",
        rate * 100.0
    );
}
