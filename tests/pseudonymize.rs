//! The proof of de-identification on ingest (issue 8): the Synthea samples, which carry
//! names, addresses, telephone numbers, SSNs, driver's licence and passport numbers, MRNs
//! and full birth dates, go into a server that pseudonymizes (R4 base validation, the
//! shipped policy, a fixed key); then none of those strings is in the raw database (the
//! SQLite file and its WAL, or every table of the PostgreSQL schema), every resource of a
//! patient points at one pseudonymous Patient, a resubmission makes no new Patient, a
//! second server with the same key and the site-side `deidentify` give the same
//! pseudonyms, and a name in a scanned note is refused with its location.

// The `on_both!` scenarios take a plain server; this file starts its own (see `run`).
#[allow(unused_macros)]
mod common;

use common::*;
use imagio_gateway::pseudonymize::{Key, Policy, Pseudonymizer};
use imagio_gateway::serve::Config;
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const KEY: &str = "the study secret of the pseudonymization proof test, 32+ bytes";
/// The site of every request under `--no-auth`.
const SITE: &str = "local";

fn samples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/samples/synthea");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    // Organizations and practitioners first, as Synthea loads them.
    files.sort_by_key(|p| {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        !(n.starts_with("hospital") || n.starts_with("practitioner"))
    });
    files
}

fn pseudonymizer() -> Pseudonymizer {
    Pseudonymizer::new(
        Policy::default_policy().expect("policy"),
        Key::from_bytes(KEY.as_bytes(), Path::new("test key")).expect("key"),
    )
}

async fn start_pseudonymizing(db: Db) -> Option<Server> {
    let (store, cleanup) = open_db(db).await?;
    let config = Config {
        validation: imagio_gateway::serve::ValidationMode::Base,
        auth: imagio_gateway::auth::AuthConfig {
            disabled: true,
            ..Default::default()
        },
        pseudonymize: Some(pseudonymizer()),
        ..Config::default()
    };
    Some(serve_config(store, cleanup, config).await)
}

async fn post_text(server: &Server, text: &str) -> (StatusCode, Value) {
    let resp = server
        .client
        .post(server.url("/fhir"))
        .header("content-type", FHIR)
        .header("prefer", "return=minimal")
        .body(text.to_string())
        .send()
        .await
        .expect("post");
    let status = resp.status();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// The direct identifiers of the patients of a Synthea Bundle.
fn identifying(bundle: &Value, out: &mut BTreeMap<String, &'static str>) {
    for e in bundle["entry"].as_array().into_iter().flatten() {
        let r = &e["resource"];
        if r["resourceType"] != "Patient" {
            continue;
        }
        let mut add = |v: &Value, what: &'static str| {
            if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
                out.insert(s.to_string(), what);
            }
        };
        for n in r["name"].as_array().into_iter().flatten() {
            add(&n["family"], "name");
            for g in n["given"].as_array().into_iter().flatten() {
                add(g, "name");
            }
        }
        for a in r["address"].as_array().into_iter().flatten() {
            for l in a["line"].as_array().into_iter().flatten() {
                add(l, "address line");
            }
            add(&a["city"], "city");
            add(&a["postalCode"], "postal code");
        }
        for t in r["telecom"].as_array().into_iter().flatten() {
            add(&t["value"], "telecom");
        }
        for i in r["identifier"].as_array().into_iter().flatten() {
            let code = i["type"]["coding"][0]["code"].as_str().unwrap_or("");
            let what = match code {
                "SS" => "SSN",
                "DL" => "driver's licence",
                "PPN" => "passport",
                "MR" => "MRN",
                _ => "identifier",
            };
            add(&i["value"], what);
        }
        add(&r["birthDate"], "birth date");
    }
}

