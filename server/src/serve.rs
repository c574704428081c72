//! The listener: TLS 1.3 handshakes, the per-connection exporter, HTTP/1.1 with axum, and
//! graceful shutdown.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::api::ChannelBinding;
use crate::metrics::Metrics;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors kept free of connections for everything else the server opens (the sealed
/// model, the memfd, the broker, logs): the total cap is lowered to leave them.
const RESERVED_DESCRIPTORS: u64 = 64;

/// How the listener bounds its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once (in the handshake or serving); more are closed at once.
    /// Lowered at start to leave `RESERVED_DESCRIPTORS` (64) of the descriptor limit free.
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
/// ([`raise_descriptor_limit`]). An error from `accept()` (most often "Too many open
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
    let total = effective_total_cap(limits.max_connections, descriptors);
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
    let connections = Arc::new(Connections::new(
        total,
        limits.max_connections_per_peer,
        Arc::clone(&metrics),
    ));
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
        let slot = match Connections::admit(&connections, ip) {
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

/// The total connection cap that leaves [`RESERVED_DESCRIPTORS`] of the soft descriptor
/// limit (`None`: unlimited) for everything else, but at least 1.
fn effective_total_cap(max_connections: usize, descriptors: Option<u64>) -> usize {
    match descriptors {
        None => max_connections,
        Some(limit) => {
            let room = usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS).max(1))
                .unwrap_or(usize::MAX);
            max_connections.min(room)
        }
    }
}

/// The cap a refused connection met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    Total,
    PerPeer,
}

impl Cap {
    fn name(self) -> &'static str {
        match self {
            Cap::Total => "max-connections",
            Cap::PerPeer => "max-connections-per-peer",
        }
    }
}

/// The connections open now, in all and per peer address.
#[derive(Debug)]
struct Connections {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    total: usize,
    per_peer: usize,
    metrics: Arc<Metrics>,
}

/// A connection's place under the caps, given back when dropped.
#[derive(Debug)]
struct Slot {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    fn new(total: usize, per_peer: usize, metrics: Arc<Metrics>) -> Self {
        Connections {
            open: Mutex::new((0, HashMap::new())),
            total,
            per_peer,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a connection from `ip`, or the cap it would pass (counted).
    fn admit(this: &Arc<Self>, ip: IpAddr) -> Result<Slot, Cap> {
        let mut open = this.lock();
        let from_peer = open.1.get(&ip).copied().unwrap_or(0);
        let refused = if open.0 >= this.total {
            Some((Cap::Total, &this.metrics.refused_total_cap))
        } else if from_peer >= this.per_peer {
            Some((Cap::PerPeer, &this.metrics.refused_peer_cap))
        } else {
            None
        };
        if let Some((cap, counter)) = refused {
            counter.fetch_add(1, Ordering::Relaxed);
            return Err(cap);
        }
        open.0 += 1;
        *open.1.entry(ip).or_default() += 1;
        this.metrics
            .connections_open
            .store(open.0 as u64, Ordering::Relaxed);
        Ok(Slot {
            connections: Arc::clone(this),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.connections.lock();
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
        self.connections
            .metrics
            .connections_open
            .store(open.0 as u64, Ordering::Relaxed);
    }
}

/// Raises the soft limit on open descriptors (`RLIMIT_NOFILE`) to the hard limit, so that
/// a burst of connections meets the limit the administrator set, not the lower default;
/// logs what it became, and returns the soft limit now in force (`None`: unlimited).
pub fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    let (soft, hard) = (show(before.current), show(before.maximum));
    if before.current == before.maximum {
        tracing::info!(limit = %soft, "open-descriptor limit (already the hard limit)");
        return before.current;
    }
    let raised = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::info!(from = %soft, to = %hard, "open-descriptor limit raised to the hard limit");
            before.maximum
        }
        Err(e) => {
            tracing::warn!(limit = %soft, hard = %hard, error = %e, "open-descriptor limit could not be raised");
            before.current
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
    fn connections_past_either_cap_are_refused_and_a_closed_one_frees_its_place() {
        let metrics = Arc::new(Metrics::default());
        let c = Arc::new(Connections::new(3, 2, Arc::clone(&metrics)));
        let (a, b): (IpAddr, IpAddr) = ([127, 0, 0, 2].into(), [127, 0, 0, 1].into());
        let a1 = Connections::admit(&c, a).expect("first from a");
        let _a2 = Connections::admit(&c, a).expect("second from a");
        assert_eq!(Connections::admit(&c, a).err(), Some(Cap::PerPeer));
        let _b1 = Connections::admit(&c, b).expect("another peer is still served");
        assert_eq!(Connections::admit(&c, b).err(), Some(Cap::Total));
        assert_eq!(metrics.refused_peer_cap.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.refused_total_cap.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.connections_open.load(Ordering::Relaxed), 3);
        drop(a1);
        assert_eq!(metrics.connections_open.load(Ordering::Relaxed), 2);
        let _a3 = Connections::admit(&c, a).expect("a closed connection frees its place");
    }

    #[test]
    fn the_total_cap_leaves_descriptors_free() {
        assert_eq!(effective_total_cap(512, None), 512);
        assert_eq!(effective_total_cap(512, Some(1 << 20)), 512);
        assert_eq!(effective_total_cap(512, Some(256)), 192);
        assert_eq!(effective_total_cap(512, Some(10)), 1);
    }

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
