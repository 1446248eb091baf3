//! The audit trail, Provenance and the encrypted ledger, end to end: a real server with
//! SMART authentication on 127.0.0.1, real keys and tokens, on a SQLite file and, when
//! `IMAGIO_TEST_DATABASE_URL` is set, on PostgreSQL.

use imagio_gateway::auth::keys::{Alg, SigningKey};
use imagio_gateway::auth::{AuthConfig, Role};
use imagio_gateway::serve::{Config, ValidationMode};
use imagio_gateway::store::sealed::LedgerKey;
use imagio_gateway::store::Store;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use common::FHIR;
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const CLIENT_SYSTEM: &str = "https://a-imagio.eu/fhir/sid/client";
const SUBMISSION_SYSTEM: &str = "https://a-imagio.eu/fhir/sid/submission";
const REQUEST_SYSTEM: &str = "https://a-imagio.eu/fhir/sid/request-id";

#[allow(unused_macros)]
mod common;
use common::{unique, Cleanup, Db};

/// The shared harness's server (authentication on) and the ledger key file it reads.
struct Server {
    inner: common::Server,
    key_file: std::path::PathBuf,
}

impl std::ops::Deref for Server {
    type Target = common::Server;

    fn deref(&self) -> &common::Server {
        &self.inner
    }
}

/// A server with authentication on and a ledger key file of its own.
async fn start(db: Db) -> Option<Server> {
    let Some((store, cleanup)) = common::open_db(db).await else {
        eprintln!("SKIPPED: PostgreSQL audit test: IMAGIO_TEST_DATABASE_URL not set");
        return None;
    };
    let key_file = std::env::temp_dir().join(format!("{}.key", unique("ledger")));
    LedgerKey::load_or_create(&key_file).expect("ledger key file");
    let config = Config {
        validation: ValidationMode::Base,
        auth: AuthConfig::default(),
        ledger_key: Some(key_file.clone()),
        ..Config::default()
    };
    Some(Server {
        inner: common::serve_config(store, cleanup, config).await,
        key_file,
    })
}

/// A client: its id and key, and a token.
struct Caller {
    id: String,
    token: String,
}

impl Server {
    async fn stop(self) {
        self.inner.stop().await;
        let _ = std::fs::remove_file(&self.key_file);
    }

    fn token_url(&self) -> String {
        format!("{}/auth/token", self.base)
    }

    async fn register(&self, role: Role, site: &str, scope: &str) -> (String, SigningKey) {
        let id = unique("client").replace('_', "-");
        let key = common::register_client(&self.store, &id, role, site, scope).await;
        (id, key)
    }

    fn assertion(&self, id: &str, key: &SigningKey) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        key.sign(
            &json!({
                "iss": id, "sub": id, "aud": self.token_url(),
                "iat": now, "exp": now + 240,
                "jti": uuid::Uuid::new_v4().to_string(),
            }),
            "JWT",
        )
        .expect("sign")
    }

    async fn token_with(&self, assertion: &str, scope: &str) -> (StatusCode, Value) {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "client_credentials"),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", assertion),
                ("scope", scope),
            ])
            .finish();
        let r = self
            .client
            .post(self.token_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("token request");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn caller(&self, role: Role, site: &str, scope: &str) -> Caller {
        let (id, key) = self.register(role, site, scope).await;
        let (st, body) = self.token_with(&self.assertion(&id, &key), scope).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        Caller {
            id,
            token: body["access_token"].as_str().expect("token").to_string(),
        }
    }

    /// A request under `/fhir` (or the whole path when it starts with `/admin`), with the
    /// request id `rid`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        who: Option<&Caller>,
        body: Option<(&str, String)>,
        rid: &str,
    ) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let url = if path.starts_with("/admin") {
            format!("{}{path}", self.base)
        } else {
            format!("{}/fhir{path}", self.base)
        };
        let mut r = self.client.request(method, url).header("x-request-id", rid);
        if let Some(c) = who {
            r = r.bearer_auth(&c.token);
        }
        if let Some((ct, b)) = body {
            r = r.header("content-type", ct).body(b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        (status, headers, resp.bytes().await.expect("body").to_vec())
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        who: Option<&Caller>,
        body: Option<Value>,
        rid: &str,
    ) -> (StatusCode, Value) {
        let (st, _, bytes) = self
            .call(method, path, who, body.map(|b| (FHIR, b.to_string())), rid)
            .await;
        (st, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Every resource a search returns (one page of up to 500).
    async fn search(&self, who: &Caller, query: &str) -> Vec<Value> {
        let rid = unique("q");
        let (st, b) = self.json(Method::GET, query, Some(who), None, &rid).await;
        assert_eq!(st, StatusCode::OK, "{query}: {b}");
        b["entry"]
            .as_array()
            .map(|es| es.iter().map(|e| e["resource"].clone()).collect())
            .unwrap_or_default()
    }
}

/// The AuditEvent of request `rid` among `events`.
fn by_request<'a>(events: &'a [Value], rid: &str) -> Option<&'a Value> {
    events.iter().find(|e| {
        e["entity"].as_array().is_some_and(|es| {
            es.iter().any(|x| {
                x["what"]["identifier"]["system"] == REQUEST_SYSTEM
                    && x["what"]["identifier"]["value"] == rid
            })
        })
    })
}

