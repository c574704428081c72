//! What the local HTTP services of `veil` (`proxy`, `broker`) share: the HTTP/1.1 accept
//! loop, JSON answers, shutdown on Ctrl-C or SIGTERM, and reloading the policy on SIGHUP.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
/// It first raises the soft limit on open descriptors to the hard limit
/// ([`raise_descriptor_limit`]). An error from `accept()` (most often "Too many open
/// files") never ends the loop: it is logged at most once a second, with a count of the
/// ones left out, and the loop sleeps a little (50 ms, growing to 800 ms while it lasts)
/// before it accepts again.
///
/// # Errors
/// None today; the `Result` is kept for the callers.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    <H::Body as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    eprintln!("veil: {}", raise_descriptor_limit());
    tokio::pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
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

/// Raises the soft limit on open descriptors (`RLIMIT_NOFILE`) to the hard limit, so
/// that a burst of connections meets the limit the administrator set, not the lower
/// default; returns what it became, for the start-up log.
pub fn raise_descriptor_limit() -> String {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    if before.current == before.maximum {
        return format!(
            "open-descriptor limit {} (already the hard limit)",
            show(before.current)
        );
    }
    let raised = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => format!(
            "open-descriptor limit raised from {} to the hard limit {}",
            show(before.current),
            show(before.maximum)
        ),
        Err(e) => format!(
            "open-descriptor limit stays {} (raising it to {} failed: {e})",
            show(before.current),
            show(before.maximum)
        ),
    }
}

/// How an accept loop paces itself while `accept()` fails: the pause grows from
/// [`AcceptBackoff::FIRST_PAUSE`] to [`AcceptBackoff::LONGEST_PAUSE`], and one line is
/// logged per [`AcceptBackoff::LOG_EVERY`] at most, counting the errors left out.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    pause: Option<Duration>,
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    /// The pause after the first error of a run.
    pub const FIRST_PAUSE: Duration = Duration::from_millis(50);
    /// The longest pause, however long the errors last.
    pub const LONGEST_PAUSE: Duration = Duration::from_millis(800);
    /// At most one log line per this long.
    pub const LOG_EVERY: Duration = Duration::from_secs(1);

    /// Records an error at `now`: calls `log` with the number of errors not logged since
    /// the last line if a line is due, and returns how long to pause.
    pub fn failed(&mut self, now: Instant, log: impl FnOnce(u64)) -> Duration {
        let due = self
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= Self::LOG_EVERY);
        if due {
            log(self.suppressed);
            self.last_logged = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        let pause = self
            .pause
            .map_or(Self::FIRST_PAUSE, |p| (p * 2).min(Self::LONGEST_PAUSE));
        self.pause = Some(pause);
        pause
    }

    /// Records an accepted connection: the next error starts from the first pause again.
    pub fn succeeded(&mut self) {
        self.pause = None;
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

    #[test]
    fn accept_errors_are_logged_once_a_second_and_the_pause_grows_to_a_bound() {
        let mut b = AcceptBackoff::default();
        let start = Instant::now();
        let mut logged = Vec::new();
        let mut pauses = Vec::new();
        for i in 0..40u32 {
            let now = start + Duration::from_millis(50) * i;
            pauses.push(b.failed(now, |n| logged.push(n)));
        }
        // 2 s of errors every 50 ms: one line at 0 s and one at 1 s, the second counting
        // the 19 in between.
        assert_eq!(logged, [0, 19]);
        assert_eq!(pauses[0], AcceptBackoff::FIRST_PAUSE);
        assert!(pauses[1] > pauses[0]);
        assert_eq!(pauses[39], AcceptBackoff::LONGEST_PAUSE);
        b.succeeded();
        assert_eq!(b.failed(start, |_| ()), AcceptBackoff::FIRST_PAUSE);
    }

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
