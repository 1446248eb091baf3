//! Ingest of site exports through mappings, end to end on SQLite and PostgreSQL:
//! `POST /fhir/ingest/{mapping}` (CSV and multipart uploads by an authenticated site
//! client, a broken upload refused with the mapping's exact diagnostics and nothing
//! stored, reruns that create nothing) and the bulk `import` (the report of the rows that
//! did not load, a rerun after fixing the input that adds only what was missing).

#[allow(unused_macros)]
mod common;

use common::{open_store, serve_config, unique, Db, Server};
use imagio_gateway::auth::clients::{self, NewClient};
use imagio_gateway::auth::keys::{self, Alg};
use imagio_gateway::auth::{AuthConfig, Role};
use imagio_gateway::serve::{AppState, Config, ValidationMode};
use reqwest::StatusCode;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/nl01-retrospective")
}

/// An authenticated, study-validating server on `db`, a site client of `nl01` registered
/// with `scope`, and a token of it.
async fn start(db: Db, scope: &str) -> Option<(Server, String, PathBuf)> {
    let (store, cleanup) = open_store(db).await?;
    let config = Config {
        validation: ValidationMode::Study,
        auth: AuthConfig::default(),
        mappings_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")),
        ..Config::default()
    };
    let server = serve_config(store, cleanup, config).await;
    let dir = std::env::temp_dir().join(unique("imagio_ingest"));
    let token = site_token(&server, &dir, scope).await;
    Some((server, token, dir))
}

async fn site_token(server: &Server, dir: &Path, scope: &str) -> String {
    let generated = keys::generate_files(Alg::Es384, dir).expect("keys");
    let row = clients::add(
        &server.store,
        &NewClient {
            id: None,
            site: "nl01".into(),
            role: Role::Site,
            scope: scope.into(),
            jwks: Some(clients::read_jwks(&generated.jwks_path).expect("jwks")),
            jwks_url: None,
        },
    )
    .await
    .expect("register");
    let settings = imagio_gateway::client::Settings {
        server: format!("{}/fhir", server.base),
        client_id: row.id,
        key: generated.private_path,
        kid: None,
        scope: scope.into(),
        ca_cert: None,
    };
    let mut session = imagio_gateway::client::Session::connect(settings)
        .await
        .expect("session");
    session.token().await.expect("token")
}

/// POSTs `body` with `content_type` to `/fhir/ingest/{mapping}`.
async fn upload(
    s: &Server,
    token: &str,
    mapping: &str,
    content_type: &str,
    extra: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = s
        .client
        .post(s.url(&format!("/fhir/ingest/{mapping}")))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let bytes = resp.bytes().await.expect("body");
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, value)
}

async fn count(s: &Server, token: &str, t: &str) -> i64 {
    let resp = s
        .client
        .get(s.url(&format!("/fhir/{t}?_summary=count")))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.expect("json");
    v["total"].as_i64().expect("total")
}

/// How many versions of `t` there are (history of the type).
async fn versions(s: &Server, token: &str, t: &str) -> usize {
    let resp = s
        .client
        .get(s.url(&format!("/fhir/{t}/_history?_count=1000")))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.expect("json");
    v["entry"].as_array().map_or(0, Vec::len)
}

