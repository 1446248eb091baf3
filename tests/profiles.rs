//! The study profiles under `profiles/`: every definition loads, yields a snapshot and
//! validates without error or warning; every example gets its expected verdict, the invalid
//! ones at exactly the expected locations (`profiles/examples/invalid/expected.json`); the
//! two journeys validate as whole Bundles and tell the story the issue asks for; the data
//! dictionary is current; the binary embeds what is on disk and `--profiles DIR` overrides it.

use imagio_gateway::definitions::{Kind, Registry};
use imagio_gateway::profiles::{self, doc, CANONICAL_BASE};
use imagio_gateway::validate::{Issue, Severity, Validator};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles")
}

fn registry() -> Registry {
    profiles::study_registry(Some(&dir())).expect("the study definitions load")
}

fn validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| Validator::new(registry()))
}

/// The `*.json` files of a folder under `profiles/`, sorted.
fn json_files(sub: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir().join(sub))
        .unwrap_or_else(|e| panic!("{sub}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| p.file_name().is_some_and(|n| n != "expected.json"))
        .collect();
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn show(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn errors(issues: &[Issue]) -> Vec<&Issue> {
    issues.iter().filter(|i| i.severity.is_error()).collect()
}

fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The profile URLs a resource claims.
fn claimed(v: &Value) -> Vec<String> {
    v.pointer("/meta/profile")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// The study profiles (StructureDefinitions that are not extensions).
fn study_profiles(registry: &Registry) -> Vec<String> {
    let mut urls: Vec<String> = registry
        .loaded(Kind::StructureDefinition)
        .filter(|sd| str_of(sd, "/type") != "Extension")
        .map(|sd| str_of(sd, "/url").to_string())
        .collect();
    urls.sort();
    urls
}

#[test]
fn every_definition_loads_and_yields_a_snapshot() {
    let registry = registry();
    let v = validator();
    let mut profiles = 0;
    let mut extensions = 0;
    for sd in registry.loaded(Kind::StructureDefinition) {
        let url = str_of(sd, "/url");
        if let Err(e) = v.profile(url) {
            panic!("{url}: no snapshot: {e}");
        }
        if str_of(sd, "/type") == "Extension" {
            extensions += 1;
        } else {
            profiles += 1;
        }
    }
    // 13 rows of the canonical model plus the journey Bundle; 15 extensions.
    assert_eq!(profiles, 14, "profiles");
    assert_eq!(extensions, 15, "extensions");
    assert!(registry.loaded(Kind::CodeSystem).count() >= 15);
    assert!(registry.loaded(Kind::ValueSet).count() >= 20);
    assert_eq!(registry.loaded(Kind::ConceptMap).count(), 3);
}

#[test]
fn every_definition_validates_without_error_or_warning() {
    let v = validator();
    let files = profiles::files(Some(&dir())).expect("files");
    assert!(files.len() > 60, "{} definition files", files.len());
    let mut bad = Vec::new();
    for f in &files {
        let issues: Vec<Issue> = v
            .validate_json(&f.text, &[])
            .into_iter()
            .filter(|i| i.severity <= Severity::Warning)
            .collect();
        if !issues.is_empty() {
            bad.push(format!("{}:\n{}", f.path, show(&issues)));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn definitions_are_differentials_under_the_canonical_base() {
    // Published definitions the study defines locally under their own URLs.
    let published = [
        "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/ae-grade",
        "http://terminology.hl7.org/ValueSet/adverse-event-clinical-research-grades",
    ];
    for f in profiles::files(Some(&dir())).expect("files") {
        let v: Value = serde_json::from_str(&f.text).expect("JSON");
        let (rt, id, url) = (
            str_of(&v, "/resourceType"),
            str_of(&v, "/id"),
            str_of(&v, "/url"),
        );
        let file = f.path.rsplit('/').next().unwrap_or_default();
        assert_eq!(file, format!("{rt}-{id}.json"), "{}: file name", f.path);
        assert!(!str_of(&v, "/version").is_empty(), "{}: no version", f.path);
        if !published.contains(&url) {
            assert_eq!(url, format!("{CANONICAL_BASE}/{rt}/{id}"), "{}", f.path);
        }
        if rt == "StructureDefinition" {
            assert!(v.get("snapshot").is_none(), "{}: differential only", f.path);
            assert!(v.get("differential").is_some(), "{}", f.path);
        }
    }
}

#[test]
fn privacy_and_must_support_in_the_subject_profile() {
    let p = validator()
        .profile(&format!(
            "{CANONICAL_BASE}/StructureDefinition/imagio-subject"
        ))
        .expect("subject profile");
    for forbidden in ["name", "telecom", "address", "photo", "contact"] {
        let n = p
            .node_by_path(&format!("Patient.{forbidden}"))
            .expect(forbidden);
        assert_eq!(p.nodes[n].max, Some(0), "Patient.{forbidden}");
    }
    for needed in ["identifier", "gender", "birthDate", "deceased[x]"] {
        let n = p.node_by_path(&format!("Patient.{needed}")).expect(needed);
        assert!(p.nodes[n].must_support, "Patient.{needed}");
    }
}

#[test]
fn valid_examples_have_no_error_or_warning() {
    let v = validator();
    let mut files = json_files("examples/valid");
    files.extend(json_files("examples/journeys"));
    let mut bad = Vec::new();
    for path in &files {
        let issues: Vec<Issue> = v
            .validate_json(&read(path), &[])
            .into_iter()
            .filter(|i| i.severity <= Severity::Warning)
            .collect();
        if !issues.is_empty() {
            bad.push(format!("{}:\n{}", name(path), show(&issues)));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn invalid_examples_fail_exactly_where_expected() {
    let v = validator();
    let expected: BTreeMap<String, Vec<Value>> =
        serde_json::from_str(&read(&dir().join("examples/invalid/expected.json")))
            .expect("expected.json");
    let files = json_files("examples/invalid");
    let names: Vec<String> = files.iter().map(|p| name(p)).collect();
    for listed in expected.keys() {
        assert!(
            names.contains(listed),
            "expected.json lists a missing file {listed}"
        );
    }
    let mut bad = Vec::new();
    for path in &files {
        let file = name(path);
        let Some(want) = expected.get(&file) else {
            bad.push(format!("{file}: not listed in expected.json"));
            continue;
        };
        let issues = v.validate_json(&read(path), &[]);
        let errs = errors(&issues);
        let mut got: Vec<&str> = errs.iter().map(|i| i.location.as_str()).collect();
        let mut want_locations: Vec<&str> = want.iter().map(|w| str_of(w, "/location")).collect();
        got.sort_unstable();
        want_locations.sort_unstable();
        if got != want_locations {
            bad.push(format!(
                "{file}: error locations {got:?}, expected {want_locations:?}\n{}",
                show(&issues)
            ));
            continue;
        }
        for w in want {
            let (location, fragment) = (str_of(w, "/location"), str_of(w, "/match"));
            let found = errs.iter().any(|i| {
                i.location == location
                    && (i.rule.as_deref() == Some(fragment) || i.message.contains(fragment))
            });
            if !found {
                bad.push(format!(
                    "{file}: no error at {location} matching '{fragment}'\n{}",
                    show(&issues)
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn every_profile_has_a_valid_and_two_invalid_examples() {
    let registry = registry();
    let count = |sub: &str| {
        let mut by_profile: BTreeMap<String, usize> = BTreeMap::new();
        for path in json_files(sub) {
            let v: Value = serde_json::from_str(&read(&path)).expect("JSON");
            for url in claimed(&v) {
                *by_profile.entry(url).or_default() += 1;
            }
        }
        by_profile
    };
    let mut valid = count("examples/valid");
    for (k, n) in count("examples/journeys") {
        *valid.entry(k).or_default() += n;
    }
    let invalid = count("examples/invalid");
    for url in study_profiles(&registry) {
        assert!(
            valid.get(&url).copied().unwrap_or(0) >= 1,
            "{url}: no valid example"
        );
        assert!(
            invalid.get(&url).copied().unwrap_or(0) >= 2,
            "{url}: fewer than two invalid examples"
        );
    }
}

/// Months from `a` to `b` when both fall on the same day of the month (`YYYY-MM-DD...`).
fn whole_months(a: &str, b: &str) -> Option<i64> {
    let part = |s: &str, r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    if part(a, 8..10)? != part(b, 8..10)? {
        return None;
    }
    Some((part(b, 0..4)? - part(a, 0..4)?) * 12 + part(b, 5..7)? - part(a, 5..7)?)
}

fn resources<'a>(bundle: &'a Value, rt: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    bundle
        .pointer("/entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("resource"))
        .filter(move |r| str_of(r, "/resourceType") == rt)
}

fn extension<'a>(r: &'a Value, url_tail: &str) -> Vec<&'a Value> {
    r.pointer("/extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| str_of(e, "/url").ends_with(url_tail))
        .collect()
}

fn journey(file: &str) -> Value {
    let text = read(&dir().join("examples/journeys").join(file));
    let issues = validator().validate_json(&text, &[]);
    assert!(errors(&issues).is_empty(), "{file}:\n{}", show(&issues));
    let bundle: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(str_of(&bundle, "/type"), "transaction");
    bundle
}

#[test]
fn the_crlm_journey_tells_its_story() {
    let b = journey("Bundle-journey-crlm.json");
    let dx: Vec<&Value> = resources(&b, "Condition").collect();
    assert_eq!(dx.len(), 1);
    assert_eq!(str_of(dx[0], "/code/coding/0/code"), "crlm");
    // Two lesions ablated, each with its energy parameters.
    let ablations: Vec<&Value> = resources(&b, "Procedure").collect();
    assert_eq!(ablations.len(), 2);
    let mut lesions = Vec::new();
    for a in &ablations {
        for tail in ["/ablation-power", "/ablation-duration", "/ablation-energy"] {
            assert_eq!(extension(a, tail).len(), 1, "{tail}");
        }
        for l in extension(a, "/targeted-lesion") {
            lesions.push(str_of(l, "/valueReference/reference").to_string());
        }
    }
    lesions.dedup();
    assert_eq!(lesions.len(), 2, "two different lesions");
    let first = &ablations[0];
    let ablated = str_of(first, "/performedDateTime");
    // Margins for both.
    let margins = resources(&b, "Observation")
        .filter(|o| str_of(o, "/code/coding/0/code") == "ablation-margin")
        .count();
    assert_eq!(margins, 2);
    // A CTCAE grade 3 complication with its relatedness.
    let ae: Vec<&Value> = resources(&b, "AdverseEvent").collect();
    assert_eq!(ae.len(), 1);
    let grade = extension(ae[0], "/ae-grade");
    assert_eq!(
        str_of(grade[0], "/valueCodeableConcept/coding/0/code"),
        "C41340"
    );
    assert!(ae[0]
        .pointer("/suspectEntity/0/causality/0/assessment")
        .is_some());
    // Follow-up imaging.
    let follow_up_imaging = resources(&b, "ImagingStudy")
        .filter(|i| str_of(i, "/extension/0/valueCodeableConcept/coding/0/code") == "follow-up")
        .count();
    assert!(follow_up_imaging >= 3);
    // Local tumour progression at lesion 1, fourteen months after the ablation.
    let ltp: Vec<&Value> = resources(&b, "Observation")
        .filter(|o| str_of(o, "/valueCodeableConcept/coding/0/code") == "ltp")
        .collect();
    assert_eq!(ltp.len(), 1);
    assert_eq!(str_of(ltp[0], "/focus/0/reference"), lesions[0]);
    assert_eq!(
        whole_months(ablated, str_of(ltp[0], "/effectiveDateTime")),
        Some(14)
    );
    // Death at month 30.
    let patient: Vec<&Value> = resources(&b, "Patient").collect();
    assert_eq!(
        whole_months(ablated, str_of(patient[0], "/deceasedDateTime")),
        Some(30)
    );
}

#[test]
fn the_hcc_journey_tells_its_story() {
    let b = journey("Bundle-journey-hcc.json");
    let dx: Vec<&Value> = resources(&b, "Condition").collect();
    assert_eq!(str_of(dx[0], "/code/coding/0/code"), "hcc");
    assert_eq!(str_of(dx[0], "/stage/0/summary/coding/0/code"), "A");
    let ablation: Vec<&Value> = resources(&b, "Procedure").collect();
    assert_eq!(str_of(ablation[0], "/code/coding/0/code"), "rfa");
    let recurrence = resources(&b, "Observation")
        .filter(|o| str_of(o, "/code/coding/0/code") == "recurrence")
        .count();
    assert_eq!(recurrence, 1);
    let patient: Vec<&Value> = resources(&b, "Patient").collect();
    assert!(patient[0].get("deceasedDateTime").is_none());
}

#[test]
fn the_data_dictionary_is_current() {
    let path = dir().join("DATA-DICTIONARY.md");
    let fresh = doc::render(&registry(), doc::Format::Markdown).expect("render");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if fresh != committed {
        if std::env::var_os("IMAGIO_BLESS").is_some() {
            std::fs::write(&path, &fresh).expect("write the data dictionary");
            return;
        }
        panic!(
            "profiles/DATA-DICTIONARY.md is not current: run \
             `imagio-gateway profiles doc --out profiles/DATA-DICTIONARY.md` \
             (or this test with IMAGIO_BLESS=1)"
        );
    }
    let html = doc::render(&registry(), doc::Format::Html).expect("html");
    assert!(html.starts_with("<!DOCTYPE html>"));
}

#[test]
fn the_binary_embeds_every_definition_on_disk() {
    let embedded = profiles::files(None).expect("embedded");
    let on_disk = profiles::files(Some(&dir())).expect("on disk");
    let paths = |f: &[profiles::DefinitionFile]| -> Vec<String> {
        f.iter().map(|d| d.path.clone()).collect()
    };
    assert_eq!(paths(&embedded), paths(&on_disk));
    for (e, d) in embedded.iter().zip(&on_disk) {
        assert!(e.text == d.text, "{}: embedded copy differs", e.path);
    }
}

fn gateway(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imagio-gateway"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run imagio-gateway");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Copies the definitions (not the examples) of `profiles/` to a fresh folder.
fn copy_definitions(to: &Path) {
    for f in profiles::files(Some(&dir())).expect("files") {
        let target = to.join(&f.path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&target, f.text.as_bytes()).expect("write");
    }
}

#[test]
fn validate_checks_study_profiles_and_profiles_dir_overrides_them() {
    let invalid = "profiles/examples/invalid/subject-full-birth-date.json";
    let valid = "profiles/examples/valid/subject.json";
    let (code, out, _) = gateway(&["validate", "--format", "text", invalid]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("imagio-subj-1"), "{out}");
    let (code, out, _) = gateway(&["validate", "--format", "text", valid]);
    assert_eq!(code, 0, "{out}");

    // A folder whose subject profile allows a full birth date.
    let tmp = std::env::temp_dir().join(format!("imagio-profiles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    copy_definitions(&tmp);
    let sd_path = tmp.join("StructureDefinition-imagio-subject.json");
    let mut sd: Value = serde_json::from_str(&read(&sd_path)).expect("JSON");
    if let Some(elements) = sd
        .pointer_mut("/differential/element")
        .and_then(Value::as_array_mut)
    {
        for e in elements {
            if let Some(o) = e.as_object_mut() {
                o.remove("constraint");
            }
        }
    }
    std::fs::write(&sd_path, sd.to_string()).expect("write");
    let dir_arg = tmp.display().to_string();
    let (code, out, err) = gateway(&[
        "validate",
        "--profiles",
        &dir_arg,
        "--format",
        "text",
        invalid,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // The option is global: given before the subcommand it reaches `profiles doc` too.
    let (code, out, _) = gateway(&[
        "--profiles",
        &dir_arg,
        "profiles",
        "doc",
        "--format",
        "html",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("<h3 id=\"a-imagio-subject-patient\">"));
    assert!(!out.contains("imagio-subj-1"));
    let _ = std::fs::remove_dir_all(&tmp);

    let (code, _, err) = gateway(&["validate", "--profiles", "/nonexistent/profiles", valid]);
    assert_eq!(code, 2, "{err}");
}
