//! The one place where failures become HTTP responses: every handler returns
//! [`ApiError`], and its [`IntoResponse`] renders a FHIR OperationOutcome with the status and
//! issue code below.
//!
//! | variant | status | issue code |
//! |---|---|---|
//! | `Malformed` (not JSON, too deep, wrong shape of a Bundle) | 400 | `invalid` (or the parse issues) |
//! | `BadRequest` (resourceType/URL or id mismatch, missing id) | 400 | `invalid` |
//! | `NotSupported` (criteria or parameter the server does not handle) | 400 | `not-supported` |
//! | `Forbidden` (the caller's role does not allow it, or outside the token's narrowed scopes) | 403 | `forbidden` |
//! | `UnknownType` | 404 | `not-supported` |
//! | `NotFound` | 404 | `not-found` |
//! | `Gone` (deleted) | 410 | `deleted` |
//! | `MethodNotAllowed` | 405 | `not-supported` |
//! | `Conflict` (lost a write race after retries) | 409 | `conflict` |
//! | `PreconditionFailed` (`If-Match`) | 412 | `conflict` |
//! | `MultipleMatches` (conditional create/update) | 412 | `multiple-matches` |
//! | `TooLarge` | 413 | `too-costly` |
//! | `UnsupportedMediaType` | 415 | `not-supported` |
//! | `Invalid` (validation errors; input de-identification cannot make safe) | 422 | the validator's codes, every issue listed; `business-rule` at the location for de-identification |
//! | `Unprocessable` (a patch that does not apply, a failing `test`) | 422 | `processing` |
//! | `Store`, `Internal` | 500 | `exception`, generic text |
//! | `Unavailable` (database unreachable) | 503 | `transient`, generic text |
//!
//! 5xx responses say only that something failed and give the request id; the detail rides
//! in an [`ErrorDetail`] response extension that the request middleware logs.

