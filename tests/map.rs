//! The mapping author's commands through the binary: `map`, `mapping check` and
//! `mapping test`, on the NL-01 example mapping and on small mappings written here.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imagio-gateway"))
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/nl01-retrospective")
}

/// A fresh temporary folder.
fn temp() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "imagio-map-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Runs `map` on inputs; returns the exit code, the Bundle text and the report.
fn map(mapping: &Path, inputs: &[PathBuf]) -> (i32, String, String) {
    let (code, bundle, report, _) = map_json(mapping, inputs);
    (code, bundle, report)
}

/// Runs `map --report FILE` on inputs; returns the exit code, the Bundle text, the
/// readable report (standard error) and the JSON report (`Null` when none was written).
fn map_json(mapping: &Path, inputs: &[PathBuf]) -> (i32, String, String, Value) {
    let dir = temp();
    let out = dir.join("bundle.json");
    let report = dir.join("report.json");
    let (code, _, stderr) = run(bin()
        .arg("map")
        .arg("--mapping")
        .arg(mapping)
        .args(inputs)
        .arg("--out")
        .arg(&out)
        .arg("--report")
        .arg(&report));
    let bundle = std::fs::read_to_string(&out).unwrap_or_default();
    let json = std::fs::read_to_string(&report)
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(Value::Null);
    (code, bundle, stderr, json)
}

/// An example mapping folder.
fn examples(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("mappings")
        .join(name)
}

/// The input files of a fixture (everything but the expectations), sorted.
fn fixture_inputs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n != "expected.json" && n != "expected-report.txt"
        })
        .collect();
    v.sort();
    v
}

/// The report lines (without the summary) of `map` on a fixture, checked against the
/// fixture's `expected-report.txt` line by line.
fn assert_fixture_report(folder: &str, fixture: &str) -> (String, Value) {
    let dir = examples(folder).join("fixtures").join(fixture);
    let (code, bundle, report, json) = map_json(
        &examples(folder).join("mapping.toml"),
        &fixture_inputs(&dir),
    );
    assert_eq!(code, 1, "{report}");
    let expected = std::fs::read_to_string(dir.join("expected-report.txt")).unwrap();
    let got: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("error:") || l.starts_with("warning:"))
        .collect();
    assert_eq!(got, expected.lines().collect::<Vec<_>>(), "{report}");
    assert_eq!(json["errors"].as_u64(), Some(got.len() as u64), "{json}");
    (bundle, json)
}

/// The resource with this `Type/id` in a Bundle.
fn resource<'a>(bundle: &'a Value, url: &str) -> &'a Value {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["request"]["url"] == url)
        .map(|e| &e["resource"])
        .unwrap_or_else(|| panic!("{url} not in the Bundle"))
}

fn has(bundle: &Value, url: &str) -> bool {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["request"]["url"] == url)
}

/// The 1-based line of the first line of `file` containing `needle`.
fn line_of(file: &Path, needle: &str) -> usize {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in {}", file.display()))
        + 1
}

