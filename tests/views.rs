//! SQL on FHIR views end to end: the shipped ViewDefinitions of `profiles/views/` on the
//! two journey Bundles (exact rows, through the `view run` binary), the output formats
//! (Parquet read back by the project's reader and, when installed, by pyarrow), the CLI's
//! refusals, and `$run` on the server over SQLite and PostgreSQL.

#[macro_use]
mod common;

use common::*;
use imagio_gateway::serve::ValidationMode;
use imagio_gateway::views::{self, parquet, Cell};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_imagio-gateway");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn journeys() -> Vec<Value> {
    let mut out = Vec::new();
    for f in ["Bundle-journey-hcc.json", "Bundle-journey-crlm.json"] {
        let path = Path::new(ROOT).join("profiles/examples/journeys").join(f);
        let bundle: Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
        for e in bundle["entry"].as_array().expect("entries") {
            out.push(e["resource"].clone());
        }
    }
    out
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(unique(name))
}

/// The journeys' resources as one NDJSON file.
fn journeys_ndjson() -> PathBuf {
    let path = temp("journeys").with_extension("ndjson");
    let text: String = journeys().iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&path, text).expect("write ndjson");
    path
}

fn view_path(name: &str) -> PathBuf {
    Path::new(ROOT)
        .join("profiles/views")
        .join(format!("{name}.json"))
}

fn run_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn csv(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("{l}\r\n")).collect()
}

/// The expected CSV of each shipped view on the two journeys, in input order.
fn expected() -> Vec<(&'static str, String)> {
    vec![
        ("patients", csv(&[
            "patient_id,subject_number,gender,birth_date,deceased_date,site_id",
            "hcc-0001,AIM-IT02-0001,female,1949,,site-it-02",
            "crlm-0001,AIM-NL01-0001,male,1956,2024-07-12,site-nl-01",
        ])),
        ("lesions", csv(&[
            "lesion_id,lesion_label,patient_id,segment,location_features",
            "hcc-0001-l1,AIM-IT02-0001-L1,hcc-0001,V,\"[\"\"near-central-bile-duct\"\"]\"",
            "crlm-0001-l1,AIM-NL01-0001-L1,crlm-0001,VI,\"[\"\"subcapsular\"\"]\"",
            "crlm-0001-l2,AIM-NL01-0001-L2,crlm-0001,VIII,\"[\"\"perivascular\"\"]\"",
        ])),
        ("ablations", csv(&[
            "ablation_id,patient_id,lesion_id,performed,status,modality,approach,image_guidance,anaesthesia,antenna_count,power,power_unit,duration,duration_unit,energy,energy_unit,technical_success",
            "hcc-0001-abl-l1,hcc-0001,hcc-0001-l1,2023-03-15T08:45:00+01:00,completed,rfa,percutaneous,\"[\"\"us\"\"]\",deep-sedation,1,80,W,12,min,57.6,kJ,true",
            "crlm-0001-abl-l1,crlm-0001,crlm-0001-l1,2022-01-12T09:30:00+01:00,completed,mwa,percutaneous,\"[\"\"ct\"\",\"\"fusion\"\"]\",general,1,100,W,5,min,30,kJ,true",
            "crlm-0001-abl-l2,crlm-0001,crlm-0001-l2,2022-01-12T10:15:00+01:00,completed,mwa,percutaneous,\"[\"\"ct\"\",\"\"fusion\"\"]\",general,1,100,W,8,min,48,kJ,true",
        ])),
        ("margins", csv(&[
            "margin_id,patient_id,ablation_id,lesion_id,measured,margin,margin_unit,method",
            "hcc-0001-margin-l1,hcc-0001,hcc-0001-abl-l1,hcc-0001-l1,2023-03-15T10:30:00+01:00,5,mm,visual",
            "crlm-0001-margin-l1,crlm-0001,crlm-0001-abl-l1,crlm-0001-l1,2022-01-12T11:30:00+01:00,4,mm,3d-software",
            "crlm-0001-margin-l2,crlm-0001,crlm-0001-abl-l2,crlm-0001-l2,2022-01-12T11:30:00+01:00,6,mm,3d-software",
        ])),
        ("complications", csv(&[
            "complication_id,patient_id,date,term,term_code,grade_code,grade,ctcae_version,seriousness,outcome,ablation_id,relatedness",
            "hcc-0001-ae-1,hcc-0001,2023-03-15T18:00:00+01:00,Abdominal pain,,C41338,1,5.0,Non-serious,resolved,hcc-0001-abl-l1,",
            "crlm-0001-ae-1,crlm-0001,2022-01-12T14:00:00+01:00,Hepatic hemorrhage,,C41340,3,5.0,Serious,resolved,crlm-0001-abl-l2,Probably-Likely",
        ])),
        ("recurrence-events", csv(&[
            "event_id,patient_id,lesion_id,date,recurrence_type,imaging_study_id",
            "hcc-0001-rec-1,hcc-0001,,2024-11-19T11:00:00+01:00,intrahepatic-distant,hcc-0001-img-fu-20m",
            "crlm-0001-ltp-l1,crlm-0001,crlm-0001-l1,2023-03-12T09:00:00+01:00,ltp,crlm-0001-img-fu-14m",
        ])),
        ("follow-ups", csv(&[
            "follow_up_id,patient_id,date,status,method,imaging_study_id",
            "hcc-0001-fu-3m,hcc-0001,2023-06-14T11:00:00+02:00,no-new-event,imaging,hcc-0001-img-fu-3m",
            "hcc-0001-fu-6m,hcc-0001,2023-09-13T11:00:00+02:00,no-new-event,imaging,hcc-0001-img-fu-6m",
            "hcc-0001-fu-12m,hcc-0001,2024-03-12T11:00:00+01:00,no-new-event,imaging,hcc-0001-img-fu-12m",
            "hcc-0001-fu-24m,hcc-0001,2025-03-10,no-new-event,clinical-visit,",
            "crlm-0001-fu-3m,crlm-0001,2022-04-12T09:00:00+02:00,no-new-event,imaging,crlm-0001-img-fu-3m",
            "crlm-0001-fu-6m,crlm-0001,2022-07-12T09:00:00+02:00,no-new-event,imaging,crlm-0001-img-fu-6m",
            "crlm-0001-fu-12m,crlm-0001,2023-01-10T09:00:00+01:00,no-new-event,imaging,crlm-0001-img-fu-12m",
        ])),
    ]
}

