//! The appraisal policy: what evidence its owner accepts (TOML, see `docs/policy.md`).
//!
//! Parse, don't validate: the file deserialises into a private `PolicyFile` of strings
//! and becomes a [`Policy`] of typed values (measurements as `[u8; 48]`, firmware
//! versions, products) exactly once, in [`Policy::from_toml`]. Nothing is parsed again
//! when evidence is appraised ([`crate::appraisal`]), and callers change a policy only
//! through methods that take typed values (a mock root as a certificate, a CRL as a
//! parsed list), never by pushing strings that no check has seen.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::chain::Certificate;
use crate::evidence::TeeKind;
use crate::report::{FirmwareVersion, Product, SigningKey, Tcb};
use crate::revocation::Crl;

/// Why a policy file is not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not valid TOML, or an unknown or mistyped key. The TOML error is the message, not
    /// a source, so that a chain of causes prints it once.
    #[error("policy: {0}")]
    Toml(toml::de::Error),
    /// A value that parses but makes no sense.
    #[error("policy: {field}: {reason}")]
    Invalid {
        /// The key at fault.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl From<toml::de::Error> for PolicyError {
    fn from(e: toml::de::Error) -> Self {
        PolicyError::Toml(e)
    }
}

/// A minimum TCB; components left out are 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinimumTcb {
    /// Minimum FMC SVN (Turin).
    pub fmc: u8,
    /// Minimum bootloader SVN.
    pub bootloader: u8,
    /// Minimum TEE SVN.
    pub tee: u8,
    /// Minimum SNP firmware SVN.
    pub snp: u8,
    /// Minimum microcode patch level.
    pub microcode: u8,
}

impl MinimumTcb {
    pub(crate) fn as_tcb(&self) -> Tcb {
        Tcb {
            fmc: Some(self.fmc),
            bootloader: self.bootloader,
            tee: self.tee,
            snp: self.snp,
            microcode: self.microcode,
        }
    }
}

/// The policy file as its owner writes it. Defaults fail closed. Private: it only
/// exists between the TOML text and a [`Policy`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default = "default_tee")]
    tee: Vec<TeeKind>,
    #[serde(default)]
    mock_roots: Vec<String>,
    #[serde(default)]
    products: Option<Vec<Product>>,
    #[serde(default = "default_signing_keys")]
    signing_keys: Vec<SigningKey>,
    #[serde(default)]
    measurements: Vec<String>,
    #[serde(default)]
    any_measurement: bool,
    #[serde(default)]
    allow_debug: bool,
    #[serde(default)]
    allow_migration_agent: bool,
    #[serde(default = "yes")]
    allow_smt: bool,
    #[serde(default = "default_vmpl")]
    vmpl: Vec<u32>,
    #[serde(default = "default_versions")]
    report_versions: Vec<u32>,
    #[serde(default)]
    min_tcb: BTreeMap<String, MinimumTcb>,
    #[serde(default)]
    min_firmware: Option<String>,
    #[serde(default)]
    require_committed_tcb: bool,
    #[serde(default)]
    min_guest_svn: u32,
    #[serde(default)]
    allow_masked_chip_id: bool,
    #[serde(default)]
    chip_ids: Vec<String>,
    #[serde(default)]
    host_data: Vec<String>,
    #[serde(default)]
    family_ids: Vec<String>,
    #[serde(default)]
    image_ids: Vec<String>,
    #[serde(default)]
    id_key_digests: Vec<String>,
    #[serde(default)]
    author_key_digests: Vec<String>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    crls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pcrs: BTreeMap<String, String>,
}

fn default_tee() -> Vec<TeeKind> {
    vec![TeeKind::Snp]
}
fn default_signing_keys() -> Vec<SigningKey> {
    vec![SigningKey::Vcek, SigningKey::Vlek]
}
fn default_vmpl() -> Vec<u32> {
    vec![0]
}
fn default_versions() -> Vec<u32> {
    vec![2, 3, 5]
}
fn yes() -> bool {
    true
}

