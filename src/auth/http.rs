//! The HTTP side of authorization: discovery (`/.well-known/smart-configuration`, also under
//! `/fhir`), the token endpoint (`POST /auth/token`), the gateway's public keys
//! (`/auth/jwks`), the admin API (`/admin/clients`, `/admin/gateway-key/rotate`, admin
//! clients only), and [`enforce`], the middleware in front of every FHIR interaction.
//!
//! Failures here are OAuth error JSON on the token endpoint and OperationOutcomes
//! elsewhere: 401 with `WWW-Authenticate: Bearer` when there is no valid token, 403 when
//! the token's scopes or role do not allow the interaction.

use super::clients::{self, NewClient};
use super::scopes::Interaction;
use super::token::{OAuthError, TokenRequest};
use super::{with_principal, Principal, Role};
use crate::serve::error::FHIR_JSON;
use crate::serve::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde_json::{json, Value};

/// The routes of the authorization server and the admin API.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/.well-known/smart-configuration", get(smart_configuration))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(smart_configuration),
        )
        .route("/auth/token", post(token))
        .route("/auth/jwks", get(jwks))
        .route("/admin/clients", get(list_clients).post(add_client))
        .route("/admin/clients/{id}", delete(revoke_client))
        .route("/admin/gateway-key/rotate", post(rotate_key))
}

/// The scopes the discovery document offers.
pub const SCOPES_SUPPORTED: &[&str] = &[
    "system/*.cruds",
    "system/*.rs",
    "system/*.read",
    "system/*.write",
    "system/*.*",
];

/// The SMART configuration document (SMART App Launch 2.2.0 §Conformance).
pub fn smart_configuration_json(state: &AppState) -> Value {
    let auth = state.auth();
    json!({
        "issuer": auth.base_url(),
        "jwks_uri": format!("{}/auth/jwks", auth.base_url()),
        "token_endpoint": auth.token_url(),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": SCOPES_SUPPORTED,
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    })
}

async fn smart_configuration(State(state): State<AppState>) -> Response {
    json_response(StatusCode::OK, &smart_configuration_json(&state))
}

