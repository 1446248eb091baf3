//! Bulk Data `$export` end to end: real servers on 127.0.0.1 with authentication on (site
//! and sponsor clients with ES384 keys and real tokens), on a SQLite file and, when
//! `IMAGIO_TEST_DATABASE_URL` is set, on PostgreSQL: kick-off, polling, manifest and
//! downloads; `_type`, `_since`, `_typeFilter`; Patient and Group compartments; tenancy;
//! cancel; a restart mid-job and a second replica taking over a dead one's job.

#[allow(unused_macros)]
mod common;

use imagio_gateway::auth::keys::SigningKey;
use imagio_gateway::auth::{AuthConfig, Role};
use imagio_gateway::export::ExportConfig;
use imagio_gateway::serve::{serve_on, AppState, Config, ValidationMode};
use imagio_gateway::store::Store;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        uuid::Uuid::new_v4().simple()
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Db {
    Sqlite,
    Postgres,
}

/// A database and an export folder shared by the servers of one test.
struct Env {
    file: Option<PathBuf>,
    pg: Option<(String, String)>,
    export_dir: PathBuf,
}

impl Env {
    fn new(db: Db) -> Option<Env> {
        let export_dir = std::env::temp_dir().join(unique("imagio_export"));
        match db {
            Db::Sqlite => Some(Env {
                file: Some(std::env::temp_dir().join(format!("{}.sqlite", unique("imagio_ex")))),
                pg: None,
                export_dir,
            }),
            Db::Postgres => {
                let Ok(url) = std::env::var("IMAGIO_TEST_DATABASE_URL") else {
                    eprintln!("SKIPPED: PostgreSQL export test: IMAGIO_TEST_DATABASE_URL not set");
                    return None;
                };
                Some(Env {
                    file: None,
                    pg: Some((url, unique("x"))),
                    export_dir,
                })
            }
        }
    }

    async fn store(&self) -> Store {
        match (&self.file, &self.pg) {
            (Some(f), _) => Store::open(f.to_str().expect("utf-8"))
                .await
                .expect("sqlite"),
            (_, Some((url, schema))) => imagio_gateway::store::postgres::open(url, Some(schema))
                .await
                .expect("postgres"),
            _ => unreachable!("an Env has a database"),
        }
    }

    /// A server on this database with these export settings (quick polling, short lease).
    async fn serve(&self, tune: impl FnOnce(&mut ExportConfig)) -> Server {
        let store = self.store().await;
        let mut export = ExportConfig {
            dir: self.export_dir.clone(),
            poll: Duration::from_millis(100),
            lease: Duration::from_secs(2),
            ..ExportConfig::default()
        };
        tune(&mut export);
        let config = Config {
            validation: ValidationMode::Base,
            auth: AuthConfig::default(),
            export,
            ..Config::default()
        };
        let state = AppState::new(store.clone(), config).expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve_on(listener, state, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        Server {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn cleanup(self) {
        if let Some(f) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", f.display()));
            }
        }
        if let Some((url, schema)) = &self.pg {
            let _ = imagio_gateway::store::postgres::drop_schema(url, schema).await;
        }
        let _ = std::fs::remove_dir_all(&self.export_dir);
    }
}

struct Server {
    base: String,
    http: reqwest::Client,
    store: Store,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A registered client.
struct Client {
    id: String,
    key: SigningKey,
    scope: String,
}

impl Server {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    async fn register(&self, role: Role, site: &str, scope: &str) -> Client {
        let id = unique("client");
        let key = common::register_client(&self.store, &id, role, site, scope).await;
        Client {
            id,
            key,
            scope: scope.into(),
        }
    }

