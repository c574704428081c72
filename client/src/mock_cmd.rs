//! `veil mock-platform init|measure|policy|attest|crl`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, Subcommand};
use veil_attestation::mock::{files, CrlSigner};
use veil_attestation::{Certificate, MockLaunch, MockPlatform, Policy};
use zeroize::Zeroizing;

use crate::files::{read_small, write_new};
use crate::CmdResult;

/// `veil mock-platform …`
#[derive(Subcommand)]
pub enum MockCommand {
    /// Create a mock platform (root → intermediate → signing key) in DIR.
    Init {
        /// Directory to create (or an empty one).
        dir: PathBuf,
        /// Replace an existing platform in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Print the launch measurement the mock platform reports for an executable and
    /// launch configuration: the value to put in a policy's `measurements`.
    Measure(LaunchArgs),
    /// Write the policy an owner would use for this platform and launch: its root, the
    /// launch's measurement, no debug.
    Policy {
        /// The mock platform directory.
        dir: PathBuf,
        /// What is launched.
        #[command(flatten)]
        launch: LaunchArgs,
        /// The policy file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Sign a mock report for a launch, with chosen report data.
    Attest {
        /// The mock platform directory.
        dir: PathBuf,
        /// What is launched.
        #[command(flatten)]
        launch: LaunchArgs,
        /// REPORT_DATA as 128 hex digits (default: zeros).
        #[arg(long)]
        report_data: Option<String>,
        /// Where to write the raw 1184-byte report.
        #[arg(short, long)]
        output: PathBuf,
        /// Also write the evidence bundle (JSON) here.
        #[arg(long)]
        evidence: Option<PathBuf>,
        /// Replace existing output files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate revocation list (DER), as AMD's KDS serves one per product:
    /// name it in a policy's `crls` to make verifiers check revocation.
    Crl {
        /// The mock platform directory.
        dir: PathBuf,
        /// Who signs it: the root (its CRL covers the intermediate, like AMD's) or the
        /// intermediate (its CRL covers the VCEK).
        #[arg(long, value_enum, default_value = "root")]
        by: CrlBy,
        /// List the certificate the signer issued (the intermediate or the VCEK) as revoked.
        #[arg(long)]
        revoke: bool,
        /// Days until the next update is due (after that, verifiers refuse the CRL).
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// The CRL file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

/// The signer of a mock CRL.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum CrlBy {
    /// `ARK-Mock`.
    Root,
    /// `SEV-Mock`.
    Intermediate,
}

/// What the mock platform launches.
#[derive(Args, Clone)]
pub struct LaunchArgs {
    /// The executable launched (its bytes are measured).
    #[arg(long)]
    pub executable: PathBuf,
    /// Launch configuration, `KEY=VALUE` (repeatable; measured, and hashed into HOST_DATA).
    #[arg(long = "config", value_parser = parse_kv)]
    pub config: Vec<(String, String)>,
    /// A debug launch (guest policy allows debugging).
    #[arg(long)]
    pub debug: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

impl LaunchArgs {
    fn launch(&self) -> anyhow::Result<MockLaunch> {
        let exe = std::fs::read(&self.executable)
            .with_context(|| format!("cannot read {}", self.executable.display()))?;
        let mut launch = MockLaunch::new(&exe, self.config.iter().cloned().collect());
        launch.debug = self.debug;
        Ok(launch)
    }
}

/// Writes a new mock platform into `dir` (keys with mode 0600).
///
/// # Errors
/// If `dir` already holds a platform (without `force`) or cannot be written.
pub fn init_platform(dir: &Path, force: bool) -> anyhow::Result<MockPlatform> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let platform = MockPlatform::generate(SystemTime::now())?;
    for file in platform.files() {
        write_new(&dir.join(file.name), &file.contents, file.secret, force)?;
    }
    Ok(platform)
}

/// Loads the mock platform in `dir`.
///
/// # Errors
/// Naming the missing or malformed file.
pub fn load_platform(dir: &Path) -> anyhow::Result<MockPlatform> {
    MockPlatform::from_files(|name| read_small(&dir.join(name)).ok().map(Zeroizing::new))
        .with_context(|| format!("mock platform in {}", dir.display()))
}

/// Runs a `veil mock-platform` command.
///
/// # Errors
/// [`Failure::Error`](crate::Failure::Error) naming what failed.
pub fn run(cmd: MockCommand) -> CmdResult {
    match cmd {
        MockCommand::Init { dir, force } => {
            let platform = init_platform(&dir, force)?;
            println!("MOCK platform created in {}", dir.display());
            println!(
                "  root certificate: {} (trust it with --mock-root, or in a policy:)",
                dir.join(files::ROOT).display()
            );
            println!("  mock_roots = [\"{}\"]", platform.root().fingerprint());
            println!(
                "  private keys ({}, {}, {}) are mode 0600",
                files::ROOT_KEY,
                files::INTERMEDIATE_KEY,
                files::VCEK_KEY
            );
        }
        MockCommand::Measure(launch) => {
            println!("{}", hex::encode(launch.launch()?.measurement()));
        }
        MockCommand::Policy {
            dir,
            launch,
            output,
            force,
        } => {
            let platform = load_platform(&dir)?;
            let measurement = launch.launch()?.measurement();
            let policy = Policy::mock(platform.root(), &[measurement]);
            write_new(&output, policy.to_toml().as_bytes(), false, force)?;
            println!(
                "policy {}: MOCK root {}, measurement {}",
                output.display(),
                platform.root().fingerprint(),
                hex::encode(measurement)
            );
        }
        MockCommand::Attest {
            dir,
            launch,
            report_data,
            output,
            evidence,
            force,
        } => {
            let platform = load_platform(&dir)?;
            let launch = launch.launch()?;
            let mut rd = [0u8; 64];
            if let Some(text) = report_data {
                hex::decode_to_slice(text.trim(), &mut rd)
                    .context("--report-data must be 128 hex digits")?;
            }
            let e = platform.attest(&launch, rd);
            write_new(&output, &e.report, false, force)?;
            if let Some(path) = evidence {
                write_new(&path, e.to_json().as_bytes(), false, force)?;
            }
            println!("MOCK report written to {}", output.display());
            println!("  measurement {}", hex::encode(launch.measurement()));
        }
        MockCommand::Crl {
            dir,
            by,
            revoke,
            days,
            output,
            force,
        } => {
            let platform = load_platform(&dir)?;
            let (signer, issued) = match by {
                CrlBy::Root => (CrlSigner::Root, platform.intermediate()),
                CrlBy::Intermediate => (CrlSigner::Intermediate, platform.vcek()),
            };
            let revoked: Vec<&Certificate> = if revoke { vec![issued] } else { Vec::new() };
            // Issued an hour ago, so that a verifier whose clock is a little behind does
            // not see a CRL from the future; the next update is still `days` from now.
            let skew = Duration::from_secs(3600);
            let valid_for = Duration::from_secs(u64::from(days) * 24 * 3600) + skew;
            let der = platform.crl(signer, &revoked, SystemTime::now() - skew, valid_for)?;
            write_new(&output, &der, false, force)?;
            let signer = match by {
                CrlBy::Root => platform.root(),
                CrlBy::Intermediate => platform.intermediate(),
            };
            println!(
                "MOCK CRL by {} written to {}: {} {}, next update in {days} days",
                signer.subject_cn().unwrap_or_default(),
                output.display(),
                issued.subject_cn().unwrap_or_default(),
                if revoke { "revoked" } else { "not revoked" }
            );
        }
    }
    Ok(())
}