/// The input's data that is not the patients' and is kept on purpose (lower-cased): every
/// string of facilities and practitioners (their names and addresses: a practitioner may
/// share a patient's family name, a hospital a patient's city), and the clinical dates of
/// the other resources (a visit on the day of birth).
fn other_text(bundle: &Value, out: &mut Vec<String>) {
    fn walk(v: &Value, dates_only: bool, out: &mut Vec<String>) {
        match v {
            Value::String(s) => {
                let date = s.len() >= 10
                    && s.as_bytes()[4] == b'-'
                    && s[..4].bytes().all(|b| b.is_ascii_digit());
                if !dates_only || date {
                    out.push(s.to_lowercase());
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, dates_only, out)),
            Value::Object(o) => o.values().for_each(|x| walk(x, dates_only, out)),
            _ => {}
        }
    }
    for e in bundle["entry"].as_array().into_iter().flatten() {
        let t = e["resource"]["resourceType"].as_str().unwrap_or("");
        match t {
            "Patient" => {}
            "Practitioner" | "PractitionerRole" | "Organization" | "Location" => {
                walk(&e["resource"], false, out);
            }
            _ => walk(&e["resource"], true, out),
        }
    }
}

/// Whether `needle` (lower-case) occurs in `hay` (lower-cased bytes). Strings of digits
/// and punctuation only (postal codes, phone numbers, SSNs, dates) do not count inside a
/// longer number or inside a run of 32+ hex digits (UUIDs, pseudonyms), where they occur
/// by chance.
fn found(hay: &[u8], needle: &str) -> Option<usize> {
    let n = needle.as_bytes();
    let numeric = n.iter().all(|b| !b.is_ascii_alphabetic());
    let mut from = 0;
    while let Some(pos) = hay[from..].windows(n.len()).position(|w| w == n) {
        let start = from + pos;
        let end = start + n.len();
        if !numeric {
            return Some(start);
        }
        let digit_next = (start > 0 && hay[start - 1].is_ascii_digit())
            || hay.get(end).is_some_and(u8::is_ascii_digit);
        let hex = |b: &u8| b.is_ascii_hexdigit() || *b == b'-';
        let left = hay[..start].iter().rev().take_while(|b| hex(b)).count();
        let right = hay[end..].iter().take_while(|b| hex(b)).count();
        let in_hex = n.iter().all(hex) && left + n.len() + right >= 32;
        if !digit_next && !in_hex {
            return Some(start);
        }
        from = start + 1;
    }
    None
}

/// The raw bytes of the database, lower-cased: the SQLite file after a checkpoint plus its
/// WAL, or every row of every table of the PostgreSQL schema as text.
///
/// The ledger keeps each request's payload, gzip-compressed here; the audit trail work
/// seals those payloads by encryption at rest. Nothing is decoded specially: the scan sees
/// the bytes as stored.
async fn raw_database(server: &Server) -> Vec<u8> {
    let mut bytes = match &server.cleanup {
        Cleanup::File(path) => {
            use sqlx::Connection as _;
            let mut c =
                sqlx::sqlite::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
                    .await
                    .expect("open the sqlite file");
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut c)
                .await
                .expect("checkpoint");
            c.close().await.expect("close");
            let mut b = std::fs::read(path).expect("read the sqlite file");
            if let Ok(wal) = std::fs::read(format!("{}-wal", path.display())) {
                b.extend(wal);
            }
            b
        }
        Cleanup::Schema(url, schema) => {
            use sqlx::Connection as _;
            let mut c = sqlx::postgres::PgConnection::connect(url)
                .await
                .expect("connect postgres");
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
            )
            .bind(schema)
            .fetch_all(&mut c)
            .await
            .expect("tables");
            assert!(tables.len() >= 5, "tables of {schema}: {tables:?}");
            let mut b = Vec::new();
            for t in tables {
                let rows: Vec<String> =
                    sqlx::query_scalar(&format!("SELECT r::text FROM \"{schema}\".\"{t}\" r"))
                        .fetch_all(&mut c)
                        .await
                        .expect("dump");
                for r in rows {
                    b.extend(r.into_bytes());
                    b.push(b'\n');
                }
            }
            c.close().await.expect("close");
            b
        }
        Cleanup::Nothing => panic!("no database"),
    };
    bytes.make_ascii_lowercase();
    bytes
}

