//! The end-to-end harness shared by the server's test files: a real server on 127.0.0.1 (a
//! free port), authentication off, on a temporary SQLite file or, when
//! `IMAGIO_TEST_DATABASE_URL` is set, in a fresh PostgreSQL schema; reqwest to talk to it;
//! `on_both!` to run one scenario on both stores.
#![allow(dead_code)]

use imagio_gateway::serve::{serve_on, AppState, Config, ValidationMode};
use imagio_gateway::store::Store;
use reqwest::StatusCode;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const FHIR: &str = "application/fhir+json";

/// A running server and what it needs to be cleaned up.
pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
    pub cleanup: Cleanup,
}

pub enum Cleanup {
    File(std::path::PathBuf),
    Schema(String, String),
    /// Another server (a replica on the same database) cleans up.
    Nothing,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        uuid::Uuid::new_v4().simple()
    )
}

/// Starts a server on `db` (`None` when PostgreSQL is asked for and not configured).
pub async fn start(db: Db, validation: ValidationMode, max_body: usize) -> Option<Server> {
    let (store, cleanup) = open_db(db).await?;
    Some(serve_store(store, cleanup, validation, max_body).await)
}

/// A fresh store on `db`: a temporary SQLite file or a new PostgreSQL schema (`None` when
/// PostgreSQL is asked for and not configured).
pub async fn open_db(db: Db) -> Option<(Store, Cleanup)> {
    Some(match db {
        Db::Sqlite => {
            let path = std::env::temp_dir().join(format!("{}.sqlite", unique("imagio_test")));
            let store = Store::open(path.to_str().expect("utf-8 temp path"))
                .await
                .expect("open sqlite");
            (store, Cleanup::File(path))
        }
        Db::Postgres => {
            let Ok(url) = std::env::var("IMAGIO_TEST_DATABASE_URL") else {
                eprintln!("SKIPPED: PostgreSQL end-to-end test: IMAGIO_TEST_DATABASE_URL not set");
                return None;
            };
            let schema = unique("t");
            let store = imagio_gateway::store::postgres::open(&url, Some(&schema))
                .await
                .expect("open postgres schema");
            (store, Cleanup::Schema(url, schema))
        }
    })
}

/// Two servers (separate `AppState`s, separate connection pools) on one database: the same
/// SQLite file, or the same PostgreSQL schema (`None` when PostgreSQL is not configured).
/// The second server cleans up.
pub async fn start_replicas(db: Db) -> Option<(Server, Server)> {
    let first = start(db, ValidationMode::Base, 64 * 1024 * 1024).await?;
    let store = match &first.cleanup {
        Cleanup::File(path) => Store::open(path.to_str().expect("utf-8 temp path"))
            .await
            .expect("open the sqlite file again"),
        Cleanup::Schema(url, schema) => imagio_gateway::store::postgres::open(url, Some(schema))
            .await
            .expect("open the postgres schema again"),
        Cleanup::Nothing => unreachable!("start always cleans up"),
    };
    let mut first = first;
    let cleanup = std::mem::replace(&mut first.cleanup, Cleanup::Nothing);
    let second = serve_store(store, cleanup, ValidationMode::Base, 64 * 1024 * 1024).await;
    Some((first, second))
}

/// Serves `store` on a free port of 127.0.0.1, authentication off.
pub async fn serve_store(
    store: Store,
    cleanup: Cleanup,
    validation: ValidationMode,
    max_body: usize,
) -> Server {
    let config = Config {
        validation,
        max_body,
        max_depth: 64,
        // These tests are about FHIR semantics; tests/auth.rs tests authentication.
        auth: imagio_gateway::auth::AuthConfig {
            disabled: true,
            ..Default::default()
        },
        ..Config::default()
    };
    serve_config(store, cleanup, config).await
}

/// Serves `store` with `config` on a free port of 127.0.0.1.
pub async fn serve_config(store: Store, cleanup: Cleanup, config: Config) -> Server {
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
        client: reqwest::Client::new(),
        store,
        stop: Some(stop),
        task: Some(task),
        cleanup,
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(b) = body {
            req = req
                .header("content-type", FHIR)
                .body(serde_json::to_vec(b).expect("json"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        (status, headers, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.send(reqwest::Method::GET, path, None, &[]).await
    }

    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.send(reqwest::Method::POST, path, Some(body), headers)
            .await
    }

    pub async fn put(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.send(reqwest::Method::PUT, path, Some(body), headers)
            .await
    }

    /// How many versions of `res_type` the server holds.
    pub async fn version_count(&self, res_type: &str) -> usize {
        let (s, _, b) = self
            .get(&format!("/fhir/{res_type}/_history?_count=1000"))
            .await;
        assert_eq!(s, StatusCode::OK);
        b["entry"].as_array().map_or(0, Vec::len)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        match &self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Cleanup::Schema(url, schema) => {
                let _ = imagio_gateway::store::postgres::drop_schema(url, schema).await;
            }
            Cleanup::Nothing => {}
        }
    }
}

/// Registers a client of `id` in `store` with a fresh ES384 key (its public JWKS given to
/// the gateway) and returns the key, for client assertions.
pub async fn register_client(
    store: &Store,
    id: &str,
    role: imagio_gateway::auth::Role,
    site: &str,
    scope: &str,
) -> imagio_gateway::auth::keys::SigningKey {
    use imagio_gateway::auth::clients::{self, NewClient};
    use imagio_gateway::auth::keys::{Alg, SigningKey};
    let key = SigningKey::generate(Alg::Es384).expect("key");
    clients::add(
        store,
        &NewClient {
            id: Some(id.to_string()),
            site: site.into(),
            role,
            scope: scope.into(),
            jwks: Some(key.public_jwks()),
            jwks_url: None,
        },
    )
    .await
    .expect("register");
    key
}

/// Runs one scenario on SQLite and on PostgreSQL.
macro_rules! on_both {
    ($name:ident, $validation:expr, $max_body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let server = start(Db::Sqlite, $validation, $max_body)
                    .await
                    .expect("sqlite server");
                super::scenarios::$name(&server).await;
                server.stop().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                if let Some(server) = start(Db::Postgres, $validation, $max_body).await {
                    super::scenarios::$name(&server).await;
                    server.stop().await;
                }
            }
        }
    };
    ($name:ident) => {
        on_both!($name, ValidationMode::Base, 64 * 1024 * 1024);
    };
}

/// A fresh store on `db` and how to clean it up (`None` when PostgreSQL is asked for and not
/// configured).
pub async fn open_store(db: Db) -> Option<(Store, Cleanup)> {
    match db {
        Db::Sqlite => {
            let path = std::env::temp_dir().join(format!("{}.sqlite", unique("imagio_test")));
            let store = Store::open(path.to_str().expect("utf-8 temp path"))
                .await
                .expect("open sqlite");
            Some((store, Cleanup::File(path)))
        }
        Db::Postgres => {
            let Ok(url) = std::env::var("IMAGIO_TEST_DATABASE_URL") else {
                eprintln!("SKIPPED: PostgreSQL end-to-end test: IMAGIO_TEST_DATABASE_URL not set");
                return None;
            };
            let schema = unique("t");
            let store = imagio_gateway::store::postgres::open(&url, Some(&schema))
                .await
                .expect("open postgres schema");
            Some((store, Cleanup::Schema(url, schema)))
        }
    }
}
