//! `veil report show|verify`: raw SEV-SNP reports and evidence (Veil's bundles, Trustee's
//! `az-snp-vtpm` files), offline.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use veil_attestation::{
    Certificate, Crl, Evidence, Offline, Policy, Product, Report, TeeKind, TrusteeEvidence,
};

use veil_attestation::kds;
use veil_attestation::VcekRequest;

use crate::files::{load_policy, read_small};
use crate::kds::{KdsArgs, Retry};
use crate::output::{print_verdict, verdict_json};
use crate::{CmdResult, Failure};

/// `veil report …`
#[derive(Subcommand)]
pub enum ReportCommand {
    /// Print every field of a report (raw 1184 bytes, hex text, an Azure HCL report, or an
    /// evidence JSON: Veil's, or Trustee's az-snp-vtpm).
    Show {
        /// The report file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Decode TCBs in this product's layout (default: from the CPUID bytes).
        #[arg(long)]
        product: Option<String>,
    },
    /// Verify a report: certificate chain (a VCEK missing from --certs and the evidence
    /// comes from the KDS cache or AMD's KDS), signature, and policy.
    Verify(Box<VerifyArgs>),
}

/// `veil report verify`
#[derive(Args)]
pub struct VerifyArgs {
    /// The report: raw 1184 bytes, hex text, an Azure HCL report, or an evidence JSON
    /// (Veil's bundle, or Trustee's az-snp-vtpm evidence v0, v1 or v2).
    pub file: PathBuf,
    /// Directory with `vcek.pem`/`vcek.der` or `vlek.pem`/`vlek.der`, and optionally
    /// `ask.pem`, `asvk.pem`, `ark.pem` (snpguest's names). Built-in AMD roots otherwise.
    #[arg(long)]
    pub certs: Option<PathBuf>,
    /// Appraisal policy (TOML). Without it: genuine evidence, default security settings,
    /// any measurement.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Trust this mock platform root certificate (MOCK evidence only).
    #[arg(long)]
    pub mock_root: Option<PathBuf>,
    /// Check revocation against this CRL (DER or PEM; repeatable), besides any the policy
    /// names: AMD's KDS serves one per product.
    #[arg(long = "crl")]
    pub crls: Vec<PathBuf>,
    /// Expected REPORT_DATA (128 hex digits). For az-snp-vtpm evidence: the expected nonce
    /// (hex of 1 to 64 bytes), compared with the TPM quote's extraData. Without it, the
    /// binding is not checked.
    #[arg(long)]
    pub report_data: Option<String>,
    /// Check certificate validity at this time (RFC 3339) instead of now.
    #[arg(long)]
    pub at: Option<String>,
    /// Print a machine-readable verdict.
    #[arg(long)]
    pub json: bool,
    /// The product of a v2 report, whose CPUID bytes are absent (Milan or Genoa), for
    /// fetching its VCEK.
    #[arg(long)]
    pub product: Option<String>,
    /// Where a VCEK missing from the certs directory and the evidence comes from.
    #[command(flatten)]
    pub kds: KdsArgs,
}

/// Runs a `veil report` command.
///
/// # Errors
/// [`Failure::Rejected`] when the evidence fails appraisal; [`Failure::Error`] otherwise.
pub fn run(cmd: ReportCommand) -> CmdResult {
    match cmd {
        ReportCommand::Show {
            file,
            json,
            product,
        } => show(&file, json, product.as_deref()),
        ReportCommand::Verify(args) => verify(*args),
    }
}

/// The report of `file`: raw, hex, or inside an evidence JSON file (also returned).
///
/// # Errors
/// If the file cannot be read or holds neither.
pub(crate) fn load_report(file: &Path) -> anyhow::Result<(Report, Option<Evidence>)> {
    let bytes = read_small(file)?;
    let json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if json && TrusteeEvidence::recognizes(&bytes) {
        let evidence = TrusteeEvidence::from_json(&bytes)
            .and_then(|t| t.to_evidence())
            .with_context(|| format!("{}", file.display()))?;
        let report = evidence
            .parsed_report()
            .with_context(|| format!("{}", file.display()))?;
        return Ok((report, Some(evidence)));
    }
    if json {
        let evidence =
            Evidence::from_json(&bytes).with_context(|| format!("{}", file.display()))?;
        let report = evidence
            .parsed_report()
            .with_context(|| format!("{}", file.display()))?;
        return Ok((report, Some(evidence)));
    }
    let report = Report::from_bytes_or_hex(&bytes)
        .with_context(|| format!("{} is not an SNP report", file.display()))?;
    Ok((report, None))
}

