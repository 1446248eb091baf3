//! `POST /fhir` with a `batch` or `transaction` Bundle (FHIR R4 http.html#transaction).
//!
//! A transaction is all or nothing: every entry is validated first (any error refuses the
//! whole Bundle with every issue, located at `Bundle.entry[i].resource...`), then one store
//! transaction runs the entries in FHIR's order — DELETE, POST, PUT, GET — after resolving
//! the ids of conditional creates and updates, rewriting references to `fullUrl`s
//! (`urn:uuid:...` included) and conditional references (`Patient?identifier=s|v`) to the
//! resources' real ids. Any failure rolls everything back. A lost race runs it all again.
//!
//! A batch runs each entry on its own (same order) and reports each entry's outcome.

use super::body::FhirBody;
use super::error::ApiError;
use super::patch::PatchDoc;
use super::rest::{base_url, fhir_response, prefer, Return};
use super::write::{self, Checked, Criteria, Done, Op, Selector, WriteCtx};
use super::{AppState, RequestId};
use crate::model::json::{write_str, Json};
use crate::validate::{Issue, Severity};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use std::borrow::Cow;
use std::collections::HashMap;

/// One entry as planned: its position, what to do, and its `fullUrl`.
#[derive(Debug, Clone)]
struct Planned {
    index: usize,
    op: Op,
    full_url: Option<String>,
}

/// `POST /fhir`.
pub async fn bundle(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<FhirBody, ApiError>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let ctx = WriteCtx::new(&rid, &method, &uri, None, &[]);
            return write::reject(&state, &ctx, e).await.into_response();
        }
    };
    let ctx = WriteCtx::new(&rid, &method, &uri, body.content_type.clone(), &body.bytes);
    let result = process(&state, &ctx, &headers, body).await;
    match result {
        Ok(r) => r,
        Err(e) => write::reject(&state, &ctx, e).await.into_response(),
    }
}

async fn process(
    state: &AppState,
    ctx: &WriteCtx,
    headers: &HeaderMap,
    body: FhirBody,
) -> Result<Response, ApiError> {
    if let Some(e) = body.refused {
        return Err(e);
    }
    let json = Json::parse(body.text()?, state.config().max_depth)?;
    if json.get("resourceType").and_then(Json::as_str) != Some("Bundle") {
        return Err(ApiError::BadRequest(
            "POST /fhir takes a Bundle of type batch or transaction".into(),
        ));
    }
    let json = write::deidentify(state, json)?;
    let kind = json
        .get("type")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string();
    let base = base_url(headers, state);
    let ret = prefer(headers);
    match kind.as_str() {
        "transaction" => transaction(state, ctx, json, &base, ret).await,
        "batch" => batch(state, ctx, json, &base, ret).await,
        other => Err(ApiError::BadRequest(format!(
            "POST /fhir takes a batch or transaction Bundle, not type {other:?}"
        ))),
    }
}

/// The parts of `entry.request.url`: type, id, version or query.
struct Target {
    res_type: String,
    id: Option<String>,
    version: Option<i64>,
    query: Option<String>,
}

fn parse_url(url: &str) -> Result<Target, ApiError> {
    if url.contains("://") {
        return Err(ApiError::NotSupported(format!(
            "entry request url {url:?}: give it relative to the base (Patient/123)"
        )));
    }
    let url = url.trim_start_matches('/');
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (url, None),
    };
    let parts: Vec<&str> = path.split('/').collect();
    let bad = || ApiError::BadRequest(format!("entry request url {url:?} is not understood"));
    let res_type = (*parts.first().ok_or_else(bad)?).to_string();
    if !write::is_concrete_type(&res_type) {
        return Err(ApiError::UnknownType(res_type));
    }
    let (id, version) = match parts.as_slice() {
        [_] => (None, None),
        [_, id] => (Some((*id).to_string()), None),
        [_, id, "_history", v] => (
            Some((*id).to_string()),
            Some(v.parse::<i64>().map_err(|_| bad())?),
        ),
        _ => return Err(bad()),
    };
    Ok(Target {
        res_type,
        id,
        version,
        query,
    })
}

/// An entry as read from the Bundle, before validation.
struct RawEntry {
    method: String,
    target: Target,
    full_url: Option<String>,
    resource: Option<Json>,
    if_none_exist: Option<String>,
    if_match: Option<i64>,
}

