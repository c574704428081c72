//! `veil measure snp`: the expected SEV-SNP launch MEASUREMENT of a guest, from the files
//! and settings it is launched with; `veil measure host-data`: the HOST_DATA that binds a
//! server's launch configuration (see `docs/measure.md`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use ring::digest;
use serde_json::json;
use veil_attestation::measure::{
    vcpu_signature, KernelHashes, SnpLaunch, SvsmLaunch, Vmm as MeasureVmm,
};

use crate::{CmdResult, Failure};

/// `veil measure …`
#[derive(Subcommand)]
pub enum MeasureCommand {
    /// Print the 48-byte launch MEASUREMENT an SEV-SNP guest will report (hex), the value
    /// for `veil policy snp --measurement`.
    Snp(SnpArgs),
    /// Print the HOST_DATA (SHA-256 of the canonical launch configuration, hex) to launch
    /// a `veil-server` guest with, the value for `veil policy snp --host-data`; with `-o`,
    /// also write the configuration file for `veil-server --launch-config`.
    HostData(HostDataArgs),
}

/// The launch configuration of `veil measure host-data`.
#[derive(Args)]
pub struct HostDataArgs {
    /// The TEE kind the server attests with.
    #[arg(long, value_parser = ["snp", "mock"])]
    pub tee: String,
    /// The address the server listens on (IP:PORT).
    #[arg(long)]
    pub listen: String,
    /// The sealed model (its plaintext digest is read from the header) ...
    #[arg(
        long,
        conflicts_with = "model_sha256",
        required_unless_present = "model_sha256"
    )]
    pub model: Option<PathBuf>,
    /// ... or that digest, 64 hex digits.
    #[arg(long)]
    pub model_sha256: Option<String>,
    /// The key broker the server pulls its key from, if any.
    #[arg(long)]
    pub key_broker: Option<String>,
    /// Write the configuration file here (for the guest; `veil-server --launch-config`).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Print JSON (`host_data`, `host_data_base64` for QEMU's `host-data=`, `config`).
    #[arg(long)]
    pub json: bool,
}

/// The VMM that launches the guest.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VmmArg {
    /// QEMU/KVM.
    Qemu,
    /// AWS EC2.
    Ec2,
    /// Google Compute Engine.
    Gce,
}

impl From<VmmArg> for MeasureVmm {
    fn from(v: VmmArg) -> Self {
        match v {
            VmmArg::Qemu => MeasureVmm::Qemu,
            VmmArg::Ec2 => MeasureVmm::Ec2,
            VmmArg::Gce => MeasureVmm::Gce,
        }
    }
}

/// The launch inputs of `veil measure snp`.
#[derive(Args)]
pub struct SnpArgs {
    /// The firmware image exactly as given to the VMM (`-bios`); only an AmdSevX64 OVMF
    /// build can pin a kernel.
    #[arg(long)]
    pub ovmf: PathBuf,
    /// The kernel (`-kernel`), measured through the firmware's kernel-hashes page.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// The initrd (`-initrd`); needs --kernel.
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line (`-append`), exactly; needs --kernel.
    #[arg(long, requires = "kernel")]
    pub append: Option<String>,
    /// Number of vCPUs.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub vcpus: u32,
    /// The vCPU type (QEMU `-cpu`), e.g. EPYC-v4, EPYC-Milan, EPYC-Genoa.
    #[arg(long, conflicts_with = "vcpu_sig")]
    pub vcpu_type: Option<String>,
    /// The vCPU's CPUID signature in hex (EPYC-v4: 0x800f12), instead of --vcpu-type.
    #[arg(long, value_parser = parse_u32_hex)]
    pub vcpu_sig: Option<u32>,
    /// The VMM: qemu, ec2 or gce (EC2 and GCE ignore the vCPU type).
    #[arg(long, value_enum)]
    pub vmm: VmmArg,
    /// The guest's SEV_FEATURES in hex: 0x1 (SNPActive), 0x21 with DebugSwap (the
    /// default of Linux 6.6+ KVM hosts). Confirm it on the first hardware launch.
    #[arg(long, value_parser = parse_u64_hex, required_unless_present = "svsm")]
    pub guest_features: Option<u64>,
    /// The launch digest of the firmware pages alone (96 hex digits), instead of hashing
    /// them again; --ovmf is still read for its metadata.
    #[arg(long, value_parser = parse_digest)]
    pub snp_ovmf_hash: Option<[u8; 48]>,
    /// A Coconut-SVSM image launched with the OVMF (QEMU only; no kernel).
    #[arg(long, requires = "vars_size", conflicts_with_all = ["kernel", "snp_ovmf_hash"])]
    pub svsm: Option<PathBuf>,
    /// Size in bytes of the UEFI variable store between the OVMF and the SVSM.
    #[arg(long, requires = "svsm")]
    pub vars_size: Option<u64>,
    /// Print a JSON object: the measurement and every input, files with their SHA-256.
    #[arg(long)]
    pub json: bool,
}

fn strip_0x(s: &str) -> &str {
    s.strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s)
}

fn parse_u32_hex(s: &str) -> Result<u32, String> {
    u32::from_str_radix(strip_0x(s.trim()), 16)
        .map_err(|_| format!("{s:?} is not a 32-bit hex number"))
}

fn parse_u64_hex(s: &str) -> Result<u64, String> {
    u64::from_str_radix(strip_0x(s.trim()), 16)
        .map_err(|_| format!("{s:?} is not a 64-bit hex number"))
}

