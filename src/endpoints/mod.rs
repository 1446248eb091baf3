//! The study's endpoint datasets and survival estimates (issue 9, items 3 and 4), for the
//! sponsor: `imagio-gateway endpoints` and `GET /sponsor/endpoints`.
//!
//! A pure core between two edges. Resources come in one at a time (from NDJSON files or
//! the store's current resources) and are read into compact [`facts::Facts`]; `derive`
//! applies the rules of `profiles/ENDPOINTS.md` (per treated lesion: local tumour
//! progression; per patient: time to recurrence, disease-free and overall survival; per
//! complication: the safety counts), keeping every excluded unit with its reason;
//! `analysis` estimates Kaplan-Meier curves (`km`) per endpoint for all patients, each
//! tumour type and each site, and the safety proportions; `out` writes CSV files, one FHIR
//! `Parameters` resource and the SVG pictures (`svg`). `sim` generates journeys for the
//! benchmark (`bench endpoints`).

pub mod analysis;
pub mod derive;
pub mod facts;
pub mod km;
pub mod out;
pub mod sim;
pub mod svg;
#[cfg(test)]
mod tests;

use crate::store::{Store, StoreError};
use facts::Facts;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The resource types the endpoints read from a store.
pub const TYPES: [&str; 6] = [
    "Patient",
    "ResearchSubject",
    "Condition",
    "Procedure",
    "Observation",
    "AdverseEvent",
];

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line of an NDJSON file is not a FHIR resource.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A stored resource could not be parsed.
    #[error("stored {resource} cannot be read: {message}")]
    Stored {
        /// `Type/id`.
        resource: String,
        /// What is wrong.
        message: String,
    },
    /// The database failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// The datasets, the estimates and the files made of them.
#[derive(Debug, Clone)]
pub struct Report {
    /// The datasets.
    pub datasets: derive::Datasets,
    /// The estimates.
    pub analysis: analysis::Analysis,
    /// The output files.
    pub files: Vec<out::File>,
}

/// Derives the datasets from `facts`, estimates, and renders the files.
pub fn compute(facts: &Facts) -> Report {
    let datasets = derive::derive(facts);
    let analysis = analysis::analyse(&datasets);
    let files = out::files(&datasets, &analysis);
    Report {
        datasets,
        analysis,
        files,
    }
}

/// Reads one NDJSON text (one resource per line; blank lines skipped) into `facts`;
/// `path` names it in errors.
///
/// # Errors
/// [`EndpointsError::Parse`] at the first line that is not a FHIR resource.
pub fn read_ndjson_text(path: &str, text: &str, facts: &mut Facts) -> Result<(), EndpointsError> {
    for (n, line) in text.lines().enumerate() {
        add_line(path, n + 1, line, facts)?;
    }
    Ok(())
}

fn add_line(path: &str, line: usize, text: &str, facts: &mut Facts) -> Result<(), EndpointsError> {
    if text.trim().is_empty() {
        return Ok(());
    }
    match crate::model::parse(text) {
        Ok(r) => {
            facts.add(&r);
            Ok(())
        }
        Err(e) => {
            let first = e.issues.first();
            Err(EndpointsError::Parse {
                path: path.to_string(),
                line,
                column: first.map_or(1, |i| i.column),
                message: first.map_or_else(|| e.to_string(), |i| i.message.clone()),
            })
        }
    }
}

/// Reads NDJSON files into `facts`, line by line.
///
/// # Errors
/// When a file cannot be read or a line is not a FHIR resource.
pub fn read_ndjson(paths: &[PathBuf], facts: &mut Facts) -> Result<(), EndpointsError> {
    for p in paths {
        let name = p.display().to_string();
        let io = |source| EndpointsError::Io {
            path: name.clone(),
            source,
        };
        let reader = std::io::BufReader::new(std::fs::File::open(p).map_err(io)?);
        for (n, line) in reader.lines().enumerate() {
            let line = line.map_err(io)?;
            add_line(&name, n + 1, &line, facts)?;
        }
    }
    Ok(())
}