/// An appraisal policy: what evidence its owner accepts, as typed values. Defaults fail
/// closed: SNP only, no measurement accepted, no debug, no migration agent, VMPL 0.
///
/// The fields mirror the keys of the policy file (`docs/policy.md`); each is parsed once,
/// when the policy is made.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) tee: Vec<TeeKind>,
    pub(crate) mock_roots: Vec<[u8; 32]>,
    pub(crate) products: Option<Vec<Product>>,
    pub(crate) signing_keys: Vec<SigningKey>,
    pub(crate) measurements: Vec<[u8; 48]>,
    pub(crate) any_measurement: bool,
    pub(crate) allow_debug: bool,
    pub(crate) allow_migration_agent: bool,
    pub(crate) allow_smt: bool,
    pub(crate) vmpl: Vec<u32>,
    pub(crate) report_versions: Vec<u32>,
    /// Minimum TCBs by product; `None` is the key `all`.
    pub(crate) min_tcb: Vec<(Option<Product>, MinimumTcb)>,
    pub(crate) min_firmware: Option<FirmwareVersion>,
    pub(crate) require_committed_tcb: bool,
    pub(crate) min_guest_svn: u32,
    pub(crate) allow_masked_chip_id: bool,
    pub(crate) chip_ids: Vec<[u8; 64]>,
    pub(crate) host_data: Vec<[u8; 32]>,
    pub(crate) family_ids: Vec<[u8; 16]>,
    pub(crate) image_ids: Vec<[u8; 16]>,
    pub(crate) id_key_digests: Vec<[u8; 48]>,
    pub(crate) author_key_digests: Vec<[u8; 48]>,
    pub(crate) models: Vec<[u8; 32]>,
    /// The CRL files the policy names (relative to the policy file).
    pub(crate) crl_files: Vec<String>,
    /// The CRLs loaded for `crl_files` (or added by a caller without files).
    pub(crate) loaded_crls: Vec<Crl>,
    /// az-snp-vtpm: pinned SHA-256 PCR values, by index, lowest first.
    pub(crate) pcrs: Vec<(usize, [u8; 32])>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::from_file(toml::from_str("").expect("the empty policy parses"))
            .expect("the default policy is valid")
    }
}

fn parse_hex_list<const N: usize>(
    field: &'static str,
    list: &[String],
) -> Result<Vec<[u8; N]>, PolicyError> {
    list.iter()
        .map(|h| {
            let mut out = [0u8; N];
            hex::decode_to_slice(h.trim(), &mut out).map_err(|_| PolicyError::Invalid {
                field,
                reason: format!("\"{h}\" is not {N} bytes of hex"),
            })?;
            Ok(out)
        })
        .collect()
}

/// `pcrs = { 0 = "<64 hex>", 7 = "<64 hex>" }`: indices 0..=23 of the SHA-256 bank.
fn parse_pcrs(table: &BTreeMap<String, String>) -> Result<Vec<(usize, [u8; 32])>, PolicyError> {
    let mut out = table
        .iter()
        .map(|(key, value)| {
            let index = key
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|i| *i < crate::azure::tpm::PCR_COUNT)
                .ok_or_else(|| PolicyError::Invalid {
                    field: "pcrs",
                    reason: format!("\"{key}\" is not a PCR index 0..=23"),
                })?;
            let mut v = [0u8; 32];
            hex::decode_to_slice(value.trim(), &mut v).map_err(|_| PolicyError::Invalid {
                field: "pcrs",
                reason: format!("PCR {index}: \"{value}\" is not 32 bytes of hex (SHA-256 bank)"),
            })?;
            Ok((index, v))
        })
        .collect::<Result<Vec<_>, PolicyError>>()?;
    out.sort_by_key(|(i, _)| *i);
    if out.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(PolicyError::Invalid {
            field: "pcrs",
            reason: "a PCR index appears twice".into(),
        });
    }
    Ok(out)
}

fn hex_list<const N: usize>(list: &[[u8; N]]) -> Vec<String> {
    list.iter().map(hex::encode).collect()
}

