//! `veil policy snp`: write an appraisal policy for real SEV-SNP launches, the sibling of
//! `veil mock-platform policy` (see `docs/measure.md`); `veil policy rego`: translate one
//! into a Trustee KBS resource policy (`docs/trustee.md`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use veil_attestation::policy::MinimumTcb;
use veil_attestation::{Policy, Product, TeeKind};

use crate::files::write_new;
use crate::CmdResult;

/// `veil policy …`
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Write a policy for SEV-SNP evidence under AMD's roots: the accepted launch
    /// measurements, optionally HOST_DATA, models and a minimum TCB; debug never allowed.
    Snp(SnpPolicyArgs),
    /// Translate a Veil policy into a Trustee KBS resource policy (Rego) that releases the
    /// model key only to SNP evidence whose claims satisfy it; the checks Trustee's claims
    /// cannot express are listed (on stderr, and as comments in the Rego).
    Rego(RegoArgs),
}

/// What `veil policy rego` reads and writes.
#[derive(Args)]
pub struct RegoArgs {
    /// The Veil policy (TOML).
    pub policy: PathBuf,
    /// The KBS resource that holds the model key, REPO/TYPE/TAG (as in
    /// `--key-broker kbs://HOST:PORT/REPO/TYPE/TAG`).
    #[arg(long, default_value = "default/veil/model-key")]
    pub resource: String,
    /// Write the Rego here instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
}

/// What `veil policy snp` writes into the policy.
#[derive(Args)]
pub struct SnpPolicyArgs {
    /// An accepted launch MEASUREMENT, 96 hex digits as `veil measure snp` prints it
    /// (repeatable: one per accepted image or vCPU count).
    #[arg(long = "measurement", required = true)]
    pub measurements: Vec<String>,
    /// An accepted HOST_DATA, 64 hex digits (repeatable; default: any).
    #[arg(long = "host-data")]
    pub host_data: Vec<String>,
    /// An accepted model: SHA-256 of the plaintext model, 64 hex digits (repeatable;
    /// default: any).
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// A minimum TCB, `[PRODUCT:]bootloader=N,tee=N,snp=N,microcode=N[,fmc=N]`; without
    /// a product it applies to all (repeatable, one per product; components left out are 0).
    #[arg(long = "min-tcb")]
    pub min_tcb: Vec<String>,
    /// An accepted product: milan, genoa or turin (repeatable; default: all).
    #[arg(long = "product")]
    pub products: Vec<String>,
    /// An accepted TEE kind: snp, or az-snp-vtpm for Azure CVMs, whose MEASUREMENT is the
    /// paravisor's (repeatable; default: snp).
    #[arg(long = "tee")]
    pub tees: Vec<String>,
    /// az-snp-vtpm: a pinned PCR of the SHA-256 bank, `INDEX=HEX` (0..=23, 64 hex digits;
    /// repeatable).
    #[arg(long = "pcr")]
    pub pcrs: Vec<String>,
    /// The policy file to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

/// Checks that each value of `flag` is `N` bytes of hex, and returns them in lowercase.
fn hex_values<const N: usize>(flag: &str, values: &[String]) -> anyhow::Result<Vec<[u8; N]>> {
    values
        .iter()
        .map(|v| {
            let mut out = [0u8; N];
            hex::decode_to_slice(v.trim(), &mut out).map_err(|_| {
                anyhow::anyhow!("{flag} {v:?} is not {N} bytes ({} digits) of hex", 2 * N)
            })?;
            Ok(out)
        })
        .collect()
}

/// Parses `INDEX=HEX`.
fn parse_pcr(spec: &str) -> anyhow::Result<(usize, [u8; 32])> {
    let (index, value) = spec
        .split_once('=')
        .with_context(|| format!("--pcr {spec:?} is not INDEX=HEX"))?;
    let index: usize = index
        .trim()
        .parse()
        .ok()
        .filter(|i| *i < 24)
        .with_context(|| format!("--pcr {spec:?}: the index is not 0..=23"))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(value.trim(), &mut out).map_err(|_| {
        anyhow::anyhow!("--pcr {spec:?}: the value is not 32 bytes (64 digits) of hex")
    })?;
    Ok((index, out))
}

/// Parses `[PRODUCT:]key=N,…` into the product (`None` for all) and the minimum.
fn parse_min_tcb(spec: &str) -> anyhow::Result<(Option<Product>, MinimumTcb)> {
    let (key, list) = match spec.split_once(':') {
        Some((product, list)) => {
            let p = Product::from_name(product)
                .filter(|p| *p != Product::Mock)
                .with_context(|| {
                    format!("--min-tcb {spec:?}: unknown product {product:?} (milan, genoa, turin)")
                })?;
            (Some(p), list)
        }
        None => (None, spec),
    };
    let mut tcb = MinimumTcb::default();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, value) = item
            .split_once('=')
            .with_context(|| format!("--min-tcb {spec:?}: {item:?} is not COMPONENT=N"))?;
        let value: u8 = value.trim().parse().with_context(|| {
            format!("--min-tcb {spec:?}: {name} = {value:?} is not a number 0..=255")
        })?;
        let slot = match name.trim() {
            "bootloader" => &mut tcb.bootloader,
            "tee" => &mut tcb.tee,
            "snp" => &mut tcb.snp,
            "microcode" => &mut tcb.microcode,
            "fmc" => &mut tcb.fmc,
            other => anyhow::bail!(
                "--min-tcb {spec:?}: unknown component {other:?} (bootloader, tee, snp, microcode, fmc)"
            ),
        };
        *slot = value;
    }
    Ok((key, tcb))
}