fn read_entry(i: usize, entry: &mut Json) -> Result<RawEntry, ApiError> {
    let at = |m: String| ApiError::BadRequest(format!("Bundle.entry[{i}]: {m}"));
    let request = entry
        .get("request")
        .ok_or_else(|| at("no request".into()))?;
    let method = request
        .get("method")
        .and_then(Json::as_str)
        .ok_or_else(|| at("no request.method".into()))?
        .to_string();
    let url = request
        .get("url")
        .and_then(Json::as_str)
        .ok_or_else(|| at("no request.url".into()))?;
    let target = parse_url(url).map_err(|e| match e {
        ApiError::BadRequest(m) => at(m),
        other => other,
    })?;
    let if_match = match request.get("ifMatch").and_then(Json::as_str) {
        Some(v) => {
            let inner = v.trim().trim_start_matches("W/").trim_matches('"');
            Some(
                inner
                    .parse::<i64>()
                    .map_err(|_| at(format!("ifMatch {v:?} is not a version ETag")))?,
            )
        }
        None => None,
    };
    Ok(RawEntry {
        method,
        target,
        full_url: entry
            .get("fullUrl")
            .and_then(Json::as_str)
            .map(str::to_string),
        if_none_exist: request
            .get("ifNoneExist")
            .and_then(Json::as_str)
            .map(str::to_string),
        if_match,
        resource: entry
            .get_mut("resource")
            .map(|r| std::mem::replace(r, Json::Null)),
    })
}

/// Validates an entry's resource (on the calling thread); issues are located inside the
/// Bundle.
fn check_entry(
    state: &AppState,
    i: usize,
    resource: Option<Json>,
    res_type: &str,
) -> Result<Checked, ApiError> {
    let Some(resource) = resource else {
        return Err(ApiError::BadRequest(format!(
            "Bundle.entry[{i}] has no resource"
        )));
    };
    match write::check_parsed(state, resource, None, Some(res_type)) {
        Ok(c) => Ok(c),
        Err(ApiError::Invalid(issues)) => Err(ApiError::Invalid(relocate(i, issues))),
        Err(ApiError::BadRequest(m)) => {
            Err(ApiError::BadRequest(format!("Bundle.entry[{i}]: {m}")))
        }
        Err(e) => Err(e),
    }
}

/// Moves issue locations of an entry's resource under `Bundle.entry[i].resource`; their
/// line and column referred to the entry alone, so they are dropped.
fn relocate(i: usize, issues: Vec<Issue>) -> Vec<Issue> {
    issues
        .into_iter()
        .map(|mut issue| {
            let rest = issue
                .location
                .split_once('.')
                .map_or("", |(_, r)| r)
                .to_string();
            issue.location = if rest.is_empty() {
                format!("Bundle.entry[{i}].resource")
            } else {
                format!("Bundle.entry[{i}].resource.{rest}")
            };
            issue.line = None;
            issue.column = None;
            issue
        })
        .collect()
}

/// Turns an entry into an operation (validating its resource, on the calling thread).
fn plan_entry(state: &AppState, i: usize, e: RawEntry) -> Result<Planned, ApiError> {
    let t = e.target;
    let op = match (e.method.as_str(), &t.id, &t.query) {
        ("POST", None, None) => Op::Create {
            resource: check_entry(state, i, e.resource, &t.res_type)?,
            id: write::new_id(),
            criteria: e
                .if_none_exist
                .as_deref()
                .map(Criteria::parse)
                .transpose()?,
        },
        ("PUT", Some(id), None) => {
            let resource = check_entry(state, i, e.resource, &t.res_type)?;
            if resource.json.get("id").and_then(Json::as_str) != Some(id.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "Bundle.entry[{i}]: the resource's id must equal the id {id} in request.url"
                )));
            }
            Op::Update {
                resource,
                id: id.clone(),
                if_match: e.if_match,
            }
        }
        ("PUT", None, Some(q)) => Op::ConditionalUpdate {
            resource: check_entry(state, i, e.resource, &t.res_type)?,
            criteria: Criteria::parse(q)?,
            if_match: e.if_match,
            new_id: write::new_id(),
        },
        ("DELETE", None, Some(q)) => Op::ConditionalDelete {
            res_type: t.res_type.clone(),
            criteria: Criteria::parse(q)?,
            if_match: e.if_match,
        },
        ("PATCH", id, query) => {
            let target = match (id, query) {
                (Some(id), None) => Selector::Id(id.clone()),
                (None, Some(q)) => Selector::Criteria(Criteria::parse(q)?),
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "Bundle.entry[{i}]: PATCH needs Type/id or Type?criteria"
                    )))
                }
            };
            Op::Patch {
                res_type: t.res_type.clone(),
                target,
                patch: entry_patch(i, e.resource.as_ref(), state.config().max_depth)?,
                if_match: e.if_match,
            }
        }
        ("DELETE", Some(id), None) => Op::Delete {
            res_type: t.res_type.clone(),
            id: id.clone(),
            if_match: e.if_match,
        },
        ("GET" | "HEAD", Some(id), None) => Op::Read {
            res_type: t.res_type.clone(),
            id: id.clone(),
            version: t.version,
        },
        (m, _, _) => {
            return Err(ApiError::NotSupported(format!(
                "Bundle.entry[{i}]: {m} {} is not supported in a Bundle (search is not offered)",
                t.res_type
            )))
        }
    };
    Ok(Planned {
        index: i,
        op,
        full_url: e.full_url,
    })
}

