//! The server's state: lifecycle, keys, the attester, metrics; and the one way the server
//! issues evidence.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use veil_attestation::attester::AttestError;
use veil_attestation::binding::Transcript;
use veil_attestation::{Attester, Evidence, ReceiptSigner, WrappingKey};
use veil_model::{Engine, EngineConfig, ModelWipe};
use veil_sealing::SealedHeader;

use crate::auth::ApiKeys;
use crate::lease::{HeldLease, LockReason, Terms};
use crate::metrics::Metrics;

/// Where the server is in its life: `Locked` → `Unsealing` → `Ready` or `Failed`, and
/// from `Ready` back to `Locked` only when a lease on the key is revoked or runs out
/// ([`crate::lease`]; the reason is kept beside, [`AppState::locked_for`]).
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

/// A token bucket's level: `tokens` as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    /// Refills at `rate` per second up to `burst`, as of `now`.
    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
    }

    /// Whole seconds until a token is there (at least 1).
    fn wait(&self, rate: f64) -> u32 {
        let secs = ((1.0 - self.tokens) / rate).ceil();
        if secs.is_finite() {
            (secs as u32).max(1)
        } else {
            1
        }
    }
}

/// Which limit refused a request, and in how many seconds a retry may pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// The peer's own bucket is empty.
    Peer {
        /// Seconds until it holds a token again.
        retry_after: u32,
    },
    /// The bucket shared by all peers is empty.
    Global {
        /// Seconds until it holds a token again.
        retry_after: u32,
    },
}

/// Rate limits for `/v1/attestation` (each request costs a platform report): a bucket per
/// peer address under one global ceiling, so that one client cannot use up the ceiling for
/// everyone. A request takes a token from both or from neither.
#[derive(Debug)]
pub struct AttestLimit {
    state: Mutex<AttestBuckets>,
    global: (f64, f64),
    per_peer: (f64, f64),
}

#[derive(Debug)]
struct AttestBuckets {
    global: Bucket,
    peers: HashMap<IpAddr, Bucket>,
}

impl AttestLimit {
    /// Peers remembered at most; past it, the buckets that have refilled are forgotten
    /// (a full bucket is the same as none), and if none has, the peer is refused.
    pub const MAX_PEERS: usize = 4096;

    /// `global` and `per_peer` as (rate per second, burst).
    pub fn new(global: (f64, f64), per_peer: (f64, f64)) -> Self {
        AttestLimit {
            state: Mutex::new(AttestBuckets {
                global: Bucket::full(global.1, Instant::now()),
                peers: HashMap::new(),
            }),
            global,
            per_peer,
        }
    }

    /// Takes a token for `peer` (none is needed from a peer bucket when the peer is not
    /// known, as in handler tests without a socket) and one from the global bucket.
    ///
    /// # Errors
    /// [`Limited`], naming the bucket that is empty.
    pub fn try_take(&self, peer: Option<IpAddr>) -> Result<(), Limited> {
        let now = Instant::now();
        let (rate, burst) = self.per_peer;
        let mut s = self
            .state
            .lock()
            .expect("no panics while holding the rate limiter");
        s.global.refill(self.global.0, self.global.1, now);
        if let Some(peer) = peer {
            if !s.peers.contains_key(&peer) && s.peers.len() >= Self::MAX_PEERS {
                s.peers.retain(|_, b| {
                    b.refill(rate, burst, now);
                    b.tokens < burst
                });
                if s.peers.len() >= Self::MAX_PEERS {
                    return Err(Limited::Global {
                        retry_after: (1.0 / rate).ceil().max(1.0) as u32,
                    });
                }
            }
            let bucket = s.peers.entry(peer).or_insert(Bucket::full(burst, now));
            bucket.refill(rate, burst, now);
            if bucket.tokens < 1.0 {
                return Err(Limited::Peer {
                    retry_after: bucket.wait(rate),
                });
            }
        }
        if s.global.tokens < 1.0 {
            return Err(Limited::Global {
                retry_after: s.global.wait(self.global.0),
            });
        }
        s.global.tokens -= 1.0;
        if let Some(peer) = peer {
            if let Some(b) = s.peers.get_mut(&peer) {
                b.tokens -= 1.0;
            }
        }
        Ok(())
    }
}

