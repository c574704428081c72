//! Configuration: flags, environment variables and a TOML file, in that order of
//! precedence, and the defaults for what none of them gives.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use serde::Deserialize;
use veil_model::EngineConfig;

use crate::serve::Limits;
use crate::state::AppState;

/// Where the server listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// How long in-flight requests may drain on SIGTERM unless told otherwise, in seconds.
pub const DEFAULT_DRAIN_SECONDS: u64 = 30;

/// Which TEE attests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tee {
    /// The mock platform (software; for development and tests).
    Mock,
    /// AMD SEV-SNP: configfs-tsm (Linux 6.7 and later), else `/dev/sev-guest` (a build
    /// with the `sev` cargo feature).
    Snp,
    /// An Azure confidential VM: SEV-SNP behind Azure's paravisor, reports through the
    /// vTPM (the HCL report and a TPM quote).
    #[value(name = "az-snp-vtpm")]
    #[serde(rename = "az-snp-vtpm")]
    AzSnpVtpm,
}

impl Tee {
    /// The evidence kind this TEE produces.
    pub fn kind(self) -> veil_attestation::TeeKind {
        match self {
            Tee::Mock => veil_attestation::TeeKind::Mock,
            Tee::Snp => veil_attestation::TeeKind::Snp,
            Tee::AzSnpVtpm => veil_attestation::TeeKind::AzSnpVtpm,
        }
    }
}

