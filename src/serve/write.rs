//! What every write shares, single resource or Bundle entry:
//! - [`check`]: the body is JSON of a known resource type matching the URL, and it
//!   validates (errors refuse it with every issue; warnings travel with it);
//! - [`Op`] and [`apply`]: one interaction against an open store transaction, with the
//!   FHIR semantics of conditional create and update, `If-Match` and update-as-create;
//! - [`commit`]: an operation in its own transaction, retried when a concurrent writer
//!   won a race, with its ledger entry written in the same transaction;
//! - [`WriteCtx`]: the request as the ledger keeps it, and [`reject`] for requests that
//!   failed (kept in the ledger too).

use super::error::ApiError;
use super::{AppState, RequestId};
use crate::auth::narrow;
use crate::auth::scopes::Interaction;
use crate::model::json::Json;
use crate::store::{Expect, StoreError, Stored, Submission, Tx};
use crate::validate::{has_errors, Issue};
use axum::http::{HeaderMap, Method, StatusCode, Uri};

/// How often a transaction that lost a race is run again before giving up with 409.
const MAX_ATTEMPTS: usize = 8;

/// A resource that passed [`check`].
#[derive(Debug, Clone)]
pub struct Checked {
    /// Its type.
    pub res_type: String,
    /// Its JSON.
    pub json: Json,
    /// Warnings and information from validation (never errors).
    pub warnings: Vec<Issue>,
    /// The element tree validation read `json` into (`None` when it did not read
    /// cleanly), for a caller that indexes the resource without reading it again; dropped
    /// once used.
    pub tree: Option<crate::model::Element>,
}

impl Checked {
    /// The warnings as an OperationOutcome, or `None` when there are none.
    pub fn warnings_outcome(&self) -> Option<String> {
        (!self.warnings.is_empty()).then(|| crate::validate::operation_outcome(&self.warnings))
    }
}

/// Reads `text` as a resource and validates it. `url_type` is the type the URL names; the
/// `resourceType` must match it. The work after parsing ([`check_parsed`]) runs on the
/// blocking pool (validation is CPU work).
///
/// # Errors
/// [`ApiError::Malformed`] (400) for text that is not JSON or nests too deeply;
/// [`ApiError::BadRequest`] (400) for a missing, unknown or mismatched `resourceType`;
/// [`ApiError::Invalid`] (422) when validation finds an error.
pub async fn check(
    state: &AppState,
    text: &str,
    url_type: Option<&str>,
) -> Result<Checked, ApiError> {
    let json = Json::parse(text, state.config().max_depth)?;
    // Without pseudonymization what is validated is the text as sent.
    let text = state
        .config()
        .pseudonymize
        .is_none()
        .then(|| text.to_string());
    let st = state.clone();
    let url_type = url_type.map(str::to_string);
    on_blocking(move || check_parsed(&st, json, text, url_type.as_deref())).await?
}

/// Runs the CPU work `f` (checking, validating) on the blocking pool as the request's
/// caller ([`crate::auth::current`] stays what it is on the request's task).
///
/// # Errors
/// [`ApiError::Internal`] when the task panicked.
pub async fn on_blocking<R, F>(f: F) -> Result<R, ApiError>
where
    R: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
{
    let caller = crate::auth::current();
    tokio::task::spawn_blocking(move || crate::auth::blocking_as(caller, f))
        .await
        .map_err(|e| ApiError::Internal(format!("validation task: {e}")))
}

/// The checks of [`check`] on a resource already parsed, on the calling thread: known
/// `resourceType` matching `url_type`, de-identification, validation. `text` is the
/// resource's text when it is what is validated (no pseudonymization), else it is written
/// from `json`.
///
/// # Errors
/// As [`check`], apart from malformed JSON.
pub fn check_parsed(
    state: &AppState,
    json: Json,
    text: Option<String>,
    url_type: Option<&str>,
) -> Result<Checked, ApiError> {
    let res_type = resource_type(&json)?;
    refuse_append_only(&res_type)?;
    if let Some(t) = url_type {
        if t != res_type {
            return Err(ApiError::BadRequest(format!(
                "the resourceType {res_type} does not match the type {t} in the URL"
            )));
        }
    }
    // De-identified before validation: what is validated is what is stored.
    let (json, text) = match &state.config().pseudonymize {
        Some(p) => {
            let json = p.apply(&site(), json)?;
            let text = json.to_text();
            (json, text)
        }
        None => {
            let text = text.unwrap_or_else(|| json.to_text());
            (json, text)
        }
    };
    let validator = state.validator();
    let parsed = crate::model::parse_with(&text, &validator.parse_options());
    let issues = validator.validate_parsed(&parsed, &text, &[]);
    if has_errors(&issues) {
        return Err(ApiError::Invalid(issues));
    }
    let tree = parsed.resource.filter(|_| parsed.issues.is_empty());
    Ok(Checked {
        res_type,
        json,
        warnings: issues,
        tree,
    })
}

