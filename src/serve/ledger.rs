//! The ledger admin API (admin clients only): what every write request sent and what it
//! got, accepted or refused.
//!
//! - `GET /admin/submissions?site=&since=&outcome=&_count=&before=`: entries newest first,
//!   without payloads; `since` is an instant or a date (UTC), `outcome` one of `accepted`,
//!   `rejected`, `failed`, `_count` 1-1000 (default 50); a full page carries a `next` link
//!   (keyset paging on the entry id, stable while new entries arrive).
//! - `GET /admin/submissions/{id}`: one entry.
//! - `GET /admin/submissions/{id}/payload`: the body exactly as received, with the
//!   `Content-Type` it was sent with.
//!
//! Site and sponsor clients get 403: the ledger holds every site's raw submissions (before
//! any correction), and issue 6 gives its management to admins only.

use super::error::ApiError;
use super::AppState;
use crate::auth::{Principal, Role};
use crate::store::{LedgerEntry, LedgerQuery};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::{json, Value};

/// The default and largest page sizes of a listing.
const DEFAULT_COUNT: i64 = 50;
const MAX_COUNT: i64 = 1000;

/// The routes of the ledger admin API.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/submissions", get(list))
        .route("/admin/submissions/{id}", get(one))
        .route("/admin/submissions/{id}/payload", get(payload))
}

/// Refuses callers that are not admin clients (the token itself was checked by
/// `auth::enforce`).
fn admin_only(p: Option<&Principal>) -> Result<(), ApiError> {
    match p {
        Some(p) if p.role == Role::Admin => Ok(()),
        _ => Err(ApiError::Forbidden(
            "only admin clients read the submission ledger".into(),
        )),
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut r = (status, value.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The instant text the store writes (`YYYY-MM-DDThh:mm:ss.sssZ`) for a `since` value
/// given as a date (`2026-11-27`, midnight UTC) or a UTC instant with or without fractions
/// of a second (`...T20:15:03Z`, `...T20:15:03.5Z`); `None` for anything else.
pub fn normalize_instant(text: &str) -> Option<String> {
    let digits = |r: std::ops::Range<usize>| {
        text.get(r)
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
    };
    let date_ok = text.len() >= 10
        && digits(0..4)
        && digits(5..7)
        && digits(8..10)
        && text.as_bytes()[4] == b'-'
        && text.as_bytes()[7] == b'-';
    if !date_ok {
        return None;
    }
    if text.len() == 10 {
        return Some(format!("{text}T00:00:00.000Z"));
    }
    let b = text.as_bytes();
    let time_ok = text.len() >= 20
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !time_ok || crate::store::time::http_date(text).is_none() {
        return None;
    }
    let rest = text.get(19..)?;
    let fraction = match rest {
        "Z" => "",
        _ => rest.strip_prefix('.')?.strip_suffix('Z')?,
    };
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut millis: String = fraction.chars().take(3).collect();
    while millis.len() < 3 {
        millis.push('0');
    }
    Some(format!("{}.{millis}Z", text.get(..19)?))
}

/// Reads the listing's query parameters.
fn parse_query(query: &str) -> Result<LedgerQuery, ApiError> {
    let mut q = LedgerQuery {
        count: DEFAULT_COUNT,
        ..LedgerQuery::default()
    };
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "site" => q.site = Some(v.into_owned()),
            "since" => {
                q.since = Some(normalize_instant(&v).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "since={v} is not a date (YYYY-MM-DD) or UTC instant (YYYY-MM-DDThh:mm:ss[.sss]Z)"
                    ))
                })?);
            }
            "outcome" => match v.as_ref() {
                "accepted" | "rejected" | "failed" => q.outcome = Some(v.into_owned()),
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "outcome={v}: use accepted, rejected or failed"
                    )))
                }
            },
            "_count" => {
                q.count = v
                    .parse::<i64>()
                    .ok()
                    .filter(|c| (1..=MAX_COUNT).contains(c))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!("_count={v}: give 1 to {MAX_COUNT}"))
                    })?;
            }
            "before" => {
                q.before = Some(v.parse::<i64>().ok().filter(|b| *b > 0).ok_or_else(|| {
                    ApiError::BadRequest(format!("before={v} is not an entry id"))
                })?);
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter {other}; use site, since, outcome, _count, before"
                )))
            }
        }
    }
    Ok(q)
}

