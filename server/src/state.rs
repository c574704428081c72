//! The server's state: lifecycle, keys, the attester, metrics; and the one way the server
//! issues evidence.

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use veil_attestation::binding::Transcript;
use veil_attestation::{Attester, Evidence, WrappingKey};
use veil_model::{Engine, EngineConfig};
use veil_sealing::SealedHeader;

use crate::metrics::Metrics;

/// Where the server is in its life. It moves only forward: `Locked` → `Unsealing` →
/// `Ready` or `Failed`.
#[derive(Clone)]
pub enum Lifecycle {
    /// Waiting for the model key.
    Locked,
    /// The key arrived; the weights are being opened and loaded.
    Unsealing,
    /// Serving, with this engine.
    Ready(Arc<dyn Engine>),
    /// Unsealing or loading failed; the reason names what.
    Failed(String),
}

impl Lifecycle {
    /// Every state's name, in lifecycle order (as `/metrics` lists them).
    pub const NAMES: [&'static str; 4] = ["locked", "unsealing", "ready", "failed"];

    /// A stable name for logs, `/ready` and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Lifecycle::Locked => "locked",
            Lifecycle::Unsealing => "unsealing",
            Lifecycle::Ready(_) => "ready",
            Lifecycle::Failed(_) => "failed",
        }
    }
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lifecycle::Locked => f.write_str("Locked"),
            Lifecycle::Unsealing => f.write_str("Unsealing"),
            Lifecycle::Ready(engine) => write!(f, "Ready({:?})", engine.info().name),
            Lifecycle::Failed(reason) => f.debug_tuple("Failed").field(reason).finish(),
        }
    }
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

/// Why the server could not issue evidence.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The blocking task that asks the platform did not finish.
    #[error("attestation failed")]
    Interrupted,
    /// The platform could not produce a report (the cause is logged, not shown).
    #[error("the platform could not produce evidence")]
    Platform,
}

/// Everything the handlers share. Built with [`AppState::builder`].
pub struct AppState {
    /// The lifecycle; moved only by [`AppState::begin_unsealing`] and
    /// [`AppState::finish_unsealing`].
    lifecycle: RwLock<Lifecycle>,
    /// Produces evidence (mock or SNP); called only by [`AppState::issue_evidence`].
    attester: Arc<dyn Attester>,
    /// SHA-256 of the TLS certificate's SubjectPublicKeyInfo.
    spki_sha256: [u8; 32],
    /// The key-wrapping key (in memory only).
    pub(crate) wrapping: WrappingKey,
    /// The sealed model's header (read at start).
    pub(crate) header: SealedHeader,
    /// The sealed model file.
    pub(crate) sealed_path: PathBuf,
    /// Report data issued recently, each with the exporter of the connection it was
    /// issued on: a provisioning message must name one of them, on that connection.
    issued: Mutex<VecDeque<([u8; 64], [u8; 32])>>,
    /// With `--key-broker`: what the last request to the broker came to (for `/ready`).
    key_broker: Mutex<Option<String>>,
    /// How to build the engine.
    pub(crate) engine_config: EngineConfig,
    /// Counters.
    pub(crate) metrics: Metrics,
    /// Limits `/v1/attestation` (each request costs a platform report).
    pub(crate) attest_limit: RateLimit,
    /// Largest request body.
    pub(crate) max_body: usize,
}

/// Builds a locked [`AppState`] with a fresh wrapping key.
pub struct AppStateBuilder {
    attester: Arc<dyn Attester>,
    spki_sha256: [u8; 32],
    header: SealedHeader,
    sealed_path: PathBuf,
    engine_config: EngineConfig,
    attest_limit: RateLimit,
    max_body: usize,
}

impl AppStateBuilder {
    /// How to build the engine once unsealed (default: [`EngineConfig::default`]).
    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.engine_config = config;
        self
    }

    /// `/v1/attestation` requests allowed per second, and in a burst (default 20, 40).
    pub fn attest_limit(mut self, rate: f64, burst: f64) -> Self {
        self.attest_limit = RateLimit::new(rate, burst);
        self
    }

    /// The largest request body in bytes (default 1 MiB).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The state, `Locked`, with a fresh [`WrappingKey`].
    pub fn build(self) -> AppState {
        AppState {
            lifecycle: RwLock::new(Lifecycle::Locked),
            attester: self.attester,
            spki_sha256: self.spki_sha256,
            wrapping: WrappingKey::generate(),
            header: self.header,
            sealed_path: self.sealed_path,
            issued: Mutex::new(VecDeque::new()),
            key_broker: Mutex::new(None),
            engine_config: self.engine_config,
            metrics: Metrics::default(),
            attest_limit: self.attest_limit,
            max_body: self.max_body,
        }
    }
}

