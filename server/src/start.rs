//! Start-up: reads the sealed header, binds the address, sets up the attester and the TLS
//! identity, builds the locked state, and serves until SIGTERM or Ctrl-C.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use veil_attestation::attester::SnpAttester;
use veil_attestation::{
    Attester, ConfigFsTsm, LaunchConfig, MockAttester, MockLaunch, MockPlatform, TsmFs,
};
use zeroize::Zeroizing;

use crate::config::{Config, Tee};
use crate::state::{AppState, SealedFile};

/// The attester for `tee`. `tsm` is the configfs-tsm that `--tee snp` uses (the kernel's,
/// [`ConfigFsTsm::system`], except in tests).
fn attester(
    tee: Tee,
    config: &Config,
    listen: &str,
    model_sha256: &[u8; 32],
    launch: Option<&LaunchConfig>,
    tsm: Box<dyn TsmFs>,
) -> anyhow::Result<Box<dyn Attester>> {
    match tee {
        Tee::Mock => {
            let dir = config.mock_platform.as_deref().context("--tee mock needs --mock-platform DIR (create one with `veil mock-platform init DIR`)")?;
            let platform = load_platform(dir)?;
            let exe_path = std::env::current_exe().context("cannot locate this executable")?;
            let exe = std::fs::read(&exe_path)
                .with_context(|| format!("cannot read {}", exe_path.display()))?;
            // The launch configuration, when given, is what the mock launch measures and
            // hashes into HOST_DATA (as a real launch would); otherwise the flags.
            let mut launch = match launch {
                Some(l) => MockLaunch::new(&exe, l.entries().clone()),
                None => MockLaunch::server(&exe, listen, model_sha256),
            };
            launch.debug = config.mock_debug;
            tracing::warn!(measurement = %hex::encode(launch.measurement()), "MOCK TEE: evidence is signed by a software platform, not by an AMD secure processor");
            Ok(Box::new(MockAttester::new(platform, launch)))
        }
        Tee::Snp => snp_attester(tsm),
        Tee::AzSnpVtpm => az_snp_vtpm_attester(),
    }
}

/// Refuses to go on unless this launch's own report carries HOST_DATA = the digest of
/// `launch`: the configuration the server runs with is the one its evidence names.
fn check_host_data(attester: &dyn Attester, launch: &LaunchConfig) -> anyhow::Result<()> {
    let evidence = attester
        .report([0; 64])
        .context("cannot read this launch's own report to check HOST_DATA")?;
    let report = veil_attestation::Report::from_bytes(&evidence.report)
        .context("this launch's own report")?;
    let expected = launch.host_data();
    if report.host_data() != expected {
        anyhow::bail!(
            "HOST_DATA of this launch is {}, but the launch configuration's digest is {}: the              guest was launched for another configuration than the one it was given; refusing              to serve",
            hex::encode(report.host_data()),
            hex::encode(expected)
        );
    }
    tracing::info!(host_data = %hex::encode(expected), "launch configuration bound: HOST_DATA is its digest");
    Ok(())
}

/// The SEV-SNP attester: configfs-tsm when the kernel has it, else `/dev/sev-guest` (a
/// build with the `sev` feature). Fails at start when neither is there, naming both.
fn snp_attester(tsm: Box<dyn TsmFs>) -> anyhow::Result<Box<dyn Attester>> {
    let attester = SnpAttester::with_tsm(0, tsm);
    match attester.interface() {
        "configfs-tsm" => {}
        "sev-guest ioctl" if Path::new("/dev/sev-guest").exists() => {}
        "sev-guest ioctl" => anyhow::bail!(
            "--tee snp: neither {} (configfs-tsm, Linux 6.7 and later) nor /dev/sev-guest is \
             present: is this an SEV-SNP guest with the sev-guest driver loaded?",
            veil_attestation::tsm::TSM_REPORT_ROOT
        ),
        _ => anyhow::bail!(
            "--tee snp: {} (configfs-tsm, Linux 6.7 and later) is not present, and this build \
             has no /dev/sev-guest ioctl (build with --features sev)",
            veil_attestation::tsm::TSM_REPORT_ROOT
        ),
    }
    Ok(Box::new(attester))
}

/// The Azure vTPM attester (the HCL report and a quote by the paravisor's attestation
/// key), on `/dev/tpmrm0`. Fails at start when there is no TPM device.
fn az_snp_vtpm_attester() -> anyhow::Result<Box<dyn Attester>> {
    use veil_attestation::azure::attester::{AzureAttester, TPM_DEVICE};
    if !Path::new(TPM_DEVICE).exists() {
        anyhow::bail!(
            "--tee az-snp-vtpm: {TPM_DEVICE} is not present: is this an Azure confidential VM \
             (its vTPM holds the HCL report)?"
        );
    }
    Ok(Box::new(AzureAttester::system()))
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
    run_with(
        config,
        Box::new(ConfigFsTsm::system()),
        shutdown_signal(),
        |_| {},
    )
    .await
}

