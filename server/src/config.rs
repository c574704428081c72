//! Configuration (flags, environment variables, a TOML file; in that order of precedence)
//! and start-up.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use serde::Deserialize;
use veil_attestation::{Attester, MockAttester, MockLaunch, MockPlatform, WrappingKey};
use veil_model::EngineConfig;
use zeroize::Zeroizing;

use crate::state::{AppState, Lifecycle, Metrics, RateLimit};

/// Which TEE attests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tee {
    /// The mock platform (software; for development and tests).
    Mock,
    /// AMD SEV-SNP (needs the `sev` cargo feature and /dev/sev-guest).
    Snp,
}

/// `veil-server` options. Each may also come from `VEIL_*` environment variables or the
/// TOML file given with `--config` (keys as the long flag names, with `_`).
#[derive(Debug, Clone, Parser, Deserialize, Default)]
#[command(
    name = "veil-server",
    version,
    about = "Serves a sealed model from inside a TEE"
)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// TOML configuration file.
    #[arg(long, env = "VEIL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The sealed model (`veil seal`).
    #[arg(long, env = "VEIL_MODEL")]
    pub model: Option<PathBuf>,
    /// Which TEE attests: mock or snp.
    #[arg(long, value_enum, env = "VEIL_TEE")]
    pub tee: Option<Tee>,
    /// The mock platform directory (`veil mock-platform init`), for `--tee mock`.
    #[arg(long, env = "VEIL_MOCK_PLATFORM")]
    pub mock_platform: Option<PathBuf>,
    /// A debug launch of the mock platform (its evidence says debug is allowed).
    #[arg(long)]
    #[serde(default)]
    pub mock_debug: bool,
    /// A key broker to pull the model key from (`veil broker`), `http://HOST:PORT`.
    /// Without it the server waits for the owner to push the key (`veil provision`).
    #[arg(long, env = "VEIL_KEY_BROKER")]
    pub key_broker: Option<String>,
    /// Address to listen on (default 127.0.0.1:8443; port 0 picks one).
    #[arg(long, env = "VEIL_LISTEN")]
    pub listen: Option<String>,
    /// Inference threads (0 = all cores).
    #[arg(long, env = "VEIL_THREADS")]
    pub threads: Option<usize>,
    /// Concurrent sequences decoded together.
    #[arg(long, env = "VEIL_PARALLEL")]
    pub parallel: Option<u32>,
    /// Context length per sequence.
    #[arg(long, env = "VEIL_CONTEXT")]
    pub context: Option<u32>,
    /// Requests that may wait; more get 429.
    #[arg(long, env = "VEIL_QUEUE")]
    pub queue: Option<usize>,
    /// Largest request body in bytes.
    #[arg(long, env = "VEIL_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Seconds to drain in-flight requests on SIGTERM.
    #[arg(long, env = "VEIL_DRAIN_SECONDS")]
    pub drain_seconds: Option<u64>,
}

impl Config {
    /// Fills options not given on the command line or in the environment from the file.
    ///
    /// # Errors
    /// If the file cannot be read or has unknown keys.
    pub fn merge_file(mut self) -> anyhow::Result<Self> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let file: Config =
            toml::from_str(&text).with_context(|| format!("config {}", path.display()))?;
        macro_rules! fill {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = file.$f; } )* };
        }
        fill!(
            model,
            tee,
            mock_platform,
            key_broker,
            listen,
            threads,
            parallel,
            context,
            queue,
            max_body,
            drain_seconds
        );
        self.mock_debug |= file.mock_debug;
        Ok(self)
    }

    fn listen(&self) -> String {
        self.listen
            .clone()
            .unwrap_or_else(|| "127.0.0.1:8443".to_owned())
    }
}

fn attester(
    config: &Config,
    listen: &str,
    model_sha256: &[u8; 32],
) -> anyhow::Result<Box<dyn Attester>> {
    match config.tee.unwrap_or(Tee::Mock) {
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

#[cfg(feature = "sev")]
fn snp_attester() -> anyhow::Result<Box<dyn Attester>> {
    Ok(Box::new(veil_attestation::attester::SnpAttester::new(0)))
}

#[cfg(not(feature = "sev"))]
fn snp_attester() -> anyhow::Result<Box<dyn Attester>> {
    anyhow::bail!("--tee snp needs a build with the `sev` feature (cargo build -p veil-server --features sev)")
}

fn load_platform(dir: &Path) -> anyhow::Result<MockPlatform> {
    MockPlatform::from_files(|name| std::fs::read(dir.join(name)).ok().map(Zeroizing::new))
        .with_context(|| format!("mock platform in {}", dir.display()))
}

/// Builds the state and serves until SIGTERM or Ctrl-C. Prints the URL on stdout.
///
/// # Errors
/// If the sealed model cannot be read, the TEE cannot be set up, or the address cannot be
/// bound: at once, with a message naming what.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let config = config.merge_file()?;
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
    let listen = config.listen();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let attester = attester(&config, &listen, &header.model_sha256)?;
    let tls = crate::tls::generate(vec![
        "localhost".into(),
        "veil-server".into(),
        "127.0.0.1".into(),
    ])?;
    let defaults = EngineConfig::default();
    let engine_config = EngineConfig {
        threads: config.threads.unwrap_or(defaults.threads),
        parallel: config.parallel.unwrap_or(defaults.parallel),
        context_per_sequence: config.context.unwrap_or(defaults.context_per_sequence),
        queue: config.queue.unwrap_or(defaults.queue),
        batch: defaults.batch,
    };
    let state = Arc::new(AppState {
        lifecycle: RwLock::new(Lifecycle::Locked),
        attester,
        spki_sha256: tls.spki_sha256,
        wrapping: WrappingKey::generate(),
        header,
        sealed_path: model,
        issued: Mutex::new(VecDeque::new()),
        provisioned: Mutex::new(None),
        key_broker: Mutex::new(None),
        engine: OnceLock::new(),
        engine_config,
        metrics: Metrics::default(),
        attest_limit: RateLimit::new(20.0, 40.0),
        max_body: config.max_body.unwrap_or(1 << 20),
    });
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
    let drain = Duration::from_secs(config.drain_seconds.unwrap_or(30));
    crate::serve::serve(
        listener,
        tls.config,
        crate::api::app(state),
        shutdown_signal(),
        drain,
    )
    .await
}

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