#[test]
fn the_example_export_maps_to_valid_study_resources() {
    let input = example().join("fixtures/basic/registry-export.csv");
    let (code, text, report) = map(&example().join("mapping.toml"), &[input]);
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("3 rows, 31 resources, 0 errors"),
        "{report}"
    );
    let b: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(b["resourceType"], "Bundle");
    assert_eq!(b["type"], "transaction");
    for e in b["entry"].as_array().unwrap() {
        let r = &e["resource"];
        let url = format!(
            "{}/{}",
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        );
        assert_eq!(e["request"]["method"], "PUT");
        assert_eq!(e["request"]["url"], url.as_str());
        assert_eq!(
            e["fullUrl"],
            format!("https://gateway.a-imagio.eu/fhir/{url}").as_str()
        );
        // Every reference to a produced resource type points at a produced resource.
        let text = r.to_string();
        for target in text.split("\"reference\":\"").skip(1) {
            let target = target.split('"').next().unwrap();
            if !target.starts_with("Organization/") && !target.starts_with("ResearchStudy/") {
                assert!(
                    has(&b, target),
                    "{url} refers to {target}, not in the Bundle"
                );
            }
        }
    }
    // Latin-1 text, trimmed lower-case code through the lookup, birth year only.
    let p3 = resource(&b, "Patient/nl01-0003");
    assert_eq!(p3["gender"], "male");
    assert_eq!(p3["birthDate"], "1962");
    assert_eq!(p3["identifier"][0]["value"], "AIM-NL01-0003");
    assert_eq!(
        resource(&b, "AdverseEvent/nl01-0003-ae1")["event"]["text"],
        "Pijn, geïnduceerd door ablatie"
    );
    // Local technique 'micro' through the ConceptMap; yyyy-mm-dd and Excel serial dates.
    let abl = resource(&b, "Procedure/nl01-0002-abl-l1");
    assert_eq!(abl["code"]["coding"][0]["code"], "mwa");
    assert_eq!(
        abl["code"]["coding"][0]["system"],
        "https://a-imagio.eu/fhir/CodeSystem/ablation-modality"
    );
    assert_eq!(abl["performedDateTime"], "2022-01-12");
    assert_eq!(
        abl["extension"][0]["valueReference"]["reference"],
        "BodyStructure/nl01-0002-l1"
    );
    assert_eq!(
        resource(&b, "Condition/nl01-0002-dx")["onsetDateTime"],
        "2021-11-30"
    );
    assert_eq!(
        resource(&b, "Procedure/nl01-0003-abl-l3")["performedDateTime"],
        "2022-06-18"
    );
    // Decimal comma in cm, converted to mm.
    let size = resource(&b, "Observation/nl01-0002-size-l1");
    assert_eq!(size["valueQuantity"]["value"], 31);
    assert_eq!(size["valueQuantity"]["code"], "mm");
    assert_eq!(
        resource(&b, "Observation/nl01-0003-margin-l2")["valueQuantity"]["value"],
        3.5
    );
    // Numbered lesion columns: NA lesions and 'onbekend' margins produce nothing.
    assert!(has(&b, "BodyStructure/nl01-0001-l2"));
    assert!(!has(&b, "BodyStructure/nl01-0001-l3"));
    assert!(has(&b, "Observation/nl01-0001-margin-l1"));
    assert!(!has(&b, "Observation/nl01-0001-margin-l2"));
    assert_eq!(
        resource(&b, "BodyStructure/nl01-0002-l1")["location"]["coding"][0]["code"],
        "IVa"
    );
    // Conditionals and lookups: grade 3 is serious, grade 1 is not.
    let ae = resource(&b, "AdverseEvent/nl01-0002-ae1");
    assert_eq!(ae["seriousness"]["coding"][0]["code"], "Serious");
    assert_eq!(
        ae["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
        "C41340"
    );
    assert_eq!(
        resource(&b, "AdverseEvent/nl01-0003-ae1")["seriousness"]["coding"][0]["code"],
        "Non-serious"
    );
    // Margin method: looked up, or the default when '-'.
    assert_eq!(
        resource(&b, "Observation/nl01-0003-margin-l1")["method"]["coding"][0]["code"],
        "visual"
    );
    assert_eq!(
        resource(&b, "Observation/nl01-0001-margin-l1")["method"]["coding"][0]["code"],
        "3d-software"
    );
}

#[test]
fn running_twice_gives_the_same_bundle() {
    let input = example().join("fixtures/basic/registry-export.csv");
    let (_, first, _) = map(
        &example().join("mapping.toml"),
        std::slice::from_ref(&input),
    );
    let (_, second, _) = map(&example().join("mapping.toml"), &[input]);
    assert!(!first.is_empty());
    assert_eq!(first, second);
}

