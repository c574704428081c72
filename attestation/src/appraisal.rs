//! Appraisal: evidence against a [`Policy`] and what the verifier expects.
//!
//! [`Policy::appraise`] runs every check in four named steps (the certificate chain, the
//! platform, the launch, the binding), records each outcome, and returns a proof type or
//! a [`Rejection`] that lists every failed check by name. There are two proof types:
//! - [`Appraisal`]: the evidence binds the verifier's own [`Transcript`] (its nonce, the
//!   channel it saw, and the binding it recomputed). It carries that [`Binding`], and only
//!   it can seal a key ([`crate::KeyRelease::seal`]) or stand behind a prompt.
//! - [`OfflineAppraisal`]: evidence appraised without a transcript (raw report data, or
//!   none at all, as `veil report verify` does). It says the evidence is genuine and what
//!   it claims; it may have been replayed or relayed, so it can seal nothing:
//!
//! ```compile_fail
//! # use veil_attestation::{KeyRelease, OfflineAppraisal};
//! fn release(offline: &OfflineAppraisal, key: &[u8; 32]) {
//!     // An offline appraisal is not an `Appraisal`: this does not compile.
//!     let _ = KeyRelease::seal(offline, &[0; 16], key);
//! }
//! ```
//!
//! ```
//! # use veil_attestation::{Appraisal, KeyRelease};
//! fn release(fresh: &Appraisal, key: &[u8; 32]) {
//!     let _ = KeyRelease::seal(fresh, &[0; 16], key);
//! }
//! ```

use std::fmt;
use std::ops::Deref;
use std::time::SystemTime;

use subtle::ConstantTimeEq;

use crate::azure::{QuoteNonce, VtpmClaims};
use crate::binding::{Binding, Transcript};
use crate::chain::{verify_chain, AnchorKind, Certificate, VerifiedVek};
use crate::check::{Check, Outcome, Outcomes, Status};
use crate::evidence::{DecodedEvidence, Evidence, TeeKind};
use crate::policy::Policy;
use crate::report::{guest_policy, Product, Report, SigningKey, Tcb};
use crate::revocation::check_revocation;

/// What the verifier expects of fresh evidence: the transcript it built itself (its own
/// nonce, the TLS key and exporter it saw, the wrapping key and model the server states),
/// and the time at which certificates must be valid.
#[derive(Debug, Clone)]
pub struct Expected {
    report_data: [u8; 64],
    binding: Binding,
    now: SystemTime,
}

impl Expected {
    /// Expect evidence whose REPORT_DATA is `transcript`'s, with certificates valid at `now`.
    pub fn new(transcript: &Transcript, now: SystemTime) -> Self {
        Expected {
            report_data: transcript.report_data(),
            binding: transcript.binding(),
            now,
        }
    }
}

/// What an offline verifier expects: perhaps known report data or a nonce, and the time.
/// Evidence appraised this way yields an [`OfflineAppraisal`], which can release nothing.
#[derive(Debug, Clone, Copy)]
pub struct Offline {
    expect: OfflineExpect,
    now: SystemTime,
}

#[derive(Debug, Clone, Copy)]
enum OfflineExpect {
    Any,
    ReportData([u8; 64]),
    Nonce { bytes: [u8; 64], len: usize },
}

/// An expected nonce must be 1 to 64 bytes ([`Offline::nonce`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an expected nonce is 1 to 64 bytes, not {found}")]
pub struct NonceLengthError {
    /// The length given.
    pub found: usize,
}

/// What [`Policy::run`] compares the binding with.
enum Expect {
    Any,
    ReportData([u8; 64]),
    Nonce(Vec<u8>),
}

impl Offline {
    /// Expect exactly these 64 bytes of report data (e.g. a nonce given to an attester
    /// out of band), with certificates valid at `now`. For `az-snp-vtpm` evidence, whose
    /// REPORT_DATA commits to the runtime claims, the quote's extraData must be SHA-256
    /// of these 64 bytes instead: what Veil's attester binds.
    pub fn report_data(report_data: [u8; 64], now: SystemTime) -> Self {
        Offline {
            expect: OfflineExpect::ReportData(report_data),
            now,
        }
    }

