//! Two replicas of the gateway on one database: two servers in one test process, each
//! with its own `AppState` and its own connection pools, on the same SQLite file and on
//! the same PostgreSQL schema (when `IMAGIO_TEST_DATABASE_URL` is set). Requests are spread
//! over both; the database alone must keep them correct.

use reqwest::StatusCode;
use serde_json::{json, Value};

#[macro_use]
#[allow(unused_macros)]
mod common;
use common::*;

fn patient(system: &str, value: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": value}],
        "gender": "female",
        "birthDate": "1950-03-02"
    })
}

/// Runs a two-replica scenario on SQLite and on PostgreSQL.
macro_rules! on_both_replicated {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let (a, b) = start_replicas(Db::Sqlite).await.expect("sqlite replicas");
                super::scenarios::$name(&a, &b).await;
                a.stop().await;
                b.stop().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                if let Some((a, b)) = start_replicas(Db::Postgres).await {
                    super::scenarios::$name(&a, &b).await;
                    a.stop().await;
                    b.stop().await;
                }
            }
        }
    };
}

on_both_replicated!(conditional_creates_make_one_resource);
on_both_replicated!(writes_through_one_are_read_through_the_other);
on_both_replicated!(if_match_updates_never_lose_an_update);

/// The replica of request `n`: even to `a`, odd to `b`.
fn pick<'a>(a: &'a Server, b: &'a Server, n: usize) -> &'a Server {
    if n % 2 == 0 {
        a
    } else {
        b
    }
}

mod scenarios {
    use super::*;