/// The caller's site, which keys its pseudonyms (`local` without a caller).
pub fn site() -> String {
    crate::auth::current().map_or_else(|| "local".to_string(), |p| p.site)
}

/// De-identifies a whole Bundle (its Patient entries, requests and references) before its
/// entries are checked one by one; as sent when pseudonymization is off.
///
/// # Errors
/// [`ApiError::Invalid`] naming the location the policy cannot make safe.
pub fn deidentify(state: &AppState, json: Json) -> Result<Json, ApiError> {
    match &state.config().pseudonymize {
        Some(p) => Ok(p.apply(&site(), json)?),
        None => Ok(json),
    }
}

/// The id of a write's URL as stored: a Patient's id from the site becomes its
/// pseudonymous id.
pub fn target_id(state: &AppState, res_type: &str, id: String) -> String {
    match &state.config().pseudonymize {
        Some(p) if res_type == "Patient" => p.patient_id(&site(), &id),
        _ => id,
    }
}

/// Conditional criteria of a write as matched: Patient identifiers and ids pseudonymized.
///
/// # Errors
/// [`ApiError::Invalid`] for criteria that cannot be pseudonymized.
pub fn target_criteria(state: &AppState, res_type: &str, query: &str) -> Result<String, ApiError> {
    match &state.config().pseudonymize {
        Some(p) => Ok(p.criteria(&site(), res_type, query)?),
        None => Ok(query.to_string()),
    }
}

/// Validates resource text on the blocking pool (validation is CPU work); returns the
/// non-error issues, or [`ApiError::Invalid`] with every issue.
///
/// # Errors
/// [`ApiError::Invalid`] when any issue is an error.
pub async fn validate(state: &AppState, text: String) -> Result<Vec<Issue>, ApiError> {
    let st = state.clone();
    let issues = tokio::task::spawn_blocking(move || st.validator().validate_json(&text, &[]))
        .await
        .map_err(|e| ApiError::Internal(format!("validation task: {e}")))?;
    if has_errors(&issues) {
        return Err(ApiError::Invalid(issues));
    }
    Ok(issues)
}

/// The `resourceType` of a JSON object, checked to be a concrete R4 resource type.
///
/// # Errors
/// [`ApiError::BadRequest`] when it is missing or not an R4 resource type.
pub fn resource_type(json: &Json) -> Result<String, ApiError> {
    let Json::Object(_) = json else {
        return Err(ApiError::BadRequest("the body is not a JSON object".into()));
    };
    let Some(t) = json.get("resourceType").and_then(Json::as_str) else {
        return Err(ApiError::BadRequest("the body has no resourceType".into()));
    };
    if !is_concrete_type(t) {
        return Err(ApiError::BadRequest(format!(
            "{t} is not a FHIR R4 resource type"
        )));
    }
    Ok(t.to_string())
}

/// Refuses writes of the records only the gateway writes (`AuditEvent`, `Provenance`).
///
/// # Errors
/// [`ApiError::MethodNotAllowed`] (405) for those types.
pub fn refuse_append_only(res_type: &str) -> Result<(), ApiError> {
    if crate::audit::event::append_only(res_type) {
        return Err(ApiError::MethodNotAllowed(format!(
            "{res_type} is append-only: the gateway records it itself, and no request may \
             create, update, patch or delete one"
        )));
    }
    Ok(())
}

/// The `restful-interaction` code and AuditEvent action of an operation.
pub fn write_kind(op: &Op) -> (&'static str, &'static str) {
    match op {
        Op::Create { .. } => ("create", "C"),
        Op::Update { .. } | Op::ConditionalUpdate { .. } => ("update", "U"),
        Op::Patch { .. } => ("patch", "U"),
        Op::Delete { .. } | Op::ConditionalDelete { .. } => ("delete", "D"),
        Op::Read { .. } => ("read", "R"),
    }
}

/// The resource type an operation writes (`None` for a read).
fn written_type(op: &Op) -> Option<&str> {
    match op {
        Op::Create { resource, .. }
        | Op::Update { resource, .. }
        | Op::ConditionalUpdate { resource, .. } => Some(&resource.res_type),
        Op::Patch { res_type, .. }
        | Op::Delete { res_type, .. }
        | Op::ConditionalDelete { res_type, .. } => Some(res_type),
        Op::Read { .. } => None,
    }
}

/// Whether `t` names a concrete R4 resource type.
pub fn is_concrete_type(t: &str) -> bool {
    t != "Resource"
        && t != "DomainResource"
        && t.starts_with(|c: char| c.is_ascii_uppercase())
        && crate::model::schema::is_resource_type(t)
}

