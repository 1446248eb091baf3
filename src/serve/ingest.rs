//! `POST /fhir/ingest/{mapping}`: a site uploads its export as it is (`text/csv` for a
//! mapping with one source, `multipart/form-data` with one part per file named by its
//! source), and the server runs the mapping, validates what it makes against the study
//! profiles and stores it through the transaction path of `POST /fhir` — one transaction
//! with the ledger entry, whose payload is the upload byte for byte. Any problem in any row
//! refuses the whole upload with 422 and every diagnostic (`file:row:cell [header]:
//! mapping:line: resource: message`), and nothing is stored. Ids come from the source keys,
//! so the same upload again changes nothing.
//!
//! [`commit_mapped`] is that transaction path for the bulk `import`, which runs in-process.

use super::bundle::{commit_transaction, response_bundle};
use super::error::ApiError;
use super::rest::{base_url, prefer};
use super::write::{self, WriteCtx};
use super::{AppState, RequestId};
use crate::auth::scopes::Interaction;
use crate::ingest::{media_type_is, FHIR_TYPES};
use crate::map::Mapping;
use crate::model::json::Json;
use crate::validate::{Issue, IssueType};
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use std::sync::Arc;

/// The handler.
pub async fn ingest(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let limit = state.config().max_body;
    let mut ctx = WriteCtx::new(&rid, &method, &uri, content_type.clone(), &[]);
    ctx.mapping = Some(name.clone());
    let bytes = match axum::body::to_bytes(req.into_body(), limit).await {
        Ok(b) => b,
        Err(_) => {
            return write::reject(&state, &ctx, ApiError::TooLarge(limit))
                .await
                .into_response()
        }
    };
    ctx.payload = bytes.to_vec();
    match process(
        &state,
        &ctx,
        &name,
        content_type.as_deref(),
        bytes,
        &headers,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => write::reject(&state, &ctx, e).await.into_response(),
    }
}

async fn process(
    state: &AppState,
    ctx: &WriteCtx,
    name: &str,
    content_type: Option<&str>,
    bytes: axum::body::Bytes,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let Some(mapping) = state.mappings().get(name) else {
        return Err(ApiError::NotFound(format!(
            "no mapping '{name}' on this server (mappings: {})",
            state.mappings().names().join(", ")
        )));
    };
    check_scopes(&mapping)?;
    let inputs = inputs(state, &mapping, content_type, headers, bytes).await?;
    let study = state.config().validation == super::ValidationMode::Study;
    let st = state.clone();
    let m = Arc::clone(&mapping);
    let bundle = tokio::task::spawn_blocking(move || map_upload(&st, &m, &inputs, study))
        .await
        .map_err(|e| ApiError::Internal(format!("mapping task: {e}")))??;
    let json = Json::parse(&bundle, state.config().max_depth.max(64))?;
    let items = commit_transaction(state, ctx, json).await?;
    Ok(response_bundle(
        "transaction-response",
        &items,
        &base_url(headers, state),
        prefer(headers),
    ))
}

