//! Evidence in the formats of Confidential Containers' Trustee (its attestation service's
//! verifiers), for `veil-server --key-broker kbs://…`.
//!
//! - `snp`: `{"attestation_report": R, "cert_chain": [C…]}`, where `R` is the report as the
//!   `sev` crate's serde writes it and each `C` a `sev` certificate-table entry
//!   (`{"cert_type": "VCEK", "data": [bytes]}`): what Trustee's SNP verifier reads. It
//!   checks the signature under AMD's roots, so a mock platform's report is refused there
//!   (and accepted by a test KBS that only reads it).
//! - `sample`: `{"svn": "1", "report_data": B64}`: Trustee's sample verifier, which checks
//!   no signature at all. For trying the flow with the mock TEE only.
//!
//! The report data Trustee expects is its own digest of the runtime data (the KBS nonce and
//! the TEE's key), not Veil's transcript: see `server/src/kbs.rs`.
//!
//! [`resource_policy`] translates a Veil [`Policy`] into a KBS resource policy (Rego) over
//! the claims Trustee's SNP verifier emits (`veil policy rego`, `docs/trustee.md`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::{CertTableEntry, CertType};
use sev::parser::ByteParser as _;

use crate::evidence::{Evidence, TeeKind};
use crate::policy::Policy;
use crate::report::SigningKey;

/// Why evidence cannot be put in Trustee's format.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrusteeError {
    /// The report does not parse as an SEV-SNP report.
    #[error("the report is not an SEV-SNP report: {0}")]
    Report(String),
    /// The policy cannot become a resource policy that releases anything.
    #[error("{0}")]
    Policy(String),
}

/// A KBS resource policy written from a Veil policy.
#[derive(Debug, Clone)]
pub struct ResourcePolicy {
    /// The Rego text (package `policy`, rule `allow`).
    pub rego: String,
    /// The Veil checks that Trustee's claims cannot express, one sentence each (they are
    /// also comments in [`ResourcePolicy::rego`]).
    pub not_translated: Vec<String>,
}

/// The claims object of the SNP verifier in the KBS's policy input (the EAR token's
/// annotated evidence).
const SNP_CLAIMS: &str = r#"input.submods.cpu0["ear.veraison.annotated-evidence"].snp"#;

