//! What the local HTTP services of `veil` (`proxy`, `broker`) share: the HTTP/1.1 accept
//! loop, JSON answers, shutdown on Ctrl-C or SIGTERM, and reloading the policy on SIGHUP.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// The longest a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A service that answers each request.
pub trait Handler: Send + Sync + 'static {
    /// The body of its responses.
    type Body: Body<Data = Bytes> + Send + 'static;

    /// Answers one request from `peer`.
    fn handle(
        &self,
        req: Request<Incoming>,
        peer: std::net::SocketAddr,
    ) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// Serves `handler` on `listener` until `shutdown` resolves: HTTP/1.1, one task per
/// connection, TCP_NODELAY (streamed tokens are small writes), and a
/// [`HEADER_READ_TIMEOUT`] for each request's headers.
///
/// # Errors
/// If accepting fails fatally.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    <H::Body as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted.context("accepting a connection")?,
            () = &mut shutdown => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handler = Arc::clone(&handler);
                async move { Ok::<_, Infallible>(handler.handle(req, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A request body over its limit, or one that broke off before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTooLarge {
    /// The limit, in bytes.
    pub limit: usize,
}

impl BodyTooLarge {
    /// The HTTP status to answer with: 413.
    pub const STATUS: StatusCode = StatusCode::PAYLOAD_TOO_LARGE;
    /// The error code of the JSON answer.
    pub const CODE: &'static str = "request_too_large";
}

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body is over {} bytes or broke off",
            self.limit
        )
    }
}

impl std::error::Error for BodyTooLarge {}

/// Reads a request body whole, up to `limit` bytes.
///
/// # Errors
/// [`BodyTooLarge`] if it is longer than `limit` or breaks off; answer with
/// [`BodyTooLarge::STATUS`], [`BodyTooLarge::CODE`] and its message.
pub async fn read_body<B: Body>(body: B, limit: usize) -> Result<Bytes, BodyTooLarge>
where
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(BodyTooLarge { limit }),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// Calls `reload` on every SIGHUP; it loads what `what` names, puts it in force and
/// says what it did. An error is reported on stderr and what was in force stays so. Call
/// it before announcing the service: until it has run, SIGHUP ends the process.
///
/// # Errors
/// If the signal handler cannot be installed (it must run inside the Tokio runtime).
pub fn reload_on_sighup(
    what: String,
    reload: impl Fn() -> anyhow::Result<String> + Send + 'static,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match reload() {
                Ok(done) => eprintln!("veil: {done}"),
                Err(e) => {
                    eprintln!("veil: {what} not reloaded, the previous one stays in force: {e:#}")
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_up_to_the_limit_is_read_whole() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        assert_eq!(
            read_body(body, 10).await,
            Ok(Bytes::from_static(b"0123456789"))
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_with_the_limit_named() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        let e = read_body(body, 9).await.expect_err("over the limit");
        assert_eq!(e, BodyTooLarge { limit: 9 });
        assert_eq!(
            e.to_string(),
            "the request body is over 9 bytes or broke off"
        );
        assert_eq!(BodyTooLarge::STATUS, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(BodyTooLarge::CODE, "request_too_large");
    }
}
