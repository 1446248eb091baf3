//! The endpoint datasets end to end through the real server: the two journey Bundles
//! pushed by an admin client (real keys, real tokens, study validation), then read
//! back by the sponsor from `/sponsor/endpoints` on a SQLite file and, when
//! `IMAGIO_TEST_DATABASE_URL` is set, on PostgreSQL; site clients and anonymous callers
//! refused. Also the `endpoints` command on the same data as NDJSON.

#[allow(unused_macros)]
mod common;

use common::{unique, Db};
use imagio_gateway::auth::{AuthConfig, Role};
use imagio_gateway::serve::{Config, ValidationMode};
use reqwest::StatusCode;
use serde_json::{json, Value};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The shared harness's server, with authentication on and study validation.
struct Gateway(common::Server);

impl std::ops::Deref for Gateway {
    type Target = common::Server;

    fn deref(&self) -> &common::Server {
        &self.0
    }
}

async fn start(db: Db) -> Option<Gateway> {
    let Some((store, cleanup)) = common::open_db(db).await else {
        eprintln!("SKIPPED: PostgreSQL endpoints test: IMAGIO_TEST_DATABASE_URL not set");
        return None;
    };
    let config = Config {
        validation: ValidationMode::Study,
        auth: AuthConfig::default(),
        ..Config::default()
    };
    Some(Gateway(common::serve_config(store, cleanup, config).await))
}

impl Gateway {
    async fn shutdown(self) {
        self.0.stop().await;
    }

    /// Registers a client and returns an access token for it.
    async fn token(&self, role: Role, site: &str, scope: &str) -> String {
        let id = unique("client");
        let key = common::register_client(&self.store, &id, role, site, scope).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let token_url = format!("{}/auth/token", self.base);
        let assertion = key
            .sign(
                &json!({"iss": id, "sub": id, "aud": token_url, "iat": now, "exp": now + 240,
                        "jti": uuid::Uuid::new_v4().to_string()}),
                "JWT",
            )
            .expect("sign");
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "client_credentials"),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", assertion.as_str()),
                ("scope", scope),
            ])
            .finish();
        let r = self
            .client
            .post(&token_url)
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

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, String, String) {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("request");
        let status = r.status();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (status, ct, r.text().await.expect("body"))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> (StatusCode, Value) {
        let r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn journey(name: &str) -> Value {
    let path = format!(
        "{}/profiles/examples/journeys/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("journey")).expect("json")
}

/// The `part`s of the parameters named `name` whose `subject` is `Patient/{patient}`.
fn row_of<'a>(params: &'a Value, name: &str, patient: &str) -> Option<&'a Value> {
    params["parameter"].as_array()?.iter().find(|p| {
        p["name"] == name
            && p["part"].as_array().is_some_and(|parts| {
                parts.iter().any(|x| {
                    x["name"] == "subject"
                        && x["valueReference"]["reference"] == format!("Patient/{patient}")
                })
            })
    })
}

fn part<'a>(row: &'a Value, name: &str) -> &'a Value {
    row["part"]
        .as_array()
        .and_then(|parts| parts.iter().find(|x| x["name"] == name))
        .unwrap_or(&Value::Null)
}

