//! `veil broker`: the model owner's key broker, for the pull flow. A locked `veil-server`
//! started with `--key-broker URL` asks it for a nonce, attests with that nonce, and
//! sends the evidence; the broker appraises it against the owner's policy and answers
//! with the model key sealed to the wrapping key that the evidence binds (the wire
//! contract is [`veil_attestation::broker`]).
//!
//! Each nonce is accepted once, within [`NONCE_TTL`]. Keys are read from `*.key` files
//! (`veil seal --key-out`) at start and served by their key id. Every decision is logged
//! on stderr with the key id and the measurement, never a key.
//!
//! With `--lease DURATION` every key is released for that long only ([`Lease`]): the
//! server must come back with fresh evidence before then, and is refused once its key id
//! is listed in the key directory's [`REVOKED_FILE`] (`veil broker revoke KEY_ID`, read on
//! every request, so it holds from the next renewal on), or once the policy or the keys
//! changed so that it no longer passes (then SIGHUP).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Args;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;
use tokio::net::TcpListener;
use veil_attestation::broker::{
    appraise_pull, Challenge, KeyRequest, CHALLENGE_PATH, KEY_PATH, NONCE_LEN,
};
use veil_attestation::{KeyRelease, Lease, Nonce, Policy, Rejection};
use veil_sealing::{KeyId, ModelKey};

use crate::files::load_policy;
use crate::http::{
    json_response, read_body, reload_on_sighup, serve, shutdown_signal, Handler, ListenLimits,
};
use crate::kds::{Collateral, KdsArgs};
use crate::CmdResult;

/// How long an issued nonce may be used.
pub const NONCE_TTL: Duration = Duration::from_secs(60);
/// Nonces outstanding at once; beyond this, the client holding the most loses its oldest.
const MAX_OUTSTANDING: usize = 1024;
/// Nonces outstanding for one client address; beyond this, its own oldest is forgotten,
/// so that one flooding address cannot push out other servers' nonces.
const MAX_PER_CLIENT: usize = 16;
/// Largest request body (evidence is a few KiB).
const MAX_BODY: usize = 256 << 10;

/// The file in the key directory that lists revoked key ids, one per line.
pub const REVOKED_FILE: &str = "revoked";

/// `veil broker`
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BrokerArgs {
    /// Appraisal policy (TOML) that a server's evidence must pass before it gets a key.
    #[arg(long, required = true)]
    pub policy: Option<PathBuf>,
    /// Directory of key files (`veil seal --key-out`); every `*.key` in it is served by
    /// its key id, unless its key id is listed in the directory's `revoked` file.
    #[arg(long, required = true)]
    pub keys: Option<PathBuf>,
    /// Release keys for this long only (`90s`, `10m`, `2h`, `1d`): a server renews with
    /// fresh evidence before then, and stops serving (weights wiped) when it cannot.
    /// Without it, a key is released for good.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub lease: Option<u64>,
    /// How long past a lease's end a server may go on while it cannot reach the broker
    /// (default: a quarter of the lease; at most the lease).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "lease")]
    pub lease_grace: Option<u64>,
    /// Where to listen. Plain HTTP: what the broker sends is sealed to the attested
    /// server's wrapping key.
    #[arg(long, default_value = "127.0.0.1:8444")]
    pub listen: String,
    /// Where the VCEK of SNP evidence that carries none comes from.
    #[command(flatten)]
    pub kds: KdsArgs,
    /// Connection caps and timeouts.
    #[command(flatten)]
    pub limits: ListenLimits,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub action: Option<BrokerAction>,
}

/// `veil broker revoke`
#[derive(clap::Subcommand)]
pub enum BrokerAction {
    /// Refuse every further release (and so every lease renewal) of a key, at once: the
    /// key id is added to the key directory's `revoked` file, which a running broker reads
    /// on every request. `--undo` takes it off again.
    Revoke(RevokeArgs),
}

/// `veil broker revoke KEY_ID`
#[derive(Args)]
pub struct RevokeArgs {
    /// The key id (32 hex digits, as `veil seal` and the broker's log show it).
    pub key_id: String,
    /// The broker's key directory.
    #[arg(long)]
    pub keys: PathBuf,
    /// Take the key id off the list: the broker releases it again.
    #[arg(long)]
    pub undo: bool,
}

