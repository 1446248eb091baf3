//! The `fhirpath` subcommand, run as a process: typed JSON results, exit 1 with the position
//! of a syntax error, exit 2 for an input file that cannot be used.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_imagio-gateway");
const PATIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/conformance/fhirpath/input-json/patient-example.json"
);

fn fhirpath(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("fhirpath")
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn prints_typed_results() {
    let (code, stdout, stderr) = fhirpath(&[
        "Patient.birthDate | Patient.name.first().given.first() | (1 + 1) | 2.50 | 4 'mg'",
        "--input",
        PATIENT,
    ]);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(
        stdout.trim(),
        r#"[{"type":"date","value":"1974-12-25"},{"type":"string","value":"Peter"},{"type":"integer","value":2},{"type":"decimal","value":2.50},{"type":"Quantity","value":{"value":4,"unit":"mg"}}]"#
    );
}

#[test]
fn prints_complex_elements_as_json() {
    let (code, stdout, _) = fhirpath(&["Patient.name.where(use = 'usual')", "--input", PATIENT]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        r#"[{"type":"HumanName","value":{"use":"usual","given":["Jim"]}}]"#
    );
}

#[test]
fn works_without_input() {
    let (code, stdout, _) = fhirpath(&["today() > @2020-01-01"]);
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), r#"[{"type":"boolean","value":true}]"#);
}

#[test]
fn syntax_error_exits_1_with_position() {
    let (code, stdout, stderr) = fhirpath(&["Patient.name.where(use = )"]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(stderr.contains("syntax error at 1:26"), "stderr: {stderr}");
}

#[test]
fn semantic_and_execution_errors_exit_1() {
    let (code, _, stderr) = fhirpath(&["name.nosuchfunction()"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("semantic error at 1:6"), "stderr: {stderr}");
    let (code, _, stderr) = fhirpath(&["Patient.name.given + 1", "--input", PATIENT]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("execution error at 1:20"),
        "stderr: {stderr}"
    );
}

#[test]
fn unusable_input_exits_2() {
    let (code, _, stderr) = fhirpath(&["1", "--input", "/nonexistent/patient.json"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read"), "stderr: {stderr}");
    let not_fhir = std::env::temp_dir().join(format!("fhirpath-cli-{}.json", std::process::id()));
    std::fs::write(&not_fhir, "{\"hello\": 1}").expect("temp file");
    let (code, _, _) = fhirpath(&["1", "--input", not_fhir.to_str().unwrap_or_default()]);
    let _ = std::fs::remove_file(&not_fhir);
    assert_eq!(code, 2);
}