/// The policy that `veil policy snp` writes for these arguments.
///
/// # Errors
/// Naming the flag whose value is malformed.
pub fn snp_policy(args: &SnpPolicyArgs) -> anyhow::Result<Policy> {
    let mut min_tcb = BTreeMap::new();
    for spec in &args.min_tcb {
        let (product, tcb) = parse_min_tcb(spec)?;
        let key = product.map_or("all", Product::name).to_ascii_lowercase();
        anyhow::ensure!(
            min_tcb.insert(key.clone(), (product, tcb)).is_none(),
            "--min-tcb given twice for {key}"
        );
    }
    let products = if args.products.is_empty() {
        None
    } else {
        Some(
            args.products
                .iter()
                .map(|p| {
                    Product::from_name(p)
                        .filter(|p| *p != Product::Mock)
                        .with_context(|| format!("--product {p:?} is not milan, genoa or turin"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
        )
    };
    // Policy::snp keeps the defaults that fail closed: no debug, no migration agent, VMPL 0.
    let mut policy = Policy::snp(&hex_values::<48>("--measurement", &args.measurements)?);
    policy.set_products(products);
    policy.set_host_data(&hex_values::<32>("--host-data", &args.host_data)?);
    policy.set_models(&hex_values::<32>("--model", &args.models)?);
    for (product, tcb) in min_tcb.into_values() {
        policy.set_min_tcb(product, tcb);
    }
    if !args.tees.is_empty() {
        let tees = args
            .tees
            .iter()
            .map(|t| match t.trim() {
                "snp" => Ok(TeeKind::Snp),
                "az-snp-vtpm" => Ok(TeeKind::AzSnpVtpm),
                other => anyhow::bail!("--tee {other:?} is not snp or az-snp-vtpm"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        policy.set_tee(&tees);
    }
    if !args.pcrs.is_empty() {
        anyhow::ensure!(
            policy.tee().contains(&TeeKind::AzSnpVtpm),
            "--pcr applies to az-snp-vtpm evidence: add --tee az-snp-vtpm"
        );
        let pcrs = args
            .pcrs
            .iter()
            .map(|p| parse_pcr(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        policy.set_pcrs(&pcrs).context("--pcr")?;
    }
    Ok(policy)
}

/// Runs a `veil policy` command.
///
/// # Errors
/// [`Failure::Error`](crate::Failure::Error) naming the malformed flag, or the file that
/// cannot be written.
pub fn run(cmd: PolicyCommand) -> CmdResult {
    match cmd {
        PolicyCommand::Rego(args) => {
            let policy = crate::files::load_policy(&args.policy)?;
            let rego = veil_attestation::trustee::resource_policy(&policy, &args.resource)
                .with_context(|| format!("policy {}", args.policy.display()))?;
            match &args.output {
                Some(path) => {
                    write_new(path, rego.rego.as_bytes(), false, args.force)?;
                    eprintln!("resource policy {} for {}", path.display(), args.resource);
                }
                None => print!("{}", rego.rego),
            }
            for n in &rego.not_translated {
                eprintln!("not translated: {n}");
            }
        }
        PolicyCommand::Snp(args) => {
            let policy = snp_policy(&args)?;
            let text = policy.to_toml();
            // What is written must load with the same loader every appraiser uses.
            Policy::from_toml(&text).context("the policy written does not load")?;
            write_new(&args.output, text.as_bytes(), false, args.force)?;
            let tees: Vec<&str> = policy.tee().iter().map(|t| t.name()).collect();
            println!(
                "policy {}: tee {} (AMD roots), {} measurement(s), debug not allowed",
                args.output.display(),
                tees.join(", "),
                policy.measurements().len()
            );
            for (index, value) in policy.pcrs() {
                println!("  pcr {index}: {}", hex::encode(value));
            }
            let hex_list =
                |l: &[[u8; 32]]| l.iter().map(hex::encode).collect::<Vec<_>>().join(", ");
            if !policy.host_data().is_empty() {
                println!("  host_data: {}", hex_list(policy.host_data()));
            }
            if !policy.models().is_empty() {
                println!("  models: {}", hex_list(policy.models()));
            }
        }
    }
    Ok(())
}
