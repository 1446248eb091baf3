//! The instance and type interactions on `/fhir/{type}...` (FHIR R4 http.html): read,
//! vread, create (and conditional create), update (and update-as-create, conditional
//! update), delete, history, and `$validate`. Every write is recorded in the ledger,
//! accepted or not.

use super::body::FhirBody;
use super::error::{ApiError, FHIR_JSON};
use super::write::{self, Checked, Criteria, Done, Op, Selector, WriteCtx};
use super::{AppState, RequestId};
use crate::model::json::{write_str, Json};
use crate::store::{time, Stored};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;

/// What a client asked to get back after a write (`Prefer: return=...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    /// No body.
    Minimal,
    /// The resource as stored (the default).
    Representation,
    /// An OperationOutcome (the warnings, or "no issues").
    Outcome,
}

/// The `return` preference of a request.
pub fn prefer(headers: &HeaderMap) -> Return {
    for v in headers.get_all("prefer") {
        for part in v.to_str().unwrap_or_default().split([',', ';']) {
            match part.trim() {
                "return=minimal" => return Return::Minimal,
                "return=OperationOutcome" => return Return::Outcome,
                "return=representation" => return Return::Representation,
                _ => {}
            }
        }
    }
    Return::Representation
}

/// The service base URL as the client reached it (`http://host/fhir`).
pub fn base_url(headers: &HeaderMap, state: &AppState) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .map_or_else(|| state.config().listen.to_string(), str::to_string);
    format!("http://{host}/fhir")
}

/// Refuses a type that is not a concrete R4 resource type (404, as for an unknown endpoint).
fn known_type(t: &str) -> Result<(), ApiError> {
    if write::is_concrete_type(t) {
        Ok(())
    } else {
        Err(ApiError::UnknownType(t.to_string()))
    }
}

/// Adds `ETag` and `Last-Modified` for a version.
fn version_headers(response: &mut Response, s: &Stored) {
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", s.version_id)) {
        h.insert(header::ETAG, v);
    }
    if let Some(v) = time::http_date(&s.last_updated).and_then(|d| HeaderValue::from_str(&d).ok()) {
        h.insert(header::LAST_MODIFIED, v);
    }
}

/// A FHIR JSON response.
pub fn fhir_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    r
}

/// The response to a write: status, `ETag`, `Last-Modified`, `Location` (for created and
/// updated versions), and the body `Prefer` asks for.
fn write_response(done: &Done, ret: Return, base: &str) -> Response {
    let body = match (ret, &done.stored) {
        (Return::Minimal, _) => String::new(),
        (Return::Outcome, _) => done
            .warnings
            .clone()
            .unwrap_or_else(|| crate::validate::operation_outcome(&[])),
        (Return::Representation, Some(s)) => s.content.clone().unwrap_or_default(),
        (Return::Representation, None) => String::new(),
    };
    let mut response = if body.is_empty() {
        done.status.into_response()
    } else {
        fhir_response(done.status, body)
    };
    if let Some(s) = &done.stored {
        version_headers(&mut response, s);
        if !s.deleted {
            let location = format!("{base}/{}", write::version_ref(s));
            if let Ok(v) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, v);
            }
        }
    }
    response
}

/// `found` when the caller may see it: another site's data is hidden from site clients (see
/// `auth::tenancy`), and so is what the token's narrowed read scopes do not reach
/// (`auth::narrow`); a delete, which has no content, is judged by the version before it.
async fn visible(
    state: &AppState,
    found: Option<crate::store::Stored>,
) -> Result<Option<crate::store::Stored>, ApiError> {
    let Some(s) = found else { return Ok(None) };
    let judged = if s.deleted {
        state
            .store()
            .vread(&s.res_type, &s.id, s.version_id - 1)
            .await?
    } else {
        None
    };
    let judged = judged.as_ref().unwrap_or(&s);
    let ok = crate::auth::tenancy::visible(judged) && crate::auth::narrow::readable(judged);
    Ok(ok.then_some(s))
}