/// The criteria of a conditional interaction. Until search exists, the server matches on
/// `identifier` (`system|value`, `|value` for no system, or `value` for any system) and
/// `_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Criteria {
    /// `identifier=[system|]value`: `system` `None` matches any system, `Some("")` none.
    Identifier {
        /// The system.
        system: Option<String>,
        /// The value.
        value: String,
    },
    /// `_id=value`.
    Id(String),
}

impl Criteria {
    /// Parses a query string (`identifier=http://x%7C123`).
    ///
    /// # Errors
    /// [`ApiError::NotSupported`] for other parameters or several of them;
    /// [`ApiError::BadRequest`] for no parameter.
    pub fn parse(query: &str) -> Result<Criteria, ApiError> {
        let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        match params.as_slice() {
            [] => Err(ApiError::BadRequest(
                "conditional interaction without criteria".into(),
            )),
            [(k, v)] if k == "identifier" && !v.is_empty() => Ok(match v.split_once('|') {
                Some((s, val)) => Criteria::Identifier {
                    system: Some(s.to_string()),
                    value: val.to_string(),
                },
                None => Criteria::Identifier {
                    system: None,
                    value: v.clone(),
                },
            }),
            [(k, v)] if k == "_id" && !v.is_empty() => Ok(Criteria::Id(v.clone())),
            _ => Err(ApiError::NotSupported(format!(
                "conditional criteria {query:?} are not supported: use identifier=[system|]value or _id=id"
            ))),
        }
    }

    /// The lock key: every criteria that could match the same resources of `res_type`
    /// share it (the identifier value, whatever the system).
    fn lock_key(&self, res_type: &str) -> String {
        match self {
            Criteria::Identifier { value, .. } => format!("{res_type}?identifier={value}"),
            Criteria::Id(id) => format!("{res_type}/{id}"),
        }
    }

    /// Locks the criteria for the rest of the transaction and returns the ids of the
    /// current resources of `res_type` that match.
    ///
    /// # Errors
    /// On store failure.
    pub async fn matches(&self, tx: &mut Tx, res_type: &str) -> Result<Vec<String>, ApiError> {
        tx.lock(&self.lock_key(res_type)).await?;
        Ok(match self {
            Criteria::Identifier { system, value } => {
                let ids = tx
                    .find_by_identifier(res_type, system.as_deref(), value)
                    .await?;
                // Another site's resources do not match (tenancy).
                let mut seen = Vec::with_capacity(ids.len());
                for id in ids {
                    if tx
                        .read(res_type, &id)
                        .await?
                        .is_some_and(|s| crate::auth::tenancy::visible(&s))
                    {
                        seen.push(id);
                    }
                }
                seen
            }
            Criteria::Id(id) => match tx.read(res_type, id).await? {
                Some(s) if !s.deleted && crate::auth::tenancy::visible(&s) => vec![s.id],
                _ => Vec::new(),
            },
        })
    }
}

/// One interaction to run in a store transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// `POST Type` (with `If-None-Exist` criteria, conditional). `id` is the id to give
    /// the new resource.
    Create {
        /// The resource.
        resource: Checked,
        /// The id it gets.
        id: String,
        /// `If-None-Exist`.
        criteria: Option<Criteria>,
    },
    /// `PUT Type/id`.
    Update {
        /// The resource.
        resource: Checked,
        /// The id in the URL.
        id: String,
        /// `If-Match`.
        if_match: Option<i64>,
    },
    /// `PUT Type?criteria`.
    ConditionalUpdate {
        /// The resource.
        resource: Checked,
        /// The criteria.
        criteria: Criteria,
        /// `If-Match`.
        if_match: Option<i64>,
        /// The id a new resource gets when nothing matches and the body has none.
        new_id: String,
    },
    /// `DELETE Type?criteria`: the one current resource the criteria match is deleted;
    /// none is a success that deletes nothing; several are refused (412): the server
    /// supports conditional delete in `single` mode.
    ConditionalDelete {
        /// Type.
        res_type: String,
        /// The criteria.
        criteria: Criteria,
        /// `If-Match`, checked against the matched resource.
        if_match: Option<i64>,
    },
    /// `PATCH Type/id` or `PATCH Type?criteria` (which must match exactly one resource):
    /// the current version patched, then checked and stored as an update.
    Patch {
        /// Type.
        res_type: String,
        /// Which resource.
        target: Selector,
        /// The patch (JSON Patch or FHIRPath Patch).
        patch: super::patch::PatchDoc,
        /// `If-Match`.
        if_match: Option<i64>,
    },
    /// `DELETE Type/id`.
    Delete {
        /// Type.
        res_type: String,
        /// Id.
        id: String,
        /// `If-Match`.
        if_match: Option<i64>,
    },
    /// `GET Type/id[/_history/vid]` (in Bundles).
    Read {
        /// Type.
        res_type: String,
        /// Id.
        id: String,
        /// Version.
        version: Option<i64>,
    },
}