async fn count(server: &Server, query: &str) -> u64 {
    let sep = if query.ends_with('?') { "" } else { "&" };
    let (s, _, b) = server
        .get(&format!("/fhir/{query}{sep}_summary=count"))
        .await;
    assert_eq!(s, StatusCode::OK, "{query}: {b}");
    b["total"]
        .as_u64()
        .unwrap_or_else(|| panic!("{query}: no total in {b}"))
}

/// The Patient entry of a Synthea Bundle: its `fullUrl` id.
fn patient_local(bundle: &Value) -> Option<String> {
    bundle["entry"].as_array()?.iter().find_map(|e| {
        (e["resource"]["resourceType"] == "Patient")
            .then(|| {
                e["fullUrl"]
                    .as_str()
                    .map(|f| f.trim_start_matches("urn:uuid:").to_string())
            })
            .flatten()
    })
}

mod scenarios {
    use super::*;

    pub async fn proof(server: &Server) {
        let p = pseudonymizer();
        let mut secrets = BTreeMap::new();
        let mut others = Vec::new();
        let mut bundles = Vec::new();
        for f in samples() {
            let text = std::fs::read_to_string(&f).expect("sample");
            let v: Value = serde_json::from_str(&text).expect("sample json");
            identifying(&v, &mut secrets);
            other_text(&v, &mut others);
            let (s, b) = post_text(server, &text).await;
            assert_eq!(s, StatusCode::OK, "{}: {b}", f.display());
            bundles.push((f, text, v));
        }
        assert!(secrets.len() > 100, "{} strings", secrets.len());

        // Strings the input also carries as data of other resources (a facility's postal
        // code, a clinical date on the day of birth) are not patient data there.
        let others = others.join("\u{1}");
        let (excluded, checked): (Vec<_>, Vec<_>) = secrets
            .iter()
            .partition(|(s, _)| found(others.as_bytes(), &s.to_lowercase()).is_some());
        eprintln!("not checked (also data of other resources in the input): {excluded:?}");
        assert!(
            excluded
                .iter()
                .all(|(_, w)| ["postal code", "birth date", "city", "name"].contains(*w)),
            "{excluded:?}"
        );
        for what in [
            "name",
            "address line",
            "telecom",
            "SSN",
            "driver's licence",
            "passport",
            "MRN",
            "birth date",
            "postal code",
        ] {
            assert!(
                checked.iter().any(|(_, w)| **w == what),
                "no {what} checked"
            );
        }
        // The scan finds every checked string where it is: in the input.
        let input: Vec<u8> = bundles
            .iter()
            .flat_map(|(_, t, _)| t.to_lowercase().into_bytes())
            .collect();
        for (s, what) in &checked {
            assert!(
                found(&input, &s.to_lowercase()).is_some(),
                "{what} {s:?} not found in the input"
            );
        }
        let raw = raw_database(server).await;
        assert!(raw.len() > 1_000_000, "database of {} bytes", raw.len());
        let leaks: Vec<String> = checked
            .iter()
            .filter_map(|(s, what)| {
                found(&raw, &s.to_lowercase()).map(|at| {
                    let lo = at.saturating_sub(60);
                    let hi = (at + s.len() + 60).min(raw.len());
                    format!(
                        "{what} {s:?}: ...{}...",
                        String::from_utf8_lossy(&raw[lo..hi])
                    )
                })
            })
            .collect();
        assert!(
            leaks.is_empty(),
            "{} found in the database:\n{}",
            leaks.len(),
            leaks.join("\n")
        );

        // One pseudonymous Patient per patient, every resource of the patient linked to it.
        let patients: Vec<&(PathBuf, String, Value)> = bundles
            .iter()
            .filter(|(_, _, v)| patient_local(v).is_some())
            .collect();
        assert_eq!(count(server, "Patient?").await as usize, patients.len());
        for (f, _, v) in &patients {
            let local = patient_local(v).expect("patient");
            let id = p.patient_id(SITE, &local);
            let (s, _, patient) = server.get(&format!("/fhir/Patient/{id}")).await;
            assert_eq!(s, StatusCode::OK, "{}: {patient}", f.display());
            assert_eq!(patient["birthDate"].as_str().map(str::len), Some(4));
            assert!(patient.get("name").is_none() && patient.get("address").is_none());
            for i in patient["identifier"].as_array().expect("identifiers") {
                assert_eq!(i["system"], "https://a-imagio.eu/fhir/sid/subject");
            }
            let subject = patient["identifier"][0]["value"]
                .as_str()
                .expect("pseudonym");
            for (res_type, param) in [
                ("Observation", "subject"),
                ("Encounter", "subject"),
                ("Condition", "subject"),
                ("Procedure", "subject"),
                ("Immunization", "patient"),
                ("Claim", "patient"),
            ] {
                let sent = v["entry"]
                    .as_array()
                    .expect("entries")
                    .iter()
                    .filter(|e| e["resource"]["resourceType"] == res_type)
                    .count() as u64;
                let linked = count(server, &format!("{res_type}?{param}=Patient/{id}")).await;
                assert_eq!(linked, sent, "{}: {res_type} of Patient/{id}", f.display());
                // And through the subject pseudonym, by chaining.
                if sent > 0 && param == "subject" {
                    let chained = count(
                        server,
                        &format!(
                            "{res_type}?subject:Patient.identifier=https://a-imagio.eu/fhir/sid/subject%7C{subject}"
                        ),
                    )
                    .await;
                    assert_eq!(chained, sent, "{}: {res_type} by pseudonym", f.display());
                }
            }
        }

        // A resubmission links to the same subject: no new Patient, no new version.
        let (f, text, v) = patients[0];
        let id = p.patient_id(SITE, &patient_local(v).expect("patient"));
        let before = count(server, "Observation?").await;
        let (s, b) = post_text(server, text).await;
        assert_eq!(s, StatusCode::OK, "{}: {b}", f.display());
        assert_eq!(count(server, "Patient?").await as usize, patients.len());
        let (_, _, history) = server.get(&format!("/fhir/Patient/{id}/_history")).await;
        assert_eq!(
            history["entry"].as_array().map(Vec::len),
            Some(1),
            "{history}"
        );
        // (Synthea POSTs its observations: those are new resources, of the same subject.)
        let sent = v["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Observation")
            .count() as u64;
        assert_eq!(count(server, "Observation?").await, before + sent);
        assert_eq!(
            count(server, &format!("Observation?subject=Patient/{id}")).await,
            2 * sent
        );

        // A name in a note the policy scans is refused, naming where, and nothing is stored.
        let procedures = count(server, "Procedure?").await;
        let patient = v["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .find(|e| e["resource"]["resourceType"] == "Patient")
            .expect("patient")
            .clone();
        let family = patient["resource"]["name"][0]["family"]
            .as_str()
            .expect("family")
            .to_string();
        let bad = serde_json::json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [patient, {
                "resource": {"resourceType": "Procedure", "status": "completed",
                    "subject": {"reference": patient["fullUrl"]},
                    "note": [{"text": format!("Mr {family} tolerated the ablation")}]},
                "request": {"method": "POST", "url": "Procedure"}
            }]
        });
        let (s, b) = post_text(server, &bad.to_string()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        let issue = &b["issue"][0];
        assert_eq!(
            issue["expression"][0], "Bundle.entry[1].resource.note[0].text",
            "{b}"
        );
        assert!(!b.to_string().contains(&family), "{b}");
        assert_eq!(count(server, "Procedure?").await, procedures);

        // The site-side `deidentify` gives what the server stored: the server, applying the
        // policy again, changes nothing (no new version of the Patient).
        let out = std::env::temp_dir().join(unique("imagio_deid"));
        let key = out.with_extension("key");
        std::fs::write(&key, KEY).expect("key file");
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_imagio-gateway"))
            .args(["deidentify", "--site", SITE, "--key"])
            .arg(&key)
            .arg("--out")
            .arg(&out)
            .arg(f)
            .status()
            .expect("deidentify");
        assert!(status.success());
        let name = f.file_name().expect("name");
        let site_side = std::fs::read_to_string(out.join(name)).expect("output");
        for (s, _) in &checked {
            if v.to_string().contains(s.as_str())
                && found(others.as_bytes(), &s.to_lowercase()).is_none()
            {
                assert!(
                    found(site_side.to_lowercase().as_bytes(), &s.to_lowercase()).is_none(),
                    "{s} in the site-side output"
                );
            }
        }
        let site_json: Value = serde_json::from_str(&site_side).expect("json");
        let site_patient = site_json["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .find(|e| e["resource"]["resourceType"] == "Patient")
            .expect("patient");
        assert_eq!(site_patient["request"]["url"], format!("Patient/{id}"));
        let (_, _, stored) = server.get(&format!("/fhir/Patient/{id}")).await;
        assert_eq!(site_patient["resource"]["identifier"], stored["identifier"]);
        let (s, b) = post_text(server, &site_side).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (_, _, history) = server.get(&format!("/fhir/Patient/{id}/_history")).await;
        assert_eq!(
            history["entry"].as_array().map(Vec::len),
            Some(1),
            "{history}"
        );
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_file(&key);
    }
}

/// Runs the proof on one database, then a second server with the same key on a fresh
/// database of the same kind gives the same pseudonyms.
async fn run(db: Db) {
    let Some(server) = start_pseudonymizing(db).await else {
        return;
    };
    scenarios::proof(&server).await;
    let Some(second) = start_pseudonymizing(db).await else {
        return;
    };
    let smallest = samples()
        .into_iter()
        .filter(|f| {
            !f.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with("hospital")
                    || n.to_string_lossy().starts_with("practitioner")
            })
        })
        .min_by_key(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(u64::MAX))
        .expect("a sample");
    let text = std::fs::read_to_string(&smallest).expect("sample");
    let (s, b) = post_text(&second, &text).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&text).expect("json");
    let id = pseudonymizer().patient_id(SITE, &patient_local(&v).expect("patient"));
    let (s1, _, a) = server.get(&format!("/fhir/Patient/{id}")).await;
    let (s2, _, b) = second.get(&format!("/fhir/Patient/{id}")).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(a["identifier"], b["identifier"]);
    assert_eq!(
        count(&server, &format!("Observation?subject=Patient/{id}")).await,
        count(&second, &format!("Observation?subject=Patient/{id}")).await
    );
    second.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite() {
    run(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres() {
    if std::env::var("IMAGIO_TEST_DATABASE_URL").is_err() {
        eprintln!("SKIPPED: PostgreSQL proof: IMAGIO_TEST_DATABASE_URL not set");
        return;
    }
    run(Db::Postgres).await;
}

/// The study's own journeys (what the demo push sends) still validate against the study
/// profiles once de-identified, and their subjects become pseudonymous.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn journeys_validate_after_deidentification() {
    let (store, cleanup) = open_db(Db::Sqlite).await.expect("sqlite");
    let config = Config {
        validation: imagio_gateway::serve::ValidationMode::Study,
        auth: imagio_gateway::auth::AuthConfig {
            disabled: true,
            ..Default::default()
        },
        pseudonymize: Some(pseudonymizer()),
        ..Config::default()
    };
    let server = serve_config(store, cleanup, config).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/examples/journeys");
    let mut n = 0;
    for f in std::fs::read_dir(&dir).expect("journeys").flatten() {
        let text = std::fs::read_to_string(f.path()).expect("journey");
        let (s, b) = post_text(&server, &text).await;
        assert_eq!(s, StatusCode::OK, "{}: {b}", f.path().display());
        n += 1;
    }
    assert!(n >= 2);
    let (_, _, patients) = server.get("/fhir/Patient").await;
    for e in patients["entry"].as_array().expect("patients") {
        let id = e["resource"]["id"].as_str().expect("id");
        assert!(id.starts_with("p-") && id.len() == 34, "{id}");
        assert_eq!(
            e["resource"]["meta"]["security"]
                .as_array()
                .map(|a| a.iter().any(|c| c["code"] == "PSEUDED")),
            Some(true)
        );
    }
    server.stop().await;
}
