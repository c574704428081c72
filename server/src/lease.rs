//! Leases on the model key: a key released with a [`Lease`] (by `veil broker --lease`, or
//! `veil provision --lease`) may be used for `ttl_s` seconds from the request that brought
//! it. From half-way through, a server that pulls from `veil broker` asks again with fresh
//! evidence; each release renews the lease. When the broker refuses (the owner revoked the
//! key, removed it, or changed the policy so that this launch no longer passes), or the
//! lease runs out and its grace with it while the broker cannot be reached (or the owner
//! did not push again), the server locks: it stops the engine (every request in flight
//! ends), drops it, wipes the weights in the memfd through the one writable mapping made
//! before the memfd was sealed, and is `Locked` again, answering 503 `lease_revoked` or `lease_expired`, until a key comes.
//!
//! The model key itself is not kept after unsealing (it is zeroized as soon as the weights
//! are open), so there is no key to wipe: a renewal's key is checked against the sealed
//! header and dropped at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use veil_attestation::Lease;

use crate::pull::{pull_once, pull_until_unlocked, KeyBroker, PullError};
use crate::state::{AppState, Lifecycle};

/// How often the lease is looked at.
const TICK: Duration = Duration::from_millis(100);
/// The longest wait for the requests in flight to let go of a stopped engine before its
/// weights are wiped anyway (nothing computes with them once it is stopped).
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Why a server that was serving is locked again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockReason {
    /// The key broker refused to renew the lease (its answer is quoted).
    Revoked(String),
    /// The lease and its grace ran out without a renewal.
    Expired(String),
}

impl LockReason {
    /// The error code inference answers with, and `/ready` shows.
    pub fn code(&self) -> &'static str {
        match self {
            LockReason::Revoked(_) => "lease_revoked",
            LockReason::Expired(_) => "lease_expired",
        }
    }

    /// What happened, for people.
    pub fn message(&self) -> &str {
        match self {
            LockReason::Revoked(m) | LockReason::Expired(m) => m,
        }
    }
}

/// A lease the server holds: its terms and when they run out.
#[derive(Debug, Clone, Copy)]
pub struct HeldLease {
    /// As released.
    pub terms: Lease,
    /// When the request that brought the key was sent.
    pub asked_at: Instant,
    /// Releases that renewed it so far.
    pub renewals: u64,
}

impl HeldLease {
    /// When the key may no longer be used, unless renewed.
    pub fn expires(&self) -> Instant {
        self.asked_at + self.terms.ttl()
    }

    /// When the server must lock if still not renewed.
    pub fn deadline(&self) -> Instant {
        self.expires() + self.terms.grace()
    }

    /// When renewing begins: half-way.
    pub fn renew_at(&self) -> Instant {
        self.asked_at + self.terms.ttl() / 2
    }
}

/// The terms a released key came with, and when it was asked for.
#[derive(Debug, Clone, Copy)]
pub struct Terms {
    /// The lease, or `None` for a key released for good.
    pub lease: Option<Lease>,
    /// When the request that brought the key was sent (the lease runs from then).
    pub asked_at: Instant,
}

impl Terms {
    /// A key released for good.
    pub fn for_good() -> Self {
        Terms {
            lease: None,
            asked_at: Instant::now(),
        }
    }
}