/// `veil-server` options. Each may also come from `VEIL_*` environment variables or the
/// TOML file given with `--config` (keys as the long flag names, with `_`).
//
// The defaults are stated in each option's help rather than given to clap: a clap default
// would count as given and hide the file's value.
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
    /// Which TEE attests: snp (SEV-SNP through configfs-tsm or /dev/sev-guest),
    /// az-snp-vtpm (an Azure confidential VM), or mock (software; development and tests
    /// only). Required: there is no default.
    #[arg(long, value_enum, env = "VEIL_TEE")]
    pub tee: Option<Tee>,
    /// The mock platform directory (`veil mock-platform init`), for `--tee mock`.
    #[arg(long, env = "VEIL_MOCK_PLATFORM")]
    pub mock_platform: Option<PathBuf>,
    /// A debug launch of the mock platform (its evidence says debug is allowed).
    #[arg(long)]
    #[serde(default)]
    pub mock_debug: bool,
    /// The launch configuration (`veil measure host-data -o FILE`: TEE kind, listen
    /// address, model digest, key broker), as the operator hands it to the guest. The
    /// server then takes those settings from it alone, and refuses to start unless its
    /// own report's HOST_DATA is the configuration's digest.
    #[arg(long, value_name = "FILE")]
    pub launch_config: Option<PathBuf>,
    /// A key broker to pull the model key from: `http://HOST:PORT` (`veil broker`),
    /// `kbs://HOST:PORT/REPO/TYPE/TAG[?tee=sample|snp]` (a Trustee KBS, RCAR 0.4.0) or
    /// `cdh:///REPO/TYPE/TAG` (a Confidential Containers pod's data hub). Without it the
    /// server waits for the owner to push the key (`veil provision`).
    #[arg(long, env = "VEIL_KEY_BROKER")]
    pub key_broker: Option<String>,
    /// Address to listen on; port 0 picks one [default: 127.0.0.1:8443].
    #[arg(long, env = "VEIL_LISTEN")]
    pub listen: Option<String>,
    /// Inference threads, 0 for all cores [default: 0].
    #[arg(long, env = "VEIL_THREADS")]
    pub threads: Option<usize>,
    /// Concurrent sequences decoded together [default: 4].
    #[arg(long, env = "VEIL_PARALLEL")]
    pub parallel: Option<u32>,
    /// Context length per sequence, in tokens [default: 2048].
    #[arg(long, env = "VEIL_CONTEXT")]
    pub context: Option<u32>,
    /// Requests that may wait; more get 429 [default: 16].
    #[arg(long, env = "VEIL_QUEUE")]
    pub queue: Option<usize>,
    /// Largest request body in bytes [default: 1048576, 1 MiB].
    #[arg(long, env = "VEIL_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Seconds to drain in-flight requests on SIGTERM [default: 30].
    #[arg(long, env = "VEIL_DRAIN_SECONDS")]
    pub drain_seconds: Option<u64>,
    /// Connections open at once; more are closed at once, and it is lowered to leave 64 of
    /// the descriptor limit free [default: 512].
    #[arg(long, env = "VEIL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Connections open at once from one IP address; more are closed at once [default: 64].
    #[arg(long, env = "VEIL_MAX_CONNECTIONS_PER_PEER")]
    pub max_connections_per_peer: Option<usize>,
    /// Seconds a request body may take to arrive after its header; then 408 and the
    /// connection is closed [default: 30].
    #[arg(long, env = "VEIL_BODY_TIMEOUT")]
    pub body_timeout: Option<u64>,
    /// Seconds a connection may wait for a complete request header: before the first
    /// request, between kept-alive requests, or for a header sent slowly [default: 30].
    #[arg(long, env = "VEIL_IDLE_TIMEOUT")]
    pub idle_timeout: Option<u64>,
    /// The model id clients name (`model` in requests, `GET /v1/models`) [default: the
    /// seal's name as a slug, e.g. smollm2-135m-instruct.q4_1].
    #[arg(long, env = "VEIL_ALIAS")]
    pub alias: Option<String>,
    /// API keys that may use the model: a file of `sha256:HEX [NAME]` lines (`veil api-key
    /// new`), reloaded on SIGHUP. Requests to the model's routes then need
    /// `Authorization: Bearer KEY` (401 otherwise); attestation and health stay open
    /// [default: none, anyone who reaches the server may use it].
    #[arg(long, env = "VEIL_API_KEYS", value_name = "FILE")]
    pub api_keys: Option<PathBuf>,
    /// Signs no receipts (`docs/receipts.md`): answers carry none, and evidence binds no
    /// receipt key [default: every completion carries a signed receipt].
    #[arg(long)]
    #[serde(default)]
    pub no_receipts: bool,
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
            launch_config,
            tee,
            mock_platform,
            key_broker,
            listen,
            threads,
            parallel,
            context,
            queue,
            max_body,
            drain_seconds,
            max_connections,
            max_connections_per_peer,
            body_timeout,
            idle_timeout,
            alias,
            api_keys
        );
        self.mock_debug |= file.mock_debug;
        self.no_receipts |= file.no_receipts;
        Ok(self)
    }

    /// With `--launch-config FILE`: the configuration it holds, with the TEE kind, the
    /// listen address and the key broker taken from it (the same values given again by
    /// flag are accepted; others are refused).
    ///
    /// # Errors
    /// If the file cannot be read or parsed, or a flag contradicts it.
    pub fn bind_launch_config(
        mut self,
    ) -> anyhow::Result<(Self, Option<veil_attestation::LaunchConfig>)> {
        let Some(path) = self.launch_config.clone() else {
            return Ok((self, None));
        };
        let text = std::fs::read(&path)
            .with_context(|| format!("cannot read the launch configuration {}", path.display()))?;
        let text = std::str::from_utf8(&text)
            .with_context(|| format!("the launch configuration {} is not UTF-8", path.display()))?;
        let launch = veil_attestation::LaunchConfig::parse(text)
            .with_context(|| format!("the launch configuration {}", path.display()))?;
        let tee = match launch.tee() {
            "snp" => Tee::Snp,
            _ => Tee::Mock,
        };
        let conflict = |what: &str, flag: &str, bound: &str| {
            anyhow::anyhow!(
                "{what} {flag} contradicts the launch configuration {} ({bound}): with --launch-config the settings come from it alone",
                path.display()
            )
        };
        if let Some(t) = self.tee.filter(|t| *t != tee) {
            let name = t
                .to_possible_value()
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default();
            return Err(conflict("--tee", &name, launch.tee()));
        }
        if let Some(l) = self.listen.as_deref().filter(|l| *l != launch.listen()) {
            return Err(conflict("--listen", l, launch.listen()));
        }
        if let Some(b) = self
            .key_broker
            .as_deref()
            .filter(|b| Some(*b) != launch.key_broker())
        {
            return Err(conflict(
                "--key-broker",
                b,
                launch.key_broker().unwrap_or("none"),
            ));
        }
        self.tee = Some(tee);
        self.listen = Some(launch.listen().to_owned());
        self.key_broker = launch.key_broker().map(str::to_owned);
        Ok((self, Some(launch)))
    }

    /// The TEE to attest with.
    ///
    /// # Errors
    /// If none was chosen: there is no default, so that nothing runs on the mock TEE by
    /// accident.
    pub fn tee(&self) -> anyhow::Result<Tee> {
        self.tee.context(
            "--tee mock|snp|az-snp-vtpm is required (or VEIL_TEE, or `tee` in the --config \
             file): `snp` on AMD SEV-SNP, `az-snp-vtpm` on an Azure confidential VM, `mock` \
             for development and tests only",
        )
    }

    /// The address to listen on.
    pub fn listen(&self) -> String {
        self.listen
            .clone()
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned())
    }

    /// How long in-flight requests may drain on SIGTERM.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds.unwrap_or(DEFAULT_DRAIN_SECONDS))
    }

    /// The listener's connection caps and idle timeout, and the drain time.
    ///
    /// # Errors
    /// If a cap or a timeout is 0.
    pub fn limits(&self) -> anyhow::Result<Limits> {
        let d = Limits::default();
        let limits = Limits {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_connections_per_peer: self
                .max_connections_per_peer
                .unwrap_or(d.max_connections_per_peer),
            idle_timeout: self
                .idle_timeout
                .map_or(d.idle_timeout, Duration::from_secs),
            drain: self.drain(),
        };
        anyhow::ensure!(
            limits.max_connections > 0 && limits.max_connections_per_peer > 0,
            "--max-connections and --max-connections-per-peer must be at least 1"
        );
        anyhow::ensure!(
            !limits.idle_timeout.is_zero(),
            "--idle-timeout must be at least 1 second"
        );
        Ok(limits)
    }

    /// How long a request body may take to arrive.
    ///
    /// # Errors
    /// If it is 0.
    pub fn body_timeout(&self) -> anyhow::Result<Duration> {
        let t = self
            .body_timeout
            .map_or(AppState::DEFAULT_BODY_TIMEOUT, Duration::from_secs);
        anyhow::ensure!(!t.is_zero(), "--body-timeout must be at least 1 second");
        Ok(t)
    }

    /// The model id, if `--alias` gave one.
    ///
    /// # Errors
    /// If it is empty, longer than 64 characters or holds whitespace or control
    /// characters (clients put it in JSON and URLs).
    pub fn alias(&self) -> anyhow::Result<Option<String>> {
        let Some(alias) = &self.alias else {
            return Ok(None);
        };
        anyhow::ensure!(
            !alias.is_empty()
                && alias.chars().count() <= 64
                && !alias
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '/'),
            "--alias must be 1 to 64 characters without spaces, control characters or '/'"
        );
        Ok(Some(alias.clone()))
    }

    /// The largest request body, in bytes.
    pub fn max_body(&self) -> usize {
        self.max_body.unwrap_or(AppState::DEFAULT_MAX_BODY)
    }

    /// The engine's configuration: the options given, the engine's defaults for the rest.
    pub fn engine_config(&self) -> EngineConfig {
        let defaults = EngineConfig::default();
        EngineConfig {
            threads: self.threads.unwrap_or(defaults.threads),
            parallel: self.parallel.unwrap_or(defaults.parallel),
            context_per_sequence: self.context.unwrap_or(defaults.context_per_sequence),
            queue: self.queue.unwrap_or(defaults.queue),
            batch: defaults.batch,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_help_states_the_defaults_that_apply() {
        let help = Config::command().render_help().to_string();
        let engine = EngineConfig::default();
        for default in [
            DEFAULT_LISTEN.to_owned(),
            engine.threads.to_string(),
            engine.parallel.to_string(),
            engine.context_per_sequence.to_string(),
            engine.queue.to_string(),
            AppState::DEFAULT_MAX_BODY.to_string(),
            DEFAULT_DRAIN_SECONDS.to_string(),
            Limits::DEFAULT_MAX_CONNECTIONS.to_string(),
            Limits::DEFAULT_MAX_CONNECTIONS_PER_PEER.to_string(),
            AppState::DEFAULT_BODY_TIMEOUT.as_secs().to_string(),
            Limits::DEFAULT_IDLE_TIMEOUT.as_secs().to_string(),
        ] {
            assert!(
                help.contains(&format!("[default: {default}")),
                "{default}: {help}"
            );
        }
    }

    #[test]
    fn limits_come_from_the_file_and_zero_is_refused() {
        let file: Config = toml::from_str(
            "max_connections = 8\nmax_connections_per_peer = 2\nbody_timeout = 5\nidle_timeout = 7",
        )
        .expect("config");
        let limits = file.limits().expect("limits");
        assert_eq!(
            (
                limits.max_connections,
                limits.max_connections_per_peer,
                limits.idle_timeout
            ),
            (8, 2, Duration::from_secs(7))
        );
        assert_eq!(
            file.body_timeout().expect("timeout"),
            Duration::from_secs(5)
        );
        let zero: Config = toml::from_str("max_connections_per_peer = 0").expect("config");
        assert!(zero.limits().is_err());
        let zero: Config = toml::from_str("body_timeout = 0").expect("config");
        assert!(zero.body_timeout().is_err());
    }

    #[test]
    fn there_is_no_default_tee() {
        let e = Config::default().tee().expect_err("no TEE chosen");
        assert!(e.to_string().contains("--tee mock|snp"), "{e}");
        let file: Config = toml::from_str("tee = \"mock\"").expect("config");
        assert_eq!(file.tee().expect("chosen"), Tee::Mock);
    }
}