fn show(file: &Path, json: bool, product: Option<&str>) -> CmdResult {
    let (report, _) = load_report(file)?;
    let product = product
        .map(|p| Product::from_name(p).ok_or_else(|| anyhow!("unknown product {p:?}")))
        .transpose()?;
    let fields = report.fields(product);
    if json {
        println!("{}", serde_json::to_string_pretty(&fields)?);
        return Ok(());
    }
    let value = serde_json::to_value(&fields)?;
    let obj = value.as_object().expect("fields serialize to an object");
    for (k, v) in obj {
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => {
                let raw = o.get("raw").and_then(|r| r.as_str()).unwrap_or_default();
                let d = &o["decoded"];
                let mut parts = Vec::new();
                for key in ["fmc", "bootloader", "tee", "snp", "microcode"] {
                    if let Some(n) = d.get(key) {
                        parts.push(format!("{key}={n}"));
                    }
                }
                format!("{raw} ({})", parts.join(" "))
            }
            serde_json::Value::Null => "-".to_owned(),
            other => other.to_string(),
        };
        println!("{k:20} {text}");
    }
    Ok(())
}

/// Reads the first of `names` that exists in `dir`.
fn cert_file(dir: &Path, names: &[&str]) -> anyhow::Result<Option<Vec<Certificate>>> {
    for name in names {
        let path = dir.join(name);
        if path.is_file() {
            let certs = Certificate::all_from_pem_or_der(&read_small(&path)?)
                .with_context(|| format!("{} is not a certificate", path.display()))?;
            if certs.is_empty() {
                bail!("{} holds no certificate", path.display());
            }
            return Ok(Some(certs));
        }
    }
    Ok(None)
}

/// A certs directory's VEK (DER) if it has one, and its other certificates (DER).
type DirCerts = (Option<Vec<u8>>, Vec<Vec<u8>>);

/// The certificates of `dir`: its VEK if it has one (`None` otherwise), then its
/// ASK/ASVK and ARK.
fn certificates_from_dir(dir: &Path) -> anyhow::Result<DirCerts> {
    let vek = cert_file(dir, &["vcek.pem", "vcek.der", "vlek.pem", "vlek.der"])?
        .map(|v| v[0].as_der().to_vec());
    let mut others: Vec<Vec<u8>> = Vec::new();
    for names in [
        &["ask.pem", "ask.der"][..],
        &["asvk.pem", "asvk.der"],
        &["ark.pem", "ark.der"],
    ] {
        for c in cert_file(dir, names)?.unwrap_or_default() {
            let der = c.as_der().to_vec();
            if vek.as_ref() != Some(&der) && !others.contains(&der) {
                others.push(der);
            }
        }
    }
    Ok((vek, others))
}

/// The VCEK of `report`, from the KDS cache or KDS itself.
fn fetch_vcek(report: &Report, args: &VerifyArgs) -> anyhow::Result<Vec<u8>> {
    let named = match &args.product {
        Some(name) => Some(
            Product::from_name(name)
                .filter(|p| *p != Product::Mock)
                .ok_or_else(|| anyhow!("--product {name:?} is not Milan, Genoa or Turin"))?,
        ),
        None => None,
    };
    let product = match (kds::report_product(report), named) {
        (Some(found), Some(named)) if found != named => {
            bail!("--product {named} contradicts the report, which names {found}")
        }
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => bail!(
            "this v2 report does not say whether it is Milan or Genoa: pass --product, \
             or a certs directory holding its VCEK"
        ),
    };
    let request = VcekRequest::from_report(report, product)?;
    let cert = crate::kds::vcek(&args.kds, &request, Retry::default())
        .context("the VCEK is not in the certs directory or the evidence")?;
    Ok(cert.as_der().to_vec())
}

/// Parses `--at`.
fn appraisal_time(at: Option<&str>) -> anyhow::Result<SystemTime> {
    match at {
        None => Ok(SystemTime::now()),
        Some(text) => {
            let t =
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .with_context(|| {
                    format!("--at {text:?} is not an RFC 3339 time (e.g. 2025-06-01T00:00:00Z)")
                })?;
            Ok(SystemTime::from(t))
        }
    }
}

