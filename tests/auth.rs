//! SMART Backend Services end to end: real keys (ES384 and RS384), real JWT signatures,
//! the real router on 127.0.0.1 spoken to over HTTP, on a SQLite file and, when
//! `IMAGIO_TEST_DATABASE_URL` is set, on PostgreSQL. One test per refusal of the token
//! endpoint and per scope rule.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use imagio_gateway::auth::clients::{self, NewClient};
use imagio_gateway::auth::keys::{self, Alg, SigningKey};
use imagio_gateway::auth::{AuthConfig, Role};
use imagio_gateway::serve::{serve_on, AppState, Config, ValidationMode};
use imagio_gateway::store::Store;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};

const FHIR: &str = "application/fhir+json";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

struct Server {
    base: String,
    http: reqwest::Client,
    store: Store,
    state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    cleanup: Option<(String, String)>,
    file: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Db {
    Sqlite,
    Postgres,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        uuid::Uuid::new_v4().simple()
    )
}

async fn start_with(db: Db, auth: AuthConfig) -> Option<Server> {
    start_validating(db, auth, ValidationMode::Base).await
}

/// A server validating writes with `validation`.
async fn start_validating(db: Db, auth: AuthConfig, validation: ValidationMode) -> Option<Server> {
    let config = Config {
        validation,
        auth,
        ..Config::default()
    };
    start_config(db, config).await
}

/// A server on `db` with `config`.
async fn start_config(db: Db, config: Config) -> Option<Server> {
    let (store, cleanup, file) = match db {
        Db::Sqlite => {
            let path = std::env::temp_dir().join(format!("{}.sqlite", unique("imagio_auth")));
            let store = Store::open(path.to_str().expect("utf-8"))
                .await
                .expect("open sqlite");
            (store, None, Some(path))
        }
        Db::Postgres => {
            let Ok(url) = std::env::var("IMAGIO_TEST_DATABASE_URL") else {
                eprintln!("SKIPPED: PostgreSQL auth test: IMAGIO_TEST_DATABASE_URL not set");
                return None;
            };
            let schema = unique("a");
            let store = imagio_gateway::store::postgres::open(&url, Some(&schema))
                .await
                .expect("open postgres");
            (store, Some((url, schema)), None)
        }
    };
    let state = AppState::new(store.clone(), config).expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let st = state.clone();
    let task = tokio::spawn(async move {
        serve_on(listener, st, async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    Some(Server {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        store,
        state,
        stop: Some(stop),
        task: Some(task),
        cleanup,
        file,
    })
}

async fn start(db: Db) -> Option<Server> {
    start_with(db, AuthConfig::default()).await
}

impl Server {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        if let Some((url, schema)) = self.cleanup.take() {
            let _ = imagio_gateway::store::postgres::drop_schema(&url, &schema).await;
        }
        if let Some(f) = self.file.take() {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", f.display()));
            }
        }
    }

    fn token_url(&self) -> String {
        format!("{}/auth/token", self.base)
    }

    /// Registers a client with a new key of `alg`.
    async fn register(
        &self,
        alg: Alg,
        role: Role,
        site: &str,
        scope: &str,
    ) -> (String, SigningKey) {
        let key = SigningKey::generate(alg).expect("key");
        let id = unique("client");
        clients::add(
            &self.store,
            &NewClient {
                id: Some(id.clone()),
                site: site.into(),
                role,
                scope: scope.into(),
                jwks: Some(key.public_jwks()),
                jwks_url: None,
            },
        )
        .await
        .expect("register");
        (id, key)
    }

    /// A correct assertion of `id` signed with `key`.
    fn assertion(&self, id: &str, key: &SigningKey) -> String {
        sign(key, &claims(id, &self.token_url(), 240))
    }

    async fn token_form(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let r = self
            .http
            .post(self.token_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("token request");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn token_with(&self, assertion: &str, scope: &str) -> (StatusCode, Value) {
        self.token_form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
            ("scope", scope),
        ])
        .await
    }

    /// An access token for `id`, or a panic.
    async fn token(&self, id: &str, key: &SigningKey, scope: &str) -> String {
        let (status, body) = self.token_with(&self.assertion(id, key), scope).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    async fn fhir(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut r = self
            .http
            .request(method, format!("{}/fhir{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.header("content-type", FHIR).body(b.to_string());
        }
        let resp = r.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        (status, headers, resp.json().await.unwrap_or(Value::Null))
    }
}

fn claims(id: &str, aud: &str, exp_in: i64) -> Value {
    let now = now();
    json!({
        "iss": id,
        "sub": id,
        "aud": aud,
        "iat": now,
        "exp": now + exp_in,
        "jti": uuid::Uuid::new_v4().to_string(),
    })
}

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    )
    .expect("secs")
}

fn sign(key: &SigningKey, claims: &Value) -> String {
    key.sign(claims, "JWT").expect("sign")
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn patient(value: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test", "value": value}],
        "gender": "female"
    })
}

fn assert_oauth_error(status: StatusCode, body: &Value, code: &str, contains: &str) {
    assert!(status.is_client_error(), "{status} {body}");
    assert_eq!(body["error"], code, "{body}");
    let d = body["error_description"].as_str().unwrap_or_default();
    assert!(d.contains(contains), "{d:?} should contain {contains:?}");
}

// ---------------------------------------------------------------------------------------
// The whole flow

