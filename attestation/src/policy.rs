//! Appraisal policy (TOML, see `docs/policy.md`) and appraisal itself.
//!
//! [`Policy::appraise`] runs every check, records each outcome, and returns either an
//! [`Appraisal`] (which nothing outside this module can construct) or a [`Rejection`]
//! that lists every failed check by name.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::chain::{verify_chain, AnchorKind, Certificate};
use crate::check::{Check, Outcome, Outcomes, Status};
use crate::evidence::{Evidence, TeeKind};
use crate::report::{guest_policy, FirmwareVersion, Product, Report, SigningKey, Tcb};
use crate::revocation::{check_revocation, Crl};

/// Why a policy file is not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not valid TOML, or an unknown or mistyped key.
    #[error("policy: {0}")]
    Toml(#[from] toml::de::Error),
    /// A value that parses but makes no sense.
    #[error("policy: {field}: {reason}")]
    Invalid {
        /// The key at fault.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
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
    fn as_tcb(&self) -> Tcb {
        Tcb {
            fmc: Some(self.fmc),
            bootloader: self.bootloader,
            tee: self.tee,
            snp: self.snp,
            microcode: self.microcode,
        }
    }
}

/// An appraisal policy: what evidence its owner accepts. Defaults fail closed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Accepted TEE kinds (`"snp"`, `"mock"`). Default: `["snp"]`.
    #[serde(default = "default_tee")]
    pub tee: Vec<TeeKind>,
    /// Mock roots trusted, as SHA-256 (hex) of the root certificate DER. Default: none.
    #[serde(default)]
    pub mock_roots: Vec<String>,
    /// Accepted AMD products. Default: all (Milan, Genoa, Turin; Mock for the mock TEE).
    #[serde(default)]
    pub products: Option<Vec<Product>>,
    /// Accepted signing keys (`"vcek"`, `"vlek"`). Default: both.
    #[serde(default = "default_signing_keys")]
    pub signing_keys: Vec<SigningKey>,
    /// Accepted launch measurements (48-byte hex). Required unless `any_measurement`.
    #[serde(default)]
    pub measurements: Vec<String>,
    /// Accept any launch measurement: only for checking that evidence is genuine.
    #[serde(default)]
    pub any_measurement: bool,
    /// Accept guests launched with debugging allowed. Default false.
    #[serde(default)]
    pub allow_debug: bool,
    /// Accept guests that may be associated with a migration agent. Default false.
    #[serde(default)]
    pub allow_migration_agent: bool,
    /// Accept guests whose policy allows host SMT. Default true.
    #[serde(default = "yes")]
    pub allow_smt: bool,
    /// Accepted VMPLs. Default `[0]`.
    #[serde(default = "default_vmpl")]
    pub vmpl: Vec<u32>,
    /// Accepted report versions. Default `[2, 3, 5]`.
    #[serde(default = "default_versions")]
    pub report_versions: Vec<u32>,
    /// Minimum reported TCB: key `all` for every product, or a product name.
    #[serde(default)]
    pub min_tcb: BTreeMap<String, MinimumTcb>,
    /// Minimum current firmware version, `"major.minor"` or `"major.minor.build"`.
    #[serde(default)]
    pub min_firmware: Option<String>,
    /// Require COMMITTED_TCB == CURRENT_TCB (no provisional firmware). Default false.
    #[serde(default)]
    pub require_committed_tcb: bool,
    /// Minimum GUEST_SVN. Default 0.
    #[serde(default)]
    pub min_guest_svn: u32,
    /// Accept reports whose CHIP_ID is masked (all zeros). Default false.
    #[serde(default)]
    pub allow_masked_chip_id: bool,
    /// Allowed CHIP_IDs (64-byte hex). Empty: any.
    #[serde(default)]
    pub chip_ids: Vec<String>,
    /// Allowed HOST_DATA values (32-byte hex). Empty: any.
    #[serde(default)]
    pub host_data: Vec<String>,
    /// Allowed FAMILY_IDs (16-byte hex). Empty: any.
    #[serde(default)]
    pub family_ids: Vec<String>,
    /// Allowed IMAGE_IDs (16-byte hex). Empty: any.
    #[serde(default)]
    pub image_ids: Vec<String>,
    /// Allowed ID_KEY_DIGESTs (48-byte hex). Empty: any.
    #[serde(default)]
    pub id_key_digests: Vec<String>,
    /// Allowed AUTHOR_KEY_DIGESTs (48-byte hex). Empty: any.
    #[serde(default)]
    pub author_key_digests: Vec<String>,
    /// Allowed models: SHA-256 (hex) of the plaintext model that the evidence binds (the
    /// `model_sha256` of the binding, covered by REPORT_DATA). Empty: any.
    #[serde(default)]
    pub models: Vec<String>,
    /// Certificate revocation lists (DER or PEM files, relative to the policy file): one
    /// per accepted product, from its ARK (AMD's KDS serves them), and optionally from an
    /// intermediate. Empty: no revocation check. Whoever loads the policy file loads them
    /// ([`Policy::add_crl`]); appraisal fails closed if fewer were loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crls: Vec<String>,
    /// The CRLs loaded for `crls` (or added by a caller without files).
    #[serde(skip)]
    loaded_crls: Vec<Crl>,
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

/// What the verifier expects beyond the policy: the report data it computed itself, and
/// the time at which certificates must be valid.
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    report_data: Option<[u8; 64]>,
    now: SystemTime,
}

