//! The server's state: lifecycle, keys, the attester, the engine once unsealed, metrics.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use serde::Serialize;
use veil_attestation::{Attester, WrappingKey};
use veil_model::{Engine, EngineConfig};
use veil_sealing::SealedHeader;

/// Where the server is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum Lifecycle {
    /// Waiting for the model key.
    Locked,
    /// The key arrived; the weights are being opened and loaded.
    Unsealing,
    /// Serving.
    Ready,
    /// Unsealing or loading failed; the reason names what.
    Failed(String),
}

impl Lifecycle {
    /// A stable name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Lifecycle::Locked => "locked",
            Lifecycle::Unsealing => "unsealing",
            Lifecycle::Ready => "ready",
            Lifecycle::Failed(_) => "failed",
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests by (route, status).
    pub requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Prompt tokens processed.
    pub tokens_in: AtomicU64,
    /// Tokens generated.
    pub tokens_out: AtomicU64,
    /// Evidence produced.
    pub attestations: AtomicU64,
    /// Unseal + load time, milliseconds.
    pub unseal_ms: AtomicU64,
    /// Plaintext bytes opened so far.
    pub unsealed_bytes: AtomicU64,
}

/// A token bucket: `rate` per second, up to `burst`.
#[derive(Debug)]
pub struct RateLimit {
    state: Mutex<(f64, Instant)>,
    rate: f64,
    burst: f64,
}

impl RateLimit {
    /// A bucket that starts full.
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimit {
            state: Mutex::new((burst, Instant::now())),
            rate,
            burst,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&self) -> bool {
        let mut s = self
            .state
            .lock()
            .expect("no panics while holding the rate limiter");
        let now = Instant::now();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Everything the handlers share.
pub struct AppState {
    /// Lifecycle.
    pub lifecycle: RwLock<Lifecycle>,
    /// Produces evidence (mock or SNP).
    pub attester: Box<dyn Attester>,
    /// SHA-256 of the TLS certificate's SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
    /// The key-wrapping key (in memory only).
    pub wrapping: WrappingKey,
    /// The sealed model's header (read at start).
    pub header: SealedHeader,
    /// The sealed model file.
    pub sealed_path: PathBuf,
    /// Report data issued recently, each with the exporter of the connection it was
    /// issued on: a provisioning message must name one of them, on that connection.
    pub issued: Mutex<VecDeque<([u8; 64], [u8; 32])>>,
    /// SHA-256 of the model key that was provisioned (to answer a repeat idempotently).
    pub provisioned: Mutex<Option<[u8; 32]>>,
    /// With `--key-broker`: what the last request to the broker came to (for `/ready`).
    pub key_broker: Mutex<Option<String>>,
    /// The engine, once loaded.
    pub engine: OnceLock<Arc<dyn Engine>>,
    /// How to build the engine.
    pub engine_config: EngineConfig,
    /// Counters.
    pub metrics: Metrics,
    /// Limits `/v1/attestation` (each request costs a platform report).
    pub attest_limit: RateLimit,
    /// Largest request body.
    pub max_body: usize,
}

impl AppState {
    /// The current lifecycle state.
    pub fn state(&self) -> Lifecycle {
        self.lifecycle
            .read()
            .expect("no panics while holding the lifecycle")
            .clone()
    }

    /// Moves to `next`, logging the transition.
    pub fn set_state(&self, next: Lifecycle) {
        let mut s = self
            .lifecycle
            .write()
            .expect("no panics while holding the lifecycle");
        tracing::info!(from = s.name(), to = next.name(), "lifecycle");
        *s = next;
    }

    /// Remembers report data it issued on the connection with this exporter (bounded:
    /// the oldest is forgotten).
    pub fn remember_issued(&self, rd: [u8; 64], exporter: [u8; 32]) {
        let mut q = self.issued.lock().expect("no panics while holding it");
        if q.len() >= 256 {
            q.pop_front();
        }
        q.push_back((rd, exporter));
    }

    /// Whether this report data was issued by this server on the connection with this
    /// exporter (and forgets it: single use).
    pub fn take_issued(&self, rd: &[u8; 64], exporter: &[u8; 32]) -> bool {
        let mut q = self.issued.lock().expect("no panics while holding it");
        match q.iter().position(|(r, e)| r == rd && e == exporter) {
            Some(i) => {
                q.remove(i);
                true
            }
            None => false,
        }
    }

    /// Counts a request.
    pub fn count(&self, route: &str, status: u16) {
        *self
            .metrics
            .requests
            .lock()
            .expect("no panics while holding it")
            .entry((route.to_owned(), status))
            .or_default() += 1;
    }

    /// Adds token counts.
    pub fn count_tokens(&self, prompt: u32, completion: u32) {
        self.metrics
            .tokens_in
            .fetch_add(u64::from(prompt), Ordering::Relaxed);
        self.metrics
            .tokens_out
            .fetch_add(u64::from(completion), Ordering::Relaxed);
    }
}
