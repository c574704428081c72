//! The route table, and the routes that are not the OpenAI API: attestation,
//! provisioning, health, readiness and metrics; plus the request-counting middleware.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::json;
use veil_attestation::binding::{BindingError, Nonce, Purpose, Transcript, MAX_NONCE, MIN_NONCE};
use veil_attestation::KeyRelease;
use veil_sealing::KeyId;

use crate::error::{ApiError, Json};
use crate::openai::{chat_completions, models};
use crate::state::{AppState, Lifecycle};
use crate::unlock::{accept_key, Accepted, UnlockError};

/// The RFC 9266 exporter of the TLS connection a request came on (set per connection).
#[derive(Debug, Clone, Copy)]
pub struct ChannelBinding {
    /// `EXPORTER-Channel-Binding`, 32 bytes.
    pub exporter: [u8; 32],
}

/// The router, with every route and the request-counting middleware.
pub fn app(state: Arc<AppState>) -> Router {
    let max_body = state.max_body;
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/attestation", get(attestation))
        .route("/v1/provision", post(provision))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn count_requests(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    state.metrics.count(&route, response.status().as_u16());
    response
}

async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let s = state.state();
    let (tee, interface) = state.attester_kind();
    let mut body = json!({ "state": s.name(), "tee": tee, "interface": interface });
    match &s {
        Lifecycle::Failed(reason) => body["reason"] = json!(reason),
        Lifecycle::Unsealing => {
            body["unsealed_bytes"] = json!(state.metrics.unsealed_bytes.load(Ordering::Relaxed));
            body["total_bytes"] = json!(state.header.plaintext_len);
        }
        _ => {}
    }
    if let Some(pull) = state.key_broker_status() {
        body["key_broker"] = json!(pull);
    }
    let status = if matches!(s, Lifecycle::Ready(_)) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let s = state.state();
    let queue = match &s {
        Lifecycle::Ready(engine) => engine.queue_depth(),
        _ => 0,
    };
    let out = state.metrics.render(s.name(), queue);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[derive(Deserialize)]
struct AttestationQuery {
    nonce: Option<String>,
}

/// `GET /v1/attestation?nonce=<base64url>`: evidence bound to the nonce, this TLS key,
/// this connection's exporter, the wrapping key and the sealed model.
async fn attestation(
    State(state): State<Arc<AppState>>,
    binding: Option<Extension<ChannelBinding>>,
    Query(q): Query<AttestationQuery>,
) -> Result<Response, ApiError> {
    let nonce_text = q.nonce.ok_or_else(|| {
        ApiError::invalid("nonce", "nonce is required (base64url, 16 to 64 bytes)")
    })?;
    let nonce = Nonce::from_base64url(&nonce_text).map_err(|e| match e {
        BindingError::NonceLength { found } => ApiError::invalid(
            "nonce",
            format!("nonce must be {MIN_NONCE} to {MAX_NONCE} bytes, got {found}"),
        ),
        _ => ApiError::invalid("nonce", "nonce is not base64url"),
    })?;
    let Some(Extension(binding)) = binding else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_channel",
            "attestation is only served over TLS",
        ));
    };
    if !state.attest_limit.try_take() {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many attestation requests",
        )
        .retry_after(1));
    }
    let transcript = Transcript {
        purpose: Purpose::ClientSession,
        nonce,
        spki_sha256: state.spki_sha256(),
        exporter: Some(binding.exporter),
        wrap_pk: state.wrap_pk(),
        model_sha256: state.header.model_sha256,
    };
    let evidence = state.issue_evidence(&transcript).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "attestation_failed",
            e.to_string(),
        )
    })?;
    state.remember_issued(transcript.report_data(), binding.exporter);
    let body = serde_json::to_value(&evidence).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })?;
    Ok(Json(body).into_response())
}

/// `POST /v1/provision`: the model key, HPKE-sealed to the wrapping key for report data
/// this server issued on this same connection.
async fn provision(
    State(state): State<Arc<AppState>>,
    binding: Option<Extension<ChannelBinding>>,
    Json(msg): Json<KeyRelease>,
) -> Result<Response, ApiError> {
    let Some(Extension(binding)) = binding else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_channel",
            "provisioning is only accepted over TLS",
        ));
    };
    let report_data = msg.report_data;
    let key_id = KeyId(msg.key_id);
    if key_id != state.header.key_id {
        return Err(ApiError {
            param: Some("key_id".into()),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "wrong_key_id",
                format!(
                    "this server's model is sealed with key {}, not {key_id}",
                    state.header.key_id
                ),
            )
        });
    }
    if !state.take_issued(&report_data, &binding.exporter) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "unknown_report_data",
            "report_data was not issued on this connection (or was already used): attest again on the connection that provisions",
        ));
    }
    let secret = state.wrapping.open(&msg, &report_data).map_err(|_| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "key_release_refused",
            "the key-release message does not open with this server's wrapping key",
        )
    })?;
    match accept_key(&state, key_id, secret)? {
        Accepted::Repeat => Ok((
            StatusCode::OK,
            Json(json!({ "status": state.state().name(), "idempotent": true })),
        )
            .into_response()),
        Accepted::Unsealing => {
            Ok((StatusCode::ACCEPTED, Json(json!({ "status": "unsealing" }))).into_response())
        }
    }
}

/// A refused key's answer: 403 `wrong_key`, the server stays locked.
impl From<UnlockError> for ApiError {
    fn from(e: UnlockError) -> Self {
        match e {
            UnlockError::WrongKey { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "wrong_key", e.to_string())
            }
        }
    }
}