pub(crate) fn parse_version(text: &str) -> Option<FirmwareVersion> {
    let mut parts = text.trim().split('.').map(|p| p.parse::<u8>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let build = parts.next().unwrap_or(Some(0))?;
    parts.next().is_none().then_some(FirmwareVersion {
        major,
        minor,
        build,
    })
}

impl Policy {
    /// Parses a policy. Unknown keys are errors (a typo must not weaken it), and so is
    /// every value that does not parse into its type.
    ///
    /// # Errors
    /// [`PolicyError`] naming the key at fault.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        Policy::from_file(toml::from_str(text)?)
    }

    fn from_file(f: PolicyFile) -> Result<Self, PolicyError> {
        let min_firmware = match &f.min_firmware {
            None => None,
            Some(v) => Some(parse_version(v).ok_or_else(|| PolicyError::Invalid {
                field: "min_firmware",
                reason: format!("\"{v}\" is not major.minor[.build]"),
            })?),
        };
        let min_tcb = f
            .min_tcb
            .iter()
            .map(|(key, tcb)| {
                if key == "all" {
                    return Ok((None, *tcb));
                }
                Product::from_name(key)
                    .map(|p| (Some(p), *tcb))
                    .ok_or_else(|| PolicyError::Invalid {
                        field: "min_tcb",
                        reason: format!("unknown product \"{key}\""),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if f.signing_keys
            .iter()
            .any(|k| !matches!(k, SigningKey::Vcek | SigningKey::Vlek))
        {
            return Err(PolicyError::Invalid {
                field: "signing_keys",
                reason: "only vcek and vlek".into(),
            });
        }
        Ok(Policy {
            measurements: parse_hex_list("measurements", &f.measurements)?,
            mock_roots: parse_hex_list("mock_roots", &f.mock_roots)?,
            chip_ids: parse_hex_list("chip_ids", &f.chip_ids)?,
            host_data: parse_hex_list("host_data", &f.host_data)?,
            family_ids: parse_hex_list("family_ids", &f.family_ids)?,
            image_ids: parse_hex_list("image_ids", &f.image_ids)?,
            id_key_digests: parse_hex_list("id_key_digests", &f.id_key_digests)?,
            author_key_digests: parse_hex_list("author_key_digests", &f.author_key_digests)?,
            models: parse_hex_list("models", &f.models)?,
            min_firmware,
            min_tcb,
            tee: f.tee,
            products: f.products,
            signing_keys: f.signing_keys,
            any_measurement: f.any_measurement,
            allow_debug: f.allow_debug,
            allow_migration_agent: f.allow_migration_agent,
            allow_smt: f.allow_smt,
            vmpl: f.vmpl,
            report_versions: f.report_versions,
            require_committed_tcb: f.require_committed_tcb,
            min_guest_svn: f.min_guest_svn,
            allow_masked_chip_id: f.allow_masked_chip_id,
            crl_files: f.crls,
            loaded_crls: Vec::new(),
            pcrs: parse_pcrs(&f.pcrs)?,
        })
    }

    fn to_file(&self) -> PolicyFile {
        PolicyFile {
            tee: self.tee.clone(),
            mock_roots: hex_list(&self.mock_roots),
            products: self.products.clone(),
            signing_keys: self.signing_keys.clone(),
            measurements: hex_list(&self.measurements),
            any_measurement: self.any_measurement,
            allow_debug: self.allow_debug,
            allow_migration_agent: self.allow_migration_agent,
            allow_smt: self.allow_smt,
            vmpl: self.vmpl.clone(),
            report_versions: self.report_versions.clone(),
            min_tcb: self
                .min_tcb
                .iter()
                .map(|(p, m)| (p.map_or("all", |p| p.name()).to_lowercase(), *m))
                .collect(),
            min_firmware: self.min_firmware.map(|v| v.to_string()),
            require_committed_tcb: self.require_committed_tcb,
            min_guest_svn: self.min_guest_svn,
            allow_masked_chip_id: self.allow_masked_chip_id,
            chip_ids: hex_list(&self.chip_ids),
            host_data: hex_list(&self.host_data),
            family_ids: hex_list(&self.family_ids),
            image_ids: hex_list(&self.image_ids),
            id_key_digests: hex_list(&self.id_key_digests),
            author_key_digests: hex_list(&self.author_key_digests),
            models: hex_list(&self.models),
            crls: self.crl_files.clone(),
            pcrs: self
                .pcrs
                .iter()
                .map(|(i, v)| (i.to_string(), hex::encode(v)))
                .collect(),
        }
    }

    /// Encodes the policy as TOML (it parses back into the same policy).
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.to_file()).expect("a policy serializes")
    }

    /// A policy that accepts any genuine SNP evidence with default security settings
    /// (no debug, no migration agent, VMPL 0) and any measurement: for `veil report verify`
    /// without a policy file.
    pub fn genuine_snp() -> Self {
        Policy {
            any_measurement: true,
            ..Policy::default()
        }
    }

    /// A policy for mock evidence from the platform with this root certificate, accepting
    /// these measurements.
    pub fn mock(root: &Certificate, measurements: &[[u8; 48]]) -> Self {
        let mut policy = Policy {
            tee: Vec::new(),
            measurements: measurements.to_vec(),
            ..Policy::default()
        };
        policy.trust_mock_root(root);
        policy
    }

    /// A policy for real SEV-SNP launches with these measurements: AMD roots only, no mock
    /// root, and the defaults that fail closed (no debug, no migration agent, VMPL 0).
    pub fn snp(measurements: &[[u8; 48]]) -> Self {
        Policy {
            measurements: measurements.to_vec(),
            ..Policy::default()
        }
    }

    /// Accepts only these products (`None`: all).
    pub fn set_products(&mut self, products: Option<Vec<Product>>) {
        self.products = products;
    }

    /// Accepts only these HOST_DATA values (empty: any).
    pub fn set_host_data(&mut self, host_data: &[[u8; 32]]) {
        self.host_data = host_data.to_vec();
    }

    /// Sets the minimum TCB for `product` (`None`: every product without its own).
    pub fn set_min_tcb(&mut self, product: Option<Product>, minimum: MinimumTcb) {
        self.min_tcb.retain(|(p, _)| *p != product);
        self.min_tcb.push((product, minimum));
    }

    /// The products accepted, if the policy names them (else any AMD product).
    pub fn products(&self) -> Option<&[Product]> {
        self.products.as_deref()
    }

    /// Accepts these TEE kinds (for example `az-snp-vtpm` besides `snp`).
    pub fn set_tee(&mut self, tee: &[TeeKind]) {
        self.tee = tee.to_vec();
    }

    /// The accepted TEE kinds.
    pub fn tee(&self) -> &[TeeKind] {
        &self.tee
    }

    /// az-snp-vtpm: requires these SHA-256 PCR values, `(index, value)`, index 0..=23.
    ///
    /// # Errors
    /// [`PolicyError::Invalid`] for an index beyond 23 or one given twice.
    pub fn set_pcrs(&mut self, pcrs: &[(usize, [u8; 32])]) -> Result<(), PolicyError> {
        let table = pcrs
            .iter()
            .map(|(i, v)| (i.to_string(), hex::encode(v)))
            .collect::<BTreeMap<_, _>>();
        if table.len() != pcrs.len() {
            return Err(PolicyError::Invalid {
                field: "pcrs",
                reason: "a PCR index appears twice".into(),
            });
        }
        self.pcrs = parse_pcrs(&table)?;
        Ok(())
    }

    /// az-snp-vtpm: the pinned SHA-256 PCR values, lowest index first (empty: any).
    pub fn pcrs(&self) -> &[(usize, [u8; 32])] {
        &self.pcrs
    }

    /// The accepted measurements.
    pub fn measurements(&self) -> &[[u8; 48]] {
        &self.measurements
    }

    /// The accepted HOST_DATA values (empty: any).
    pub fn host_data(&self) -> &[[u8; 32]] {
        &self.host_data
    }

    /// The accepted models (empty: any).
    pub fn models(&self) -> &[[u8; 32]] {
        &self.models
    }

    /// Trusts mock evidence whose chain ends in `root` (and accepts the mock TEE kind).
    pub fn trust_mock_root(&mut self, root: &Certificate) {
        let fingerprint = root.fingerprint_bytes();
        if !self.mock_roots.contains(&fingerprint) {
            self.mock_roots.push(fingerprint);
        }
        if !self.tee.contains(&TeeKind::Mock) {
            self.tee.push(TeeKind::Mock);
        }
    }

    /// Accepts only evidence that binds one of these models (the plaintext SHA-256 of the
    /// sealed model, covered by REPORT_DATA).
    pub fn set_models(&mut self, models: &[[u8; 32]]) {
        self.models = models.to_vec();
    }

    /// The CRL files the policy names, relative to the policy file: whoever loads the
    /// file reads them and adds each with [`Policy::add_crl`]; appraisal fails closed
    /// while fewer are loaded.
    pub fn crl_files(&self) -> &[String] {
        &self.crl_files
    }

    /// Requires revocation checking against `crl`, read from the file `name` (or given
    /// without a file: then `name` only labels it). A CRL the file names is added with
    /// [`Policy::add_crl`] instead.
    pub fn require_crl(&mut self, name: &str, crl: Crl) {
        self.crl_files.push(name.to_owned());
        self.loaded_crls.push(crl);
    }

    /// Adds a revocation list that `crls` names, read by whoever loads the policy file.
    pub fn add_crl(&mut self, crl: Crl) {
        self.loaded_crls.push(crl);
    }

    /// The revocation lists loaded so far.
    pub fn loaded_crls(&self) -> &[Crl] {
        &self.loaded_crls
    }

    /// The minimum TCB for `product`: its own entry, else `all`, else none.
    pub(crate) fn minimum_tcb(&self, product: Product) -> MinimumTcb {
        self.min_tcb
            .iter()
            .find(|(p, _)| *p == Some(product))
            .or_else(|| self.min_tcb.iter().find(|(p, _)| p.is_none()))
            .map(|(_, m)| *m)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_fails_closed() {
        let p = Policy::default();
        assert_eq!(p.tee, vec![TeeKind::Snp]);
        assert!(!p.allow_debug && !p.allow_migration_agent && !p.any_measurement);
        assert_eq!(p.vmpl, vec![0]);
        assert!(p.measurements.is_empty());
    }

    #[test]
    fn rejects_unknown_keys() {
        let err = Policy::from_toml("allow_debugging = true").expect_err("typo must not parse");
        assert!(err.to_string().contains("allow_debugging"), "{err}");
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "measurements = [\"abcd\"]",
            "min_firmware = \"one\"",
            "[min_tcb.rome]\nsnp = 1",
            "tee = [\"sgx\"]",
            "vmpl = -1",
        ] {
            assert!(Policy::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_a_full_policy() {
        let p = Policy::from_toml(
            r#"
            tee = ["snp", "mock"]
            measurements = ["7f758c86166e386367f6e0804dd9d024023d732a03ac03678365c4fe6a2b0dcbbc6ff0eb020f0c7ea790e75759e09200"]
            allow_debug = false
            vmpl = [0, 1]
            min_firmware = "1.55"
            [min_tcb.all]
            snp = 20
            [min_tcb.turin]
            fmc = 1
            "#,
        )
        .expect("valid policy");
        assert_eq!(p.minimum_tcb(Product::Milan).snp, 20);
        assert_eq!(p.minimum_tcb(Product::Turin).fmc, 1);
        let again = Policy::from_toml(&p.to_toml()).expect("round trip");
        assert_eq!(again.measurements, p.measurements);
        assert_eq!(again.min_tcb, p.min_tcb);
        assert_eq!(again.min_firmware, p.min_firmware);
    }

    #[test]
    fn parses_pinned_pcrs_and_az_snp_vtpm() {
        let zero = "00".repeat(32);
        let p = Policy::from_toml(&format!(
            "tee = [\"az-snp-vtpm\"]\npcrs = {{ 7 = \"{}\", 0 = \"{zero}\" }}",
            "ab".repeat(32)
        ))
        .expect("valid policy");
        assert_eq!(p.tee, vec![TeeKind::AzSnpVtpm]);
        assert_eq!(p.pcrs, vec![(0, [0; 32]), (7, [0xab; 32])]);
        let again = Policy::from_toml(&p.to_toml()).expect("round trip");
        assert_eq!(again.pcrs, p.pcrs);
        assert_eq!(again.tee, p.tee);
        for bad in [
            format!("pcrs = {{ 24 = \"{zero}\" }}"),
            format!("pcrs = {{ x = \"{zero}\" }}"),
            "pcrs = { 0 = \"abcd\" }".to_owned(),
        ] {
            let err = Policy::from_toml(&bad).expect_err(&bad);
            assert!(err.to_string().contains("pcrs"), "{err}");
        }
        let mut p = Policy::default();
        assert!(p.set_pcrs(&[(1, [0; 32]), (1, [1; 32])]).is_err());
        assert!(p.set_pcrs(&[(24, [0; 32])]).is_err());
        p.set_pcrs(&[(9, [2; 32]), (3, [1; 32])]).expect("valid");
        assert_eq!(p.pcrs(), &[(3, [1; 32]), (9, [2; 32])]);
    }

    #[test]
    fn parses_firmware_versions() {
        assert_eq!(
            parse_version("1.55.29"),
            Some(FirmwareVersion {
                major: 1,
                minor: 55,
                build: 29
            })
        );
        assert_eq!(
            parse_version("1.55"),
            Some(FirmwareVersion {
                major: 1,
                minor: 55,
                build: 0
            })
        );
        assert_eq!(parse_version("1.55.2.3"), None);
        assert_eq!(parse_version("x"), None);
    }
}