/// Report data issued on one TLS connection, which a provisioning message on that same
/// connection must name. Each connection has its own (dropped with the connection), so no
/// other client's requests can push an owner's out; it keeps the last
/// [`IssuedOnConnection::CAPACITY`].
#[derive(Debug, Default)]
pub struct IssuedOnConnection(Mutex<VecDeque<[u8; 64]>>);

impl IssuedOnConnection {
    /// Report data remembered per connection.
    pub const CAPACITY: usize = 16;

    /// Remembers report data issued on this connection (the oldest of this connection's
    /// is forgotten past [`IssuedOnConnection::CAPACITY`]).
    pub fn remember(&self, rd: [u8; 64]) {
        let mut q = self.0.lock().expect("no panics while holding it");
        if q.len() >= Self::CAPACITY {
            q.pop_front();
        }
        q.push_back(rd);
    }

    /// Whether this report data was issued on this connection; forgets it (single use).
    pub fn take(&self, rd: &[u8; 64]) -> bool {
        let mut q = self.0.lock().expect("no panics while holding it");
        match q.iter().position(|r| r == rd) {
            Some(i) => {
                q.remove(i);
                true
            }
            None => false,
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
    /// The sealed model file, opened at start and held: removing or replacing the file
    /// afterwards changes nothing that is unsealed (shrinking it is refused at unseal).
    pub(crate) sealed: SealedFile,
    /// With `--key-broker`: what the last request to the broker came to (for `/ready`).
    key_broker: Mutex<Option<String>>,
    /// How to build the engine.
    pub(crate) engine_config: EngineConfig,
    /// Counters (shared with the listener, which counts connections).
    pub(crate) metrics: Arc<Metrics>,
    /// Limits `/v1/attestation` (each request costs a platform report).
    pub(crate) attest_limit: AttestLimit,
    /// Largest request body.
    pub(crate) max_body: usize,
    /// How long a request body may take to arrive, from the end of its header.
    pub(crate) body_timeout: Duration,
    /// Chat prompts rendered and tokenized at once (on blocking threads, not the async
    /// workers); more wait their turn.
    pub(crate) prepare: Arc<tokio::sync::Semaphore>,
    /// The model id, when known before the engine is: `--alias`, or the seal's name as a
    /// slug (made once, at build).
    model_id: Option<String>,
    /// With `--api-keys`: who may use the model.
    pub(crate) api_keys: Option<Arc<ApiKeys>>,
    /// When the engine became ready, in Unix seconds (0 before): the model's `created`.
    ready_at: AtomicU64,
    /// Signs a receipt for every completion (in memory only; its public half is bound in
    /// every transcript); `None` with `--no-receipts`.
    pub(crate) receipts: Option<ReceiptSigner>,
    /// The launch measurement, as the first report issued showed it (receipts state it).
    measurement: std::sync::OnceLock<[u8; 48]>,
    /// The lease the key was released under, if any.
    lease: Mutex<Option<HeldLease>>,
    /// Why the server is `Locked` again, after it served.
    locked_for: Mutex<Option<LockReason>>,
    /// The handle that wipes the loaded weights (taken before the memfd was sealed).
    wipe: Mutex<Option<ModelWipe>>,
}

/// The sealed model: the file opened at start, and its path for messages.
#[derive(Debug)]
pub struct SealedFile {
    /// Where it was opened.
    pub path: PathBuf,
    /// The open file, read with positional reads only.
    pub file: std::fs::File,
}

impl SealedFile {
    /// Opens `path`.
    ///
    /// # Errors
    /// If it cannot be opened.
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        let file = std::fs::File::open(&path)?;
        Ok(SealedFile { path, file })
    }
}

/// Builds a locked [`AppState`] with a fresh wrapping key.
pub struct AppStateBuilder {
    attester: Arc<dyn Attester>,
    spki_sha256: [u8; 32],
    header: SealedHeader,
    sealed: SealedFile,
    engine_config: EngineConfig,
    attest_global: (f64, f64),
    attest_per_peer: (f64, f64),
    max_body: usize,
    body_timeout: Duration,
    alias: Option<String>,
    api_keys: Option<Arc<ApiKeys>>,
    receipts: bool,
}

impl AppStateBuilder {
    /// Whether completions carry signed receipts (default: yes).
    pub fn receipts(mut self, on: bool) -> Self {
        self.receipts = on;
        self
    }

