//! `imagio-gateway import`: a retrospective dataset loaded straight into the database,
//! streamed and committed in batches through the server's own write path.
//!
//! The sources of the mapping split in two. Sources another source joins (`join = {...}`)
//! are *indexed*: read whole into memory (the mapping's join index needs them), mapped once
//! and committed in one transaction whose ledger payload is their files as a
//! `multipart/form-data` body, as `/fhir/ingest` would receive them. Every other source is
//! *streamed*: its files are cut into batches of `--batch` records
//! ([`super::stream::Batches`]); each batch is mapped (with the indexed tables at hand),
//! validated, and committed as one transaction whose ledger payload is the batch's bytes
//! (the header record and its rows). Memory is one batch plus the indexed files, whatever
//! the size of the streamed ones.
//!
//! A row with any error loads nothing (all its resources are left out of the batch) and
//! every diagnostic of it goes to the report (NDJSON, one line per problem); the other rows
//! of the batch load. A problem of a whole file (a column of the mapping missing from the
//! header) stops the import. Ids come from the source keys and every entry is a `PUT`, so
//! running the import again after fixing the input loads the rows that failed and leaves
//! the others as they are (no new versions for unchanged resources). Deduplication of
//! resources made twice is per batch: the same id from two batches is written twice (the
//! second time with no new version when the content is the same, else it is an update).

use super::progress::Progress;
use super::stream::Batches;
use super::IngestError;
use crate::map::source::Table;
use crate::map::{Diagnostic, Mapping, Produced};
use crate::model::json::{write_str, Json};
use crate::serve::ingest::{commit_mapped, Submitted};
use crate::serve::{ApiError, AppState};
use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// What to import and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The mapping file.
    pub mapping: PathBuf,
    /// The input files (each matched to a source by its `files` pattern).
    pub inputs: Vec<PathBuf>,
    /// The report file (NDJSON); `None`: report lines go to standard error.
    pub report: Option<PathBuf>,
    /// Records per batch (per transaction).
    pub batch: usize,
    /// The site the data belongs to: resources get its label as if a site client of it
    /// had sent them. `None`: the import acts as the local administrator (no label).
    pub site: Option<String>,
    /// Show progress on standard error.
    pub progress: bool,
}

/// The keys an import needs, the same as the server's: resources are de-identified with
/// the study's pseudonym key before they are stored, and ledger entries sealed with the
/// ledger key (a different ledger key would make the server refuse to start).
#[derive(Clone)]
pub struct Secrets {
    /// The de-identification policy and pseudonym key.
    pub pseudonymize: crate::pseudonymize::Pseudonymizer,
    /// The ledger key file.
    pub ledger_key: PathBuf,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Data rows read (all sources).
    pub rows: u64,
    /// Rows that did not load (each is in the report).
    pub failed_rows: u64,
    /// Resources created.
    pub created: u64,
    /// Resources updated.
    pub updated: u64,
    /// Resources sent again unchanged.
    pub unchanged: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Input bytes read.
    pub bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl Summary {
    /// Rows per second, end to end.
    pub fn rows_per_second(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let rows = self.rows as f64;
        rows / self.seconds.max(1e-9)
    }

    /// The summary as one JSON object.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"rows\":{},\"failed_rows\":{},\"created\":{},\"updated\":{},\"unchanged\":{},\"batches\":{},\"bytes\":{},\"seconds\":{:.3},\"rows_per_second\":{:.1},\"vmhwm_kb\":{}}}",
            self.rows,
            self.failed_rows,
            self.created,
            self.updated,
            self.unchanged,
            self.batches,
            self.bytes,
            self.seconds,
            self.rows_per_second(),
            peak_kb().map_or_else(|| "null".to_string(), |k| k.to_string())
        )
    }
}

