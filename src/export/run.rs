//! The export worker every replica runs (unless configured off): claims a job from the
//! database, writes its files, and cleans up jobs past their retention.
//!
//! A job runs as the client that asked for it (its site, role and granted scopes are stored
//! with it), so the tenancy filter and the scopes' narrowing apply as in a search. Each type
//! is read in keyset pages of current resources by id (`super::page_sql`), every row
//! written to the type's NDJSON file as it arrives from the database; at most every second,
//! and at the end of each type, the file is flushed and its length, the last id written and
//! the count are saved with the lease renewed (one transaction). A replica that resumes the
//! job cuts each file back to its saved length and continues after the saved id, so no
//! resource is written twice or skipped. A checkpoint that finds the job cancelled or taken
//! over stops the work.

use super::{compartment_params, Level, Params, Patients};
use crate::auth::scopes::{Interaction, Scopes};
use crate::auth::{Principal, Role};
use crate::serve::AppState;
use crate::store::export::{ExportJobRow, ExportOutputRow};
use crate::store::StoreError;
use std::io::{Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What stops a job.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The export folder.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The job as stored cannot be read.
    #[error("{0}")]
    Job(String),
}

/// How a run ended short of completion.
enum Stop {
    /// The job was cancelled or another replica holds it now.
    Lost,
    /// This replica is shutting down (the claim was given up).
    Shutdown,
}

/// The folder of a job's files.
pub fn job_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// An instant `after` from now, as text.
fn instant_in(after: Duration) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    crate::store::time::instant(i64::try_from((now + after).as_millis()).unwrap_or(i64::MAX))
}

/// An instant `before` now, as text.
fn instant_ago(before: Duration) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    crate::store::time::instant(i64::try_from(now.saturating_sub(before).as_millis()).unwrap_or(0))
}