/// The resource an instance-level or conditional interaction is about.
#[derive(Debug, Clone)]
pub enum Selector {
    /// `Type/id`.
    Id(String),
    /// `Type?criteria`.
    Criteria(Criteria),
}

/// The result of one operation.
#[derive(Debug, Clone)]
pub struct Done {
    /// The HTTP status of the interaction.
    pub status: StatusCode,
    /// The version written or read (a delete's version for deletes; `None` when a delete
    /// found nothing to delete).
    pub stored: Option<Stored>,
    /// Whether `stored` was written by this operation (not found by a conditional create
    /// or read).
    pub written: bool,
    /// Warnings to return with it.
    pub warnings: Option<String>,
}

/// Runs one operation in `tx` (`state` validates patched resources).
///
/// # Errors
/// The interaction's failures ([`ApiError::PreconditionFailed`], `MultipleMatches`,
/// `NotFound`, `Gone`, `BadRequest`, `Unprocessable`, `Invalid`) and store failures; a
/// lost race is `ApiError::Store(StoreError::Conflict)`, for the caller to retry.
pub async fn apply(state: &AppState, tx: &mut Tx, op: &Op) -> Result<Done, ApiError> {
    if let Some(t) = written_type(op) {
        refuse_append_only(t)?;
    }
    match op {
        Op::Create {
            resource,
            id,
            criteria,
        } => {
            if let Some(c) = criteria {
                let found = c.matches(tx, &resource.res_type).await?;
                match found.as_slice() {
                    [] => {}
                    [one] => {
                        let existing = tx.read(&resource.res_type, one).await?;
                        if existing.as_ref().is_some_and(|e| !narrow::readable(e)) {
                            return Err(ApiError::Forbidden(format!(
                                "If-None-Exist matches a {} outside the token's narrowed scopes",
                                resource.res_type
                            )));
                        }
                        return Ok(Done {
                            status: StatusCode::OK,
                            stored: existing,
                            written: false,
                            warnings: None,
                        });
                    }
                    many => {
                        return Err(ApiError::MultipleMatches(format!(
                            "If-None-Exist matches {} {} resources",
                            many.len(),
                            resource.res_type
                        )))
                    }
                }
            }
            put(
                tx,
                resource,
                id,
                if_match_expect(None),
                false,
                Interaction::Create,
            )
            .await
        }
        Op::Update {
            resource,
            id,
            if_match,
        } => {
            put(
                tx,
                resource,
                id,
                if_match_expect(*if_match),
                if_match.is_some(),
                Interaction::Update,
            )
            .await
        }
        Op::ConditionalUpdate {
            resource,
            criteria,
            if_match,
            new_id,
        } => {
            let found = criteria.matches(tx, &resource.res_type).await?;
            let body_id = resource.json.get("id").and_then(Json::as_str);
            match found.as_slice() {
                [] => {
                    let id = body_id.unwrap_or(new_id);
                    put(
                        tx,
                        resource,
                        id,
                        if_match_expect(*if_match),
                        if_match.is_some(),
                        Interaction::Update,
                    )
                    .await
                }
                [one] => {
                    if body_id.is_some_and(|b| b != one) {
                        return Err(ApiError::BadRequest(format!(
                            "the criteria match {}/{one} but the body has id {}",
                            resource.res_type,
                            body_id.unwrap_or_default()
                        )));
                    }
                    put(
                        tx,
                        resource,
                        one,
                        if_match_expect(*if_match),
                        if_match.is_some(),
                        Interaction::Update,
                    )
                    .await
                }
                many => Err(ApiError::MultipleMatches(format!(
                    "the criteria match {} {} resources",
                    many.len(),
                    resource.res_type
                ))),
            }
        }
        Op::Delete {
            res_type,
            id,
            if_match,
        } => delete(tx, res_type, id, *if_match).await,
        Op::ConditionalDelete {
            res_type,
            criteria,
            if_match,
        } => {
            let found = criteria.matches(tx, res_type).await?;
            match found.as_slice() {
                [] => Ok(Done {
                    status: StatusCode::OK,
                    stored: None,
                    written: false,
                    warnings: Some(super::error::outcome(
                        "information",
                        "not-found",
                        &format!("no {res_type} matches the criteria; nothing was deleted"),
                    )),
                }),
                [one] => delete(tx, res_type, one, *if_match).await,
                many => Err(ApiError::MultipleMatches(format!(
                    "the criteria match {} {res_type} resources; conditional delete removes one at a time",
                    many.len()
                ))),
            }
        }
        Op::Patch {
            res_type,
            target,
            patch,
            if_match,
        } => patch_one(state, tx, res_type, target, patch, *if_match).await,
        Op::Read {
            res_type,
            id,
            version,
        } => {
            let found = match version {
                None => tx.read(res_type, id).await?,
                Some(v) => {
                    let all = tx.read(res_type, id).await?;
                    // Versions are immutable; read the current one to learn the resource
                    // exists, then the version itself outside the transaction's writes.
                    match all {
                        Some(cur) if cur.version_id == *v => Some(cur),
                        Some(_) => {
                            return Err(ApiError::NotSupported(
                                "reading an older version inside a Bundle is not supported".into(),
                            ))
                        }
                        None => None,
                    }
                }
            };
            let seen =
                |s: &Stored| s.deleted || (crate::auth::tenancy::visible(s) && narrow::readable(s));
            match found.filter(seen) {
                Some(s) if s.deleted => Err(ApiError::Gone(format!("{res_type}/{id} was deleted"))),
                Some(s) => Ok(Done {
                    status: StatusCode::OK,
                    stored: Some(s),
                    written: false,
                    warnings: None,
                }),
                None => Err(ApiError::NotFound(format!("{res_type}/{id} is not known"))),
            }
        }
    }
}

