//! The `$export` endpoints (Bulk Data Access 2.0), under the FHIR base:
//! - kick-off: `GET`/`POST` `$export`, `Patient/$export`, `Group/{id}/$export`
//!   (`Prefer: respond-async` and `Accept: application/fhir+json` required; 202 with
//!   `Content-Location` of the status URL);
//! - status: `GET $export-poll-status/{job}` (202 with `X-Progress` and `Retry-After`
//!   while queued or running, 200 with the manifest when done, 500 with an OperationOutcome
//!   when the job failed), `DELETE` the same URL to cancel (202; the files are deleted);
//! - files: `GET $export-file/{job}/{name}` (`application/fhir+ndjson`, streamed from disk).
//!
//! `auth::enforce` asks a valid token for all of them; status, cancel and files answer only
//! the client that asked for the job (404 for anyone else, as for an unknown job).

use super::{Level, Params};
use crate::auth::scopes::Interaction;
use crate::auth::Principal;
use crate::serve::error::{outcome, FHIR_JSON};
use crate::serve::{ApiError, AppState};
use crate::store::export::ExportJobRow;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The export routes, relative to the FHIR base (merged into the `/fhir` router).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/$export", get(kickoff_system).post(kickoff_system))
        .route(
            "/Patient/$export",
            get(kickoff_patient).post(kickoff_patient),
        )
        .route(
            "/Group/{id}/$export",
            get(kickoff_group).post(kickoff_group),
        )
        .route("/$export-poll-status/{job}", get(status).delete(cancel))
        .route("/$export-file/{job}/{name}", get(file))
}

/// The caller (set by `auth::enforce`; the local admin under `--no-auth`).
fn caller() -> Result<Principal, ApiError> {
    crate::auth::current().ok_or_else(|| ApiError::Forbidden("no authenticated caller".into()))
}

/// The FHIR base URL clients reach the server at.
fn base(state: &AppState) -> String {
    format!("{}/fhir", state.auth().base_url())
}

/// Whether a `Prefer` header holds `token`.
fn prefers(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all("prefer").iter().any(|v| {
        v.to_str()
            .unwrap_or_default()
            .split([',', ';'])
            .any(|p| p.trim().eq_ignore_ascii_case(token))
    })
}

async fn kickoff_system(State(state): State<AppState>, req: Request) -> Response {
    respond(kickoff(&state, Level::System, req).await)
}

async fn kickoff_patient(State(state): State<AppState>, req: Request) -> Response {
    respond(kickoff(&state, Level::Patient, req).await)
}

async fn kickoff_group(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    respond(kickoff(&state, Level::Group(id), req).await)
}

fn respond(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// The parameters of a `POST` kick-off's Parameters body, as name/value text pairs.
fn body_pairs(body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    if v.get("resourceType").and_then(|t| t.as_str()) != Some("Parameters") {
        return Err(ApiError::BadRequest(
            "a POST kick-off takes a Parameters resource".into(),
        ));
    }
    let mut out = Vec::new();
    for p in v
        .get("parameter")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
    {
        let name = p
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| ApiError::BadRequest("a Parameters.parameter without a name".into()))?;
        let value = p
            .as_object()
            .and_then(|o| {
                o.iter()
                    .find(|(k, _)| k.starts_with("value"))
                    .and_then(|(_, v)| v.as_str().map(str::to_string))
            })
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "parameter {name}: only primitive text values are supported"
                ))
            })?;
        out.push((name.to_string(), value));
    }
    Ok(out)
}