/// The patch of a PATCH entry (R4 http.html#patch): a Binary whose `contentType` is
/// `application/json-patch+json` and whose `data` is the JSON Patch in base64, or a
/// Parameters resource (FHIRPath Patch).
fn entry_patch(i: usize, resource: Option<&Json>, max_depth: usize) -> Result<PatchDoc, ApiError> {
    use base64::Engine as _;
    let at = |m: String| ApiError::BadRequest(format!("Bundle.entry[{i}]: {m}"));
    let located = |e: ApiError| match e {
        ApiError::BadRequest(m) => at(m),
        other => other,
    };
    let needs =
        "a PATCH entry needs a Binary holding a JSON Patch or a Parameters (FHIRPath Patch)";
    let Some(resource) = resource else {
        return Err(at(needs.into()));
    };
    match resource.get("resourceType").and_then(Json::as_str) {
        Some("Binary") => {}
        Some("Parameters") => return super::rest::patch_document(resource).map_err(located),
        _ => return Err(at(needs.into())),
    }
    let content_type = resource
        .get("contentType")
        .and_then(Json::as_str)
        .unwrap_or_default();
    if content_type.split(';').next().map(str::trim) != Some(super::rest::JSON_PATCH) {
        return Err(at(format!(
            "the Binary's contentType is {content_type:?}, not {}",
            super::rest::JSON_PATCH
        )));
    }
    let data = resource
        .get("data")
        .and_then(Json::as_str)
        .ok_or_else(|| at("the Binary has no data".into()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| at(format!("the Binary's data is not base64: {e}")))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| at("the Binary's data is not UTF-8 text".into()))?;
    let json = Json::parse(text, max_depth)?;
    match super::rest::patch_document(&json).map_err(located)? {
        PatchDoc::Json(p) => Ok(PatchDoc::Json(p)),
        PatchDoc::FhirPath(_) => Err(at(
            "a Binary of application/json-patch+json holds a JSON Patch, not Parameters".into(),
        )),
    }
}

/// FHIR's processing order of transaction entries.
fn phase(op: &Op) -> u8 {
    match op {
        Op::Delete { .. } | Op::ConditionalDelete { .. } => 0,
        Op::Create { .. } => 1,
        Op::Update { .. } | Op::ConditionalUpdate { .. } | Op::Patch { .. } => 2,
        Op::Read { .. } => 3,
    }
}

async fn transaction(
    state: &AppState,
    ctx: &WriteCtx,
    bundle: Json,
    base: &str,
    ret: Return,
) -> Result<Response, ApiError> {
    let items = commit_transaction(state, ctx, bundle).await?;
    Ok(response_bundle("transaction-response", &items, base, ret))
}

/// Runs a transaction Bundle: every entry checked and validated, then one store
/// transaction with the ledger entry of `ctx` (retried on lost races); the result of each
/// entry in Bundle order. `/ingest` and `import` send their mapped Bundles through here.
///
/// # Errors
/// Any entry's failure: nothing is stored.
pub(crate) async fn commit_transaction(
    state: &AppState,
    ctx: &WriteCtx,
    bundle: Json,
) -> Result<Vec<Result<Done, ApiError>>, ApiError> {
    let entries = bundle_entries(bundle);
    let count = entries.len();
    // Checking and validating every entry, and making ready the creates the Bundle alone
    // resolves, is CPU work: one blocking task for the whole Bundle, outside the store
    // transaction (which, on SQLite, holds the one writer).
    let st = state.clone();
    let (planned, prepared) = write::on_blocking(move || plan_transaction(&st, entries)).await??;
    // The ledger payload is compressed and sealed once, before the write lock is taken.
    let sealed = state
        .store()
        .seal_payload(&ctx.submission(StatusCode::OK, None, Vec::new()))?;
    let mut attempt = 0;
    let results = loop {
        attempt += 1;
        let run = async {
            let mut tx = state.store().begin().await?;
            let results = run_transaction(state, &mut tx, &planned, &prepared).await?;
            let versions = results
                .iter()
                .filter(|(_, d)| d.written)
                .filter_map(|(_, d)| d.stored.as_ref().map(write::version_ref))
                .collect();
            let submission = tx
                .record_sealed(&ctx.record(StatusCode::OK, None, versions), &sealed)
                .await?;
            let touched: Vec<crate::audit::Touched> = results
                .iter()
                .filter_map(|(_, d)| {
                    d.stored.as_ref().map(|s| crate::audit::Touched {
                        stored: s,
                        status: d.status.as_u16(),
                        written: d.written,
                    })
                })
                .collect();
            crate::audit::in_transaction(
                &mut tx,
                Some(("transaction", "E")),
                StatusCode::OK.as_u16(),
                &touched,
                Some(submission),
                ctx.mapping.as_deref(),
            )
            .await?;
            drop(touched);
            tx.commit().await?;
            crate::audit::mark_recorded();
            Ok::<_, ApiError>(results)
        }
        .await;
        match run {
            Err(ApiError::Store(e)) if e.is_retryable() && attempt < 8 => continue,
            Err(ApiError::Store(e)) if e.is_retryable() => {
                return Err(ApiError::Conflict(
                    "concurrent writes kept conflicting with this transaction; try again".into(),
                ))
            }
            other => break other?,
        }
    };
    let mut ordered: Vec<Option<Done>> = vec![None; count];
    for (i, d) in results {
        if let Some(slot) = ordered.get_mut(i) {
            *slot = Some(d);
        }
    }
    let items: Vec<Result<Done, ApiError>> = ordered
        .into_iter()
        .map(|d| d.ok_or_else(|| ApiError::Internal("entry without result".into())))
        .collect();
    Ok(items)
}