async fn scenario(g: &Gateway) {
    // The two journeys share the study resource, which a site client cannot see once
    // another site wrote it: the coordinating centre's admin client loads both.
    let admin = g.token(Role::Admin, "coordination", "system/*.cruds").await;
    let nl = g.token(Role::Site, "site-nl-01", "system/*.cruds").await;
    let sponsor = g.token(Role::Sponsor, "sponsor", "system/*.rs").await;
    for file in ["Bundle-journey-crlm.json", "Bundle-journey-hcc.json"] {
        let (s, b) = g
            .send(reqwest::Method::POST, "/fhir", &admin, &journey(file))
            .await;
        assert_eq!(s, StatusCode::OK, "{file}: {b}");
    }

    // Refusals: no token, a site client; an unknown file.
    let (s, _, body) = g.get("/sponsor/endpoints", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    let (s, _, body) = g.get("/sponsor/endpoints", Some(&nl)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains("OperationOutcome") && body.contains("sponsor"),
        "{body}"
    );
    let (s, _, body) = g
        .get("/sponsor/endpoints/nothing.csv", Some(&sponsor))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("OperationOutcome"), "{body}");

    // The FHIR Parameters, as the journeys give by hand (profiles/ENDPOINTS.md; the same
    // values as src/endpoints/tests.rs: CRLM death at day 912, LTP of lesion 1 at 424;
    // HCC alive, last contact day 726, recurrence at 615).
    let (s, ct, body) = g.get("/sponsor/endpoints", Some(&sponsor)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(ct.starts_with("application/fhir+json"), "{ct}");
    let params: Value = serde_json::from_str(&body).expect("Parameters JSON");
    assert_eq!(params["resourceType"], "Parameters");
    let os = row_of(&params, "os", "crlm-0001").expect("OS row of crlm-0001");
    assert_eq!(part(os, "days")["valueInteger"], 912);
    assert_eq!(part(os, "event")["valueBoolean"], true);
    let os = row_of(&params, "os", "hcc-0001").expect("OS row of hcc-0001");
    assert_eq!(part(os, "days")["valueInteger"], 726);
    assert_eq!(part(os, "event")["valueBoolean"], false);
    let ttr = row_of(&params, "ttr", "hcc-0001").expect("TTR row of hcc-0001");
    assert_eq!(part(ttr, "days")["valueInteger"], 615);

    // The files: CSV rows, the curve of all patients (OS: one death of two at 912, so
    // S = 1/2 there), an SVG picture.
    let (s, ct, csv) = g.get("/sponsor/endpoints/ltp.csv", Some(&sponsor)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(ct.starts_with("text/csv"), "{ct}");
    assert!(
        csv.contains("crlm-0001-l1,crlm-0001,site-nl-01,crlm,crlm-0001-abl-l1,2022-01-12,2023-03-12,424,1,ltp,Observation/crlm-0001-ltp-l1,"),
        "{csv}"
    );
    assert!(csv.contains("crlm-0001-l2,crlm-0001,site-nl-01,crlm,crlm-0001-abl-l2,2022-01-12,2023-03-12,424,0,last-imaging,"), "{csv}");
    let (_, _, km) = g.get("/sponsor/endpoints/km.csv", Some(&sponsor)).await;
    assert!(km.contains("os,all,726,2,0,1,1.000000,"), "{km}");
    assert!(km.contains("os,all,912,1,1,0,0.000000,"), "{km}");
    let (_, _, safety) = g.get("/sponsor/endpoints/safety.csv", Some(&sponsor)).await;
    assert!(
        safety.contains("all,all,30,grade-3-4,1,2,0.500000,"),
        "{safety}"
    );
    assert!(
        safety.contains("site-site-it-02,all,90,grade-3-4,0,1,0.000000,"),
        "{safety}"
    );
    let (s, ct, svg) = g
        .get("/sponsor/endpoints/km-ltp-tumour-crlm.svg", Some(&sponsor))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(ct.starts_with("image/svg+xml"), "{ct}");
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    assert_eq!(svg.matches("censored at day 424").count(), 1, "{svg}");

    // The outputs follow the current data: the HCC patient's death recorded now.
    let (s, _, body) = g.get("/fhir/Patient/hcc-0001", Some(&admin)).await;
    assert_eq!(s, StatusCode::OK);
    let mut patient: Value = serde_json::from_str(&body).expect("patient");
    patient["deceasedDateTime"] = json!("2025-06-01");
    let (s, b) = g
        .send(
            reqwest::Method::PUT,
            "/fhir/Patient/hcc-0001",
            &admin,
            &patient,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, _, os) = g.get("/sponsor/endpoints/os.csv", Some(&sponsor)).await;
    // 2023-03-15 to 2025-06-01: 366 + 365 + 78 = 809 days.
    assert!(os.contains("hcc-0001,site-it-02,hcc,hcc-0001-abl-l1,2023-03-15,2025-06-01,809,1,death,Patient/hcc-0001,"), "{os}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sponsor_endpoints_sqlite() {
    let g = start(Db::Sqlite).await.expect("sqlite gateway");
    scenario(&g).await;
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sponsor_endpoints_postgres() {
    if let Some(g) = start(Db::Postgres).await {
        scenario(&g).await;
        g.shutdown().await;
    }
}

/// The command on NDJSON: the two journeys (one Bundle per line) into a folder; then a
/// file with a broken line: exit 2, the file and line named, nothing written.
#[test]
fn endpoints_command_on_ndjson() {
    let dir = std::env::temp_dir().join(unique("imagio_endpoints_cli"));
    std::fs::create_dir_all(&dir).expect("dir");
    let input = dir.join("journeys.ndjson");
    let lines = [
        journey("Bundle-journey-crlm.json"),
        journey("Bundle-journey-hcc.json"),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    std::fs::write(&input, &lines).expect("write");
    let out = dir.join("out");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_imagio-gateway"))
        .args(["endpoints", "--ndjson"])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("2 treated patients"), "{stdout}");
    let os = std::fs::read_to_string(out.join("os.csv")).expect("os.csv");
    assert!(
        os.contains("crlm-0001,site-nl-01,crlm,crlm-0001-abl-l1,2022-01-12,2024-07-12,912,1,death"),
        "{os}"
    );
    assert!(out.join("km-dfs-site-site-it-02.svg").exists());
    assert!(out.join("endpoints.json").exists());

    let bad = dir.join("bad.ndjson");
    std::fs::write(
        &bad,
        format!("{lines}\n{{\"resourceType\": \"Patient\", \"gender\": 3}}\n"),
    )
    .expect("write");
    let out2 = dir.join("out2");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_imagio-gateway"))
        .args(["endpoints", "--ndjson"])
        .arg(&bad)
        .arg("--out")
        .arg(&out2)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.ndjson:3:"), "{stderr}");
    assert!(!out2.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
