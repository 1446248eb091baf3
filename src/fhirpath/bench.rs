//! The FHIRPath benchmark of `imagio-gateway bench`: evaluations per second of compiled
//! expressions over parsed resources, single thread, best of repeated passes.
//!
//! Three workloads: (a) a filter over every Observation
//! (`Observation.value.ofType(Quantity).where(value > 5).exists()`), (b) the invariant every
//! element carries, ele-1 (`hasValue() or (children().count() > id.count())`), over every
//! element and primitive of every resource, (c) a string-heavy path over every Patient
//! (`Patient.name.where(use = 'official').given.first()`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use super::value::Item;
use super::{Context, Expression};
use crate::model::{Element, Value};

/// Runs the three workloads over `resources` (Bundles are opened: their entries' resources
/// are measured) and prints evaluations per second for each.
pub fn bench(resources: &[Element]) {
    let mut all = Vec::new();
    for r in resources {
        collect_resources(r, &mut all);
    }
    println!(
        "fhirpath: {} resources; compiled once, evaluated single thread, best of repeated passes",
        all.len()
    );
    let of_type = |name: &str| -> Vec<&Element> {
        all.iter()
            .copied()
            .filter(|r| r.type_name() == name)
            .collect()
    };
    let observations = of_type("Observation");
    let patients = of_type("Patient");
    let mut nodes = Vec::new();
    for r in &all {
        collect_nodes(r, r, &mut nodes);
    }
    run(
        "Observation.value.ofType(Quantity).where(value > 5).exists()",
        "Observations",
        observations.iter().map(|o| (*o, Item::Element(o))),
    );
    run(
        "hasValue() or (children().count() > id.count())",
        "elements (ele-1)",
        nodes.iter().cloned(),
    );
    run(
        "Patient.name.where(use = 'official').given.first()",
        "Patients",
        patients.iter().map(|p| (*p, Item::Element(p))),
    );
}

/// A resource and, for Bundles, the resources of its entries (recursively).
fn collect_resources<'a>(r: &'a Element, out: &mut Vec<&'a Element>) {
    if r.type_name() == "Bundle" {
        for entry in r.values("entry").iter().filter_map(Value::as_element) {
            for res in entry
                .values("resource")
                .iter()
                .filter_map(Value::as_element)
            {
                collect_resources(res, out);
            }
        }
    } else {
        out.push(r);
    }
}

/// Every element and primitive below `e` (and `e` itself), with its resource.
fn collect_nodes<'a>(
    resource: &'a Element,
    e: &'a Element,
    out: &mut Vec<(&'a Element, Item<'a>)>,
) {
    out.push((resource, Item::Element(e)));
    for p in &e.props {
        for v in &p.values {
            match v {
                Value::Element(child) => collect_nodes(resource, child, out),
                Value::Primitive(prim) => out.push((resource, Item::Primitive(prim))),
            }
        }
    }
}

/// Measures one expression over a set of (resource, focus) pairs and prints the rate.
fn run<'a>(src: &str, what: &str, targets: impl Iterator<Item = (&'a Element, Item<'a>)>) {
    let expr = match Expression::compile(src) {
        Ok(e) => e,
        Err(e) => {
            println!("  {src}: {e}");
            return;
        }
    };
    let contexts: Vec<Context<'_>> = targets
        .map(|(resource, focus)| Context::new(resource).with_focus(focus))
        .collect();
    if contexts.is_empty() {
        println!("  {src}: no {what} in the data");
        return;
    }
    let mut errors = 0usize;
    let mut non_empty = 0usize;
    for ctx in &contexts {
        match expr.evaluate(ctx) {
            Ok(r) if !r.is_empty() => non_empty += 1,
            Ok(_) => {}
            Err(_) => errors += 1,
        }
    }
    let budget = Duration::from_secs(2);
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut passes = 0;
    while passes < 3 || start.elapsed() < budget {
        let t = Instant::now();
        for ctx in &contexts {
            let _ = black_box(expr.evaluate(black_box(ctx)));
        }
        best = best.min(t.elapsed());
        passes += 1;
    }
    let n = contexts.len() as f64;
    let per_sec = n / best.as_secs_f64();
    println!(
        "  {src}\n    {} {what}: {:.2} M evaluations/s ({:.0} ns each; {non_empty} non-empty results, {errors} errors)",
        contexts.len(),
        per_sec / 1e6,
        best.as_secs_f64() * 1e9 / n,
    );
}