/// The uploaded files as (source, file name, bytes).
async fn inputs(
    state: &AppState,
    mapping: &Mapping,
    content_type: Option<&str>,
    headers: &HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Vec<(usize, String, Vec<u8>)>, ApiError> {
    let accepted = "send text/csv (a mapping with one CSV source), FHIR JSON or NDJSON (a mapping with FHIR sources), or multipart/form-data with one part per file, named by its source";
    let Some(ct) = content_type else {
        return Err(ApiError::UnsupportedMediaType(format!(
            "no Content-Type; {accepted}"
        )));
    };
    let sources = crate::ingest::source_names(mapping);
    let found: Vec<(usize, String, Vec<u8>)> = if media_type_is(ct, FHIR_TYPES) {
        // A FHIR export (a Bundle, a resource or NDJSON) feeds every FHIR source of the
        // mapping; the file name (for diagnostics, and `.ndjson` for NDJSON) comes from
        // `Content-Disposition` or the media type.
        let fhir: Vec<usize> = (0..mapping.sources.len())
            .filter(|&i| mapping.sources[i].fhir.is_some())
            .collect();
        if fhir.is_empty() {
            return Err(ApiError::UnsupportedMediaType(format!(
                "mapping '{}' reads CSV files, not FHIR ({ct}); FHIR exports go to a mapping with FHIR sources; {accepted}",
                mapping.name
            )));
        }
        let ndjson = media_type_is(
            ct,
            &[
                "application/fhir+ndjson",
                "application/ndjson",
                "application/x-ndjson",
            ],
        );
        let file = headers
            .get(header::CONTENT_DISPOSITION)
            .and_then(|v| v.to_str().ok())
            .and_then(disposition_filename)
            .unwrap_or_else(|| {
                if ndjson {
                    "upload.ndjson"
                } else {
                    "upload.json"
                }
                .to_string()
            });
        fhir.into_iter()
            .map(|s| (s, file.clone(), bytes.to_vec()))
            .collect()
    } else if media_type_is(ct, &["text/csv"]) {
        let [only] = mapping.sources.as_slice() else {
            return Err(ApiError::BadRequest(format!(
                "mapping '{}' reads {} sources ({sources}): send multipart/form-data with one part per file, named by its source",
                mapping.name,
                mapping.sources.len()
            )));
        };
        let file = headers
            .get(header::CONTENT_DISPOSITION)
            .and_then(|v| v.to_str().ok())
            .and_then(disposition_filename)
            .unwrap_or_else(|| format!("{}.csv", only.name));
        vec![(0, file, bytes.to_vec())]
    } else if media_type_is(ct, &["multipart/form-data"]) {
        let req = axum::http::Request::builder()
            .header(header::CONTENT_TYPE, ct)
            .body(axum::body::Body::from(bytes))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let mut multipart = axum::extract::Multipart::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("multipart body: {}", e.body_text())))?;
        let mut found = Vec::new();
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| ApiError::BadRequest(format!("multipart body: {}", e.body_text())))?
        {
            let field_name = field.name().unwrap_or_default().to_string();
            let Some(src) = mapping.sources.iter().position(|s| s.name == field_name) else {
                return Err(ApiError::BadRequest(format!(
                    "part '{field_name}' is not a source of mapping '{}' (sources: {sources})",
                    mapping.name
                )));
            };
            let file = field
                .file_name()
                .map_or_else(|| format!("{field_name}.csv"), str::to_string);
            let data = field
                .bytes()
                .await
                .map_err(|e| ApiError::BadRequest(format!("multipart body: {}", e.body_text())))?;
            found.push((src, file, data.to_vec()));
        }
        found
    } else {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {ct} is not supported here; {accepted}"
        )));
    };
    let given: Vec<usize> = found.iter().map(|(s, _, _)| *s).collect();
    crate::ingest::require_all_sources(mapping, &given)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(found)
}