/// An entry as the admin API shows it (the payload by link).
fn entry_json(e: &LedgerEntry) -> Value {
    let s = &e.submission;
    let outcome = s
        .operation_outcome
        .as_deref()
        .map(|o| serde_json::from_str::<Value>(o).unwrap_or_else(|_| Value::String(o.to_string())));
    json!({
        "id": e.id,
        "received": s.received,
        "requestId": s.request_id,
        "client": s.client,
        "site": s.site,
        "method": s.method,
        "url": s.url,
        "contentType": s.content_type,
        "payloadSize": e.payload_size,
        "payload": format!("/admin/submissions/{}/payload", e.id),
        "outcome": s.outcome,
        "status": s.status,
        "operationOutcome": outcome,
        "versions": s.versions,
        "purged": e.purged,
    })
}

/// The `next` link of a full page: the same filters, older than its last entry.
fn next_link(q: &LedgerQuery, last_id: i64) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    if let Some(site) = &q.site {
        ser.append_pair("site", site);
    }
    if let Some(since) = &q.since {
        ser.append_pair("since", since);
    }
    if let Some(outcome) = &q.outcome {
        ser.append_pair("outcome", outcome);
    }
    ser.append_pair("_count", &q.count.to_string());
    ser.append_pair("before", &last_id.to_string());
    format!("/admin/submissions?{}", ser.finish())
}

/// `GET /admin/submissions`.
async fn list(
    State(state): State<AppState>,
    p: Option<Extension<Principal>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    admin_only(p.as_deref())?;
    let q = parse_query(query.as_deref().unwrap_or_default())?;
    let mut rows = state
        .store()
        .ledger(&LedgerQuery {
            count: q.count + 1,
            ..q.clone()
        })
        .await?;
    let more = rows.len() > usize::try_from(q.count).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(q.count).unwrap_or(usize::MAX));
    let mut body = json!({
        "entry": rows.iter().map(entry_json).collect::<Vec<_>>(),
    });
    if let (true, Some(last)) = (more, rows.last()) {
        body["next"] = Value::String(next_link(&q, last.id));
    }
    Ok(json_response(StatusCode::OK, &body))
}

fn entry_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .map_err(|_| ApiError::NotFound(format!("no submission {id}")))
}

/// `GET /admin/submissions/{id}`.
async fn one(
    State(state): State<AppState>,
    p: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin_only(p.as_deref())?;
    match state.store().submission(entry_id(&id)?).await? {
        Some(e) => Ok(json_response(StatusCode::OK, &entry_json(&e))),
        None => Err(ApiError::NotFound(format!("no submission {id}"))),
    }
}

/// `GET /admin/submissions/{id}/payload`: the bytes as received, with their
/// `Content-Type` (`application/octet-stream` when none was sent).
async fn payload(
    State(state): State<AppState>,
    p: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin_only(p.as_deref())?;
    let Some(e) = state.store().submission(entry_id(&id)?).await? else {
        return Err(ApiError::NotFound(format!("no submission {id}")));
    };
    if let Some(when) = &e.purged {
        return Err(ApiError::Gone(format!(
            "the payload of submission {id} was purged at {when} (retention period ended)"
        )));
    }
    let content_type = e
        .submission
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    let mut r = (StatusCode::OK, e.submission.payload).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, content_type);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_normalized_to_store_instants() {
        assert_eq!(
            normalize_instant("2026-11-27").as_deref(),
            Some("2026-11-27T00:00:00.000Z")
        );
        assert_eq!(
            normalize_instant("2026-11-27T20:15:03Z").as_deref(),
            Some("2026-11-27T20:15:03.000Z")
        );
        assert_eq!(
            normalize_instant("2026-11-27T20:15:03.5Z").as_deref(),
            Some("2026-11-27T20:15:03.500Z")
        );
        assert_eq!(
            normalize_instant("2026-11-27T20:15:03.123456Z").as_deref(),
            Some("2026-11-27T20:15:03.123Z")
        );
        for bad in [
            "2026-11",
            "2026-11-27T20:15:03+01:00",
            "x",
            "2026-13-01T00:00:00Z",
        ] {
            assert_eq!(normalize_instant(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_parameters() {
        let q = parse_query("site=it02&outcome=rejected&_count=2&before=9").expect("query");
        assert_eq!(q.site.as_deref(), Some("it02"));
        assert_eq!(q.outcome.as_deref(), Some("rejected"));
        assert_eq!((q.count, q.before), (2, Some(9)));
        for bad in [
            "outcome=maybe",
            "_count=0",
            "before=x",
            "colour=red",
            "since=yesterday",
        ] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
    }
}