/// Writes the KBS resource policy that releases `resource` (`REPO/TYPE/TAG`) only to SNP
/// evidence whose claims, as Trustee's SNP verifier emits them (hex strings, booleans and
/// numbers, trustee 2026-08 and later), satisfy `policy`: its measurements, HOST_DATA
/// (`init_data`), CHIP_IDs, minimum reported TCB, and no debug, migration agent or SMT
/// unless it allows them. Trustee's verifier itself checks the signature under AMD's roots,
/// VMPL 0, report versions 3 to 5, the reported TCB against the VEK and the report data.
///
/// # Errors
/// [`TrusteeError::Policy`] if the policy accepts no SNP evidence (no `snp` TEE, no
/// measurement, a VMPL other than 0), or `resource` is not three parts.
pub fn resource_policy(policy: &Policy, resource: &str) -> Result<ResourcePolicy, TrusteeError> {
    let refuse = |why: String| Err(TrusteeError::Policy(why));
    if !policy.tee.contains(&TeeKind::Snp) {
        return refuse(format!(
            "the policy accepts no snp evidence (tee = {:?}); Trustee's SNP claims are all it can translate \
             (the sample verifier checks nothing worth a policy)",
            policy.tee.iter().map(ToString::to_string).collect::<Vec<_>>()
        ));
    }
    if !policy.any_measurement && policy.measurements.is_empty() {
        return refuse("the policy accepts no measurement: it would release nothing".into());
    }
    if !policy.vmpl.contains(&0) {
        return refuse(
            "Trustee's SNP verifier accepts VMPL 0 only, which the policy refuses".into(),
        );
    }
    let parts: Vec<&str> = resource.split('/').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty() || p.contains('"')) {
        return refuse(format!("resource {resource:?}: expected REPO/TYPE/TAG"));
    }

    let mut not_translated = Vec::new();
    let mut note = |s: &str| not_translated.push(s.to_owned());
    if policy.tee.len() > 1 {
        note("tee: only snp is translated; az-snp-vtpm and mock evidence are not released by this policy");
    }
    if policy.products.is_some() {
        note("products: Trustee's claims name no product (the verifier picks AMD's chain by the report's CPUID)");
    }
    let both_keys = [SigningKey::Vcek, SigningKey::Vlek]
        .iter()
        .all(|k| policy.signing_keys.contains(k));
    if !both_keys {
        note("signing_keys: Trustee's claims do not say whether a VCEK or a VLEK signed");
    }
    if policy.report_versions.iter().any(|v| !(3..=5).contains(v)) {
        note("report_versions: Trustee accepts versions 3 to 5 whatever the policy says");
    }
    if !policy.min_tcb.is_empty() {
        note("min_tcb: only the reported TCB is in Trustee's claims (Veil also checks LAUNCH_TCB), and no FMC; a minimum given per product is applied to every product at its strictest");
    }
    if policy.min_firmware.is_some() {
        note("min_firmware: the firmware version is not in Trustee's claims");
    }
    if policy.require_committed_tcb {
        note("require_committed_tcb: the committed TCB is not in Trustee's claims");
    }
    if policy.min_guest_svn > 0 {
        note("min_guest_svn: GUEST_SVN is not in Trustee's claims");
    }
    for (field, set) in [
        ("family_ids", !policy.family_ids.is_empty()),
        ("image_ids", !policy.image_ids.is_empty()),
        ("id_key_digests", !policy.id_key_digests.is_empty()),
        ("author_key_digests", !policy.author_key_digests.is_empty()),
    ] {
        if set {
            note(&format!("{field}: not in Trustee's claims"));
        }
    }
    if !policy.models.is_empty() {
        note("models: the model digest travels in Veil's transcript, which a KBS never sees; the resource is one sealed model's key, and the server refuses a key that does not open its sealed header");
    }
    if !policy.crl_files.is_empty() || !policy.loaded_crls.is_empty() {
        note("crls: revocation lists are not part of a resource policy");
    }
    if !policy.pcrs.is_empty() {
        note("pcrs: az-snp-vtpm only, not translated");
    }

    let set = |items: Vec<String>| {
        let mut items = items;
        items.sort();
        items.dedup();
        let quoted: Vec<String> = items.iter().map(|i| format!("\t\"{i}\",")).collect();
        format!("{{\n{}\n}}", quoted.join("\n"))
    };
    let mut rego = String::new();
    let mut line = |l: &str| {
        rego.push_str(l);
        rego.push('\n');
    };
    line("# KBS resource policy written by `veil policy rego` from a Veil policy.");
    line("#");
    line(&format!(
        "# It releases {resource} only to SEV-SNP evidence that Trustee's SNP verifier"
    ));
    line("# accepted (signature under AMD's roots, VMPL 0, report versions 3 to 5, report data");
    line("# bound to the KBS session) and whose claims satisfy the Veil policy.");
    if !not_translated.is_empty() {
        line("#");
        line("# Checks of the Veil policy that Trustee's claims cannot express:");
        for n in &not_translated {
            line(&format!("# - {n}"));
        }
    }
    line("");
    line("package policy");
    line("");
    line("import rego.v1");
    line("");
    line("default allow := false");
    line("");
    line(&format!("snp := {SNP_CLAIMS}"));
    line("");
    line("# The KBS gives the resource path as a list (trustee 2026-08) or a string (earlier).");
    line(
        r#"resource_path := concat("/", data["resource-path"]) if is_array(data["resource-path"])"#,
    );
    line(
        r#"resource_path := trim_left(data["resource-path"], "/") if is_string(data["resource-path"])"#,
    );
    let mut conditions = vec![
        "data.plugin == \"resource\"".to_owned(),
        format!("resource_path == \"{resource}\""),
    ];
    if !policy.any_measurement {
        line("");
        line(&format!(
            "measurements := {}",
            set(policy.measurements.iter().map(hex::encode).collect())
        ));
        conditions.push("snp.measurement in measurements".into());
    }
    if !policy.host_data.is_empty() {
        line("");
        line(&format!(
            "host_data := {}",
            set(policy.host_data.iter().map(hex::encode).collect())
        ));
        conditions.push("snp.init_data in host_data".into());
    }
    if !policy.chip_ids.is_empty() {
        line("");
        line(&format!(
            "chip_ids := {}",
            set(policy.chip_ids.iter().map(hex::encode).collect())
        ));
        conditions.push("snp.chip_id in chip_ids".into());
    }
    if !policy.allow_debug {
        conditions.push("snp.policy_debug_allowed == false".into());
    }
    if !policy.allow_migration_agent {
        conditions.push("snp.policy_migrate_ma == false".into());
    }
    if !policy.allow_smt {
        conditions.push("snp.policy_smt_allowed == false".into());
    }
    let strictest = policy.min_tcb.iter().fold([0u8; 4], |acc, (_, m)| {
        [
            acc[0].max(m.bootloader),
            acc[1].max(m.tee),
            acc[2].max(m.snp),
            acc[3].max(m.microcode),
        ]
    });
    for (name, min) in ["bootloader", "tee", "snp", "microcode"]
        .iter()
        .zip(strictest)
    {
        if min > 0 {
            conditions.push(format!("snp.reported_tcb_{name} >= {min}"));
        }
    }
    line("");
    line("allow if {");
    for c in &conditions {
        line(&format!("\t{c}"));
    }
    line("}");
    Ok(ResourcePolicy {
        rego,
        not_translated,
    })
}