/// Parses `90`, `90s`, `10m`, `2h` or `1d` into seconds.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    match digits.parse::<u64>() {
        Ok(n) if scale > 0 && n > 0 => n
            .checked_mul(scale)
            .ok_or_else(|| format!("{text:?} is too long")),
        _ => Err(format!(
            "{text:?} is not a duration: a whole number above 0 with s, m, h or d (90s, 10m, 2h, 1d)"
        )),
    }
}

/// The lease of `--lease` and `--lease-grace` (the grace defaulting to a quarter).
///
/// # Errors
/// A lease no server accepts (more than 30 days, or a grace longer than the lease).
pub fn lease_terms(ttl_s: Option<u64>, grace_s: Option<u64>) -> anyhow::Result<Option<Lease>> {
    let Some(ttl_s) = ttl_s else {
        return Ok(None);
    };
    let grace_s = grace_s.unwrap_or(ttl_s / 4);
    Lease::new(ttl_s, grace_s)
        .map(Some)
        .map_err(|_| anyhow::anyhow!("--lease {ttl_s}s with --lease-grace {grace_s}s: the lease must be 1 s to 30 days and the grace no longer than the lease"))
}

/// The revoked key ids in `dir`'s [`REVOKED_FILE`] (none if there is no such file).
///
/// # Errors
/// If the file exists but cannot be read, or a line is not a key id (named).
pub fn read_revoked(dir: &Path) -> anyhow::Result<std::collections::HashSet<KeyId>> {
    let path = dir.join(REVOKED_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    text.lines()
        .enumerate()
        .map(|(n, l)| (n, l.split('#').next().unwrap_or("").trim()))
        .filter(|(_, l)| !l.is_empty())
        .map(|(n, l)| parse_key_id(l).with_context(|| format!("{} line {}", path.display(), n + 1)))
        .collect()
}

fn parse_key_id(text: &str) -> anyhow::Result<KeyId> {
    KeyId::from_hex(text).map_err(|_| anyhow::anyhow!("{text:?} is not a key id (32 hex digits)"))
}

/// Runs `veil broker revoke`: rewrites the list (atomically: a running broker reads either
/// the old list or the new one).
///
/// # Errors
/// A malformed key id, or the list cannot be read or written.
pub fn revoke(args: &RevokeArgs) -> CmdResult {
    let key_id = parse_key_id(&args.key_id)?;
    if !args.keys.is_dir() {
        return Err(anyhow::anyhow!("--keys {}: not a directory", args.keys.display()).into());
    }
    let mut revoked: Vec<KeyId> = read_revoked(&args.keys)?.into_iter().collect();
    let listed = revoked.contains(&key_id);
    match (args.undo, listed) {
        (false, true) | (true, false) => {
            println!(
                "key {key_id} was already {}",
                if args.undo { "released" } else { "revoked" }
            );
            return Ok(());
        }
        (false, false) => revoked.push(key_id),
        (true, true) => revoked.retain(|k| *k != key_id),
    }
    revoked.sort_by_key(|k| k.0);
    let mut text = String::from("# key ids veil broker refuses to release (veil broker revoke)\n");
    for k in &revoked {
        text.push_str(&format!("{k}\n"));
    }
    let path = args.keys.join(REVOKED_FILE);
    let tmp = args.keys.join(format!(".{REVOKED_FILE}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
    if args.undo {
        println!("key {key_id} may be released again");
    } else {
        println!("key {key_id} revoked: its leases are not renewed from now on");
    }
    Ok(())
}

/// Why a key request was refused.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The nonce was not issued here, was already used, or has expired.
    #[error("the nonce was not issued by this broker, was already used or has expired: ask {CHALLENGE_PATH} again")]
    UnknownNonce,
    /// The evidence failed the policy.
    #[error("{0}")]
    Rejected(Rejection),
    /// No key with that id.
    #[error("this broker holds no key with id {0}")]
    UnknownKey(String),
    /// The owner revoked the key (`veil broker revoke`).
    #[error("key {0} is revoked: the owner releases it no more")]
    Revoked(String),
    /// The revocation list cannot be read: nothing is released (fail closed). The cause
    /// (a path, a bad line) goes to the broker's log, not to the caller.
    #[error("the broker cannot read its revocation list, so it releases nothing")]
    RevocationsUnreadable,
}

impl BrokerError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            BrokerError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            BrokerError::UnknownNonce => (StatusCode::FORBIDDEN, "unknown_nonce"),
            BrokerError::Rejected(_) => (StatusCode::FORBIDDEN, "attestation_rejected"),
            BrokerError::UnknownKey(_) => (StatusCode::NOT_FOUND, "unknown_key"),
            BrokerError::Revoked(_) => (StatusCode::FORBIDDEN, "key_revoked"),
            BrokerError::RevocationsUnreadable => {
                (StatusCode::INTERNAL_SERVER_ERROR, "revocations_unreadable")
            }
        }
    }
}