/// `GET /fhir/{type}/{id}`.
pub async fn read(
    State(state): State<AppState>,
    Path((res_type, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    known_type(&res_type)?;
    let stored = state.store().read(&res_type, &id).await?;
    stored_response(visible(&state, stored).await?, &res_type, &id)
}

/// `GET /fhir/{type}/{id}/_history/{vid}`.
pub async fn vread(
    State(state): State<AppState>,
    Path((res_type, id, vid)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    known_type(&res_type)?;
    let Ok(version) = vid.parse::<i64>() else {
        return Err(ApiError::NotFound(format!(
            "{res_type}/{id} has no version {vid}"
        )));
    };
    let stored = state.store().vread(&res_type, &id, version).await?;
    match stored {
        None => Err(ApiError::NotFound(format!(
            "{res_type}/{id} has no version {vid}"
        ))),
        found => stored_response(visible(&state, found).await?, &res_type, &id),
    }
}

fn stored_response(stored: Option<Stored>, res_type: &str, id: &str) -> Result<Response, ApiError> {
    match stored {
        None => Err(ApiError::NotFound(format!("{res_type}/{id} is not known"))),
        Some(s) if s.deleted => {
            let mut r = ApiError::Gone(format!(
                "{res_type}/{id} was deleted (version {})",
                s.version_id
            ))
            .into_response();
            version_headers(&mut r, &s);
            Ok(r)
        }
        Some(s) => {
            let mut r = fhir_response(StatusCode::OK, s.content.clone().unwrap_or_default());
            version_headers(&mut r, &s);
            Ok(r)
        }
    }
}

/// The parts of a write request every write handler needs.
pub struct WriteRequest {
    state: AppState,
    ctx: WriteCtx,
    headers: HeaderMap,
    body: Option<FhirBody>,
}

impl WriteRequest {
    fn new(
        state: AppState,
        id: &RequestId,
        method: &Method,
        uri: &Uri,
        headers: HeaderMap,
        body: Result<FhirBody, ApiError>,
    ) -> Result<WriteRequest, Box<(AppState, WriteCtx, ApiError)>> {
        match body {
            Ok(b) => Ok(WriteRequest {
                ctx: WriteCtx::new(id, method, uri, b.content_type.clone(), &b.bytes),
                state,
                headers,
                body: Some(b),
            }),
            Err(e) => {
                let ctx = WriteCtx::new(id, method, uri, None, &[]);
                Err(Box::new((state, ctx, e)))
            }
        }
    }

    /// A write that carries no body (a delete).
    fn without_body(
        state: AppState,
        id: &RequestId,
        method: &Method,
        uri: &Uri,
        headers: HeaderMap,
    ) -> WriteRequest {
        WriteRequest {
            ctx: WriteCtx::new(id, method, uri, None, &[]),
            state,
            headers,
            body: None,
        }
    }

    /// The body text, checked as FHIR JSON of `url_type` and validated.
    async fn resource(&self, url_type: &str) -> Result<Checked, ApiError> {
        let Some(body) = &self.body else {
            return Err(ApiError::BadRequest("no body".into()));
        };
        if let Some(e) = &body.refused {
            return Err(ApiError::UnsupportedMediaType(e.to_string()));
        }
        write::check(&self.state, body.text()?, Some(url_type)).await
    }

    /// Commits `op` (recorded in the ledger) and answers as a create, update or patch
    /// does: status, `Location`/`ETag` and the body `Prefer` asks for.
    async fn commit(&self, op: &Op) -> Result<Response, ApiError> {
        let done = write::commit(&self.state, op, Some(&self.ctx)).await?;
        Ok(write_response(
            &done,
            prefer(&self.headers),
            &base_url(&self.headers, &self.state),
        ))
    }

    /// Runs the handler body and keeps a failure in the ledger.
    async fn finish(self, result: Result<Response, ApiError>) -> Response {
        match result {
            Ok(r) => r,
            Err(e) => write::reject(&self.state, &self.ctx, e)
                .await
                .into_response(),
        }
    }
}

/// Keeps a request whose body could not even be read in the ledger.
async fn refuse(state: AppState, ctx: WriteCtx, e: ApiError) -> Response {
    write::reject(&state, &ctx, e).await.into_response()
}

/// `POST /fhir/{type}`: create, conditional with `If-None-Exist`.
pub async fn create(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    Path(res_type): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<FhirBody, ApiError>,
) -> Response {
    let req = match WriteRequest::new(state, &rid, &method, &uri, headers, body) {
        Ok(r) => r,
        Err(failed) => {
            let (s, c, e) = *failed;
            return refuse(s, c, e).await;
        }
    };
    let result = async {
        known_type(&res_type)?;
        let resource = req.resource(&res_type).await?;
        let criteria = match req.headers.get("if-none-exist") {
            Some(v) => Some(Criteria::parse(&write::target_criteria(
                &req.state,
                &res_type,
                v.to_str()
                    .map_err(|_| ApiError::BadRequest("If-None-Exist is not ASCII text".into()))?,
            )?)?),
            None => None,
        };
        // A de-identified Patient has its pseudonymous id: sent again, it is the same
        // Patient (an update that changes nothing), not a new one.
        let pseudo_id = resource
            .json
            .get("id")
            .and_then(Json::as_str)
            .filter(|_| res_type == "Patient" && req.state.config().pseudonymize.is_some())
            .map(str::to_string);
        let op = match (pseudo_id, criteria) {
            (Some(id), None) => Op::Update {
                resource,
                id,
                if_match: None,
            },
            (_, criteria) => Op::Create {
                resource,
                id: write::new_id(),
                criteria,
            },
        };
        req.commit(&op).await
    }
    .await;
    req.finish(result).await
}

/// `PUT /fhir/{type}/{id}`: update, or create with the client's id.
pub async fn update(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    Path((res_type, id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<FhirBody, ApiError>,
) -> Response {
    let req = match WriteRequest::new(state, &rid, &method, &uri, headers, body) {
        Ok(r) => r,
        Err(failed) => {
            let (s, c, e) = *failed;
            return refuse(s, c, e).await;
        }
    };
    let result = async {
        known_type(&res_type)?;
        let if_match = write::if_match(&req.headers)?;
        let resource = req.resource(&res_type).await?;
        let id = write::target_id(&req.state, &res_type, id);
        match resource.json.get("id").and_then(Json::as_str) {
            Some(body_id) if body_id == id => {}
            Some(body_id) => {
                return Err(ApiError::BadRequest(format!(
                    "the id {body_id} in the body does not match the id {id} in the URL"
                )))
            }
            None => {
                return Err(ApiError::BadRequest(
                    "an update needs the resource's id in the body, equal to the id in the URL"
                        .into(),
                ))
            }
        }
        let op = Op::Update {
            resource,
            id,
            if_match,
        };
        req.commit(&op).await
    }
    .await;
    req.finish(result).await
}

/// `PUT /fhir/{type}?criteria`: conditional update.
#[allow(clippy::too_many_arguments)]
pub async fn conditional_update(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    Path(res_type): Path<String>,
    RawQuery(query): RawQuery,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<FhirBody, ApiError>,
) -> Response {
    let req = match WriteRequest::new(state, &rid, &method, &uri, headers, body) {
        Ok(r) => r,
        Err(failed) => {
            let (s, c, e) = *failed;
            return refuse(s, c, e).await;
        }
    };
    let result = async {
        known_type(&res_type)?;
        let criteria = Criteria::parse(&write::target_criteria(
            &req.state,
            &res_type,
            query.as_deref().unwrap_or_default(),
        )?)?;
        let if_match = write::if_match(&req.headers)?;
        let resource = req.resource(&res_type).await?;
        let op = Op::ConditionalUpdate {
            resource,
            criteria,
            if_match,
            new_id: write::new_id(),
        };
        req.commit(&op).await
    }
    .await;
    req.finish(result).await
}

/// `DELETE /fhir/{type}/{id}`: records a delete version (204 whether or not there was
/// anything to delete, as FHIR allows).
pub async fn delete(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    Path((res_type, id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let req = WriteRequest::without_body(state, &rid, &method, &uri, headers);
    let result = async {
        known_type(&res_type)?;
        let if_match = write::if_match(&req.headers)?;
        let id = write::target_id(&req.state, &res_type, id);
        let op = Op::Delete {
            res_type,
            id,
            if_match,
        };
        let done = write::commit(&req.state, &op, Some(&req.ctx)).await?;
        Ok(delete_response(&done))
    }
    .await;
    req.finish(result).await
}

/// `DELETE /fhir/{type}?criteria`: conditional delete in `single` mode. One match is
/// deleted as a version (204 with its `ETag`); none is 200 with an informational
/// OperationOutcome (nothing to delete); several are 412. `If-Match` applies to the match.
pub async fn conditional_delete(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    Path(res_type): Path<String>,
    RawQuery(query): RawQuery,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let req = WriteRequest::without_body(state, &rid, &method, &uri, headers);
    let result = async {
        known_type(&res_type)?;
        let criteria = Criteria::parse(&write::target_criteria(
            &req.state,
            &res_type,
            query.as_deref().unwrap_or_default(),
        )?)?;
        let if_match = write::if_match(&req.headers)?;
        let op = Op::ConditionalDelete {
            res_type,
            criteria,
            if_match,
        };
        let done = write::commit(&req.state, &op, Some(&req.ctx)).await?;
        Ok(delete_response(&done))
    }
    .await;
    req.finish(result).await
}

/// The response to a delete: 204 with the delete version's `ETag`, or, when nothing was
/// deleted and the operation says why, 200 with that OperationOutcome.
fn delete_response(done: &Done) -> Response {
    match (&done.stored, &done.warnings) {
        (None, Some(outcome)) => fhir_response(StatusCode::OK, outcome.clone()),
        (stored, _) => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            if let Some(s) = stored {
                version_headers(&mut r, s);
            }
            r
        }
    }
}

/// The media type of JSON Patch documents (RFC 6902).
pub const JSON_PATCH: &str = "application/json-patch+json";

/// Reads a PATCH body: a JSON Patch sent as `application/json-patch+json` (or as a JSON
/// array under a JSON media type), or a FHIRPath Patch (a Parameters resource, sent as
/// FHIR JSON).
///
/// # Errors
/// 415 for other media types, 400 for malformed JSON or patches.
pub fn read_patch(body: &FhirBody, max_depth: usize) -> Result<super::patch::PatchDoc, ApiError> {
    let essence = body
        .content_type
        .as_deref()
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if essence != JSON_PATCH {
        if let Some(e) = &body.refused {
            return Err(ApiError::UnsupportedMediaType(format!(
                "{e}; a JSON Patch is sent as {JSON_PATCH}"
            )));
        }
    }
    let json = Json::parse(body.text()?, max_depth)?;
    patch_document(&json)
}

/// A patch from a parsed body: a Parameters resource is a FHIRPath Patch, anything else
/// must be a JSON Patch (an array of operations).
///
/// # Errors
/// 400 for malformed patches.
pub fn patch_document(json: &Json) -> Result<super::patch::PatchDoc, ApiError> {
    if json.get("resourceType").and_then(Json::as_str) == Some("Parameters") {
        return Ok(super::patch::PatchDoc::FhirPath(
            super::fhirpath_patch::FhirPathPatch::from_parameters(json)?,
        ));
    }
    Ok(super::patch::PatchDoc::Json(
        super::patch::Patch::from_json(json)?,
    ))
}

/// `PATCH /fhir/{type}/{id}`: a JSON Patch or FHIRPath Patch of the current version,
/// stored as an update.
#[allow(clippy::too_many_arguments)]
pub async fn patch(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    Path((res_type, id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<FhirBody, ApiError>,
) -> Response {
    patch_request(
        state,
        &rid,
        &method,
        &uri,
        headers,
        body,
        &res_type,
        Ok(Selector::Id(id)),
    )
    .await
}

/// `PATCH /fhir/{type}?criteria`: conditional patch of the one resource the criteria
/// match (404 for none, 412 for several).
#[allow(clippy::too_many_arguments)]
pub async fn conditional_patch(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    Path(res_type): Path<String>,
    RawQuery(query): RawQuery,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<FhirBody, ApiError>,
) -> Response {
    let target = write::target_criteria(&state, &res_type, query.as_deref().unwrap_or_default())
        .and_then(|q| Criteria::parse(&q))
        .map(Selector::Criteria);
    patch_request(state, &rid, &method, &uri, headers, body, &res_type, target).await
}

#[allow(clippy::too_many_arguments)]
async fn patch_request(
    state: AppState,
    rid: &RequestId,
    method: &Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Result<FhirBody, ApiError>,
    res_type: &str,
    target: Result<Selector, ApiError>,
) -> Response {
    let req = match WriteRequest::new(state, rid, method, uri, headers, body) {
        Ok(r) => r,
        Err(failed) => {
            let (s, c, e) = *failed;
            return refuse(s, c, e).await;
        }
    };
    let result = async {
        known_type(res_type)?;
        let target = match target? {
            Selector::Id(id) => Selector::Id(write::target_id(&req.state, res_type, id)),
            other => other,
        };
        let if_match = write::if_match(&req.headers)?;
        let Some(body) = &req.body else {
            return Err(ApiError::BadRequest("no body".into()));
        };
        let patch = read_patch(body, req.state.config().max_depth)?;
        let op = Op::Patch {
            res_type: res_type.to_string(),
            target,
            patch,
            if_match,
        };
        req.commit(&op).await
    }
    .await;
    req.finish(result).await
}

/// `GET /fhir/{type}?params`: the search interaction.
pub async fn search(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(res_type): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    known_type(&res_type)?;
    search_bundle(
        &state,
        &headers,
        &res_type,
        query.as_deref().unwrap_or_default(),
    )
    .await
}

/// `POST /fhir/{type}/_search`: the search interaction with the parameters in a
/// form-encoded body (and the query).
pub async fn search_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(res_type): Path<String>,
    RawQuery(query): RawQuery,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    known_type(&res_type)?;
    let form = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the search form is not UTF-8".into()))?;
    let mut all = query.unwrap_or_default();
    if !form.trim().is_empty() {
        if !all.is_empty() {
            all.push('&');
        }
        all.push_str(form.trim());
    }
    search_bundle(&state, &headers, &res_type, &all).await
}

/// Whether the client asked for strict handling of unknown parameters.
fn strict(headers: &HeaderMap) -> bool {
    headers.get_all("prefer").iter().any(|v| {
        v.to_str()
            .unwrap_or_default()
            .split([',', ';'])
            .any(|p| p.trim() == "handling=strict")
    })
}

/// A `searchset` Bundle of the current resources of `res_type` matching `query`, in the
/// order of `_sort` (by id without it), one page of `_count` from the position of `_cursor`
/// (keyset paging: `self`, `next` and `previous` links carry the position), with the
/// `_include`d and `_revinclude`d resources after the matches. Site clients see only their
/// site's resources, matches and included alike: the store filters on the owning site, so
/// pages are full and totals exact.
async fn search_bundle(
    state: &AppState,
    headers: &HeaderMap,
    res_type: &str,
    query: &str,
) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut parsed = crate::search::parse(res_type, &pairs).map_err(ApiError::BadRequest)?;
    if strict(headers) && !parsed.unknown.is_empty() {
        return Err(ApiError::BadRequest(parsed.unknown.join("; ")));
    }
    // A token narrowed by search parameters finds only what they match.
    crate::auth::narrow::narrow_search(res_type, &mut parsed);
    if let Some(c) = &parsed.shape.cursor {
        if c.at.keys.len() != parsed.shape.sort.len() {
            return Err(ApiError::BadRequest(format!(
                "the {} does not belong to this _sort",
                crate::search::CURSOR_PARAM
            )));
        }
    }
    let site = crate::auth::tenancy::site_filter();
    let site = site.as_deref();
    if let Some(site) = site {
        parsed.restrict_chains(site);
    }
    let store = state.store();
    let count = parsed.count;
    let base = base_url(headers, state);
    let cursor = parsed.shape.cursor.clone();
    let before = cursor.as_ref().is_some_and(|c| c.before);
    let (page, total, more) = if parsed.summary_count {
        (
            Vec::new(),
            Some(store.search_count(res_type, &parsed, site).await?),
            false,
        )
    } else {
        let mut page = store.search(res_type, &parsed, site, count + 1).await?;
        let more = page.len() > usize::try_from(count).unwrap_or(usize::MAX);
        page.truncate(usize::try_from(count).unwrap_or(usize::MAX));
        if before {
            page.reverse();
        }
        let total = if parsed.total {
            Some(store.search_count(res_type, &parsed, site).await?)
        } else if cursor.is_none() && !more && (parsed.offset == 0 || !page.is_empty()) {
            Some(parsed.offset + i64::try_from(page.len()).unwrap_or(0))
        } else {
            None
        };
        (page, total, more)
    };
    let link = |cursor: Option<&crate::search::Cursor>, offset: i64| {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &parsed.used {
            ser.append_pair(k, v);
        }
        ser.append_pair("_count", &count.to_string());
        if let Some(c) = cursor {
            ser.append_pair(
                crate::search::CURSOR_PARAM,
                &crate::search::encode_cursor(c),
            );
        } else if offset > 0 {
            ser.append_pair("_offset", &offset.to_string());
        }
        format!("{base}/{res_type}?{}", ser.finish())
    };
    let at = |p: &crate::search::Position, before: bool, inclusive: bool| crate::search::Cursor {
        before,
        inclusive,
        at: p.clone(),
    };
    let mut links = vec![("self", link(cursor.as_ref(), parsed.offset))];
    if cursor.is_some() || parsed.offset > 0 {
        links.push(("first", link(None, 0)));
    }
    if !parsed.summary_count && count > 0 {
        let first = page.first().map(|(_, p)| p);
        let last = page.last().map(|(_, p)| p);
        // next: after the last of this page, when more follow (always after a page reached
        // backwards: the page it came from follows).
        match (last, &cursor) {
            (Some(l), _) if more || before => {
                links.push(("next", link(Some(&at(l, false, false)), 0)));
            }
            // Nothing before the cursor any more: next starts at its position.
            (None, Some(c)) if c.before => {
                links.push(("next", link(Some(&at(&c.at, false, true)), 0)));
            }
            _ => {}
        }
        // previous: before the first of this page, when a page precedes it.
        let preceded = if before {
            more
        } else {
            cursor.is_some() || parsed.offset > 0
        };
        if preceded {
            match (first, &cursor) {
                (Some(f), _) => links.push(("previous", link(Some(&at(f, true, false)), 0))),
                (None, Some(c)) if !c.before => {
                    links.push(("previous", link(Some(&at(&c.at, true, true)), 0)));
                }
                _ => {}
            }
        }
    }
    let mut out = String::from("{\"resourceType\":\"Bundle\",\"type\":\"searchset\"");
    if let Some(t) = total {
        out.push_str(",\"total\":");
        out.push_str(&t.to_string());
    }
    out.push_str(",\"link\":[");
    for (i, (relation, url)) in links.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"relation\":");
        write_str(&mut out, relation);
        out.push_str(",\"url\":");
        write_str(&mut out, url);
        out.push('}');
    }
    out.push_str("],\"entry\":[");
    let mut first = true;
    let mut entry = |out: &mut String, v: &Stored, content: &str, mode: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str("{\"fullUrl\":");
        write_str(out, &format!("{base}/{}/{}", v.res_type, v.id));
        out.push_str(",\"resource\":");
        out.push_str(content);
        out.push_str(",\"search\":{\"mode\":");
        write_str(out, mode);
        out.push_str("}}");
    };
    for (v, _) in &page {
        let Some(c) = &v.content else { continue };
        entry(
            &mut out,
            v,
            &crate::search::subset(&v.res_type, c, &parsed.shape),
            "match",
        );
    }
    for v in included(state, res_type, &parsed, &page, site).await? {
        if let Some(c) = &v.content {
            entry(&mut out, &v, c, "include");
        }
    }
    if !parsed.unknown.is_empty() {
        if !first {
            out.push(',');
        }
        out.push_str("{\"resource\":{\"resourceType\":\"OperationOutcome\",\"issue\":[");
        for (i, u) in parsed.unknown.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"severity\":\"warning\",\"code\":\"not-supported\",\"diagnostics\":");
            write_str(&mut out, &format!("{u} (ignored)"));
            out.push('}');
        }
        out.push_str("]},\"search\":{\"mode\":\"outcome\"}}");
    }
    out.push_str("]}");
    Ok(fhir_response(StatusCode::OK, out))
}

/// The resources `_include`d and `_revinclude`d by a page of matches (of `site` only, when
/// given), each once and none that is a match, in the order of the parameters.
async fn included(
    state: &AppState,
    res_type: &str,
    parsed: &crate::search::Parsed,
    page: &[(Stored, crate::search::Position)],
    site: Option<&str>,
) -> Result<Vec<Stored>, ApiError> {
    let shape = &parsed.shape;
    if page.is_empty() || (shape.include.is_empty() && shape.revinclude.is_empty()) {
        return Ok(Vec::new());
    }
    let mut seen: std::collections::HashSet<(String, String)> = page
        .iter()
        .map(|(v, _)| (v.res_type.clone(), v.id.clone()))
        .collect();
    let ids: Vec<&str> = page.iter().map(|(v, _)| v.id.as_str()).collect();
    let mut out = Vec::new();
    for inc in &shape.include {
        for v in state.store().included(inc, &ids, site).await? {
            if seen.insert((v.res_type.clone(), v.id.clone())) {
                out.push(v);
            }
        }
    }
    for inc in &shape.revinclude {
        if inc.target.as_deref().is_some_and(|t| t != res_type) {
            continue;
        }
        let targets: Vec<String> = ids.iter().map(|id| format!("{res_type}/{id}")).collect();
        for v in state.store().revincluded(inc, &targets, site).await? {
            if seen.insert((v.res_type.clone(), v.id.clone())) {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// `GET /fhir/_history`.
pub async fn history_system(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    history(&state, &headers, None, None, query.as_deref()).await
}

/// `GET /fhir/{type}/_history`.
pub async fn history_type(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(res_type): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    known_type(&res_type)?;
    history(&state, &headers, Some(&res_type), None, query.as_deref()).await
}

/// `GET /fhir/{type}/{id}/_history`.
pub async fn history_instance(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((res_type, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    known_type(&res_type)?;
    history(
        &state,
        &headers,
        Some(&res_type),
        Some(&id),
        query.as_deref(),
    )
    .await
}

/// A `history` Bundle, newest version first; `_count` (default 100, at most 1000) and
/// `_since` (an instant) are honoured.
async fn history(
    state: &AppState,
    headers: &HeaderMap,
    res_type: Option<&str>,
    id: Option<&str>,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let mut count: i64 = 100;
    let mut since: Option<String> = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "_count" => {
                count = v
                    .parse::<i64>()
                    .ok()
                    .filter(|c| *c >= 0)
                    .ok_or_else(|| ApiError::BadRequest(format!("_count={v} is not a count")))?
                    .min(1000);
            }
            "_since" => {
                if time::http_date(&v).is_none() {
                    return Err(ApiError::BadRequest(format!(
                        "_since={v} is not an instant (YYYY-MM-DDThh:mm:ssZ)"
                    )));
                }
                since = Some(v.into_owned());
            }
            _ => {}
        }
    }
    if let (Some(t), Some(i)) = (res_type, id) {
        if visible(state, state.store().read(t, i).await?)
            .await?
            .is_none()
        {
            return Err(ApiError::NotFound(format!("{t}/{i} is not known")));
        }
    }
    // Site clients get their site's versions only (a delete counts as the site of the
    // version it deleted), filtered by the store, so a page holds `_count` entries when
    // there are that many.
    let site = crate::auth::tenancy::site_filter();
    let versions = state
        .store()
        .history(res_type, id, since.as_deref(), count, site.as_deref())
        .await?;
    // Versions outside the token's narrowed scopes are left out too.
    let mut versions = versions;
    versions.retain(|v| crate::auth::narrow::in_history(v, id.is_some()));
    let base = base_url(headers, state);
    let mut out = String::from("{\"resourceType\":\"Bundle\",\"type\":\"history\",\"total\":");
    out.push_str(&versions.len().to_string());
    out.push_str(",\"entry\":[");
    for (i, v) in versions.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"fullUrl\":");
        write_str(&mut out, &format!("{base}/{}/{}", v.res_type, v.id));
        if let Some(c) = &v.content {
            out.push_str(",\"resource\":");
            out.push_str(c);
        }
        let (method, url, status) = if v.deleted {
            (
                "DELETE",
                format!("{}/{}", v.res_type, v.id),
                "204 No Content",
            )
        } else if v.version_id == 1 {
            ("POST", v.res_type.clone(), "201 Created")
        } else {
            ("PUT", format!("{}/{}", v.res_type, v.id), "200 OK")
        };
        out.push_str(",\"request\":{\"method\":");
        write_str(&mut out, method);
        out.push_str(",\"url\":");
        write_str(&mut out, &url);
        out.push_str("},\"response\":{\"status\":");
        write_str(&mut out, status);
        out.push_str(",\"etag\":");
        write_str(&mut out, &format!("W/\"{}\"", v.version_id));
        out.push_str(",\"lastModified\":");
        write_str(&mut out, &v.last_updated);
        out.push_str("}}");
    }
    out.push_str("]}");
    Ok(fhir_response(StatusCode::OK, out))
}

/// `POST /fhir/{type}/$validate`.
pub async fn validate_type(
    State(state): State<AppState>,
    Path(res_type): Path<String>,
    body: Result<FhirBody, ApiError>,
) -> Result<Response, ApiError> {
    validate(&state, &res_type, body?).await
}

/// `POST /fhir/{type}/{id}/$validate`.
pub async fn validate_instance(
    State(state): State<AppState>,
    Path((res_type, _id)): Path<(String, String)>,
    body: Result<FhirBody, ApiError>,
) -> Result<Response, ApiError> {
    validate(&state, &res_type, body?).await
}

/// `$validate`: the resource (the body, or the `resource` parameter of a Parameters body)
/// checked as a write would check it; the answer is 200 with an OperationOutcome listing
/// every issue, conformant or not. Nothing is stored or recorded.
async fn validate(state: &AppState, res_type: &str, body: FhirBody) -> Result<Response, ApiError> {
    known_type(res_type)?;
    if let Some(e) = body.refused {
        return Err(e);
    }
    let text = body.text()?;
    let json = Json::parse(text, state.config().max_depth)?;
    let text = if json.get("resourceType").and_then(Json::as_str) == Some("Parameters") {
        json.get("parameter")
            .map(Json::items)
            .unwrap_or_default()
            .iter()
            .find(|p| p.get("name").and_then(Json::as_str) == Some("resource"))
            .and_then(|p| p.get("resource"))
            .map(Json::to_text)
            .ok_or_else(|| {
                ApiError::BadRequest("the Parameters body has no resource parameter".into())
            })?
    } else {
        text.to_string()
    };
    let inner = Json::parse(&text, state.config().max_depth)?;
    let t = write::resource_type(&inner)?;
    if t != res_type {
        return Err(ApiError::BadRequest(format!(
            "the resourceType {t} does not match the type {res_type} in the URL"
        )));
    }
    let issues = match write::validate(state, text).await {
        Ok(issues) | Err(ApiError::Invalid(issues)) => issues,
        Err(e) => return Err(e),
    };
    Ok(fhir_response(
        StatusCode::OK,
        crate::validate::operation_outcome(&issues),
    ))
}