/// The peak resident memory of this process (`VmHWM`, kB), on Linux.
pub fn peak_kb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Opens the store at `database_url` (creating and migrating it) and imports into it.
///
/// # Errors
/// See [`import`].
pub async fn run(
    database_url: &str,
    profiles_dir: Option<&Path>,
    options: &Options,
    secrets: Secrets,
) -> Result<Summary, IngestError> {
    let store = crate::store::Store::open(database_url).await?;
    let config = crate::serve::Config {
        database_url: database_url.to_string(),
        validation: crate::serve::ValidationMode::Study,
        profiles_dir: profiles_dir.map(Path::to_path_buf),
        pseudonymize: Some(secrets.pseudonymize),
        ledger_key: Some(secrets.ledger_key),
        ..crate::serve::Config::default()
    };
    let state = AppState::new(store.clone(), config)?;
    state.store().check_ledger_key().await?;
    let result = import(&state, options).await;
    store.close().await;
    result
}

/// Imports `options.inputs` through `options.mapping` into the store of `state`, through
/// the server's transaction path, as the caller `options.site` names.
///
/// # Errors
/// The mapping or an input cannot be read, the inputs do not fit the mapping's sources, a
/// whole file is unusable (a missing column), or the database fails. Bad rows are not
/// errors: they are reported and counted.
pub async fn import(state: &AppState, options: &Options) -> Result<Summary, IngestError> {
    let principal = match &options.site {
        Some(site) => crate::auth::Principal {
            client_id: "import".into(),
            site: site.clone(),
            role: crate::auth::Role::Site,
            scopes: crate::auth::scopes::Scopes::parse("system/*.cruds").unwrap_or_default(),
        },
        None => crate::auth::Principal {
            client_id: "import".into(),
            ..crate::auth::Principal::local()
        },
    };
    crate::auth::with_principal(principal, Importer::start(state, options)?.run()).await
}

/// The report: NDJSON lines to a file or standard error.
struct Report {
    out: Box<dyn std::io::Write + Send>,
    path: Option<PathBuf>,
}

impl Report {
    fn line(&mut self, d: &Diagnostic) -> Result<(), IngestError> {
        let mut s = String::from("{");
        let mut field = |k: &str, v: Option<&str>, num: Option<u64>| {
            if s.len() > 1 {
                s.push(',');
            }
            write_str(&mut s, k);
            s.push(':');
            match (v, num) {
                (Some(v), _) => write_str(&mut s, v),
                (None, Some(n)) => s.push_str(&n.to_string()),
                (None, None) => s.push_str("null"),
            }
        };
        let src = d.source.as_ref();
        field("file", src.map(|s| s.file.as_str()), None);
        field("row", None, src.map(|s| u64::from(s.row)));
        let col = src.and_then(|s| s.column.as_ref());
        field("cell", None, col.map(|c| u64::from(c.0)));
        field("header", col.map(|c| c.1.as_str()), None);
        let mapping = d.mapping.as_ref().map(|(f, l)| format!("{f}:{l}"));
        field("mapping", mapping.as_deref(), None);
        field("resource", d.resource.as_deref(), None);
        field("location", d.location.as_deref(), None);
        field("severity", Some(d.severity.code()), None);
        field("message", Some(&d.message), None);
        s.push_str("}\n");
        self.out
            .write_all(s.as_bytes())
            .map_err(|source| self.io(source))
    }

    fn io(&self, source: std::io::Error) -> IngestError {
        IngestError::Io {
            path: self
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from("<stderr>")),
            source,
        }
    }
}

struct Importer<'a> {
    state: &'a AppState,
    options: &'a Options,
    /// The mapping as written (names, dialects).
    mapping: Mapping,
    /// The inputs with their source, in the order given.
    inputs: Vec<(PathBuf, String, usize)>,
    /// Sources some other source joins.
    indexed: Vec<bool>,
    report: Report,
    summary: Summary,
    progress: Progress,
}

