//! `imagio-gateway bench export`: a system-level Bulk Data export of `--resources` stored
//! resources through the real server.
//!
//! The bench loads a fresh store (a temporary SQLite file, or a new PostgreSQL database it
//! drops afterwards) directly with [`crate::store::Store::bulk_insert`] (one Patient for
//! every nine Observations, about 600 bytes each, not through HTTP), registers a sponsor
//! client, starts the same binary's `serve` as a child process, kicks off `$export` with the
//! sponsor's token and polls the status URL until the manifest arrives. It reports
//! resources per second (kick-off to manifest), the lines counted in the files against the
//! manifest, and the server's resident memory (VmRSS before the export, its maximum while
//! the export ran, sampled every 50 ms, and VmHWM).

use super::load::{register, status_kb, token, Database, LoadError, ServerProcess};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The settings of an export run.
#[derive(Debug, Clone)]
pub struct Options {
    /// `postgres://...` to run on PostgreSQL; a temporary SQLite file when absent.
    pub database_url: Option<String>,
    /// Resources to store and export.
    pub resources: usize,
    /// The server's `--export-page` (its default when absent).
    pub page: Option<i64>,
}

/// What a run measured.
#[derive(Debug)]
struct Figures {
    store: &'static str,
    resources: usize,
    load_seconds: f64,
    export_seconds: f64,
    manifest_count: i64,
    file_lines: usize,
    rss_before_kb: Option<u64>,
    rss_max_kb: Option<u64>,
    hwm_kb: Option<u64>,
    server_cpu: Option<f64>,
}

/// Runs the bench and prints its figures (a table line and one JSON line).
pub fn run(options: &Options) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(export(options)) {
        Ok(f) => {
            let mb = |k: Option<u64>| {
                k.map_or_else(|| "n/a".into(), |k| format!("{:.1}", k as f64 / 1024.0))
            };
            let rate = f.resources as f64 / f.export_seconds.max(1e-9);
            println!(
                "export: {} (fresh, loaded directly in {:.1} s), {} resources: system $export in {:.2} s, {:.0} resources/s; manifest count {}, lines in files {}; server VmRSS before {} MB, max during export {} MB, VmHWM {} MB; server CPU {} s",
                f.store,
                f.load_seconds,
                f.resources,
                f.export_seconds,
                rate,
                f.manifest_count,
                f.file_lines,
                mb(f.rss_before_kb),
                mb(f.rss_max_kb),
                mb(f.hwm_kb),
                f.server_cpu.map_or_else(|| "n/a".into(), |c| format!("{c:.1}"))
            );
            println!(
                "{{\"bench\":\"export\",\"store\":\"{}\",\"resources\":{},\"seconds\":{:.3},\"resources_per_s\":{:.0},\"rss_before_mb\":{},\"rss_max_mb\":{},\"hwm_mb\":{}}}",
                f.store,
                f.resources,
                f.export_seconds,
                rate,
                mb(f.rss_before_kb).replace("n/a", "null"),
                mb(f.rss_max_kb).replace("n/a", "null"),
                mb(f.hwm_kb).replace("n/a", "null")
            );
            let expected = i64::try_from(f.resources).unwrap_or(i64::MAX);
            if f.manifest_count == expected && f.file_lines == f.resources {
                ExitCode::SUCCESS
            } else {
                eprintln!("error: the export does not hold every resource");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: bench export: {e}");
            ExitCode::from(2)
        }
    }
}

