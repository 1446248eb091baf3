//! `imagio-gateway validate` as a site's mapping author runs it: exit codes, JSON and text
//! output, `--load` and `--profile`.

use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imagio-gateway"))
}

fn temp_file(name: &str, content: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("imagio-validate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write");
    path
}

#[test]
fn exit_codes_and_outputs() {
    let good = temp_file(
        "good.json",
        r#"{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">p</div>"},"gender":"female"}"#,
    );
    let bad = temp_file(
        "bad.json",
        "{\"resourceType\":\"Patient\",\n\"gender\":\"woman\"}",
    );
    let out = gateway()
        .args(["validate"])
        .arg(&good)
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let oo: serde_json::Value = serde_json::from_slice(&out.stdout).expect("an OperationOutcome");
    assert_eq!(oo["resourceType"], "OperationOutcome");

    let out = gateway()
        .args(["validate", "--format", "text"])
        .arg(&bad)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bad.json:2:10: error: Patient.gender"),
        "{text}"
    );

    let out = gateway()
        .args(["validate"])
        .arg("/nonexistent/file.json")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let out = gateway()
        .args(["validate", "--load"])
        .arg(&bad)
        .arg(&good)
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a --load file that is not a definition is a usage error"
    );
}

#[test]
fn load_and_profile() {
    let profile = temp_file(
        "profile.json",
        r#"{"resourceType":"StructureDefinition","url":"http://example.org/sd/female","name":"Female","status":"draft",
            "kind":"resource","abstract":false,"type":"Patient","derivation":"constraint",
            "baseDefinition":"http://hl7.org/fhir/StructureDefinition/Patient",
            "differential":{"element":[{"id":"Patient.gender","path":"Patient.gender","min":1,"fixedCode":"female"}]}}"#,
    );
    let male = temp_file(
        "male.json",
        r#"{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">p</div>"},"gender":"male"}"#,
    );
    let base = gateway()
        .args(["validate"])
        .arg(&male)
        .output()
        .expect("runs");
    assert_eq!(base.status.code(), Some(0));
    let out = gateway()
        .args(["validate", "--format", "text", "--load"])
        .arg(&profile)
        .args(["--profile", "http://example.org/sd/female"])
        .arg(&male)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Patient.gender: value must be exactly"));
    let unknown = gateway()
        .args(["validate", "--profile", "http://example.org/sd/unknown"])
        .arg(&male)
        .output()
        .expect("runs");
    assert_eq!(
        unknown.status.code(),
        Some(1),
        "an unknown profile is an error, never a pass"
    );
}