fn verify(args: VerifyArgs) -> CmdResult {
    let (report, evidence) = load_report(&args.file)?;
    let mut evidence = evidence.unwrap_or_else(|| Evidence {
        tee: TeeKind::Snp,
        report: report.as_bytes().to_vec(),
        certificates: Vec::new(),
        binding: None,
        vtpm: None,
    });
    // The certs directory's VEK replaces the evidence's; without one, the evidence's is
    // kept, and without that, the VCEK is fetched (or read from the KDS cache).
    let (dir_vek, dir_others) = match &args.certs {
        Some(dir) => certificates_from_dir(dir)?,
        None => (None, Vec::new()),
    };
    let vek = match (dir_vek, evidence.certificates.first()) {
        (Some(v), _) => v,
        (None, Some(v)) => v.clone(),
        (None, None) if evidence.tee != TeeKind::Mock => fetch_vcek(&report, &args)?,
        (None, None) => return Err(anyhow!("the evidence carries no certificates").into()),
    };
    if args.certs.is_some() {
        evidence.certificates = vec![vek];
        for c in dir_others {
            if !evidence.certificates.contains(&c) {
                evidence.certificates.push(c);
            }
        }
    } else if evidence.certificates.is_empty() {
        evidence.certificates = vec![vek];
    }
    // The mock platform's VCEK is issued by SEV-Mock: appraise it as MOCK evidence, which
    // only passes if the policy (or --mock-root) names the mock root.
    let first = evidence
        .certificates
        .first()
        .ok_or_else(|| anyhow!("the evidence carries no certificates"))?;
    let vek = Certificate::from_der(first).context("the VCEK/VLEK")?;
    if vek.issuer_cn().as_deref() == Some("SEV-Mock") {
        evidence.tee = TeeKind::Mock;
    }
    let mock = evidence.tee == TeeKind::Mock;
    let az = evidence.tee == TeeKind::AzSnpVtpm;

    let mut policy = match &args.policy {
        Some(path) => load_policy(path)?,
        None if az => {
            let mut p = Policy::genuine_snp();
            p.set_tee(&[TeeKind::AzSnpVtpm]);
            p
        }
        None => Policy::genuine_snp(),
    };
    if let Some(root) = &args.mock_root {
        let certs = Certificate::all_from_pem_or_der(&read_small(root)?)
            .with_context(|| format!("{} is not a certificate", root.display()))?;
        let root = certs
            .first()
            .ok_or_else(|| anyhow!("{} holds no certificate", root.display()))?;
        policy.trust_mock_root(root);
        if !evidence.certificates.iter().any(|d| d == root.as_der()) {
            evidence.certificates.push(root.as_der().to_vec());
        }
    }
    for path in &args.crls {
        let crl = Crl::from_pem_or_der(&read_small(path)?)
            .with_context(|| format!("--crl {}", path.display()))?;
        policy.require_crl(&path.display().to_string(), crl);
    }
    let now = appraisal_time(args.at.as_deref())?;
    let expected = match &args.report_data {
        Some(text) if az => {
            let nonce = hex::decode(text.trim())
                .ok()
                .filter(|n| (1..=64).contains(&n.len()))
                .context(
                    "--report-data for az-snp-vtpm evidence is the nonce: hex of 1 to 64 bytes",
                )?;
            Offline::nonce(&nonce, now)?
        }
        Some(text) => {
            let mut rd = [0u8; 64];
            hex::decode_to_slice(text.trim(), &mut rd)
                .context("--report-data must be 128 hex digits")?;
            Offline::report_data(rd, now)
        }
        None => Offline::danger_any_report_data(now),
    };
    let result = policy.appraise_offline(&evidence, &expected);
    let verdict = result.as_ref().map(|a| a.claims());
    if args.json {
        let mut v = verdict_json(verdict, Some(&report), mock);
        v["tee"] = serde_json::Value::String(evidence.tee.to_string());
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_verdict(verdict, mock);
        if args.policy.is_none() {
            println!("(no --policy: the measurement was not checked)");
            if az {
                println!("(az-snp-vtpm: the MEASUREMENT is the paravisor's; pin PCRs with `pcrs` in a policy to identify the guest)");
            }
        }
    }
    result.map(|_| ()).map_err(|_| Failure::Rejected)
}
