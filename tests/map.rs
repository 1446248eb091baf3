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
    let dir = temp();
    let out = dir.join("bundle.json");
    let report = dir.join("report.txt");
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
    let report = std::fs::read_to_string(&report).unwrap_or(stderr);
    (code, bundle, report)
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