#[test]
fn a_broken_export_is_reported_by_row_column_and_rule() {
    let mapping = example().join("mapping.toml");
    let input = example().join("fixtures/broken/registry-export.csv");
    let (code, text, report) = map(&mapping, &[input]);
    assert_eq!(code, 1, "{report}");
    // The Bundle is still written, without the values that failed.
    let b: Value = serde_json::from_str(&text).unwrap();
    assert!(resource(&b, "Procedure/nl01-0004-abl-l1")
        .get("performedDateTime")
        .is_none());
    let performed = line_of(&mapping, "performedDateTime = { column = \"ablation_date\"");
    let modality = line_of(&mapping, "code = { coding = [{ column = \"modality\"");
    let diagnosis = line_of(&mapping, "code = { coding = [{ column = \"diagnosis\"");
    let lines: Vec<&str> = report.lines().collect();
    let expect = [
        format!("error: registry-export.csv:2:6 [Datum ablatie]: mapping.toml:{performed}: Procedure/nl01-0004-abl-l1: '31-02-2020' is not a date in the declared formats (dd-mm-yyyy, yyyy-mm-dd, excel)"),
        format!("error: registry-export.csv:3:7 [Techniek]: mapping.toml:{modality}: Procedure/nl01-0005-abl-l1: code 'cryo' is not mapped by ConceptMap 'modality' (maps: laser, micro, microgolf, mwa, radiofrequentie, rfa)"),
        format!("error: registry-export.csv:4:4 [Diagnose]: mapping.toml:{diagnosis}: Condition/nl01-0006-dx: code 'Cholangiocarcinoom' is not mapped by ConceptMap 'tumour-type' (maps: colorectaal, crlm, hcc, overige metastase)"),
    ];
    for e in &expect {
        assert!(lines.contains(&e.as_str()), "missing\n{e}\nin\n{report}");
    }
    // The absence of a value that failed is not reported again by validation.
    assert!(!report.contains("minimum required"), "{report}");
    assert!(report.contains("6 errors"), "{report}");
}

/// Writes a mapping folder with one CSV and returns (mapping path, csv path).
fn small(mapping: &str, csv: &[u8]) -> (PathBuf, PathBuf) {
    let dir = temp();
    std::fs::write(dir.join("mapping.toml"), mapping).unwrap();
    std::fs::write(dir.join("export.csv"), csv).unwrap();
    (dir.join("mapping.toml"), dir.join("export.csv"))
}

const SIZE_IN_CM: &str = r#"
[mapping]
name = "sizes"

[sources.rows]
dates = ["dd/mm/yy"]

[[resources]]
type = "Observation"
profile = "imagio-tumour-size"
id = "s-{pid}"
[resources.content]
status = "final"
code = { coding = [{ system = "http://loinc.org", code = "21889-1" }] }
subject = { reference = { template = "Patient/{pid}" } }
focus = [{ reference = { template = "BodyStructure/{pid}-l1" } }]
effectiveDateTime = { column = "date", as = "date" }
valueQuantity = { value = { column = "size", as = "decimal" }, unit = "cm", system = "http://unitsofmeasure.org", code = "cm" }
"#;

#[test]
fn validation_issues_lead_back_to_the_rule_and_the_row() {
    let (mapping, csv) = small(SIZE_IN_CM, b"pid,date,size\np1,05/03/21,2.5\n");
    let (code, text, report) = map(&mapping, &[csv]);
    assert_eq!(code, 1, "{report}");
    let b: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        resource(&b, "Observation/s-p1")["effectiveDateTime"],
        "2021-03-05"
    );
    let unit = line_of(&mapping, "valueQuantity =");
    let issue = report
        .lines()
        .find(|l| l.contains("Observation.value"))
        .unwrap_or_else(|| panic!("no issue on the value in\n{report}"));
    assert!(
        issue.starts_with(&format!(
            "error: export.csv:2: mapping.toml:{unit}: Observation/s-p1: "
        )),
        "{issue}"
    );
    // Converting the unit in the mapping fixes it.
    std::fs::write(
        &mapping,
        SIZE_IN_CM.replace(
            "value = { column = \"size\", as = \"decimal\" }, unit = \"cm\", system = \"http://unitsofmeasure.org\", code = \"cm\"",
            "value = { column = \"size\", unit = \"cm\", to = \"mm\" }, unit = \"mm\", system = \"http://unitsofmeasure.org\", code = \"mm\"",
        ),
    )
    .unwrap();
    let (code, text, report) = map(&mapping, &[mapping.with_file_name("export.csv")]);
    assert_eq!(code, 0, "{report}");
    let b: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        resource(&b, "Observation/s-p1")["valueQuantity"]["value"],
        25
    );
}

const JOINED: &str = r#"
[mapping]
name = "joined"

[sources.patients]
files = "patients*.csv"
key = ["pid"]
columns = { pid = ["Patient ID"], born = ["Date of birth"] }

[sources.ablations]
files = "ablations*.csv"
delimiter = "\t"
dates = ["yyyy-mm-dd"]
join = { patients = ["pid"] }
columns = { pid = ["Patient ID"] }

[[resources]]
name = "subject"
from = "patients"
type = "Patient"
profile = "imagio-subject"
id = "p-{pid}"
[resources.content]
identifier = [{ system = "https://a-imagio.eu/fhir/sid/subject", value = { template = "AIM-{pid}" } }]
gender = "unknown"
birthDate = { column = "born", as = "year" }