fn statuses(response: &Value) -> Vec<String> {
    response["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["response"]["status"].as_str().unwrap_or_default(),
                e["response"]["etag"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

fn multipart(parts: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "test-boundary-1234";
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: text/csv\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn ingest_scenario(db: Db) {
    let Some((s, token, dir)) = start(db, "system/*.cruds").await else {
        return;
    };
    let basic = std::fs::read(folder().join("fixtures/basic/registry-export.csv")).expect("csv");
    let broken = std::fs::read(folder().join("fixtures/broken/registry-export.csv")).expect("csv");
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(folder().join("fixtures/basic/expected.json")).expect("json"),
    )
    .expect("json");
    let entries = expected["entry"].as_array().expect("entries").len();
    let patients = expected["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Patient")
        .count();
    let disposition = [(
        "content-disposition",
        "attachment; filename=\"registry-export.csv\"",
    )];

    // A broken export: 422 with the mapping's diagnostics, exactly, and nothing stored.
    let (st, oo) = upload(
        &s,
        &token,
        "nl01-retrospective",
        "text/csv",
        &disposition,
        broken.clone(),
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{oo}");
    let got: Vec<String> = oo["issue"]
        .as_array()
        .expect("issues")
        .iter()
        .map(|i| {
            format!(
                "{}: {}",
                i["severity"].as_str().unwrap_or_default(),
                i["details"]["text"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let want: Vec<String> =
        std::fs::read_to_string(folder().join("fixtures/broken/expected-report.txt"))
            .expect("report")
            .lines()
            .map(str::to_string)
            .collect();
    assert_eq!(got, want);
    assert_eq!(count(&s, &token, "Patient").await, 0, "nothing stored");

    // The clean export as text/csv: every resource created.
    let (st, first) = upload(
        &s,
        &token,
        "nl01-retrospective",
        "text/csv",
        &disposition,
        basic.clone(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{first}");
    assert_eq!(first["type"], "transaction-response");
    let created = statuses(&first);
    assert_eq!(created.len(), entries);
    assert!(
        created.iter().all(|x| x == "201 Created W/\"1\""),
        "{created:?}"
    );
    assert_eq!(count(&s, &token, "Patient").await, patients as i64);

    // The same upload again, as text/csv and as multipart: nothing new.
    let (st, again) = upload(
        &s,
        &token,
        "nl01-retrospective",
        "text/csv",
        &disposition,
        basic.clone(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert!(
        statuses(&again).iter().all(|x| x == "200 OK W/\"1\""),
        "{again}"
    );
    let (ct, body) = multipart(&[("registry", "registry-export.csv", &basic)]);
    let (st, multi) = upload(&s, &token, "nl01-retrospective", &ct, &[], body).await;
    assert_eq!(st, StatusCode::OK, "{multi}");
    assert!(
        statuses(&multi).iter().all(|x| x == "200 OK W/\"1\""),
        "{multi}"
    );
    assert_eq!(versions(&s, &token, "Patient").await, patients);

    // A broken multipart upload: the same diagnostics, nothing stored.
    let (ct, body) = multipart(&[("registry", "registry-export.csv", &broken)]);
    let (st, oo) = upload(&s, &token, "nl01-retrospective", &ct, &[], body).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{oo}");
    assert_eq!(oo["issue"].as_array().map(Vec::len), Some(want.len()));
    assert_eq!(count(&s, &token, "Patient").await, patients as i64);

    // Refusals that name what to do.
    let (ct, body) = multipart(&[("patients", "x.csv", &basic)]);
    let (st, oo) = upload(&s, &token, "nl01-retrospective", &ct, &[], body).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{oo}");
    assert!(
        oo.to_string().contains(
            "part 'patients' is not a source of mapping 'nl01-retrospective' (sources: registry)"
        ),
        "{oo}"
    );
    let (st, oo) = upload(
        &s,
        &token,
        "nl01-retrospective",
        "application/fhir+json",
        &[],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{oo}");
    assert!(oo.to_string().contains("reads CSV files, not FHIR"), "{oo}");
    let (st, oo) = upload(&s, &token, "nope", "text/csv", &[], basic.clone()).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{oo}");
    assert!(oo.to_string().contains("nl01-retrospective"), "{oo}");

    // The ledger keeps the raw upload (URLs below the FHIR base, as for every write).
    let entries = s.store.submissions(None, 100).await.expect("ledger");
    let ingest = |e: &&imagio_gateway::store::LedgerEntry, status: u16| {
        e.submission.url == "/ingest/nl01-retrospective" && e.submission.status == status
    };
    // Newest first: the multipart upload (its body as sent), then the text/csv ones.
    let refused: Vec<&imagio_gateway::store::LedgerEntry> =
        entries.iter().filter(|e| ingest(e, 422)).collect();
    assert_eq!(refused.len(), 2);
    assert!(refused[0]
        .submission
        .payload
        .starts_with(b"--test-boundary-1234\r\n"));
    assert_eq!(refused[1].submission.payload, broken);
    assert_eq!(
        refused[1].submission.content_type.as_deref(),
        Some("text/csv")
    );
    let accepted: Vec<&imagio_gateway::store::LedgerEntry> =
        entries.iter().filter(|e| ingest(e, 200)).collect();
    assert_eq!(accepted.len(), 3);
    assert_eq!(accepted[2].submission.payload, basic);
    assert_eq!(accepted[2].submission.site, "nl01");

    // A FHIR export to a mapping with FHIR sources: a Bundle as application/fhir+json is
    // mapped and stored, again changes nothing; broken NDJSON gets the fixture's exact
    // diagnostics (by NDJSON line, source resource and expression) and stores nothing.
    let ehr = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/ehr-fhir-export");
    let bundle = std::fs::read(ehr.join("fixtures/basic/ehr-export.json")).expect("bundle");
    let ehr_expected: Value = serde_json::from_str(
        &std::fs::read_to_string(ehr.join("fixtures/basic/expected.json")).expect("json"),
    )
    .expect("json");
    let ehr_entries = ehr_expected["entry"].as_array().expect("entries").len();
    let procedures_before = count(&s, &token, "Procedure").await;
    let broken_ndjson =
        std::fs::read(ehr.join("fixtures/broken/ehr-export.ndjson")).expect("ndjson");
    let (st, oo) = upload(
        &s,
        &token,
        "ehr-fhir-export",
        "application/fhir+ndjson",
        &[(
            "content-disposition",
            "attachment; filename=\"ehr-export.ndjson\"",
        )],
        broken_ndjson,
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{oo}");
    let got: Vec<String> = oo["issue"]
        .as_array()
        .expect("issues")
        .iter()
        .map(|i| {
            format!(
                "{}: {}",
                i["severity"].as_str().unwrap_or_default(),
                i["details"]["text"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let want_ehr: Vec<String> =
        std::fs::read_to_string(ehr.join("fixtures/broken/expected-report.txt"))
            .expect("report")
            .lines()
            .map(str::to_string)
            .collect();
    assert_eq!(got, want_ehr);
    assert_eq!(count(&s, &token, "Procedure").await, procedures_before);
    let (st, first) = upload(
        &s,
        &token,
        "ehr-fhir-export",
        "application/fhir+json",
        &[],
        bundle.clone(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{first}");
    let created = statuses(&first);
    assert_eq!(created.len(), ehr_entries);
    assert!(
        created.iter().all(|x| x == "201 Created W/\"1\""),
        "{created:?}"
    );
    assert!(count(&s, &token, "Procedure").await > procedures_before);
    let (st, again) = upload(
        &s,
        &token,
        "ehr-fhir-export",
        "application/fhir+json",
        &[],
        bundle,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert!(
        statuses(&again).iter().all(|x| x == "200 OK W/\"1\""),
        "{again}"
    );

    // A token that may only read cannot ingest.
    let reader = site_token(&s, &dir, "system/*.rs").await;
    let (st, oo) = upload(&s, &reader, "nl01-retrospective", "text/csv", &[], basic).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{oo}");
    let _ = std::fs::remove_dir_all(&dir);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_sqlite() {
    ingest_scenario(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_postgres() {
    ingest_scenario(Db::Postgres).await;
}

/// A generated export of 40 rows with two broken ones (an unmapped technique, an unknown
/// diagnosis), Latin-1.
fn export(dir: &Path, broken: bool) -> PathBuf {
    let path = dir.join("registry.csv");
    imagio_gateway::bench::import::generate(&path, 40).expect("generate");
    if broken {
        let bytes = std::fs::read(&path).expect("read");
        let mut lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
        lines[5] = b"0000005;M;1958;colorectaal;2021-11-30;12-01-2022;cryo;percutaan;visueel;NA;NA;NA;4a;3,1;2;NA;NA;NA;NA;NA;NA;\r".to_vec();
        lines[11] = b"0000011;V;1949;Cholangiocarcinoom;10-02-2023;01-03-2023;RFA;percutaan;3D;NA;NA;NA;5;2,2;4,5;NA;NA;NA;NA;NA;NA;\r".to_vec();
        std::fs::write(&path, lines.join(&b'\n')).expect("write");
    }
    path
}

async fn import_scenario(db: Db) {
    let Some((s, token, dir)) = start(db, "system/*.cruds").await else {
        return;
    };
    let state = AppState::new(
        s.store.clone(),
        Config {
            validation: ValidationMode::Study,
            ..Config::default()
        },
    )
    .expect("state");
    let report = dir.join("report.ndjson");
    let options = |input: PathBuf| imagio_gateway::ingest::import::Options {
        mapping: folder().join("mapping.toml"),
        inputs: vec![input],
        report: Some(report.clone()),
        batch: 7,
        site: Some("nl01".into()),
        progress: false,
    };
    let first = imagio_gateway::ingest::import::import(&state, &options(export(&dir, true)))
        .await
        .expect("import");
    assert_eq!(first.rows, 40);
    assert_eq!(first.failed_rows, 2);
    assert_eq!(first.updated + first.unchanged, 0);
    assert_eq!(first.batches, 6, "40 rows in batches of 7");
    let lines: Vec<Value> = std::fs::read_to_string(&report)
        .expect("report")
        .lines()
        .map(|l| serde_json::from_str(l).expect("ndjson"))
        .collect();
    let want = [
        serde_json::json!({"file": "registry.csv", "row": 6, "cell": 7, "header": "Techniek", "mapping": "mapping.toml:157", "resource": "Procedure/nl01-0000005-abl-l1", "location": null, "severity": "error", "message": "code 'cryo' is not mapped by ConceptMap 'modality' (maps: laser, micro, microgolf, mwa, radiofrequentie, rfa)"}),
        serde_json::json!({"file": "registry.csv", "row": 12, "cell": 4, "header": "Diagnose", "mapping": "mapping.toml:109", "resource": "Condition/nl01-0000011-dx", "location": null, "severity": "error", "message": "code 'Cholangiocarcinoom' is not mapped by ConceptMap 'tumour-type' (maps: colorectaal, crlm, hcc, overige metastase)"}),
    ];
    assert_eq!(lines, want);
    assert_eq!(
        count(&s, &token, "Patient").await,
        38,
        "failed rows load nothing"
    );
    let resources = first.created;

    // The input fixed: the two rows load, nothing else changes, nothing is duplicated.
    let second = imagio_gateway::ingest::import::import(&state, &options(export(&dir, false)))
        .await
        .expect("import");
    assert_eq!(second.failed_rows, 0);
    assert_eq!(second.updated, 0);
    assert_eq!(second.unchanged, resources);
    assert!(second.created > 0);
    assert_eq!(std::fs::read_to_string(&report).expect("report"), "");
    assert_eq!(count(&s, &token, "Patient").await, 40);
    assert_eq!(versions(&s, &token, "Patient").await, 40);
    // Once more: nothing at all.
    let third = imagio_gateway::ingest::import::import(&state, &options(export(&dir, false)))
        .await
        .expect("import");
    assert_eq!(third.created + third.updated, 0);
    assert_eq!(third.unchanged, resources + second.created);
    let _ = std::fs::remove_dir_all(&dir);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_sqlite() {
    import_scenario(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_postgres() {
    import_scenario(Db::Postgres).await;
}