/// A nonce the broker issued: when, and to which client address.
struct Issued {
    nonce: [u8; NONCE_LEN],
    at: Instant,
    client: IpAddr,
}

/// The outstanding nonces, in issue order, and how many each client address holds.
#[derive(Default)]
struct Nonces {
    queue: VecDeque<Issued>,
    held: HashMap<IpAddr, usize>,
}

impl Nonces {
    fn remove(&mut self, at: usize) -> Option<Issued> {
        let issued = self.queue.remove(at)?;
        if let Some(n) = self.held.get_mut(&issued.client) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&issued.client);
            }
        }
        Some(issued)
    }

    /// Forgets expired nonces, makes room for one more from `client`, and records it.
    fn issue(&mut self, issued: Issued) {
        while self
            .queue
            .front()
            .is_some_and(|i| issued.at.duration_since(i.at) > NONCE_TTL)
        {
            self.remove(0);
        }
        // Make room: first from this client's own nonces, then from the client that holds
        // the most (the queue is in issue order, so the first found is the oldest).
        let evict = if self.held.get(&issued.client).copied().unwrap_or(0) >= MAX_PER_CLIENT {
            Some(issued.client)
        } else if self.queue.len() >= MAX_OUTSTANDING {
            self.held.iter().max_by_key(|(_, n)| **n).map(|(c, _)| *c)
        } else {
            None
        };
        if let Some(c) = evict {
            if let Some(at) = self.queue.iter().position(|i| i.client == c) {
                self.remove(at);
            }
        }
        *self.held.entry(issued.client).or_default() += 1;
        self.queue.push_back(issued);
    }

    /// Takes an issued, unexpired nonce (single use).
    fn take(&mut self, nonce: &[u8]) -> bool {
        match self.queue.iter().position(|i| i.nonce.as_slice() == nonce) {
            Some(at) => self.remove(at).is_some_and(|i| i.at.elapsed() <= NONCE_TTL),
            None => false,
        }
    }
}

fn by_id(keys: Vec<ModelKey>) -> HashMap<KeyId, ModelKey> {
    keys.into_iter().map(|k| (k.key_id(), k)).collect()
}

/// The broker: a policy, the keys it may release, the nonces it issued.
pub struct Broker {
    policy: RwLock<Arc<Policy>>,
    keys: RwLock<Arc<HashMap<KeyId, ModelKey>>>,
    nonces: Mutex<Nonces>,
    rng: SystemRandom,
    released: AtomicU64,
    refused: AtomicU64,
    collateral: Collateral,
    /// With `--lease`: the terms of every release.
    lease: Option<Lease>,
    /// The directory whose [`REVOKED_FILE`] is read on every request.
    revocations: Option<PathBuf>,
}

impl Broker {
    /// A broker releasing `keys` to evidence that passes `policy`.
    pub fn new(policy: Policy, keys: Vec<ModelKey>) -> Self {
        Broker {
            policy: RwLock::new(Arc::new(policy)),
            keys: RwLock::new(Arc::new(by_id(keys))),
            nonces: Mutex::new(Nonces::default()),
            rng: SystemRandom::new(),
            released: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            collateral: Collateral::none(),
            lease: None,
            revocations: None,
        }
    }

    /// The same, releasing every key for `lease` only (for good with `None`).
    #[must_use]
    pub fn with_lease(self, lease: Option<Lease>) -> Self {
        Broker { lease, ..self }
    }

    /// The same, refusing the key ids listed in `dir`'s [`REVOKED_FILE`] as it reads it
    /// on each request.
    #[must_use]
    pub fn with_revocations(self, dir: PathBuf) -> Self {
        Broker {
            revocations: Some(dir),
            ..self
        }
    }

    /// The same, completing SNP evidence that carries no VEK from `collateral` (without
    /// this, such evidence is refused for want of a certificate).
    #[must_use]
    pub fn with_collateral(self, collateral: Collateral) -> Self {
        Broker { collateral, ..self }
    }

