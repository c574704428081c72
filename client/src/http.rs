//! What the local HTTP services of `veil` (`proxy`, `broker`) share: the HTTP/1.1 accept
//! loop with its connection caps and timeouts, JSON answers, bounded body reads, shutdown
//! on Ctrl-C or SIGTERM, and reloading the policy on SIGHUP.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::http::Extensions;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use veil_net::{effective_total_cap, raise_descriptor_limit, AcceptBackoff, CapCounters, Caps};

/// How a service bounds its connections and requests (`--max-connections`,
/// `--max-connections-per-peer`, `--idle-timeout`, `--body-timeout`).
#[derive(Args, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenLimits {
    /// Connections open at once; more are closed at once. Lowered at start to what the
    /// open-descriptor limit allows, with 16 left free.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_connections: usize,
    /// Connections open at once from one IP address; more are closed at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_connections_per_peer: usize,
    /// Seconds a connection may go without a complete request header (before its first
    /// request, between requests, or while a header trickles in).
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,
    /// Seconds a request body may take to arrive whole; then 408.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout: u64,
}

impl Default for ListenLimits {
    fn default() -> Self {
        ListenLimits {
            max_connections: 256,
            max_connections_per_peer: 64,
            idle_timeout: 30,
            body_timeout: 30,
        }
    }
}

/// Descriptors kept free of connections for what a service opens besides them (key files
/// on reload, the KDS, logs).
const RESERVED_DESCRIPTORS: u64 = 16;

/// How long a request's body may take, as [`serve`] puts it in each request's extensions
/// for [`read_body`].
#[derive(Debug, Clone, Copy)]
struct BodyTimeout(Duration);

/// A service that answers each request.
pub trait Handler: Send + Sync + 'static {
    /// The body of its responses.
    type Body: Body<Data = Bytes> + Send + 'static;

    /// Descriptors each connection uses (a proxy also opens one upstream).
    const DESCRIPTORS_PER_CONNECTION: u64 = 1;

    /// Answers one request from `peer`.
    fn handle(
        &self,
        req: Request<Incoming>,
        peer: std::net::SocketAddr,
    ) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// Serves `handler` on `listener` until `shutdown` resolves: HTTP/1.1, one task per
/// connection, TCP_NODELAY (streamed tokens are small writes), and `limits`: a connection
/// past either cap is closed at once (logged at most once a second), a request header
/// must arrive within `idle_timeout`, and [`read_body`] gives up after `body_timeout`.
///
/// It first raises the soft limit on open descriptors to the hard limit
/// ([`raise_descriptor_limit`]) and lowers the total cap to what that allows, leaving 16
/// free. An
/// error from `accept()` (most often "Too many open files") never ends the loop: it is
/// logged at most once a second, with a count of the ones left out, and the loop sleeps a
/// little (50 ms, growing to 800 ms while it lasts) before it accepts again.
///
/// # Errors
/// None today; the `Result` is kept for the callers.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ListenLimits,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    <H::Body as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let descriptors = raise_descriptor_limit();
    eprintln!("veil: {descriptors}");
    let total = effective_total_cap(
        limits.max_connections,
        descriptors.in_force(),
        RESERVED_DESCRIPTORS,
        H::DESCRIPTORS_PER_CONNECTION,
    );
    eprintln!(
        "veil: at most {total} connections ({} from one address){}; idle timeout {} s, body timeout {} s",
        limits.max_connections_per_peer,
        if total < limits.max_connections {
            format!(" (--max-connections {} lowered to leave descriptors free)", limits.max_connections)
        } else {
            String::new()
        },
        limits.idle_timeout,
        limits.body_timeout,
    );
    let caps = Caps::new(
        total,
        limits.max_connections_per_peer,
        Arc::new(CapCounters::default()),
    );
    let idle_timeout = Duration::from_secs(limits.idle_timeout);
    let body_timeout = BodyTimeout(Duration::from_secs(limits.body_timeout));
    tokio::pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
    let mut refusals = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return Ok(()),
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff.succeeded();
                a
            }
            Err(e) => {
                let pause = backoff.failed(Instant::now(), |suppressed| {
                    eprintln!(
                        "veil: accepting a connection failed: {e} ({suppressed} more such errors not shown); retrying"
                    );
                });
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = &mut shutdown => return Ok(()),
                }
            }
        };
        let slot = match Caps::admit(&caps, peer.ip()) {
            Ok(slot) => slot,
            Err(cap) => {
                // Closed at once: dropping the socket sends the FIN.
                drop(tcp);
                let _ = refusals.failed(Instant::now(), |suppressed| {
                    eprintln!(
                        "veil: connection from {peer} refused: --{} reached ({suppressed} more refusals not shown)",
                        cap.name()
                    );
                });
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            // Held for the connection's life: its place under the caps.
            let _slot = slot;
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let handler = Arc::clone(&handler);
                req.extensions_mut().insert(body_timeout);
                async move { Ok::<_, Infallible>(handler.handle(req, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(idle_timeout)
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

/// Why a request body could not be read: over its limit or broken off, or too slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than `limit` bytes, or it broke off before its end.
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// Not complete within the body timeout.
    TimedOut {
        /// The timeout.
        after: Duration,
    },
}

impl BodyError {
    /// The HTTP status to answer with: 413 or 408.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TimedOut { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The error code of the JSON answer.
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "request_too_large",
            BodyError::TimedOut { .. } => "request_timeout",
        }
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge { limit } => {
                write!(f, "the request body is over {limit} bytes or broke off")
            }
            BodyError::TimedOut { after } => write!(
                f,
                "the request body did not arrive within {} s (--body-timeout)",
                after.as_secs()
            ),
        }
    }
}

impl std::error::Error for BodyError {}

/// Reads a request body whole, up to `limit` bytes, within the body timeout [`serve`] put
/// in the request's `extensions` (30 s if none).
///
/// # Errors
/// [`BodyError`]: answer with its [`status`](BodyError::status),
/// [`code`](BodyError::code) and message.
pub async fn read_body<B: Body>(
    extensions: &Extensions,
    body: B,
    limit: usize,
) -> Result<Bytes, BodyError>
where
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let after = extensions
        .get::<BodyTimeout>()
        .map_or(Duration::from_secs(30), |t| t.0);
    match tokio::time::timeout(after, Limited::new(body, limit).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(_)) => Err(BodyError::TooLarge { limit }),
        Err(_) => Err(BodyError::TimedOut { after }),
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
            read_body(&Extensions::new(), body, 10).await,
            Ok(Bytes::from_static(b"0123456789"))
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_with_the_limit_named() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        let e = read_body(&Extensions::new(), body, 9)
            .await
            .expect_err("over the limit");
        assert_eq!(e, BodyError::TooLarge { limit: 9 });
        assert_eq!(
            e.to_string(),
            "the request body is over 9 bytes or broke off"
        );
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.code(), "request_too_large");
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_is_refused_with_408() {
        // A body that never sends a frame, nor ends.
        let body = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<hyper::body::Frame<Bytes>, Infallible>,
        >());
        let mut extensions = Extensions::new();
        extensions.insert(BodyTimeout(Duration::from_millis(100)));
        let e = read_body(&extensions, body, 1 << 10)
            .await
            .expect_err("timed out");
        assert_eq!(
            e,
            BodyError::TimedOut {
                after: Duration::from_millis(100)
            }
        );
        assert_eq!(e.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(e.to_string().contains("--body-timeout"), "{e}");
    }
}