async fn export(options: &Options) -> Result<Figures, LoadError> {
    let work = std::env::temp_dir().join(format!(
        "imagio-bench-export-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&work).map_err(|e| LoadError::Io(work.display().to_string(), e))?;
    let result = async {
        let db = Database::create(options.database_url.as_deref(), &work).await?;
        let measured = measure(options, &db, &work).await;
        let dropped = db.drop_it().await;
        let figures = measured?;
        dropped?;
        Ok(figures)
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The `i`-th resource of the bench data: every tenth a Patient, the others Observations
/// of the Patient before them.
fn resource(i: usize, when: &str) -> (&'static str, String, String) {
    let patient = i - i % 10;
    if i % 10 == 0 {
        let id = format!("p{i:08}");
        let text = format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"{id}\",\"meta\":{{\"versionId\":\"1\",\"lastUpdated\":\"{when}\"}},\"identifier\":[{{\"system\":\"https://a-imagio.eu/fhir/sid/bench\",\"value\":\"{i}\"}}],\"gender\":\"{}\",\"birthDate\":\"19{:02}-0{}-1{}\"}}",
            if i % 20 == 0 { "female" } else { "male" },
            40 + i % 50,
            1 + i % 9,
            i % 10
        );
        ("Patient", id, text)
    } else {
        let id = format!("o{i:08}");
        let text = format!(
            "{{\"resourceType\":\"Observation\",\"id\":\"{id}\",\"meta\":{{\"versionId\":\"1\",\"lastUpdated\":\"{when}\"}},\"status\":\"final\",\"category\":[{{\"coding\":[{{\"system\":\"http://terminology.hl7.org/CodeSystem/observation-category\",\"code\":\"laboratory\"}}]}}],\"code\":{{\"coding\":[{{\"system\":\"http://loinc.org\",\"code\":\"1742-6\",\"display\":\"Alanine aminotransferase\"}}]}},\"subject\":{{\"reference\":\"Patient/p{patient:08}\"}},\"effectiveDateTime\":\"2025-0{}-1{}T08:30:00Z\",\"valueQuantity\":{{\"value\":{}.{},\"unit\":\"U/L\",\"system\":\"http://unitsofmeasure.org\",\"code\":\"U/L\"}}}}",
            1 + i % 9,
            i % 10,
            10 + i % 90,
            i % 10
        );
        ("Observation", id, text)
    }
}

/// Loads `n` resources in batches of 10,000 per type.
async fn load_store(url: &str, n: usize) -> Result<(), LoadError> {
    let db = |e: crate::store::StoreError| LoadError::Database(e.to_string());
    let store = crate::store::Store::open(url).await.map_err(db)?;
    let when = crate::store::time::now();
    let mut batch: Vec<(&'static str, Vec<(String, String)>)> =
        vec![("Patient", Vec::new()), ("Observation", Vec::new())];
    for i in 0..n {
        let (t, id, text) = resource(i, &when);
        let slot = usize::from(t != "Patient");
        batch[slot].1.push((id, text));
        if batch[slot].1.len() >= 10_000 || i + 1 == n {
            for (t, rows) in &mut batch {
                if !rows.is_empty() {
                    store.bulk_insert(t, rows, &when, "").await.map_err(db)?;
                    rows.clear();
                }
            }
        }
    }
    // Statistics, as a store that grew through the server (or autovacuum) has them.
    store.analyze().await.map_err(db)?;
    store.close().await;
    Ok(())
}

/// Lines of the `.ndjson` files under `dir`.
fn count_lines(dir: &Path) -> usize {
    use std::io::Read as _;
    let mut n = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            n += count_lines(&p);
        } else if p.extension().is_some_and(|e| e == "ndjson") {
            if let Ok(mut f) = std::fs::File::open(&p) {
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(k) = f.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    n += buf[..k].iter().filter(|b| **b == b'\n').count();
                }
            }
        }
    }
    n
}

async fn measure(options: &Options, db: &Database, work: &Path) -> Result<Figures, LoadError> {
    let url = db.url()?;
    let started = Instant::now();
    load_store(&url, options.resources).await?;
    let load_seconds = started.elapsed().as_secs_f64();
    let clients = register(&url, work).await?;
    let export_dir = work.join("export");
    let mut args = vec!["--export-dir".into(), export_dir.display().to_string()];
    if let Some(page) = options.page {
        args.extend(["--export-page".into(), page.to_string()]);
    }
    let mut server = ServerProcess::spawn_with(&url, work, false, 3600, &args)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    server.wait_ready(&http).await?;
    let token = token(clients.sponsor, &server.base).await?;
    let pid = server.pid();
    let rss_before_kb = status_kb(pid, "VmRSS");
    let cpu_before = super::load::cpu_seconds(&pid.to_string());
    let t0 = Instant::now();
    let r = http
        .get(format!("{}/fhir/$export", server.base))
        .bearer_auth(&token)
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await?;
    if r.status() != reqwest::StatusCode::ACCEPTED {
        return Err(LoadError::Server(format!(
            "kick-off answered {}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        )));
    }
    let status_url = r
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| LoadError::Server("kick-off without Content-Location".into()))?
        .to_string();
    let mut rss_max_kb = rss_before_kb;
    let mut last_poll = Instant::now() - Duration::from_secs(1);
    let manifest: serde_json::Value = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        rss_max_kb = rss_max_kb.max(status_kb(pid, "VmRSS"));
        if last_poll.elapsed() < Duration::from_millis(200) {
            continue;
        }
        last_poll = Instant::now();
        let r = http.get(&status_url).bearer_auth(&token).send().await?;
        match r.status() {
            reqwest::StatusCode::ACCEPTED => {}
            reqwest::StatusCode::OK => break r.json().await?,
            s => {
                return Err(LoadError::Server(format!(
                    "status answered {s}: {}",
                    r.text().await.unwrap_or_default()
                )))
            }
        }
        if t0.elapsed() > Duration::from_secs(3600) {
            return Err(LoadError::Server(
                "the export did not end within an hour".into(),
            ));
        }
    };
    let export_seconds = t0.elapsed().as_secs_f64();
    let hwm_kb = status_kb(pid, "VmHWM");
    let server_cpu = super::load::cpu_seconds(&pid.to_string())
        .zip(cpu_before)
        .map(|(a, b)| a - b);
    let manifest_count = manifest["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["count"].as_i64())
        .sum();
    let file_lines = count_lines(&export_dir);
    drop(server);
    Ok(Figures {
        store: db.label(),
        resources: options.resources,
        load_seconds,
        export_seconds,
        manifest_count,
        file_lines,
        rss_before_kb,
        rss_max_kb,
        hwm_kb,
        server_cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_resources_are_json_of_their_type() {
        for i in [0, 1, 9, 10, 11] {
            let (t, id, text) = resource(i, "2026-01-01T00:00:00.000Z");
            let v: serde_json::Value = serde_json::from_str(&text).expect("json");
            assert_eq!(v["resourceType"], t);
            assert_eq!(v["id"], id.as_str());
        }
    }
}