    /// Replaces the policy: requests from now on are appraised against it.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }

    /// Replaces the keys the broker may release.
    pub fn set_keys(&self, keys: Vec<ModelKey>) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(by_id(keys));
    }

    /// Keys released and requests refused so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.released.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    /// Issues a fresh nonce to `client`.
    ///
    /// # Errors
    /// If the system has no randomness.
    pub fn challenge(&self, client: IpAddr) -> anyhow::Result<Challenge> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
        self.nonces
            .lock()
            .expect("no panics while holding it")
            .issue(Issued {
                nonce,
                at: Instant::now(),
                client,
            });
        Ok(Challenge {
            nonce: Nonce::new(&nonce).expect("NONCE_LEN is a valid nonce length"),
            expires_in: NONCE_TTL.as_secs(),
        })
    }

    /// Takes an issued, unexpired nonce (single use).
    fn take_nonce(&self, nonce: &[u8]) -> bool {
        self.nonces
            .lock()
            .expect("no panics while holding it")
            .take(nonce)
    }

    /// Appraises a key request and, if it passes, seals the key to the server.
    ///
    /// # Errors
    /// [`BrokerError`] naming why nothing was released.
    pub fn release(&self, req: &KeyRequest, now: SystemTime) -> Result<KeyRelease, BrokerError> {
        // The nonce is spent whatever the outcome: each attempt needs a fresh one.
        if !self.take_nonce(req.nonce.as_bytes()) {
            return Err(BrokerError::UnknownNonce);
        }
        let key_id = KeyId(req.key_id);
        if let Some(dir) = &self.revocations {
            let revoked = read_revoked(dir).map_err(|e| {
                eprintln!("veil broker: {e:#}: releasing nothing until it reads");
                BrokerError::RevocationsUnreadable
            })?;
            if revoked.contains(&key_id) {
                return Err(BrokerError::Revoked(key_id.to_string()));
            }
        }
        let policy = Arc::clone(&self.policy.read().unwrap_or_else(|p| p.into_inner()));
        let appraisal =
            appraise_pull(&policy, &req.evidence, req.nonce, now).map_err(BrokerError::Rejected)?;
        let keys = Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()));
        let key = keys
            .get(&key_id)
            .ok_or_else(|| BrokerError::UnknownKey(key_id.to_string()))?;
        // Sealed to the wrapping key the appraisal verified, and to no other.
        KeyRelease::seal_leased(&appraisal, &key_id.0, key.expose_secret(), self.lease)
            .map_err(|e| BrokerError::BadRequest(e.to_string()))
    }

    /// Answers one HTTP request.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        match (&parts.method, parts.uri.path()) {
            (&Method::GET, "/health") => json_response(StatusCode::OK, &json!({ "status": "ok" })),
            (&Method::POST, CHALLENGE_PATH) => match self.challenge(peer.ip()) {
                Ok(c) => json_response(StatusCode::OK, &json!(c)),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
            },
            (&Method::POST, KEY_PATH) => {
                let body = match read_body(&parts.extensions, body, MAX_BODY).await {
                    Ok(b) => b,
                    Err(e) => return error(e.status(), e.code(), &e.to_string()),
                };
                let mut req: KeyRequest = match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "invalid_request",
                            &format!("not a key request: {e}"),
                        )
                    }
                };
                let products = {
                    let policy = self.policy.read().unwrap_or_else(|p| p.into_inner());
                    policy.products().map(<[_]>::to_vec)
                };
                if let Err(e) = self
                    .collateral
                    .complete(&mut req.evidence, products.as_deref())
                    .await
                {
                    // The server's pull loop retries: KDS may be back by then.
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    eprintln!("veil broker: cannot complete the evidence's chain: {e:#}");
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "collateral_unavailable",
                        &format!("the evidence carries no VEK and the broker cannot get it: {e:#}"),
                    );
                }
                self.answer(&req, SystemTime::now())
            }
            (method, path) => error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("veil broker serves POST {CHALLENGE_PATH} and POST {KEY_PATH}, not {method} {path}"),
            ),
        }
    }

    fn answer(&self, req: &KeyRequest, now: SystemTime) -> Response<Full<Bytes>> {
        // Only validated values reach the log: the request comes from anyone (the key id
        // is 16 bytes by type).
        let key_id = KeyId(req.key_id);
        let measurement = req
            .evidence
            .parsed_report()
            .map(|r| hex::encode(r.measurement()))
            .unwrap_or_else(|_| "unparsable".into());
        match self.release(req, now) {
            Ok(release) => {
                self.released.fetch_add(1, Ordering::Relaxed);
                let term = match release.lease {
                    Some(l) => format!(" for {} s (grace {} s)", l.ttl_s, l.grace_s),
                    None => String::new(),
                };
                eprintln!(
                    "veil broker: released key {key_id}{term} to a {} launch with measurement {measurement}",
                    if req.evidence.tee == veil_attestation::TeeKind::Mock {
                        "MOCK"
                    } else {
                        "SEV-SNP"
                    }
                );
                json_response(StatusCode::OK, &json!(release))
            }
            Err(e) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                eprintln!("veil broker: refused key {key_id} (measurement {measurement}): {e}");
                let (status, code) = e.status_and_code();
                let mut body = json!({ "error": { "code": code, "message": e.to_string() } });
                if let BrokerError::Rejected(r) = &e {
                    body["error"]["checks"] = r
                        .failures()
                        .map(|o| json!({ "check": o.check.name(), "detail": o.detail }))
                        .collect();
                }
                json_response(status, &body)
            }
        }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