fn parse_digest(s: &str) -> Result<[u8; 48], String> {
    let mut out = [0u8; 48];
    hex::decode_to_slice(strip_0x(s.trim()), &mut out)
        .map_err(|_| format!("{s:?} is not 48 bytes (96 digits) of hex"))?;
    Ok(out)
}

/// Reads a launch input whole, naming the option and the file in an error.
fn read_input(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes))
}

fn file_json(path: &Path, sha256: String) -> serde_json::Value {
    json!({ "path": path.display().to_string(), "sha256": sha256 })
}

/// Runs a `veil measure` command.
///
/// # Errors
/// [`Failure::Error`] naming the input at fault: a file that cannot
/// be read, firmware that cannot carry what is asked of it, a missing vCPU type.
pub fn run(cmd: MeasureCommand) -> CmdResult {
    match cmd {
        MeasureCommand::Snp(args) => snp(args).map_err(Failure::from),
        MeasureCommand::HostData(args) => host_data(args).map_err(Failure::from),
    }
}

fn host_data(args: HostDataArgs) -> anyhow::Result<()> {
    let model_sha256 = match (&args.model, &args.model_sha256) {
        (Some(path), _) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            veil_sealing::read_header(&file)
                .with_context(|| format!("{} is not a sealed model", path.display()))?
                .model_sha256
        }
        (None, Some(hex_digest)) => {
            let mut out = [0u8; 32];
            hex::decode_to_slice(hex_digest, &mut out)
                .context("--model-sha256: expected 64 hex digits")?;
            out
        }
        (None, None) => anyhow::bail!("--model FILE or --model-sha256 HEX is required"),
    };
    let launch = veil_attestation::LaunchConfig::server(
        &args.tee,
        &args.listen,
        &model_sha256,
        args.key_broker.as_deref(),
    )?;
    let digest = hex::encode(launch.host_data());
    if let Some(path) = &args.output {
        std::fs::write(path, launch.to_text())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!(
            "{}",
            json!({
                "host_data": digest,
                // QEMU's `-object sev-snp-guest,host-data=` takes it in base64.
                "host_data_base64": STANDARD.encode(launch.host_data()),
                "config": launch.entries(),
            })
        );
    } else {
        println!("{digest}");
    }
    Ok(())
}

fn snp(args: SnpArgs) -> anyhow::Result<()> {
    let vmm = MeasureVmm::from(args.vmm);
    let vcpu_sig = match (args.vcpu_sig, &args.vcpu_type) {
        (Some(sig), _) => sig,
        (None, Some(name)) => vcpu_signature(name)?,
        // EC2 and GCE load their own rdx; the signature does not enter the digest.
        (None, None) if vmm != MeasureVmm::Qemu => 0,
        (None, None) => anyhow::bail!("--vmm qemu needs --vcpu-type NAME or --vcpu-sig HEX"),
    };
    let ovmf = read_input("--ovmf", &args.ovmf)?;
    let mut inputs = json!({
        "vcpus": args.vcpus,
        "vcpu_type": args.vcpu_type,
        // Null when the VMM ignores it and none was given.
        "vcpu_sig": (args.vcpu_sig.is_some() || args.vcpu_type.is_some())
            .then(|| format!("{vcpu_sig:#x}")),
        "vmm": vmm.name(),
        "ovmf": file_json(&args.ovmf, sha256_hex(&ovmf)),
    });

    let measurement = if let Some(svsm_path) = &args.svsm {
        anyhow::ensure!(
            vmm == MeasureVmm::Qemu,
            "--svsm: Coconut-SVSM launches are measured for --vmm qemu only"
        );
        let svsm = read_input("--svsm", svsm_path)?;
        let vars_size = args.vars_size.context("--svsm needs --vars-size")?;
        inputs["mode"] = json!("snp:svsm");
        inputs["svsm"] = file_json(svsm_path, sha256_hex(&svsm));
        inputs["vars_size"] = json!(vars_size);
        SvsmLaunch {
            ovmf: &ovmf,
            svsm: &svsm,
            vars_size,
            vcpus: args.vcpus,
            vcpu_sig,
        }
        .measurement()?
    } else {
        let guest_features = args
            .guest_features
            .context("--guest-features is required")?;
        let kernel = match &args.kernel {
            None => None,
            Some(path) => {
                let kernel = read_input("--kernel", path)?;
                let initrd = match &args.initrd {
                    Some(p) => Some(read_input("--initrd", p)?),
                    None => None,
                };
                let hashes = KernelHashes::new(&kernel, initrd.as_deref(), args.append.as_deref());
                inputs["kernel"] = file_json(path, hex::encode(hashes.kernel));
                inputs["initrd"] = match &args.initrd {
                    Some(p) => file_json(p, hex::encode(hashes.initrd)),
                    None => serde_json::Value::Null,
                };
                inputs["append"] = json!(args.append);
                inputs["cmdline_sha256"] = json!(hex::encode(hashes.cmdline));
                Some(hashes)
            }
        };
        inputs["mode"] = json!("snp");
        inputs["guest_features"] = json!(format!("{guest_features:#x}"));
        inputs["snp_ovmf_hash"] = json!(args.snp_ovmf_hash.map(hex::encode));
        SnpLaunch {
            firmware: &ovmf,
            firmware_digest: args.snp_ovmf_hash,
            kernel,
            vcpus: args.vcpus,
            vcpu_sig,
            vmm,
            guest_features,
        }
        .measurement()?
    };

    let measurement = hex::encode(measurement);
    if args.json {
        inputs["measurement"] = json!(measurement);
        println!(
            "{}",
            serde_json::to_string_pretty(&inputs).expect("JSON values serialize")
        );
    } else {
        println!("{measurement}");
    }
    Ok(())
}
