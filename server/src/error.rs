//! The one error type of the HTTP API: OpenAI's shape,
//! `{"error": {"message", "type", "code", "param"}}`.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error: status, OpenAI error type and code, a message, and the field at fault.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code (`model_locked`, `invalid_json`, ...).
    pub code: &'static str,
    /// Human-readable message (never secrets, prompts or internals).
    pub message: String,
    /// The request field at fault.
    pub param: Option<String>,
    /// Seconds after which a retry may succeed (429/503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// A 400 naming the field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            message: message.into(),
            param: Some(param.to_owned()),
            retry_after: None,
        }
    }

    /// Any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// Adds `Retry-After`.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            // OpenAI answers a missing or wrong API key so.
            401 => "invalid_request_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": { "message": self.message, "type": self.kind(), "code": self.code, "param": self.param }
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(status, "request_too_large", "the request body is too large");
        }
        if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            return ApiError::new(
                status,
                "invalid_content_type",
                "expected Content-Type: application/json",
            );
        }
        let message = r.body_text();
        // serde names the field: "unknown field `x`" / "missing field `x`" / "...at line".
        let param = message.split('`').nth(1).map(str::to_owned);
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_json",
            message,
            param,
            retry_after: None,
        }
    }
}

/// `Json` that answers bad input in the API's error shape.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A JSON body, parsed as [`Json`] does, with the SHA-256 of its bytes exactly as they
/// arrived (what a receipt states).
#[derive(Debug)]
pub struct HashedJson<T> {
    /// The parsed body.
    pub value: T,
    /// SHA-256 of the body's bytes.
    pub sha256: [u8; 32],
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S>
    for HashedJson<T>
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .is_some_and(|m| {
                m.eq_ignore_ascii_case("application/json")
                    || (m.len() > 5 && m[m.len() - 5..].eq_ignore_ascii_case("+json"))
            });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_content_type",
                "expected Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::from(JsonRejection::from(e)))?;
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(HashedJson {
            value,
            sha256: veil_attestation::receipt::sha256(&bytes),
        })
    }
}