    /// An access token of `c` from this server.
    async fn token(&self, c: &Client) -> String {
        let token_url = format!("{}/auth/token", self.base);
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs(),
        )
        .expect("secs");
        let assertion = c
            .key
            .sign(
                &json!({"iss": c.id, "sub": c.id, "aud": token_url, "iat": now, "exp": now + 240,
                        "jti": uuid::Uuid::new_v4().to_string()}),
                "JWT",
            )
            .expect("sign");
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "client_credentials"),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", assertion.as_str()),
                ("scope", c.scope.as_str()),
            ])
            .finish();
        let r = self
            .http
            .post(token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("token request");
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.expect("token json");
        v["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// A request to `url` (absolute, or a path below the FHIR base).
    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, String) {
        let url = if url.starts_with("http") {
            url.to_string()
        } else {
            format!("{}/fhir{url}", self.base)
        };
        let mut r = self.http.request(method, url).bearer_auth(token);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        let resp = r.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.expect("body"))
    }

    /// Kicks off `path` (`/$export?...`); returns the status URL.
    async fn kickoff(&self, path: &str, token: &str) -> String {
        let (status, headers, body) = self
            .call(reqwest::Method::GET, path, token, KICKOFF, None)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{path}: {body}");
        headers
            .get("content-location")
            .and_then(|v| v.to_str().ok())
            .expect("Content-Location")
            .to_string()
    }

    /// Polls `status_url` until the manifest (at most 60 s).
    async fn manifest(&self, status_url: &str, token: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, headers, body) = self
                .call(reqwest::Method::GET, status_url, token, &[], None)
                .await;
            match status {
                StatusCode::OK => {
                    assert!(headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|c| c.starts_with("application/json")));
                    return serde_json::from_str(&body).expect("manifest json");
                }
                StatusCode::ACCEPTED => {
                    assert!(headers.contains_key("x-progress"));
                    assert!(headers.contains_key("retry-after"));
                }
                s => panic!("status {s}: {body}"),
            }
            assert!(Instant::now() < deadline, "the export did not finish");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The ids per type in the manifest's files, downloaded with `token`; checks each
    /// file's count.
    async fn downloaded(&self, manifest: &Value, token: &str) -> Vec<(String, BTreeSet<String>)> {
        let mut out = Vec::new();
        for o in manifest["output"].as_array().expect("output") {
            let (status, headers, body) = self
                .call(
                    reqwest::Method::GET,
                    o["url"].as_str().expect("url"),
                    token,
                    &[("accept", "application/fhir+ndjson")],
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(
                headers.get("content-type").and_then(|v| v.to_str().ok()),
                Some("application/fhir+ndjson")
            );
            let t = o["type"].as_str().expect("type").to_string();
            let mut ids = BTreeSet::new();
            let mut lines = 0;
            for line in body.lines() {
                let v: Value = serde_json::from_str(line).expect("ndjson line");
                assert_eq!(v["resourceType"], t.as_str());
                ids.insert(v["id"].as_str().expect("id").to_string());
                lines += 1;
            }
            assert_eq!(lines, ids.len(), "each resource once");
            assert_eq!(o["count"].as_u64(), Some(lines as u64));
            out.push((t, ids));
        }
        out
    }

    /// Posts a transaction Bundle of `resources` (with `fullUrl`s `urn:uuid:` + their
    /// `id` member, removed); returns the stored `Type/id`s in order.
    async fn transaction(&self, token: &str, resources: Vec<Value>) -> Vec<String> {
        let entries: Vec<Value> = resources
            .into_iter()
            .map(|mut r| {
                let full = r["id"].as_str().map(|i| format!("urn:uuid:{i}"));
                if let Some(o) = r.as_object_mut() {
                    o.remove("id");
                }
                let t = r["resourceType"].as_str().expect("type").to_string();
                json!({"fullUrl": full, "resource": r, "request": {"method": "POST", "url": t}})
            })
            .collect();
        let (status, _, body) = self
            .call(
                reqwest::Method::POST,
                "",
                token,
                &[],
                Some(json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        v["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| {
                let loc = e["response"]["location"].as_str().expect("location");
                loc.split("/_history").next().unwrap_or(loc).to_string()
            })
            .collect()
    }
}

const KICKOFF: &[(&str, &str)] = &[
    ("accept", "application/fhir+json"),
    ("prefer", "respond-async"),
];

fn uuid_n(n: u32) -> String {
    format!("7e1c0000-0000-4000-8000-{n:012}")
}

fn patient(n: u32, family: &str) -> Value {
    json!({"resourceType": "Patient", "id": uuid_n(n), "name": [{"family": family}]})
}

fn observation(n: u32, subject: u32, code: &str) -> Value {
    json!({"resourceType": "Observation", "id": uuid_n(n), "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
           "subject": {"reference": format!("urn:uuid:{}", uuid_n(subject))}})
}

fn ids_of<'a>(files: &'a [(String, BTreeSet<String>)], t: &str) -> Option<&'a BTreeSet<String>> {
    files.iter().find(|(x, _)| x == t).map(|(_, ids)| ids)
}

fn types_of(files: &[(String, BTreeSet<String>)]) -> Vec<&str> {
    files.iter().map(|(t, _)| t.as_str()).collect()
}