impl Expected {
    /// Expect exactly these 64 bytes of report data, with certificates valid at `now`.
    pub fn new(report_data: [u8; 64], now: SystemTime) -> Self {
        Expected {
            report_data: Some(report_data),
            now,
        }
    }

    /// Check no report data: only for offline inspection of a report, never for releasing
    /// a key or sending a prompt (the evidence may be replayed or relayed).
    pub fn danger_any_report_data(now: SystemTime) -> Self {
        Expected {
            report_data: None,
            now,
        }
    }
}

/// The claims of evidence that passed appraisal. Only [`Policy::appraise`] makes one.
#[derive(Debug, Clone)]
pub struct Appraisal {
    outcomes: Vec<Outcome>,
    tee: TeeKind,
    product: Product,
    signing_key: SigningKey,
    report: Report,
    vek: Certificate,
}

impl Appraisal {
    /// Every check and its outcome.
    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
    }
    /// The TEE kind (MOCK evidence says so everywhere it is printed).
    pub fn tee(&self) -> TeeKind {
        self.tee
    }
    /// Whether this is mock evidence.
    pub fn is_mock(&self) -> bool {
        self.tee == TeeKind::Mock
    }
    /// The product whose root signed the chain.
    pub fn product(&self) -> Product {
        self.product
    }
    /// VCEK or VLEK.
    pub fn signing_key(&self) -> SigningKey {
        self.signing_key
    }
    /// The verified report.
    pub fn report(&self) -> &Report {
        &self.report
    }
    /// The VCEK/VLEK that signed it.
    pub fn vek(&self) -> &Certificate {
        &self.vek
    }
    /// The launch measurement.
    pub fn measurement(&self) -> [u8; 48] {
        self.report.measurement()
    }
    /// The report data (the binding).
    pub fn report_data(&self) -> [u8; 64] {
        self.report.report_data()
    }
}

/// Evidence that failed appraisal: every check, with the failed ones named.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Rejection {
    /// Every check that ran, in order, failed or not.
    pub outcomes: Vec<Outcome>,
}

impl Rejection {
    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| o.failed())
    }

    /// Whether the named check failed.
    pub fn failed(&self, check: Check) -> bool {
        self.failures().any(|o| o.check == check)
    }

    pub(crate) fn single(check: Check, detail: String) -> Self {
        Rejection {
            outcomes: vec![Outcome {
                check,
                status: Status::Failed,
                detail,
            }],
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("evidence rejected: ")?;
        let failed: Vec<String> = self
            .failures()
            .map(|o| format!("{}: {}", o.check, o.detail))
            .collect();
        f.write_str(&failed.join("; "))
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::from_toml("any_measurement = false").expect("the empty policy parses")
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
                reason: format!("{h:?} is not {N} bytes of hex"),
            })?;
            Ok(out)
        })
        .collect()
}

