//! The route table, and the routes that are not the OpenAI API: attestation,
//! provisioning, health, readiness and metrics; plus the request-counting middleware.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use hyper::body::Body as HttpBody;
use serde::Deserialize;
use serde_json::json;
use veil_attestation::binding::{BindingError, Nonce, Purpose, Transcript, MAX_NONCE, MIN_NONCE};
use veil_attestation::KeyRelease;
use veil_sealing::KeyId;

use crate::error::{ApiError, Json};
use crate::openai::{chat_completions, completions, embeddings, model, models};
use crate::state::{AppState, IssuedOnConnection, Lifecycle, Limited};
use crate::unlock::{accept_key, Accepted, UnlockError};

/// What the listener knows of the TLS connection a request came on (set per connection):
/// its RFC 9266 exporter, the peer's address, and the report data issued on it.
#[derive(Debug, Clone)]
pub struct ChannelBinding {
    /// `EXPORTER-Channel-Binding`, 32 bytes.
    pub exporter: [u8; 32],
    /// The peer's IP address (for per-peer rate limits); `None` when unknown.
    pub peer: Option<IpAddr>,
    /// Report data issued on this connection (shared by its requests, dropped with it).
    pub issued: Arc<IssuedOnConnection>,
}

impl ChannelBinding {
    /// A new connection's binding: nothing issued on it yet.
    pub fn new(exporter: [u8; 32], peer: Option<IpAddr>) -> Self {
        ChannelBinding {
            exporter,
            peer,
            issued: Arc::default(),
        }
    }
}

/// The router, with every route and the request-counting middleware.
pub fn app(state: Arc<AppState>) -> Router {
    let max_body = state.max_body;
    // The model's routes: behind the API keys when there are some.
    let openai = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_api_key,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/attestation", get(attestation))
        .route("/v1/provision", post(provision))
        .merge(openai)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            bound_body,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// With `--api-keys`: a request without a listed key gets 401 before its body is read.
/// The caller goes to the handler as an extension (it scopes the prompt cache).
async fn require_api_key(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(keys) = &state.api_keys {
        match keys.caller(req.headers()) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
            }
            Err(refused) => return refused.into_response(),
        }
    }
    next.run(req).await
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

/// Bounds the time a request body may take to arrive (`--body-timeout`, from the end of
/// its header): a body still incomplete then is cut off, and the answer is 408
/// `request_timeout` with `Connection: close`, counted in
/// `veil_request_body_timeouts_total`.
async fn bound_body(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let timeout = state.body_timeout;
    let expired = Arc::new(AtomicBool::new(false));
    let deadline = tokio::time::Instant::now() + timeout;
    let flag = Arc::clone(&expired);
    let req = req.map(move |inner| {
        Body::new(TimedBody {
            inner,
            deadline,
            sleep: None,
            expired: flag,
        })
    });
    let response = next.run(req).await;
    if !expired.load(Ordering::Relaxed) {
        return response;
    }
    state.metrics.body_timeouts.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(timeout_s = timeout.as_secs(), "request body timed out");
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request body did not arrive within {} (--body-timeout)",
            seconds(timeout)
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `30 s`, or `0.2 s` for less than a second.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// The error a [`TimedBody`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

/// A request body that fails with [`BodyTimedOut`] once `deadline` passes while it waits
/// for the client (data already received is always handed on).
struct TimedBody {
    inner: Body,
    deadline: tokio::time::Instant,
    /// Made on the first wait.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
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
        Lifecycle::Locked => {
            if let Some(reason) = state.locked_for() {
                body["reason"] = json!(reason.code());
                body["message"] = json!(reason.message());
                // False while the engine is being stopped and the weights overwritten.
                body["weights_wiped"] = json!(
                    state.metrics.wiped_bytes.load(Ordering::Relaxed) > 0
                        && state.metrics.wipe_nonzero_bytes.load(Ordering::Relaxed) == 0
                );
            }
        }
        Lifecycle::Unsealing => {
            body["unsealed_bytes"] = json!(state.metrics.unsealed_bytes.load(Ordering::Relaxed));
            body["total_bytes"] = json!(state.header.plaintext_len);
        }
        _ => {}
    }
    if let Some(pull) = state.key_broker_status() {
        body["key_broker"] = json!(pull);
    }
    if let Some(lease) = state.held_lease() {
        let now = std::time::Instant::now();
        body["lease"] = json!({
            "ttl_s": lease.terms.ttl_s,
            "grace_s": lease.terms.grace_s,
            "expires_in_s": lease.expires().saturating_duration_since(now).as_secs(),
            "renewals": lease.renewals,
        });
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
    if let Err(limited) = state.attest_limit.try_take(binding.peer) {
        let (counter, message, retry_after) = match limited {
            Limited::Peer { retry_after } => (
                &state.metrics.attest_limited_peer,
                "too many attestation requests from this address",
                retry_after,
            ),
            Limited::Global { retry_after } => (
                &state.metrics.attest_limited_global,
                "too many attestation requests",
                retry_after,
            ),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        return Err(
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
                .retry_after(retry_after),
        );
    }
    let transcript = Transcript {
        purpose: Purpose::ClientSession,
        nonce,
        spki_sha256: state.spki_sha256(),
        exporter: Some(binding.exporter),
        wrap_pk: state.wrap_pk(),
        model_sha256: state.header.model_sha256,
        receipt_pk: state.receipt_pk(),
    };
    let evidence = state.issue_evidence(&transcript).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "attestation_failed",
            e.to_string(),
        )
    })?;
    binding.issued.remember(transcript.report_data());
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
    if !binding.issued.take(&report_data) {
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
    let terms = crate::lease::Terms {
        lease: msg.lease,
        asked_at: std::time::Instant::now(),
    };
    match accept_key(&state, key_id, secret, terms)? {
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
