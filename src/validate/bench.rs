//! The validator's benchmark (`imagio-gateway bench validate`): throughput against the R4
//! base definitions and against a profile with slicing, required bindings and invariants,
//! resident memory, and the latency of validating one typical Procedure.

use super::{has_errors, Validator};
use crate::definitions::Registry;
use crate::model::{Element, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// Every resource inside a parsed resource: a Bundle's entries (recursively) or itself.
fn resources_of<'a>(r: &'a Element, out: &mut Vec<&'a Element>) {
    if r.type_name() == "Bundle" {
        for e in r.values("entry") {
            let inner = e
                .as_element()
                .and_then(|e| e.values("resource").first())
                .and_then(Value::as_element);
            if let Some(inner) = inner {
                resources_of(inner, out);
            }
        }
    } else {
        out.push(r);
    }
}

/// Validates each resource once per pass for at least `budget`; returns resources/s of the
/// best pass and the number of resources with errors.
fn throughput(
    validator: &Validator,
    items: &[(&Element, Vec<String>)],
    budget: Duration,
) -> (f64, usize) {
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut failing = 0;
    let mut passes = 0;
    while passes < 2 || start.elapsed() < budget {
        let t = Instant::now();
        failing = 0;
        for (r, profiles) in items {
            let issues = validator.validate(r, None, profiles);
            failing += usize::from(has_errors(&issues));
        }
        best = best.min(t.elapsed());
        passes += 1;
    }
    (items.len() as f64 / best.as_secs_f64(), failing)
}

/// Resident and peak resident memory of this process, in MB (Linux `/proc`).
pub fn memory_mb() -> Option<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Runs the benchmark over parsed inputs (Synthea bundles) and prints the figures.
pub fn bench(inputs: &[Element]) {
    let mut all = Vec::new();
    for r in inputs {
        resources_of(r, &mut all);
    }
    // Memory before the validator exists (the parsed test data is already resident), so
    // the growth measured later is the validator's own: definitions parsed and cached,
    // snapshots, compiled profiles and invariants, expansions.
    let before = memory_mb();
    let validator = Validator::new(Registry::core());
    println!(
        "validate: {} resources, single thread, best of repeated passes",
        all.len()
    );
    // Base definitions: every resource against the core definition of its type.
    let base: Vec<(&Element, Vec<String>)> = all.iter().map(|r| (*r, Vec::new())).collect();
    let (rate, failing) = throughput(&validator, &base, Duration::from_secs(3));
    println!(
        "  R4 base, all invariants:              {rate:>9.0} resources/s ({failing} resources with errors)"
    );
    // A profile with slicing (Observation.category:VSCat), required bindings and the
    // vital-signs invariants, on the vital-sign Observations.
    let vitals: Vec<(&Element, Vec<String>)> = all
        .iter()
        .filter(|r| r.type_name() == "Observation" && is_vital_sign(r))
        .map(|r| {
            (
                *r,
                vec!["http://hl7.org/fhir/StructureDefinition/vitalsigns".to_string()],
            )
        })
        .collect();
    if !vitals.is_empty() {
        let (rate, failing) = throughput(&validator, &vitals, Duration::from_secs(3));
        println!(
            "  vitalsigns profile ({} Observations): {rate:>9.0} resources/s ({failing} with errors)",
            vitals.len()
        );
    }
    // Latency of one typical Procedure.
    if let Some(proc_) = all.iter().find(|r| r.type_name() == "Procedure") {
        let mut times: Vec<f64> = (0..20_000)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(validator.validate(proc_, None, &[]));
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
        println!(
            "  one Procedure against R4 base:        median {:.1} us, p99 {:.1} us",
            at(0.5),
            at(0.99)
        );
    }
    if let (Some((start, _)), Some((rss, peak))) = (before, memory_mb()) {
        println!(
            "  memory: validator {:.0} MB (R4 definitions used, parsed and cached); process resident {rss:.0} MB, peak {peak:.0} MB incl. the parsed test data",
            rss - start
        );
    }
    study(Path::new("profiles/examples"));
}

/// The study profiles (slicing, required bindings, invariants of their own) on the valid
/// examples and the two journeys under `dir`, each resource checked against the profile it
/// claims.
fn study(dir: &Path) {
    let registry = match crate::profiles::study_registry(None) {
        Ok(r) => r,
        Err(e) => {
            println!("  study profiles: not loaded ({e})");
            return;
        }
    };
    let before = memory_mb();
    let validator = Validator::new(registry);
    let mut texts = Vec::new();
    for sub in ["valid", "journeys"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "json") {
                if let Ok(t) = std::fs::read_to_string(e.path()) {
                    texts.push(t);
                }
            }
        }
    }
    let trees: Vec<Element> = texts
        .iter()
        .filter_map(|t| crate::model::parse(t).ok())
        .collect();
    let mut all = Vec::new();
    for t in &trees {
        resources_of(t, &mut all);
    }
    if all.is_empty() {
        println!("  study profiles: no examples under {}", dir.display());
        return;
    }
    let items: Vec<(&Element, Vec<String>)> = all.iter().map(|r| (*r, Vec::new())).collect();
    let (rate, failing) = throughput(&validator, &items, Duration::from_secs(3));
    println!(
        "  study profiles ({} example resources): {rate:>9.0} resources/s ({failing} with errors)",
        items.len()
    );
    if let (Some((start, _)), Some((rss, peak))) = (before, memory_mb()) {
        println!(
            "  memory with the study profiles in use: validator {:.0} MB; process resident {rss:.0} MB, peak {peak:.0} MB",
            rss - start
        );
    }
}

fn is_vital_sign(r: &Element) -> bool {
    r.values("category").iter().any(|c| {
        c.as_element().is_some_and(|c| {
            c.values("coding").iter().any(|cd| {
                cd.as_element()
                    .and_then(|cd| cd.str("code"))
                    .is_some_and(|code| code == "vital-signs")
            })
        })
    })
}