/// The id part of `Type/id` references.
fn id_set(refs: &[String], t: &str) -> BTreeSet<String> {
    refs.iter()
        .filter_map(|r| r.strip_prefix(&format!("{t}/")))
        .map(str::to_string)
        .collect()
}

async fn full_flow(db: Db) {
    let Some(env) = Env::new(db) else { return };
    let s = env.serve(|_| {}).await;
    let site_a = s.register(Role::Site, "a", "system/*.cruds").await;
    let site_b = s.register(Role::Site, "b", "system/*.cruds").await;
    let sponsor = s.register(Role::Sponsor, "sponsor", "system/*.cruds").await;
    let reader = s
        .register(Role::Sponsor, "sponsor", "system/Patient.rs")
        .await;
    let (ta, tb, tsp, trd) = (
        s.token(&site_a).await,
        s.token(&site_b).await,
        s.token(&sponsor).await,
        s.token(&reader).await,
    );
    let a = s
        .transaction(
            &ta,
            vec![
                patient(1, "Ash"),
                patient(2, "Birch"),
                observation(3, 1, "1742-6"),
                observation(4, 1, "718-7"),
                observation(5, 2, "1742-6"),
            ],
        )
        .await;
    let b = s
        .transaction(&tb, vec![patient(6, "Cedar"), observation(7, 6, "1742-6")])
        .await;
    // Not in any patient's compartment.
    let (st, _, body) = s
        .call(
            reqwest::Method::POST,
            "/Organization",
            &tsp,
            &[],
            Some(json!({"resourceType": "Organization", "name": "Sponsor"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{body}");

    // Kick-off refusals.
    for (path, headers) in [
        ("/$export", &[("accept", "application/fhir+json")][..]),
        ("/$export", &[("prefer", "respond-async")][..]),
        ("/$export?_outputFormat=text/csv", KICKOFF),
        ("/$export?_since=yesterday", KICKOFF),
        ("/$export?_type=Nonsense", KICKOFF),
        ("/$export?_typeFilter=Observation%3Fnonsense%3D1", KICKOFF),
        ("/$export?patient=Patient/1", KICKOFF),
    ] {
        let (st, _, body) = s
            .call(reqwest::Method::GET, path, &tsp, headers, None)
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(body.contains("OperationOutcome"));
    }
    let (st, _, _) = s
        .call(
            reqwest::Method::GET,
            "/$export?_type=Observation",
            &trd,
            KICKOFF,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "a type outside the scopes");
    let (st, _, _) = s
        .http
        .get(format!("{}/fhir/$export", s.base))
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await
        .map(|r| (r.status(), (), ()))
        .expect("request");
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // System export by the sponsor: everything.
    let status_url = s
        .kickoff("/$export?_outputFormat=application%2Ffhir%2Bndjson", &tsp)
        .await;
    let m = s.manifest(&status_url, &tsp).await;
    assert_eq!(m["requiresAccessToken"], true);
    assert!(m["transactionTime"].as_str().is_some());
    assert!(m["request"]
        .as_str()
        .is_some_and(|r| r.starts_with(&s.base) && r.contains("/fhir/$export")));
    assert_eq!(m["error"], json!([]));
    let files = s.downloaded(&m, &tsp).await;
    assert_eq!(
        types_of(&files),
        ["Group", "Observation", "Organization", "Patient"]
    );
    let mut patients = id_set(&a, "Patient");
    patients.extend(id_set(&b, "Patient"));
    assert_eq!(ids_of(&files, "Patient"), Some(&patients));
    assert_eq!(
        ids_of(&files, "Group"),
        Some(&["site-a".to_string(), "site-b".to_string()].into())
    );
    assert_eq!(ids_of(&files, "Observation").map(BTreeSet::len), Some(4));

    // Only the client that asked sees the job and its files.
    let file_url = m["output"][0]["url"].as_str().expect("url").to_string();
    for t in [&ta, &trd] {
        let (st, _, _) = s.call(reqwest::Method::GET, &file_url, t, &[], None).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, _, _) = s
            .call(reqwest::Method::GET, &status_url, t, &[], None)
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
    }
    let (st, _, _) = s
        .http
        .get(&file_url)
        .send()
        .await
        .map(|r| (r.status(), (), ()))
        .expect("request");
    assert_eq!(st, StatusCode::UNAUTHORIZED, "files need a token");

    // _type, _typeFilter (two queries OR-ed), lenient handling of an unknown parameter.
    let obs_b = id_set(&b, "Observation");
    let filter = format!(
        "/$export?_type=Observation,Patient&_typeFilter=Observation%3Fcode%3D718-7,Observation%3Fsubject%3D{}",
        b.iter()
            .find(|r| r.starts_with("Patient/"))
            .expect("b patient")
            .replace('/', "%2F")
    );
    let url = s.kickoff(&filter, &tsp).await;
    let files = s.downloaded(&s.manifest(&url, &tsp).await, &tsp).await;
    assert_eq!(types_of(&files), ["Observation", "Patient"]);
    let mut expected: BTreeSet<String> = obs_b.clone();
    expected.insert(a[3].trim_start_matches("Observation/").to_string());
    assert_eq!(ids_of(&files, "Observation"), Some(&expected));
    assert_eq!(ids_of(&files, "Patient").map(BTreeSet::len), Some(3));
    let (st, headers, _) = s
        .call(
            reqwest::Method::GET,
            "/$export?_type=Patient&includeAssociatedData=LatestProvenanceResources",
            &tsp,
            &[
                ("accept", "application/fhir+json"),
                ("prefer", "respond-async, handling=lenient"),
            ],
            None,
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let lenient = headers["content-location"]
        .to_str()
        .expect("location")
        .to_string();
    let m = s.manifest(&lenient, &tsp).await;
    assert_eq!(m["error"][0]["type"], "OperationOutcome");
    let (st, _, body) = s
        .call(
            reqwest::Method::GET,
            m["error"][0]["url"].as_str().expect("url"),
            &tsp,
            &[],
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(body.contains("includeAssociatedData"), "{body}");

    // _since: only what changed after the instant.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = imagio_gateway::store::time::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut obs = observation(8, 6, "2160-0");
    obs["subject"]["reference"] = json!(b[0].clone());
    let later = s.transaction(&tb, vec![obs]).await;
    let url = s
        .kickoff(
            &format!("/$export?_since={}", since.replace(':', "%3A")),
            &tsp,
        )
        .await;
    let files = s.downloaded(&s.manifest(&url, &tsp).await, &tsp).await;
    assert_eq!(types_of(&files), ["Observation"]);
    assert_eq!(
        ids_of(&files, "Observation"),
        Some(&id_set(&later, "Observation"))
    );

    // A site client exports its own site only.
    let url = s.kickoff("/$export", &ta).await;
    let files = s.downloaded(&s.manifest(&url, &ta).await, &ta).await;
    assert_eq!(ids_of(&files, "Patient"), Some(&id_set(&a, "Patient")));
    assert_eq!(
        ids_of(&files, "Observation"),
        Some(&id_set(&a, "Observation"))
    );
    assert_eq!(types_of(&files), ["Group", "Observation", "Patient"]);

    // Patient/$export: the compartments of all patients (no Organization).
    let url = s.kickoff("/Patient/$export", &tsp).await;
    let files = s.downloaded(&s.manifest(&url, &tsp).await, &tsp).await;
    assert_eq!(types_of(&files), ["Group", "Observation", "Patient"]);
    assert_eq!(ids_of(&files, "Observation").map(BTreeSet::len), Some(5));

    // Group/site-a/$export: site a's patients and their data only.
    let url = s.kickoff("/Group/site-a/$export", &tsp).await;
    let files = s.downloaded(&s.manifest(&url, &tsp).await, &tsp).await;
    assert_eq!(ids_of(&files, "Patient"), Some(&id_set(&a, "Patient")));
    assert_eq!(
        ids_of(&files, "Observation"),
        Some(&id_set(&a, "Observation"))
    );
    // A sponsor-defined Group.
    let one = a[0].clone();
    let (st, _, body) = s
        .call(
            reqwest::Method::PUT,
            "/Group/cohort-1",
            &tsp,
            &[],
            Some(
                json!({"resourceType": "Group", "id": "cohort-1", "type": "person",
                        "actual": true, "member": [{"entity": {"reference": one}}]}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    let url = s
        .kickoff("/Group/cohort-1/$export?_type=Observation", &tsp)
        .await;
    let files = s.downloaded(&s.manifest(&url, &tsp).await, &tsp).await;
    assert_eq!(ids_of(&files, "Observation").map(BTreeSet::len), Some(2));
    // Another site's Group does not exist for a site client; nor does an unknown one.
    for (path, t) in [
        ("/Group/site-b/$export", &ta),
        ("/Group/none/$export", &tsp),
    ] {
        let (st, _, _) = s.call(reqwest::Method::GET, path, t, KICKOFF, None).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}");
    }
    // POST kick-off with a Parameters body.
    let (st, headers, body) = s
        .call(
            reqwest::Method::POST,
            "/$export",
            &tsp,
            KICKOFF,
            Some(json!({"resourceType": "Parameters", "parameter": [
                {"name": "_type", "valueString": "Patient"},
                {"name": "_typeFilter", "valueString": "Patient?family=ash"}]})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let url = headers["content-location"]
        .to_str()
        .expect("location")
        .to_string();
    let files = s.downloaded(&s.manifest(&url, &tsp).await, &tsp).await;
    assert_eq!(ids_of(&files, "Patient").map(BTreeSet::len), Some(1));

    // An updated resource is exported once, as its current version; a deleted one is not.
    let (birch, gone) = (a[1].clone(), a[4].clone());
    let mut renamed = patient(2, "Rowan");
    renamed["id"] = json!(birch.trim_start_matches("Patient/"));
    let (st, _, body) = s
        .call(
            reqwest::Method::PUT,
            &format!("/{birch}"),
            &ta,
            &[],
            Some(renamed),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, _, body) = s
        .call(reqwest::Method::DELETE, &format!("/{gone}"), &ta, &[], None)
        .await;
    assert!(st.is_success(), "{st}: {body}");
    let url = s.kickoff("/$export?_type=Patient,Observation", &tsp).await;
    let m = s.manifest(&url, &tsp).await;
    let files = s.downloaded(&m, &tsp).await;
    let mut patients = id_set(&a, "Patient");
    patients.extend(id_set(&b, "Patient"));
    assert_eq!(ids_of(&files, "Patient"), Some(&patients));
    let mut observations = id_set(&a, "Observation");
    observations.extend(id_set(&b, "Observation"));
    observations.extend(id_set(&later, "Observation"));
    observations.remove(gone.trim_start_matches("Observation/"));
    assert_eq!(ids_of(&files, "Observation"), Some(&observations));
    let patient_file = m["output"]
        .as_array()
        .expect("output")
        .iter()
        .find(|o| o["type"] == "Patient")
        .and_then(|o| o["url"].as_str())
        .expect("a Patient file")
        .to_string();
    let (st, _, body) = s
        .call(reqwest::Method::GET, &patient_file, &tsp, &[], None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let current: Value = body
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("ndjson line"))
        .find(|v| v["id"] == birch.trim_start_matches("Patient/"))
        .expect("the updated Patient");
    assert_eq!(current["name"][0]["family"], "Rowan");
    assert_eq!(current["meta"]["versionId"], "2");

    s.stop().await;
    env.cleanup().await;
}

async fn cancel(db: Db) {
    let Some(env) = Env::new(db) else { return };
    let s = env
        .serve(|e| {
            e.page = 2;
            e.pause = Duration::from_millis(200);
        })
        .await;
    let site = s.register(Role::Site, "a", "system/*.cruds").await;
    let t = s.token(&site).await;
    let obs: Vec<Value> = std::iter::once(patient(1, "Ash"))
        .chain((2..30).map(|n| observation(n, 1, "1742-6")))
        .collect();
    s.transaction(&t, obs).await;
    let url = s.kickoff("/$export", &t).await;
    let id = url.rsplit('/').next().expect("id").to_string();
    // Wait until the worker has written something.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.export_dir.join(&id).exists() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, _, _) = s.call(reqwest::Method::DELETE, &url, &t, &[], None).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let (st, _, _) = s.call(reqwest::Method::GET, &url, &t, &[], None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _, _) = s.call(reqwest::Method::DELETE, &url, &t, &[], None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // The worker notices at its next checkpoint and the files are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !env.export_dir.join(&id).exists() {
            break;
        }
        assert!(Instant::now() < deadline, "files left after cancel");
    }
    assert!(s.store.export_job(&id).await.expect("job").is_none());
    s.stop().await;
    env.cleanup().await;
}

/// Lines of each file of a manifest, read from the export folder, as a set per type (a
/// duplicate fails).
fn ids_on_disk(env: &Env, id: &str, t: &str) -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(env.export_dir.join(id).join(format!("{t}.ndjson"))).expect("file");
    let mut ids = BTreeSet::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("line");
        assert!(
            ids.insert(v["id"].as_str().expect("id").to_string()),
            "duplicate"
        );
    }
    ids
}

async fn restart_mid_job(db: Db) {
    let Some(env) = Env::new(db) else { return };
    let first = env
        .serve(|e| {
            e.page = 3;
            e.pause = Duration::from_millis(150);
        })
        .await;
    let site = first.register(Role::Site, "a", "system/*.cruds").await;
    let sponsor = first
        .register(Role::Sponsor, "sponsor", "system/*.rs")
        .await;
    let t = first.token(&site).await;
    let resources: Vec<Value> = std::iter::once(patient(1, "Ash"))
        .chain((2..41).map(|n| observation(n, 1, "1742-6")))
        .collect();
    let stored = first.transaction(&t, resources).await;
    let tsp = first.token(&sponsor).await;
    let url = first.kickoff("/$export?_type=Observation", &tsp).await;
    let id = url.rsplit('/').next().expect("id").to_string();
    // Stop the server once some Observations are checkpointed, before the end.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let outs = first.store.export_outputs(&id).await.expect("outputs");
        if outs.iter().any(|o| o.count > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_base = first.base.clone();
    first.stop().await;
    let job = env
        .store()
        .await
        .export_job(&id)
        .await
        .expect("job")
        .expect("row");
    assert_eq!(job.status, "running", "stopped mid-job");
    let saved = env
        .store()
        .await
        .export_outputs(&id)
        .await
        .expect("outputs");
    let partial = saved
        .iter()
        .find(|o| o.res_type == "Observation")
        .expect("row");
    assert!(
        !partial.done && partial.count > 0 && partial.count < 39,
        "{partial:?}"
    );
    // A new server on the same database finishes it.
    let second = env.serve(|_| {}).await;
    let tsp = second.token(&sponsor).await;
    let url = url.replace(&first_base, &second.base);
    let m = second.manifest(&url, &tsp).await;
    assert_eq!(m["output"][0]["count"], 39);
    assert_eq!(
        ids_on_disk(&env, &id, "Observation"),
        id_set(&stored, "Observation")
    );
    let files = second.downloaded(&m, &tsp).await;
    assert_eq!(ids_of(&files, "Observation").map(BTreeSet::len), Some(39));
    second.stop().await;
    env.cleanup().await;
}

async fn dead_replica(db: Db) {
    let Some(env) = Env::new(db) else { return };
    // A replica that accepts jobs but runs none.
    let front = env.serve(|e| e.worker = false).await;
    let sponsor = front
        .register(Role::Sponsor, "sponsor", "system/*.cruds")
        .await;
    let t = front.token(&sponsor).await;
    let stored = front
        .transaction(
            &t,
            std::iter::once(patient(1, "Ash"))
                .chain((2..12).map(|n| observation(n, 1, "1742-6")))
                .collect(),
        )
        .await;
    let url = front.kickoff("/$export?_type=Observation", &t).await;
    let id = url.rsplit('/').next().expect("id").to_string();
    // A replica claims it and dies: its lease runs out in 2 s.
    let now = imagio_gateway::store::time::now();
    let lease = imagio_gateway::store::time::instant(
        i64::try_from(
            (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                + Duration::from_secs(2))
            .as_millis(),
        )
        .expect("ms"),
    );
    let claimed = front
        .store
        .export_claim("dead-replica", &now, &lease)
        .await
        .expect("claim")
        .expect("a job to claim");
    assert_eq!(claimed.id, id);
    // A second replica with a worker: it waits for the lease to end, then finishes the job.
    let worker = env.serve(|_| {}).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let job = front
        .store
        .export_job(&id)
        .await
        .expect("job")
        .expect("row");
    assert_eq!(
        job.claimed_by.as_deref(),
        Some("dead-replica"),
        "lease still held"
    );
    let (st, headers, _) = front.call(reqwest::Method::GET, &url, &t, &[], None).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    assert!(headers.contains_key("x-progress"));
    let m = front.manifest(&url, &t).await;
    assert_eq!(m["output"][0]["count"], 10);
    assert_eq!(
        ids_on_disk(&env, &id, "Observation"),
        id_set(&stored, "Observation")
    );
    worker.stop().await;
    front.stop().await;
    env.cleanup().await;
}

macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name(super::Db::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name(super::Db::Postgres).await;
            }
        }
    };
}

on_both!(full_flow);
on_both!(cancel);
on_both!(restart_mid_job);
on_both!(dead_replica);