    /// The model id clients use, instead of one made from the seal's name.
    pub fn alias(mut self, alias: Option<String>) -> Self {
        self.alias = alias;
        self
    }

    /// Requires one of these API keys on the OpenAI routes.
    pub fn api_keys(mut self, keys: Option<Arc<ApiKeys>>) -> Self {
        self.api_keys = keys;
        self
    }

    /// How to build the engine once unsealed (default: [`EngineConfig::default`]).
    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.engine_config = config;
        self
    }

    /// `/v1/attestation` requests allowed per second, and in a burst, from all peers
    /// together (default [`AppState::ATTEST_GLOBAL`]).
    pub fn attest_limit(mut self, rate: f64, burst: f64) -> Self {
        self.attest_global = (rate, burst);
        self
    }

    /// `/v1/attestation` requests allowed per second, and in a burst, from one peer
    /// address (default [`AppState::ATTEST_PER_PEER`]).
    pub fn attest_limit_per_peer(mut self, rate: f64, burst: f64) -> Self {
        self.attest_per_peer = (rate, burst);
        self
    }

    /// How long a request body may take to arrive (default
    /// [`AppState::DEFAULT_BODY_TIMEOUT`]).
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// The largest request body in bytes (default 1 MiB).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The state, `Locked`, with a fresh [`WrappingKey`].
    pub fn build(self) -> AppState {
        let model_id = self
            .alias
            .or_else(|| self.header.name().and_then(veil_openai::model_slug));
        AppState {
            lifecycle: RwLock::new(Lifecycle::Locked),
            attester: self.attester,
            spki_sha256: self.spki_sha256,
            wrapping: WrappingKey::generate(),
            header: self.header,
            sealed: self.sealed,
            key_broker: Mutex::new(None),
            engine_config: self.engine_config,
            metrics: Arc::new(Metrics::default()),
            attest_limit: AttestLimit::new(self.attest_global, self.attest_per_peer),
            max_body: self.max_body,
            body_timeout: self.body_timeout,
            prepare: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
            )),
            model_id,
            api_keys: self.api_keys,
            ready_at: AtomicU64::new(0),
            receipts: self.receipts.then(ReceiptSigner::generate),
            measurement: std::sync::OnceLock::new(),
            lease: Mutex::new(None),
            locked_for: Mutex::new(None),
            wipe: Mutex::new(None),
        }
    }
}

impl AppState {
    /// The largest request body unless [`AppStateBuilder::max_body`] says otherwise.
    pub const DEFAULT_MAX_BODY: usize = 1 << 20;
    /// How long a request body may take unless [`AppStateBuilder::body_timeout`] says
    /// otherwise.
    pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
    /// `/v1/attestation` from all peers together: 20 a second, bursts of 40.
    pub const ATTEST_GLOBAL: (f64, f64) = (20.0, 40.0);
    /// `/v1/attestation` from one peer address: 5 a second, bursts of 10.
    pub const ATTEST_PER_PEER: (f64, f64) = (5.0, 10.0);