/// Records the delete of `res_type/id` (`If-Match` checked first; another site's resource
/// is not there for a site client).
async fn delete(
    tx: &mut Tx,
    res_type: &str,
    id: &str,
    if_match: Option<i64>,
) -> Result<Done, ApiError> {
    let current = tx.read(res_type, id).await?;
    if current.as_ref().is_some_and(crate::auth::tenancy::foreign) {
        return Err(ApiError::NotFound(format!("{res_type}/{id} is not known")));
    }
    if let Some(c) = &current {
        narrow::check_existing(Interaction::Delete, c).map_err(ApiError::Forbidden)?;
    }
    if let Some(v) = if_match {
        if current.as_ref().map(|c| c.version_id) != Some(v) {
            return Err(ApiError::PreconditionFailed(format!(
                "If-Match names version {v} but {res_type}/{id} is at {}",
                current.map_or("no version".into(), |c| c.version_id.to_string())
            )));
        }
    }
    let deleted = tx.delete(res_type, id).await?;
    Ok(Done {
        status: StatusCode::NO_CONTENT,
        written: deleted.is_some(),
        stored: deleted,
        warnings: None,
    })
}

/// Patches the current version of the target: the patched JSON keeps its type and id, is
/// checked and validated like an update's body, and replaces exactly the version it was
/// made from (a concurrent write makes it a lost race, run again from a fresh read, or 412
/// when the client named the version with `If-Match`).
async fn patch_one(
    state: &AppState,
    tx: &mut Tx,
    res_type: &str,
    target: &Selector,
    patch: &super::patch::PatchDoc,
    if_match: Option<i64>,
) -> Result<Done, ApiError> {
    let id = match target {
        Selector::Id(id) => id.clone(),
        Selector::Criteria(criteria) => {
            let found = criteria.matches(tx, res_type).await?;
            match found.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(ApiError::NotFound(format!(
                        "no {res_type} matches the criteria of the conditional patch"
                    )))
                }
                many => {
                    return Err(ApiError::MultipleMatches(format!(
                        "the criteria of the conditional patch match {} {res_type} resources",
                        many.len()
                    )))
                }
            }
        }
    };
    // Patches of one resource queue behind each other (on PostgreSQL; SQLite writers are
    // serialized already) instead of all but one losing the compare-and-set below.
    tx.lock(&format!("{res_type}/{id}")).await?;
    let current = match tx.read(res_type, &id).await? {
        Some(c) if crate::auth::tenancy::foreign(&c) => None,
        other => other,
    };
    let Some(current) = current else {
        return Err(ApiError::NotFound(format!("{res_type}/{id} is not known")));
    };
    let Some(content) = current.content.as_deref().filter(|_| !current.deleted) else {
        return Err(ApiError::Gone(format!(
            "{res_type}/{id} was deleted (version {})",
            current.version_id
        )));
    };
    if let Some(v) = if_match {
        if v != current.version_id {
            return Err(ApiError::PreconditionFailed(format!(
                "If-Match names version {v} but {res_type}/{id} is at {}",
                current.version_id
            )));
        }
    }
    let mut json = Json::parse(content, state.config().max_depth)?;
    patch.apply(&mut json)?;
    if json.get("resourceType").and_then(Json::as_str) != Some(res_type) {
        return Err(ApiError::Unprocessable(format!(
            "the patch changes the resourceType of {res_type}/{id}"
        )));
    }
    if json.get("id").and_then(Json::as_str) != Some(id.as_str()) {
        return Err(ApiError::Unprocessable(format!(
            "the patch changes or removes the id of {res_type}/{id}"
        )));
    }
    let resource = check(state, &json.to_text(), Some(res_type)).await?;
    put(
        tx,
        &resource,
        &id,
        Expect::Version(current.version_id),
        if_match.is_some(),
        Interaction::Update,
    )
    .await
}