[[resources]]
name = "note"
from = "ablations"
type = "Observation"
profile = "imagio-follow-up-assessment"
id = "fu-{pid}-{visit}"
[resources.content]
status = "final"
code = { coding = [{ system = "https://a-imagio.eu/fhir/CodeSystem/observation-code", code = "follow-up" }] }
subject = { ref = "subject" }
effectiveDateTime = { column = "date", as = "date" }
valueCodeableConcept = { coding = [{ system = "https://a-imagio.eu/fhir/CodeSystem/follow-up-status", code = "no-new-event" }] }
method = { coding = [{ system = "https://a-imagio.eu/fhir/CodeSystem/follow-up-method", code = "imaging" }] }
note = [{ text = { fhirpath = "'born ' + %`patients.born`.substring(5) + ', visit ' + %visit" } }]
"#;

#[test]
fn joined_sources_read_each_others_columns_and_report_missing_rows() {
    let dir = temp();
    let mapping = dir.join("mapping.toml");
    std::fs::write(&mapping, JOINED).unwrap();
    let patients = dir.join("patients.csv");
    // UTF-8 with a byte-order mark.
    std::fs::write(
        &patients,
        "\u{feff}Patient ID,Date of birth\nA1,1950-03-04\nA2,1961-07-08\n",
    )
    .unwrap();
    let ablations = dir.join("ablations.tsv.csv");
    std::fs::write(
        &ablations,
        "Patient ID\tvisit\tdate\nA2\t1\t2023-01-02\nA9\t1\t2023-02-03\n",
    )
    .unwrap();
    let (code, text, report) = map(&mapping, &[patients, ablations]);
    assert_eq!(code, 1, "{report}");
    let b: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(resource(&b, "Patient/p-A1")["birthDate"], "1950");
    let fu = resource(&b, "Observation/fu-A2-1");
    assert_eq!(fu["subject"]["reference"], "Patient/p-A2");
    let join = line_of(&mapping, "join = ");
    assert!(
        report.contains(&format!(
            "error: ablations.tsv.csv:3: mapping.toml:{join}: no row in source 'patients' with pid = 'A9'"
        )),
        "{report}"
    );
    assert!(report.contains("1 error,"), "{report}");
    // FHIRPath sees the row and the joined row; without a joined row its value is empty.
    assert_eq!(fu["note"][0]["text"], "born 07-08, visit 1");
    assert!(resource(&b, "Observation/fu-A9-1").get("note").is_none());
}

#[test]
fn usage_errors_exit_2() {
    let input = example().join("fixtures/basic/registry-export.csv");
    // No such mapping.
    let (code, _, err) = run(bin()
        .args(["map", "--mapping", "/nonexistent/mapping.toml"])
        .arg(&input));
    assert_eq!(code, 2, "{err}");
    // A mistake in the mapping names its line.
    let (mapping, csv) = small(
        &SIZE_IN_CM.replace(
            "dates = [\"dd/mm/yy\"]",
            "dates = [\"dd/mm/yy\"]\ndelimeter = \";\"",
        ),
        b"pid\n",
    );
    let (code, _, err) = run(bin().arg("map").arg("--mapping").arg(&mapping).arg(&csv));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("mapping.toml:7: unknown key 'delimeter'"),
        "{err}"
    );
    // An input no source takes.
    let (mapping, _) = small(JOINED, b"");
    let (code, _, err) = run(bin().arg("map").arg("--mapping").arg(&mapping).arg(&input));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("registry-export.csv: matches no source"),
        "{err}"
    );
    // No input at all.
    let (code, _, _) = run(bin().arg("map").arg("--mapping").arg(&mapping));
    assert_eq!(code, 2);
}