impl Handler for Broker {
    type Body = Full<Bytes>;

    fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send {
        Broker::handle(self, req, peer)
    }
}

/// Reads every `*.key` file in `dir`.
///
/// # Errors
/// If the directory cannot be read, a key file does not parse (named), two files hold the
/// same key id, or there is no key file at all.
pub fn load_keys(dir: &Path) -> anyhow::Result<Vec<ModelKey>> {
    let mut keys: Vec<ModelKey> = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the key directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "key") && p.is_file())
        .collect();
    paths.sort();
    for path in paths {
        let key = ModelKey::read_key_file(&path)
            .with_context(|| format!("key file {}", path.display()))?;
        if keys.iter().any(|k| k.key_id() == key.key_id()) {
            bail!(
                "{} holds key id {}, which another key file in {} already holds",
                path.display(),
                key.key_id(),
                dir.display()
            );
        }
        keys.push(key);
    }
    if keys.is_empty() {
        bail!(
            "{} has no key files (*.key, written by `veil seal --key-out`)",
            dir.display()
        );
    }
    Ok(keys)
}

/// Runs `veil broker` until Ctrl-C or SIGTERM.
///
/// # Errors
/// If the policy or a key file cannot be read, or the address cannot be bound.
pub fn run(args: BrokerArgs) -> CmdResult {
    if let Some(BrokerAction::Revoke(revoke_args)) = &args.action {
        return revoke(revoke_args);
    }
    let (Some(policy_path), Some(keys_dir)) = (args.policy.clone(), args.keys.clone()) else {
        return Err(anyhow::anyhow!("veil broker needs --policy FILE and --keys DIR").into());
    };
    let lease = lease_terms(args.lease, args.lease_grace)?;
    let policy = load_policy(&policy_path)?;
    let keys = load_keys(&keys_dir)?;
    let revoked = read_revoked(&keys_dir)?;
    let ids: Vec<String> = keys.iter().map(|k| k.key_id().to_string()).collect();
    let broker = Arc::new(
        Broker::new(policy, keys)
            .with_collateral(Collateral::new(&args.kds))
            .with_lease(lease)
            .with_revocations(keys_dir.clone()),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let reloaded = Arc::clone(&broker);
        let (policy, keys) = (policy_path.clone(), keys_dir.clone());
        let what = format!("policy {} and keys {}", policy.display(), keys.display());
        reload_on_sighup(what, move || {
            // Both load before either is put in force.
            let (p, k) = (load_policy(&policy)?, load_keys(&keys)?);
            let ids: Vec<String> = k.iter().map(|k| k.key_id().to_string()).collect();
            let done = format!(
                "policy {} reloaded ({} CRLs), keys {}",
                policy.display(),
                p.loaded_crls().len(),
                ids.join(", ")
            );
            reloaded.set_keys(k);
            reloaded.set_policy(p);
            Ok(done)
        })?;
        let addr = listener.local_addr()?;
        let term = match lease {
            Some(l) => format!("; leases of {} s, grace {} s", l.ttl_s, l.grace_s),
            None => String::new(),
        };
        println!(
            "veil broker listening on http://{addr} (keys {}; {} revoked; policy {}{term})",
            ids.join(", "),
            revoked.len(),
            policy_path.display()
        );
        serve(listener, broker, args.limits, shutdown_signal()).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use veil_attestation::broker::pull_transcript;
    use veil_attestation::{MockLaunch, MockPlatform, WrappingKey};

    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    struct Setup {
        broker: Broker,
        platform: MockPlatform,
        launch: MockLaunch,
        key: [u8; 32],
        key_id: [u8; 16],
        wrapping: WrappingKey,
    }

    fn setup() -> Setup {
        let now = SystemTime::now();
        let platform = MockPlatform::generate(now).expect("platform");
        let launch = MockLaunch::server(b"server", "127.0.0.1:0", &[7; 32]);
        let policy = Policy::mock(platform.root(), &[launch.measurement()]);
        let model_key = ModelKey::generate();
        let key = *model_key.expose_secret();
        let key_id = model_key.key_id().0;
        Setup {
            broker: Broker::new(policy, vec![model_key]),
            platform,
            launch,
            key,
            key_id,
            wrapping: WrappingKey::generate(),
        }
    }

    /// A pull request as a server makes it, for `nonce` and `launch`.
    fn request(s: &Setup, nonce: &Nonce, launch: &MockLaunch) -> (KeyRequest, [u8; 64]) {
        let t = pull_transcript(*nonce, s.wrapping.public(), [7; 32]);
        let evidence = s.platform.issue(launch, &t);
        let req = KeyRequest {
            nonce: *nonce,
            key_id: s.key_id,
            evidence,
        };
        (req, t.report_data())
    }

    #[test]
    fn a_good_launch_gets_the_key_once_per_nonce() {
        let s = setup();
        let nonce = s.broker.challenge(LOOPBACK).expect("nonce").nonce;
        let (req, rd) = request(&s, &nonce, &s.launch);
        let release = s.broker.release(&req, SystemTime::now()).expect("released");
        assert_eq!(**s.wrapping.open(&release, &rd).expect("opens"), s.key);
        // The same request again: the nonce is spent.
        assert!(matches!(
            s.broker.release(&req, SystemTime::now()),
            Err(BrokerError::UnknownNonce)
        ));
    }

    #[test]
    fn flooding_addresses_push_out_their_own_nonces_not_an_honest_servers() {
        let s = setup();
        let at = |n: u16| IpAddr::from([127, 0, (n >> 8) as u8, n as u8]);
        let honest = s.broker.challenge(at(2)).expect("nonce").nonce;
        // One address asks for many: only its own oldest are forgotten.
        let first = s.broker.challenge(at(3)).expect("nonce").nonce;
        for _ in 0..MAX_PER_CLIENT {
            s.broker.challenge(at(3)).expect("nonce");
        }
        let (req, _) = request(&s, &first, &s.launch);
        assert!(matches!(
            s.broker.release(&req, SystemTime::now()),
            Err(BrokerError::UnknownNonce)
        ));
        // Many addresses fill the whole table: those holding the most lose theirs.
        for n in 0..(2 * MAX_OUTSTANDING / MAX_PER_CLIENT) as u16 {
            for _ in 0..MAX_PER_CLIENT {
                s.broker.challenge(at(256 + n)).expect("nonce");
            }
        }
        let nonces = s.broker.nonces.lock().expect("lock");
        assert_eq!(nonces.queue.len(), MAX_OUTSTANDING);
        assert_eq!(nonces.held.values().sum::<usize>(), MAX_OUTSTANDING);
        drop(nonces);
        let (req, _) = request(&s, &honest, &s.launch);
        assert!(s.broker.release(&req, SystemTime::now()).is_ok());
    }

    #[test]
    fn a_nonce_the_broker_never_issued_is_refused() {
        let s = setup();
        let never = Nonce::new(&[5u8; NONCE_LEN]).expect("nonce");
        let (req, _) = request(&s, &never, &s.launch);
        assert!(matches!(
            s.broker.release(&req, SystemTime::now()),
            Err(BrokerError::UnknownNonce)
        ));
    }

    #[test]
    fn another_launch_is_refused_naming_the_measurement() {
        let s = setup();
        let nonce = s.broker.challenge(LOOPBACK).expect("nonce").nonce;
        let other = MockLaunch::server(b"another server", "127.0.0.1:0", &[7; 32]);
        let (req, _) = request(&s, &nonce, &other);
        match s.broker.release(&req, SystemTime::now()) {
            Err(BrokerError::Rejected(r)) => {
                let failed: Vec<&str> = r.failures().map(|o| o.check.name()).collect();
                assert_eq!(failed, vec!["measurement"]);
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    /// A fresh nonce, and the request the good launch makes with it.
    fn attempt(s: &Setup) -> Result<KeyRelease, BrokerError> {
        let nonce = s.broker.challenge(LOOPBACK).expect("nonce").nonce;
        let (req, _) = request(s, &nonce, &s.launch);
        s.broker.release(&req, SystemTime::now())
    }

    #[test]
    fn a_replaced_policy_applies_to_the_next_request() {
        let s = setup();
        let attempt = || attempt(&s);
        assert!(attempt().is_ok());
        let other = MockLaunch::server(b"another server", "127.0.0.1:0", &[7; 32]);
        s.broker
            .set_policy(Policy::mock(s.platform.root(), &[other.measurement()]));
        assert!(matches!(attempt(), Err(BrokerError::Rejected(_))));
        s.broker
            .set_policy(Policy::mock(s.platform.root(), &[s.launch.measurement()]));
        assert!(attempt().is_ok());
    }

    #[test]
    fn replaced_keys_apply_to_the_next_request() {
        let s = setup();
        let attempt = || attempt(&s);
        assert!(attempt().is_ok());
        s.broker.set_keys(vec![ModelKey::generate()]);
        assert!(matches!(attempt(), Err(BrokerError::UnknownKey(_))));
    }

    #[test]
    fn a_leased_release_carries_its_terms_and_a_revoked_key_is_refused_at_once() {
        let s = setup();
        let dir = tempfile::tempdir().expect("tempdir");
        let lease = Lease::new(60, 15).expect("lease");
        let s = Setup {
            broker: s
                .broker
                .with_lease(Some(lease))
                .with_revocations(dir.path().to_owned()),
            ..s
        };
        let broker = &s.broker;
        let attempt = || {
            let nonce = broker.challenge(LOOPBACK).expect("nonce").nonce;
            let (req, rd) = request(&s, &nonce, &s.launch);
            broker.release(&req, SystemTime::now()).map(|r| (r, rd))
        };
        let (release, rd) = attempt().expect("released");
        assert_eq!(release.lease, Some(lease));
        assert_eq!(**s.wrapping.open(&release, &rd).expect("opens"), s.key);

        let revoke = |undo| {
            revoke(&RevokeArgs {
                key_id: hex::encode(s.key_id),
                keys: dir.path().to_owned(),
                undo,
            })
            .map_err(|_| ())
            .expect("revoked");
        };
        revoke(false);
        assert!(matches!(attempt(), Err(BrokerError::Revoked(_))));
        revoke(true);
        assert!(attempt().is_ok());
        // A list that cannot be read releases nothing.
        std::fs::write(dir.path().join(REVOKED_FILE), "not a key id\n").expect("written");
        assert!(matches!(attempt(), Err(BrokerError::RevocationsUnreadable)));
    }

    #[test]
    fn durations_take_a_unit_and_refuse_zero_and_junk() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("1d"), Ok(86_400));
        for bad in ["", "0s", "5x", "m", "-3s", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(lease_terms(Some(60), Some(61)).is_err());
        assert_eq!(
            lease_terms(Some(60), None).expect("ok"),
            Some(Lease::new(60, 15).expect("lease"))
        );
    }

    #[test]
    fn an_unknown_key_id_is_refused_after_appraisal() {
        let s = setup();
        let nonce = s.broker.challenge(LOOPBACK).expect("nonce").nonce;
        let (mut req, _) = request(&s, &nonce, &s.launch);
        req.key_id = ModelKey::generate().key_id().0;
        assert!(matches!(
            s.broker.release(&req, SystemTime::now()),
            Err(BrokerError::UnknownKey(_))
        ));
    }

    #[test]
    fn key_files_are_loaded_by_id_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = ModelKey::generate();
        key.write_key_file(&dir.path().join("a.key"), false)
            .expect("written");
        std::fs::write(dir.path().join("notes.txt"), "not a key").expect("written");
        let keys = load_keys(dir.path()).expect("loaded");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].key_id(), key.key_id());

        std::fs::write(dir.path().join("b.key"), "garbage").expect("written");
        let e = load_keys(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("b.key"), "{e:#}");

        let empty = tempfile::tempdir().expect("tempdir");
        assert!(load_keys(empty.path()).is_err());
    }
}
