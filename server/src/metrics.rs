//! Counters, and their Prometheus text rendering for `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use veil_net::CapCounters;

use crate::state::Lifecycle;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests by (route, status).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Prompt tokens processed.
    tokens_in: AtomicU64,
    tokens_cached: AtomicU64,
    /// Tokens generated.
    tokens_out: AtomicU64,
    /// Evidence produced.
    pub(crate) attestations: AtomicU64,
    /// Receipts signed.
    pub(crate) receipts: AtomicU64,
    /// Unseal + load time, milliseconds.
    pub(crate) unseal_ms: AtomicU64,
    /// Plaintext bytes opened so far.
    pub(crate) unsealed_bytes: AtomicU64,
    /// Connections open now (in the TLS handshake or serving), and those closed at once
    /// because `--max-connections` were open, or `--max-connections-per-peer` from that
    /// address.
    pub(crate) connections: Arc<CapCounters>,
    /// Requests answered 408 because their body did not arrive within `--body-timeout`.
    pub(crate) body_timeouts: AtomicU64,
    /// `/v1/attestation` requests refused by the per-peer rate limit.
    pub(crate) attest_limited_peer: AtomicU64,
    /// `/v1/attestation` requests refused by the global rate limit.
    pub(crate) attest_limited_global: AtomicU64,
    /// What start-up hardening and model loading achieved: (measure, 1 or 0).
    pub(crate) hardening: Mutex<BTreeMap<&'static str, bool>>,
    /// Bytes of this process locked in memory (`VmLck`) once the model is loaded.
    pub(crate) locked_bytes: AtomicU64,
    /// Leases renewed.
    pub(crate) lease_renewals: AtomicU64,
    /// Times the server locked because a renewal was refused.
    pub(crate) lease_locks_revoked: AtomicU64,
    /// Times the server locked because the lease ran out.
    pub(crate) lease_locks_expired: AtomicU64,
    /// When the lease held runs out, Unix seconds (0: none held).
    pub(crate) lease_expires_at: AtomicU64,
    /// Bytes of weights the last lock overwrote with zeros, as the wipe counted them.
    pub(crate) wiped_bytes: AtomicU64,
    /// Bytes the last wipe read back that were not zero (0 when it held).
    pub(crate) wipe_nonzero_bytes: AtomicU64,
}

/// One metric family: its name, Prometheus type, help text (if it has one) and samples,
/// each as (labels, value).
type Family = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Vec<(String, String)>,
);

impl Metrics {
    /// Counts a request.
    pub fn count(&self, route: &str, status: u16) {
        *self
            .requests
            .lock()
            .expect("no panics while holding it")
            .entry((route.to_owned(), status))
            .or_default() += 1;
    }

    /// Adds token counts.
    pub fn count_tokens(&self, prompt: u32, completion: u32, cached: u32) {
        self.tokens_in
            .fetch_add(u64::from(prompt), Ordering::Relaxed);
        self.tokens_cached
            .fetch_add(u64::from(cached), Ordering::Relaxed);
        self.tokens_out
            .fetch_add(u64::from(completion), Ordering::Relaxed);
    }

    /// Records whether a hardening measure (`not_dumpable`, `core_limit_zero`, ...) holds.
    pub fn set_hardening(&self, measure: &'static str, holds: bool) {
        self.hardening
            .lock()
            .expect("no panics while holding it")
            .insert(measure, holds);
    }