#[test]
fn mapping_check_accepts_the_example_and_finds_mistakes() {
    let sample = example().join("fixtures/basic/registry-export.csv");
    let (code, out, err) = run(bin()
        .args(["mapping", "check"])
        .arg(example().join("mapping.toml"))
        .arg("--sample")
        .arg(&sample));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 errors, 0 warnings"), "{out}");

    let dir = temp();
    std::fs::write(
        dir.join("cm.json"),
        r#"{"resourceType":"ConceptMap","url":"https://example.org/cm","status":"draft",
            "targetCanonical":"https://a-imagio.eu/fhir/ValueSet/ablation-modality",
            "group":[{"source":"urn:local","target":"https://a-imagio.eu/fhir/CodeSystem/ablation-modality",
              "element":[{"code":"RF","target":[{"code":"rfa","equivalence":"equivalent"}]},
                         {"code":"CRYO","target":[{"code":"cryo","equivalence":"equivalent"}]}]}]}"#,
    )
    .unwrap();
    let mapping = dir.join("mapping.toml");
    std::fs::write(
        &mapping,
        r#"[mapping]
name = "bad"
[sources.rows]
[conceptmaps]
modality = "cm.json"
[[resources]]
type = "Patient"
profile = "imagio-subject"
id = "p-{pid}"
[resources.content]
gender = { column = "sex" }
nmae = "x"
name = [{ text = { column = "surname" } }]
identifier = { system = "https://a-imagio.eu/fhir/sid/subject", value = { column = "pid" } }
[[resources]]
type = "Procedure"
profile = "imagio-thermal-ablation"
id = "a-{pid}"
[resources.content]
code = { coding = [{ column = "technique", translate = "modality" }] }
extension = [{ url = "https://a-imagio.eu/fhir/StructureDefinition/ablation-aproach", valueCode = "open" }]
"#,
    )
    .unwrap();
    std::fs::write(dir.join("sample.csv"), "pid,sex,technique\n").unwrap();
    let (code, out, err) = run(bin()
        .args(["mapping", "check"])
        .arg(&mapping)
        .arg("--sample")
        .arg(dir.join("sample.csv")));
    assert_eq!(code, 1, "{out}{err}");
    let expect = [
        "error: sample.csv:1: mapping.toml:13: column 'surname' is not in the header (headers: pid | sex | technique)",
        "error: mapping.toml:12: 'nmae' is not an element of Patient",
        "error: mapping.toml:13: Patient.name is not allowed by https://a-imagio.eu/fhir/StructureDefinition/imagio-subject (max 0)",
        "error: mapping.toml:14: Patient.identifier repeats: write a list [ { ... } ]",
        "error: mapping.toml:5: ConceptMap 'modality' maps to https://a-imagio.eu/fhir/CodeSystem/ablation-modality|cryo, which is not in its target ValueSet https://a-imagio.eu/fhir/ValueSet/ablation-modality",
        "error: mapping.toml:21: extension https://a-imagio.eu/fhir/StructureDefinition/ablation-aproach is not defined by the study or R4",
        "warning: mapping.toml:5: ConceptMap 'modality' does not cover https://a-imagio.eu/fhir/ValueSet/ablation-modality: no local code maps to mwa, other-thermal",
    ];
    for e in expect {
        assert!(out.lines().any(|l| l == e), "missing\n{e}\nin\n{out}");
    }
}

/// Copies a folder tree.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}

#[test]
fn mapping_test_passes_the_example_fixtures_and_shows_a_readable_diff() {
    let (code, out, err) = run(bin().args(["mapping", "test"]).arg(example()));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok   basic (31 resources)"), "{out}");
    assert!(out.contains("ok   broken (18 resources)"), "{out}");

    let dir = temp().join("nl01");
    copy_dir(&example(), &dir);
    let expected = dir.join("fixtures/basic/expected.json");
    let text = std::fs::read_to_string(&expected).unwrap();
    std::fs::write(
        &expected,
        text.replacen("\"value\": 31", "\"value\": 13", 1),
    )
    .unwrap();
    let report = dir.join("fixtures/broken/expected-report.txt");
    let text = std::fs::read_to_string(&report).unwrap();
    std::fs::write(&report, text.replace("'cryo'", "'kryo'")).unwrap();
    let (code, out, _) = run(bin().args(["mapping", "test"]).arg(&dir));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL basic"), "{out}");
    assert!(
        out.lines().any(|l| l.trim().starts_with("entry[")
            && l.contains("].resource.valueQuantity.value: expected 13, got 31")),
        "{out}"
    );
    assert!(out.contains("FAIL broken"), "{out}");
    assert!(
        out.contains("report: - error: registry-export.csv:3:7 [Techniek]"),
        "{out}"
    );
    assert!(
        out.contains("report: + error: registry-export.csv:3:7 [Techniek]"),
        "{out}"
    );
    assert!(out.contains("2 fixtures, 0 passed, 2 failed"), "{out}");
}