    /// Expect a nonce of 1 to 64 bytes that the verifier gave the attester, as Trustee's
    /// verifiers do: `az-snp-vtpm` evidence must carry exactly these bytes in the quote's
    /// extraData; SNP and mock evidence must carry them in REPORT_DATA, zero-padded to 64.
    ///
    /// # Errors
    /// [`NonceLengthError`] for an empty nonce or one over 64 bytes.
    pub fn nonce(nonce: &[u8], now: SystemTime) -> Result<Self, NonceLengthError> {
        if nonce.is_empty() || nonce.len() > 64 {
            return Err(NonceLengthError { found: nonce.len() });
        }
        let mut bytes = [0u8; 64];
        bytes[..nonce.len()].copy_from_slice(nonce);
        Ok(Offline {
            expect: OfflineExpect::Nonce {
                bytes,
                len: nonce.len(),
            },
            now,
        })
    }

    /// Check no report data: only for inspecting a report, never for releasing a key or
    /// sending a prompt (the evidence may be replayed or relayed).
    pub fn danger_any_report_data(now: SystemTime) -> Self {
        Offline {
            expect: OfflineExpect::Any,
            now,
        }
    }

    fn expect(&self) -> Expect {
        match self.expect {
            OfflineExpect::Any => Expect::Any,
            OfflineExpect::ReportData(rd) => Expect::ReportData(rd),
            OfflineExpect::Nonce { bytes, len } => Expect::Nonce(bytes[..len].to_vec()),
        }
    }
}

/// What evidence that passed appraisal claims: every check, the verified report and the
/// key that signed it. Both proof types dereference to it.
#[derive(Debug, Clone)]
pub struct Claims {
    outcomes: Vec<Outcome>,
    tee: TeeKind,
    product: Product,
    signing_key: SigningKey,
    report: Report,
    vek: Certificate,
    vtpm: Option<VtpmClaims>,
}

impl Claims {
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
    /// The report data.
    pub fn report_data(&self) -> [u8; 64] {
        self.report.report_data()
    }
    /// For `az-snp-vtpm`: what the vTPM quote verified (the PCRs, the nonce).
    pub fn vtpm(&self) -> Option<&VtpmClaims> {
        self.vtpm.as_ref()
    }
}

/// Fresh evidence that passed appraisal and binds the verifier's own transcript. Only
/// [`Policy::appraise`] makes one. It carries the [`Binding`] it verified, so what is
/// released on its strength goes to the wrapping key the evidence binds, and nowhere else.
#[derive(Debug, Clone)]
pub struct Appraisal {
    claims: Claims,
    binding: Binding,
}

impl Appraisal {
    /// The claims.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }
    /// The binding REPORT_DATA was verified to commit to: purpose, wrapping key, model.
    pub fn binding(&self) -> &Binding {
        &self.binding
    }
}

impl Deref for Appraisal {
    type Target = Claims;
    fn deref(&self) -> &Claims {
        &self.claims
    }
}

/// Evidence that passed appraisal without a transcript (see [`Offline`]): genuine, and
/// claiming what it claims, but possibly replayed. It cannot seal a key.
#[derive(Debug, Clone)]
pub struct OfflineAppraisal {
    claims: Claims,
}

impl OfflineAppraisal {
    /// The claims.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }
}