    /// A builder for the state of a server whose TLS key hashes to `spki_sha256` and
    /// whose sealed model, `sealed`, has `header`.
    pub fn builder(
        attester: Box<dyn Attester>,
        spki_sha256: [u8; 32],
        header: SealedHeader,
        sealed: SealedFile,
    ) -> AppStateBuilder {
        AppStateBuilder {
            attester: Arc::from(attester),
            spki_sha256,
            header,
            sealed,
            engine_config: EngineConfig::default(),
            attest_global: Self::ATTEST_GLOBAL,
            attest_per_peer: Self::ATTEST_PER_PEER,
            max_body: Self::DEFAULT_MAX_BODY,
            body_timeout: Self::DEFAULT_BODY_TIMEOUT,
            alias: None,
            api_keys: None,
            receipts: true,
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

    /// The public half of the receipt-signing key, which evidence binds (zeros with
    /// `--no-receipts`).
    pub fn receipt_pk(&self) -> [u8; 32] {
        self.receipts
            .as_ref()
            .map_or([0; 32], ReceiptSigner::public)
    }

    /// The launch measurement of this server's reports: as the first report issued
    /// showed it, or from a report over zeros asked for now.
    ///
    /// # Errors
    /// As [`AppState::issue_evidence`], or [`EvidenceError::Platform`] when the report
    /// does not parse.
    pub async fn measurement(&self) -> Result<[u8; 48], EvidenceError> {
        if let Some(m) = self.measurement.get() {
            return Ok(*m);
        }
        self.issue_report([0; 64]).await?;
        self.measurement
            .get()
            .copied()
            .ok_or(EvidenceError::Platform)
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
        *self.locked_for.lock().expect("no panics while holding it") = None;
        true
    }

    /// Moves from `Ready` back to `Locked` for `reason`, in one step; hands back the engine
    /// and the handle that wipes its weights, for [`crate::lease::lock`] to stop and wipe.
    /// `None` (and no change) in any other state.
    pub(crate) fn relock(
        &self,
        reason: LockReason,
    ) -> Option<(Arc<dyn Engine>, Option<ModelWipe>)> {
        let mut s = self
            .lifecycle
            .write()
            .expect("no panics while holding the lifecycle");
        let Lifecycle::Ready(engine) = &*s else {
            return None;
        };
        let engine = Arc::clone(engine);
        tracing::info!(
            from = s.name(),
            to = "locked",
            reason = reason.code(),
            "lifecycle"
        );
        *s = Lifecycle::Locked;
        match reason {
            LockReason::Revoked(_) => &self.metrics.lease_locks_revoked,
            LockReason::Expired(_) => &self.metrics.lease_locks_expired,
        }
        .fetch_add(1, Ordering::Relaxed);
        *self.locked_for.lock().expect("no panics while holding it") = Some(reason);
        *self.lease.lock().expect("no panics while holding it") = None;
        self.metrics.lease_expires_at.store(0, Ordering::Relaxed);
        // Set again by the wipe that follows.
        self.metrics.wiped_bytes.store(0, Ordering::Relaxed);
        self.ready_at.store(0, Ordering::Relaxed);
        drop(s);
        let wipe = self.wipe.lock().expect("no panics while holding it").take();
        Some((engine, wipe))
    }

    /// Why the server is `Locked` again after serving (`None` before it ever served, and
    /// once a key came back).
    pub fn locked_for(&self) -> Option<LockReason> {
        self.locked_for
            .lock()
            .expect("no panics while holding it")
            .clone()
    }

    /// The lease the key is held under (`None`: released for good, or no key yet).
    pub fn held_lease(&self) -> Option<HeldLease> {
        *self.lease.lock().expect("no panics while holding it")
    }

    /// Records the terms of a key that opened the sealed header: a lease (new, or renewing
    /// the one held: the owner's latest terms count), or none (for good).
    pub(crate) fn hold_terms(&self, terms: Terms) {
        let mut held = self.lease.lock().expect("no panics while holding it");
        *held = terms.lease.map(|lease| {
            let renewals = held.map_or(0, |h| h.renewals + 1);
            if held.is_some() {
                self.metrics.lease_renewals.fetch_add(1, Ordering::Relaxed);
            }
            HeldLease {
                terms: lease,
                asked_at: terms.asked_at,
                renewals,
            }
        });
        let expires_at = held.map_or(0, |h| {
            let left = h.expires().saturating_duration_since(Instant::now());
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| (d + left).as_secs())
        });
        self.metrics
            .lease_expires_at
            .store(expires_at, Ordering::Relaxed);
    }

    /// Keeps the handle that wipes the weights being loaded.
    pub(crate) fn keep_wipe(&self, wipe: ModelWipe) {
        *self.wipe.lock().expect("no panics while holding it") = Some(wipe);
    }

    /// Moves from `Unsealing` to `Ready` with the engine, or to `Failed` with the reason.
    pub(crate) fn finish_unsealing(&self, outcome: Result<Arc<dyn Engine>, String>) {
        let next = match outcome {
            Ok(engine) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.ready_at.store(now, Ordering::Relaxed);
                Lifecycle::Ready(engine)
            }
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

    /// The model id clients name: `--alias`, or the seal's name as a slug
    /// ([`veil_openai::model_slug`]), or the model's own name as one.
    pub fn model_id(&self, engine: &dyn Engine) -> String {
        self.model_id
            .clone()
            .or_else(|| veil_openai::model_slug(&engine.info().name))
            .unwrap_or_else(|| "model".to_owned())
    }

    /// When the engine became ready, in Unix seconds (`created` of the model).
    pub fn ready_at(&self) -> u64 {
        self.ready_at.load(Ordering::Relaxed)
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
        let transcript = *transcript;
        self.issue(move |attester| attester.attest(&transcript))
            .await
    }

    /// A raw report over exactly `report_data`, with no binding stated (for a Trustee
    /// KBS, which names its own report data). Counted in `veil_attestations_total`.
    ///
    /// # Errors
    /// As [`AppState::issue_evidence`].
    pub async fn issue_report(&self, report_data: [u8; 64]) -> Result<Evidence, EvidenceError> {
        self.issue(move |attester| attester.report(report_data))
            .await
    }

    /// Runs `attest` on a blocking thread, logs a platform failure with its cause, and
    /// counts the evidence.
    async fn issue(
        &self,
        attest: impl FnOnce(&dyn Attester) -> Result<Evidence, AttestError> + Send + 'static,
    ) -> Result<Evidence, EvidenceError> {
        let attester = Arc::clone(&self.attester);
        let evidence = tokio::task::spawn_blocking(move || attest(attester.as_ref()))
            .await
            .map_err(|_| EvidenceError::Interrupted)?
            .map_err(|e| {
                tracing::error!(error = %e, "attestation failed");
                EvidenceError::Platform
            })?;
        self.metrics.attestations.fetch_add(1, Ordering::Relaxed);
        if self.measurement.get().is_none() {
            if let Ok(report) = evidence.parsed_report() {
                let _ = self.measurement.set(report.measurement());
            }
        }
        Ok(evidence)
    }

    /// The counters, shared with the listener.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_past_its_bucket_is_refused_while_another_peer_is_served() {
        let limit = AttestLimit::new((100.0, 100.0), (0.5, 3.0));
        let (a, b): (IpAddr, IpAddr) = ([127, 0, 0, 2].into(), [127, 0, 0, 1].into());
        for _ in 0..3 {
            limit.try_take(Some(a)).expect("within a's burst");
        }
        match limit.try_take(Some(a)) {
            Err(Limited::Peer { retry_after }) => assert_eq!(retry_after, 2),
            r => panic!("{r:?}"),
        }
        limit.try_take(Some(b)).expect("b has its own bucket");
    }

    #[test]
    fn the_global_ceiling_holds_over_every_peer_and_a_refusal_takes_no_token() {
        let limit = AttestLimit::new((0.5, 2.0), (100.0, 100.0));
        limit.try_take(Some([10, 0, 0, 1].into())).expect("one");
        limit.try_take(Some([10, 0, 0, 2].into())).expect("two");
        assert!(matches!(
            limit.try_take(Some([10, 0, 0, 3].into())),
            Err(Limited::Global { retry_after: 2 })
        ));
        // Without a known peer only the ceiling applies.
        assert!(limit.try_take(None).is_err());
    }

    #[test]
    fn report_data_is_kept_per_connection_single_use_and_bounded() {
        let owner = IssuedOnConnection::default();
        let flood = IssuedOnConnection::default();
        owner.remember([1; 64]);
        for i in 0..1000u32 {
            let mut rd = [0; 64];
            rd[..4].copy_from_slice(&i.to_be_bytes());
            flood.remember(rd);
        }
        assert!(!flood.take(&[1; 64]), "issued on another connection");
        assert!(owner.take(&[1; 64]), "a flood elsewhere does not evict it");
        assert!(!owner.take(&[1; 64]), "single use");
        let mut first = [0; 64];
        first[..4].copy_from_slice(&0u32.to_be_bytes());
        assert!(
            !flood.take(&first),
            "the oldest of a connection's own is forgotten"
        );
        assert_eq!(
            flood.0.lock().expect("lock").len(),
            IssuedOnConnection::CAPACITY
        );
    }
}