const VISITS: &str = r#"
[mapping]
name = "visits"

[sources.visits]
key = ["pid", "visit"]
empty = ["?"]

[[resources]]
name = "subject"
type = "Patient"
profile = "imagio-subject"
id = "p-{pid}"
[resources.content]
identifier = [{ system = "https://a-imagio.eu/fhir/sid/subject", value = { template = "AIM-{pid}" } }]
gender = { column = "sex", default = "unknown" }
deceasedBoolean = { if = { any = [{ column = "status", in = ["dead", "overleden"] }, { present = "death" }] }, then = true, else = { if = { not = { present = "status" } }, then = { const = false } } }
"#;

#[test]
fn a_resource_repeated_on_rows_is_made_once_unless_the_rows_disagree() {
    let (mapping, csv) = small(
        VISITS,
        b"pid,visit,sex,status,death\nA,1,female,alive,\nA,2,female,alive,\nB,1,?,,\nC,1,male,overleden,\nC,2,female,,\nC,2,female,,\n",
    );
    let (code, text, report) = map(&mapping, &[csv]);
    assert_eq!(code, 1, "{report}");
    let b: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(b["entry"].as_array().unwrap().len(), 3, "{text}");
    assert_eq!(resource(&b, "Patient/p-A")["gender"], "female");
    assert!(resource(&b, "Patient/p-A").get("deceasedBoolean").is_none());
    assert_eq!(resource(&b, "Patient/p-B")["gender"], "unknown");
    assert_eq!(resource(&b, "Patient/p-B")["deceasedBoolean"], false);
    assert_eq!(resource(&b, "Patient/p-C")["deceasedBoolean"], true);
    let id = line_of(&mapping, "id = \"p-{pid}\"");
    let key = line_of(&mapping, "[sources.visits]");
    assert!(
        report.contains(&format!("error: export.csv:6: mapping.toml:{id}: Patient/p-C: this id is produced again with different content (first from export.csv:5)")),
        "{report}"
    );
    assert!(
        report.contains(&format!("error: export.csv:7: mapping.toml:{key}: duplicate key pid, visit = C, 2 (also on line 6)")),
        "{report}"
    );
}

