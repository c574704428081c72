//! Configuration: flags, environment variables and a TOML file, in that order of
//! precedence, and the defaults for what none of them gives.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use serde::Deserialize;
use veil_model::EngineConfig;

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
    /// A key broker to pull the model key from (`veil broker`), `http://HOST:PORT`.
    /// Without it the server waits for the owner to push the key (`veil provision`).
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
        ] {
            assert!(
                help.contains(&format!("[default: {default}")),
                "{default}: {help}"
            );
        }
    }

    #[test]
    fn there_is_no_default_tee() {
        let e = Config::default().tee().expect_err("no TEE chosen");
        assert!(e.to_string().contains("--tee mock|snp"), "{e}");
        let file: Config = toml::from_str("tee = \"mock\"").expect("config");
        assert_eq!(file.tee().expect("chosen"), Tee::Mock);
    }
}
