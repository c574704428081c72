//! The unlock pipeline: a released model key (pushed by the owner through
//! `POST /v1/provision`, or pulled from a key broker) is checked against the sealed header
//! and accepted once; the weights are then unsealed into memory and loaded in the
//! background. No HTTP here: the routes map [`UnlockError`] to their answers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use veil_model::{Engine, LlamaEngine, ModelFile};
use veil_sealing::{ChunkSink, KeyId, ModelKey, UnsealOptions};
use zeroize::Zeroizing;

use crate::lease::Terms;
use crate::state::AppState;

/// What became of a model key that came out of a key-release message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// The weights are being unsealed with it.
    Unsealing,
    /// The key had already been accepted (the server is past `Locked`); nothing changes.
    Repeat,
}

/// Why a released key was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnlockError {
    /// The sealed header's MAC does not verify under the key.
    #[error("wrong key for key id {key_id}: the sealed header does not open")]
    WrongKey {
        /// The key id the key came with.
        key_id: KeyId,
    },
}

/// Takes a released model key: checks it against the sealed header and, if the server is
/// still `Locked`, moves to `Unsealing` and unseals in the background.
///
/// A key that passes the check when the server is no longer `Locked` is the key already
/// accepted: [`SealedHeader::check_key`](veil_sealing::SealedHeader::check_key) is a MAC
/// that commits to the key, so no other key passes it.
///
/// # Errors
/// [`UnlockError::WrongKey`] if the sealed header does not open with it; the state does
/// not change.
pub fn accept_key(
    state: &Arc<AppState>,
    key_id: KeyId,
    secret: Box<Zeroizing<[u8; 32]>>,
    terms: Terms,
) -> Result<Accepted, UnlockError> {
    accept_model_key(state, ModelKey::from_parts(key_id, secret), terms)
}

/// [`accept_key`] for a key read whole (a key file released by a KBS).
///
/// A key that opens the header brings its `terms`: a lease starts or is renewed (a repeat
/// of the key renews it), or, released for good, no lease is held any more.
///
/// # Errors
/// As [`accept_key`].
pub fn accept_model_key(
    state: &Arc<AppState>,
    key: ModelKey,
    terms: Terms,
) -> Result<Accepted, UnlockError> {
    let key_id = key.key_id();
    if state.header.check_key(&key).is_err() {
        tracing::warn!(key_id = %key_id, "key refused: it does not open the sealed header");
        return Err(UnlockError::WrongKey { key_id });
    }
    let unsealing = state.begin_unsealing();
    state.hold_terms(terms);
    if !unsealing {
        return Ok(Accepted::Repeat);
    }
    let worker = Arc::clone(state);
    tokio::task::spawn_blocking(move || unseal_and_load(&worker, key));
    Ok(Accepted::Unsealing)
}

/// Hands each authenticated chunk straight to the engine's in-memory file.
struct IntoModelFile<'a>(&'a ModelFile);

impl ChunkSink for IntoModelFile<'_> {
    fn write_at(&self, offset: u64, plaintext: &[u8]) -> std::io::Result<()> {
        self.0.write_at(offset, plaintext)
    }
}

/// Unseals and loads the model, then moves the server to `Ready` or `Failed`.
fn unseal_and_load(state: &AppState, key: ModelKey) {
    let started = Instant::now();
    let outcome = (|| -> Result<Arc<dyn Engine>, String> {
        // The file opened at start: what was attested is what is unsealed, whatever
        // happened to the path since.
        let file = &state.sealed.file;
        let options = UnsealOptions {
            expected_sha256: Some(state.header.model_sha256),
            progress: Some(&state.metrics.unsealed_bytes),
            ..UnsealOptions::default()
        };
        // Unsealed straight into the memfd the engine maps: no plaintext buffer beside
        // it. If a chunk fails, the memfd (holding only authenticated chunks) is dropped.
        let mut model = ModelFile::new(state.header.plaintext_len)
            .map_err(|e| format!("model load failed: {e}"))?;
        veil_sealing::unseal_to(file, &key, &options, &IntoModelFile(&model))
            .map_err(|e| format!("unsealing failed: {e}"))?;
        drop(key);
        // The one writable mapping that may remain: it can only wipe the weights, when a
        // lease on the key is revoked or runs out.
        match model.wipe_handle() {
            Ok(wipe) => state.keep_wipe(wipe),
            Err(e) => {
                tracing::warn!(error = %e, "no wipe handle: a lease's end would drop the weights unwiped")
            }
        }
        // Filled: from now on nobody can write, grow or shrink the weights' memfd.
        if let Err(e) = model.seal() {
            tracing::warn!(error = %e, "the in-memory model could not be sealed");
        }
        let sealed = model.is_sealed();
        state.metrics.set_hardening("model_sealed", sealed);
        model.lock_in_memory(true);
        let unsealed = started.elapsed();
        let engine = LlamaEngine::load_file(model, state.engine_config.clone())
            .map_err(|e| format!("model load failed: {e}"))?;
        // The weights' mapping out of core dumps, beside coredump_filter (which leaves out
        // all shared memory).
        // (llama.cpp maps the tensor data, not the whole file: any mapping, all marked.)
        let not_dumped = match veil_sealing::exclude_memfd_from_core_dumps(ModelFile::NAME) {
            Ok(bytes) => bytes > 0,
            Err(e) => {
                tracing::warn!(error = %e, "MADV_DONTDUMP on the model's mapping failed");
                false
            }
        };
        state.metrics.set_hardening("model_not_dumped", not_dumped);
        let locked = crate::harden::locked_bytes().unwrap_or(0);
        // llama.cpp maps and locks the tensor data, not the GGUF's header and vocabulary:
        // the weights are locked when VmLck covers the tensors' bytes.
        let weights_bytes = engine.info().size_bytes;
        let fully_locked = locked >= weights_bytes;
        state.metrics.locked_bytes.store(locked, Ordering::Relaxed);
        state.metrics.set_hardening("model_locked", fully_locked);
        tracing::info!(
            unseal_ms = unsealed.as_millis() as u64,
            load_ms = (started.elapsed() - unsealed).as_millis() as u64,
            memfd_sealed = sealed,
            not_dumped,
            locked_bytes = locked,
            "model unsealed and loaded"
        );
        if !fully_locked {
            let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock);
            tracing::warn!(
                locked_bytes = locked,
                weights_bytes,
                memlock_limit = ?limit.current,
                "the model is not locked in memory (RLIMIT_MEMLOCK too low?): its pages may be swapped out"
            );
        }
        Ok(Arc::new(engine))
    })();
    state
        .metrics
        .unseal_ms
        .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    if let Err(reason) = &outcome {
        tracing::error!(%reason, "unsealing failed");
    }
    state.finish_unsealing(outcome);
}