async fn jwks(State(state): State<AppState>) -> Response {
    match state.auth().public_jwks().await {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => oauth_error(&e),
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn oauth_error(e: &OAuthError) -> Response {
    let status = match e {
        OAuthError::InvalidClient(_) => StatusCode::UNAUTHORIZED,
        OAuthError::Server(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    let description = match e {
        OAuthError::Server(_) => "the server failed; see its log",
        _ => e.description(),
    };
    if let OAuthError::Server(d) = e {
        tracing::error!(error = %d, "token endpoint failed");
    } else {
        tracing::info!(error = e.code(), description, "token request refused");
    }
    let mut r = json_response(
        status,
        &json!({ "error": e.code(), "error_description": description }),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /auth/token` (form-encoded).
async fn token(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return oauth_error(&OAuthError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded".into(),
        ));
    }
    let mut req = TokenRequest::default();
    for (k, v) in form_urlencoded::parse(&body) {
        let slot = match k.as_ref() {
            "grant_type" => &mut req.grant_type,
            "client_assertion_type" => &mut req.client_assertion_type,
            "client_assertion" => &mut req.client_assertion,
            "scope" => &mut req.scope,
            "client_id" => &mut req.client_id,
            _ => continue,
        };
        if slot.is_some() {
            return oauth_error(&OAuthError::InvalidRequest(format!(
                "parameter {k} is repeated"
            )));
        }
        *slot = Some(v.into_owned());
    }
    let result = state.auth().token(&req).await;
    let issued = result
        .as_ref()
        .ok()
        .and_then(|v| v.get("access_token"))
        .and_then(Value::as_str);
    // Who asked, for the audit layer: the issued token's client, or the claimed one.
    let who = crate::audit::event::token_who(
        req.client_assertion.as_deref(),
        req.client_id.as_deref(),
        issued,
    );
    let mut response = match &result {
        Ok(v) => {
            let mut r = json_response(StatusCode::OK, v);
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r.headers_mut()
                .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            r
        }
        Err(e) => oauth_error(e),
    };
    if let Some(w) = who {
        response.extensions_mut().insert(w);
    }
    response
}

/// An OperationOutcome response with one issue.
fn outcome(status: StatusCode, code: &str, text: &str) -> Response {
    let body = json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": "error", "code": code, "diagnostics": text }],
    });
    (
        status,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        body.to_string(),
    )
        .into_response()
}

fn unauthorized(error: Option<&str>, text: &str) -> Response {
    let mut r = outcome(StatusCode::UNAUTHORIZED, "login", text);
    let challenge = match error {
        Some(e) => format!(
            "Bearer realm=\"imagio\", error=\"{e}\", error_description=\"{}\"",
            text.replace(['"', '\\'], "'")
        ),
        None => "Bearer realm=\"imagio\"".to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn forbidden(text: &str) -> Response {
    outcome(StatusCode::FORBIDDEN, "forbidden", text)
}

/// Marks the response of a request served under `--no-auth` (the request log says so).
#[derive(Debug, Clone, Copy)]
pub struct NoAuth;

/// What one request needs from the token's scopes.
#[derive(Debug, PartialEq, Eq)]
enum Need {
    /// Nothing: public (metadata, discovery, token, health).
    Public,
    /// A valid token, and whatever the handler checks (the admin API).
    Token,
    /// One interaction on a type (`*` for system level).
    One(String, Interaction),
    /// Any one of these interactions on a type (`$validate`: `c` or `u`).
    Any(String, &'static [Interaction]),
    /// Each entry of a Bundle posted to the base.
    Bundle,
}

/// What a request to `path` (absolute) with `method` needs.
fn need(method: &Method, path: &str) -> Need {
    let Some(rest) = path.strip_prefix("/fhir") else {
        return if path.starts_with("/admin") || path.starts_with("/sponsor") {
            Need::Token
        } else {
            Need::Public
        };
    };
    let rest = rest.trim_start_matches('/');
    if rest == "metadata" || rest.starts_with(".well-known/") {
        return Need::Public;
    }
    // Segments decoded as the router's `Path` extractor decodes them.
    let decoded: Vec<String> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').map(percent_decode).collect()
    };
    let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    if segs.is_empty() && method == Method::POST {
        return Need::Bundle;
    }
    // `/fhir/ingest/{mapping}`: the handler checks the scopes against the types mapped.
    if matches!(segs.as_slice(), ["ingest", _]) && method == Method::POST {
        return Need::Token;
    }
    classify(method, &segs)
}

/// Decodes `%XX` escapes of a path segment (invalid escapes and non-UTF-8 results are kept
/// as written).
fn percent_decode(seg: &str) -> String {
    if !seg.contains('%') {
        return seg.to_string();
    }
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| seg.to_string())
}

/// The interaction of `method` on the path segments below the FHIR base.
fn classify(method: &Method, segs: &[&str]) -> Need {
    use Interaction::*;
    let one = |t: &str, i| Need::One(t.to_string(), i);
    const VALIDATE: &[Interaction] = &[Create, Update];
    match (segs, method.as_str()) {
        // Bulk export: a valid token; the handlers check scopes per type and the job's
        // owner.
        ([op, ..], _) if op.starts_with("$export") => Need::Token,
        ([_, "$export"] | [_, _, "$export"], _) => Need::Token,
        ([] | ["_history"], "GET") => one("*", Search),
        ([t], "POST") => one(t, Create),
        ([t], "PUT" | "PATCH") => one(t, Update),
        ([t], "DELETE") => one(t, Delete),
        ([t], "GET") | ([t, "_history"], "GET") => one(t, Search),
        ([t, "_search"], "POST") => one(t, Search),
        // SQL on FHIR `$run`: the handler checks the search scope on the view's type.
        (["ViewDefinition", "$run"], "POST") => Need::Token,
        ([t, "$validate"] | [t, _, "$validate"], "POST") => Need::Any((*t).to_string(), VALIDATE),
        ([t, _], "GET") | ([t, _, "_history", ..], "GET") => one(t, Read),
        ([t, _], "PUT" | "PATCH") => one(t, Update),
        ([t, _], "DELETE") => one(t, Delete),
        // Anything else is refused by the router; it still needs some scope on the type.
        ([t, ..], _) => Need::Any((*t).to_string(), &[Create, Read, Update, Delete, Search]),
        ([], _) => one("*", Search),
    }
}

/// Whether the scopes allow the interaction at all; a narrowed scope allows it on the
/// resources matching its search parameters, which the handlers enforce (`auth::narrow`).
fn check(p: &Principal, need: &Need) -> Result<(), String> {
    match need {
        Need::Public | Need::Token | Need::Bundle => Ok(()),
        Need::One(t, i) => {
            if p.scopes.allows(t, *i) {
                Ok(())
            } else {
                Err(format!(
                    "the token's scopes do not allow {} on {t} (needs system/{t}.{})",
                    interaction_name(*i),
                    i.letter()
                ))
            }
        }
        Need::Any(t, is) => {
            if is.iter().any(|i| p.scopes.allows(t, *i)) {
                Ok(())
            } else {
                Err(format!(
                    "the token's scopes allow nothing of this kind on {t}"
                ))
            }
        }
    }
}

fn interaction_name(i: Interaction) -> &'static str {
    match i {
        Interaction::Create => "create",
        Interaction::Read => "read",
        Interaction::Update => "update",
        Interaction::Delete => "delete",
        Interaction::Search => "search",
    }
}

/// The request lines of a Bundle's entries: what [`check_bundle`] reads of a body.
#[derive(serde::Deserialize)]
struct RequestLines {
    #[serde(default)]
    entry: Vec<EntryLine>,
}

/// One entry's `request`, when it has one.
#[derive(serde::Deserialize)]
struct EntryLine {
    #[serde(default)]
    request: Option<RequestLine>,
}

/// `Bundle.entry.request`: method and url (strings, when they are).
#[derive(serde::Deserialize)]
struct RequestLine {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

/// Checks every entry of a batch or transaction Bundle against the scopes. Bodies that are
/// not such a Bundle pass: the Bundle handler refuses them itself.
fn check_bundle(p: &Principal, body: &[u8]) -> Result<(), String> {
    // Only `entry[].request.method` and `.url` are read (everything else is skipped, not
    // built); a body of another shape goes through the general path, which checks the
    // entries that have a usable request line and skips the others, as the handler does.
    let requests: Vec<(Option<String>, Option<String>)> =
        match serde_json::from_slice::<RequestLines>(body) {
            Ok(b) => b
                .entry
                .into_iter()
                .map(|e| e.request.map_or((None, None), |r| (r.method, r.url)))
                .collect(),
            Err(_) => {
                let Ok(bundle) = serde_json::from_slice::<Value>(body) else {
                    return Ok(());
                };
                let Some(entries) = bundle.get("entry").and_then(Value::as_array) else {
                    return Ok(());
                };
                entries
                    .iter()
                    .map(|entry| {
                        let request = entry.get("request");
                        let text = |k: &str| {
                            request
                                .and_then(|r| r.get(k))
                                .and_then(Value::as_str)
                                .map(str::to_string)
                        };
                        (text("method"), text("url"))
                    })
                    .collect()
            }
        };
    for (n, (method, url)) in requests.iter().enumerate() {
        let method = method
            .as_deref()
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        let (Some(method), Some(url)) = (method, url.as_deref()) else {
            continue;
        };
        let url = match url.find("/fhir/") {
            Some(i) if url.contains("://") => &url[i + 6..],
            _ => url,
        };
        let path = url.split_once('?').map_or(url, |(p, _)| p);
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        check(p, &classify(&method, &segs)).map_err(|e| format!("Bundle entry {n}: {e}"))?;
    }
    Ok(())
}

/// The middleware in front of everything: public routes pass; FHIR interactions and the
/// admin API need a valid bearer token whose scopes allow the interaction (each entry's, for
/// a Bundle). The caller is put in the request's extensions and made [`super::current`]
/// while the request is handled. Under `--no-auth` every request is [`Principal::local`].
pub async fn enforce(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let need = need(req.method(), req.uri().path());
    if need == Need::Public {
        return next.run(req).await;
    }
    let auth = state.auth();
    let (principal, no_auth) = if auth.config().disabled {
        (Principal::local(), true)
    } else {
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return unauthorized(None, "this request needs an access token (SMART Backend Services; see /.well-known/smart-configuration)");
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let Some(token) = token else {
            return unauthorized(
                Some("invalid_request"),
                "the Authorization header must be Bearer TOKEN",
            );
        };
        match auth.verify_access_token(token).await {
            Ok(p) => (p, false),
            Err(e) => return unauthorized(Some("invalid_token"), &e),
        }
    };
    // The caller goes into the response too, for the audit layer (`crate::audit::layer`).
    let refused = |r: Response| {
        let mut r = r;
        r.extensions_mut().insert(principal.clone());
        r
    };
    if let Err(e) = check(&principal, &need) {
        return refused(forbidden(&e));
    }
    let mut req = req;
    if need == Need::Bundle {
        let (parts, body) = req.into_parts();
        let limit = state.config().max_body;
        let bytes = match axum::body::to_bytes(body, limit).await {
            Ok(b) => b,
            Err(_) => return crate::serve::ApiError::TooLarge(limit).into_response(),
        };
        if let Err(e) = check_bundle(&principal, &bytes) {
            return refused(forbidden(&e));
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    req.extensions_mut().insert(principal.clone());
    let mut response = with_principal(principal.clone(), next.run(req)).await;
    response.extensions_mut().insert(principal);
    if no_auth {
        response.extensions_mut().insert(NoAuth);
    }
    response
}

/// The refusal of a request to the admin API by a caller that is not an admin client.
fn not_admin(p: Option<&Principal>) -> Option<Response> {
    match p {
        Some(p) if p.role == Role::Admin => None,
        _ => Some(forbidden("only admin clients manage clients")),
    }
}

async fn list_clients(
    State(state): State<AppState>,
    p: Option<axum::Extension<Principal>>,
) -> Response {
    if let Some(r) = not_admin(p.as_deref()) {
        return r;
    }
    match state.auth().store().clients().await {
        Ok(rows) => json_response(
            StatusCode::OK,
            &Value::Array(rows.iter().map(clients::client_json).collect()),
        ),
        Err(e) => crate::serve::ApiError::from(e).into_response(),
    }
}

async fn add_client(
    State(state): State<AppState>,
    p: Option<axum::Extension<Principal>>,
    body: Bytes,
) -> Response {
    if let Some(r) = not_admin(p.as_deref()) {
        return r;
    }
    let new = match serde_json::from_slice::<Value>(&body)
        .map_err(|e| e.to_string())
        .and_then(|v| NewClient::from_json(&v))
    {
        Ok(n) => n,
        Err(e) => return outcome(StatusCode::BAD_REQUEST, "invalid", &e),
    };
    match clients::add(state.auth().store(), &new).await {
        Ok(row) => json_response(StatusCode::CREATED, &clients::client_json(&row)),
        Err(e) => outcome(StatusCode::BAD_REQUEST, "invalid", &e.to_string()),
    }
}

async fn revoke_client(
    State(state): State<AppState>,
    p: Option<axum::Extension<Principal>>,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = not_admin(p.as_deref()) {
        return r;
    }
    match state
        .auth()
        .store()
        .revoke_client(&id, &crate::store::time::now())
        .await
    {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("no active client {id}"),
        ),
        Err(e) => crate::serve::ApiError::from(e).into_response(),
    }
}

async fn rotate_key(
    State(state): State<AppState>,
    p: Option<axum::Extension<Principal>>,
) -> Response {
    if let Some(r) = not_admin(p.as_deref()) {
        return r;
    }
    match state.auth().rotate().await {
        Ok(kid) => json_response(StatusCode::OK, &json!({ "kid": kid })),
        Err(e) => oauth_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Interaction::*;

    #[test]
    fn interactions_of_requests() {
        let one = |t: &str, i| Need::One(t.into(), i);
        assert_eq!(need(&Method::GET, "/fhir/metadata"), Need::Public);
        assert_eq!(need(&Method::GET, "/health"), Need::Public);
        assert_eq!(need(&Method::GET, "/admin/clients"), Need::Token);
        assert_eq!(need(&Method::GET, "/sponsor/endpoints"), Need::Token);
        assert_eq!(need(&Method::POST, "/fhir"), Need::Bundle);
        assert_eq!(need(&Method::POST, "/fhir/"), Need::Bundle);
        assert_eq!(
            need(&Method::POST, "/fhir/Procedure"),
            one("Procedure", Create)
        );
        assert_eq!(
            need(&Method::GET, "/fhir/Procedure"),
            one("Procedure", Search)
        );
        assert_eq!(
            need(&Method::GET, "/fhir/Procedure/1"),
            one("Procedure", Read)
        );
        assert_eq!(
            need(&Method::GET, "/fhir/Procedure/1/_history/2"),
            one("Procedure", Read)
        );
        assert_eq!(
            need(&Method::GET, "/fhir/Procedure/_history"),
            one("Procedure", Search)
        );
        assert_eq!(need(&Method::GET, "/fhir/_history"), one("*", Search));
        assert_eq!(
            need(&Method::PUT, "/fhir/Procedure/1"),
            one("Procedure", Update)
        );
        assert_eq!(
            need(&Method::PUT, "/fhir/Procedure"),
            one("Procedure", Update)
        );
        assert_eq!(
            need(&Method::PATCH, "/fhir/Procedure/1"),
            one("Procedure", Update)
        );
        assert_eq!(
            need(&Method::PATCH, "/fhir/Procedure"),
            one("Procedure", Update)
        );
        assert_eq!(
            need(&Method::DELETE, "/fhir/Procedure"),
            one("Procedure", Delete)
        );
        assert_eq!(
            need(&Method::GET, "/fhir/Pat%69ent/1"),
            one("Patient", Read)
        );
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(
            need(&Method::DELETE, "/fhir/Procedure/1"),
            one("Procedure", Delete)
        );
    }
}