use crate::store::StoreError;
use crate::validate::{operation_outcome, Issue};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The media type of every FHIR response.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, nests too deeply, or is not shaped as the interaction needs.
    #[error("{message}")]
    Malformed {
        /// Summary.
        message: String,
        /// The parse issues, when the body was FHIR JSON that could not be read.
        issues: Vec<Issue>,
    },
    /// The request contradicts itself (type or id in the URL and body differ).
    #[error("{0}")]
    BadRequest(String),
    /// A feature the server does not offer.
    #[error("{0}")]
    NotSupported(String),
    /// The caller is authenticated but its role does not allow the request, or its
    /// scopes (narrowed by search parameters) do not reach the resource.
    #[error("{0}")]
    Forbidden(String),
    /// Not a resource type of FHIR R4.
    #[error("unknown resource type {0}")]
    UnknownType(String),
    /// No such resource or version.
    #[error("{0}")]
    NotFound(String),
    /// The resource was deleted.
    #[error("{0}")]
    Gone(String),
    /// The method does not apply to this URL.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A concurrent write kept winning.
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` named a version that is not current.
    #[error("{0}")]
    PreconditionFailed(String),
    /// Conditional criteria matched more than one resource.
    #[error("{0}")]
    MultipleMatches(String),
    /// The body exceeds the configured limit.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// The body is not FHIR JSON by its `Content-Type`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The resource does not validate: every issue, errors and warnings.
    #[error("the resource does not conform")]
    Invalid(Vec<Issue>),
    /// A well-formed request that cannot be carried out on the resource as it is (a
    /// patch whose path does not exist, a failing JSON Patch `test`).
    #[error("{0}")]
    Unprocessable(String),
    /// The database failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The database cannot be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else that should not happen.
    #[error("internal: {0}")]
    Internal(String),
}

/// The detail of a 5xx failure, for the logs only.
#[derive(Debug, Clone)]
pub struct ErrorDetail(pub String);

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Malformed { .. } | ApiError::BadRequest(_) | ApiError::NotSupported(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::UnknownType(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) | ApiError::MultipleMatches(_) => {
                StatusCode::PRECONDITION_FAILED
            }
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid(_) | ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Store(StoreError::Conflict) => StatusCode::CONFLICT,
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The OperationOutcome describing the failure (generic for 5xx).
    pub fn operation_outcome(&self) -> String {
        let code = match self {
            ApiError::Malformed { issues, .. } if !issues.is_empty() => {
                return operation_outcome(issues)
            }
            ApiError::Invalid(issues) => return operation_outcome(issues),
            ApiError::Malformed { .. } | ApiError::BadRequest(_) => "invalid",
            ApiError::NotSupported(_)
            | ApiError::UnknownType(_)
            | ApiError::MethodNotAllowed(_)
            | ApiError::UnsupportedMediaType(_) => "not-supported",
            ApiError::NotFound(_) => "not-found",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Gone(_) => "deleted",
            ApiError::Conflict(_) | ApiError::PreconditionFailed(_) => "conflict",
            ApiError::Store(StoreError::Conflict) => "conflict",
            ApiError::MultipleMatches(_) => "multiple-matches",
            ApiError::TooLarge(_) => "too-costly",
            ApiError::Unprocessable(_) => "processing",
            ApiError::Unavailable(_) => {
                return outcome("error", "transient", "the database is not reachable")
            }
            ApiError::Store(_) | ApiError::Internal(_) => {
                return outcome(
                    "fatal",
                    "exception",
                    "the server failed to process the request; quote the X-Request-Id when reporting it",
                )
            }
        };
        outcome("error", code, &self.to_string())
    }
}

/// An OperationOutcome with one issue.
pub fn outcome(severity: &str, code: &str, text: &str) -> String {
    let mut out = String::from("{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":");
    crate::model::json::write_str(&mut out, severity);
    out.push_str(",\"code\":");
    crate::model::json::write_str(&mut out, code);
    out.push_str(",\"diagnostics\":");
    crate::model::json::write_str(&mut out, text);
    out.push_str("}]}");
    out
}

impl From<crate::model::json::SyntaxError> for ApiError {
    fn from(e: crate::model::json::SyntaxError) -> Self {
        ApiError::Malformed {
            message: format!("malformed JSON at byte {}: {}", e.offset, e.message),
            issues: Vec::new(),
        }
    }
}

impl From<crate::endpoints::EndpointsError> for ApiError {
    fn from(e: crate::endpoints::EndpointsError) -> Self {
        match e {
            crate::endpoints::EndpointsError::Store(s) => ApiError::Store(s),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::pseudonymize::Unsafe> for ApiError {
    fn from(e: crate::pseudonymize::Unsafe) -> Self {
        ApiError::Invalid(vec![Issue {
            severity: crate::validate::Severity::Error,
            kind: crate::validate::IssueType::BusinessRule,
            message: format!("de-identification refused the resource: {}", e.reason),
            location: e.location,
            line: None,
            column: None,
            rule: Some("imagio-deidentify".into()),
        }])
    }
}

impl From<super::patch::PatchError> for ApiError {
    fn from(e: super::patch::PatchError) -> Self {
        match e {
            super::patch::PatchError::Malformed(_) => ApiError::BadRequest(e.to_string()),
            _ => ApiError::Unprocessable(e.to_string()),
        }
    }
}

impl From<crate::views::ViewError> for ApiError {
    fn from(e: crate::views::ViewError) -> Self {
        use crate::views::ViewError;
        match e {
            ViewError::Invalid { .. } | ViewError::Input(_) => ApiError::BadRequest(e.to_string()),
            ViewError::Eval { .. } => ApiError::Unprocessable(e.to_string()),
            ViewError::Store(s) => ApiError::Store(s),
            ViewError::Io(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.operation_outcome();
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        if status.is_server_error() {
            response
                .extensions_mut()
                .insert(ErrorDetail(self.to_string()));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_say_little() {
        let e = ApiError::Internal("secret path /var/lib".into());
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.operation_outcome().contains("secret"));
        let r = e.into_response();
        assert!(r.extensions().get::<ErrorDetail>().is_some());
        let nf = ApiError::NotFound("Patient/x is not known".into());
        assert_eq!(nf.status(), StatusCode::NOT_FOUND);
        assert!(nf.operation_outcome().contains("\"not-found\""));
    }
}