/// Searches `query` as `who` until every request id of `rids` has its event (the events of
/// reads are committed by the writer task a moment after the answer).
async fn events_for(s: &Server, who: &Caller, query: &str, rids: &[&str]) -> Vec<Value> {
    for _ in 0..100 {
        let events = s.search(who, query).await;
        if rids.iter().all(|r| by_request(&events, r).is_some()) {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let events = s.search(who, query).await;
    let missing: Vec<&&str> = rids
        .iter()
        .filter(|r| by_request(&events, r).is_none())
        .collect();
    panic!("no AuditEvent for requests {missing:?} in {query}");
}

fn subtype(e: &Value) -> &str {
    e["subtype"][0]["code"].as_str().unwrap_or_default()
}

fn agent_client(e: &Value) -> &str {
    e["agent"][0]["who"]["identifier"]["value"]
        .as_str()
        .unwrap_or_default()
}

fn entity_refs(e: &Value) -> Vec<String> {
    e["entity"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|x| x["what"]["reference"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn patient(family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test", "value": unique("mrn")}],
        "name": [{"family": family}],
        "gender": "female"
    })
}

/// Every interaction type gets an AuditEvent with the right who, what and outcome; a site
/// sees only its own; the sponsor searches by agent, date and entity; AuditEvent and
/// Provenance cannot be written through the API; Provenance links a version to its ledger
/// entry.
async fn audit_trail(db: Db) {
    let Some(s) = start(db).await else { return };
    let started = imagio_gateway::store::time::now();
    let all = "system/*.cruds";
    let a = s.caller(Role::Site, "site-a", all).await;
    let b = s.caller(Role::Site, "site-b", all).await;
    let sponsor = s.caller(Role::Sponsor, "hq", "system/*.rs").await;
    let admin = s.caller(Role::Admin, "hq", all).await;

    // Site A: every interaction type, each with its own request id.
    let (st, created) = s
        .json(
            Method::POST,
            "/Patient",
            Some(&a),
            Some(patient("Doe")),
            "a-create",
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let path = format!("/Patient/{id}");
    let mut updated = created.clone();
    updated["gender"] = json!("male");
    let (st, _) = s
        .json(Method::PUT, &path, Some(&a), Some(updated), "a-update")
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = s
        .call(
            Method::PATCH,
            &path,
            Some(&a),
            Some((
                "application/json-patch+json",
                json!([{"op": "replace", "path": "/gender", "value": "other"}]).to_string(),
            )),
            "a-patch",
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.json(Method::GET, &path, Some(&a), None, "a-read").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s
        .json(
            Method::GET,
            &format!("{path}/_history/1"),
            Some(&a),
            None,
            "a-vread",
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s
        .json(
            Method::GET,
            "/Patient?gender=other",
            Some(&a),
            None,
            "a-search",
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s
        .json(
            Method::GET,
            &format!("{path}/_history"),
            Some(&a),
            None,
            "a-history",
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s
        .json(
            Method::POST,
            "/Patient/$validate",
            Some(&a),
            Some(patient("Valid")),
            "a-validate",
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
         "resource": patient("Tx"), "request": {"method": "POST", "url": "Patient"}}]});
    let (st, txr) = s
        .json(Method::POST, "", Some(&a), Some(tx), "a-transaction")
        .await;
    assert_eq!(st, StatusCode::OK, "{txr}");
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("Batch"), "request": {"method": "POST", "url": "Patient"}}]});
    let (st, _) = s
        .json(Method::POST, "", Some(&a), Some(batch), "a-batch")
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s
        .json(
            Method::GET,
            "/Patient/no-such-one",
            Some(&a),
            None,
            "a-read-404",
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s
        .json(Method::DELETE, &path, Some(&a), None, "a-delete")
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    // Site B reads something too.
    let (st, _) = s
        .json(Method::GET, "/Patient", Some(&b), None, "b-search")
        .await;
    assert_eq!(st, StatusCode::OK);
    // Refusals: no token (401), a sponsor writing (403), a token request with a wrong key.
    let (st, _) = s.json(Method::GET, &path, None, None, "anon-read").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = s
        .json(
            Method::POST,
            "/Patient",
            Some(&sponsor),
            Some(patient("No")),
            "sponsor-create",
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let wrong = SigningKey::generate(Alg::Es384).expect("key");
    let (st, _) = s.token_with(&s.assertion(&a.id, &wrong), all).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Site A's events, as site A sees them: every interaction, right outcome and entity.
    let expected: &[(&str, &str, &str, &str)] = &[
        ("a-create", "create", "C", "0"),
        ("a-update", "update", "U", "0"),
        ("a-patch", "patch", "U", "0"),
        ("a-read", "read", "R", "0"),
        ("a-vread", "vread", "R", "0"),
        ("a-search", "search-type", "E", "0"),
        ("a-history", "history-instance", "R", "0"),
        ("a-validate", "operation", "E", "0"),
        ("a-transaction", "transaction", "E", "0"),
        ("a-batch", "batch", "E", "0"),
        ("a-read-404", "read", "R", "4"),
        ("a-delete", "delete", "D", "0"),
    ];
    let rids: Vec<&str> = expected.iter().map(|e| e.0).collect();
    let mine = events_for(&s, &a, "/AuditEvent?_count=500", &rids).await;
    for (rid, code, action, outcome) in expected {
        // A batch has its own event and one per entry, under the same request id.
        let e = mine
            .iter()
            .find(|e| by_request(std::slice::from_ref(e), rid).is_some() && subtype(e) == *code)
            .unwrap_or_else(|| panic!("no {code} event of {rid}"));
        assert_eq!(subtype(e), *code, "{rid}: {e}");
        assert_eq!(e["action"], *action, "{rid}");
        assert_eq!(e["outcome"], *outcome, "{rid}");
        assert_eq!(agent_client(e), a.id, "{rid}");
        assert_eq!(e["agent"][0]["network"]["address"], "127.0.0.1", "{rid}");
        assert!(e["recorded"]
            .as_str()
            .is_some_and(|r| r >= started.as_str()));
    }
    for rid in ["a-create", "a-update", "a-patch", "a-read", "a-delete"] {
        let e = by_request(&mine, rid).expect("event");
        assert!(
            entity_refs(e).contains(&format!("Patient/{id}")),
            "{rid}: {e}"
        );
    }
    let entry_events = mine
        .iter()
        .filter(|e| by_request(std::slice::from_ref(e), "a-batch").is_some())
        .map(subtype)
        .collect::<Vec<_>>();
    assert_eq!(
        entry_events.len(),
        2,
        "the batch and its entry: {entry_events:?}"
    );
    assert!(entry_events.contains(&"create"));
    let search = by_request(&mine, "a-search").expect("search event");
    assert!(search["entity"]
        .as_array()
        .expect("entities")
        .iter()
        .any(|x| x["description"] == "gender=other"));
    // The site sees its own token request, and nothing of site B or the sponsor.
    assert!(mine.iter().any(|e| subtype(e) == "110122"));
    assert!(
        mine.iter().all(|e| agent_client(e) == a.id),
        "site A sees only its own events"
    );
    assert!(by_request(&mine, "b-search").is_none());
    let theirs = events_for(&s, &b, "/AuditEvent?_count=500", &["b-search"]).await;
    assert!(theirs.iter().all(|e| agent_client(e) == b.id));
    // Another site's event by id is not there.
    let a_event = by_request(&mine, "a-read").expect("event")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (st, _) = s
        .json(
            Method::GET,
            &format!("/AuditEvent/{a_event}"),
            Some(&b),
            None,
            "b-peek",
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // The sponsor searches by agent and date, and by entity; refusals are there too.
    let by_agent = events_for(
        &s,
        &sponsor,
        &format!(
            "/AuditEvent?agent=Device/{}&date=ge{}&_count=500",
            a.id, started
        ),
        &rids,
    )
    .await;
    assert!(by_agent.iter().all(|e| agent_client(e) == a.id));
    assert!(s
        .search(
            &sponsor,
            &format!("/AuditEvent?agent=Device/{}&date=lt2000-01-01", a.id)
        )
        .await
        .is_empty());
    let on_patient = s
        .search(
            &sponsor,
            &format!("/AuditEvent?entity=Patient/{id}&_count=500"),
        )
        .await;
    assert!(by_request(&on_patient, "a-read").is_some());
    assert!(by_request(&on_patient, "b-search").is_none());
    let failures = events_for(
        &s,
        &sponsor,
        "/AuditEvent?outcome=4&_count=500",
        &["anon-read", "sponsor-create"],
    )
    .await;
    let anon = by_request(&failures, "anon-read").expect("401 event");
    assert_eq!(subtype(anon), "read");
    assert_eq!(anon["agent"][0]["who"]["display"], "unauthenticated caller");
    let refused = by_request(&failures, "sponsor-create").expect("403 event");
    assert_eq!(agent_client(refused), sponsor.id);
    assert_eq!(subtype(refused), "create");
    let mut token_failure = None;
    for _ in 0..100 {
        let logins = s
            .search(
                &sponsor,
                "/AuditEvent?subtype=http://dicom.nema.org/resources/ontology/DCM|110122&_count=500",
            )
            .await;
        token_failure = logins
            .into_iter()
            .find(|e| e["outcome"] == "4" && agent_client(e) == a.id);
        if token_failure.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let token_failure = token_failure.expect("an event of the failed token request");
    assert!(token_failure["agent"][0]["who"]["display"]
        .as_str()
        .is_some_and(|d| d.contains("claimed")));

    // Append-only, for everyone, also inside Bundles.
    let event = by_request(&mine, "a-read").expect("event").clone();
    for who in [&a, &admin] {
        let (st, body) = s
            .json(
                Method::PUT,
                &format!("/AuditEvent/{a_event}"),
                Some(who),
                Some(event.clone()),
                &unique("put"),
            )
            .await;
        assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED, "{body}");
        assert_eq!(body["resourceType"], "OperationOutcome");
        let (st, _) = s
            .json(
                Method::DELETE,
                &format!("/AuditEvent/{a_event}"),
                Some(who),
                None,
                &unique("del"),
            )
            .await;
        assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
        let (st, _, _) = s
            .call(
                Method::PATCH,
                &format!("/AuditEvent/{a_event}"),
                Some(who),
                Some((
                    "application/json-patch+json",
                    json!([{"op": "replace", "path": "/outcome", "value": "0"}]).to_string(),
                )),
                &unique("patch"),
            )
            .await;
        assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
        let (st, _) = s
            .json(
                Method::DELETE,
                "/Provenance?_id=x",
                Some(who),
                None,
                &unique("cdel"),
            )
            .await;
        assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
        let mut fresh = event.clone();
        fresh.as_object_mut().expect("object").remove("id");
        let (st, _) = s
            .json(
                Method::POST,
                "/AuditEvent",
                Some(who),
                Some(fresh.clone()),
                &unique("post"),
            )
            .await;
        assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": fresh, "request": {"method": "POST", "url": "AuditEvent"}}]});
        let (st, body) = s
            .json(Method::POST, "", Some(who), Some(bundle), &unique("txae"))
            .await;
        assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    }
    let (st, kept) = s
        .json(
            Method::GET,
            &format!("/AuditEvent/{a_event}"),
            Some(&a),
            None,
            "a-reread",
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(kept["meta"]["versionId"], "1", "the event was not changed");

    // Provenance: the created version, linked to its ledger entry and request.
    let provs = s
        .search(
            &sponsor,
            &format!("/Provenance?target=Patient/{id}/_history/1"),
        )
        .await;
    assert_eq!(provs.len(), 1, "{provs:?}");
    let p = &provs[0];
    assert_eq!(p["activity"]["coding"][0]["code"], "CREATE");
    assert_eq!(p["agent"][0]["who"]["identifier"]["system"], CLIENT_SYSTEM);
    assert_eq!(p["agent"][0]["who"]["identifier"]["value"], a.id);
    assert_eq!(p["agent"][0]["onBehalfOf"]["identifier"]["value"], "site-a");
    let entities = p["entity"].as_array().expect("entities");
    let submission = entities
        .iter()
        .find(|e| e["what"]["identifier"]["system"] == SUBMISSION_SYSTEM)
        .and_then(|e| e["what"]["identifier"]["value"].as_str())
        .expect("ledger entry")
        .to_string();
    assert!(entities
        .iter()
        .any(|e| e["what"]["identifier"]["value"] == "a-create"));
    let (st, entry) = s
        .json(
            Method::GET,
            &format!("/admin/submissions/{submission}"),
            Some(&admin),
            None,
            "admin-entry",
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{entry}");
    assert_eq!(entry["requestId"], "a-create");
    assert_eq!(entry["versions"][0], format!("Patient/{id}/_history/1"));
    // Every write has one: the update, the patch, the delete, the transaction's entry.
    for (v, activity) in [(2, "UPDATE"), (3, "UPDATE"), (4, "DELETE")] {
        let found = s
            .search(&a, &format!("/Provenance?target=Patient/{id}/_history/{v}"))
            .await;
        assert_eq!(found.len(), 1, "version {v}");
        assert_eq!(found[0]["activity"]["coding"][0]["code"], activity);
    }
    let tx_target = txr["entry"][0]["response"]["location"]
        .as_str()
        .expect("location")
        .to_string();
    let found = s
        .search(&sponsor, &format!("/Provenance?target={tx_target}"))
        .await;
    assert_eq!(found.len(), 1, "{tx_target}");
    // A site does not see another site's Provenance.
    assert!(s
        .search(&b, &format!("/Provenance?target=Patient/{id}/_history/1"))
        .await
        .is_empty());
    // The gateway's records stay out of system history.
    let (st, h) = s
        .json(
            Method::GET,
            "/_history?_count=500",
            Some(&sponsor),
            None,
            "sys",
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(h["entry"].as_array().expect("entries").iter().all(|e| {
        let t = e["resource"]["resourceType"].as_str().unwrap_or("");
        t != "AuditEvent" && t != "Provenance"
    }));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_trail_sqlite() {
    audit_trail(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_trail_postgres() {
    audit_trail(Db::Postgres).await;
}

/// The raw bytes of the ledger as the database holds them: the SQLite file (with its WAL),
/// or every `submission.payload` of the PostgreSQL schema.
async fn raw_ledger(s: &Server) -> Vec<u8> {
    let (url, schema) = match &s.cleanup {
        Cleanup::File(f) => {
            let mut all = Vec::new();
            for suffix in ["", "-wal"] {
                if let Ok(b) = std::fs::read(format!("{}{suffix}", f.display())) {
                    all.extend(b);
                }
            }
            return all;
        }
        Cleanup::Schema(url, schema) => (url, schema),
        Cleanup::Nothing => unreachable!("the test's own store"),
    };
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    let rows: Vec<(Vec<u8>,)> = sqlx::query_as(&format!(
        "SELECT payload FROM \"{schema}\".submission ORDER BY id"
    ))
    .fetch_all(&pool)
    .await
    .expect("payloads");
    pool.close().await;
    rows.into_iter().flat_map(|(p,)| p).collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Ledger payloads are sealed at rest (no plaintext in the database), come back byte for
/// byte through the admin API, refuse a wrong key by name, and are purged after the
/// retention period, the expired ones only.
async fn sealed_ledger(db: Db) {
    let Some(s) = start(db).await else { return };
    let all = "system/*.cruds";
    let a = s.caller(Role::Site, "site-a", all).await;
    let admin = s.caller(Role::Admin, "hq", all).await;
    // A rejected submission (an invalid gender) whose name is a distinctive string.
    let secret = format!("QUARANTINED-{}", uuid::Uuid::new_v4().simple());
    let mut bad = patient(&secret);
    bad["gender"] = json!("zebra");
    let sent = format!("{}\n", serde_json::to_string_pretty(&bad).expect("json"));
    let (st, _, _) = s
        .call(
            Method::POST,
            "/Patient",
            Some(&a),
            Some((FHIR, sent.clone())),
            "rejected-1",
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    let raw = raw_ledger(&s).await;
    assert!(!raw.is_empty());
    assert!(
        !contains(&raw, &secret),
        "the database holds the payload's plaintext"
    );
    let entries = s
        .store
        .ledger(&imagio_gateway::store::LedgerQuery {
            count: 100,
            ..Default::default()
        })
        .await
        .expect("ledger");
    let rejected = entries
        .iter()
        .find(|e| e.submission.request_id == "rejected-1")
        .expect("rejected entry");
    assert_eq!(rejected.submission.outcome, "rejected");
    // The admin API opens it: exactly the bytes sent.
    let (st, headers, bytes) = s
        .call(
            Method::GET,
            &format!("/admin/submissions/{}/payload", rejected.id),
            Some(&admin),
            None,
            "admin-payload",
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(bytes, sent.as_bytes());
    assert_eq!(headers["content-type"], FHIR);
    // An accepted one is sealed too.
    let (st, _) = s
        .json(
            Method::POST,
            "/Patient",
            Some(&a),
            Some(patient("Fine")),
            "accepted-1",
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    // A wrong key is named as such.
    let other = match &s.cleanup {
        Cleanup::File(path) => Store::open(path.to_str().expect("utf-8"))
            .await
            .expect("reopen"),
        Cleanup::Schema(url, schema) => imagio_gateway::store::postgres::open(url, Some(schema))
            .await
            .expect("reopen"),
        Cleanup::Nothing => unreachable!("the test's own store"),
    };
    other.set_ledger_key(LedgerKey::generate());
    let err = other
        .submission(rejected.id)
        .await
        .expect_err("a wrong key must fail");
    assert!(err.to_string().contains("wrong --ledger-key"), "{err}");
    assert!(other.check_ledger_key().await.is_err());
    // The right key (from the file) opens it.
    other.set_ledger_key(LedgerKey::from_file(&s.key_file).expect("key"));
    let e = other
        .submission(rejected.id)
        .await
        .expect("read")
        .expect("entry");
    assert_eq!(e.submission.payload, sent.as_bytes());
    other.close().await;
    // Purge: a cutoff just after the rejected entry purges it and keeps the newer one.
    let entries = s
        .store
        .ledger(&imagio_gateway::store::LedgerQuery {
            count: 100,
            ..Default::default()
        })
        .await
        .expect("ledger");
    let accepted = entries
        .iter()
        .find(|e| e.submission.request_id == "accepted-1")
        .expect("accepted entry")
        .clone();
    let cutoff = accepted.submission.received.clone();
    let older = entries
        .iter()
        .filter(|e| e.submission.received < cutoff)
        .count();
    assert!(older >= 1, "the rejected entry is older");
    let purged = s
        .store
        .purge_payloads(&cutoff, "2099-01-01T00:00:00.000Z")
        .await
        .expect("purge");
    assert_eq!(purged, u64::try_from(older).expect("count"));
    let (st, _, _) = s
        .call(
            Method::GET,
            &format!("/admin/submissions/{}/payload", rejected.id),
            Some(&admin),
            None,
            "admin-purged",
        )
        .await;
    assert_eq!(st, StatusCode::GONE);
    let (st, entry) = s
        .json(
            Method::GET,
            &format!("/admin/submissions/{}", rejected.id),
            Some(&admin),
            None,
            "admin-purged-entry",
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(entry["purged"], "2099-01-01T00:00:00.000Z");
    assert_eq!(entry["outcome"], "rejected");
    let (st, _, body) = s
        .call(
            Method::GET,
            &format!("/admin/submissions/{}/payload", accepted.id),
            Some(&admin),
            None,
            "admin-kept",
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(contains(&body, "Fine"));
    // Purging again changes nothing.
    assert_eq!(
        s.store
            .purge_payloads(&cutoff, "2099-01-02T00:00:00.000Z")
            .await
            .expect("purge"),
        0
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sealed_ledger_sqlite() {
    sealed_ledger(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sealed_ledger_postgres() {
    sealed_ledger(Db::Postgres).await;
}