impl AppState {
    /// The largest request body unless [`AppStateBuilder::max_body`] says otherwise.
    pub const DEFAULT_MAX_BODY: usize = 1 << 20;

    /// A builder for the state of a server whose TLS key hashes to `spki_sha256` and
    /// whose sealed model, at `sealed_path`, has `header`.
    pub fn builder(
        attester: Box<dyn Attester>,
        spki_sha256: [u8; 32],
        header: SealedHeader,
        sealed_path: PathBuf,
    ) -> AppStateBuilder {
        AppStateBuilder {
            attester: Arc::from(attester),
            spki_sha256,
            header,
            sealed_path,
            engine_config: EngineConfig::default(),
            attest_limit: RateLimit::new(20.0, 40.0),
            max_body: Self::DEFAULT_MAX_BODY,
        }
    }

    /// The current lifecycle state.
    pub fn state(&self) -> Lifecycle {
        self.lifecycle
            .read()
            .expect("no panics while holding the lifecycle")
            .clone()
    }

    /// SHA-256 of the TLS certificate's SubjectPublicKeyInfo, which evidence binds.
    pub fn spki_sha256(&self) -> [u8; 32] {
        self.spki_sha256
    }

    /// The public half of the wrapping key, which evidence binds.
    pub fn wrap_pk(&self) -> [u8; 32] {
        self.wrapping.public()
    }

    /// Moves from `Locked` to `Unsealing`, in one step; `false` (and no change) in any
    /// other state. Whoever gets `true` unseals.
    pub(crate) fn begin_unsealing(&self) -> bool {
        let mut s = self
            .lifecycle
            .write()
            .expect("no panics while holding the lifecycle");
        if !matches!(*s, Lifecycle::Locked) {
            return false;
        }
        tracing::info!(from = s.name(), to = "unsealing", "lifecycle");
        *s = Lifecycle::Unsealing;
        true
    }

    /// Moves from `Unsealing` to `Ready` with the engine, or to `Failed` with the reason.
    pub(crate) fn finish_unsealing(&self, outcome: Result<Arc<dyn Engine>, String>) {
        let next = match outcome {
            Ok(engine) => Lifecycle::Ready(engine),
            Err(reason) => Lifecycle::Failed(reason),
        };
        let mut s = self
            .lifecycle
            .write()
            .expect("no panics while holding the lifecycle");
        debug_assert!(matches!(*s, Lifecycle::Unsealing), "finished from {s:?}");
        tracing::info!(from = s.name(), to = next.name(), "lifecycle");
        *s = next;
    }

    /// The TEE kind the attester speaks for and the interface it reports through
    /// (`("snp", "configfs-tsm")`, `("MOCK", "mock platform")`), for `/ready` and the log.
    pub fn attester_kind(&self) -> (String, String) {
        (self.attester.tee().to_string(), self.attester.interface())
    }

    /// Evidence for `transcript`: the attester's report over its report data, with the
    /// binding it states attached. Counted in `veil_attestations_total`.
    ///
    /// # Errors
    /// [`EvidenceError`]; a platform failure is logged here with its cause.
    pub async fn issue_evidence(&self, transcript: &Transcript) -> Result<Evidence, EvidenceError> {
        let attester = Arc::clone(&self.attester);
        let transcript = *transcript;
        let evidence = tokio::task::spawn_blocking(move || attester.attest(&transcript))
            .await
            .map_err(|_| EvidenceError::Interrupted)?
            .map_err(|e| {
                tracing::error!(error = %e, "attestation failed");
                EvidenceError::Platform
            })?;
        self.metrics.attestations.fetch_add(1, Ordering::Relaxed);
        Ok(evidence)
    }

    /// Remembers report data it issued on the connection with this exporter (bounded:
    /// the oldest is forgotten).
    pub(crate) fn remember_issued(&self, rd: [u8; 64], exporter: [u8; 32]) {
        let mut q = self.issued.lock().expect("no panics while holding it");
        if q.len() >= 256 {
            q.pop_front();
        }
        q.push_back((rd, exporter));
    }

    /// Whether this report data was issued by this server on the connection with this
    /// exporter (and forgets it: single use).
    pub(crate) fn take_issued(&self, rd: &[u8; 64], exporter: &[u8; 32]) -> bool {
        let mut q = self.issued.lock().expect("no panics while holding it");
        match q.iter().position(|(r, e)| r == rd && e == exporter) {
            Some(i) => {
                q.remove(i);
                true
            }
            None => false,
        }
    }

    /// What the last request to the key broker came to, if there is one.
    pub(crate) fn key_broker_status(&self) -> Option<String> {
        self.key_broker
            .lock()
            .expect("no panics while holding it")
            .clone()
    }

    /// Records what the last request to the key broker came to.
    pub(crate) fn set_key_broker_status(&self, status: String) {
        *self.key_broker.lock().expect("no panics while holding it") = Some(status);
    }
}
