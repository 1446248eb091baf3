//! `imagio-gateway bench load` end to end on a tiny input, so the load benchmark cannot rot:
//! it starts the real server as a child process, registers its clients (authentication on),
//! ingests, reads, searches and reports every figure as a JSON line; on SQLite, and on
//! PostgreSQL when `IMAGIO_TEST_DATABASE_URL` is set (a database made and dropped by the
//! bench).

use serde_json::Value;
use std::process::Command;

/// A folder with one small transaction Bundle: a patient and nine Observations of 2021
/// referring to it by `urn:uuid:` (what the Synthea samples look like, in small).
fn tiny_data(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "imagio-bench-load-test-{tag}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let patient = "3f0c6a52-5b1e-4c2e-9a57-0d9b3c1e7a10";
    let mut entries = vec![format!(
        r#"{{"fullUrl":"urn:uuid:{patient}","resource":{{"resourceType":"Patient","id":"{patient}","identifier":[{{"system":"https://example.org/mrn","value":"{patient}"}}],"gender":"female","birthDate":"1960-02-03"}},"request":{{"method":"POST","url":"Patient"}}}}"#
    )];
    for i in 0..9 {
        let id = format!("7a1d2c3e-0000-4000-8000-00000000000{i}");
        entries.push(format!(
            r#"{{"fullUrl":"urn:uuid:{id}","resource":{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"8302-2"}}]}},"subject":{{"reference":"urn:uuid:{patient}"}},"effectiveDateTime":"2021-03-0{}T10:00:00Z","valueQuantity":{{"value":16{i},"unit":"cm","system":"http://unitsofmeasure.org","code":"cm"}}}},"request":{{"method":"POST","url":"Observation"}}}}"#,
            i + 1
        ));
    }
    let bundle = format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[{}]}}"#,
        entries.join(",")
    );
    std::fs::write(dir.join("tiny.json"), bundle).expect("write bundle");
    dir
}

fn run(tag: &str, extra: &[&str]) -> Vec<Value> {
    let data = tiny_data(tag);
    let out = Command::new(env!("CARGO_BIN_EXE_imagio-gateway"))
        .args([
            "bench",
            "load",
            "--resources",
            "300",
            "--duration",
            "1s",
            "--concurrency",
            "2",
            "--connections",
            "2",
        ])
        .arg("--data")
        .arg(&data)
        .args(extra)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(stdout.contains("read by id"), "{stdout}");
    let _ = std::fs::remove_dir_all(&data);
    lines
}

fn figure<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["figure"] == name)
        .unwrap_or_else(|| panic!("no {name} figure in {lines:?}"))
}

fn check(lines: &[Value], store: &str) {
    let ingest = figure(lines, "ingest");
    assert_eq!(ingest["store"], store);
    assert_eq!(ingest["auth"], true);
    // 30 Bundles of 10 entries: the round-rewritten copies are new resources each time.
    assert_eq!(ingest["resources"], 300, "{ingest}");
    assert_eq!(ingest["errors"], 0);
    for name in ["read", "search"] {
        let f = figure(lines, name);
        assert!(f["requests"].as_u64().unwrap_or(0) > 0, "{f}");
        assert_eq!(f["errors"], 0, "{f}");
        assert_eq!(f["stored"], 300);
    }
    // Every patient has nine Observations of 2021: each search finds them.
    let search = figure(lines, "search");
    assert!(
        (search["mean_matches"].as_f64().unwrap_or(0.0) - 9.0).abs() < 1e-9,
        "{search}"
    );
    let memory = figure(lines, "memory");
    assert!(
        memory["search_rss_max_mb"].as_f64().unwrap_or(0.0) > 1.0,
        "{memory}"
    );
}

#[test]
fn bench_load_runs_on_sqlite() {
    let lines = run("sqlite", &[]);
    check(&lines, "sqlite");
}

#[test]
fn bench_load_runs_on_postgres() {
    let Ok(url) = std::env::var("IMAGIO_TEST_DATABASE_URL") else {
        eprintln!("SKIPPED: bench load on PostgreSQL: IMAGIO_TEST_DATABASE_URL not set");
        return;
    };
    let lines = run("postgres", &["--database-url", &url]);
    check(&lines, "postgres");
}
