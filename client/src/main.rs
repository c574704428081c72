//! `veil`: the Veil command line.

// Only veil-sealing's memory module needs `unsafe` (STYLE.md, Unsafe).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use veil_client::{broker, demo, mock_cmd, proxy, remote_cmd, report_cmd, seal, Failure};

#[derive(Parser)]
#[command(
    name = "veil",
    version,
    about = "Veil: confidential inference with attested key release"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Read model key files even when their group or others have access to them
    /// (refused by default; `chmod 600 FILE` is the fix).
    #[arg(long, global = true)]
    allow_insecure_key_file: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect and verify raw SEV-SNP attestation reports, offline.
    #[command(subcommand)]
    Report(report_cmd::ReportCommand),
    /// The mock platform: a software stand-in for the AMD secure processor.
    #[command(subcommand, name = "mock-platform")]
    MockPlatform(mock_cmd::MockCommand),
    /// AMD's key server: fill a collateral cache for offline verifiers.
    #[command(subcommand)]
    Kds(veil_client::kds_cmd::KdsCommand),
    /// Compute the expected launch measurement of a real TEE guest from its launch inputs.
    #[command(subcommand)]
    Measure(veil_client::measure_cmd::MeasureCommand),
    /// Write an appraisal policy for real TEE launches.
    #[command(subcommand)]
    Policy(veil_client::policy_cmd::PolicyCommand),
    /// Verify a server's evidence on a fresh TLS connection (exit 3 if rejected).
    Verify(remote_cmd::VerifyArgs),
    /// Verify a server, then release the model key to it.
    Provision(remote_cmd::ProvisionArgs),
    /// Verify a server, then ask its model and stream the answer.
    Ask(remote_cmd::AskArgs),
    /// Verify a server, then chat with its model (history kept; /reset, /quit).
    Chat(remote_cmd::ChatArgs),
    /// A local OpenAI-compatible endpoint that forwards only to a verified server.
    Proxy(proxy::ProxyArgs),
    /// API keys for a server started with --api-keys.
    #[command(subcommand, name = "api-key")]
    ApiKey(veil_client::api_key::ApiKeyCommand),
    /// The owner's key broker: releases model keys to servers whose evidence passes a policy (pull flow).
    Broker(broker::BrokerArgs),
    /// Receipts of answers: verify one offline, against its evidence and a policy.
    #[command(subcommand)]
    Receipt(veil_client::receipt_cmd::ReceiptCommand),
    /// Seal a model: encrypt it under a model key (`--inspect` shows a sealed header).
    Seal(seal::SealArgs),
    /// Run the mock TEE end to end on this machine: platform, attestation, verification.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    // Whether the command was asked for JSON: then a failure too answers with a JSON body
    // on stdout (scripts read stdout), besides the message on stderr.
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    let cli = Cli::parse();
    if cli.allow_insecure_key_file {
        veil_sealing::key::danger::allow_insecure_key_files();
    }
    let result = match cli.command {
        Command::Report(cmd) => report_cmd::run(cmd),
        Command::MockPlatform(cmd) => mock_cmd::run(cmd),
        Command::Kds(cmd) => veil_client::kds_cmd::run(cmd),
        Command::Measure(cmd) => veil_client::measure_cmd::run(cmd),
        Command::Policy(cmd) => veil_client::policy_cmd::run(cmd),
        Command::Verify(args) => remote_cmd::verify(args),
        Command::Provision(args) => remote_cmd::provision(args),
        Command::Ask(args) => remote_cmd::ask(args),
        Command::Chat(args) => remote_cmd::chat(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Broker(args) => broker::run(args),
        Command::ApiKey(cmd) => veil_client::api_key::run(cmd),
        Command::Receipt(cmd) => veil_client::receipt_cmd::run(cmd),
        Command::Seal(args) => seal::run(args).map_err(Failure::from),
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Rejected) => ExitCode::from(3),
        Err(Failure::Error(e)) => {
            if json {
                println!("{}", serde_json::json!({ "error": format!("{e:#}") }));
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
