//! The request body of FHIR writes: refused with an OperationOutcome when its media type
//! is not JSON (415) or it exceeds the configured size (413); otherwise the exact bytes, kept
//! for the ledger, and their text.

use super::error::ApiError;
use super::AppState;
use axum::extract::{FromRequest, Request};
use axum::http::header;

/// A request body within the size limit. A body whose media type is not JSON is still
/// read (the ledger keeps what was sent) and carries its refusal in `refused`.
pub struct FhirBody {
    /// The bytes as sent.
    pub bytes: axum::body::Bytes,
    /// The request's `Content-Type`.
    pub content_type: Option<String>,
    /// Why the body cannot be taken as FHIR JSON (415), if so.
    pub refused: Option<ApiError>,
}

impl FhirBody {
    /// The body as UTF-8 text.
    ///
    /// # Errors
    /// [`ApiError::Malformed`] when it is not UTF-8.
    pub fn text(&self) -> Result<&str, ApiError> {
        std::str::from_utf8(&self.bytes).map_err(|e| ApiError::Malformed {
            message: format!("the body is not UTF-8 (byte {})", e.valid_up_to()),
            issues: Vec::new(),
        })
    }
}

/// Whether a `Content-Type` names FHIR JSON (or plain JSON).
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "application/fhir+json" | "application/json" | "application/json+fhir"
    )
}

impl FromRequest<AppState> for FhirBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let refused = match content_type.as_deref() {
            Some(ct) if is_json(ct) => None,
            Some(ct) => Some(ApiError::UnsupportedMediaType(format!(
                "Content-Type {ct} is not supported; send application/fhir+json"
            ))),
            None => Some(ApiError::UnsupportedMediaType(
                "no Content-Type; send application/fhir+json".into(),
            )),
        };
        let limit = state.config().max_body;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| ApiError::TooLarge(limit))?;
        Ok(FhirBody {
            bytes,
            content_type,
            refused,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_media_types() {
        assert!(super::is_json("application/fhir+json; charset=utf-8"));
        assert!(super::is_json("Application/JSON"));
        assert!(!super::is_json("application/fhir+xml"));
        assert!(!super::is_json("text/plain"));
    }
}