    pub async fn conditional_creates_make_one_resource(a: &Server, b: &Server) {
        let body = serde_json::to_vec(&patient("urn:rep", "1")).expect("json");
        let mut tasks = Vec::new();
        for n in 0..20 {
            let s = pick(a, b, n);
            let (client, url, body) = (s.client.clone(), s.url("/fhir/Patient"), body.clone());
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(url)
                    .header("content-type", FHIR)
                    .header("if-none-exist", "identifier=urn:rep|1")
                    .body(body)
                    .send()
                    .await
                    .expect("send");
                let status = r.status();
                let v: Value = r.json().await.expect("json");
                (status, v["id"].as_str().unwrap_or_default().to_string())
            }));
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut created = 0;
        for t in tasks {
            let (status, id) = t.await.expect("task");
            assert!(
                status == StatusCode::CREATED || status == StatusCode::OK,
                "{status}"
            );
            created += usize::from(status == StatusCode::CREATED);
            ids.insert(id);
        }
        assert_eq!(created, 1, "exactly one create wins across both replicas");
        assert_eq!(ids.len(), 1, "{ids:?}");
        assert_eq!(a.version_count("Patient").await, 1);
        assert_eq!(b.version_count("Patient").await, 1);
        // The same race through transaction Bundles holding the conditional create.
        let bundle = serde_json::to_vec(&json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [{
                "fullUrl": "urn:uuid:5b0e3f52-9f0a-4c43-9a57-0d3c2e1f4a10",
                "resource": patient("urn:rep", "tx"),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:rep|tx"}
            }]
        }))
        .expect("json");
        let mut tasks = Vec::new();
        for n in 0..20 {
            let s = pick(a, b, n);
            let (client, url, body) = (s.client.clone(), s.url("/fhir"), bundle.clone());
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(url)
                    .header("content-type", FHIR)
                    .body(body)
                    .send()
                    .await
                    .expect("send");
                let status = r.status();
                let v: Value = r.json().await.expect("json");
                (
                    status,
                    v["entry"][0]["response"]["status"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            }));
        }
        let mut created = 0;
        for t in tasks {
            let (status, entry) = t.await.expect("task");
            assert_eq!(status, StatusCode::OK, "{entry}");
            created += usize::from(entry.starts_with("201"));
        }
        assert_eq!(created, 1, "one transaction creates, the others find it");
        assert_eq!(a.version_count("Patient").await, 2);
    }

    pub async fn writes_through_one_are_read_through_the_other(a: &Server, b: &Server) {
        let (st, _, created) = a.post("/fhir/Patient", &patient("urn:rep", "2"), &[]).await;
        assert_eq!(st, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().expect("id").to_string();
        let path = format!("/fhir/Patient/{id}");
        let (st, _, read) = b.get(&path).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(read, created);
        let mut changed = read.clone();
        changed["gender"] = json!("male");
        let (st, _, updated) = b.put(&path, &changed, &[("if-match", "W/\"1\"")]).await;
        assert_eq!(st, StatusCode::OK, "{updated}");
        let (_, _, read) = a.get(&path).await;
        assert_eq!(read["gender"], "male");
        assert_eq!(read["meta"]["versionId"], "2");
        let (st, _, _) = a.send(reqwest::Method::DELETE, &path, None, &[]).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, _, _) = b.get(&path).await;
        assert_eq!(st, StatusCode::GONE);
    }

    pub async fn if_match_updates_never_lose_an_update(a: &Server, b: &Server) {
        let (st, _, created) = a.post("/fhir/Patient", &patient("urn:rep", "3"), &[]).await;
        assert_eq!(st, StatusCode::CREATED);
        let id = created["id"].as_str().expect("id").to_string();
        let path = format!("/fhir/Patient/{id}");
        // Ten clients read version 1 and each writes its own change with If-Match: W/"1".
        let mut tasks = Vec::new();
        for n in 0..10 {
            let s = pick(a, b, n);
            let mut mine = created.clone();
            // An extension, not a name: the CLI's server removes names (pseudonymization).
            mine["extension"] =
                json!([{"url": "http://example.org/writer", "valueString": format!("Writer{n}")}]);
            let (client, url) = (s.client.clone(), s.url(&path));
            tasks.push(tokio::spawn(async move {
                let r = client
                    .put(url)
                    .header("content-type", FHIR)
                    .header("if-match", "W/\"1\"")
                    .body(mine.to_string())
                    .send()
                    .await
                    .expect("send");
                (n, r.status())
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (n, status) = t.await.expect("task");
            match status {
                StatusCode::OK => winners.push(n),
                StatusCode::PRECONDITION_FAILED => {}
                other => panic!("writer {n}: unexpected {other}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "exactly one If-Match update wins: {winners:?}"
        );
        let (_, _, read) = b.get(&path).await;
        assert_eq!(read["meta"]["versionId"], "2");
        assert_eq!(
            read["extension"][0]["valueString"],
            format!("Writer{}", winners[0]),
            "the stored version is the winner's"
        );
        // Patches without If-Match through both replicas queue up: none is lost.
        let mut tasks = Vec::new();
        for n in 0..10 {
            let s = pick(a, b, n);
            let (client, url) = (s.client.clone(), s.url(&path));
            let ops = json!([{"op": "add", "path": "/extension/-", "value": {"url": "http://example.org/writer", "valueString": format!("P{n}")}}]);
            tasks.push(tokio::spawn(async move {
                client
                    .patch(url)
                    .header("content-type", "application/json-patch+json")
                    .body(ops.to_string())
                    .send()
                    .await
                    .expect("send")
                    .status()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task"), StatusCode::OK);
        }
        let (_, _, read) = a.get(&path).await;
        assert_eq!(
            read["extension"].as_array().map(Vec::len),
            Some(11),
            "{read}"
        );
        assert_eq!(read["meta"]["versionId"], "12");
    }
}

/// The same scenarios on two `imagio-gateway serve` processes sharing one database, as a
/// deployment with two replicas runs them: nothing shared but the database.
mod processes {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};

    /// A server process, killed when dropped.
    struct Process(Child);

    impl Drop for Process {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Starts `serve` on a free port of 127.0.0.1 over `database_url`; its base URL.
    fn spawn(database_url: &str, dir: &std::path::Path) -> (Process, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_imagio-gateway"))
            .args(["serve", "--no-auth", "--listen", "127.0.0.1:0"])
            .args(["--validation", "base", "--database-url", database_url])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        let stdout = child.stdout.take().expect("stdout");
        let process = Process(child);
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("serve stopped before listening")
                .expect("stdout line");
            if let Some(a) = line.strip_prefix("listening on ") {
                break a.trim().to_string();
            }
        };
        // Keep reading its log so the process never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        (process, format!("http://{addr}"))
    }

    async fn server(base: String, store: imagio_gateway::store::Store) -> Server {
        Server {
            base,
            client: reqwest::Client::new(),
            store,
            stop: None,
            task: None,
            cleanup: Cleanup::Nothing,
        }
    }

    /// Runs every replica scenario, each on two fresh processes over `url`.
    async fn run_all(url: &str, dir: &std::path::Path) {
        let store = imagio_gateway::store::Store::open(url)
            .await
            .expect("open the store (migrates it)");
        for n in 0..3 {
            let (_pa, a) = spawn(url, dir);
            let (_pb, b) = spawn(url, dir);
            let (a, b) = (
                server(a, store.clone()).await,
                server(b, store.clone()).await,
            );
            match n {
                0 => scenarios::conditional_creates_make_one_resource(&a, &b).await,
                1 => scenarios::writes_through_one_are_read_through_the_other(&a, &b).await,
                _ => scenarios::if_match_updates_never_lose_an_update(&a, &b).await,
            }
        }
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        let dir = std::env::temp_dir().join(unique("imagio_replicas"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("shared.sqlite");
        run_all(file.to_str().expect("utf-8 path"), &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        let Ok(url) = std::env::var("IMAGIO_TEST_DATABASE_URL") else {
            eprintln!(
                "SKIPPED: two replica processes on PostgreSQL: IMAGIO_TEST_DATABASE_URL not set"
            );
            return;
        };
        use sqlx::ConnectOptions as _;
        use std::str::FromStr as _;
        // A database of its own: the processes take a URL, not a schema.
        let name = unique("imagio_replicas");
        let mut admin = sqlx::postgres::PgConnectOptions::from_str(&url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create database");
        let (head, _) = url.rsplit_once('/').expect("a database in the URL");
        let own = format!("{head}/{name}");
        let dir = std::env::temp_dir().join(unique("imagio_replicas"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        run_all(&own, &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        sqlx::raw_sql(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .expect("drop database");
    }
}
