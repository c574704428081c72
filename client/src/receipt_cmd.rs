//! `veil receipt verify`: an answer's receipt checked offline against the evidence it was
//! verified under, a policy, and the request and response (`docs/receipts.md`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::files::load_policy;
use crate::receipt::{verify, Bundle, MAX_BUNDLE};
use crate::{CmdResult, Failure};

/// `veil receipt`
#[derive(Subcommand)]
pub enum ReceiptCommand {
    /// Verify a receipt bundle (`veil ask --receipt`, `veil proxy --receipts`) offline:
    /// exit 0 verified, 3 rejected.
    Verify(VerifyArgs),
}

/// `veil receipt verify`
#[derive(Args)]
pub struct VerifyArgs {
    /// The bundle: the receipt with the evidence it was verified under.
    pub receipt: PathBuf,
    /// Hold the receipt to this request body instead of the bundle's own.
    #[arg(long, value_name = "FILE")]
    pub request: Option<PathBuf>,
    /// Hold the receipt to this response body (a streamed one with its SSE framing)
    /// instead of the bundle's own.
    #[arg(long, value_name = "FILE")]
    pub response: Option<PathBuf>,
    /// The appraisal policy the evidence must pass (TOML).
    #[arg(long)]
    pub policy: PathBuf,
    /// Print a machine-readable verdict.
    #[arg(long)]
    pub json: bool,
}

/// Runs `veil receipt`.
///
/// # Errors
/// [`Failure::Rejected`] when a check fails; [`Failure::Error`] when a file cannot be
/// read.
pub fn run(cmd: ReceiptCommand) -> CmdResult {
    let ReceiptCommand::Verify(args) = cmd;
    let bundle = Bundle::read(&args.receipt)?;
    let policy = load_policy(&args.policy)?;
    let read = |path: &Option<PathBuf>, own: anyhow::Result<Vec<u8>>| match path {
        Some(p) => {
            let meta = std::fs::metadata(p)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
            anyhow::ensure!(
                meta.len() <= MAX_BUNDLE,
                "{} is larger than 64 MiB",
                p.display()
            );
            std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
        }
        None => own,
    };
    let request = read(&args.request, bundle.request_bytes())?;
    let response = read(&args.response, bundle.response_bytes())?;
    let verdict = verify(&bundle, &request, &response, &policy);
    if args.json {
        let checks: Vec<_> = verdict
            .checks
            .iter()
            .map(|c| {
                serde_json::json!({
                    "check": c.name,
                    "status": format!("{:?}", c.status).to_lowercase(),
                    "detail": c.detail,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "verified": verdict.verified(),
                "mock": verdict.mock,
                "checks": checks,
                "receipt": verdict.receipt,
            })
        );
    } else {
        println!("{verdict}");
    }
    if verdict.verified() {
        Ok(())
    } else {
        Err(Failure::Rejected)
    }
}