#[test]
fn the_ehr_fhir_export_maps_to_study_resources_and_drops_what_the_study_must_not_hold() {
    let dir = examples("ehr-fhir-export");
    let input = dir.join("fixtures/basic/ehr-export.json");
    let (code, text, report) = map(&dir.join("mapping.toml"), &[input]);
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("ehr-fhir-export: 9 rows, 12 resources, 0 errors"),
        "{report}"
    );
    // Name, address, telecom, MRN, national number, the other diagnosis, the CT scan
    // and the lab value are not produced.
    for gone in [
        "Jansen",
        "Hengelosestraat",
        "7001234",
        "999990019",
        "+31 6",
        "I10",
        "IR-CT-ABD",
        "1742-6",
        "pat-81723",
        "Dr. J. de Vries",
    ] {
        assert!(!text.contains(gone), "{gone} leaked into\n{text}");
    }
    let b: Value = serde_json::from_str(&text).unwrap();
    let p = resource(&b, "Patient/nl02-0001");
    assert_eq!(p["identifier"][0]["value"], "AIM-NL02-0001");
    assert_eq!(p["gender"], "female");
    assert_eq!(p["birthDate"], "1949");
    assert!(p.get("name").is_none() && p.get("address").is_none());
    assert_eq!(
        resource(&b, "Patient/nl02-0002")["deceasedDateTime"],
        "2024-08-19"
    );
    let dx = resource(&b, "Condition/nl02-0002-dx");
    assert_eq!(dx["code"]["coding"][0]["code"], "crlm");
    assert_eq!(dx["code"]["coding"][1]["code"], "C78.7");
    assert_eq!(dx["subject"]["reference"], "Patient/nl02-0002");
    // A performedPeriod gives its start; the free-text segment goes through the lookup.
    let abl = resource(&b, "Procedure/nl02-0002-abl-20220112");
    assert_eq!(abl["code"]["coding"][0]["code"], "rfa");
    assert_eq!(abl["performedDateTime"], "2022-01-12T08:00:00+01:00");
    assert_eq!(
        abl["extension"][0]["valueReference"]["reference"],
        "BodyStructure/nl02-0002-l20220112"
    );
    assert_eq!(
        abl["extension"][1]["valueCodeableConcept"]["coding"][0]["code"],
        "laparoscopic"
    );
    assert_eq!(
        resource(&b, "BodyStructure/nl02-0002-l20220112")["location"]["coding"][0]["code"],
        "IVa"
    );
    assert_eq!(
        resource(&b, "BodyStructure/nl02-0002-l20220602")["location"]["coding"][0]["code"],
        "IVb"
    );
    // "graad 3" and "Grade I" become CTCAE grades; the suspect is the study's ablation.
    let ae = resource(&b, "AdverseEvent/nl02-0001-ae-20230301");
    assert_eq!(
        ae["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
        "C41340"
    );
    assert_eq!(ae["seriousness"]["coding"][0]["code"], "Serious");
    assert_eq!(ae["date"], "2023-03-01");
    assert_eq!(
        ae["suspectEntity"][0]["instance"]["reference"],
        "Procedure/nl02-0001-abl-20230301"
    );
    let ae2 = resource(&b, "AdverseEvent/nl02-0002-ae-20220112");
    assert_eq!(
        ae2["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
        "C41338"
    );
    assert_eq!(ae2["seriousness"]["coding"][0]["code"], "Non-serious");
}

#[test]
fn a_broken_ehr_ndjson_export_is_reported_by_line_resource_and_expression() {
    let (bundle, json) = assert_fixture_report("ehr-fhir-export", "broken");
    // Exact lines for the unmapped ICD-10 code, the unmatched local procedure code, the
    // free-text grade and the MRN missing from the key list.
    let expected_lines = [
        "error: ehr-export.ndjson:2 Condition/cond-b1 [code.coding.where(system = 'http://hl7.org/fhir/sid/icd-10').code]: mapping.toml:",
        "error: ehr-export.ndjson:6 Patient/pat-2 [identifier.where(system = 'https://ehr.ziekenhuis-oost.example/fhir/sid/patientnummer').value]: mapping.toml:",
    ];
    let texts: Vec<&str> = json["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["text"].as_str().unwrap())
        .collect();
    for e in expected_lines {
        assert!(
            texts.iter().any(|t| t.starts_with(e)),
            "{e}\nnot in\n{texts:#?}"
        );
    }
    assert!(
        texts
            .iter()
            .any(|t| t.contains("code 'C24.0' is not mapped by ConceptMap 'tumour-type'")),
        "{texts:#?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("value '7777777' is not in lookup table 'study-number'")),
        "{texts:#?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("value 'ernstig' is not in lookup table 'grade-number'")),
        "{texts:#?}"
    );
    // The JSON report names the source resource and the line.
    let first = &json["issues"][0]["source"];
    assert_eq!(first["file"], "ehr-export.ndjson");
    assert_eq!(first["entry"], false);
    assert!(first["sourceResource"].as_str().unwrap().contains('/'));
    // Nothing identifying is produced for the patient whose MRN is not in the key list.
    assert!(!bundle.contains("7777777") && !bundle.contains("Visser"));
}

#[test]
fn the_wide_trial_row_makes_one_lesion_size_and_margin_per_lesion_present() {
    let dir = examples("retro-trial-wide");
    let input = dir.join("fixtures/basic/crf-export.csv");
    let (code, text, report) = map(&dir.join("mapping.toml"), &[input]);
    assert_eq!(code, 0, "{report}");
    let b: Value = serde_json::from_str(&text).unwrap();
    for n in 1..=3 {
        assert!(has(&b, &format!("BodyStructure/rl-RL-002-l{n}")));
        assert!(has(&b, &format!("Observation/rl-RL-002-size-l{n}")));
        assert!(has(&b, &format!("Observation/rl-RL-002-margin-l{n}")));
    }
    assert!(has(&b, "BodyStructure/rl-RL-001-l1"));
    assert!(!has(&b, "BodyStructure/rl-RL-001-l2"));
    // RL-003's second lesion has no margin (n/a): no margin resource, the lesion is there.
    assert!(has(&b, "BodyStructure/rl-RL-003-l2"));
    assert!(!has(&b, "Observation/rl-RL-003-margin-l2"));
    let abl = resource(&b, "Procedure/rl-RL-002-abl");
    let targets: Vec<&str> = abl["extension"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["url"] == "https://a-imagio.eu/fhir/StructureDefinition/targeted-lesion")
        .map(|e| e["valueReference"]["reference"].as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        [
            "BodyStructure/rl-RL-002-l1",
            "BodyStructure/rl-RL-002-l2",
            "BodyStructure/rl-RL-002-l3"
        ]
    );
    // An Excel serial date, and a dd/mm/yy date.
    assert_eq!(abl["performedDateTime"], "2019-01-15");
    assert_eq!(
        resource(&b, "Condition/rl-RL-001-dx")["onsetDateTime"],
        "2019-02-03"
    );
    let size = resource(&b, "Observation/rl-RL-002-size-l2");
    assert_eq!(size["valueQuantity"]["value"], 18.4);
    let ae = resource(&b, "AdverseEvent/rl-RL-002-ae1");
    assert_eq!(
        ae["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
        "C41340"
    );
}

#[test]
fn a_broken_wide_trial_export_gives_the_exact_diagnostics() {
    let (_, json) = assert_fixture_report("retro-trial-wide", "broken");
    let texts: Vec<&str> = json["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["text"].as_str().unwrap())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("error: crf-export.csv:4:7 [technique]:")
                && t.contains("code 'HIFU' is not mapped by ConceptMap 'technique'")),
        "{texts:#?}"
    );
}

#[test]
fn the_registry_in_three_files_joins_patients_ablations_and_complications() {
    let dir = examples("nl01-registry");
    let f = dir.join("fixtures/basic");
    let inputs = fixture_inputs(&f);
    let (code, text, report) = map(&dir.join("mapping.toml"), &inputs);
    assert_eq!(code, 0, "{report}");
    let b: Value = serde_json::from_str(&text).unwrap();
    let ae = resource(&b, "AdverseEvent/nl01-0103-ae-l2");
    assert_eq!(
        ae["suspectEntity"][0]["instance"]["reference"],
        "Procedure/nl01-0103-abl-l2"
    );
    assert_eq!(ae["date"], "2022-06-21");
    let abl = resource(&b, "Procedure/nl01-0102-abl-l1");
    assert_eq!(abl["performedDateTime"], "2022-01-12");
    assert_eq!(abl["subject"]["reference"], "Patient/nl01-0102");
    assert_eq!(
        resource(&b, "Observation/nl01-0101-size-l1")["valueQuantity"]["value"],
        22
    );
    assert!(!has(&b, "Observation/nl01-0101-margin-l2"));
    assert_eq!(
        resource(&b, "Patient/nl01-0102")["deceasedDateTime"],
        "2024-09-03"
    );
}

#[test]
fn a_broken_registry_export_gives_the_exact_diagnostics() {
    assert_fixture_report("nl01-registry", "broken");
}

#[test]
fn every_example_folder_passes_its_fixtures() {
    for name in [
        "nl01-retrospective",
        "nl01-registry",
        "retro-trial-wide",
        "ehr-fhir-export",
    ] {
        let (code, out, err) = run(bin().arg("mapping").arg("test").arg(examples(name)));
        assert_eq!(code, 0, "{name}:\n{out}{err}");
        assert!(out.contains("0 failed"), "{name}:\n{out}");
    }
}

#[test]
fn the_json_report_lists_issues_per_row_and_per_resource() {
    let (_, json) = assert_fixture_report("nl01-retrospective", "broken");
    assert_eq!(json["mapping"], "nl01-retrospective");
    let issues = json["issues"].as_array().unwrap();
    let first = &issues[0];
    assert_eq!(first["severity"], "error");
    assert_eq!(first["source"]["file"], "registry-export.csv");
    assert_eq!(first["source"]["row"], 2);
    assert_eq!(first["source"]["column"], 6);
    assert_eq!(first["source"]["header"], "Datum ablatie");
    assert_eq!(first["mapping"]["file"], "mapping.toml");
    assert!(first["mapping"]["line"].as_u64().unwrap() > 0);
    assert_eq!(first["resource"], "Observation/nl01-0004-size-l1");
    // Row 2 has the three date problems; each resource lists its own.
    let row2 = json["byRow"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["row"] == 2)
        .unwrap();
    assert_eq!(row2["issues"].as_array().unwrap().len(), 3);
    let by_resource = json["byResource"].as_array().unwrap();
    assert_eq!(by_resource.len(), issues.len());
    assert_eq!(by_resource[0]["issues"], serde_json::json!([0]));
}