impl Deref for OfflineAppraisal {
    type Target = Claims;
    fn deref(&self) -> &Claims {
        &self.claims
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

impl Policy {
    /// Appraises fresh `evidence` against this policy and the verifier's transcript.
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
        let claims = self.run(
            evidence,
            Expect::ReportData(expected.report_data),
            Some(&expected.binding),
            expected.now,
        )?;
        Ok(Appraisal {
            claims,
            binding: expected.binding.clone(),
        })
    }

    /// Appraises evidence offline: the chain, the platform and the launch as
    /// [`Policy::appraise`] does, and the report data only if `offline` names it.
    ///
    /// # Errors
    /// A [`Rejection`] listing every check and naming those that failed.
    pub fn appraise_offline(
        &self,
        evidence: &Evidence,
        offline: &Offline,
    ) -> Result<OfflineAppraisal, Rejection> {
        let claims = self.run(evidence, offline.expect(), None, offline.now)?;
        Ok(OfflineAppraisal { claims })
    }

    fn run(
        &self,
        evidence: &Evidence,
        expect: Expect,
        binding: Option<&Binding>,
        now: SystemTime,
    ) -> Result<Claims, Rejection> {
        let decoded = evidence
            .decode()
            .map_err(|e| Rejection::single(Check::EvidenceFormat, e.to_string()))?;
        let mut out = Outcomes::default();
        out.pass(
            Check::EvidenceFormat,
            format!(
                "SNP report v{}, {} certificates{}",
                decoded.report.version(),
                1 + decoded.others.len(),
                match &evidence.vtpm {
                    Some(v) => format!(
                        ", HCL report ({} bytes), TPM quote, {} PCRs",
                        v.hcl_report.len(),
                        v.pcrs.len()
                    ),
                    None => String::new(),
                }
            ),
        );
        let tee = evidence.tee;
        let verified = self.check_chain(tee, &decoded, now, &mut out);
        let report = decoded.report;
        self.check_platform(&report, verified.as_ref(), &mut out);
        self.check_launch(&report, &mut out);
        // The model is the verifier's own binding's when it has one, else the evidence's.
        let model = binding
            .or(evidence.binding.as_ref())
            .map(|b| b.model_sha256);
        let vtpm = match &evidence.vtpm {
            // Azure: REPORT_DATA holds the runtime claims' hash; the quote binds the rest.
            Some(vtpm) => {
                self.check_model(model, &mut out);
                out.skip(
                    Check::ReportData,
                    "az-snp-vtpm: REPORT_DATA commits to the runtime claims (runtime_claims); the quote binds the verifier (quote_nonce)",
                );
                let nonce = match expect {
                    Expect::Any => QuoteNonce::Unchecked,
                    Expect::ReportData(rd) => QuoteNonce::ReportData(rd),
                    Expect::Nonce(n) => QuoteNonce::Nonce(n),
                };
                crate::azure::check_vtpm(&self.pcrs, &report, vtpm, &nonce, &mut out)
            }
            None => {
                self.check_model(model, &mut out);
                self.check_report_data(&report, &expect, &mut out);
                None
            }
        };
        let complete = evidence.vtpm.is_none() || vtpm.is_some();
        match verified {
            Some(v) if !out.any_failed() && complete => Ok(Claims {
                outcomes: out.0,
                tee,
                product: v.product,
                signing_key: v.kind,
                report,
                vek: v.vek,
                vtpm,
            }),
            _ => Err(Rejection { outcomes: out.0 }),
        }
    }

    /// Step 1: the TEE kind, the report's format, the certificate chain up to a trusted
    /// root, revocation, and the kind of signing key.
    fn check_chain(
        &self,
        tee: TeeKind,
        decoded: &DecodedEvidence,
        now: SystemTime,
        out: &mut Outcomes,
    ) -> Option<VerifiedVek> {
        let report = &decoded.report;
        // Which TEE, which anchors.
        let accepted: Vec<&str> = self.tee.iter().map(|t| t.name()).collect();
        out.record(
            Check::TeeKind,
            self.tee.contains(&tee),
            format!("{tee} (accepted: {})", accepted.join(", ")),
        );
        let anchor = match tee {
            TeeKind::Snp | TeeKind::AzSnpVtpm => AnchorKind::Amd,
            TeeKind::Mock => AnchorKind::Mock,
        };
        let mock_roots: Vec<Certificate> = if tee == TeeKind::Mock {
            decoded
                .others
                .iter()
                .filter(|c| self.mock_roots.contains(&c.fingerprint_bytes()))
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

        let verified = verify_chain(&decoded.vek, &decoded.others, anchor, &mock_roots, now, out);

        if let Some(v) = &verified {
            check_revocation(
                &self.loaded_crls,
                self.crl_files.len(),
                [&v.root, &v.intermediate, &v.vek],
                now,
                out,
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

        verified
    }

    /// Step 2: the platform: product, the report's signature, the TCB the VEK certifies,
    /// the chip, and the minimum TCB. Without a verified chain these are skipped, and
    /// the chain check fails.
    fn check_platform(&self, report: &Report, verified: Option<&VerifiedVek>, out: &mut Outcomes) {
        if let Some(v) = verified {
            let product = v.product;
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
                    match cpuid {
                        Some(c) => format!("{detail}: its CPUID names {c}"),
                        None => format!("{detail}: its CPUID names no known product"),
                    }
                },
            );

            let sig_ok = check_report_signature(report, &v.vek);
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
            let minimum = self.minimum_tcb(product);
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
    }

    /// Step 3: the launch: reserved fields, measurement, guest policy, VMPL, firmware,
    /// guest SVN, platform info, and the allowlists.
    fn check_launch(&self, report: &Report, out: &mut Outcomes) {
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

        self.check_measurement(report, out);
        self.check_guest_policy(report, out);
        out.record(
            Check::Vmpl,
            self.vmpl.contains(&report.vmpl()),
            format!("{} (accepted: {})", report.vmpl(), list(&self.vmpl)),
        );
        self.check_firmware(report, out);
        out.record(
            Check::GuestSvn,
            report.guest_svn() >= self.min_guest_svn,
            format!("{} (minimum {})", report.guest_svn(), self.min_guest_svn),
        );
        let pi = report.platform_info();
        // Bits 0..=7 are defined up to ABI 1.58 (bit 6 is set on Turin); the rest must be zero.
        out.record(Check::PlatformInfo, pi & !0xFF == 0, format!("{pi:#x}"));

        allowlist::<64>(out, Check::ChipId, &self.chip_ids, &report.chip_id());
        allowlist::<32>(out, Check::HostData, &self.host_data, &report.host_data());
        allowlist::<16>(out, Check::FamilyId, &self.family_ids, &report.family_id());
        allowlist::<16>(out, Check::ImageId, &self.image_ids, &report.image_id());
        allowlist::<48>(
            out,
            Check::IdKey,
            &self.id_key_digests,
            &report.id_key_digest(),
        );
        allowlist::<48>(
            out,
            Check::AuthorKey,
            &self.author_key_digests,
            &report.author_key_digest(),
        );
    }

    /// Step 4a: the model the evidence binds.
    fn check_model(&self, model: Option<[u8; 32]>, out: &mut Outcomes) {
        match model {
            Some(m) => allowlist::<32>(out, Check::Model, &self.models, &m),
            None if self.models.is_empty() => out.skip(Check::Model, "any (no binding)"),
            None => {
                out.record(Check::Model, false, "the evidence binds no model");
            }
        }
    }

    /// Step 4b: REPORT_DATA against what the verifier computed (or its nonce, zero-padded).
    fn check_report_data(&self, report: &Report, expect: &Expect, out: &mut Outcomes) {
        let found = report.report_data();
        match expect {
            Expect::ReportData(want) => {
                let ok = bool::from(want.ct_eq(&found));
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
            Expect::Nonce(nonce) => {
                let mut want = [0u8; 64];
                want[..nonce.len()].copy_from_slice(nonce);
                let ok = bool::from(want.ct_eq(&found));
                out.record(
                    Check::ReportData,
                    ok,
                    if ok {
                        format!("the expected {}-byte nonce, zero-padded", nonce.len())
                    } else {
                        format!(
                            "{} is not the expected nonce, zero-padded",
                            hex::encode(found)
                        )
                    },
                );
            }
            Expect::Any => out.skip(Check::ReportData, "not checked (offline)"),
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
        let allowed = &self.measurements;
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
        let minimum = self.min_firmware;
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
    allowed: &[[u8; N]],
    found: &[u8; N],
) {
    if allowed.is_empty() {
        out.skip(check, "any (not constrained by the policy)");
        return;
    }
    let ok = allowed.contains(found);
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