/// A Bundle's `entry` list, taken out of it.
fn bundle_entries(bundle: Json) -> Vec<Json> {
    match bundle {
        Json::Object(members) => members
            .into_iter()
            .find(|(k, _)| k == "entry")
            .map(|(_, v)| match v {
                Json::Array(items) => items,
                _ => Vec::new(),
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Plans a transaction's entries (each checked and validated; any error refuses the whole
/// Bundle with every issue), refuses two writes of one `Type/id`, sorts them in processing
/// order and makes ready the creates whose references the Bundle alone resolves
/// ([`prepare_static`]).
fn plan_transaction(
    state: &AppState,
    entries: Vec<Json>,
) -> Result<(Vec<Planned>, HashMap<usize, write::Prepared>), ApiError> {
    let mut planned = Vec::with_capacity(entries.len());
    let mut issues: Vec<Issue> = Vec::new();
    for (i, mut entry) in entries.into_iter().enumerate() {
        let raw = read_entry(i, &mut entry)?;
        match plan_entry(state, i, raw) {
            Ok(p) => planned.push(p),
            Err(ApiError::Invalid(found)) => issues.extend(found),
            Err(e) => return Err(e),
        }
    }
    if issues.iter().any(|i| i.severity.is_error()) {
        return Err(ApiError::Invalid(issues));
    }
    let mut seen = std::collections::HashSet::new();
    for p in &planned {
        if let Some(key) = touched(&p.op) {
            if !seen.insert(key.clone()) {
                return Err(ApiError::BadRequest(format!(
                    "the transaction writes {key} more than once"
                )));
            }
        }
    }
    planned.sort_by_key(|p| (phase(&p.op), p.index));
    let prepared = prepare_static(&mut planned)?;
    Ok((planned, prepared))
}

/// The creates (without `ifNoneExist`) whose every reference the transaction would leave
/// as written or point at an entry whose id needs no lookup (a create without
/// `ifNoneExist`, an update by id), made ready with those references rewritten, by entry
/// index. The transaction resolves such a resource to exactly this, so it uses them as
/// they are; their JSON is moved out of `planned` (the transaction reads only their type
/// and warnings). Any other create (a conditional reference, a `fullUrl` of a conditional
/// entry) is rewritten and made ready inside the transaction as before.
///
/// # Errors
/// A create [`write::prepare_create`] refuses (a token's narrowed scopes): the
/// transaction would fail with it, so it fails now, before anything is written.
fn prepare_static(planned: &mut [Planned]) -> Result<HashMap<usize, write::Prepared>, ApiError> {
    let mut known: HashMap<String, String> = HashMap::new();
    let mut looked_up: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for p in planned.iter() {
        let Some(full) = p.full_url.as_deref() else {
            continue;
        };
        match &p.op {
            Op::Create {
                resource,
                id,
                criteria: None,
            }
            | Op::Update { resource, id, .. } => {
                known.insert(full.to_string(), format!("{}/{id}", resource.res_type));
            }
            Op::Create { .. } | Op::ConditionalUpdate { .. } => {
                looked_up.insert(full);
            }
            _ => {}
        }
    }
    for full in looked_up {
        known.remove(full);
    }
    let mut out = HashMap::new();
    for p in planned.iter_mut() {
        let Op::Create {
            resource,
            id,
            criteria: None,
        } = &mut p.op
        else {
            continue;
        };
        let mut refs = Vec::new();
        collect_references(&resource.json, &mut refs);
        let mut resolved: HashMap<String, String> = HashMap::new();
        let mut static_only = true;
        for r in refs {
            if let Some(target) = known.get(r.as_str()) {
                resolved.insert(r, target.clone());
            } else if r.starts_with("urn:uuid:") || r.starts_with("urn:oid:") || r.contains('?') {
                static_only = false;
                break;
            }
        }
        if !static_only {
            continue;
        }
        let mut json = std::mem::replace(&mut resource.json, Json::Null);
        let tree = resource.tree.take();
        if !resolved.is_empty() {
            replace_references(&mut json, &resolved);
        }
        let ready = match tree {
            Some(mut tree) => {
                if !resolved.is_empty() {
                    replace_tree_references(&mut tree, &resolved);
                }
                write::prepare_create_parsed(&resource.res_type, json, &tree, id)?
            }
            None => write::prepare_create(&resource.res_type, json, id)?,
        };
        out.insert(p.index, ready);
    }
    // The trees of the other entries are not used: the transaction reads their JSON.
    for p in planned.iter_mut() {
        match &mut p.op {
            Op::Create { resource, .. }
            | Op::Update { resource, .. }
            | Op::ConditionalUpdate { resource, .. } => resource.tree = None,
            _ => {}
        }
    }
    Ok(out)
}

/// [`replace_references`] on an element tree: every `reference` primitive (of a
/// Reference, at any depth, in extensions and contained resources too) that `resolved`
/// maps is replaced, as the JSON's `reference` members are.
fn replace_tree_references(
    element: &mut crate::model::Element,
    resolved: &HashMap<String, String>,
) {
    use crate::model::element::{Scalar, Value};
    let info = element.info;
    for prop in &mut element.props {
        let is_reference = info
            .elements
            .get(usize::from(prop.element))
            .is_some_and(|e| &*e.name == "reference");
        for value in &mut prop.values {
            match value {
                Value::Primitive(p) => {
                    if is_reference {
                        if let Some(Scalar::String(s)) = &p.value {
                            if let Some(new) = resolved.get(&**s) {
                                p.value = Some(Scalar::String(new.as_str().into()));
                            }
                        }
                    }
                    if let Some(extras) = &mut p.extras {
                        for e in &mut extras.extension {
                            replace_tree_references(e, resolved);
                        }
                    }
                }
                Value::Element(e) => replace_tree_references(e, resolved),
            }
        }
    }
}

/// The `Type/id` an update or delete with an explicit id writes.
fn touched(op: &Op) -> Option<String> {
    match op {
        Op::Update { resource, id, .. } => Some(format!("{}/{id}", resource.res_type)),
        Op::Delete { res_type, id, .. } => Some(format!("{res_type}/{id}")),
        Op::Patch {
            res_type,
            target: Selector::Id(id),
            ..
        } => Some(format!("{res_type}/{id}")),
        _ => None,
    }
}

/// Runs the planned entries (sorted in processing order) in `tx`; returns (entry index,
/// result) pairs.
async fn run_transaction(
    state: &AppState,
    tx: &mut crate::store::Tx,
    planned: &[Planned],
    prepared: &HashMap<usize, write::Prepared>,
) -> Result<Vec<(usize, Done)>, ApiError> {
    let mut results = Vec::with_capacity(planned.len());
    // 1. DELETE.
    for p in planned.iter().filter(|p| phase(&p.op) == 0) {
        results.push((p.index, write::apply(state, tx, &p.op).await?));
    }
    // 2. Resolve the ids of creates and conditional updates; map fullUrls to them.
    let mut map: HashMap<String, String> = HashMap::new();
    let mut writes: Vec<(usize, Cow<'_, Op>)> = Vec::new();
    for p in planned.iter().filter(|p| matches!(phase(&p.op), 1 | 2)) {
        let (res_type, id, op) = match &p.op {
            Op::Create {
                resource,
                id,
                criteria,
            } => {
                let found = match criteria {
                    Some(c) => c.matches(tx, &resource.res_type).await?,
                    None => Vec::new(),
                };
                match found.as_slice() {
                    [] => (
                        resource.res_type.clone(),
                        id.clone(),
                        Some(Cow::Borrowed(&p.op)),
                    ),
                    [one] => {
                        let existing = tx.read(&resource.res_type, one).await?;
                        if existing
                            .as_ref()
                            .is_some_and(|e| !crate::auth::narrow::readable(e))
                        {
                            return Err(ApiError::Forbidden(format!(
                                "Bundle.entry[{}]: ifNoneExist matches a {} outside the token's narrowed scopes",
                                p.index, resource.res_type
                            )));
                        }
                        results.push((
                            p.index,
                            Done {
                                status: StatusCode::OK,
                                stored: existing,
                                written: false,
                                warnings: None,
                            },
                        ));
                        (resource.res_type.clone(), one.clone(), None)
                    }
                    many => {
                        return Err(ApiError::MultipleMatches(format!(
                            "Bundle.entry[{}]: ifNoneExist matches {} resources",
                            p.index,
                            many.len()
                        )))
                    }
                }
            }
            Op::Update { resource, id, .. } => (
                resource.res_type.clone(),
                id.clone(),
                Some(Cow::Borrowed(&p.op)),
            ),
            Op::ConditionalUpdate {
                resource,
                criteria,
                if_match,
                new_id,
            } => {
                let found = criteria.matches(tx, &resource.res_type).await?;
                let body_id = resource.json.get("id").and_then(Json::as_str);
                let id = match found.as_slice() {
                    [] => body_id.unwrap_or(new_id).to_string(),
                    [one] => {
                        if body_id.is_some_and(|b| b != one) {
                            return Err(ApiError::BadRequest(format!(
                                "Bundle.entry[{}]: the criteria match {}/{one} but the resource has id {}",
                                p.index,
                                resource.res_type,
                                body_id.unwrap_or_default()
                            )));
                        }
                        one.clone()
                    }
                    many => {
                        return Err(ApiError::MultipleMatches(format!(
                            "Bundle.entry[{}]: the criteria match {} resources",
                            p.index,
                            many.len()
                        )))
                    }
                };
                let op = Op::Update {
                    resource: resource.clone(),
                    id: id.clone(),
                    if_match: *if_match,
                };
                (resource.res_type.clone(), id, Some(Cow::Owned(op)))
            }
            Op::Patch { .. } => {
                // Patches run after the creates and updates before them, in entry order.
                writes.push((p.index, Cow::Borrowed(&p.op)));
                continue;
            }
            _ => continue,
        };
        if let Some(full) = &p.full_url {
            map.insert(full.clone(), format!("{res_type}/{id}"));
        }
        if let Some(op) = op {
            writes.push((p.index, op));
        }
    }
    // 3. Rewrite references, then write (creates first: `writes` keeps the order). Creates
    // (their ids fresh, from the server) are written together, in one multi-row insert per
    // table, before the first other write.
    let mut creates: Vec<Create<'_>> = Vec::new();
    for (index, op) in writes {
        if !matches!(*op, Op::Create { .. }) && !creates.is_empty() {
            flush_creates(tx, &mut creates, &mut results).await?;
        }
        let op = match op {
            Cow::Borrowed(Op::Create { resource, id, .. }) => {
                let ready = match prepared.get(&index) {
                    Some(ready) => Cow::Borrowed(ready),
                    None => {
                        let rewritten = rewrite(tx, index, resource.clone(), &map).await?;
                        Cow::Owned(write::prepare_create(
                            &rewritten.res_type,
                            rewritten.json,
                            id,
                        )?)
                    }
                };
                creates.push((index, resource, id, ready));
                continue;
            }
            op => op.into_owned(),
        };
        let op = match op {
            Op::Update {
                resource,
                id,
                if_match,
            } => Op::Update {
                resource: rewrite(tx, index, resource, &map).await?,
                id,
                if_match,
            },
            Op::Patch {
                res_type,
                target,
                patch,
                if_match,
            } => Op::Patch {
                res_type,
                target,
                patch: rewrite_patch(tx, index, patch, &map).await?,
                if_match,
            },
            other => other,
        };
        results.push((index, write::apply(state, tx, &op).await?));
    }
    flush_creates(tx, &mut creates, &mut results).await?;
    // 4. GET.
    for p in planned.iter().filter(|p| phase(&p.op) == 3) {
        results.push((p.index, write::apply(state, tx, &p.op).await?));
    }
    Ok(results)
}

/// A create gathered for [`flush_creates`]: entry index, the resource as checked, its
/// fresh id, and the resource made ready to store.
type Create<'a> = (usize, &'a Checked, &'a str, Cow<'a, write::Prepared>);

/// Writes the creates gathered so far ([`write::create_fresh`]) and adds their results.
async fn flush_creates(
    tx: &mut crate::store::Tx,
    creates: &mut Vec<Create<'_>>,
    results: &mut Vec<(usize, Done)>,
) -> Result<(), ApiError> {
    let batch: Vec<(usize, &Checked, &str, &write::Prepared)> = creates
        .iter()
        .map(|(i, r, id, ready)| (*i, *r, *id, ready.as_ref()))
        .collect();
    results.extend(write::create_fresh(tx, &batch).await?);
    creates.clear();
    Ok(())
}

/// Replaces, in a resource, references to `fullUrl`s of the Bundle by `Type/id`, and
/// conditional references by the one resource they match.
async fn rewrite(
    tx: &mut crate::store::Tx,
    index: usize,
    mut resource: Checked,
    map: &HashMap<String, String>,
) -> Result<Checked, ApiError> {
    let mut refs = Vec::new();
    collect_references(&resource.json, &mut refs);
    let resolved = resolve(tx, index, refs, map).await?;
    if !resolved.is_empty() {
        replace_references(&mut resource.json, &resolved);
    }
    Ok(resource)
}

/// The same rewriting inside the values a patch adds or replaces (`reference` members of
/// the JSON it carries).
async fn rewrite_patch(
    tx: &mut crate::store::Tx,
    index: usize,
    mut patch: PatchDoc,
    map: &HashMap<String, String>,
) -> Result<PatchDoc, ApiError> {
    let mut refs = Vec::new();
    for v in patch.values_mut() {
        collect_references(v, &mut refs);
    }
    let resolved = resolve(tx, index, refs, map).await?;
    if !resolved.is_empty() {
        for v in patch.values_mut() {
            replace_references(v, &resolved);
        }
    }
    Ok(patch)
}

/// What each of `refs` becomes: the `Type/id` of a Bundle entry's `fullUrl`, or of the one
/// resource a conditional reference matches; other references stay as written.
async fn resolve(
    tx: &mut crate::store::Tx,
    index: usize,
    refs: Vec<String>,
    map: &HashMap<String, String>,
) -> Result<HashMap<String, String>, ApiError> {
    let mut resolved: HashMap<String, String> = HashMap::new();
    for r in refs {
        if resolved.contains_key(&r) {
            continue;
        }
        if let Some(target) = map.get(&r) {
            resolved.insert(r, target.clone());
        } else if r.starts_with("urn:uuid:") || r.starts_with("urn:oid:") {
            return Err(ApiError::BadRequest(format!(
                "Bundle.entry[{index}]: the reference {r} names no entry of the Bundle"
            )));
        } else if let Some((t, q)) = r.split_once('?') {
            if !write::is_concrete_type(t) {
                continue;
            }
            let found = Criteria::parse(q)?.matches(tx, t).await?;
            match found.as_slice() {
                [one] => {
                    resolved.insert(r.clone(), format!("{t}/{one}"));
                }
                [] => {
                    return Err(ApiError::PreconditionFailed(format!(
                        "Bundle.entry[{index}]: the conditional reference {r} matches no resource"
                    )))
                }
                many => {
                    return Err(ApiError::MultipleMatches(format!(
                        "Bundle.entry[{index}]: the conditional reference {r} matches {} resources",
                        many.len()
                    )))
                }
            }
        }
    }
    Ok(resolved)
}

fn collect_references(json: &Json, out: &mut Vec<String>) {
    match json {
        Json::Object(members) => {
            for (k, v) in members {
                match (k.as_str(), v) {
                    ("reference", Json::String(s)) => out.push(s.clone()),
                    _ => collect_references(v, out),
                }
            }
        }
        Json::Array(items) => items.iter().for_each(|v| collect_references(v, out)),
        _ => {}
    }
}

fn replace_references(json: &mut Json, resolved: &HashMap<String, String>) {
    match json {
        Json::Object(members) => {
            for (k, v) in members.iter_mut() {
                match v {
                    Json::String(s) if k == "reference" => {
                        if let Some(new) = resolved.get(s.as_str()) {
                            *s = new.clone();
                        }
                    }
                    _ => replace_references(v, resolved),
                }
            }
        }
        Json::Array(items) => items
            .iter_mut()
            .for_each(|v| replace_references(v, resolved)),
        _ => {}
    }
}

async fn batch(
    state: &AppState,
    ctx: &WriteCtx,
    bundle: Json,
    base: &str,
    ret: Return,
) -> Result<Response, ApiError> {
    // Each entry's write is audited in its own transaction; the batch itself is queued.
    crate::audit::set_subtype("batch");
    let entries = bundle_entries(bundle);
    let count = entries.len();
    let st = state.clone();
    let mut planned: Vec<(usize, Result<Op, ApiError>)> = write::on_blocking(move || {
        entries
            .into_iter()
            .enumerate()
            .map(|(i, mut entry)| {
                let op =
                    read_entry(i, &mut entry).and_then(|raw| plan_entry(&st, i, raw).map(|p| p.op));
                (i, op)
            })
            .collect()
    })
    .await?;
    planned.sort_by_key(|(i, op)| (op.as_ref().map_or(0, phase), *i));
    let mut items: Vec<Option<Result<Done, ApiError>>> = (0..count).map(|_| None).collect();
    let mut versions = Vec::new();
    let mut problems = Vec::new();
    for (i, op) in planned {
        let result = match op {
            Ok(op) => write::commit(state, &op, None).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(d) if d.written => versions.extend(d.stored.iter().map(write::version_ref)),
            Ok(_) => {}
            Err(e) => problems.push(Issue {
                severity: Severity::Error,
                kind: crate::validate::IssueType::Processing,
                message: format!("entry {i}: {} {e}", e.status().as_u16()),
                location: format!("Bundle.entry[{i}]"),
                line: None,
                column: None,
                rule: None,
            }),
        }
        if let Some(slot) = items.get_mut(i) {
            *slot = Some(result);
        }
    }
    let outcome = (!problems.is_empty()).then(|| crate::validate::operation_outcome(&problems));
    if let Err(e) = state
        .store()
        .record(&ctx.submission(StatusCode::OK, outcome, versions))
        .await
    {
        tracing::error!(error = %e, "could not record a batch in the ledger");
    }
    let items: Vec<Result<Done, ApiError>> = items
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(ApiError::Internal("entry without result".into()))))
        .collect();
    Ok(response_bundle("batch-response", &items, base, ret))
}

fn status_text(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    )
}

/// The response Bundle: one entry per request entry, in request order.
pub(crate) fn response_bundle(
    kind: &str,
    items: &[Result<Done, ApiError>],
    base: &str,
    ret: Return,
) -> Response {
    let mut out = String::from("{\"resourceType\":\"Bundle\",\"type\":");
    write_str(&mut out, kind);
    out.push_str(",\"entry\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('{');
        match item {
            Ok(done) => {
                if let Some(s) = done.stored.as_ref().filter(|s| !s.deleted) {
                    out.push_str("\"fullUrl\":");
                    write_str(&mut out, &format!("{base}/{}/{}", s.res_type, s.id));
                    if ret == Return::Representation {
                        if let Some(c) = &s.content {
                            out.push_str(",\"resource\":");
                            out.push_str(c);
                        }
                    }
                    out.push(',');
                }
                out.push_str("\"response\":{\"status\":");
                write_str(&mut out, &status_text(done.status));
                if let Some(s) = &done.stored {
                    if !s.deleted {
                        out.push_str(",\"location\":");
                        write_str(&mut out, &write::version_ref(s));
                    }
                    out.push_str(",\"etag\":");
                    write_str(&mut out, &format!("W/\"{}\"", s.version_id));
                    out.push_str(",\"lastModified\":");
                    write_str(&mut out, &s.last_updated);
                }
                if let Some(w) = &done.warnings {
                    out.push_str(",\"outcome\":");
                    out.push_str(w);
                }
                out.push('}');
            }
            Err(e) => {
                out.push_str("\"response\":{\"status\":");
                write_str(&mut out, &status_text(e.status()));
                out.push_str(",\"outcome\":");
                out.push_str(&e.operation_outcome());
                out.push('}');
            }
        }
        out.push('}');
    }
    out.push_str("]}");
    fhir_response(StatusCode::OK, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Principal, Role};

    /// Index rows in a canonical order, to compare two lists as multisets.
    fn sorted(rows: &[crate::search::IndexRow]) -> Vec<String> {
        let mut out: Vec<String> = rows.iter().map(|r| format!("{r:?}")).collect();
        out.sort();
        out
    }

    /// The tree path of a create (references rewritten in the validated tree, the site
    /// label added as a row) gives the JSON and the index rows of the general path
    /// (rewritten JSON labelled, written out, read again and indexed), on every resource of
    /// two Synthea Bundles, for a site client and for a caller without a site.
    #[test]
    fn a_create_indexed_from_its_tree_is_indexed_as_from_its_json() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/samples/synthea");
        let Ok(list) = std::fs::read_dir(&dir) else {
            eprintln!("SKIPPED: {} is missing", dir.display());
            return;
        };
        let mut files: Vec<_> = list.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        let site = Principal {
            client_id: "site-client".into(),
            site: "NL01".into(),
            role: Role::Site,
            scopes: crate::auth::scopes::Scopes::parse("system/*.cruds").unwrap_or_default(),
        };
        let mut compared = 0;
        for file in files.iter().take(2) {
            let text = std::fs::read_to_string(file).expect("sample");
            let bundle = Json::parse(&text, 256).expect("bundle");
            let entries = bundle.get("entry").map(Json::items).unwrap_or_default();
            let resolved: HashMap<String, String> = entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    let full = e.get("fullUrl")?.as_str()?;
                    let t = e.get("resource")?.get("resourceType")?.as_str()?;
                    Some((full.to_string(), format!("{t}/new-{i}")))
                })
                .collect();
            for (i, e) in entries.iter().enumerate() {
                let Some(resource) = e.get("resource") else {
                    continue;
                };
                let res_type = resource
                    .get("resourceType")
                    .and_then(Json::as_str)
                    .unwrap_or_default();
                let id = format!("new-{i}");
                for caller in [Some(site.clone()), None] {
                    crate::auth::blocking_as(caller, || {
                        let mut tree = crate::model::parse(&resource.to_text()).expect("tree");
                        let mut json = resource.clone();
                        replace_references(&mut json, &resolved);
                        replace_tree_references(&mut tree, &resolved);
                        let general = write::prepare_create(res_type, json.clone(), &id)
                            .expect("general path");
                        let parsed = write::prepare_create_parsed(res_type, json, &tree, &id)
                            .expect("tree path");
                        assert_eq!(general.json.to_text(), parsed.json.to_text());
                        assert_eq!(
                            sorted(&general.index),
                            sorted(&parsed.index),
                            "{} entry {i}",
                            file.display()
                        );
                    });
                    compared += 1;
                }
            }
        }
        assert!(compared > 100, "only {compared} resources compared");
    }
}
