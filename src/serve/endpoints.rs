//! The sponsor's endpoint datasets over HTTP (sponsor and admin clients only):
//!
//! - `GET /sponsor/endpoints`: the FHIR `Parameters` resource (datasets, Kaplan-Meier
//!   estimates at the report times, safety proportions, and the names of the files);
//! - `GET /sponsor/endpoints/{file}`: one output file by name (`ltp.csv`, `km.csv`,
//!   `km-os-tumour-hcc.svg`, ...; the list is in the `file` parameters).
//!
//! Each request computes the outputs from the store's current resources (all sites:
//! `crate::endpoints::read_store`), so they reflect the data at the time of the request.
//! Site clients get 403: the datasets span every site.

use super::error::ApiError;
use super::AppState;
use crate::auth::{Principal, Role};
use crate::endpoints::{self, facts::Facts, out::File};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};

/// The routes of the endpoint datasets.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sponsor/endpoints", get(index))
        .route("/sponsor/endpoints/{file}", get(one))
}

/// Refuses callers that are neither sponsor nor admin clients.
fn sponsor_only(p: Option<&Principal>) -> Result<(), ApiError> {
    match p {
        Some(p) if matches!(p.role, Role::Sponsor | Role::Admin) => Ok(()),
        _ => Err(ApiError::Forbidden(
            "only sponsor and admin clients read the endpoint datasets".into(),
        )),
    }
}

/// Reads the store and computes every output file.
async fn compute(state: &AppState) -> Result<Vec<File>, ApiError> {
    let mut facts = Facts::default();
    endpoints::read_store(state.store(), &mut facts).await?;
    tokio::task::spawn_blocking(move || endpoints::compute(&facts).files)
        .await
        .map_err(|e| ApiError::Internal(format!("endpoint computation failed: {e}")))
}

fn respond(f: File) -> Response {
    let mut r = f.content.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(f.media_type));
    r
}

async fn index(
    State(state): State<AppState>,
    p: Option<Extension<Principal>>,
) -> Result<Response, ApiError> {
    sponsor_only(p.as_deref())?;
    let files = compute(&state).await?;
    files
        .into_iter()
        .find(|f| f.name == endpoints::out::PARAMETERS_FILE)
        .map(respond)
        .ok_or_else(|| ApiError::Internal("no Parameters output".into()))
}

async fn one(
    State(state): State<AppState>,
    p: Option<Extension<Principal>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    sponsor_only(p.as_deref())?;
    let files = compute(&state).await?;
    files
        .into_iter()
        .find(|f| f.name == name)
        .map(respond)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no endpoint output named {name:?}; GET /sponsor/endpoints lists them"
            ))
        })
}