/// Generate key files, register the public JWKS, push a transaction Bundle with the
/// reference client, read the Patient back with a token.
async fn whole_flow(db: Db, alg: Alg) {
    let Some(s) = start(db).await else { return };
    let dir = std::env::temp_dir().join(unique("imagio_keys"));
    let generated = keys::generate_files(alg, &dir).expect("keys generate");
    let jwks = clients::read_jwks(&generated.jwks_path).expect("jwks file");
    let row = clients::add(
        &s.store,
        &NewClient {
            id: None,
            site: "it02".into(),
            role: Role::Site,
            scope: "system/*.cruds".into(),
            jwks: Some(jwks),
            jwks_url: None,
        },
    )
    .await
    .expect("register");
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:9d3f1a52-0000-4000-8000-000000000001",
                "resource": patient("flow-1"),
                "request": {"method": "POST", "url": "Patient"}
            },
            {
                "fullUrl": "urn:uuid:9d3f1a52-0000-4000-8000-000000000002",
                "resource": {
                    "resourceType": "Procedure",
                    "status": "completed",
                    "code": {"text": "RFA"},
                    "subject": {"reference": "urn:uuid:9d3f1a52-0000-4000-8000-000000000001"}
                },
                "request": {"method": "POST", "url": "Procedure"}
            }
        ]
    });
    let file = dir.join("bundle.json");
    std::fs::write(&file, bundle.to_string()).expect("write bundle");
    let settings = imagio_gateway::client::Settings {
        server: s.base.clone(),
        client_id: row.id.clone(),
        key: generated.private_path.clone(),
        kid: None,
        scope: "system/*.cruds".into(),
        ca_cert: None,
    };
    let reports = imagio_gateway::client::push(settings.clone(), std::slice::from_ref(&file))
        .await
        .expect("push");
    assert_eq!(reports.len(), 1);
    assert!(reports[0].accepted(), "{:?}", reports[0]);
    assert_eq!(reports[0].summary, "2 of 2 entries written");
    // Read back, with a token of the same client.
    let mut session = imagio_gateway::client::Session::connect(settings)
        .await
        .expect("session");
    let token = session.token().await.expect("token");
    let ledger = s.store.submissions(None, 10).await.expect("ledger");
    let accepted = ledger
        .iter()
        .find(|e| e.submission.outcome == "accepted")
        .expect("ledger entry");
    assert_eq!(
        accepted.submission.client, row.id,
        "the ledger names the client"
    );
    assert_eq!(accepted.submission.site, "it02");
    let patient_ref = accepted
        .submission
        .versions
        .iter()
        .find(|v| v.starts_with("Patient/"))
        .expect("patient version")
        .clone();
    let id = patient_ref.split('/').nth(1).expect("id");
    let (status, _, body) = s
        .fhir(
            reqwest::Method::GET,
            &format!("/Patient/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["identifier"][0]["value"], "flow-1");
    let _ = std::fs::remove_dir_all(&dir);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_flow_es384_sqlite() {
    whole_flow(Db::Sqlite, Alg::Es384).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_flow_rs384_sqlite() {
    whole_flow(Db::Sqlite, Alg::Rs384).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_flow_es384_postgres() {
    whole_flow(Db::Postgres, Alg::Es384).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_flow_rs384_postgres() {
    whole_flow(Db::Postgres, Alg::Rs384).await;
}

// ---------------------------------------------------------------------------------------
// Discovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_capability_security() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    for path in [
        "/.well-known/smart-configuration",
        "/fhir/.well-known/smart-configuration",
    ] {
        let r = s
            .http
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .expect("discovery");
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["token_endpoint"], s.token_url());
        assert_eq!(
            v["token_endpoint_auth_methods_supported"],
            json!(["private_key_jwt"])
        );
        assert_eq!(
            v["token_endpoint_auth_signing_alg_values_supported"],
            json!(["RS384", "ES384"])
        );
        assert_eq!(v["grant_types_supported"], json!(["client_credentials"]));
        assert_eq!(
            v["capabilities"],
            json!([
                "client-confidential-asymmetric",
                "permission-v1",
                "permission-v2"
            ])
        );
        assert!(v["scopes_supported"]
            .as_array()
            .is_some_and(|a| !a.is_empty()));
    }
    let (status, _, cs) = s.fhir(reqwest::Method::GET, "/metadata", None, None).await;
    assert_eq!(status, StatusCode::OK, "metadata is public");
    let sec = &cs["rest"][0]["security"];
    assert_eq!(sec["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    assert_eq!(
        sec["extension"][0]["extension"][0]["valueUri"],
        s.token_url()
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Token endpoint refusals

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_unknown_client() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let key = SigningKey::generate(Alg::Es384).expect("key");
    let (st, b) = s
        .token_with(&s.assertion("nobody", &key), "system/*.rs")
        .await;
    assert_oauth_error(st, &b, "invalid_client", "unknown client");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_revoked_client() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let (id, key) = s.register(Alg::Es384, Role::Site, "a", "system/*.rs").await;
    let token = s.token(&id, &key, "system/*.rs").await;
    let (st, _, _) = s
        .fhir(reqwest::Method::GET, "/Patient/x", Some(&token), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "authenticated");
    assert!(s
        .store
        .revoke_client(&id, "2026-01-01T00:00:00Z")
        .await
        .expect("revoke"));
    let (st, b) = s.token_with(&s.assertion(&id, &key), "system/*.rs").await;
    assert_oauth_error(st, &b, "invalid_client", "revoked");
    // A token issued before the revocation stops working too.
    let (st, _, _) = s
        .fhir(reqwest::Method::GET, "/Patient/x", Some(&token), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_unknown_kid() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let (id, key) = s.register(Alg::Es384, Role::Site, "a", "system/*.rs").await;
    let mut other = key.clone();
    other.kid = "not-registered".into();
    let (st, b) = s.token_with(&s.assertion(&id, &other), "system/*.rs").await;
    assert_oauth_error(st, &b, "invalid_client", "no key not-registered");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_alg_none() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let (id, key) = s.register(Alg::Es384, Role::Site, "a", "system/*.rs").await;
    let header = json!({"alg": "none", "typ": "JWT", "kid": key.kid});
    let unsigned = format!(
        "{}.{}.",
        b64(&header),
        b64(&claims(&id, &s.token_url(), 240))
    );
    let (st, b) = s.token_with(&unsigned, "system/*.rs").await;
    assert_oauth_error(st, &b, "invalid_client", "client_assertion");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_hs256_with_the_public_key_as_secret() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    for alg in [Alg::Rs384, Alg::Es384] {
        let (id, key) = s.register(alg, Role::Site, "a", "system/*.rs").await;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        for secret in [key.public_jwk.to_string(), key.public_jwks().to_string()] {
            let forged = jsonwebtoken::encode(
                &header,
                &claims(&id, &s.token_url(), 240),
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .expect("hs256");
            let (st, b) = s.token_with(&forged, "system/*.rs").await;
            assert_oauth_error(st, &b, "invalid_client", "not accepted");
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_alg_other_than_the_keys() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    // An RSA key registered, an ES384 header naming it.
    let (id, rsa) = s.register(Alg::Rs384, Role::Site, "a", "system/*.rs").await;
    let mut ec = SigningKey::generate(Alg::Es384).expect("ec");
    ec.kid = rsa.kid.clone();
    let (st, b) = s.token_with(&s.assertion(&id, &ec), "system/*.rs").await;
    assert_oauth_error(st, &b, "invalid_client", "not ES384");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_bad_signature() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    for alg in [Alg::Rs384, Alg::Es384] {
        let (id, key) = s.register(alg, Role::Site, "a", "system/*.rs").await;
        // Another key of the same kind, claiming the registered kid.
        let mut impostor = SigningKey::generate(alg).expect("key");
        impostor.kid = key.kid.clone();
        let (st, b) = s
            .token_with(&s.assertion(&id, &impostor), "system/*.rs")
            .await;
        assert_oauth_error(st, &b, "invalid_client", "signature does not verify");
        // A genuine assertion with its payload changed.
        let good = s.assertion(&id, &key);
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut tampered = claims(&id, &s.token_url(), 240);
        tampered["extra"] = json!(1);
        let payload = b64(&tampered);
        parts[1] = &payload;
        let (st, b) = s.token_with(&parts.join("."), "system/*.rs").await;
        assert_oauth_error(st, &b, "invalid_client", "signature does not verify");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_expired_assertion() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let (id, key) = s.register(Alg::Es384, Role::Site, "a", "system/*.rs").await;
    let a = sign(&key, &claims(&id, &s.token_url(), -120));
    let (st, b) = s.token_with(&a, "system/*.rs").await;
    assert_oauth_error(st, &b, "invalid_client", "expired");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_exp_more_than_five_minutes_ahead() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let (id, key) = s.register(Alg::Es384, Role::Site, "a", "system/*.rs").await;
    let a = sign(&key, &claims(&id, &s.token_url(), 3600));
    let (st, b) = s.token_with(&a, "system/*.rs").await;
    assert_oauth_error(st, &b, "invalid_client", "five minutes");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_wrong_aud() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let (id, key) = s.register(Alg::Es384, Role::Site, "a", "system/*.rs").await;
    for aud in [
        "https://other.example.org/auth/token".to_string(),
        format!("{}/fhir", s.base),
    ] {
        let a = sign(&key, &claims(&id, &aud, 240));
        let (st, b) = s.token_with(&a, "system/*.rs").await;
        assert_oauth_error(st, &b, "invalid_client", "aud");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_iss_sub_mismatch() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let (id, key) = s.register(Alg::Es384, Role::Site, "a", "system/*.rs").await;
    let mut c = claims(&id, &s.token_url(), 240);
    c["sub"] = json!("someone-else");
    let (st, b) = s.token_with(&sign(&key, &c), "system/*.rs").await;
    assert_oauth_error(st, &b, "invalid_client", "iss and sub");
    s.stop().await;
}

async fn replay(db: Db) {
    let Some(s) = start(db).await else { return };
    let (id, key) = s.register(Alg::Es384, Role::Site, "a", "system/*.rs").await;
    let a = s.assertion(&id, &key);
    let (st, b) = s.token_with(&a, "system/*.rs").await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let (st, b) = s.token_with(&a, "system/*.rs").await;
    assert_oauth_error(st, &b, "invalid_client", "jti was already used");
    // Another replica on the same database refuses it too: the jti is in the database.
    let replica = imagio_gateway::auth::Auth::new(
        s.store.clone(),
        AuthConfig {
            public_url: Some(s.base.clone()),
            ..AuthConfig::default()
        },
    );
    let err = replica
        .token(&imagio_gateway::auth::TokenRequest {
            grant_type: Some("client_credentials".into()),
            client_assertion_type: Some(ASSERTION_TYPE.into()),
            client_assertion: Some(a.clone()),
            scope: Some("system/*.rs".into()),
            client_id: None,
        })
        .await
        .expect_err("replayed on a replica");
    assert!(err.to_string().contains("jti was already used"), "{err}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_replayed_jti_sqlite() {
    replay(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_replayed_jti_postgres() {
    replay(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_ungranted_scope() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let (id, key) = s
        .register(Alg::Es384, Role::Site, "a", "system/Procedure.rs")
        .await;
    let (st, b) = s
        .token_with(&s.assertion(&id, &key), "system/Patient.rs")
        .await;
    assert_oauth_error(st, &b, "invalid_scope", "system/Patient.rs");
    let (st, b) = s
        .token_with(&s.assertion(&id, &key), "launch/patient")
        .await;
    assert_oauth_error(st, &b, "invalid_scope", "launch/patient");
    // The intersection of asked and allowed is granted.
    let (st, b) = s
        .token_with(&s.assertion(&id, &key), "system/*.cruds")
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["scope"], "system/Procedure.rs");
    assert_eq!(b["token_type"], "bearer");
    assert_eq!(b["expires_in"], 300);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_malformed_requests() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let (id, key) = s.register(Alg::Es384, Role::Site, "a", "system/*.rs").await;
    let a = s.assertion(&id, &key);
    let (st, b) = s
        .token_form(&[
            ("grant_type", "authorization_code"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &a),
            ("scope", "system/*.rs"),
        ])
        .await;
    assert_oauth_error(st, &b, "unsupported_grant_type", "client_credentials");
    let (st, b) = s
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
        ])
        .await;
    assert_oauth_error(st, &b, "invalid_request", "client_assertion_type");
    let (st, b) = s
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("scope", "system/*.rs"),
        ])
        .await;
    assert_oauth_error(st, &b, "invalid_request", "client_assertion is missing");
    let (st, b) = s.token_with("not.a.jwt", "system/*.rs").await;
    assert_oauth_error(st, &b, "invalid_client", "client_assertion");
    s.stop().await;
}

/// A JWKS served over HTTP with `Cache-Control: max-age`, counting fetches.
async fn jwks_server(jwks: Value) -> (String, std::sync::Arc<AtomicUsize>) {
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let h = h.clone();
            let body = jwks.to_string();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                (
                    [
                        ("content-type", "application/json"),
                        ("cache-control", "public, max-age=600"),
                    ],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/jwks.json"), hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_by_url_is_fetched_once_and_jku_must_match() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let key = SigningKey::generate(Alg::Rs384).expect("key");
    let (url, hits) = jwks_server(key.public_jwks()).await;
    let row = clients::add(
        &s.store,
        &NewClient {
            id: Some("by-url".into()),
            site: "b".into(),
            role: Role::Site,
            scope: "system/*.rs".into(),
            jwks: None,
            jwks_url: Some(url.clone()),
        },
    )
    .await
    .expect("register");
    s.token(&row.id, &key, "system/*.rs").await;
    s.token(&row.id, &key, "system/*.rs").await;
    assert_eq!(hits.load(Ordering::SeqCst), 1, "cached by max-age");
    // A jku header other than the registered URL.
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS384);
    header.kid = Some(key.kid.clone());
    header.jku = Some("http://attacker.example/jwks.json".into());
    let der = {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        use rsa::pkcs8::DecodePrivateKey as _;
        rsa::RsaPrivateKey::from_pkcs8_pem(&key.private_pem)
            .expect("pem")
            .to_pkcs1_der()
            .expect("der")
    };
    let a = jsonwebtoken::encode(
        &header,
        &claims(&row.id, &s.token_url(), 240),
        &jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes()),
    )
    .expect("sign");
    let (st, b) = s.token_with(&a, "system/*.rs").await;
    assert_oauth_error(st, &b, "invalid_client", "jku");
    // The registered jku is fine.
    header.jku = Some(url);
    let a = jsonwebtoken::encode(
        &header,
        &claims(&row.id, &s.token_url(), 240),
        &jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes()),
    )
    .expect("sign");
    let (st, b) = s.token_with(&a, "system/*.rs").await;
    assert_eq!(st, StatusCode::OK, "{b}");
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Scope rules on FHIR interactions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_401_with_www_authenticate() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    for (method, path, body) in [
        (reqwest::Method::GET, "/Patient/1", None),
        (reqwest::Method::POST, "/Patient", Some(patient("x"))),
        (reqwest::Method::GET, "/_history", None),
        (
            reqwest::Method::POST,
            "",
            Some(json!({"resourceType": "Bundle", "type": "batch"})),
        ),
    ] {
        let (st, h, b) = s.fhir(method.clone(), path, None, body).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert!(h
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer")));
        assert_eq!(b["resourceType"], "OperationOutcome");
    }
    let (st, h, b) = s
        .fhir(reqwest::Method::GET, "/Patient/1", Some("garbage"), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(h["www-authenticate"]
        .to_str()
        .expect("header")
        .contains("invalid_token"));
    assert_eq!(b["resourceType"], "OperationOutcome");
    // Nothing anonymous was written.
    assert!(s
        .store
        .submissions(None, 10)
        .await
        .expect("ledger")
        .is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_of_another_issuer_is_401() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    // A token shaped like the gateway's, signed by a key the gateway does not have.
    let key = SigningKey::generate(Alg::Es384).expect("key");
    let forged = key
        .sign(
            &json!({"iss": s.base, "sub": "x", "aud": format!("{}/fhir", s.base),
                    "exp": now() + 60, "scope": "system/*.cruds", "site": "a", "role": "admin"}),
            "at+jwt",
        )
        .expect("sign");
    let (st, _, _) = s
        .fhir(reqwest::Method::GET, "/Patient/1", Some(&forged), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_scope_cannot_write_and_v2_letters_are_checked() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let (id, key) = s
        .register(
            Alg::Es384,
            Role::Site,
            "a",
            "system/Patient.cruds system/Procedure.rs",
        )
        .await;
    let writer = s.token(&id, &key, "system/Patient.cruds").await;
    let (st, h, _) = s
        .fhir(
            reqwest::Method::POST,
            "/Patient",
            Some(&writer),
            Some(patient("w")),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let loc = h["location"].to_str().expect("location").to_string();
    let pid = loc
        .split("/Patient/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("id");
    let reader = s.token(&id, &key, "system/Patient.rs").await;
    let (st, _, _) = s
        .fhir(
            reqwest::Method::GET,
            &format!("/Patient/{pid}"),
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, b) = s
        .fhir(
            reqwest::Method::POST,
            "/Patient",
            Some(&reader),
            Some(patient("r")),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(b["resourceType"], "OperationOutcome");
    assert_eq!(b["issue"][0]["code"], "forbidden");
    let (st, _, _) = s
        .fhir(
            reqwest::Method::DELETE,
            &format!("/Patient/{pid}"),
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // "r" without "s": read yes, history of the type (a search) no.
    let only_read = s.token(&id, &key, "system/Patient.r").await;
    let (st, _, _) = s
        .fhir(
            reqwest::Method::GET,
            &format!("/Patient/{pid}/_history/1"),
            Some(&only_read),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = s
        .fhir(
            reqwest::Method::GET,
            "/Patient/_history",
            Some(&only_read),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Another type is out of scope entirely.
    let procedures = s.token(&id, &key, "system/Procedure.rs").await;
    let (st, _, _) = s
        .fhir(
            reqwest::Method::GET,
            &format!("/Patient/{pid}"),
            Some(&procedures),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // System history needs a wildcard scope.
    let (st, _, _) = s
        .fhir(reqwest::Method::GET, "/_history", Some(&reader), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_scopes_read_and_write() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let (id, key) = s
        .register(Alg::Rs384, Role::Site, "a", "system/Patient.*")
        .await;
    let write = s.token(&id, &key, "system/Patient.write").await;
    let (st, h, _) = s
        .fhir(
            reqwest::Method::POST,
            "/Patient",
            Some(&write),
            Some(patient("v1")),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let loc = h["location"].to_str().expect("location").to_string();
    let path = loc.split("/fhir").nth(1).expect("path").to_string();
    let (st, _, _) = s
        .fhir(reqwest::Method::GET, &path, Some(&write), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "write does not read");
    let read = s.token(&id, &key, "system/Patient.read").await;
    let (st, _, _) = s.fhir(reqwest::Method::GET, &path, Some(&read), None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = s
        .fhir(
            reqwest::Method::POST,
            "/Patient",
            Some(&read),
            Some(patient("v1b")),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "read does not write");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_entries_are_checked_one_by_one() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let (id, key) = s
        .register(Alg::Es384, Role::Site, "a", "system/Patient.c")
        .await;
    let token = s.token(&id, &key, "system/Patient.c").await;
    let entry =
        |r: Value, url: &str| json!({"resource": r, "request": {"method": "POST", "url": url}});
    let ok = json!({"resourceType": "Bundle", "type": "transaction",
                    "entry": [entry(patient("b1"), "Patient")]});
    let (st, _, b) = s
        .fhir(reqwest::Method::POST, "", Some(&token), Some(ok))
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let bad = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        entry(patient("b2"), "Patient"),
        entry(json!({"resourceType": "Procedure", "status": "completed",
                     "subject": {"reference": "Patient/x"}}), "Procedure")
    ]});
    let (st, _, b) = s
        .fhir(reqwest::Method::POST, "", Some(&token), Some(bad))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");
    assert!(b["issue"][0]["diagnostics"]
        .as_str()
        .is_some_and(|d| d.contains("entry 1") && d.contains("Procedure")));
    let reading = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/abc"}}
    ]});
    let (st, _, _) = s
        .fhir(reqwest::Method::POST, "", Some(&token), Some(reading))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "a GET entry needs r");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_access_token_is_401() {
    let Some(s) = start_with(
        Db::Sqlite,
        AuthConfig {
            token_lifetime: 1,
            ..AuthConfig::default()
        },
    )
    .await
    else {
        return;
    };
    let (id, key) = s.register(Alg::Es384, Role::Site, "a", "system/*.rs").await;
    let token = s.token(&id, &key, "system/*.rs").await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (st, h, _) = s
        .fhir(reqwest::Method::GET, "/Patient/1", Some(&token), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(h["www-authenticate"]
        .to_str()
        .expect("h")
        .contains("expired"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_key_rotation_keeps_old_tokens_valid() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let (id, key) = s.register(Alg::Es384, Role::Site, "a", "system/*.rs").await;
    let old = s.token(&id, &key, "system/*.rs").await;
    let old_kid = jsonwebtoken::decode_header(&old).expect("h").kid;
    let new_kid = s.state.auth().rotate().await.expect("rotate");
    assert_ne!(old_kid.as_deref(), Some(new_kid.as_str()));
    let fresh = s.token(&id, &key, "system/*.rs").await;
    assert_eq!(
        jsonwebtoken::decode_header(&fresh)
            .expect("h")
            .kid
            .as_deref(),
        Some(new_kid.as_str())
    );
    for t in [&old, &fresh] {
        let (st, _, _) = s
            .fhir(reqwest::Method::GET, "/Patient/none", Some(t), None)
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND, "authenticated, then not found");
    }
    let jwks: Value = s
        .http
        .get(format!("{}/auth/jwks", s.base))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(2));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_is_for_admins_only() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let (site, site_key) = s.register(Alg::Es384, Role::Site, "a", "system/*.rs").await;
    let (admin, admin_key) = s
        .register(Alg::Es384, Role::Admin, "hq", "system/*.rs")
        .await;
    let site_token = s.token(&site, &site_key, "system/*.rs").await;
    let admin_token = s.token(&admin, &admin_key, "system/*.rs").await;
    let url = format!("{}/admin/clients", s.base);
    let r = s.http.get(&url).send().await.expect("anon");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s
        .http
        .get(&url)
        .bearer_auth(&site_token)
        .send()
        .await
        .expect("site");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s
        .http
        .get(&url)
        .bearer_auth(&admin_token)
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), StatusCode::OK);
    let list: Value = r.json().await.expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    let new_key = SigningKey::generate(Alg::Rs384).expect("key");
    let r = s
        .http
        .post(&url)
        .bearer_auth(&admin_token)
        .body(
            json!({"id": "added", "site": "c", "role": "site", "scope": "system/*.rs",
                     "jwks": new_key.public_jwks()})
            .to_string(),
        )
        .send()
        .await
        .expect("add");
    assert_eq!(r.status(), StatusCode::CREATED);
    s.token("added", &new_key, "system/*.rs").await;
    let r = s
        .http
        .delete(format!("{url}/added"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (st, b) = s
        .token_with(&s.assertion("added", &new_key), "system/*.rs")
        .await;
    assert_oauth_error(st, &b, "invalid_client", "revoked");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_only_on_loopback() {
    let config = Config {
        listen: "0.0.0.0:0".parse().expect("addr"),
        database_url: std::env::temp_dir()
            .join(format!("{}.sqlite", unique("imagio_noauth")))
            .display()
            .to_string(),
        auth: AuthConfig {
            disabled: true,
            ..AuthConfig::default()
        },
        ..Config::default()
    };
    let err = imagio_gateway::serve::run(config)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("loopback"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Tenancy: one site cannot see or touch another's data

const SITE_SYSTEM: &str = "https://a-imagio.eu/fhir/CodeSystem/site";

fn site_labels(resource: &Value) -> Vec<String> {
    resource["meta"]["security"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| c["system"] == SITE_SYSTEM)
                .filter_map(|c| c["code"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn tenancy(db: Db) {
    let Some(s) = start(db).await else { return };
    let all = "system/*.cruds";
    let (a, ka) = s.register(Alg::Es384, Role::Site, "site-a", all).await;
    let (b, kb) = s.register(Alg::Rs384, Role::Site, "site-b", all).await;
    let (sp, ksp) = s
        .register(Alg::Es384, Role::Sponsor, "hq", "system/*.rs")
        .await;
    let ta = s.token(&a, &ka, all).await;
    let tb = s.token(&b, &kb, all).await;
    let tsp = s.token(&sp, &ksp, "system/*.rs").await;
    // Site A writes, forging site B's label: the gateway labels it site-a.
    let mut forged = patient("shared-mrn");
    forged["meta"] = json!({"security": [{"system": SITE_SYSTEM, "code": "site-b"}]});
    let (st, h, body) = s
        .fhir(reqwest::Method::POST, "/Patient", Some(&ta), Some(forged))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    let loc = h["location"].to_str().expect("location").to_string();
    let id = loc
        .split("/Patient/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("id")
        .to_string();
    let path = format!("/Patient/{id}");
    let (st, _, mine) = s.fhir(reqwest::Method::GET, &path, Some(&ta), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(site_labels(&mine), vec!["site-a".to_string()]);
    // An update without meta cannot remove the label.
    let (st, _, _) = s
        .fhir(
            reqwest::Method::PUT,
            &path,
            Some(&ta),
            Some({
                let mut p = patient("shared-mrn");
                p["id"] = json!(id);
                p["gender"] = json!("male");
                p
            }),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, _, mine) = s.fhir(reqwest::Method::GET, &path, Some(&ta), None).await;
    assert_eq!(site_labels(&mine), vec!["site-a".to_string()]);
    // Site B: read, vread, instance history, update, delete: as if it did not exist.
    for (method, p, body) in [
        (reqwest::Method::GET, path.clone(), None),
        (reqwest::Method::GET, format!("{path}/_history/1"), None),
        (reqwest::Method::GET, format!("{path}/_history"), None),
        (reqwest::Method::DELETE, path.clone(), None),
    ] {
        let (st, _, b) = s.fhir(method.clone(), &p, Some(&tb), body).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{method} {p}: {b}");
    }
    let mut overwrite = patient("shared-mrn");
    overwrite["id"] = json!(id);
    let (st, _, _) = s
        .fhir(reqwest::Method::PUT, &path, Some(&tb), Some(overwrite))
        .await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "update of another site's resource"
    );
    // Type and system history leave it out.
    for p in ["/Patient/_history", "/_history"] {
        let (st, _, bundle) = s.fhir(reqwest::Method::GET, p, Some(&tb), None).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(
            bundle["entry"].as_array().map_or(0, Vec::len),
            0,
            "{p}: {bundle}"
        );
    }
    // A conditional create with the same identifier does not find A's resource.
    let r = s
        .http
        .post(format!("{}/fhir/Patient", s.base))
        .bearer_auth(&tb)
        .header("content-type", FHIR)
        .header("if-none-exist", "identifier=urn:test|shared-mrn")
        .body(patient("shared-mrn").to_string())
        .send()
        .await
        .expect("conditional create");
    assert_eq!(r.status(), StatusCode::CREATED, "B gets its own resource");
    // A conditional update by B does not touch A's either.
    let r = s
        .http
        .put(format!(
            "{}/fhir/Patient?identifier=urn:test|shared-mrn",
            s.base
        ))
        .bearer_auth(&tb)
        .header("content-type", FHIR)
        .body(patient("shared-mrn").to_string())
        .send()
        .await
        .expect("conditional update");
    assert_eq!(r.status(), StatusCode::OK, "matches B's own resource only");
    // A conditional reference in B's transaction resolves among B's resources only: to B's
    // own patient with that identifier, not to A's (and not "several matches").
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "fullUrl": "urn:uuid:7f1c0a52-0d1b-4c55-9a43-5f1a7c2e9b10",
        "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                     "subject": {"reference": "Patient?identifier=urn:test|shared-mrn"}},
        "request": {"method": "POST", "url": "Observation"}}]});
    let (st, _, resp) = s.fhir(reqwest::Method::POST, "", Some(&tb), Some(tx)).await;
    assert_eq!(st, StatusCode::OK, "{resp}");
    let location = resp["entry"][0]["response"]["location"]
        .as_str()
        .expect("location");
    let at = location
        .find("Observation/")
        .expect("an Observation location");
    let obs = location[at..].split("/_history").next().unwrap_or_default();
    let (st, _, stored) = s
        .fhir(reqwest::Method::GET, &format!("/{obs}"), Some(&tb), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{stored}");
    let subject = stored["subject"]["reference"].as_str().expect("reference");
    assert!(subject.starts_with("Patient/"), "{subject}");
    assert_ne!(subject, format!("Patient/{id}"), "not A's patient");
    let (st, _, target) = s
        .fhir(
            reqwest::Method::GET,
            &format!("/{subject}"),
            Some(&tb),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "B's own patient: {target}");
    // A GET inside a batch Bundle.
    let batch = json!({"resourceType": "Bundle", "type": "batch",
                       "entry": [{"request": {"method": "GET", "url": format!("Patient/{id}")}}]});
    let (st, _, resp) = s
        .fhir(reqwest::Method::POST, "", Some(&tb), Some(batch))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        resp["entry"][0]["response"]["status"]
            .as_str()
            .is_some_and(|x| x.starts_with("404")),
        "{resp}"
    );
    // A's resource is untouched, and the sponsor sees both sites.
    let (_, _, mine) = s.fhir(reqwest::Method::GET, &path, Some(&ta), None).await;
    assert_eq!(mine["gender"], "male");
    let (st, _, seen) = s.fhir(reqwest::Method::GET, &path, Some(&tsp), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(site_labels(&seen), vec!["site-a".to_string()]);
    let (_, _, hist) = s
        .fhir(reqwest::Method::GET, "/Patient/_history", Some(&tsp), None)
        .await;
    assert!(hist["entry"].as_array().map_or(0, Vec::len) >= 3, "{hist}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_sites_cannot_reach_each_other_sqlite() {
    tenancy(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_sites_cannot_reach_each_other_postgres() {
    tenancy(Db::Postgres).await;
}

/// The ids of the entries of a Bundle with this `search.mode` (any mode for `None`).
fn entry_ids(b: &Value, mode: Option<&str>) -> Vec<String> {
    b["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|x| mode.is_none_or(|m| x["search"]["mode"] == m))
                .filter_map(|x| x["resource"]["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The `/...` path under `/fhir` of a Bundle link.
fn link_path(b: &Value, relation: &str) -> Option<String> {
    let url = b["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)?["url"]
        .as_str()?;
    Some(url[url.find("/fhir/")? + 5..].to_string())
}

/// Searches, totals, includes and history of a site client are filtered by site in the
/// store: full pages of its own resources only, exact totals, no other site's resource
/// through `_include` or `_revinclude`; the sponsor sees every site.
async fn tenancy_search(db: Db) {
    let Some(s) = start(db).await else { return };
    let all = "system/*.cruds";
    let (a, ka) = s.register(Alg::Es384, Role::Site, "site-a", all).await;
    let (b, kb) = s.register(Alg::Rs384, Role::Site, "site-b", all).await;
    let (sp, ksp) = s
        .register(Alg::Es384, Role::Sponsor, "hq", "system/*.rs")
        .await;
    let ta = s.token(&a, &ka, all).await;
    let tb = s.token(&b, &kb, all).await;
    let tsp = s.token(&sp, &ksp, "system/*.rs").await;
    let create = |token: &str, body: Value| {
        let (s, token) = (&s, token.to_string());
        async move {
            let t = body["resourceType"].as_str().expect("type").to_string();
            let (st, _, b) = s
                .fhir(
                    reqwest::Method::POST,
                    &format!("/{t}"),
                    Some(&token),
                    Some(body),
                )
                .await;
            assert_eq!(st, StatusCode::CREATED, "{b}");
            b["id"].as_str().expect("id").to_string()
        }
    };
    // Site A's resources interleave with B's in every order.
    let mut mine_a = Vec::new();
    let mut mine_b = Vec::new();
    for i in 0..5 {
        mine_a.push(create(&ta, patient(&format!("a{i}"))).await);
        mine_b.push(create(&tb, patient(&format!("b{i}"))).await);
    }
    // A page of B's search is full and holds B's resources only; the total is exact.
    let mut seen = Vec::new();
    let (st, _, mut page) = s
        .fhir(
            reqwest::Method::GET,
            "/Patient?gender=female&_count=2&_total=accurate",
            Some(&tb),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 5);
    loop {
        let ids = entry_ids(&page, Some("match"));
        seen.extend(ids.clone());
        match link_path(&page, "next") {
            Some(next) => {
                assert_eq!(ids.len(), 2, "a page before the last is full: {page}");
                page = s.fhir(reqwest::Method::GET, &next, Some(&tb), None).await.2;
            }
            None => break,
        }
    }
    seen.sort();
    mine_b.sort();
    assert_eq!(seen, mine_b);
    let (_, _, count) = s
        .fhir(
            reqwest::Method::GET,
            "/Patient?gender=female&_summary=count",
            Some(&tb),
            None,
        )
        .await;
    assert_eq!(count["total"], 5);
    let (_, _, count) = s
        .fhir(
            reqwest::Method::GET,
            "/Patient?gender=female&_summary=count",
            Some(&tsp),
            None,
        )
        .await;
    assert_eq!(count["total"], 10, "the sponsor counts every site");
    // B points an Observation at A's patient: B's _include does not bring A's patient,
    // A's _revinclude does not bring B's Observation.
    let a0 = mine_a[0].clone();
    let ob = create(
        &tb,
        json!({"resourceType": "Observation", "status": "final",
               "code": {"text": "x"}, "subject": {"reference": format!("Patient/{a0}")}}),
    )
    .await;
    let oa = create(
        &ta,
        json!({"resourceType": "Observation", "status": "final",
               "code": {"text": "x"}, "subject": {"reference": format!("Patient/{a0}")}}),
    )
    .await;
    let (_, _, inc) = s
        .fhir(
            reqwest::Method::GET,
            "/Observation?_include=Observation:subject",
            Some(&tb),
            None,
        )
        .await;
    assert_eq!(entry_ids(&inc, Some("match")), vec![ob.clone()]);
    assert!(entry_ids(&inc, Some("include")).is_empty(), "{inc}");
    let (_, _, inc) = s
        .fhir(
            reqwest::Method::GET,
            "/Observation?_include=Observation:*",
            Some(&tb),
            None,
        )
        .await;
    assert!(entry_ids(&inc, Some("include")).is_empty(), "{inc}");
    let (_, _, rev) = s
        .fhir(
            reqwest::Method::GET,
            &format!("/Patient?_id={a0}&_revinclude=Observation:subject"),
            Some(&ta),
            None,
        )
        .await;
    assert_eq!(entry_ids(&rev, Some("match")), vec![a0.clone()]);
    // A chain through A's patient finds nothing for B (it would confirm A's identifier),
    // while the sponsor finds both Observations through it.
    for (token, want) in [(&tb, 0), (&tsp, 2)] {
        let (st, _, found) = s
            .fhir(
                reqwest::Method::GET,
                "/Observation?subject:Patient.identifier=urn:test|a0&_total=accurate",
                Some(token),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{found}");
        assert_eq!(found["total"], want, "{found}");
    }
    let (_, _, found) = s
        .fhir(
            reqwest::Method::GET,
            "/Observation?patient.gender=female&_total=accurate",
            Some(&tb),
            None,
        )
        .await;
    assert_eq!(found["total"], 0, "{found}");
    assert_eq!(entry_ids(&rev, Some("include")), vec![oa.clone()], "{rev}");
    let (_, _, inc) = s
        .fhir(
            reqwest::Method::GET,
            &format!("/Observation?_id={oa}&_include=Observation:subject"),
            Some(&ta),
            None,
        )
        .await;
    assert_eq!(
        entry_ids(&inc, Some("include")),
        vec![a0.clone()],
        "own target"
    );
    // B cannot even see A's Observation by id through search.
    let (_, _, none) = s
        .fhir(
            reqwest::Method::GET,
            &format!("/Observation?_id={oa}"),
            Some(&tb),
            None,
        )
        .await;
    assert!(entry_ids(&none, None).is_empty(), "{none}");
    let (_, _, rev) = s
        .fhir(
            reqwest::Method::GET,
            &format!("/Patient?_id={a0}&_revinclude=Observation:subject"),
            Some(&tsp),
            None,
        )
        .await;
    let mut both = entry_ids(&rev, Some("include"));
    both.sort();
    let mut want = vec![oa.clone(), ob.clone()];
    want.sort();
    assert_eq!(both, want, "the sponsor sees both sites");
    // History pages are full of the caller's own versions; deletes of its own show.
    let (st, _, _) = s
        .fhir(
            reqwest::Method::DELETE,
            &format!("/Patient/{}", mine_b[0]),
            Some(&tb),
            None,
        )
        .await;
    assert!(st.is_success());
    for path in ["/Patient/_history?_count=3", "/_history?_count=3"] {
        let (_, _, h) = s.fhir(reqwest::Method::GET, path, Some(&tb), None).await;
        let entries = h["entry"].as_array().cloned().unwrap_or_default();
        assert_eq!(entries.len(), 3, "{path}: {h}");
        for e in &entries {
            let url = e["fullUrl"].as_str().unwrap_or_default();
            assert!(
                mine_b.iter().any(|id| url.ends_with(id))
                    || url.ends_with(&ob)
                    // B's site Group, kept by the gateway with its patients (bulk export).
                    || url.contains("/Group/site-"),
                "{path}: {url} is not B's"
            );
        }
        assert_eq!(entries[0]["request"]["method"], "DELETE", "{path}");
    }
    let (_, _, h) = s
        .fhir(
            reqwest::Method::GET,
            "/Patient/_history?_count=100",
            Some(&ta),
            None,
        )
        .await;
    let urls: Vec<String> = h["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|x| x["fullUrl"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(urls.len(), 5, "{h}");
    assert!(urls.iter().all(|u| mine_a.iter().any(|id| u.ends_with(id))));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_search_history_and_includes_sqlite() {
    tenancy_search(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_search_history_and_includes_postgres() {
    tenancy_search(Db::Postgres).await;
}

// ---------------------------------------------------------------------------------------
// The reference client against a scripted server: retries and token renewal

#[derive(Default)]
struct Script {
    tokens: AtomicUsize,
    posts: AtomicUsize,
}

/// A stand-in gateway: discovery, a token endpoint issuing 1-second tokens, and a FHIR base
/// answering 429 then 503 then 200 to successive POSTs.
async fn scripted_gateway() -> (String, std::sync::Arc<Script>) {
    use axum::routing::{get, post};
    let script = std::sync::Arc::new(Script::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let token_url = format!("{base}/auth/token");
    let (s1, s2) = (script.clone(), script.clone());
    let app = axum::Router::new()
        .route(
            "/fhir/.well-known/smart-configuration",
            get(move || {
                let t = token_url.clone();
                async move {
                    (
                        [("content-type", "application/json")],
                        json!({"token_endpoint": t}).to_string(),
                    )
                }
            }),
        )
        .route(
            "/auth/token",
            post(move |body: String| {
                let s = s1.clone();
                async move {
                    assert!(body.contains("client_assertion="), "{body}");
                    let n = s.tokens.fetch_add(1, Ordering::SeqCst);
                    (
                        [("content-type", "application/json")],
                        json!({"access_token": format!("t{n}"), "token_type": "bearer",
                               "expires_in": 1})
                        .to_string(),
                    )
                }
            }),
        )
        .route(
            "/fhir",
            post(move || {
                let s = s2.clone();
                async move {
                    let n = s.posts.fetch_add(1, Ordering::SeqCst);
                    let status = match n {
                        0 => StatusCode::TOO_MANY_REQUESTS,
                        1 => StatusCode::SERVICE_UNAVAILABLE,
                        _ => StatusCode::OK,
                    };
                    (
                        status,
                        [("content-type", FHIR), ("retry-after", "0")],
                        json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
                            {"response": {"status": "201 Created"}}]})
                        .to_string(),
                    )
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, script)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_retries_429_and_503_and_renews_expired_tokens() {
    let (base, script) = scripted_gateway().await;
    let dir = std::env::temp_dir().join(unique("imagio_client"));
    let generated = keys::generate_files(Alg::Es384, &dir).expect("keys");
    let file = dir.join("b.json");
    std::fs::write(
        &file,
        json!({"resourceType": "Bundle", "type": "batch", "entry": []}).to_string(),
    )
    .expect("write");
    let settings = imagio_gateway::client::Settings {
        server: base,
        client_id: "c".into(),
        key: generated.private_path.clone(),
        kid: None,
        scope: "system/*.cruds".into(),
        ca_cert: None,
    };
    let reports = imagio_gateway::client::push(settings.clone(), std::slice::from_ref(&file))
        .await
        .expect("push");
    assert!(reports[0].accepted(), "{:?}", reports[0]);
    assert_eq!(script.posts.load(Ordering::SeqCst), 3, "429, 503, then 200");
    // Tokens last one second here: the next push must get a new one.
    let before = script.tokens.load(Ordering::SeqCst);
    let mut session = imagio_gateway::client::Session::connect(settings)
        .await
        .expect("session");
    let t1 = session.token().await.expect("token");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let t2 = session.token().await.expect("renewed");
    assert_ne!(t1, t2);
    assert_eq!(script.tokens.load(Ordering::SeqCst), before + 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The reference client pushes every Synthea sample Bundle (transactions) end to end, as a
/// registered site client, with base validation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pushes_the_synthea_samples() {
    let samples =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/samples/synthea");
    if !samples.is_dir() {
        eprintln!("SKIPPED: {} not found", samples.display());
        return;
    }
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let dir = std::env::temp_dir().join(unique("imagio_synthea"));
    let (settings, _, _) = site_client_files(&s, "synthea", Alg::Rs384, &dir).await;
    let reports = imagio_gateway::client::push(settings, &[samples])
        .await
        .expect("push");
    assert!(reports.len() >= 10, "{} files", reports.len());
    for r in &reports {
        assert!(r.accepted(), "{r:?}");
        assert!(r.summary.ends_with("entries written"), "{r:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    s.stop().await;
}

/// `client push --deidentify`: a site de-identifies a Synthea Bundle before it leaves the
/// hospital; the gateway stores it with the pseudonyms its own de-identification gives
/// (the site-side output's Patient id and subject identifier), no name reaches it, and the
/// same Bundle pushed raw afterwards (de-identified by the gateway) links to the same
/// Patient instead of making another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_push_deidentify_gives_the_gateways_pseudonyms() {
    use imagio_gateway::pseudonymize::{Key, Policy, Pseudonymizer};
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/samples/synthea/Cleo_Friesen_59907280-53b1-4677-92b9-83c1332a08b3.json");
    if !file.is_file() {
        eprintln!("SKIPPED: {} not found", file.display());
        return;
    }
    let key = Key::from_bytes(
        b"a-imagio test pseudonym key 0123456789abcdef",
        std::path::Path::new("test"),
    )
    .expect("key");
    let pseudonymizer = Pseudonymizer::new(Policy::default_policy().expect("policy"), key);
    let config = Config {
        validation: ValidationMode::Base,
        pseudonymize: Some(pseudonymizer.clone()),
        ..Config::default()
    };
    let Some(s) = start_config(Db::Sqlite, config).await else {
        return;
    };
    let dir = std::env::temp_dir().join(unique("imagio_deid_push"));
    let (settings, _, _) = site_client_files(&s, "nl01", Alg::Es384, &dir).await;

    // What the site's own de-identification makes of the file.
    let raw = std::fs::read_to_string(&file).expect("bundle");
    let local = imagio_gateway::pseudonymize::cli::deidentify_text(
        &pseudonymizer,
        "nl01",
        &raw,
        "Cleo.json",
    )
    .expect("de-identified at the site");
    let local: Value = serde_json::from_str(&local).expect("json");
    let local_patient = local["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == "Patient")
        .expect("a Patient")
        .clone();
    let family = serde_json::from_str::<Value>(&raw).expect("json")["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == "Patient")
        .and_then(|p| p["name"][0]["family"].as_str().map(str::to_string))
        .expect("a family name in the input");

    let reports = imagio_gateway::client::push_with(
        settings.clone(),
        std::slice::from_ref(&file),
        Some((&pseudonymizer, "nl01")),
    )
    .await
    .expect("push");
    assert!(reports[0].accepted(), "{:?}", reports[0]);
    let patients = s
        .store
        .current_page("Patient", None, "", 10)
        .await
        .expect("patients");
    assert_eq!(patients.len(), 1);
    let (id, stored) = &patients[0];
    assert_eq!(Some(id.as_str()), local_patient["id"].as_str());
    let stored: Value = serde_json::from_str(stored).expect("json");
    assert_eq!(stored["identifier"], local_patient["identifier"]);
    assert!(stored.get("name").is_none());
    assert!(!stored.to_string().contains(&family));

    // The raw Bundle, de-identified by the gateway this time: the same Patient, no other.
    let reports = imagio_gateway::client::push(settings, &[file])
        .await
        .expect("push");
    assert!(reports[0].accepted(), "{:?}", reports[0]);
    let again = s
        .store
        .current_page("Patient", None, "", 10)
        .await
        .expect("patients");
    assert_eq!(again.len(), 1);
    assert_eq!(&again[0].0, id);
    let _ = std::fs::remove_dir_all(&dir);
    s.stop().await;
}

/// A site client of `site` registered with keys generated into `dir` (as `keys generate`
/// writes them): the reference client's settings, its id and its private key file.
async fn site_client_files(
    s: &Server,
    site: &str,
    alg: Alg,
    dir: &std::path::Path,
) -> (imagio_gateway::client::Settings, String, std::path::PathBuf) {
    let generated = keys::generate_files(alg, dir).expect("keys");
    let row = clients::add(
        &s.store,
        &NewClient {
            id: None,
            site: site.into(),
            role: Role::Site,
            scope: "system/*.cruds".into(),
            jwks: Some(clients::read_jwks(&generated.jwks_path).expect("jwks")),
            jwks_url: None,
        },
    )
    .await
    .expect("register");
    let settings = imagio_gateway::client::Settings {
        server: format!("{}/fhir", s.base),
        client_id: row.id.clone(),
        key: generated.private_path.clone(),
        kid: None,
        scope: "system/*.cruds".into(),
        ca_cert: None,
    };
    (settings, row.id, generated.private_path)
}

/// `client push --mapping`: a site's CSV export is mapped at the site and its Bundle pushed;
/// an export the mapping reports errors for is not sent at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pushes_a_mapped_csv_export() {
    // As in a deployment: writes are validated against the study profiles.
    let Some(s) = start_validating(Db::Sqlite, AuthConfig::default(), ValidationMode::Study).await
    else {
        return;
    };
    let dir = std::env::temp_dir().join(unique("imagio_mapped"));
    let (settings, client_id, key_path) = site_client_files(&s, "nl01", Alg::Es384, &dir).await;
    let folder =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/nl01-retrospective");
    let mapping = folder.join("mapping.toml");
    let signing = SigningKey::from_pem(&std::fs::read_to_string(&key_path).expect("private key"))
        .expect("key");
    let token = s.token(&client_id, &signing, "system/*.cruds").await;
    let count = |t: &'static str| {
        let (s, token) = (&s, token.clone());
        async move {
            let (st, _, b) = s
                .fhir(
                    reqwest::Method::GET,
                    &format!("/{t}?_summary=count"),
                    Some(&token),
                    None,
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{b}");
            b["total"].as_i64().expect("total")
        }
    };
    // A broken export: nothing is sent, the report names the row.
    let broken = imagio_gateway::client::push_mapped(
        settings.clone(),
        &mapping,
        &[folder.join("fixtures/broken/registry-export.csv")],
    )
    .await
    .expect("push");
    assert!(!broken.accepted(), "{broken:?}");
    assert!(broken.summary.starts_with("not sent"), "{broken:?}");
    assert!(
        broken.summary.contains("registry-export.csv:"),
        "{broken:?}"
    );
    assert_eq!(
        count("Procedure").await,
        0,
        "nothing of a refused export is stored"
    );
    // The clean export is mapped, validated and stored; sending it again changes nothing.
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(folder.join("fixtures/basic/expected.json")).expect("expected"),
    )
    .expect("json");
    let procedures = expected["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Procedure")
        .count();
    assert!(procedures > 0);
    for _ in 0..2 {
        let report = imagio_gateway::client::push_mapped(
            settings.clone(),
            &mapping,
            &[folder.join("fixtures/basic/registry-export.csv")],
        )
        .await
        .expect("push");
        assert!(report.accepted(), "{report:?}");
        assert_eq!(
            count("Procedure").await,
            i64::try_from(procedures).expect("count")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    s.stop().await;
}

/// The commands of "Connecting a site" and the client administration commands, as a user
/// runs them: the binary with a SQLite file.
#[test]
fn cli_keys_and_clients() {
    let bin = env!("CARGO_BIN_EXE_imagio-gateway");
    let dir = std::env::temp_dir().join(unique("imagio_cli"));
    std::fs::create_dir_all(&dir).expect("dir");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .current_dir(&dir)
            .env_remove("IMAGIO_DATABASE_URL")
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["keys", "generate", "--alg", "RS384", "--out", "keys"]);
    assert_eq!(code, Some(0), "{err}");
    let jwks = out
        .lines()
        .find_map(|l| l.strip_prefix("public JWKS: "))
        .and_then(|l| l.split(" (kid").next())
        .expect("jwks path")
        .to_string();
    let pem = out
        .lines()
        .find_map(|l| l.strip_prefix("private key: "))
        .expect("key path")
        .to_string();
    assert!(std::fs::read_to_string(dir.join(&pem))
        .expect("pem")
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    let (code, id, err) = run(&[
        "clients",
        "add",
        "--site",
        "it02",
        "--role",
        "site",
        "--jwks",
        &jwks,
        "--scope",
        "system/*.cruds",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let id = id.trim().to_string();
    let (code, _, err) = run(&[
        "clients",
        "add",
        "--site",
        "it02",
        "--role",
        "site",
        "--jwks",
        &jwks,
        "--scope",
        "patient/*.read",
    ]);
    assert_eq!(
        code,
        Some(2),
        "a scope that is not a system scope is refused: {err}"
    );
    let (code, list, _) = run(&["clients", "list"]);
    assert_eq!(code, Some(0));
    let list: Value = serde_json::from_str(&list).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["site"], "it02");
    let (code, out, err) = run(&["clients", "rotate-gateway-key"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("new gateway signing key"));
    let (code, _, _) = run(&["clients", "revoke", &id]);
    assert_eq!(code, Some(0));
    let (code, _, _) = run(&["clients", "revoke", &id]);
    assert_eq!(code, Some(1), "already revoked");
    let (code, list, _) = run(&["clients", "list"]);
    assert_eq!(code, Some(0));
    assert!(list.contains("\"revoked\": \"20"), "{list}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// The ledger admin API: admin clients only, filters, paging, payloads byte for byte

async fn ledger_admin_api(db: Db) {
    let Some(s) = start(db).await else { return };
    let all = "system/*.cruds";
    let (l, kl) = s.register(Alg::Es384, Role::Site, "site-l", all).await;
    let (m, km) = s.register(Alg::Rs384, Role::Site, "site-m", all).await;
    let (sp, ksp) = s
        .register(Alg::Es384, Role::Sponsor, "hq", "system/*.rs")
        .await;
    let (ad, kad) = s
        .register(Alg::Es384, Role::Admin, "hq", "system/*.rs")
        .await;
    let (tl, tm) = (s.token(&l, &kl, all).await, s.token(&m, &km, all).await);
    let tsp = s.token(&sp, &ksp, "system/*.rs").await;
    let tad = s.token(&ad, &kad, "system/*.rs").await;
    let started = imagio_gateway::store::time::now();
    // Site L: one accepted write (odd spacing and a charset: kept as sent) and one refused.
    let accepted_body = "{ \"resourceType\" : \"Patient\",\n  \"gender\": \"female\" }\n";
    let accepted_type = "application/fhir+json; charset=utf-8";
    let refused_body = "{\"resourceType\":\"Patient\",\"gender\":\"robot\"}";
    for (token, body, content_type, want) in [
        (&tl, accepted_body, accepted_type, StatusCode::CREATED),
        (&tl, refused_body, FHIR, StatusCode::UNPROCESSABLE_ENTITY),
        (&tm, accepted_body, FHIR, StatusCode::CREATED),
    ] {
        let r = s
            .http
            .post(format!("{}/fhir/Patient", s.base))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("write");
        assert_eq!(r.status(), want);
    }
    let get = |token: Option<String>, path: String| {
        let http = s.http.clone();
        let url = format!("{}{path}", s.base);
        async move {
            let mut r = http.get(url);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send().await.expect("admin request")
        }
    };
    // Nobody but an admin client reaches it.
    let list = "/admin/submissions".to_string();
    assert_eq!(
        get(None, list.clone()).await.status(),
        StatusCode::UNAUTHORIZED
    );
    for token in [&tl, &tm, &tsp] {
        for path in [
            list.clone(),
            format!("{list}?site=site-l"),
            format!("{list}/1"),
            format!("{list}/1/payload"),
        ] {
            let r = get(Some(token.clone()), path.clone()).await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        }
    }
    // Everything, newest first.
    let r = get(Some(tad.clone()), list.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    let entries = body["entry"].as_array().expect("entries").clone();
    assert_eq!(entries.len(), 3, "{body}");
    assert_eq!(entries[0]["site"], "site-m");
    let ids: Vec<i64> = entries.iter().filter_map(|e| e["id"].as_i64()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    assert!(body.get("next").is_none());
    // Filters.
    let count = |v: &Value| v["entry"].as_array().map_or(0, Vec::len);
    for (query, want) in [
        ("site=site-l", 2),
        ("site=site-m", 1),
        ("outcome=rejected", 1),
        ("site=site-l&outcome=accepted", 1),
        ("outcome=failed", 0),
        ("since=2000-01-01", 3),
        ("since=2999-01-01T00:00:00Z", 0),
    ] {
        let r = get(Some(tad.clone()), format!("{list}?{query}")).await;
        assert_eq!(r.status(), StatusCode::OK, "{query}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(count(&v), want, "{query}: {v}");
    }
    let since = format!(
        "{list}?since={}",
        form_urlencoded::byte_serialize(started.as_bytes()).collect::<String>()
    );
    let v: Value = get(Some(tad.clone()), since)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(count(&v), 3, "since the test's start: {v}");
    let r = get(Some(tad.clone()), format!("{list}?outcome=maybe")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Paging: one at a time, following `next`, sees each entry once.
    let mut seen = Vec::new();
    let mut next = Some(format!("{list}?_count=1"));
    while let Some(path) = next {
        let v: Value = get(Some(tad.clone()), path)
            .await
            .json()
            .await
            .expect("json");
        assert!(count(&v) <= 1, "{v}");
        seen.extend(
            v["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["id"].as_i64()),
        );
        next = v["next"].as_str().map(str::to_string);
    }
    assert_eq!(seen, ids);
    // One entry, and its payload exactly as received.
    let refused = entries
        .iter()
        .find(|e| e["outcome"] == "rejected")
        .expect("the refused write");
    assert_eq!(refused["status"], 422);
    assert_eq!(refused["client"], l.as_str());
    assert_eq!(
        refused["operationOutcome"]["resourceType"],
        "OperationOutcome"
    );
    let first = entries.last().expect("the first write");
    let r = get(Some(tad.clone()), format!("{list}/{}", first["id"])).await;
    assert_eq!(r.status(), StatusCode::OK);
    let one: Value = r.json().await.expect("json");
    assert_eq!(one["site"], "site-l");
    assert_eq!(one["contentType"], accepted_type);
    assert_eq!(one["payloadSize"], accepted_body.len());
    assert_eq!(one["versions"].as_array().map(Vec::len), Some(1));
    let r = get(Some(tad.clone()), format!("{list}/{}/payload", first["id"])).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some(accepted_type)
    );
    assert_eq!(
        r.bytes().await.expect("payload").as_ref(),
        accepted_body.as_bytes()
    );
    let r = get(Some(tad.clone()), format!("{list}/999999")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_admin_api_sqlite() {
    ledger_admin_api(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_admin_api_postgres() {
    ledger_admin_api(Db::Postgres).await;
}

/// Conditional delete and PATCH (plain and conditional, alone and in Bundles) by one site
/// never reach another site's resources; a site's own patch keeps its site label.
async fn tenancy_of_conditional_delete_and_patch(db: Db) {
    let Some(s) = start(db).await else { return };
    let all = "system/*.cruds";
    let (a, ka) = s.register(Alg::Es384, Role::Site, "site-a", all).await;
    let (b, kb) = s.register(Alg::Rs384, Role::Site, "site-b", all).await;
    let ta = s.token(&a, &ka, all).await;
    let tb = s.token(&b, &kb, all).await;
    let (st, _, created) = s
        .fhir(
            reqwest::Method::POST,
            "/Patient",
            Some(&ta),
            Some(patient("only-a")),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let id = created["id"].as_str().expect("id").to_string();
    let patch_as = |token: String, path: String, ops: Value| {
        let http = s.http.clone();
        let url = format!("{}/fhir{path}", s.base);
        async move {
            http.patch(url)
                .bearer_auth(token)
                .header("content-type", "application/json-patch+json")
                .body(ops.to_string())
                .send()
                .await
                .expect("patch")
                .status()
        }
    };
    let ops = json!([{"op": "replace", "path": "/gender", "value": "male"},
                     {"op": "remove", "path": "/meta/security"}]);
    // Site B: the criteria match nothing, the id is unknown.
    let (st, _, body) = s
        .fhir(
            reqwest::Method::DELETE,
            "/Patient?identifier=urn:test|only-a",
            Some(&tb),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["issue"][0]["severity"], "information");
    assert_eq!(
        patch_as(tb.clone(), format!("/Patient/{id}"), ops.clone()).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        patch_as(
            tb.clone(),
            "/Patient?identifier=urn:test|only-a".into(),
            ops.clone()
        )
        .await,
        StatusCode::NOT_FOUND
    );
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "DELETE", "url": "Patient?identifier=urn:test|only-a"}},
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                      "data": base64::engine::general_purpose::STANDARD.encode(ops.to_string())},
         "request": {"method": "PATCH", "url": format!("Patient/{id}")}}
    ]});
    let (st, _, resp) = s
        .fhir(reqwest::Method::POST, "", Some(&tb), Some(bundle))
        .await;
    assert_eq!(st, StatusCode::OK, "{resp}");
    assert!(
        resp["entry"][1]["response"]["status"]
            .as_str()
            .is_some_and(|x| x.starts_with("404")),
        "{resp}"
    );
    let (st, _, mine) = s
        .fhir(
            reqwest::Method::GET,
            &format!("/Patient/{id}"),
            Some(&ta),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(mine["gender"], "female");
    assert_eq!(mine["meta"]["versionId"], "1");
    // A token that may only read and search cannot patch or conditionally delete.
    let (r, kr) = s
        .register(Alg::Es384, Role::Site, "site-a", "system/*.rs")
        .await;
    let tr = s.token(&r, &kr, "system/*.rs").await;
    assert_eq!(
        patch_as(tr.clone(), format!("/Patient/{id}"), ops.clone()).await,
        StatusCode::FORBIDDEN
    );
    let (st, _, _) = s
        .fhir(
            reqwest::Method::DELETE,
            "/Patient?identifier=urn:test|only-a",
            Some(&tr),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Site A's own patch applies, and cannot strip the site label.
    assert_eq!(
        patch_as(ta.clone(), format!("/Patient/{id}"), ops).await,
        StatusCode::OK
    );
    let (_, _, mine) = s
        .fhir(
            reqwest::Method::GET,
            &format!("/Patient/{id}"),
            Some(&ta),
            None,
        )
        .await;
    assert_eq!(mine["gender"], "male");
    assert_eq!(site_labels(&mine), vec!["site-a".to_string()]);
    // And its conditional delete finds it.
    let (st, _, _) = s
        .fhir(
            reqwest::Method::DELETE,
            "/Patient?identifier=urn:test|only-a",
            Some(&ta),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_of_conditional_delete_and_patch_sqlite() {
    tenancy_of_conditional_delete_and_patch(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_of_conditional_delete_and_patch_postgres() {
    tenancy_of_conditional_delete_and_patch(Db::Postgres).await;
}

// ---------------------------------------------------------------------------------------
// Scopes narrowed by search parameters (SMART 2.2 "finer-grained resource constraints")

const OBS_CAT: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

fn observation(category: &str, id: Option<&str>) -> Value {
    let mut o = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": OBS_CAT, "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "1920-8"}]},
        "valueString": category
    });
    if let Some(id) = id {
        o["id"] = json!(id);
    }
    o
}

fn lab_scope(letters: &str) -> String {
    format!("system/Observation.{letters}?category={OBS_CAT}|laboratory")
}

/// The ids of the resources of a searchset or history Bundle, sorted.
fn bundle_ids(bundle: &Value) -> Vec<String> {
    let mut ids: Vec<String> = bundle["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

async fn narrowed_scopes(db: Db) {
    let Some(s) = start(db).await else { return };
    let all = "system/*.cruds";
    let (w, kw) = s.register(Alg::Es384, Role::Site, "a", all).await;
    let tw = s.token(&w, &kw, all).await;
    // Data of every category, written by an unrestricted client of the same site.
    for (id, cat) in [
        ("lab1", "laboratory"),
        ("vs1", "vital-signs"),
        ("img1", "imaging"),
    ] {
        let (st, _, b) = s
            .fhir(
                reqwest::Method::PUT,
                &format!("/Observation/{id}"),
                Some(&tw),
                Some(observation(cat, Some(id))),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{b}");
    }
    // A client registered with a lab-only scope asks for everything: it gets lab only.
    let (n, kn) = s
        .register(Alg::Rs384, Role::Site, "a", &lab_scope("cruds"))
        .await;
    let (st, body) = s
        .token_with(&s.assertion(&n, &kn), "system/Observation.cruds")
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], lab_scope("cruds"));
    let tn = body["access_token"].as_str().expect("token").to_string();
    let get = |path: String| {
        let tn = tn.clone();
        let s = &s;
        async move { s.fhir(reqwest::Method::GET, &path, Some(&tn), None).await }
    };
    // Searches get the narrowing ANDed.
    let (st, _, b) = get("/Observation".into()).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(bundle_ids(&b), vec!["lab1"]);
    assert_eq!(b["total"], 1);
    let (_, _, b) = get("/Observation?category=vital-signs".into()).await;
    assert_eq!(bundle_ids(&b), Vec::<String>::new());
    let (_, _, b) = get("/Observation?_summary=count".into()).await;
    assert_eq!(b["total"], 1);
    let r = s
        .http
        .post(format!("{}/fhir/Observation/_search", s.base))
        .bearer_auth(&tn)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("_id=vs1,lab1")
        .send()
        .await
        .expect("post search");
    let st = r.status();
    let b: Value = r.json().await.expect("json");
    assert_eq!(st, StatusCode::OK);
    assert_eq!(bundle_ids(&b), vec!["lab1"]);
    // Single resources outside the narrowing are absent: read, vread, history.
    let (st, _, _) = get("/Observation/lab1".into()).await;
    assert_eq!(st, StatusCode::OK);
    for path in [
        "/Observation/vs1",
        "/Observation/vs1/_history/1",
        "/Observation/vs1/_history",
        "/Observation/img1",
    ] {
        let (st, _, b) = get(path.into()).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}: {b}");
        assert_eq!(b["issue"][0]["code"], "not-found", "{path}");
    }
    let (st, _, b) = get("/Observation/_history".into()).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(bundle_ids(&b), vec!["lab1"]);
    // Writes: a result outside the narrowing is 403 with an OperationOutcome, and nothing
    // is stored.
    let (st, _, b) = s
        .fhir(
            reqwest::Method::POST,
            "/Observation",
            Some(&tn),
            Some(observation("vital-signs", None)),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(b["resourceType"], "OperationOutcome");
    assert_eq!(b["issue"][0]["code"], "forbidden");
    let (_, _, count) = s
        .fhir(
            reqwest::Method::GET,
            "/Observation?_summary=count",
            Some(&tw),
            None,
        )
        .await;
    assert_eq!(count["total"], 3, "the refused create stored nothing");
    let (st, h, b) = s
        .fhir(
            reqwest::Method::POST,
            "/Observation",
            Some(&tn),
            Some(observation("laboratory", None)),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let created = h["location"]
        .to_str()
        .expect("location")
        .split("/Observation/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("id")
        .to_string();
    // Updating a lab result into another category, or another category into lab: 403.
    let (st, _, b) = s
        .fhir(
            reqwest::Method::PUT,
            "/Observation/lab1",
            Some(&tn),
            Some(observation("vital-signs", Some("lab1"))),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");
    let (st, _, b) = s
        .fhir(
            reqwest::Method::PUT,
            "/Observation/vs1",
            Some(&tn),
            Some(observation("laboratory", Some("vs1"))),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");
    let (st, _, _) = s
        .fhir(reqwest::Method::DELETE, "/Observation/vs1", Some(&tn), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _, _) = get("/Observation/vs1".into()).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "still hidden");
    let (st, _, _) = s
        .fhir(reqwest::Method::GET, "/Observation/vs1", Some(&tw), None)
        .await;
    assert_eq!(st, StatusCode::OK, "and not deleted");
    let (st, _, b) = s
        .fhir(
            reqwest::Method::PUT,
            "/Observation/lab1",
            Some(&tn),
            Some({
                let mut o = observation("laboratory", Some("lab1"));
                o["valueString"] = json!("changed");
                o
            }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let (st, _, _) = s
        .fhir(
            reqwest::Method::DELETE,
            &format!("/Observation/{created}"),
            Some(&tn),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    // A conditional create whose criteria find a resource outside the narrowing does not
    // hand it out: 403; inside it, the existing resource as usual (200).
    for (criteria, want) in [
        ("_id=vs1", StatusCode::FORBIDDEN),
        ("_id=lab1", StatusCode::OK),
    ] {
        let r = s
            .http
            .post(format!("{}/fhir/Observation", s.base))
            .bearer_auth(&tn)
            .header("content-type", FHIR)
            .header("if-none-exist", criteria)
            .body(observation("laboratory", None).to_string())
            .send()
            .await
            .expect("conditional create");
        assert_eq!(r.status(), want, "{criteria}");
    }
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation("laboratory", None),
         "request": {"method": "POST", "url": "Observation", "ifNoneExist": "_id=vs1"}}
    ]});
    let (st, _, b) = s.fhir(reqwest::Method::POST, "", Some(&tn), Some(tx)).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");
    // Bundle entries are checked one by one: in a batch each answers for itself; a
    // transaction with one entry outside the narrowing fails as a whole.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation/vs1"}},
        {"request": {"method": "GET", "url": "Observation/lab1"}},
        {"resource": observation("vital-signs", None),
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation("laboratory", None),
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let (st, _, b) = s
        .fhir(reqwest::Method::POST, "", Some(&tn), Some(batch))
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let status = |i: usize| {
        b["entry"][i]["response"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(status(0).starts_with("404"), "{b}");
    assert!(status(1).starts_with("200"), "{b}");
    assert!(status(2).starts_with("403"), "{b}");
    assert!(status(3).starts_with("201"), "{b}");
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation("laboratory", None),
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation("imaging", None),
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let (st, _, b) = s.fhir(reqwest::Method::POST, "", Some(&tn), Some(tx)).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");
    let (_, _, count) = s
        .fhir(
            reqwest::Method::GET,
            "/Observation?_summary=count",
            Some(&tw),
            None,
        )
        .await;
    assert_eq!(
        count["total"], 4,
        "3 + the batch's lab entry; the transaction wrote nothing"
    );
    // A narrowed request under a broad grant is granted as narrowed.
    let (st, body) = s.token_with(&s.assertion(&w, &kw), &lab_scope("rs")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], lab_scope("rs"));
    let tl = body["access_token"].as_str().expect("token").to_string();
    let (_, _, b) = s
        .fhir(reqwest::Method::GET, "/Observation/vs1", Some(&tl), None)
        .await;
    assert_eq!(b["issue"][0]["code"], "not-found");
    // Unrelated narrowed grants for one type are ORed.
    let two = format!(
        "{} system/Observation.rs?category=vital-signs",
        lab_scope("rs")
    );
    let (o, ko) = s.register(Alg::Es384, Role::Site, "a", &two).await;
    let to = s.token(&o, &ko, "system/Observation.rs").await;
    let (_, _, b) = s
        .fhir(
            reqwest::Method::GET,
            "/Observation?_id=lab1,vs1,img1",
            Some(&to),
            None,
        )
        .await;
    assert_eq!(bundle_ids(&b), vec!["lab1", "vs1"]);
    let (st, _, _) = s
        .fhir(reqwest::Method::GET, "/Observation/img1", Some(&to), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // A narrowing that is not a search parameter of the type is refused at registration
    // and at the token endpoint.
    let refused = clients::add(
        &s.store,
        &NewClient {
            id: None,
            site: "a".into(),
            role: Role::Site,
            scope: "system/Observation.rs?colour=red".into(),
            jwks: Some(kw.public_jwks()),
            jwks_url: None,
        },
    )
    .await;
    assert!(refused.is_err(), "unknown narrowing parameter accepted");
    let (st, body) = s
        .token_with(&s.assertion(&w, &kw), "system/Observation.rs?colour=red")
        .await;
    assert_oauth_error(st, &body, "invalid_scope", "colour");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowed_scopes_reach_only_matching_resources_sqlite() {
    narrowed_scopes(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowed_scopes_reach_only_matching_resources_postgres() {
    narrowed_scopes(Db::Postgres).await;
}

// ---------------------------------------------------------------------------------------
// The reference client pulls back what it pushed

/// Reads an NDJSON file into resources by id.
fn ndjson(path: &std::path::Path) -> std::collections::BTreeMap<String, Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            (v["id"].as_str().expect("id").to_string(), v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pull_writes_back_what_was_pushed() {
    let Some(s) = start(Db::Sqlite).await else {
        return;
    };
    let dir = std::env::temp_dir().join(unique("imagio_pull"));
    let generated = keys::generate_files(Alg::Es384, &dir).expect("keys");
    let row = clients::add(
        &s.store,
        &NewClient {
            id: None,
            site: "p".into(),
            role: Role::Site,
            scope: "system/*.cruds".into(),
            jwks: Some(clients::read_jwks(&generated.jwks_path).expect("jwks")),
            jwks_url: None,
        },
    )
    .await
    .expect("register");
    let settings = |scope: &str| imagio_gateway::client::Settings {
        server: s.base.clone(),
        client_id: row.id.clone(),
        key: generated.private_path.clone(),
        kid: None,
        scope: scope.into(),
        ca_cert: None,
    };
    // Push 5 patients and 3 observations (2 laboratory) in one transaction.
    let mut entries: Vec<Value> = (0..5)
        .map(|i| {
            json!({"resource": patient(&format!("pull-{i}")),
                        "request": {"method": "POST", "url": "Patient"}})
        })
        .collect();
    for cat in ["laboratory", "laboratory", "vital-signs"] {
        let mut o = observation(cat, None);
        o["valueQuantity"] = json!({"value": 152.40, "unit": "mg"});
        if let Some(m) = o.as_object_mut() {
            m.remove("valueString");
        }
        entries.push(json!({"resource": o, "request": {"method": "POST", "url": "Observation"}}));
    }
    let file = dir.join("bundle.json");
    // Written as text so that 152.40 keeps its trailing zero.
    let text = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        .to_string()
        .replace("152.4", "152.40");
    std::fs::write(&file, text).expect("write");
    let reports = imagio_gateway::client::push(settings("system/*.cruds"), &[file])
        .await
        .expect("push");
    assert!(reports[0].accepted(), "{:?}", reports[0]);
    // Pull Patients two per page: three pages, five resources, as the server has them.
    let out = dir.join("out");
    let plan = imagio_gateway::client::Plan::from_args(
        &[(1, "Patient".into())],
        &[(2, "_count=2".into())],
    )
    .expect("plan");
    let pulled = imagio_gateway::client::pull(settings("system/*.rs"), &plan, &out)
        .await
        .expect("pull");
    assert_eq!(pulled.len(), 1);
    assert!(pulled[0].ok(), "{:?}", pulled[0]);
    assert_eq!((pulled[0].count, pulled[0].pages), (5, 3));
    let patients = ndjson(&out.join("Patient.ndjson"));
    assert_eq!(patients.len(), 5);
    let token = s
        .token(
            &row.id,
            &{ keys::SigningKey::from_file(&generated.private_path).expect("key") },
            "system/*.rs",
        )
        .await;
    for (id, pulled) in &patients {
        let (st, _, stored) = s
            .fhir(
                reqwest::Method::GET,
                &format!("/Patient/{id}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(pulled, &stored, "Patient/{id} pulled as stored");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .expect("out")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The command line: --query belongs to the --type before it; numbers keep their text.
    let bin = env!("CARGO_BIN_EXE_imagio-gateway");
    let cli_out = dir.join("cli");
    let args: Vec<String> = [
        "client",
        "pull",
        "--server",
        &s.base,
        "--client-id",
        &row.id,
        "--key",
        generated.private_path.to_str().expect("utf-8"),
        "--out",
        cli_out.to_str().expect("utf-8"),
        "--type",
        "Observation",
        "--query",
        &format!("category={OBS_CAT}|laboratory"),
        "--type",
        "Patient",
        "--query",
        "_count=2",
    ]
    .iter()
    .map(|a| (*a).to_string())
    .collect();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin)
                .args(&args)
                .output()
                .expect("run")
        })
    };
    let output = run(args.clone()).await.expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("written Observation") && stdout.contains("2 resources"),
        "{stdout}"
    );
    let labs = ndjson(&cli_out.join("Observation.ndjson"));
    assert_eq!(labs.len(), 2);
    let line = std::fs::read_to_string(cli_out.join("Observation.ndjson")).expect("read");
    assert!(line.contains("152.40"), "decimals as stored: {line}");
    assert_eq!(ndjson(&cli_out.join("Patient.ndjson")), patients);
    // A search the server refuses fails its type (exit 1) and leaves no file behind.
    let bad_out = dir.join("bad");
    let mut bad = args.clone();
    let at = bad.iter().position(|a| a == "--out").expect("--out") + 1;
    bad[at] = bad_out.to_str().expect("utf-8").to_string();
    let q = bad
        .iter()
        .position(|a| a.starts_with("category="))
        .expect("query");
    bad[q] = "date=not-a-date".into();
    let output = run(bad).await.expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("failed Observation") && stdout.contains("400"),
        "{stdout}"
    );
    assert!(!bad_out.join("Observation.ndjson").exists());
    assert!(bad_out.join("Patient.ndjson").exists());
    // Without --type: the study types the token may search.
    let default_out = dir.join("default");
    let pulled = imagio_gateway::client::pull(
        settings("system/Patient.rs system/Observation.rs"),
        &imagio_gateway::client::Plan::default(),
        &default_out,
    )
    .await
    .expect("pull");
    let mut names: Vec<&str> = pulled.iter().map(|r| r.res_type.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, vec!["Observation", "Patient"]);
    assert_eq!(ndjson(&default_out.join("Observation.ndjson")).len(), 3);
    // A key the server does not know: nothing can start (exit 2).
    let other = keys::generate_files(Alg::Es384, &dir.join("other")).expect("keys");
    let mut unknown = args;
    let k = unknown.iter().position(|a| a == "--key").expect("--key") + 1;
    unknown[k] = other.private_path.to_str().expect("utf-8").to_string();
    let output = run(unknown).await.expect("join");
    assert_eq!(output.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// HTTPS: the reference client and the JWKS fetcher trust the system's roots plus a
// private CA given to them, and refuse an untrusted certificate with a clear error

/// A certificate for 127.0.0.1 and localhost, self-signed (its own CA, as a hospital's
/// private CA would be); returns the PEM to trust and the TLS acceptor that serves it.
fn test_tls() -> (String, tokio_rustls::TlsAcceptor) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("certificate");
    let pem = certified.cert.pem();
    let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(
        certified.signing_key.serialize_der().into(),
    );
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("server config");
    (
        pem,
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
    )
}

/// A TLS front on `listener` forwarding every connection to `backend` (what a hospital's
/// reverse proxy does in front of the gateway).
fn tls_front(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    backend: String,
) {
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let backend = backend.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut plain) = tokio::net::TcpStream::connect(&backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pushes_and_pulls_over_https_with_a_private_ca() {
    let front = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let https = format!(
        "https://127.0.0.1:{}",
        front.local_addr().expect("addr").port()
    );
    // The gateway names its public HTTPS URL: assertions are addressed to it.
    let Some(s) = start_with(
        Db::Sqlite,
        AuthConfig {
            public_url: Some(https.clone()),
            ..AuthConfig::default()
        },
    )
    .await
    else {
        return;
    };
    let (ca_pem, acceptor) = test_tls();
    tls_front(
        front,
        acceptor,
        s.base.trim_start_matches("http://").to_string(),
    );
    let dir = std::env::temp_dir().join(unique("imagio_tls"));
    let generated = keys::generate_files(Alg::Es384, &dir).expect("keys");
    let ca = dir.join("hospital-ca.pem");
    std::fs::write(&ca, &ca_pem).expect("write ca");
    let row = clients::add(
        &s.store,
        &NewClient {
            id: None,
            site: "tls".into(),
            role: Role::Site,
            scope: "system/*.cruds".into(),
            jwks: Some(clients::read_jwks(&generated.jwks_path).expect("jwks")),
            jwks_url: None,
        },
    )
    .await
    .expect("register");
    let file = dir.join("p.json");
    std::fs::write(&file, patient("over-tls").to_string()).expect("write");
    let settings = |ca_cert: Option<std::path::PathBuf>| imagio_gateway::client::Settings {
        server: https.clone(),
        client_id: row.id.clone(),
        key: generated.private_path.clone(),
        kid: None,
        scope: "system/*.cruds".into(),
        ca_cert,
    };
    // Not trusted without the CA: refused before anything is sent, and the error says why.
    let err = imagio_gateway::client::push(settings(None), std::slice::from_ref(&file))
        .await
        .expect_err("an untrusted certificate must be refused");
    let text = err.to_string();
    eprintln!("refused as it should be: {text}");
    assert!(text.contains("certificate"), "{text}");
    // With the hospital's CA: discovery, token and push all over HTTPS.
    let reports = imagio_gateway::client::push(settings(Some(ca.clone())), &[file])
        .await
        .expect("push over https");
    assert!(reports[0].accepted(), "{:?}", reports[0]);
    let plan =
        imagio_gateway::client::Plan::from_args(&[(1, "Patient".into())], &[]).expect("plan");
    let pulled = imagio_gateway::client::pull(settings(Some(ca.clone())), &plan, &dir.join("out"))
        .await
        .expect("pull over https");
    assert_eq!(pulled[0].count, 1, "{:?}", pulled[0]);
    // A file that holds no certificate is refused as such.
    let bad = imagio_gateway::client::push(settings(Some(generated.jwks_path.clone())), &[])
        .await
        .expect_err("not a CA file");
    assert!(bad.to_string().contains("certificate"), "{bad}");
    let _ = std::fs::remove_dir_all(&dir);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_over_https_needs_the_configured_ca() {
    let (ca_pem, acceptor) = test_tls();
    let key = SigningKey::generate(Alg::Rs384).expect("key");
    let (plain, fetches) = jwks_server(key.public_jwks()).await;
    let front = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = front.local_addr().expect("addr").port();
    let backend = plain
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("host")
        .to_string();
    let path = plain
        .trim_start_matches("http://")
        .split_once('/')
        .map_or(String::new(), |(_, p)| p.to_string());
    tls_front(front, acceptor, backend);
    let url = format!("https://127.0.0.1:{port}/{path}");
    let dir = std::env::temp_dir().join(unique("imagio_jwks_tls"));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &ca_pem).expect("write");
    for trusted in [false, true] {
        let Some(s) = start_with(
            Db::Sqlite,
            AuthConfig {
                jwks_ca_cert: trusted.then(|| ca.clone()),
                ..AuthConfig::default()
            },
        )
        .await
        else {
            return;
        };
        let id = unique("client");
        clients::add(
            &s.store,
            &NewClient {
                id: Some(id.clone()),
                site: "a".into(),
                role: Role::Site,
                scope: "system/*.rs".into(),
                jwks: None,
                jwks_url: Some(url.clone()),
            },
        )
        .await
        .expect("register");
        let (st, body) = s.token_with(&s.assertion(&id, &key), "system/*.rs").await;
        if trusted {
            assert_eq!(st, StatusCode::OK, "{body}");
        } else {
            assert_oauth_error(st, &body, "invalid_client", "certificate");
        }
        s.stop().await;
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "fetched once, over the trusted connection"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `serve --jwks-ca-cert` with a file that holds no certificate stops before serving.
#[test]
fn serve_refuses_a_jwks_ca_file_without_certificates() {
    let bin = env!("CARGO_BIN_EXE_imagio-gateway");
    let dir = std::env::temp_dir().join(unique("imagio_ca_cli"));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("not-a-ca.pem");
    std::fs::write(&bad, "hello").expect("write");
    let out = std::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--jwks-ca-cert"])
        .arg(&bad)
        .current_dir(&dir)
        .env_remove("IMAGIO_DATABASE_URL")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--jwks-ca-cert") && err.contains("certificate"),
        "{err}"
    );
    assert!(
        !dir.join("imagio.sqlite").exists(),
        "stopped before opening the database"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// SQL on FHIR $run: sponsors see every site's rows, a site only its own

async fn view_run_tenancy(db: Db) {
    let Some(s) = start(db).await else { return };
    let all = "system/*.cruds";
    let (a, ka) = s.register(Alg::Es384, Role::Site, "site-a", all).await;
    let (b, kb) = s.register(Alg::Es384, Role::Site, "site-b", all).await;
    let (sp, ksp) = s
        .register(Alg::Es384, Role::Sponsor, "hq", "system/*.rs")
        .await;
    let (obs, kobs) = s
        .register(Alg::Es384, Role::Sponsor, "hq", "system/Observation.rs")
        .await;
    let ta = s.token(&a, &ka, all).await;
    let tb = s.token(&b, &kb, all).await;
    let tsp = s.token(&sp, &ksp, "system/*.rs").await;
    let tobs = s.token(&obs, &kobs, "system/Observation.rs").await;
    for (token, value) in [(&ta, "mrn-a1"), (&ta, "mrn-a2"), (&tb, "mrn-b1")] {
        let (st, _, body) = s
            .fhir(
                reqwest::Method::POST,
                "/Patient",
                Some(token),
                Some(patient(value)),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
    }
    let view = json!({"resourceType": "ViewDefinition", "resource": "Patient",
        "select": [{"column": [{"name": "mrn", "path": "identifier.value.first()"}]}]});
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "viewResource", "resource": view}, {"name": "_format", "valueCode": "csv"}]});
    let run = |token: String| {
        let params = params.clone();
        let url = format!("{}/fhir/ViewDefinition/$run", s.base);
        let http = s.http.clone();
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", FHIR)
                .body(params.to_string())
                .send()
                .await
                .expect("$run");
            let status = r.status();
            (status, r.text().await.expect("body"))
        }
    };
    let sorted = |csv: &str| {
        let mut lines: Vec<String> = csv.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    let (st, body) = run(tsp.clone()).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(sorted(&body), vec!["mrn", "mrn-a1", "mrn-a2", "mrn-b1"]);
    let (st, body) = run(ta).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(sorted(&body), vec!["mrn", "mrn-a1", "mrn-a2"]);
    let (st, body) = run(tb).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(sorted(&body), vec!["mrn", "mrn-b1"]);
    // A token without search on the view's type is refused.
    let (st, body) = run(tobs).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("system/Patient.s"), "{body}");
    // No token at all: 401.
    let r = s
        .http
        .post(format!("{}/fhir/ViewDefinition/$run", s.base))
        .header("content-type", FHIR)
        .body(params.to_string())
        .send()
        .await
        .expect("$run");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_run_tenancy_sqlite() {
    view_run_tenancy(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_run_tenancy_postgres() {
    view_run_tenancy(Db::Postgres).await;
}