/// Keeps the key: pulls it while locked (with `broker`), renews a lease half-way through
/// (from `veil broker`), and locks when a renewal is refused or the lease and its grace run
/// out. Runs for the server's life.
pub async fn supervise(state: Arc<AppState>, broker: Option<KeyBroker>) {
    let mut next_try = Instant::now();
    let mut backoff = TICK;
    loop {
        if let Some(b) = &broker {
            if matches!(state.state(), Lifecycle::Locked) {
                pull_until_unlocked(Arc::clone(&state), b.clone()).await;
            }
        }
        tokio::time::sleep(TICK).await;
        let Some(held) = state.held_lease() else {
            continue;
        };
        let serving = state.state();
        let now = Instant::now();
        if now >= held.deadline() {
            if matches!(serving, Lifecycle::Ready(_)) {
                let why = match &broker {
                    Some(KeyBroker::Veil(url)) => format!(
                        "the lease of {} s ran out, and {} s of grace, without a renewal from {url}",
                        held.terms.ttl_s, held.terms.grace_s
                    ),
                    _ => format!(
                        "the lease of {} s ran out, and {} s of grace, without the owner provisioning again",
                        held.terms.ttl_s, held.terms.grace_s
                    ),
                };
                lock(&state, LockReason::Expired(why)).await;
            }
            continue;
        }
        let Some(KeyBroker::Veil(url)) = &broker else {
            continue;
        };
        if !matches!(serving, Lifecycle::Ready(_) | Lifecycle::Unsealing)
            || now < held.renew_at()
            || now < next_try
        {
            continue;
        }
        match pull_once(&state, url).await {
            Ok(_) => {
                backoff = TICK;
                let renewed = state.held_lease();
                tracing::info!(
                    broker = %url,
                    ttl_s = renewed.map(|l| l.terms.ttl_s),
                    renewals = renewed.map(|l| l.renewals),
                    "lease renewed"
                );
                state.set_key_broker_status(format!("{url} renewed the lease"));
            }
            Err(PullError::Denied(refusal)) => {
                tracing::warn!(broker = %url, %refusal, "the key broker refused to renew the lease");
                state.set_key_broker_status(format!("{url} refused to renew: {refusal}"));
                lock(
                    &state,
                    LockReason::Revoked(format!(
                        "the key broker refused to renew the lease: {refusal}"
                    )),
                )
                .await;
            }
            Err(e) => {
                // Unreachable, busy or a spent nonce: again soon, within the lease.
                let left = held.deadline().saturating_duration_since(now);
                backoff = (backoff * 2)
                    .min(Duration::from_secs(5))
                    .min(left / 4)
                    .max(TICK);
                next_try = now + backoff;
                tracing::warn!(broker = %url, error = %e, retry_in_s = backoff.as_secs_f64(), lease_left_s = left.as_secs(), "lease not renewed");
                state.set_key_broker_status(format!("renewing: {e}"));
            }
        }
    }
}

/// Locks a serving server for `reason`: stops the engine (every request in flight ends),
/// waits a moment for the requests to let go of it, drops it, and wipes the weights
/// through the memfd's own mapping; counted in `/metrics`. Nothing happens unless the
/// server is `Ready`.
pub async fn lock(state: &Arc<AppState>, reason: LockReason) {
    let code = reason.code();
    let Some((engine, wipe)) = state.relock(reason.clone()) else {
        return;
    };
    tracing::warn!(
        reason = code,
        detail = reason.message(),
        "locking: the engine stops and the weights are wiped"
    );
    let metrics = state.metrics();
    let done = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        engine.stop();
        while Arc::strong_count(&engine) > 1 && started.elapsed() < RELEASE_WAIT {
            std::thread::sleep(Duration::from_millis(10));
        }
        let holders = Arc::strong_count(&engine) - 1;
        drop(engine);
        let wiped = wipe.map(|mut w| w.wipe());
        (started.elapsed(), holders, wiped)
    })
    .await;
    match done {
        Ok((took, holders, wiped)) => {
            let (bytes, nonzero) = wiped.map_or((0, 0), |w| (w.bytes, w.nonzero_after));
            metrics.wiped_bytes.store(bytes, Ordering::Relaxed);
            metrics.wipe_nonzero_bytes.store(nonzero, Ordering::Relaxed);
            if nonzero > 0 || wiped.is_none() {
                tracing::error!(
                    wiped_bytes = bytes,
                    nonzero_after = nonzero,
                    "the weights were not wiped whole"
                );
            }
            tracing::warn!(
                reason = code,
                wiped_bytes = bytes,
                nonzero_after = nonzero,
                still_held_by = holders,
                took_ms = took.as_millis() as u64,
                "locked: engine stopped, weights wiped; waiting for a key"
            );
        }
        Err(e) => tracing::error!(error = %e, "locking did not finish"),
    }
}