/// The `filename` of a `Content-Disposition` header (`attachment; filename="x.csv"`).
fn disposition_filename(v: &str) -> Option<String> {
    v.split(';').find_map(|p| {
        let (k, val) = p.trim().split_once('=')?;
        (k.trim().eq_ignore_ascii_case("filename"))
            .then(|| val.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
    })
}

/// Runs the mapping over the upload (with validation against the study profiles when the
/// server validates in study mode) and returns the transaction Bundle, or every
/// diagnostic when any is an error.
fn map_upload(
    state: &AppState,
    mapping: &Mapping,
    inputs: &[(usize, String, Vec<u8>)],
    study: bool,
) -> Result<String, ApiError> {
    let borrowed: Vec<crate::ingest::SourceInput<'_>> = inputs
        .iter()
        .map(|(s, n, b)| (*s, n.clone(), b.as_slice()))
        .collect();
    let (tables, read_problems) = crate::ingest::read_tables(mapping, &borrowed);
    let validator = study.then(|| state.validator());
    let (produced, outcome) =
        crate::map::produce(mapping, &tables, read_problems, validator, false);
    if outcome.has_errors() {
        return Err(ApiError::Invalid(diagnostics_as_issues(
            &outcome.diagnostics,
        )));
    }
    let mut out = Vec::new();
    crate::map::write_bundle(mapping, &produced, &mut out)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    String::from_utf8(out).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Mapping diagnostics as OperationOutcome issues: the text is the report line without
/// its severity (`file:row:cell [header]: mapping:line: resource: message`); the FHIRPath
/// location inside the produced resource, when there is one, is the expression.
pub fn diagnostics_as_issues(diagnostics: &[crate::map::Diagnostic]) -> Vec<Issue> {
    diagnostics
        .iter()
        .map(|d| {
            let text = d.to_string();
            let prefix = format!("{}: ", d.severity.code());
            Issue {
                severity: d.severity,
                kind: IssueType::Invalid,
                message: text.strip_prefix(&prefix).unwrap_or(&text).to_string(),
                location: d.location.clone().unwrap_or_default(),
                line: None,
                column: None,
                rule: None,
            }
        })
        .collect()
}

/// Refuses the upload when the caller's token does not allow updating (`PUT`) every type
/// the mapping writes (checked before any work is done).
fn check_scopes(mapping: &Mapping) -> Result<(), ApiError> {
    let Some(p) = crate::auth::current() else {
        return Ok(());
    };
    let mut types: Vec<&str> = mapping
        .resources
        .iter()
        .map(|r| r.type_name.as_str())
        .collect();
    types.sort_unstable();
    types.dedup();
    for t in types {
        if !p.scopes.allows(t, Interaction::Update) {
            return Err(ApiError::Forbidden(format!(
                "the token's scopes do not allow update on {t} (needs system/{t}.u), which this mapping writes"
            )));
        }
    }
    Ok(())
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Resources created.
    pub created: usize,
    /// Resources updated with new content.
    pub updated: usize,
    /// Resources sent again unchanged (no new version).
    pub unchanged: usize,
}

/// The ledger entry of an in-process batch (`import`): what was read, by which mapping.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The pseudo-URL recorded (`import:registry.csv:2-1001`).
    pub url: String,
    /// The media type of the payload.
    pub content_type: String,
    /// The input bytes of the batch (its header record and rows).
    pub payload: Vec<u8>,
    /// The mapping's name.
    pub mapping: String,
}

/// Stores a mapped transaction Bundle through the server's transaction path (checks,
/// validation, one store transaction with the ledger entry of `submitted`), as the caller
/// set by `auth::with_principal`. A refused Bundle is recorded in the ledger too.
///
/// # Errors
/// The refusal ([`ApiError::Invalid`] with `Bundle.entry[i]` locations, ...): nothing
/// is stored.
pub async fn commit_mapped(
    state: &AppState,
    submitted: &Submitted,
    bundle: Json,
) -> Result<Committed, ApiError> {
    let ctx = WriteCtx {
        received: crate::store::time::now(),
        request_id: uuid::Uuid::new_v4().to_string(),
        method: "POST".into(),
        url: submitted.url.clone(),
        content_type: Some(submitted.content_type.clone()),
        payload: submitted.payload.clone(),
        mapping: Some(submitted.mapping.clone()),
    };
    let items = match commit_transaction(state, &ctx, bundle).await {
        Ok(items) => items,
        Err(e) => return Err(write::reject(state, &ctx, e).await),
    };
    let mut c = Committed::default();
    for done in items.into_iter().flatten() {
        if done.status == StatusCode::CREATED {
            c.created += 1;
        } else if done.written {
            c.updated += 1;
        } else {
            c.unchanged += 1;
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    #[test]
    fn filename_of_disposition() {
        assert_eq!(
            super::disposition_filename("attachment; filename=\"export.csv\""),
            Some("export.csv".into())
        );
        assert_eq!(super::disposition_filename("inline"), None);
    }
}
