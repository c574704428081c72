//! Start-up: reads the sealed header, binds the address, sets up the attester and the TLS
//! identity, builds the locked state, and serves until SIGTERM or Ctrl-C.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use veil_attestation::{Attester, MockAttester, MockLaunch, MockPlatform};
use zeroize::Zeroizing;

use crate::config::{Config, Tee};
use crate::state::AppState;

/// The attester for `tee`.
fn attester(
    tee: Tee,
    config: &Config,
    listen: &str,
    model_sha256: &[u8; 32],
) -> anyhow::Result<Box<dyn Attester>> {
    match tee {
        Tee::Mock => {
            let dir = config.mock_platform.as_deref().context("--tee mock needs --mock-platform DIR (create one with `veil mock-platform init DIR`)")?;
            let platform = load_platform(dir)?;
            let exe_path = std::env::current_exe().context("cannot locate this executable")?;
            let exe = std::fs::read(&exe_path)
                .with_context(|| format!("cannot read {}", exe_path.display()))?;
            let mut launch = MockLaunch::server(&exe, listen, model_sha256);
            launch.debug = config.mock_debug;
            tracing::warn!(measurement = %hex::encode(launch.measurement()), "MOCK TEE: evidence is signed by a software platform, not by an AMD secure processor");
            Ok(Box::new(MockAttester::new(platform, launch)))
        }
        Tee::Snp => snp_attester(),
    }
}

/// The SEV-SNP attester, on `/dev/sev-guest`.
#[cfg(feature = "sev")]
fn snp_attester() -> anyhow::Result<Box<dyn Attester>> {
    Ok(Box::new(veil_attestation::attester::SnpAttester::new(0)))
}

/// Without the `sev` feature there is no SEV-SNP attester.
#[cfg(not(feature = "sev"))]
fn snp_attester() -> anyhow::Result<Box<dyn Attester>> {
    anyhow::bail!("--tee snp needs a build with the `sev` feature (cargo build -p veil-server --features sev)")
}

/// The mock platform whose files are in `dir`.
fn load_platform(dir: &Path) -> anyhow::Result<MockPlatform> {
    MockPlatform::from_files(|name| std::fs::read(dir.join(name)).ok().map(Zeroizing::new))
        .with_context(|| format!("mock platform in {}", dir.display()))
}

/// Builds the state and serves until SIGTERM or Ctrl-C. Prints the URL on stdout.
///
/// # Errors
/// If no TEE is chosen, the sealed model cannot be read, the TEE cannot be set up, or the
/// address cannot be bound: at once, with a message naming what.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let config = config.merge_file()?;
    let tee = config.tee()?;
    // Before anything secret exists in this process: no core dumps, no ptrace by peers.
    let hardening = crate::harden::harden_process();
    let model = config
        .model
        .clone()
        .context("--model FILE (a sealed model from `veil seal`) is required")?;
    let file = File::open(&model)
        .with_context(|| format!("cannot open the sealed model {}", model.display()))?;
    let header = veil_sealing::read_header(&file)
        .with_context(|| format!("{} is not a readable sealed model", model.display()))?;
    let broker = config
        .key_broker
        .as_deref()
        .map(crate::pull::BrokerUrl::parse)
        .transpose()?;
    let limits = config.limits()?;
    let body_timeout = config.body_timeout()?;
    let listen = config.listen();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let attester = attester(tee, &config, &listen, &header.model_sha256)?;
    let tls = crate::tls::generate(vec![
        "localhost".into(),
        "veil-server".into(),
        "127.0.0.1".into(),
    ])?;
    let state = Arc::new(
        AppState::builder(attester, tls.spki_sha256, header, model)
            .engine_config(config.engine_config())
            .max_body(config.max_body())
            .body_timeout(body_timeout)
            .build(),
    );
    hardening.record(&state.metrics());
    let addr = listener.local_addr()?;
    tracing::info!(%addr, key_id = %state.header.key_id, model_sha256 = %hex::encode(state.header.model_sha256), "locked: waiting for the model key");
    println!(
        "veil-server listening on https://{addr} (state: locked, key id {}{})",
        state.header.key_id,
        broker
            .as_ref()
            .map(|b| format!("; pulling it from {b}"))
            .unwrap_or_default()
    );
    if let Some(broker) = broker {
        tokio::spawn(crate::pull::pull_until_unlocked(Arc::clone(&state), broker));
    }
    let metrics = state.metrics();
    crate::serve::serve(
        listener,
        tls.config,
        crate::api::app(state),
        limits,
        metrics,
        shutdown_signal(),
    )
    .await
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn start_up_without_a_tee_fails_at_once_naming_the_flag() {
        let config = Config {
            model: Some("/nonexistent/model.veil".into()),
            ..Config::default()
        };
        let e = run(config).await.expect_err("no TEE chosen");
        assert!(format!("{e:#}").contains("--tee mock|snp"), "{e:#}");
    }
}