/// Reads the current resources of [`TYPES`] from `store` into `facts`, a page of 1,000 at a
/// time.
///
/// # Errors
/// On database failure, or a stored resource that does not parse.
pub async fn read_store(store: &Store, facts: &mut Facts) -> Result<(), EndpointsError> {
    for ty in TYPES {
        let mut after = String::new();
        loop {
            let page = store.current_page(ty, None, &after, 1000).await?;
            for (id, content) in &page {
                let r = crate::model::parse(content).map_err(|e| EndpointsError::Stored {
                    resource: format!("{ty}/{id}"),
                    message: e.to_string(),
                })?;
                facts.add(&r);
            }
            match page.last() {
                Some((last, _)) if page.len() == 1000 => after.clone_from(last),
                _ => break,
            }
        }
    }
    Ok(())
}

/// Writes `files` into `dir` (created if missing): each under a temporary name first, then
/// all renamed, so a failure leaves no half-written file.
///
/// # Errors
/// When the folder or a file cannot be written.
pub fn write_files(dir: &Path, files: &[out::File]) -> Result<(), EndpointsError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| EndpointsError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut written = Vec::new();
    for f in files {
        let tmp = dir.join(format!(".{}.{}.part", f.name, std::process::id()));
        if let Err(e) = std::fs::write(&tmp, &f.content) {
            for (t, _) in &written {
                let _ = std::fs::remove_file(t);
            }
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp)(e));
        }
        written.push((tmp, dir.join(&f.name)));
    }
    for (tmp, target) in &written {
        std::fs::rename(tmp, target).map_err(io(target))?;
    }
    Ok(())
}

/// `imagio-gateway endpoints`: reads the store at `database_url` or the NDJSON `files`,
/// writes every output into `out`, prints a summary. Exit 0, or 2 on any error (nothing is
/// written then).
pub fn cli(database_url: Option<String>, files: &[PathBuf], out: &Path) -> ExitCode {
    let mut facts = Facts::default();
    let read = match database_url {
        Some(url) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(rt) => rt.block_on(async {
                    let store = Store::open(&url).await?;
                    let r = read_store(&store, &mut facts).await;
                    store.close().await;
                    r
                }),
                Err(e) => Err(EndpointsError::Io {
                    path: "async runtime".into(),
                    source: e,
                }),
            }
        }
        None => read_ndjson(files, &mut facts),
    };
    if let Err(e) = read {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let report = compute(&facts);
    if let Err(e) = write_files(out, &report.files) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    print!("{}", summary(&report));
    println!("{} files written to {}", report.files.len(), out.display());
    ExitCode::SUCCESS
}

/// A short text summary: per endpoint, rows analysed and excluded, events, and the median
/// of all patients.
pub fn summary(r: &Report) -> String {
    let mut s = format!(
        "{} resources read, {} treated patients, {} resources ignored\n",
        r.datasets.resources,
        r.datasets.treated.len(),
        r.datasets.ignored.len()
    );
    for e in derive::Endpoint::ALL {
        let rows: Vec<_> = r.datasets.rows.iter().filter(|x| x.endpoint == e).collect();
        let excluded = rows.iter().filter(|x| x.excluded.is_some()).count();
        let all = r
            .analysis
            .estimates
            .iter()
            .find(|x| x.endpoint == e && x.group == analysis::Group::All);
        let events = all.map_or(0, |x| x.curve.events);
        let median = all
            .and_then(|x| x.curve.median())
            .map_or_else(|| "not reached".to_string(), |m| format!("{m} days"));
        s.push_str(&format!(
            "{:<4} {} analysed, {excluded} excluded, {events} events, median {median}\n",
            e.code(),
            rows.len() - excluded
        ));
    }
    s
}