async fn kickoff(state: &AppState, level: Level, req: Request) -> Result<Response, ApiError> {
    let p = caller()?;
    let headers = req.headers().clone();
    if !prefers(&headers, "respond-async") {
        return Err(ApiError::BadRequest(
            "$export needs the header Prefer: respond-async".into(),
        ));
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !accept.contains("application/fhir+json") {
        return Err(ApiError::BadRequest(
            "$export needs the header Accept: application/fhir+json".into(),
        ));
    }
    let lenient = prefers(&headers, "handling=lenient");
    let method = req.method().clone();
    // Relative to the FHIR base: the router nested under `/fhir` sees the path without it.
    let uri = req.uri().clone();
    let mut pairs = super::kickoff_query_pairs(uri.query().unwrap_or_default());
    if method == Method::POST {
        let limit = state.config().max_body;
        let body = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| ApiError::TooLarge(limit))?;
        pairs.extend(body_pairs(&body)?);
    }
    let params = super::parse_kickoff(level, &pairs, lenient).map_err(ApiError::BadRequest)?;
    check_access(state, &p, &params).await?;
    let now = crate::store::time::now();
    let job = ExportJobRow {
        id: uuid::Uuid::new_v4().to_string(),
        client: p.client_id.clone(),
        site: p.site.clone(),
        role: p.role.name().to_string(),
        scope: p.scopes.to_string(),
        request: format!(
            "{}{}",
            base(state),
            uri.path_and_query().map_or("", |pq| pq.as_str())
        ),
        params: serde_json::to_string(&params).map_err(|e| ApiError::Internal(e.to_string()))?,
        status: "queued".into(),
        transaction_time: now.clone(),
        created: now,
        claimed_by: None,
        lease_until: None,
        finished: None,
        error: None,
    };
    state.store().export_insert(&job).await?;
    state.export_wake().notify_one();
    // The kick-off, its polls, downloads and cancel are recorded as `operation` audit
    // events by the audit middleware (`audit::event::classify`).
    tracing::info!(job = %job.id, client = %job.client, request = %job.request, "export accepted");
    let location = format!("{}/$export-poll-status/{}", base(state), job.id);
    let mut r = (
        StatusCode::ACCEPTED,
        outcome(
            "information",
            "informational",
            &format!("export accepted; poll {location}"),
        ),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(r)
}

/// Refuses types the caller's scopes do not let it search (403), and a Group it cannot
/// see (404).
async fn check_access(state: &AppState, p: &Principal, params: &Params) -> Result<(), ApiError> {
    let asked = params
        .types
        .iter()
        .chain(params.type_filters.iter().map(|(t, _)| t));
    for t in asked {
        if !p.scopes.allows(t, Interaction::Search) {
            return Err(ApiError::Forbidden(format!(
                "the token's scopes do not allow reading {t} (needs system/{t}.s)"
            )));
        }
    }
    if let Level::Group(id) = &params.level {
        let found = state.store().read("Group", id).await?;
        let visible = found.as_ref().is_some_and(|g| {
            !g.deleted && crate::auth::tenancy::visible(g) && crate::auth::narrow::readable(g)
        });
        if !visible {
            return Err(ApiError::NotFound(format!("Group/{id} is not known")));
        }
    }
    Ok(())
}

/// The job, if it exists and belongs to the caller.
async fn own_job(state: &AppState, id: &str) -> Result<ExportJobRow, ApiError> {
    let p = caller()?;
    match state.store().export_job(id).await? {
        Some(j) if j.client == p.client_id => Ok(j),
        _ => Err(ApiError::NotFound(format!("no export job {id}"))),
    }
}

async fn status(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    respond(status_of(&state, &id).await)
}

async fn status_of(state: &AppState, id: &str) -> Result<Response, ApiError> {
    let job = own_job(state, id).await?;
    match job.status.as_str() {
        "done" => {
            let outputs = state.store().export_outputs(id).await?;
            let files = |kind: &str| -> Vec<super::ManifestFile> {
                outputs
                    .iter()
                    .filter(|o| o.kind == kind)
                    .map(|o| super::ManifestFile {
                        res_type: o.res_type.clone(),
                        url: format!("{}/$export-file/{}/{}", base(state), id, o.file),
                        count: o.count,
                    })
                    .collect()
            };
            let body = super::manifest(
                &job.transaction_time,
                &job.request,
                &files("output"),
                &files("error"),
            );
            let mut r = (StatusCode::OK, body.to_string()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let expires = job.finished.as_deref().and_then(|f| {
                let ms = instant_millis(f)?;
                let retention = i64::try_from(state.config().export.retention.as_millis()).ok()?;
                crate::store::time::http_date(&crate::store::time::instant(ms + retention))
            });
            if let Some(v) = expires.and_then(|e| HeaderValue::from_str(&e).ok()) {
                r.headers_mut().insert(header::EXPIRES, v);
            }
            Ok(r)
        }
        "failed" => Err(ApiError::Internal(format!(
            "export {id} failed: {}",
            job.error.unwrap_or_default()
        ))),
        _ => {
            let outputs = state.store().export_outputs(id).await?;
            let written: i64 = outputs
                .iter()
                .filter(|o| o.kind == "output")
                .map(|o| o.count)
                .sum();
            let done = outputs
                .iter()
                .filter(|o| o.kind == "output" && o.done)
                .count();
            let progress =
                if job.status == "queued" || (job.claimed_by.is_none() && outputs.is_empty()) {
                    "queued".to_string()
                } else {
                    format!("in progress: {written} resources written, {done} types complete")
                };
            let mut r = StatusCode::ACCEPTED.into_response();
            if let Ok(v) = HeaderValue::from_str(&progress) {
                r.headers_mut().insert("x-progress", v);
            }
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok(r)
        }
    }
}

/// Milliseconds since the epoch of an instant the store wrote (`YYYY-MM-DDThh:mm:ss.fffZ`).
fn instant_millis(text: &str) -> Option<i64> {
    let n = super::instant(text)?;
    let (date, time) = n.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let days = crate::store::time::days_from_civil(d.next()??, d.next()??, d.next()??);
    let t = time.trim_end_matches('Z');
    let (hms, ms) = t.split_once('.')?;
    let mut h = hms.split(':').map(|x| x.parse::<i64>().ok());
    Some(
        ((days * 24 + h.next()??) * 60 + h.next()??) * 60_000
            + h.next()?? * 1000
            + ms.parse::<i64>().ok()?,
    )
}

async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    respond(cancel_job(&state, &id).await)
}

async fn cancel_job(state: &AppState, id: &str) -> Result<Response, ApiError> {
    own_job(state, id).await?;
    state.store().export_delete(id).await?;
    let dir = super::run::job_dir(&state.config().export.dir, id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ApiError::Internal(format!("{}: {e}", dir.display()))),
    }
    let mut r = (
        StatusCode::ACCEPTED,
        outcome(
            "information",
            "informational",
            &format!("export {id} cancelled"),
        ),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    Ok(r)
}

async fn file(State(state): State<AppState>, Path((id, name)): Path<(String, String)>) -> Response {
    respond(file_of(&state, &id, &name).await)
}

/// Chunks of a file read on the blocking pool, as a body stream.
struct Chunks(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);

impl futures_core::Stream for Chunks {
    type Item = std::io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

async fn file_of(state: &AppState, id: &str, name: &str) -> Result<Response, ApiError> {
    let job = own_job(state, id).await?;
    let not_found = || ApiError::NotFound(format!("no file {name} in export {id}"));
    if job.status != "done" || !super::is_output_file_name(name) {
        return Err(not_found());
    }
    let outputs = state.store().export_outputs(id).await?;
    if !outputs.iter().any(|o| o.file == name && o.count > 0) {
        return Err(not_found());
    }
    let path = super::run::job_dir(&state.config().export.dir, id).join(name);
    let mut f = std::fs::File::open(&path).map_err(|_| not_found())?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let mut r = Body::from_stream(Chunks(rx)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+ndjson"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_of_store_instants() {
        assert_eq!(instant_millis("1970-01-01T00:00:01.500Z"), Some(1500));
        assert_eq!(
            crate::store::time::instant(instant_millis("2026-11-28T01:02:03.004Z").unwrap_or(0)),
            "2026-11-28T01:02:03.004Z"
        );
    }
}
