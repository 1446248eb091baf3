//! SQL on FHIR `$run`: `POST /fhir/ViewDefinition/$run` with a Parameters body carrying the
//! view (`viewResource`, or `viewReference` to a shipped ViewDefinition) and optionally
//! `_format` (`csv`, `ndjson`, `json`, `parquet`; also taken from the query string, the
//! body's parameter winning) and inline `resource`s to run on instead of the store.
//!
//! Rows stream: the first page of resources is run before answering (so a view that fails
//! on the data is a 422 OperationOutcome), the rest page by page into the response body.
//! A site client's rows come from its own site's resources only; sponsors and admins see
//! all. The token needs an unnarrowed search scope on the view's resource type.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use serde_json::Value as JsonValue;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use super::body::FhirBody;
use super::{ApiError, AppState};
use crate::auth::scopes::{Interaction, Reach};
use crate::auth::{Principal, Role};
use crate::views::{self, Format, RowWriter, View};

/// Resources per page read from the store.
const PAGE: i64 = 500;

/// `POST /fhir/ViewDefinition/$run`.
pub async fn run(
    State(state): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    uri: Uri,
    body: Result<FhirBody, ApiError>,
) -> Result<Response, ApiError> {
    let body = body?;
    if let Some(e) = body.refused {
        return Err(e);
    }
    let params: JsonValue =
        serde_json::from_slice(&body.bytes).map_err(|e| ApiError::Malformed {
            message: format!("the body is not JSON: {e}"),
            issues: Vec::new(),
        })?;
    if params.get("resourceType").and_then(JsonValue::as_str) != Some("Parameters") {
        return Err(ApiError::BadRequest(
            "$run takes a Parameters resource".into(),
        ));
    }
    let mut view_json = None;
    let mut format = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "_format")
        .map(|(_, v)| v.into_owned());
    let mut inline = Vec::new();
    for p in params
        .get("parameter")
        .and_then(JsonValue::as_array)
        .map_or(&[][..], Vec::as_slice)
    {
        match p.get("name").and_then(JsonValue::as_str) {
            Some("viewResource") => view_json = p.get("resource").cloned(),
            Some("viewReference") => {
                let reference = p
                    .get("valueReference")
                    .and_then(|r| r.get("reference"))
                    .and_then(JsonValue::as_str)
                    .or_else(|| p.get("valueCanonical").and_then(JsonValue::as_str))
                    .ok_or_else(|| {
                        ApiError::BadRequest("viewReference needs valueReference.reference".into())
                    })?;
                let text = views::shipped_view(reference).ok_or_else(|| {
                    ApiError::NotFound(format!("no ViewDefinition '{reference}' on this server"))
                })?;
                view_json =
                    Some(serde_json::from_str(text).map_err(|e| {
                        ApiError::Internal(format!("shipped view {reference}: {e}"))
                    })?);
            }
            Some("_format") => {
                format = p
                    .get("valueCode")
                    .or_else(|| p.get("valueString"))
                    .and_then(JsonValue::as_str)
                    .map(str::to_string);
            }
            Some("resource") => {
                if let Some(r) = p.get("resource") {
                    inline.push(r.to_string());
                }
            }
            _ => {}
        }
    }
    let view_json = view_json.ok_or_else(|| {
        ApiError::BadRequest("$run needs a viewResource or viewReference parameter".into())
    })?;
    let view = Arc::new(views::view_from_json(&view_json)?);
    let format = match format.as_deref() {
        None => Format::Ndjson,
        Some(f) => Format::from_name(f).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown _format '{f}' (csv, ndjson, json, parquet)"
            ))
        })?,
    };
    let principal = principal.map(|p| p.0).unwrap_or_else(Principal::local);
    match principal.scopes.reach(&view.resource, Interaction::Search) {
        Reach::Everything => {}
        Reach::Nothing => {
            return Err(ApiError::Forbidden(format!(
                "the token's scopes do not allow search on {} (needs system/{}.s)",
                view.resource, view.resource
            )))
        }
        Reach::Matching(_) => {
            return Err(ApiError::Forbidden(format!(
                "$run needs an unnarrowed search scope on {}",
                view.resource
            )))
        }
    }
    let site = (principal.role == Role::Site).then(|| principal.site.clone());
    let buf = SharedBuf::default();
    let mut writer = RowWriter::new(buf.clone(), format, &view.columns)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if inline.is_empty() {
        // Rows from the store: the first page now, the rest streamed.
        let store = state.store().clone();
        let mut after = String::new();
        let done = page(&view, &store, site.as_deref(), &mut after, &mut writer).await?;
        let first = buf.take();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let view2 = Arc::clone(&view);
        tokio::spawn(async move {
            let mut done = done;
            while !done {
                match page(&view2, &store, site.as_deref(), &mut after, &mut writer).await {
                    Ok(d) => done = d,
                    Err(e) => {
                        tracing::error!(error = %e, "$run failed after the first page");
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                }
                let chunk = buf.take();
                if !chunk.is_empty() && tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                    return;
                }
            }
            if let Err(e) = writer.finish() {
                let _ = tx.send(Err(e)).await;
                return;
            }
            let chunk = buf.take();
            if !chunk.is_empty() {
                let _ = tx.send(Ok(Bytes::from(chunk))).await;
            }
        });
        let stream = Chunks {
            first: Some(Bytes::from(first)),
            rx,
        };
        return Ok(respond(format, Body::from_stream(stream)));
    }
    // Inline resources: small by nature (they came in the request body).
    for text in &inline {
        let resource = crate::model::parse(text).map_err(|e| ApiError::Malformed {
            message: format!("a resource parameter is not FHIR R4 JSON: {e}"),
            issues: Vec::new(),
        })?;
        for row in views::rows(&view, &resource)? {
            writer
                .row(&row)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        }
    }
    writer
        .finish()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(respond(format, Body::from(buf.take())))
}

fn respond(format: Format, body: Body) -> Response {
    ([(header::CONTENT_TYPE, format.media_type())], body).into_response()
}

/// Runs the view on the next page of stored resources; true when there are no more.
async fn page(
    view: &View,
    store: &crate::store::Store,
    site: Option<&str>,
    after: &mut String,
    writer: &mut RowWriter<SharedBuf>,
) -> Result<bool, ApiError> {
    let rows = store
        .current_page(&view.resource, site, after, PAGE)
        .await?;
    if let Some((last, _)) = rows.last() {
        after.clone_from(last);
    }
    for (id, content) in &rows {
        let resource = crate::model::parse(content).map_err(|e| {
            ApiError::Internal(format!("stored {}/{id} does not parse: {e}", view.resource))
        })?;
        for row in views::rows(view, &resource)? {
            writer
                .row(&row)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        }
    }
    Ok(rows.len() < usize::try_from(PAGE).unwrap_or(usize::MAX))
}

/// The bytes the writer has produced since they were last taken.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned buffer"))?
            .extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The response body: the first page's bytes, then what the task sends.
struct Chunks {
    first: Option<Bytes>,
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl futures_core::Stream for Chunks {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        self.rx.poll_recv(cx)
    }
}
