//! The listener: TLS 1.3 handshakes, the per-connection exporter, HTTP/1.1 with axum, and
//! graceful shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::api::ChannelBinding;

/// How long a client may take to send a request's header (also while a kept-alive
/// connection waits for the next request).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then drains in-flight
/// connections for up to `drain`.
///
/// It first raises the soft limit on open descriptors to the hard limit
/// ([`raise_descriptor_limit`]). An error from `accept()` (most often "Too many open
/// files") never ends the loop: it is logged at most once a second, with a count of the
/// ones left out, and the loop pauses (50 ms, growing to 800 ms while it lasts) before it
/// accepts again.
///
/// # Errors
/// None today; the `Result` is kept for the caller.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    raise_descriptor_limit();
    tokio::pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff.succeeded();
                a
            }
            Err(e) => {
                let pause = backoff.failed(Instant::now(), |suppressed| {
                    tracing::warn!(error = %e, suppressed, "accept failed; retrying");
                });
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        // Streamed tokens are small writes: send each at once (no Nagle delay).
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            // RFC 9266 tls-exporter, computed once per connection.
            let mut exporter = [0u8; 32];
            if tls
                .get_ref()
                .1
                .export_keying_material(
                    &mut exporter,
                    veil_attestation::binding::EXPORTER_LABEL,
                    None,
                )
                .is_err()
            {
                return;
            }
            let binding = ChannelBinding { exporter };
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(binding);
                    app.clone().oneshot(req)
                },
            );
            // A client that opens a connection and then sends nothing, or a header a byte at
            // a time, is cut off rather than holding the connection forever.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down: draining connections");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing the remaining connections");
    }
    Ok(())
}

/// Raises the soft limit on open descriptors (`RLIMIT_NOFILE`) to the hard limit, so that
/// a burst of connections meets the limit the administrator set, not the lower default;
/// logs what it became.
pub fn raise_descriptor_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    let (soft, hard) = (show(before.current), show(before.maximum));
    if before.current == before.maximum {
        tracing::info!(limit = %soft, "open-descriptor limit (already the hard limit)");
        return;
    }
    let raised = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::info!(from = %soft, to = %hard, "open-descriptor limit raised to the hard limit")
        }
        Err(e) => {
            tracing::warn!(limit = %soft, hard = %hard, error = %e, "open-descriptor limit could not be raised")
        }
    }
}

/// How the accept loop paces itself while `accept()` fails: the pause grows from
/// [`AcceptBackoff::FIRST_PAUSE`] to [`AcceptBackoff::LONGEST_PAUSE`], and one line is
/// logged per [`AcceptBackoff::LOG_EVERY`] at most, counting the errors left out.
#[derive(Debug, Default)]
struct AcceptBackoff {
    pause: Option<Duration>,
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    const FIRST_PAUSE: Duration = Duration::from_millis(50);
    const LONGEST_PAUSE: Duration = Duration::from_millis(800);
    const LOG_EVERY: Duration = Duration::from_secs(1);

    /// Records an error at `now`: calls `log` with the number of errors not logged since
    /// the last line if a line is due, and returns how long to pause.
    fn failed(&mut self, now: Instant, log: impl FnOnce(u64)) -> Duration {
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
    fn succeeded(&mut self) {
        self.pause = None;
    }
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
        assert_eq!(logged, [0, 19]);
        assert_eq!(pauses[0], AcceptBackoff::FIRST_PAUSE);
        assert!(pauses[1] > pauses[0]);
        assert_eq!(pauses[39], AcceptBackoff::LONGEST_PAUSE);
        b.succeeded();
        assert_eq!(b.failed(start, |_| ()), AcceptBackoff::FIRST_PAUSE);
    }
}