    /// The Prometheus text exposition (format 0.0.4), with `state` (a
    /// [`Lifecycle::name`]) as the current lifecycle state and the engine's queue depth.
    pub fn render(&self, state: &str, queue_depth: usize) -> String {
        let requests = self
            .requests
            .lock()
            .expect("no panics while holding it")
            .iter()
            .map(|((route, status), n)| {
                (
                    format!("{{route=\"{route}\",status=\"{status}\"}}"),
                    n.to_string(),
                )
            })
            .collect();
        let states = Lifecycle::NAMES
            .iter()
            .map(|name| {
                (
                    format!("{{state=\"{name}\"}}"),
                    u8::from(state == *name).to_string(),
                )
            })
            .collect();
        let one = |value: String| vec![(String::new(), value)];
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let hardening = self
            .hardening
            .lock()
            .expect("no panics while holding it")
            .iter()
            .map(|(measure, holds)| {
                (
                    format!("{{measure=\"{measure}\"}}"),
                    u8::from(*holds).to_string(),
                )
            })
            .collect();
        let by = |label: &str, pairs: [(&str, &AtomicU64); 2]| {
            pairs
                .iter()
                .map(|(value, counter)| {
                    (
                        format!("{{{label}=\"{value}\"}}"),
                        load(counter).to_string(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let families: [Family; 21] = [
            (
                "veil_requests_total",
                "counter",
                Some("HTTP requests by route and status."),
                requests,
            ),
            (
                "veil_state",
                "gauge",
                Some("Lifecycle state (1 for the current one)."),
                states,
            ),
            (
                "veil_queue_depth",
                "gauge",
                None,
                one(queue_depth.to_string()),
            ),
            (
                "veil_tokens_in_total",
                "counter",
                None,
                one(load(&self.tokens_in).to_string()),
            ),
            (
                "veil_tokens_cached_total",
                "counter",
                Some("Prompt tokens reused from an earlier request of the same cache scope."),
                one(load(&self.tokens_cached).to_string()),
            ),
            (
                "veil_tokens_out_total",
                "counter",
                None,
                one(load(&self.tokens_out).to_string()),
            ),
            (
                "veil_attestations_total",
                "counter",
                None,
                one(load(&self.attestations).to_string()),
            ),
            (
                "veil_receipts_total",
                "counter",
                Some("Receipts signed (one per completion answered)."),
                one(load(&self.receipts).to_string()),
            ),
            (
                "veil_unseal_seconds",
                "gauge",
                None,
                one(format!("{:.3}", load(&self.unseal_ms) as f64 / 1000.0)),
            ),
            (
                "veil_unsealed_bytes",
                "gauge",
                None,
                one(load(&self.unsealed_bytes).to_string()),
            ),
            (
                "veil_connections_open",
                "gauge",
                Some("TLS connections open now."),
                one(load(&self.connections.open).to_string()),
            ),
            (
                "veil_connections_refused_total",
                "counter",
                Some("Connections closed at once by a connection cap."),
                by(
                    "cap",
                    [
                        ("total", &self.connections.refused_total),
                        ("per_peer", &self.connections.refused_per_peer),
                    ],
                ),
            ),
            (
                "veil_request_body_timeouts_total",
                "counter",
                Some("Requests answered 408: the body did not arrive in time."),
                one(load(&self.body_timeouts).to_string()),
            ),
            (
                "veil_attestation_rate_limited_total",
                "counter",
                Some("Attestation requests answered 429, by the limit that refused them."),
                by(
                    "limit",
                    [
                        ("per_peer", &self.attest_limited_peer),
                        ("global", &self.attest_limited_global),
                    ],
                ),
            ),
            (
                "veil_hardening",
                "gauge",
                Some("Whether each protection of the weights holds (1) or not (0)."),
                hardening,
            ),
            (
                "veil_locked_bytes",
                "gauge",
                Some("Bytes of this process locked in memory once the model is loaded."),
                one(load(&self.locked_bytes).to_string()),
            ),
            (
                "veil_lease_expires_at_seconds",
                "gauge",
                Some("When the key's lease runs out, Unix seconds (0: no lease held)."),
                one(load(&self.lease_expires_at).to_string()),
            ),
            (
                "veil_lease_renewals_total",
                "counter",
                None,
                one(load(&self.lease_renewals).to_string()),
            ),
            (
                "veil_lease_locks_total",
                "counter",
                Some("Times the server stopped serving and wiped the weights, by why."),
                by(
                    "reason",
                    [
                        ("lease_revoked", &self.lease_locks_revoked),
                        ("lease_expired", &self.lease_locks_expired),
                    ],
                ),
            ),
            (
                "veil_model_wiped_bytes",
                "gauge",
                Some("Bytes of weights the last lock overwrote with zeros."),
                one(load(&self.wiped_bytes).to_string()),
            ),
            (
                "veil_model_wipe_nonzero_bytes",
                "gauge",
                Some("Bytes the last wipe read back that were not zero (0 when it held)."),
                one(load(&self.wipe_nonzero_bytes).to_string()),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, samples) in families {
            if let Some(help) = help {
                let _ = writeln!(out, "# HELP {name} {help}");
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_in_the_exposition_format() {
        let m = Metrics::default();
        m.count("/ready", 503);
        m.count("/ready", 503);
        m.count("/health", 200);
        m.count_tokens(5, 7, 3);
        m.attestations.store(3, Ordering::Relaxed);
        m.receipts.store(8, Ordering::Relaxed);
        m.unseal_ms.store(1234, Ordering::Relaxed);
        m.unsealed_bytes.store(99, Ordering::Relaxed);
        m.connections.open.store(4, Ordering::Relaxed);
        m.connections.refused_total.store(1, Ordering::Relaxed);
        m.connections.refused_per_peer.store(2, Ordering::Relaxed);
        m.body_timeouts.store(5, Ordering::Relaxed);
        m.attest_limited_peer.store(6, Ordering::Relaxed);
        m.set_hardening("not_dumpable", false);
        m.set_hardening("core_limit_zero", true);
        m.locked_bytes.store(4096, Ordering::Relaxed);
        m.lease_expires_at.store(1_800_000_000, Ordering::Relaxed);
        m.lease_renewals.store(3, Ordering::Relaxed);
        m.lease_locks_expired.store(1, Ordering::Relaxed);
        m.wiped_bytes.store(4096, Ordering::Relaxed);
        assert_eq!(
            m.render("ready", 2),
            "# HELP veil_requests_total HTTP requests by route and status.\n\
             # TYPE veil_requests_total counter\n\
             veil_requests_total{route=\"/health\",status=\"200\"} 1\n\
             veil_requests_total{route=\"/ready\",status=\"503\"} 2\n\
             # HELP veil_state Lifecycle state (1 for the current one).\n\
             # TYPE veil_state gauge\n\
             veil_state{state=\"locked\"} 0\n\
             veil_state{state=\"unsealing\"} 0\n\
             veil_state{state=\"ready\"} 1\n\
             veil_state{state=\"failed\"} 0\n\
             # TYPE veil_queue_depth gauge\n\
             veil_queue_depth 2\n\
             # TYPE veil_tokens_in_total counter\n\
             veil_tokens_in_total 5\n\
             # HELP veil_tokens_cached_total Prompt tokens reused from an earlier request of the same cache scope.\n\
             # TYPE veil_tokens_cached_total counter\n\
             veil_tokens_cached_total 3\n\
             # TYPE veil_tokens_out_total counter\n\
             veil_tokens_out_total 7\n\
             # TYPE veil_attestations_total counter\n\
             veil_attestations_total 3\n\
             # HELP veil_receipts_total Receipts signed (one per completion answered).\n\
             # TYPE veil_receipts_total counter\n\
             veil_receipts_total 8\n\
             # TYPE veil_unseal_seconds gauge\n\
             veil_unseal_seconds 1.234\n\
             # TYPE veil_unsealed_bytes gauge\n\
             veil_unsealed_bytes 99\n\
             # HELP veil_connections_open TLS connections open now.\n\
             # TYPE veil_connections_open gauge\n\
             veil_connections_open 4\n\
             # HELP veil_connections_refused_total Connections closed at once by a connection cap.\n\
             # TYPE veil_connections_refused_total counter\n\
             veil_connections_refused_total{cap=\"total\"} 1\n\
             veil_connections_refused_total{cap=\"per_peer\"} 2\n\
             # HELP veil_request_body_timeouts_total Requests answered 408: the body did not arrive in time.\n\
             # TYPE veil_request_body_timeouts_total counter\n\
             veil_request_body_timeouts_total 5\n\
             # HELP veil_attestation_rate_limited_total Attestation requests answered 429, by the limit that refused them.\n\
             # TYPE veil_attestation_rate_limited_total counter\n\
             veil_attestation_rate_limited_total{limit=\"per_peer\"} 6\n\
             veil_attestation_rate_limited_total{limit=\"global\"} 0\n\
             # HELP veil_hardening Whether each protection of the weights holds (1) or not (0).\n\
             # TYPE veil_hardening gauge\n\
             veil_hardening{measure=\"core_limit_zero\"} 1\n\
             veil_hardening{measure=\"not_dumpable\"} 0\n\
             # HELP veil_locked_bytes Bytes of this process locked in memory once the model is loaded.\n\
             # TYPE veil_locked_bytes gauge\n\
             veil_locked_bytes 4096\n\
             # HELP veil_lease_expires_at_seconds When the key's lease runs out, Unix seconds (0: no lease held).\n\
             # TYPE veil_lease_expires_at_seconds gauge\n\
             veil_lease_expires_at_seconds 1800000000\n\
             # TYPE veil_lease_renewals_total counter\n\
             veil_lease_renewals_total 3\n\
             # HELP veil_lease_locks_total Times the server stopped serving and wiped the weights, by why.\n\
             # TYPE veil_lease_locks_total counter\n\
             veil_lease_locks_total{reason=\"lease_revoked\"} 0\n\
             veil_lease_locks_total{reason=\"lease_expired\"} 1\n\
             # HELP veil_model_wiped_bytes Bytes of weights the last lock overwrote with zeros.\n\
             # TYPE veil_model_wiped_bytes gauge\n\
             veil_model_wiped_bytes 4096\n\
             # HELP veil_model_wipe_nonzero_bytes Bytes the last wipe read back that were not zero (0 when it held).\n\
             # TYPE veil_model_wipe_nonzero_bytes gauge\n\
             veil_model_wipe_nonzero_bytes 0\n"
        );
    }

    #[test]
    fn a_fresh_server_renders_zeros_and_no_requests() {
        let out = Metrics::default().render("locked", 0);
        assert!(out.starts_with(
            "# HELP veil_requests_total HTTP requests by route and status.\n\
             # TYPE veil_requests_total counter\n\
             # HELP veil_state"
        ));
        assert!(out.contains("veil_state{state=\"locked\"} 1\n"));
        assert!(out.contains(
            "veil_unseal_seconds 0.000\n# TYPE veil_unsealed_bytes gauge\nveil_unsealed_bytes 0\n"
        ));
        assert!(out.contains("veil_connections_refused_total{cap=\"per_peer\"} 0\n"));
        assert!(out.contains("veil_locked_bytes 0\n"), "{out}");
        assert!(out.ends_with("veil_model_wipe_nonzero_bytes 0\n"), "{out}");
    }
}