/// [`run`], with the configfs-tsm that `--tee snp` uses given (a fake, in tests), until
/// `shutdown` resolves; `listening` is told the bound address once the server accepts.
///
/// # Errors
/// As [`run`].
pub async fn run_with(
    config: Config,
    tsm: Box<dyn TsmFs>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let (config, launch) = config.merge_file()?.bind_launch_config()?;
    let tee = config.tee()?;
    if launch.is_some() && tee == Tee::AzSnpVtpm {
        anyhow::bail!("--launch-config binds through HOST_DATA, which Azure sets itself: not with --tee az-snp-vtpm");
    }
    // Before anything secret exists in this process: no core dumps, no ptrace by peers.
    let hardening = crate::harden::harden_process();
    let model = config
        .model
        .clone()
        .context("--model FILE (a sealed model from `veil seal`) is required")?;
    let sealed = SealedFile::open(model.clone())
        .with_context(|| format!("cannot open the sealed model {}", model.display()))?;
    let header = veil_sealing::read_header(&sealed.file)
        .with_context(|| format!("{} is not a readable sealed model", model.display()))?;
    let broker = config
        .key_broker
        .as_deref()
        .map(|url| crate::pull::KeyBroker::parse(url, tee.kind()))
        .transpose()?;
    if let Some(crate::pull::KeyBroker::Kbs(url, crate::kbs::KbsTee::Sample)) = &broker {
        tracing::warn!(%url, "MOCK: the key is asked of the KBS with Trustee's `sample` evidence, which carries no signature; for trying the flow only");
    }
    let limits = config.limits()?;
    let body_timeout = config.body_timeout()?;
    let listen = config.listen();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    if let Some(launch) = &launch {
        if launch.model_sha256() != Some(header.model_sha256) {
            anyhow::bail!(
                "the launch configuration names model {}, but {} holds {}",
                hex::encode(launch.model_sha256().unwrap_or_default()),
                model.display(),
                hex::encode(header.model_sha256)
            );
        }
    }
    let attester = attester(
        tee,
        &config,
        &listen,
        &header.model_sha256,
        launch.as_ref(),
        tsm,
    )?;
    match &launch {
        Some(launch) => check_host_data(attester.as_ref(), launch)?,
        None if tee == Tee::Snp => tracing::warn!(
            "no --launch-config: this server's settings (listen address, key broker) come from \
             flags and files that its evidence does not bind; launch it with HOST_DATA from \
             `veil measure host-data` and --launch-config to bind them"
        ),
        None => {}
    }
    let tls = crate::tls::generate(vec![
        "localhost".into(),
        "veil-server".into(),
        "127.0.0.1".into(),
    ])?;
    let api_keys = match &config.api_keys {
        Some(path) => {
            let keys = Arc::new(crate::auth::ApiKeys::load(path)?);
            tracing::info!(keys = keys.len(), file = %path.display(), "API keys required on the model's routes");
            reload_api_keys_on_sighup(Arc::clone(&keys))?;
            Some(keys)
        }
        None => None,
    };
    let state = Arc::new(
        AppState::builder(attester, tls.spki_sha256, header, sealed)
            .engine_config(config.engine_config())
            .max_body(config.max_body())
            .body_timeout(body_timeout)
            .alias(config.alias()?)
            .api_keys(api_keys)
            .receipts(!config.no_receipts)
            .build(),
    );
    hardening.record(&state.metrics());
    let addr = listener.local_addr()?;
    let (tee_name, interface) = state.attester_kind();
    tracing::info!(%addr, tee = %tee_name, interface = %interface, key_id = %state.header.key_id, model_sha256 = %hex::encode(state.header.model_sha256), "locked: waiting for the model key");
    println!(
        "veil-server listening on https://{addr} (state: locked, key id {}; attesting with {tee_name} through {interface}{})",
        state.header.key_id,
        broker
            .as_ref()
            .map(|b| format!("; pulling it from {b}"))
            .unwrap_or_default()
    );
    // Pulls the key (with a broker) and keeps a lease on it, if one comes.
    tokio::spawn(crate::lease::supervise(Arc::clone(&state), broker));
    let metrics = state.metrics();
    listening(addr);
    crate::serve::serve(
        listener,
        tls.config,
        crate::api::app(state),
        limits,
        metrics,
        shutdown,
    )
    .await
}

/// Reads the API key file again on every SIGHUP; a file that does not load leaves the
/// keys as they were, and says why in the log.
fn reload_api_keys_on_sighup(keys: Arc<crate::auth::ApiKeys>) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot watch for SIGHUP (to reload the API keys)")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match keys.reload() {
                    Ok(n) => {
                        tracing::info!(keys = n, file = %keys.path().display(), "API keys reloaded")
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "API keys not reloaded; the previous keys stay")
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = keys;
    Ok(())
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