impl<'a> Importer<'a> {
    fn start(state: &'a AppState, options: &'a Options) -> Result<Importer<'a>, IngestError> {
        let mapping = crate::map::load(&options.mapping)?;
        let named: Vec<crate::map::Input> = options
            .inputs
            .iter()
            .map(|p| crate::map::Input {
                name: file_name(p),
                bytes: Vec::new(),
            })
            .collect();
        let assigned = crate::map::assign(&mapping, &named)?;
        let inputs: Vec<(PathBuf, String, usize)> = options
            .inputs
            .iter()
            .zip(assigned)
            .flat_map(|(p, srcs)| srcs.into_iter().map(move |s| (p.clone(), file_name(p), s)))
            .collect();
        // FHIR sources (a Bundle or NDJSON) are read whole, like the joined ones.
        let mut indexed: Vec<bool> = mapping.sources.iter().map(|s| s.fhir.is_some()).collect();
        for s in &mapping.sources {
            for j in &s.joins {
                if let Some(x) = indexed.get_mut(j.source) {
                    *x = true;
                }
            }
        }
        let mut total = 0;
        for (p, _, s) in &inputs {
            if indexed.get(*s).copied().unwrap_or(false) {
                continue;
            }
            total += std::fs::metadata(p)
                .map_err(|source| IngestError::Io {
                    path: p.clone(),
                    source,
                })?
                .len();
        }
        let report = match &options.report {
            Some(path) => Report {
                out: Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path).map_err(|source| IngestError::Io {
                        path: path.clone(),
                        source,
                    })?,
                )),
                path: Some(path.clone()),
            },
            None => Report {
                out: Box::new(std::io::stderr()),
                path: None,
            },
        };
        Ok(Importer {
            state,
            options,
            mapping,
            inputs,
            indexed,
            report,
            summary: Summary::default(),
            progress: Progress::new(total, options.progress),
        })
    }

    /// The mapping again, with the rules of the sources `keep` rejects turned off (they
    /// stay for `ref`s and ids, and produce nothing).
    fn phase_mapping(&self, keep: impl Fn(usize) -> bool) -> Result<Mapping, IngestError> {
        let mut m = crate::map::load(&self.options.mapping)?;
        for r in &mut m.resources {
            if !keep(r.from) {
                r.from = usize::MAX;
            }
        }
        Ok(m)
    }

    async fn run(mut self) -> Result<Summary, IngestError> {
        // 1. The indexed sources, whole.
        let mut indexed_inputs = Vec::new();
        for (path, name, src) in &self.inputs {
            if self.indexed[*src] {
                let bytes = std::fs::read(path).map_err(|source| IngestError::Io {
                    path: path.clone(),
                    source,
                })?;
                indexed_inputs.push((*src, name.clone(), bytes));
            }
        }
        let borrowed: Vec<super::SourceInput<'_>> = indexed_inputs
            .iter()
            .map(|(s, n, b)| (*s, n.clone(), b.as_slice()))
            .collect();
        let (mut tables, problems) = super::read_tables(&self.mapping, &borrowed);
        if !problems.is_empty() {
            return self.fatal(problems);
        }
        if !tables.is_empty() {
            let indexed = self.indexed.clone();
            let m = self.phase_mapping(|s| indexed.get(s).copied().unwrap_or(false))?;
            let payload = multipart(&indexed_inputs, &self.mapping);
            let submitted = Submitted {
                url: format!("import:{}", self.mapping.name),
                content_type: format!("multipart/form-data; boundary={BOUNDARY}"),
                payload,
                mapping: self.mapping.name.clone(),
            };
            let rows: usize = tables.iter().map(|t| t.rows.len()).sum();
            self.summary.bytes += indexed_inputs
                .iter()
                .map(|(_, _, b)| b.len() as u64)
                .sum::<u64>();
            self.batch(&m, &tables, 0..tables.len(), rows, &submitted)
                .await?;
        }
        // 2. The streamed sources, batch by batch, with the indexed tables at hand.
        let indexed = self.indexed.clone();
        let m = self.phase_mapping(|s| !indexed.get(s).copied().unwrap_or(false))?;
        let streamed: Vec<(PathBuf, String, usize)> = self
            .inputs
            .iter()
            .filter(|(_, _, s)| !self.indexed[*s])
            .cloned()
            .collect();
        let done_before = self.summary.bytes;
        for (path, name, src) in streamed {
            let source = &self.mapping.sources[src];
            let (encoding, quote, delimiter) = (
                source.dialect.encoding,
                source.dialect.quote,
                source.dialect.delimiter,
            );
            let file = std::fs::File::open(&path).map_err(|source| IngestError::Io {
                path: path.clone(),
                source,
            })?;
            let mut batches = Batches::new(
                std::io::BufReader::with_capacity(1 << 16, file),
                quote,
                delimiter,
            );
            let read_before = self.summary.bytes;
            loop {
                let next =
                    batches
                        .next_batch(self.options.batch)
                        .map_err(|source| IngestError::Io {
                            path: path.clone(),
                            source,
                        })?;
                let Some(batch) = next else { break };
                self.summary.bytes = read_before + batches.consumed();
                let read = crate::map::source::decode(&batch.bytes, encoding)
                    .and_then(|text| Table::read(&text, &name, src, &self.mapping.sources[src]));
                let mut table = match read {
                    Ok(t) => t,
                    Err(message) => {
                        // The batch cannot be read (bad bytes, an unclosed quote): its
                        // records fail as one.
                        let last = batch.first_line + u32::try_from(batch.records).unwrap_or(0);
                        let d = super::file_diagnostic(
                            &self.mapping,
                            src,
                            &name,
                            batch.first_line,
                            format!(
                                "lines {}-{} not read: {message} (line counted from the batch's header)",
                                batch.first_line,
                                last.saturating_sub(1)
                            ),
                        );
                        self.report.line(&d)?;
                        self.summary.rows += batch.records as u64;
                        self.summary.failed_rows += batch.records as u64;
                        continue;
                    }
                };
                batch.place(&mut table.rows);
                let rows = table.rows.len();
                let (first, last) = (
                    table.rows.first().map_or(0, |r| r.line),
                    table.rows.last().map_or(0, |r| r.line),
                );
                let submitted = Submitted {
                    url: format!("import:{}:{name}:{first}-{last}", self.mapping.name),
                    content_type: "text/csv".into(),
                    payload: batch.bytes,
                    mapping: self.mapping.name.clone(),
                };
                tables.push(table);
                let at = tables.len() - 1;
                let result = self.batch(&m, &tables, at..at + 1, rows, &submitted).await;
                tables.pop();
                result?;
                self.progress.update(
                    self.summary.rows,
                    self.summary.bytes - done_before,
                    self.summary.failed_rows,
                );
            }
            self.summary.bytes = read_before + batches.consumed();
        }
        self.report
            .out
            .flush()
            .map_err(|source| self.report.io(source))?;
        self.summary.seconds = self.progress.elapsed().as_secs_f64();
        self.progress.finish(
            self.summary.rows,
            self.summary.bytes - done_before,
            self.summary.failed_rows,
        );
        Ok(self.summary)
    }

    /// Reports problems of whole files and stops.
    fn fatal(&mut self, problems: Vec<Diagnostic>) -> Result<Summary, IngestError> {
        for d in &problems {
            self.report.line(d)?;
        }
        let _ = self.report.out.flush();
        Err(IngestError::Usage(format!(
            "the import stopped: {}",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )))
    }

    /// Maps the rows of `tables[producing]` (all of `tables` at hand for joins), reports
    /// the rows that fail, and commits the resources of the others in one transaction.
    async fn batch(
        &mut self,
        m: &Mapping,
        tables: &[Table],
        producing: std::ops::Range<usize>,
        rows: usize,
        submitted: &Submitted,
    ) -> Result<(), IngestError> {
        let (produced, outcome) =
            crate::map::produce(m, tables, Vec::new(), Some(self.state.validator()), false);
        let files: HashSet<&str> = tables[producing.clone()]
            .iter()
            .map(|t| t.file.as_str())
            .collect();
        // Problems of rows of other tables that no produced resource names were reported
        // with those tables.
        let diagnostics: Vec<Diagnostic> = outcome
            .diagnostics
            .into_iter()
            .filter(|d| {
                d.resource.is_some()
                    || d.source
                        .as_ref()
                        .is_none_or(|s| files.contains(s.file.as_str()))
            })
            .collect();
        let (mut failed, whole) = super::failed_rows(tables, &produced, &diagnostics);
        if !whole.is_empty() {
            return self.fatal(whole).map(|_| ());
        }
        let mut reported: Vec<&Diagnostic> = diagnostics
            .iter()
            .filter(|d| d.severity.is_error())
            .collect();
        let mut extra: Vec<Diagnostic> = Vec::new();
        let mut attempts = 0;
        let committed = loop {
            attempts += 1;
            let good: Vec<&Produced> = produced
                .iter()
                .filter(|p| producing.contains(&p.row.0))
                .filter(|p| super::row_of(tables, p).is_none_or(|r| !failed.contains(&r)))
                .collect();
            let mut text = Vec::new();
            crate::map::write_bundle(m, good.iter().copied(), &mut text)?;
            let text = String::from_utf8(text).map_err(|e| IngestError::Commit(e.to_string()))?;
            let json = Json::parse(&text, 256).map_err(|e| IngestError::Commit(e.to_string()))?;
            match commit_mapped(self.state, submitted, json).await {
                Ok(c) => break c,
                Err(ApiError::Invalid(issues)) if attempts < 4 => {
                    // The server refused entries the mapping's own validation passed: their
                    // rows fail with the server's words, the rest is committed again.
                    let mut any = false;
                    for issue in issues.iter().filter(|i| i.severity.is_error()) {
                        let Some(p) = entry_index(&issue.location).and_then(|i| good.get(i)) else {
                            continue;
                        };
                        let Some(row) = super::row_of(tables, p) else {
                            continue;
                        };
                        any = true;
                        failed.insert(row.clone());
                        extra.push(Diagnostic {
                            severity: issue.severity,
                            source: Some(crate::map::SourcePos {
                                file: row.0,
                                row: row.1,
                                column: None,
                                fhir: None,
                            }),
                            mapping: None,
                            resource: Some(format!("{}/{}", p.type_name, p.id)),
                            location: Some(issue.location.clone()).filter(|l| !l.is_empty()),
                            message: issue.message.clone(),
                        });
                    }
                    if !any {
                        return Err(IngestError::Commit(format!(
                            "the server refused the batch {}: {}",
                            submitted.url,
                            crate::validate::operation_outcome(&issues)
                        )));
                    }
                }
                Err(e) => {
                    return Err(IngestError::Commit(format!(
                        "batch {} not committed: {e}",
                        submitted.url
                    )))
                }
            }
        };
        reported.extend(extra.iter());
        reported.sort_by(|a, b| {
            let key = |d: &Diagnostic| {
                d.source
                    .as_ref()
                    .map(|s| (s.file.clone(), s.row))
                    .unwrap_or_default()
            };
            key(a).cmp(&key(b))
        });
        for d in reported {
            self.report.line(d)?;
        }
        self.summary.rows += rows as u64;
        self.summary.failed_rows += failed
            .iter()
            .filter(|(f, _)| files.contains(f.as_str()))
            .count() as u64;
        self.summary.created += committed.created as u64;
        self.summary.updated += committed.updated as u64;
        self.summary.unchanged += committed.unchanged as u64;
        self.summary.batches += 1;
        Ok(())
    }
}

/// The entry number of a location `Bundle.entry[N]...`.
fn entry_index(location: &str) -> Option<usize> {
    let rest = location.strip_prefix("Bundle.entry[")?;
    rest.split(']').next()?.parse().ok()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
}

/// The multipart boundary of ledger payloads of indexed files.
pub const BOUNDARY: &str = "imagio-ingest-boundary-7f3a9c";

/// A `multipart/form-data` body of files, one part per file named by its source (the
/// form `/fhir/ingest` takes), with [`BOUNDARY`].
pub fn multipart(files: &[(usize, String, Vec<u8>)], mapping: &Mapping) -> Vec<u8> {
    let mut out = Vec::new();
    for (src, name, bytes) in files {
        let source = mapping.sources.get(*src).map_or("", |s| s.name.as_str());
        out.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: text/csv\r\n\r\n",
                source.replace('"', "%22"),
                name.replace('"', "%22")
            )
            .as_bytes(),
        );
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn entry_locations() {
        assert_eq!(
            super::entry_index("Bundle.entry[12].resource.code"),
            Some(12)
        );
        assert_eq!(super::entry_index("Patient.name"), None);
    }
}