#[test]
fn every_shipped_view_is_embedded_and_valid() {
    let shipped = views::shipped();
    let mut names: Vec<&str> = shipped.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    let mut want: Vec<String> = expected()
        .iter()
        .map(|(n, _)| format!("{n}.json"))
        .collect();
    want.sort();
    assert_eq!(names, want);
    for (name, text) in shipped {
        let view = views::parse_view(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let id = name.trim_end_matches(".json");
        assert_eq!(
            views::shipped_view(&format!("ViewDefinition/{id}")),
            Some(*text)
        );
        assert!(!view.columns.is_empty());
    }
    // The views are not study definitions: the registry does not see them.
    let files = imagio_gateway::profiles::files(None).expect("files");
    assert!(files.iter().all(|f| !f.path.starts_with("views/")));
}

#[test]
fn shipped_views_give_the_expected_rows_on_the_journeys() {
    let input = journeys_ndjson();
    for (name, want) in expected() {
        let view = view_path(name);
        let (code, out, err) = run_cli(&[
            "view",
            "run",
            view.to_str().expect("utf-8"),
            "--format",
            "csv",
            "--ndjson",
            input.to_str().expect("utf-8"),
        ]);
        assert_eq!(code, Some(0), "{name}: {err}");
        assert_eq!(out, want, "{name}");
    }
    let _ = std::fs::remove_file(input);
}

#[test]
fn ndjson_and_json_output_keep_types() {
    let input = journeys_ndjson();
    let (code, out, err) = run_cli(&[
        "view",
        "run",
        view_path("ablations").to_str().expect("utf-8"),
        "--format",
        "ndjson",
        "--ndjson",
        input.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["energy"], json!(57.6));
    assert_eq!(rows[0]["antenna_count"], json!(1));
    assert_eq!(rows[0]["technical_success"], json!(true));
    assert_eq!(rows[1]["image_guidance"], json!(["ct", "fusion"]));
    assert_eq!(rows[0]["lesion_id"], json!("hcc-0001-l1"));
    let _ = std::fs::remove_file(input);
}

/// Checks a Parquet file with pyarrow when it is installed (skips loudly otherwise).
fn pyarrow_rows(path: &Path) -> Option<Value> {
    let probe = Command::new("python3")
        .args(["-c", "import pyarrow"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED: pyarrow check of the Parquet output: python3 -c 'import pyarrow' fails"
        );
        return None;
    }
    let script = "import sys, json, pyarrow.parquet as pq\n\
                  t = pq.read_table(sys.argv[1])\n\
                  print(json.dumps({'schema': [[f.name, str(f.type)] for f in t.schema], 'rows': t.to_pylist()}))";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pyarrow refused the file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("pyarrow json"))
}

#[test]
fn parquet_output_reads_back() {
    let input = journeys_ndjson();
    let out = temp("ablations").with_extension("parquet");
    let (code, _, err) = run_cli(&[
        "view",
        "run",
        view_path("ablations").to_str().expect("utf-8"),
        "--format",
        "parquet",
        "--out",
        out.to_str().expect("utf-8"),
        "--ndjson",
        input.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let bytes = std::fs::read(&out).expect("parquet file");
    let (cols, rows) = parquet::read(&bytes).expect("own reader");
    assert_eq!(cols.len(), 17);
    assert_eq!(
        cols[9],
        ("antenna_count".to_string(), parquet::Physical::Int64)
    );
    assert_eq!(cols[10], ("power".to_string(), parquet::Physical::Double));
    assert_eq!(
        cols[16],
        ("technical_success".to_string(), parquet::Physical::Boolean)
    );
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0][0], Cell::Str("hcc-0001-abl-l1".into()));
    assert_eq!(rows[0][9], Cell::Int(1));
    assert_eq!(rows[0][14], Cell::Number("57.6".into()));
    assert_eq!(rows[2][12], Cell::Number("8".into()));
    assert_eq!(rows[1][7], Cell::Str("[\"ct\",\"fusion\"]".into()));
    assert_eq!(rows[2][16], Cell::Bool(true));
    if let Some(table) = pyarrow_rows(&out) {
        assert_eq!(table["schema"][9], json!(["antenna_count", "int64"]));
        assert_eq!(table["schema"][10], json!(["power", "double"]));
        assert_eq!(table["schema"][16], json!(["technical_success", "bool"]));
        assert_eq!(table["schema"][0], json!(["ablation_id", "string"]));
        let r = &table["rows"];
        assert_eq!(r.as_array().map(Vec::len), Some(3));
        assert_eq!(r[0]["energy"], json!(57.6));
        assert_eq!(r[1]["lesion_id"], json!("crlm-0001-l1"));
        assert_eq!(r[2]["duration"], json!(8.0));
        assert_eq!(r[0]["technical_success"], json!(true));
    }
    // A view with nulls in every type.
    let (code, _, err) = run_cli(&[
        "view",
        "run",
        view_path("recurrence-events").to_str().expect("utf-8"),
        "--format",
        "parquet",
        "--out",
        out.to_str().expect("utf-8"),
        "--ndjson",
        input.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (_, rows) = parquet::read(&std::fs::read(&out).expect("file")).expect("read");
    assert_eq!(rows[0][2], Cell::Null);
    assert_eq!(rows[1][2], Cell::Str("crlm-0001-l1".into()));
    if let Some(table) = pyarrow_rows(&out) {
        assert_eq!(table["rows"][0]["lesion_id"], Value::Null);
        assert_eq!(table["rows"][1]["recurrence_type"], json!("ltp"));
    }
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(input);
}

#[test]
fn cli_refuses_bad_views_and_bad_input_without_writing() {
    let dir = temp("viewcli");
    std::fs::create_dir_all(&dir).expect("dir");
    let bad_view = dir.join("bad.json");
    std::fs::write(
        &bad_view,
        r#"{"resource":"Patient","select":[{"column":[{"name":"n","path":"name.family"}]}]}"#,
    )
    .expect("write");
    let input = dir.join("in.ndjson");
    std::fs::write(
        &input,
        "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Patient\",\"id\":\"b\",\"gender\":7}\n",
    )
    .expect("write");
    let out = dir.join("out.csv");
    let (code, _, err) = run_cli(&[
        "view",
        "run",
        bad_view.to_str().expect("utf-8"),
        "--ndjson",
        input.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("bad.json")
            && err.contains("select[0].column[0]")
            && err.contains("collection"),
        "{err}"
    );
    assert!(!out.exists());
    let (code, _, err) = run_cli(&[
        "view",
        "run",
        view_path("patients").to_str().expect("utf-8"),
        "--ndjson",
        input.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("in.ndjson:2"), "{err}");
    assert!(!out.exists(), "no partial output");
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        2,
        "no temporary file left"
    );
    let (code, _, err) = run_cli(&[
        "view",
        "run",
        view_path("patients").to_str().expect("utf-8"),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--ndjson") && err.contains("--database-url"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A subject like the HCC journey's, with another id (valid against the study profile).
fn subject(i: usize) -> Value {
    json!({"resourceType": "Patient", "id": format!("bulk-{i:04}"),
        "meta": {"profile": ["https://a-imagio.eu/fhir/StructureDefinition/imagio-subject"]},
        "identifier": [{"system": "https://a-imagio.eu/fhir/sid/subject", "value": format!("AIM-IT02-9{i:03}")}],
        "gender": "female", "birthDate": "1950",
        "managingOrganization": {"reference": "Organization/site-it-02"}})
}

async fn run_op(server: &Server, params: &Value, query: &str) -> (StatusCode, String, Vec<u8>) {
    let r = server
        .client
        .post(server.url(&format!("/fhir/ViewDefinition/$run{query}")))
        .header("content-type", FHIR)
        .body(params.to_string())
        .send()
        .await
        .expect("$run");
    let status = r.status();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, ct, r.bytes().await.expect("body").to_vec())
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut l: Vec<String> = text.lines().map(str::to_string).collect();
    l.sort();
    l
}

mod scenarios {
    use super::*;

    pub async fn views_on_the_store(server: &Server) {
        for f in ["Bundle-journey-hcc.json", "Bundle-journey-crlm.json"] {
            let path = Path::new(ROOT).join("profiles/examples/journeys").join(f);
            let bundle: Value =
                serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
            let (s, _, body) = server.post("/fhir", &bundle, &[]).await;
            assert_eq!(s, StatusCode::OK, "{body}");
        }
        // Every shipped view by reference, as CSV: the journey rows (in id order).
        for (name, want) in expected() {
            let params = json!({"resourceType": "Parameters", "parameter": [
                {"name": "viewReference", "valueReference": {"reference": format!("ViewDefinition/{name}")}},
                {"name": "_format", "valueCode": "csv"}]});
            let (s, ct, body) = run_op(server, &params, "").await;
            let body = String::from_utf8(body).expect("utf-8");
            assert_eq!(s, StatusCode::OK, "{name}: {body}");
            assert!(ct.starts_with("text/csv"), "{ct}");
            assert_eq!(sorted_lines(&body), sorted_lines(&want), "{name}");
        }
        // The CLI reads the same store (SQLite: the server's file).
        if let Cleanup::File(path) = &server.cleanup {
            let (code, out, err) = run_cli(&[
                "view",
                "run",
                view_path("margins").to_str().expect("utf-8"),
                "--database-url",
                &format!("sqlite:{}", path.display()),
            ]);
            assert_eq!(code, Some(0), "{err}");
            let want = expected()
                .into_iter()
                .find(|(n, _)| *n == "margins")
                .map(|(_, w)| w)
                .expect("margins");
            assert_eq!(sorted_lines(&out), sorted_lines(&want));
        }
        // More than one page of resources streams through (500 per page).
        let entries: Vec<Value> = (0..620)
            .map(|i| {
                let r = subject(i);
                json!({"resource": r, "request": {"method": "PUT", "url": format!("Patient/bulk-{i:04}")}})
            })
            .collect();
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        let (s, _, body) = server.post("/fhir", &bundle, &[]).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let params = json!({"resourceType": "Parameters", "parameter": [
            {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patients"}}]});
        let (s, ct, body) = run_op(server, &params, "?_format=ndjson").await;
        assert_eq!(s, StatusCode::OK);
        assert!(ct.starts_with("application/x-ndjson"), "{ct}");
        let text = String::from_utf8(body).expect("utf-8");
        let rows: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("row"))
            .collect();
        assert_eq!(rows.len(), 622);
        let mut ids: Vec<&str> = rows
            .iter()
            .filter_map(|r| r["patient_id"].as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 622, "each patient once");
        assert!(rows
            .iter()
            .any(|r| r["deceased_date"] == json!("2024-07-12")
                && r["site_id"] == json!("site-nl-01")));
        // JSON array and Parquet.
        let inline_view = json!({"resourceType": "ViewDefinition", "resource": "Patient",
            "select": [{"column": [{"name": "id", "path": "getResourceKey()"},
                                   {"name": "born", "path": "birthDate", "type": "date"}]}],
            "where": [{"path": "gender = 'male'"}]});
        let params = json!({"resourceType": "Parameters", "parameter": [
            {"name": "viewResource", "resource": inline_view},
            {"name": "_format", "valueCode": "json"}]});
        let (s, _, body) = run_op(server, &params, "").await;
        assert_eq!(s, StatusCode::OK);
        let rows: Value = serde_json::from_slice(&body).expect("json array");
        assert_eq!(rows, json!([{"id": "crlm-0001", "born": "1956"}]));
        let params = json!({"resourceType": "Parameters", "parameter": [
            {"name": "viewResource", "resource": params["parameter"][0]["resource"].clone()}]});
        let (s, ct, body) = run_op(server, &params, "?_format=parquet").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(ct, "application/vnd.apache.parquet");
        let (_, rows) = parquet::read(&body).expect("parquet");
        assert_eq!(
            rows,
            vec![vec![
                Cell::Str("crlm-0001".into()),
                Cell::Str("1956".into())
            ]]
        );
        // Inline resources instead of the store.
        let params = json!({"resourceType": "Parameters", "parameter": [
            {"name": "viewResource", "resource": {"resourceType": "ViewDefinition", "resource": "Patient",
                "select": [{"column": [{"name": "id", "path": "id"}]}]}},
            {"name": "resource", "resource": {"resourceType": "Patient", "id": "inline-1"}},
            {"name": "resource", "resource": {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"}}},
            {"name": "_format", "valueCode": "csv"}]});
        let (s, _, body) = run_op(server, &params, "").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            String::from_utf8(body).expect("utf-8"),
            "id\r\ninline-1\r\n"
        );
        // Refusals: an invalid view, an unknown reference, an unknown format, no view.
        let bad = json!({"resourceType": "Parameters", "parameter": [
            {"name": "viewResource", "resource": {"resourceType": "ViewDefinition", "resource": "Patient",
                "select": [{"column": [{"name": "id", "path": "id", "type": "varchar"}]}]}}]});
        let (s, _, body) = run_op(server, &bad, "").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let oo: Value = serde_json::from_slice(&body).expect("outcome");
        assert_eq!(oo["resourceType"], "OperationOutcome");
        let diag = oo["issue"][0]["diagnostics"].as_str().unwrap_or("");
        assert!(
            diag.contains("select[0].column[0]") && diag.contains("varchar"),
            "{diag}"
        );
        let unknown = json!({"resourceType": "Parameters", "parameter": [
            {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/nope"}}]});
        let (s, _, _) = run_op(server, &unknown, "").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let patients = json!({"resourceType": "Parameters", "parameter": [
            {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patients"}}]});
        let (s, _, _) = run_op(server, &patients, "?_format=xlsx").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _, _) = run_op(server, &json!({"resourceType": "Parameters"}), "").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        // A view that fails on the data is a 422 before any row is sent.
        let failing = json!({"resourceType": "Parameters", "parameter": [
            {"name": "viewResource", "resource": {"resourceType": "ViewDefinition", "resource": "Patient",
                "select": [{"column": [{"name": "x", "path": "id"}]}],
                "where": [{"path": "gender"}]}}]});
        let (s, _, body) = run_op(server, &failing, "").await;
        assert_eq!(
            s,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
}

on_both!(views_on_the_store, ValidationMode::Study, 64 * 1024 * 1024);