/// The `snp` evidence for Trustee: the report and its certificates. The first certificate
/// is the VCEK, or the VLEK when the report says a VLEK signed it; the next the ASK (ASVK),
/// the last, if there is a third, the ARK.
///
/// # Errors
/// [`TrusteeError::Report`] if the report does not parse.
pub fn snp_evidence(evidence: &Evidence) -> Result<serde_json::Value, TrusteeError> {
    let mut bytes = evidence.report.clone();
    if evidence.tee == TeeKind::Mock && bytes.len() > 0x18A {
        // The mock platform's reports name no CPUID, from which the sev crate tells the
        // report's layout: give them Genoa's (family 19h, model 11h). Their signature is
        // the mock platform's, which no real verifier accepts whatever they say.
        bytes[0x188] = 0x19;
        bytes[0x189] = 0x11;
    }
    let report =
        AttestationReport::from_bytes(&bytes).map_err(|e| TrusteeError::Report(e.to_string()))?;
    // KEY_INFO bits 2..=4: 0 the VCEK signed it, 1 the VLEK.
    let vlek = (evidence.report.get(0x48).copied().unwrap_or(0) >> 2) & 0b111 == 1;
    let chain: Vec<CertTableEntry> = evidence
        .certificates
        .iter()
        .enumerate()
        .map(|(i, der)| CertTableEntry {
            cert_type: match i {
                0 if vlek => CertType::VLEK,
                0 => CertType::VCEK,
                1 => CertType::ASK,
                _ => CertType::ARK,
            },
            data: der.clone(),
        })
        .collect();
    Ok(serde_json::json!({
        "attestation_report": report,
        "cert_chain": if chain.is_empty() { None } else { Some(chain) },
    }))
}

/// The `sample` evidence for Trustee: the report data, and no signature of any kind.
pub fn sample_evidence(report_data: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "svn": "1",
        "report_data": STANDARD.encode(report_data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{MockLaunch, MockPlatform};

    #[test]
    fn snp_evidence_carries_the_report_fields_and_names_the_certificates() {
        let platform = MockPlatform::generate(std::time::SystemTime::now()).expect("platform");
        let launch = MockLaunch::new(b"exe", Default::default());
        let mut rd = [0u8; 64];
        rd[..3].copy_from_slice(b"abc");
        let evidence = platform.attest(&launch, rd);
        let json = snp_evidence(&evidence).expect("a mock report parses");
        let report = &json["attestation_report"];
        let bytes = |v: &serde_json::Value| -> Vec<u8> {
            v.as_array()
                .expect("an array")
                .iter()
                .map(|b| u8::try_from(b.as_u64().expect("a number")).expect("a byte"))
                .collect()
        };
        assert_eq!(bytes(&report["report_data"]), rd.to_vec());
        assert_eq!(
            bytes(&report["measurement"]),
            evidence.report[0x90..0xC0].to_vec()
        );
        let chain = json["cert_chain"].as_array().expect("a chain");
        assert_eq!(chain.len(), evidence.certificates.len());
        assert_eq!(chain[0]["cert_type"], "VCEK");
        assert_eq!(bytes(&chain[0]["data"]), evidence.certificates[0]);
        // The sev crate reads back what it wrote: the same report.
        let back: AttestationReport =
            serde_json::from_value(report.clone()).expect("sev reads its own serde");
        assert_eq!(back.report_data, rd);

        let mut short = evidence.clone();
        short.report.truncate(100);
        assert!(snp_evidence(&short).is_err());
    }

    #[test]
    fn sample_evidence_is_the_report_data_in_standard_base64() {
        assert_eq!(
            sample_evidence(&[0xfb, 0xff]),
            serde_json::json!({"svn": "1", "report_data": "+/8="})
        );
    }
}
