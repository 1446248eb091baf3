//! Built-in benchmarks (`imagio-gateway bench`), run on the release binary so that the figures
//! reported in issues can be reproduced with one command on any machine.
//!
//! Each suite measures our code and, where the issue asks for a comparison, the reference
//! implementation side by side in the same run, over the same input. `load` measures the
//! whole server (a child process) under concurrent HTTP load: see [`load`].

pub mod endpoints;
pub mod export;
pub mod import;
pub mod load;
pub mod map;

use crate::model;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The benchmark suites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// The in-process suites: parse, fhirpath and validate.
    All,
    /// FHIR JSON parse + serialize throughput against serde_json::Value.
    Parse,
    /// FHIRPath evaluations per second of compiled expressions.
    Fhirpath,
    /// Profile validation: throughput, latency, memory.
    Validate,
    /// The server under load: ingest of transaction Bundles, reads and searches at
    /// `--resources` stored, the server's memory (not part of `all`).
    Load,
    /// Mapping throughput of the example CSV mapping on `--rows` generated rows, mapped
    /// and mapped + validated (not part of `all`).
    Map,
    /// Bulk import of a generated retrospective dataset (`--rows` and ten times as many)
    /// through `mappings/nl01-retrospective`: rows/s end to end and peak memory (not part
    /// of `all`).
    Import,
    /// The endpoint datasets and Kaplan-Meier estimates of `--patients` simulated
    /// journeys, end to end, from NDJSON and from a store (not part of `all`).
    Endpoints,
    /// A system-level Bulk Data export of `--resources` stored resources through the
    /// server: resources/s and the server's memory (not part of `all`).
    Export,
}

/// The folder the suites read when none is given.
pub const DEFAULT_DATA: &str = "../shared/samples/synthea";

/// Runs an in-process suite and prints its figures; `data` is the folder of FHIR JSON files
/// to use. `Suite::Load` is [`load::run`], which takes its own options.
pub fn run(suite: Suite, data: Option<&Path>) -> ExitCode {
    if suite == Suite::Endpoints {
        return endpoints::run(5000, None);
    }
    let dir = data.map_or_else(|| PathBuf::from(DEFAULT_DATA), Path::to_path_buf);
    let inputs = match load(&dir) {
        Ok(v) if !v.is_empty() => v,
        Ok(_) => {
            eprintln!("error: no .json files in {}", dir.display());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    if matches!(suite, Suite::All | Suite::Parse) {
        parse(&inputs);
    }
    if matches!(suite, Suite::All | Suite::Fhirpath | Suite::Validate) {
        let trees: Vec<model::Element> =
            inputs.iter().filter_map(|t| model::parse(t).ok()).collect();
        if matches!(suite, Suite::All | Suite::Fhirpath) {
            crate::fhirpath::bench::bench(&trees);
        }
        if matches!(suite, Suite::All | Suite::Validate) {
            crate::validate::bench::bench(&trees);
        }
    }
    ExitCode::SUCCESS
}

fn load(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files.iter().map(std::fs::read_to_string).collect()
}

/// Runs `f` over all inputs repeatedly for about `budget`, returning the best per-pass time.
fn best_pass(budget: Duration, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut passes = 0;
    while passes < 3 || start.elapsed() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        passes += 1;
    }
    best
}

fn mb_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn parse(inputs: &[String]) {
    let bytes: usize = inputs.iter().map(String::len).sum();
    println!(
        "parse: {} files, {:.1} MB; best of repeated passes, single thread",
        inputs.len(),
        bytes as f64 / 1e6
    );
    let budget = Duration::from_secs(3);
    // Warm the type information so the first pass does not pay for building it.
    for text in inputs {
        let _ = model::parse(text);
    }
    let ours_parse = best_pass(budget, || {
        for text in inputs {
            std::hint::black_box(model::parse(text).ok());
        }
    });
    let trees: Vec<model::Element> = inputs.iter().filter_map(|t| model::parse(t).ok()).collect();
    let ours_write = best_pass(budget, || {
        for t in &trees {
            std::hint::black_box(model::to_json(t));
        }
    });
    let serde_parse = best_pass(budget, || {
        for text in inputs {
            std::hint::black_box(serde_json::from_str::<serde_json::Value>(text).ok());
        }
    });
    let values: Vec<serde_json::Value> = inputs
        .iter()
        .filter_map(|t| serde_json::from_str(t).ok())
        .collect();
    let serde_write = best_pass(budget, || {
        for v in &values {
            std::hint::black_box(v.to_string());
        }
    });
    let row = |name: &str, p: Duration, w: Duration| {
        println!(
            "  {name:<28} parse {:>7.1} MB/s   serialize {:>7.1} MB/s   parse+serialize {:>7.1} MB/s",
            mb_per_s(bytes, p),
            mb_per_s(bytes, w),
            mb_per_s(bytes, p + w)
        );
    };
    row("imagio element model", ours_parse, ours_write);
    row("serde_json::Value (untyped)", serde_parse, serde_write);
}