/// Runs the worker until `stop` turns true: claims and runs jobs one at a time, and
/// removes expired jobs and their files.
pub async fn worker(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let owner = format!("replica-{}", uuid::Uuid::new_v4().simple());
    let config = state.config().export.clone();
    let mut last_cleanup: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        if last_cleanup.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            last_cleanup = Some(Instant::now());
            if let Err(e) = cleanup(&state).await {
                tracing::warn!(error = %e, "export clean-up failed");
            }
        }
        let claimed = state
            .store()
            .export_claim(
                &owner,
                &crate::store::time::now(),
                &instant_in(config.lease),
            )
            .await;
        match claimed {
            Ok(Some(job)) => {
                tracing::info!(job = %job.id, %owner, "export job claimed");
                let id = job.id.clone();
                match run_job(&state, &job, &owner, &stop).await {
                    Ok(None) => tracing::info!(job = %id, "export job done"),
                    Ok(Some(Stop::Shutdown)) => {
                        if let Err(e) = state.store().export_release(&id, &owner).await {
                            tracing::warn!(job = %id, error = %e, "could not release the job");
                        }
                        return;
                    }
                    Ok(Some(Stop::Lost)) => {
                        // Cancelled (the row is gone): its files go too.
                        if matches!(state.store().export_job(&id).await, Ok(None)) {
                            let _ = std::fs::remove_dir_all(job_dir(&config.dir, &id));
                        }
                        tracing::info!(job = %id, "export job cancelled or taken over");
                    }
                    Err(e) => {
                        tracing::error!(job = %id, error = %e, "export job failed");
                        let _ = state
                            .store()
                            .export_finish(
                                &id,
                                &owner,
                                "failed",
                                Some(&e.to_string()),
                                &crate::store::time::now(),
                            )
                            .await;
                    }
                }
            }
            Ok(None) => {
                // A job accepted by another replica is found at the next poll.
                tokio::select! {
                    () = tokio::time::sleep(config.poll) => {}
                    () = state.export_wake().notified() => {}
                    _ = stop.changed() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "export claim failed");
                tokio::select! {
                    () = tokio::time::sleep(config.poll) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// Deletes the jobs that ended more than the retention ago, files first.
async fn cleanup(state: &AppState) -> Result<(), RunError> {
    let config = &state.config().export;
    for id in state
        .store()
        .export_expired(&instant_ago(config.retention))
        .await?
    {
        let dir = job_dir(&config.dir, &id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RunError::Io(dir.display().to_string(), e)),
        }
        state.store().export_delete(&id).await?;
        tracing::info!(job = %id, "expired export deleted");
    }
    Ok(())
}

/// The caller a job runs as.
fn principal(job: &ExportJobRow) -> Result<Principal, RunError> {
    Ok(Principal {
        client_id: job.client.clone(),
        site: job.site.clone(),
        role: Role::from_name(&job.role)
            .ok_or_else(|| RunError::Job(format!("unknown role {}", job.role)))?,
        scopes: Scopes::parse(&job.scope).map_err(|e| RunError::Job(e.to_string()))?,
    })
}

/// Runs one claimed job to its end (`None`), or until it is lost or the replica stops.
async fn run_job(
    state: &AppState,
    job: &ExportJobRow,
    owner: &str,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Stop>, RunError> {
    let p = principal(job)?;
    crate::auth::with_principal(p, run_as_caller(state, job, owner, stop)).await
}

async fn run_as_caller(
    state: &AppState,
    job: &ExportJobRow,
    owner: &str,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Stop>, RunError> {
    let params: Params =
        serde_json::from_str(&job.params).map_err(|e| RunError::Job(e.to_string()))?;
    let config = &state.config().export;
    let store = state.store();
    let site = crate::auth::tenancy::site_filter();
    let scopes = crate::auth::current().map(|p| p.scopes).unwrap_or_default();
    let dir = job_dir(&config.dir, &job.id);
    std::fs::create_dir_all(&dir).map_err(|e| RunError::Io(dir.display().to_string(), e))?;
    let saved = store.export_outputs(&job.id).await?;

    let patients = match &params.level {
        Level::System => Patients::Any,
        Level::Patient => Patients::All,
        Level::Group(id) => Patients::Group(id.clone()),
    };
    let mut types = if params.types.is_empty() {
        // The gateway's own records (AuditEvent, Provenance) are not study data: they are
        // exported when `_type` names them, not by default.
        let mut all = store.resource_types(site.as_deref()).await?;
        all.retain(|t| !crate::audit::event::append_only(t));
        all
    } else {
        params.types.clone()
    };
    types.retain(|t| {
        scopes.allows(t, Interaction::Search)
            && (patients == Patients::Any || compartment_params(t).is_some())
    });
    types.sort();

    // Warnings of the kick-off (parameters ignored) as one OperationOutcome per line.
    if !params.warnings.is_empty() && !saved.iter().any(|o| o.kind == "error" && o.done) {
        let name = "OperationOutcome.error.ndjson";
        let path = dir.join(name);
        let mut text = String::new();
        for w in &params.warnings {
            let oo = serde_json::json!({
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "warning", "code": "not-supported", "diagnostics": w}]
            });
            text.push_str(&oo.to_string());
            text.push('\n');
        }
        std::fs::write(&path, &text).map_err(|e| RunError::Io(path.display().to_string(), e))?;
        let row = ExportOutputRow {
            job_id: job.id.clone(),
            res_type: "OperationOutcome".into(),
            kind: "error".into(),
            file: name.into(),
            position: String::new(),
            bytes: i64::try_from(text.len()).unwrap_or(i64::MAX),
            count: i64::try_from(params.warnings.len()).unwrap_or(i64::MAX),
            done: true,
        };
        if !store
            .export_checkpoint(owner, &instant_in(config.lease), Some(&row), &job.id)
            .await?
        {
            return Ok(Some(Stop::Lost));
        }
    }

    for t in &types {
        let mut row = saved
            .iter()
            .find(|o| o.kind == "output" && &o.res_type == t)
            .cloned()
            .unwrap_or_else(|| ExportOutputRow {
                job_id: job.id.clone(),
                res_type: t.clone(),
                kind: "output".into(),
                file: format!("{t}.ndjson"),
                position: String::new(),
                bytes: 0,
                count: 0,
                done: false,
            });
        if row.done {
            continue;
        }
        if let Some(stop) =
            export_type(state, job, owner, &params, &patients, &mut row, stop).await?
        {
            return Ok(Some(stop));
        }
    }
    if store
        .export_finish(&job.id, owner, "done", None, &crate::store::time::now())
        .await?
    {
        Ok(None)
    } else {
        Ok(Some(Stop::Lost))
    }
}

/// The searches (OR) a type's resources must match: its `_typeFilter`s, or none, each with
/// the caller's narrowing ANDed; empty when nothing restricts the type.
fn filters(params: &Params, res_type: &str) -> Result<Vec<crate::search::Parsed>, RunError> {
    let mut out = Vec::new();
    let queries: Vec<&str> = params
        .type_filters
        .iter()
        .filter(|(t, _)| t == res_type)
        .map(|(_, q)| q.as_str())
        .collect();
    let queries = if queries.is_empty() {
        vec![""]
    } else {
        queries
    };
    let site = crate::auth::tenancy::site_filter();
    for q in queries {
        let mut parsed = crate::search::parse(res_type, &super::query_pairs(q))
            .map_err(|e| RunError::Job(format!("_typeFilter {res_type}?{q}: {e}")))?;
        crate::auth::narrow::narrow_search(res_type, &mut parsed);
        if let Some(site) = &site {
            parsed.restrict_chains(site);
        }
        out.push(parsed);
    }
    if out.len() == 1 && out[0].clauses.is_empty() {
        out.clear();
    }
    Ok(out)
}

/// Writes (the rest of) one type's file. `None` when the type is complete.
async fn export_type(
    state: &AppState,
    job: &ExportJobRow,
    owner: &str,
    params: &Params,
    patients: &Patients,
    row: &mut ExportOutputRow,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Stop>, RunError> {
    let config = &state.config().export;
    let store = state.store();
    let t = row.res_type.clone();
    let filters = filters(params, &t)?;
    let compartment = compartment_params(&t).unwrap_or_default();
    let site = crate::auth::tenancy::site_filter();
    let path = job_dir(&config.dir, &job.id).join(&row.file);
    let io = |e: std::io::Error| RunError::Io(path.display().to_string(), e);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    // What was written after the last checkpoint is written again from there.
    let saved_len = u64::try_from(row.bytes).unwrap_or(0);
    file.set_len(saved_len).map_err(io)?;
    file.seek(std::io::SeekFrom::Start(saved_len)).map_err(io)?;
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
    let mut last_checkpoint = Instant::now();
    loop {
        let after = row.position.clone();
        let pieces = super::page_sql(&super::PageQuery {
            res_type: &t,
            after: &after,
            since: params.since.as_deref(),
            until: &job.transaction_time,
            site: site.as_deref(),
            filters: &filters,
            patients,
            params: &compartment,
            limit: config.page,
        });
        let mut failed: Option<std::io::Error> = None;
        let seen = store
            .stream_rows::<StoreError>(&pieces, |id, content| {
                if failed.is_some() {
                    return Ok(());
                }
                if let Err(e) = out
                    .write_all(content.as_bytes())
                    .and_then(|()| out.write_all(b"\n"))
                {
                    failed = Some(e);
                    return Ok(());
                }
                row.position.clear();
                row.position.push_str(id);
                row.count += 1;
                row.bytes += i64::try_from(content.len()).unwrap_or(i64::MAX) + 1;
                Ok(())
            })
            .await?;
        if let Some(e) = failed {
            return Err(io(e));
        }
        let complete = seen < u64::try_from(config.page.max(1)).unwrap_or(u64::MAX);
        let stopping = *stop.borrow();
        if complete || stopping || last_checkpoint.elapsed() >= Duration::from_secs(1) {
            out.flush().map_err(io)?;
            row.done = complete;
            if !store
                .export_checkpoint(owner, &instant_in(config.lease), Some(row), &job.id)
                .await?
            {
                return Ok(Some(Stop::Lost));
            }
            last_checkpoint = Instant::now();
        }
        if complete {
            drop(out);
            if row.count == 0 {
                let _ = std::fs::remove_file(&path);
            }
            return Ok(None);
        }
        if stopping {
            return Ok(Some(Stop::Shutdown));
        }
        if !config.pause.is_zero() {
            tokio::time::sleep(config.pause).await;
        }
    }
}