fn parse_version(text: &str) -> Option<FirmwareVersion> {
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
    /// Parses and checks a policy. Unknown keys are errors (a typo must not weaken it).
    ///
    /// # Errors
    /// [`PolicyError`] naming the key at fault.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let policy: Policy = toml::from_str(text)?;
        policy.validate()?;
        Ok(policy)
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

    /// A policy for mock evidence from the platform whose root has this fingerprint,
    /// accepting these measurements.
    pub fn mock(root_fingerprint: &str, measurements: &[[u8; 48]]) -> Self {
        Policy {
            tee: vec![TeeKind::Mock],
            mock_roots: vec![root_fingerprint.to_owned()],
            measurements: measurements.iter().map(hex::encode).collect(),
            ..Policy::default()
        }
    }

    /// Adds a revocation list: one that `crls` names, read by whoever loads the policy
    /// file, or one a caller holds without a file.
    pub fn add_crl(&mut self, crl: Crl) {
        self.loaded_crls.push(crl);
    }

    /// The revocation lists loaded so far.
    pub fn loaded_crls(&self) -> &[Crl] {
        &self.loaded_crls
    }

    /// Encodes the policy as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a policy serializes")
    }

    fn validate(&self) -> Result<(), PolicyError> {
        parse_hex_list::<48>("measurements", &self.measurements)?;
        parse_hex_list::<32>("mock_roots", &self.mock_roots)?;
        parse_hex_list::<64>("chip_ids", &self.chip_ids)?;
        parse_hex_list::<32>("host_data", &self.host_data)?;
        parse_hex_list::<16>("family_ids", &self.family_ids)?;
        parse_hex_list::<16>("image_ids", &self.image_ids)?;
        parse_hex_list::<48>("id_key_digests", &self.id_key_digests)?;
        parse_hex_list::<48>("author_key_digests", &self.author_key_digests)?;
        parse_hex_list::<32>("models", &self.models)?;
        if let Some(v) = &self.min_firmware {
            if parse_version(v).is_none() {
                return Err(PolicyError::Invalid {
                    field: "min_firmware",
                    reason: format!("{v:?} is not major.minor[.build]"),
                });
            }
        }
        for key in self.min_tcb.keys() {
            if key != "all" && Product::from_name(key).is_none() {
                return Err(PolicyError::Invalid {
                    field: "min_tcb",
                    reason: format!("unknown product {key:?}"),
                });
            }
        }
        if self
            .signing_keys
            .iter()
            .any(|k| !matches!(k, SigningKey::Vcek | SigningKey::Vlek))
        {
            return Err(PolicyError::Invalid {
                field: "signing_keys",
                reason: "only vcek and vlek".into(),
            });
        }
        Ok(())
    }

    /// Appraises `evidence` against this policy and what the verifier expects.
    ///
    /// Every check runs (where an earlier failure leaves something to check), so a
    /// rejection names all that is wrong, not just the first.
    ///
    /// # Errors
    /// A [`Rejection`] listing every check and naming those that failed.
    pub fn appraise(
        &self,
        evidence: &Evidence,
        expected: &Expected,
    ) -> Result<Appraisal, Rejection> {
        let decoded = evidence
            .decode()
            .map_err(|e| Rejection::single(Check::EvidenceFormat, e.to_string()))?;
        let report = decoded.report;
        let mut out = Outcomes::default();
        out.pass(
            Check::EvidenceFormat,
            format!(
                "SNP report v{}, {} certificates",
                report.version(),
                1 + decoded.others.len()
            ),
        );

        // Which TEE, which anchors.
        let tee = evidence.tee;
        out.record(
            Check::TeeKind,
            self.tee.contains(&tee),
            format!("{tee} (accepted: {})", list(&self.tee)),
        );
        let anchor = match tee {
            TeeKind::Snp => AnchorKind::Amd,
            TeeKind::Mock => AnchorKind::Mock,
        };
        let mock_roots: Vec<Certificate> = if tee == TeeKind::Mock {
            decoded
                .others
                .iter()
                .filter(|c| {
                    self.mock_roots
                        .iter()
                        .any(|f| f.eq_ignore_ascii_case(&c.fingerprint()))
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };

        out.record(
            Check::ReportVersion,
            self.report_versions.contains(&report.version()),
            format!(
                "version {} (accepted: {})",
                report.version(),
                list(&self.report_versions)
            ),
        );
        out.record(
            Check::SignatureAlgorithm,
            report.signature_algo() == 1,
            format!("{} (1 = ECDSA P-384 with SHA-384)", report.signature_algo()),
        );

        let verified = verify_chain(
            &decoded.vek,
            &decoded.others,
            anchor,
            &mock_roots,
            expected.now,
            &mut out,
        );

        if let Some(v) = &verified {
            check_revocation(
                &self.loaded_crls,
                self.crls.len(),
                [&v.root, &v.intermediate, &v.vek],
                expected.now,
                &mut out,
            );
        }

        let signing_key = report.signing_key();
        let key_ok = self.signing_keys.contains(&signing_key)
            && verified.as_ref().is_none_or(|v| v.kind == signing_key);
        out.record(
            Check::SigningKey,
            key_ok,
            match &verified {
                Some(v) if v.kind != signing_key => {
                    format!("report says {signing_key}, certificate is a {}", v.kind)
                }
                _ => format!("{signing_key} (accepted: {})", list(&self.signing_keys)),
            },
        );

        let product = verified.as_ref().map(|v| v.product);
        if let Some(product) = product {
            let accepted = self.products.as_ref().is_none_or(|p| p.contains(&product));
            let cpuid = report.cpuid_product();
            let consistent = match (product, report.cpuid()) {
                (Product::Mock, _) | (_, None) => true,
                (p, Some(_)) => cpuid == Some(p),
            };
            let detail = match report.cpuid() {
                Some((f, m, _)) if product != Product::Mock => {
                    format!("{product} (CPUID family {f:#04x} model {m:#04x})")
                }
                _ => format!("{product}"),
            };
            out.record(
                Check::Product,
                accepted && consistent,
                if consistent {
                    detail
                } else {
                    format!("{detail}: CPUID names {cpuid:?}")
                },
            );

            let v = verified.as_ref().expect("product implies a verified chain");
            let sig_ok = check_report_signature(&report, &v.vek);
            out.record(
                Check::ReportSignature,
                sig_ok.is_ok(),
                sig_ok
                    .err()
                    .unwrap_or_else(|| format!("signed by the {}", v.kind)),
            );

            // REPORTED_TCB must be what the VEK certifies.
            let reported = Tcb::from_raw(report.reported_tcb_raw(), product);
            match v.vek.tcb(product) {
                Some(cert_tcb) => out.record(
                    Check::ReportedTcbMatchesVek,
                    cert_tcb == reported,
                    if cert_tcb == reported {
                        format!("{reported}")
                    } else {
                        format!("report {reported}, certificate {cert_tcb}")
                    },
                ),
                None => out.record(
                    Check::ReportedTcbMatchesVek,
                    false,
                    "the VEK lacks TCB extensions",
                ),
            };

            // CHIP_ID must be the VCEK's hwID.
            let chip_id = report.chip_id();
            let masked = chip_id == [0u8; 64];
            match (v.kind, v.vek.hardware_id()) {
                (SigningKey::Vlek, _) => out.skip(Check::ChipIdMatchesVek, "VLEK: no hardware id"),
                (_, _) if masked => {
                    out.record(
                        Check::ChipIdMatchesVek,
                        self.allow_masked_chip_id,
                        "CHIP_ID is masked",
                    );
                }
                (_, Some(hwid)) => {
                    let ok = !hwid.is_empty()
                        && chip_id.starts_with(hwid)
                        && chip_id[hwid.len()..].iter().all(|&b| b == 0);
                    out.record(
                        Check::ChipIdMatchesVek,
                        ok,
                        format!("{}…", hex::encode(&chip_id[..8])),
                    );
                }
                (_, None) => {
                    out.record(
                        Check::ChipIdMatchesVek,
                        false,
                        "the VCEK has no hwID extension",
                    );
                }
            }

            // Policy minimum TCB.
            let minimum = self
                .min_tcb
                .iter()
                .find(|(k, _)| Product::from_name(k) == Some(product))
                .or_else(|| self.min_tcb.iter().find(|(k, _)| k.as_str() == "all"))
                .map(|(_, m)| *m)
                .unwrap_or_default();
            let below = reported.components_below(&minimum.as_tcb());
            // LAUNCH_TCB too: a guest launched on firmware below the minimum ran (and may
            // have been attacked) there before the platform was updated.
            let launch = Tcb::from_raw(report.launch_tcb_raw(), product);
            let launch_below = launch.components_below(&minimum.as_tcb());
            let mut problems = Vec::new();
            if !below.is_empty() {
                problems.push(format!(
                    "{reported}: below the minimum in {}",
                    below.join(", ")
                ));
            }
            if !launch_below.is_empty() {
                problems.push(format!(
                    "LAUNCH_TCB {launch}: the guest was launched below the minimum in {}",
                    launch_below.join(", ")
                ));
            }
            out.record(
                Check::MinimumTcb,
                problems.is_empty(),
                if problems.is_empty() {
                    format!("{reported}")
                } else {
                    problems.join("; ")
                },
            );
            if self.require_committed_tcb {
                out.record(
                    Check::MinimumTcb,
                    report.committed_tcb_raw() == report.current_tcb_raw(),
                    "committed TCB equals current TCB",
                );
            }
        } else {
            for check in [
                Check::Product,
                Check::ReportSignature,
                Check::ReportedTcbMatchesVek,
                Check::ChipIdMatchesVek,
                Check::MinimumTcb,
            ] {
                out.skip(check, "no verified certificate chain");
            }
            // Without a chain nothing about the report can be trusted: make sure of it.
            if !out.any_failed() {
                out.fail(Check::CertificateChain, "no verified certificate chain");
            }
        }

        let reserved = report.nonzero_reserved();
        out.record(
            Check::ReservedZero,
            reserved.is_empty(),
            if reserved.is_empty() {
                "all reserved fields are zero".to_owned()
            } else {
                format!("non-zero reserved bytes at {reserved:#x?}")
            },
        );

        self.check_measurement(&report, &mut out);
        self.check_guest_policy(&report, &mut out);
        out.record(
            Check::Vmpl,
            self.vmpl.contains(&report.vmpl()),
            format!("{} (accepted: {})", report.vmpl(), list(&self.vmpl)),
        );
        self.check_firmware(&report, &mut out);
        out.record(
            Check::GuestSvn,
            report.guest_svn() >= self.min_guest_svn,
            format!("{} (minimum {})", report.guest_svn(), self.min_guest_svn),
        );
        let pi = report.platform_info();
        // Bits 0..=7 are defined up to ABI 1.58 (bit 6 is set on Turin); the rest must be zero.
        out.record(Check::PlatformInfo, pi & !0xFF == 0, format!("{pi:#x}"));

        allowlist::<64>(&mut out, Check::ChipId, &self.chip_ids, &report.chip_id());
        allowlist::<32>(
            &mut out,
            Check::HostData,
            &self.host_data,
            &report.host_data(),
        );
        allowlist::<16>(
            &mut out,
            Check::FamilyId,
            &self.family_ids,
            &report.family_id(),
        );
        allowlist::<16>(
            &mut out,
            Check::ImageId,
            &self.image_ids,
            &report.image_id(),
        );
        allowlist::<48>(
            &mut out,
            Check::IdKey,
            &self.id_key_digests,
            &report.id_key_digest(),
        );
        allowlist::<48>(
            &mut out,
            Check::AuthorKey,
            &self.author_key_digests,
            &report.author_key_digest(),
        );

        match &evidence.binding {
            Some(b) => allowlist::<32>(&mut out, Check::Model, &self.models, &b.model_sha256),
            None if self.models.is_empty() => out.skip(Check::Model, "any (no binding)"),
            None => {
                out.record(Check::Model, false, "the evidence binds no model");
            }
        }

        match expected.report_data {
            Some(want) => {
                let ok = bool::from(want.ct_eq(&report.report_data()));
                out.record(
                    Check::ReportData,
                    ok,
                    if ok {
                        "binds this verifier's nonce and channel".to_owned()
                    } else {
                        "does not bind this verifier's nonce, TLS key and channel".to_owned()
                    },
                );
            }
            None => out.skip(Check::ReportData, "not checked (offline)"),
        }

        match verified {
            Some(v) if !out.any_failed() => Ok(Appraisal {
                outcomes: out.0,
                tee,
                product: v.product,
                signing_key: v.kind,
                report,
                vek: v.vek,
            }),
            _ => Err(Rejection { outcomes: out.0 }),
        }
    }

    fn check_measurement(&self, report: &Report, out: &mut Outcomes) {
        let m = report.measurement();
        if self.any_measurement {
            out.skip(
                Check::Measurement,
                format!("{} (policy accepts any)", hex::encode(m)),
            );
            return;
        }
        let allowed = parse_hex_list::<48>("measurements", &self.measurements).unwrap_or_default();
        let ok = allowed.contains(&m);
        let detail = if allowed.is_empty() {
            format!("{}: the policy accepts no measurement", hex::encode(m))
        } else if ok {
            hex::encode(m)
        } else {
            format!("{} is not in the policy", hex::encode(m))
        };
        out.record(Check::Measurement, ok, detail);
    }

    fn check_guest_policy(&self, report: &Report, out: &mut Outcomes) {
        let p = report.policy();
        let debug = p & guest_policy::DEBUG != 0;
        out.record(
            Check::Debug,
            !debug || self.allow_debug,
            if debug {
                "guest policy allows debugging".to_owned()
            } else {
                "debugging not allowed".to_owned()
            },
        );
        let ma = p & guest_policy::MIGRATE_MA != 0;
        out.record(
            Check::MigrationAgent,
            !ma || self.allow_migration_agent,
            if ma {
                "guest policy allows a migration agent"
            } else {
                "no migration agent"
            },
        );
        let smt = p & guest_policy::SMT != 0;
        out.record(
            Check::Smt,
            !smt || self.allow_smt,
            if smt {
                "host SMT allowed"
            } else {
                "host SMT not allowed"
            },
        );
        let bits_ok = p & guest_policy::RESERVED_ONE != 0 && p & !guest_policy::KNOWN == 0;
        out.record(Check::GuestPolicyBits, bits_ok, format!("{p:#x}"));
    }

    fn check_firmware(&self, report: &Report, out: &mut Outcomes) {
        let current = report.current_version();
        let p = report.policy();
        let (abi_major, abi_minor) = (((p >> 8) & 0xFF) as u8, (p & 0xFF) as u8);
        let abi_ok = (abi_major, abi_minor) <= (current.major, current.minor);
        let minimum = self.min_firmware.as_deref().and_then(parse_version);
        let min_ok = minimum.is_none_or(|m| current >= m);
        let mut detail = format!("firmware {current}, guest ABI {abi_major}.{abi_minor}");
        if let Some(m) = minimum {
            detail.push_str(&format!(" (minimum {m})"));
        }
        if !abi_ok {
            detail.push_str(": guest ABI above the firmware's");
        }
        out.record(Check::Firmware, abi_ok && min_ok, detail);
    }
}

fn allowlist<const N: usize>(
    out: &mut Outcomes,
    check: Check,
    allowed: &[String],
    found: &[u8; N],
) {
    if allowed.is_empty() {
        out.skip(check, "any (not constrained by the policy)");
        return;
    }
    let list = parse_hex_list::<N>(check.name(), allowed).unwrap_or_default();
    let ok = list.contains(found);
    out.record(
        check,
        ok,
        if ok {
            hex::encode(found)
        } else {
            format!("{} is not allowed", hex::encode(found))
        },
    );
}

/// Checks the VEK's ECDSA P-384 signature over the raw bytes `0x000..0x2A0`.
fn check_report_signature(report: &Report, vek: &Certificate) -> Result<(), String> {
    let (r, s) = report.signature_rs();
    // R and S are 72-byte little-endian integers; only the low 48 bytes may be set.
    if r[48..].iter().chain(&s[48..]).any(|&b| b != 0) {
        return Err("signature R or S exceeds 48 bytes".to_owned());
    }
    let mut fixed = [0u8; 96];
    for i in 0..48 {
        fixed[i] = r[47 - i];
        fixed[48 + i] = s[47 - i];
    }
    if vek.verify_p384(report.signed_bytes(), &fixed, false) {
        Ok(())
    } else {
        Err("the VEK did not sign these report bytes".to_owned())
    }
}

fn list<T: fmt::Debug>(items: &[T]) -> String {
    let v: Vec<String> = items
        .iter()
        .map(|i| format!("{i:?}").to_lowercase())
        .collect();
    v.join(", ")
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
        assert_eq!(p.min_tcb["all"].snp, 20);
        assert_eq!(p.min_tcb["turin"].fmc, 1);
        let again = Policy::from_toml(&p.to_toml()).expect("round trip");
        assert_eq!(again.measurements, p.measurements);
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
