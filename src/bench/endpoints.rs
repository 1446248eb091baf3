//! `imagio-gateway bench endpoints`: the endpoint datasets and survival estimates of
//! `--patients` simulated journeys (`endpoints::sim`, deterministic), end to end:
//! - from an NDJSON file: read and parse every line, derive the datasets, estimate the
//!   curves and proportions, render the CSV, SVG and FHIR files, write them;
//! - from a store: the same journeys loaded into a fresh store (a temporary SQLite file,
//!   or a new schema of `--database-url` PostgreSQL, dropped afterwards; the load is timed
//!   apart), then read back page by page and processed the same way.

use crate::endpoints::{self, facts::Facts, sim};
use crate::model::json::Json;
use crate::store::{Expect, Store};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Seconds of a duration, for the report.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The phases of one end-to-end run.
struct Phases {
    read: Duration,
    derive: Duration,
    analyse: Duration,
    render: Duration,
    write: Duration,
    files: usize,
}

impl Phases {
    fn total(&self) -> Duration {
        self.read + self.derive + self.analyse + self.render + self.write
    }

    fn print(&self, what: &str) {
        println!(
            "  {what:<22} {:>7.3} s end to end (read+parse {:.3}, derive {:.3}, Kaplan-Meier+safety {:.3}, render {:.3}, write {:.3}; {} files)",
            secs(self.total()),
            secs(self.read),
            secs(self.derive),
            secs(self.analyse),
            secs(self.render),
            secs(self.write),
            self.files
        );
        println!(
            "{{\"bench\":\"endpoints\",\"input\":\"{what}\",\"seconds\":{:.4}}}",
            secs(self.total())
        );
    }
}

/// Everything after reading.
fn process(facts: &Facts, read: Duration, out: &Path) -> Result<Phases, String> {
    let t = Instant::now();
    let datasets = endpoints::derive::derive(facts);
    let derive = t.elapsed();
    let t = Instant::now();
    let analysis = endpoints::analysis::analyse(&datasets);
    let analyse = t.elapsed();
    let t = Instant::now();
    let files = endpoints::out::files(&datasets, &analysis);
    let render = t.elapsed();
    let t = Instant::now();
    endpoints::write_files(out, &files).map_err(|e| e.to_string())?;
    let write = t.elapsed();
    Ok(Phases {
        read,
        derive,
        analyse,
        render,
        write,
        files: files.len(),
    })
}

/// Loads `lines` into `store` (1,000 resources per transaction, no search index rows: the
/// endpoints read resources by type).
async fn load(store: &Store, lines: &[String]) -> Result<(), String> {
    for chunk in lines.chunks(1000) {
        let mut tx = store.begin().await.map_err(|e| e.to_string())?;
        for line in chunk {
            let mut json = Json::parse(line, 64).map_err(|e| e.message.clone())?;
            let r = crate::model::parse(line).map_err(|e| e.to_string())?;
            let id = r.id().unwrap_or_default().to_string();
            tx.put(r.type_name(), &id, &mut json, Expect::Any, None, &[])
                .await
                .map_err(|e| e.to_string())?;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Runs the benchmark and prints its figures.
pub fn run(patients: usize, database_url: Option<String>) -> ExitCode {
    match run_inner(patients, database_url) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(patients: usize, database_url: Option<String>) -> Result<(), String> {
    let work: PathBuf =
        std::env::temp_dir().join(format!("imagio-bench-endpoints-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let result = run_in(patients, database_url, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn run_in(patients: usize, database_url: Option<String>, work: &Path) -> Result<(), String> {
    let t = Instant::now();
    let lines = sim::journeys(patients, 2026);
    let generated = t.elapsed();
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let ndjson = work.join("journeys.ndjson");
    std::fs::write(&ndjson, lines.join("\n")).map_err(|e| format!("{}: {e}", ndjson.display()))?;
    println!(
        "endpoints: {patients} simulated patients, {} resources, {:.1} MB NDJSON (generated in {:.3} s, not counted)",
        lines.len(),
        bytes as f64 / 1e6,
        secs(generated)
    );

    // From NDJSON.
    let t = Instant::now();
    let mut facts = Facts::default();
    endpoints::read_ndjson(std::slice::from_ref(&ndjson), &mut facts).map_err(|e| e.to_string())?;
    let phases = process(&facts, t.elapsed(), &work.join("out-ndjson"))?;
    phases.print("from NDJSON");
    let report = endpoints::compute(&facts);
    print!("{}", indent(&endpoints::summary(&report)));

    // From a store.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let (store, schema) = match &database_url {
            Some(url) => {
                let schema = format!("bench_endpoints_{}", std::process::id());
                let s = crate::store::postgres::open(url, Some(&schema))
                    .await
                    .map_err(|e| e.to_string())?;
                (s, Some((url.clone(), schema)))
            }
            None => {
                let path = work.join("store.sqlite");
                let s = Store::open(&path.display().to_string())
                    .await
                    .map_err(|e| e.to_string())?;
                (s, None)
            }
        };
        let result = async {
            let t = Instant::now();
            load(&store, &lines).await?;
            println!(
                "  store ({}): {} resources loaded in {:.3} s (not counted)",
                store.kind(),
                lines.len(),
                secs(t.elapsed())
            );
            let t = Instant::now();
            let mut facts = Facts::default();
            endpoints::read_store(&store, &mut facts)
                .await
                .map_err(|e| e.to_string())?;
            let phases = process(&facts, t.elapsed(), &work.join("out-store"))?;
            phases.print(&format!("from {}", store.kind()));
            Ok::<(), String>(())
        }
        .await;
        store.close().await;
        if let Some((url, schema)) = schema {
            let _ = crate::store::postgres::drop_schema(&url, &schema).await;
        }
        result
    })
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
