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
use veil_net::{
    effective_total_cap, raise_descriptor_limit, AcceptBackoff, Caps, DescriptorLimit,
    RESERVED_DESCRIPTORS,
};

use crate::api::ChannelBinding;
use crate::metrics::Metrics;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the listener bounds its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once (in the handshake or serving); more are closed at once.
    /// Lowered at start to leave [`veil_net::RESERVED_DESCRIPTORS`]
    /// (64) of the descriptor limit free.
    pub max_connections: usize,
    /// Connections open at once from one peer IP address; more are closed at once.
    pub max_connections_per_peer: usize,
    /// How long a connection may go without a complete request header: a new connection
    /// before its first request, a kept-alive one between requests, a header sent slowly.
    pub idle_timeout: Duration,
    /// How long in-flight requests may drain on shutdown.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: Self::DEFAULT_MAX_CONNECTIONS_PER_PEER,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            drain: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// `--max-connections` unless given.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
    /// `--max-connections-per-peer` unless given.
    pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 64;
    /// `--idle-timeout` unless given.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then drains in-flight
/// connections for up to `limits.drain`.
///
/// It first raises the soft limit on open descriptors to the hard limit
/// ([`veil_net::raise_descriptor_limit`]). An error from `accept()` (most often "Too many open
/// files") never ends the loop: it is logged at most once a second, with a count of the
/// ones left out, and the loop pauses (50 ms, growing to 800 ms while it lasts) before it
/// accepts again.
///
/// A connection past `limits.max_connections` in all, or `limits.max_connections_per_peer`
/// from its address, is closed at once (never queued), counted in
/// `veil_connections_refused_total` and logged at most once a second.
///
/// # Errors
/// None today; the `Result` is kept for the caller.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let descriptors = raise_descriptor_limit();
    match &descriptors {
        DescriptorLimit::Kept { .. } => tracing::warn!("{descriptors}"),
        _ => tracing::info!("{descriptors}"),
    }
    let descriptors = descriptors.in_force();
    let total = effective_total_cap(limits.max_connections, descriptors, RESERVED_DESCRIPTORS, 1);
    if total < limits.max_connections {
        tracing::warn!(
            max_connections = limits.max_connections,
            lowered_to = total,
            descriptors = descriptors.unwrap_or(0),
            "connection cap lowered to leave descriptors free"
        );
    }
    tracing::info!(
        max_connections = total,
        max_connections_per_peer = limits.max_connections_per_peer,
        idle_timeout_s = limits.idle_timeout.as_secs(),
        "connection limits"
    );
    let connections = Caps::new(
        total,
        limits.max_connections_per_peer,
        Arc::clone(&metrics.connections),
    );
    tokio::pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
    let mut refusals = AcceptBackoff::default();
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
        let ip = peer.ip().to_canonical();
        let slot = match Caps::admit(&connections, ip) {
            Ok(slot) => slot,
            Err(cap) => {
                // Closed at once: dropping the socket sends the FIN.
                drop(tcp);
                let _ = refusals.failed(Instant::now(), |suppressed| {
                    tracing::warn!(%peer, cap = cap.name(), suppressed, "connection refused: cap reached");
                });
                continue;
            }
        };
        // Streamed tokens are small writes: send each at once (no Nagle delay).
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        let idle_timeout = limits.idle_timeout;
        tokio::spawn(async move {
            // Held for the connection's life: its place under the caps.
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
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
            let binding = ChannelBinding::new(exporter, Some(ip));
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(binding.clone());
                    app.clone().oneshot(req)
                },
            );
            // A client that opens a connection and then sends nothing, keeps it idle
            // between requests, or sends a header a byte at a time, is cut off after
            // `idle_timeout` rather than holding the connection forever. (A slow body is
            // bounded by `--body-timeout`, in the router.)
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(idle_timeout)
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down: draining connections");
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing the remaining connections");
    }
    Ok(())
}