/// What an `If-Match` version asks of the store.
fn if_match_expect(if_match: Option<i64>) -> Expect {
    if_match.map_or(Expect::Any, Expect::Version)
}

/// Stores `resource` as `id`, expecting `expect` to be current. A failed expectation is
/// 412 when the client asked for it (`client_if_match`), else a lost race to retry.
///
/// `interaction` (create or update) is what the caller's scopes must allow on the result,
/// and, for an update, on the version it replaces.
async fn put(
    tx: &mut Tx,
    resource: &Checked,
    id: &str,
    expect: Expect,
    client_if_match: bool,
    interaction: Interaction,
) -> Result<Done, ApiError> {
    if !is_valid_id(id) {
        return Err(ApiError::BadRequest(format!(
            "{id:?} is not a valid id (1-64 of A-Z a-z 0-9 - .)"
        )));
    }
    // Another site's resource is not there for a site client (tenancy); what a site
    // client writes carries its site label.
    let current = tx.read(&resource.res_type, id).await?;
    if current.as_ref().is_some_and(crate::auth::tenancy::foreign) {
        return Err(ApiError::NotFound(format!(
            "{}/{id} is not known",
            resource.res_type
        )));
    }
    // A token narrowed by search parameters changes only what they match, before and after.
    if let (Interaction::Update, Some(c)) = (interaction, &current) {
        narrow::check_existing(Interaction::Update, c).map_err(ApiError::Forbidden)?;
    }
    let mut json = resource.json.clone();
    crate::auth::tenancy::label(&mut json);
    let warnings = resource.warnings_outcome();
    let index = search_rows(&json);
    narrow::check_write(interaction, &resource.res_type, id, &index)
        .map_err(ApiError::Forbidden)?;
    match tx
        .put(
            &resource.res_type,
            id,
            &mut json,
            expect,
            warnings.as_deref(),
            &index,
        )
        .await
    {
        Ok((stored, replaced)) => {
            // The site's Group follows its patients, in this transaction (Group $export).
            if resource.res_type == "Patient" && !stored.site.is_empty() {
                crate::export::group::add_member(tx, &stored.site, id).await?;
            }
            Ok(Done {
                status: if replaced.is_some() {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                },
                written: replaced.as_ref() != Some(&stored),
                stored: Some(stored),
                warnings,
            })
        }
        Err(StoreError::Conflict) if client_if_match => {
            let named = match expect {
                Expect::Version(v) => v.to_string(),
                Expect::Any => "?".into(),
            };
            Err(ApiError::PreconditionFailed(format!(
                "If-Match names version {named} but {}/{id} is not at that version",
                resource.res_type
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// A create made ready for [`create_fresh`]: its JSON as it will be stored (references
/// rewritten, tenancy label set) and its search index rows. Pure work, so a transaction
/// Bundle makes it before its store transaction begins when the Bundle alone resolves the
/// resource's references.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The resource as it will be stored, before `id` and `meta` are stamped in.
    pub json: Json,
    /// Its search index rows.
    pub index: Vec<crate::search::IndexRow>,
}

/// The checks and labels [`apply`] gives a create with the fresh `id`, on `json` whose
/// references are already rewritten.
///
/// # Errors
/// An append-only type, an invalid id, a token's narrowed scopes that do not allow it.
pub fn prepare_create(res_type: &str, mut json: Json, id: &str) -> Result<Prepared, ApiError> {
    check_create(res_type, id)?;
    crate::auth::tenancy::label(&mut json);
    let index = search_rows(&json);
    narrow::check_write(Interaction::Create, res_type, id, &index).map_err(ApiError::Forbidden)?;
    Ok(Prepared { json, index })
}

/// What any create must be: of a type that may be created, with a FHIR id.
fn check_create(res_type: &str, id: &str) -> Result<(), ApiError> {
    refuse_append_only(res_type)?;
    if !is_valid_id(id) {
        return Err(ApiError::BadRequest(format!(
            "{id:?} is not a valid id (1-64 of A-Z a-z 0-9 - .)"
        )));
    }
    Ok(())
}

/// [`prepare_create`] for a resource whose element tree (from validation) is at hand, with
/// the same references already rewritten in `json` and in `tree`: the index rows come
/// from the tree instead of from the JSON written out and read again. The site label is
/// the one index row the tree lacks ([`crate::auth::tenancy::label`] adds one `_security`
/// coding without display), so it is added as a row; a resource that already carries a
/// site label (its own labels are replaced) takes the general path.
///
/// # Errors
/// As [`prepare_create`].
pub fn prepare_create_parsed(
    res_type: &str,
    json: Json,
    tree: &crate::model::Element,
    id: &str,
) -> Result<Prepared, ApiError> {
    if has_site_label(&json) {
        return prepare_create(res_type, json, id);
    }
    check_create(res_type, id)?;
    let mut json = json;
    crate::auth::tenancy::label(&mut json);
    let mut index = crate::search::index(tree);
    if let Some(site) = crate::auth::tenancy::caller_site() {
        index.push(crate::search::IndexRow::Token {
            param: "_security".into(),
            system: crate::auth::tenancy::SITE_SYSTEM.into(),
            code: site,
        });
    }
    narrow::check_write(Interaction::Create, res_type, id, &index).map_err(ApiError::Forbidden)?;
    Ok(Prepared { json, index })
}

/// Whether `json` has a `meta.security` coding of the site-label system.
fn has_site_label(json: &Json) -> bool {
    json.get("meta")
        .and_then(|m| m.get("security"))
        .is_some_and(|list| {
            list.items().iter().any(|c| {
                c.get("system").and_then(Json::as_str) == Some(crate::auth::tenancy::SITE_SYSTEM)
            })
        })
}

/// Writes creates whose ids the server has just assigned (UUIDs no resource has), each
/// made ready by [`prepare_create`]: one multi-row `INSERT` per table for all of them
/// ([`Tx::create_fresh`]) instead of a round of statements per resource. `creates` are
/// (entry index, resource as checked, id, prepared); the results keep their order.
///
/// # Errors
/// Database failures.
pub async fn create_fresh(
    tx: &mut Tx,
    creates: &[(usize, &Checked, &str, &Prepared)],
) -> Result<Vec<(usize, Done)>, ApiError> {
    let mut fresh: Vec<crate::store::Fresh<'_>> = creates
        .iter()
        .map(|(_, resource, id, prepared)| crate::store::Fresh {
            res_type: &resource.res_type,
            id: (*id).to_string(),
            content: &prepared.json,
            index: &prepared.index,
            issues: resource.warnings_outcome(),
        })
        .collect();
    let stored = tx.create_fresh(&mut fresh).await?;
    let mut out = Vec::with_capacity(stored.len());
    drop(fresh);
    for ((index, resource, id, _), stored) in creates.iter().zip(stored) {
        if resource.res_type == "Patient" && !stored.site.is_empty() {
            crate::export::group::add_member(tx, &stored.site, id).await?;
        }
        let warnings = stored.issues.clone();
        out.push((
            *index,
            Done {
                status: StatusCode::CREATED,
                written: true,
                stored: Some(stored),
                warnings,
            },
        ));
    }
    Ok(out)
}

/// The search index rows of a resource as it will be stored (references already
/// rewritten). It validated, so it parses; were it not to, it is stored without rows.
fn search_rows(json: &Json) -> Vec<crate::search::IndexRow> {
    match crate::model::parse(&json.to_text()) {
        Ok(element) => crate::search::index(&element),
        Err(e) => {
            tracing::warn!(error = %e, "a validated resource did not parse for indexing");
            Vec::new()
        }
    }
}

/// Whether `id` is a FHIR id (`[A-Za-z0-9\-\.]{1,64}`).
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A new server-assigned id: a time-ordered UUID (version 7, RFC 9562). Ids made later
/// sort after earlier ones, so the store's keys that begin with the id (the current row,
/// versions, every index table's owner index) grow at their end instead of at random
/// pages, and the resources of one transaction (a patient's Observations) sit together.
/// Its millisecond timestamp tells no more than `meta.lastUpdated` of version 1.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The request as the ledger records it.
#[derive(Debug, Clone)]
pub struct WriteCtx {
    /// When it arrived.
    pub received: String,
    /// Its id.
    pub request_id: String,
    /// Method.
    pub method: String,
    /// Path and query.
    pub url: String,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// The body as sent.
    pub payload: Vec<u8>,
    /// The mapping that produced the resources (`/ingest/{mapping}`, `import`), named in
    /// their Provenance.
    pub mapping: Option<String>,
}

impl WriteCtx {
    /// The context of a request.
    pub fn new(
        request_id: &RequestId,
        method: &Method,
        uri: &Uri,
        content_type: Option<String>,
        payload: &[u8],
    ) -> WriteCtx {
        WriteCtx {
            received: crate::store::time::now(),
            request_id: request_id.0.clone(),
            method: method.to_string(),
            url: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string()),
            content_type,
            payload: payload.to_vec(),
            mapping: None,
        }
    }

    /// The ledger entry of this request with its outcome.
    pub fn submission(
        &self,
        status: StatusCode,
        operation_outcome: Option<String>,
        versions: Vec<String>,
    ) -> Submission {
        Submission {
            payload: self.payload.clone(),
            ..self.record(status, operation_outcome, versions)
        }
    }

    /// [`WriteCtx::submission`] without the payload, for [`Tx::record_sealed`] with the
    /// payload sealed beforehand.
    pub fn record(
        &self,
        status: StatusCode,
        operation_outcome: Option<String>,
        versions: Vec<String>,
    ) -> Submission {
        let outcome = if status.is_server_error() {
            "failed"
        } else if status.is_client_error() {
            "rejected"
        } else {
            "accepted"
        };
        // The caller authenticated by `auth::enforce` for this request.
        let (client, site) = crate::auth::current()
            .map_or(("anonymous".into(), "anonymous".into()), |p| {
                (p.client_id, p.site)
            });
        Submission {
            received: self.received.clone(),
            request_id: self.request_id.clone(),
            client,
            site,
            method: self.method.clone(),
            url: self.url.clone(),
            content_type: self.content_type.clone(),
            payload: Vec::new(),
            outcome: outcome.into(),
            status: status.as_u16(),
            operation_outcome,
            versions,
        }
    }
}

/// The `Type/id/_history/n` of a written version.
pub fn version_ref(s: &Stored) -> String {
    format!("{}/{}/_history/{}", s.res_type, s.id, s.version_id)
}

/// Runs `op` in its own transaction, retrying lost races, and, when `ledger` is given,
/// records the submission as accepted in the same transaction.
///
/// # Errors
/// The operation's failures; [`ApiError::Conflict`] when it kept losing races.
pub async fn commit(
    state: &AppState,
    op: &Op,
    ledger: Option<&WriteCtx>,
) -> Result<Done, ApiError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            let mut tx = state.store().begin().await?;
            let done = apply(state, &mut tx, op).await?;
            let touched: Vec<crate::audit::Touched> = done
                .stored
                .iter()
                .map(|s| crate::audit::Touched {
                    stored: s,
                    status: done.status.as_u16(),
                    written: done.written,
                })
                .collect();
            // The write's Provenance and AuditEvent are in its transaction (a Bundle's
            // reads are audited with the Bundle).
            let event = (!matches!(op, Op::Read { .. })).then(|| write_kind(op));
            let mut submission = None;
            if let Some(ctx) = ledger {
                let versions = done
                    .stored
                    .iter()
                    .filter(|_| done.written)
                    .map(version_ref)
                    .collect();
                submission = Some(
                    tx.record(&ctx.submission(done.status, done.warnings.clone(), versions))
                        .await?,
                );
            }
            if event.is_some() {
                crate::audit::in_transaction(
                    &mut tx,
                    event,
                    done.status.as_u16(),
                    &touched,
                    submission,
                    ledger.and_then(|c| c.mapping.as_deref()),
                )
                .await?;
            }
            drop(touched);
            tx.commit().await?;
            if ledger.is_some() {
                crate::audit::mark_recorded();
            }
            Ok::<Done, ApiError>(done)
        }
        .await;
        match result {
            Err(ApiError::Store(e)) if e.is_retryable() => {
                if attempt >= MAX_ATTEMPTS {
                    return Err(ApiError::Conflict(
                        "concurrent writes to the same resource kept conflicting; try again".into(),
                    ));
                }
                tracing::debug!(attempt, "write lost a race; running it again");
            }
            other => return other,
        }
    }
}

/// Records a failed write request in the ledger (its own transaction) and passes the
/// error on. A ledger failure is logged: the client still gets the original answer.
pub async fn reject(state: &AppState, ctx: &WriteCtx, error: ApiError) -> ApiError {
    let submission = ctx.submission(error.status(), Some(error.operation_outcome()), Vec::new());
    if let Err(e) = state.store().record(&submission).await {
        tracing::error!(error = %e, "could not record a rejected submission in the ledger");
    }
    error
}

/// The version number in an `If-Match` header (`W/"3"` or `"3"`).
///
/// # Errors
/// [`ApiError::BadRequest`] when the header is present but not a version ETag.
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or_default().trim();
    let inner = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    inner.parse::<i64>().map(Some).map_err(|_| {
        ApiError::BadRequest(format!(
            "If-Match {text:?} is not a version ETag like W/\"3\""
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criteria() {
        assert_eq!(
            Criteria::parse("identifier=http://x%7C12").expect("ok"),
            Criteria::Identifier {
                system: Some("http://x".into()),
                value: "12".into()
            }
        );
        assert_eq!(
            Criteria::parse("identifier=12").expect("ok"),
            Criteria::Identifier {
                system: None,
                value: "12".into()
            }
        );
        assert!(matches!(
            Criteria::parse("name=x"),
            Err(ApiError::NotSupported(_))
        ));
        assert!(Criteria::parse("").is_err());
    }

    #[test]
    fn ids_and_types() {
        assert!(is_valid_id("a-1.B"));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(is_concrete_type("Patient"));
        assert!(!is_concrete_type("DomainResource"));
        assert!(!is_concrete_type("HumanName"));
    }
}
