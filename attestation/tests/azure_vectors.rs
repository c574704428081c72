//! Azure CVM evidence (`az-snp-vtpm`) from `$VEIL_SNP_VECTORS/trustee/az-snp-vtpm` (default
//! `../shared/vectors/snp` beside the checkout): Trustee's four evidence files are accepted
//! with their nonces and PCR0, and every single-field change is rejected with the check
//! named. Without the vectors the tests print SKIPPED, unless `VEIL_REQUIRE_VECTORS=1` (as
//! in CI), where they fail.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use veil_attestation::azure::hcl::{HclReport, RUNTIME_CLAIMS_OFFSET};
use veil_attestation::azure::tpm::Quote;
use veil_attestation::{
    Certificate, Check, Evidence, Offline, Policy, Rejection, TeeKind, TrusteeEvidence,
};

/// One of Trustee's evidence files, with the nonce and PCR0 its tests assert.
struct Case {
    file: &'static str,
    nonce: Vec<u8>,
    pcr0: &'static str,
}

fn cases() -> Vec<Case> {
    let hex = |s: &str| hex::decode(s).expect("hex");
    vec![
        Case {
            file: "evidence-v0.json",
            nonce: b"challenge".to_vec(),
            pcr0: "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced",
        },
        Case {
            file: "evidence-v1.json",
            nonce: b"challenge".to_vec(),
            pcr0: "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced",
        },
        Case {
            file: "evidence-v2.json",
            nonce: hex("982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef"),
            pcr0: "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7",
        },
        Case {
            file: "evidence-genoa.json",
            nonce: hex("0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f"),
            pcr0: "afd689d0bb1c5f36f023fbaf574135f555a28a10c1f6b938d2a25e70c7783338",
        },
    ]
}

fn dir() -> Option<PathBuf> {
    veil_tests::vectors::dir().map(|d| d.join("trustee/az-snp-vtpm"))
}

/// The case's evidence as a Veil bundle, and a time at which its VCEK is valid.
fn load(case: &Case) -> Option<(Evidence, SystemTime)> {
    let bytes = std::fs::read(dir()?.join(case.file)).expect("the evidence file reads");
    assert!(TrusteeEvidence::recognizes(&bytes), "{}", case.file);
    let trustee =
        TrusteeEvidence::from_json(&bytes).unwrap_or_else(|e| panic!("{}: {e}", case.file));
    let evidence = trustee.to_evidence().expect("to evidence");
    let vcek = Certificate::from_der(&evidence.certificates[0]).expect("VCEK");
    Some((evidence, vcek.not_before() + Duration::from_secs(24 * 3600)))
}

/// Genuine Azure evidence with these PCRs pinned: AMD roots, default security settings,
/// any (paravisor) measurement.
fn policy(pcrs: &[(usize, [u8; 32])]) -> Policy {
    let mut p = Policy::genuine_snp();
    p.set_tee(&[TeeKind::AzSnpVtpm]);
    p.set_pcrs(pcrs).expect("valid PCRs");
    p
}

fn pcr(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).expect("32 bytes of hex");
    out
}

fn reject(case: &Case, evidence: &Evidence, at: SystemTime, nonce: &[u8]) -> Rejection {
    let offline = Offline::nonce(nonce, at).expect("nonce length");
    policy(&[(0, pcr(case.pcr0))])
        .appraise_offline(evidence, &offline)
        .map(|_| ())
        .expect_err("must be rejected")
}

fn assert_rejected_by(case: &Case, what: &str, evidence: &Evidence, at: SystemTime, check: Check) {
    let r = reject(case, evidence, at, &case.nonce);
    assert!(
        r.failed(check),
        "{}: {what}: expected {check} to fail: {r}",
        case.file
    );
}

#[test]
fn every_trustee_file_is_accepted_with_its_nonce_and_pcr0() {
    let mut seen = 0;
    for case in cases() {
        let Some((evidence, at)) = load(&case) else {
            return;
        };
        assert_eq!(evidence.tee, TeeKind::AzSnpVtpm);
        let offline = Offline::nonce(&case.nonce, at).expect("nonce length");
        let a = policy(&[(0, pcr(case.pcr0))])
            .appraise_offline(&evidence, &offline)
            .unwrap_or_else(|r| panic!("{}: {r}", case.file));
        let vtpm = a.vtpm().expect("az-snp-vtpm claims");
        assert_eq!(vtpm.pcr(0), Some(pcr(case.pcr0)), "{}", case.file);
        assert_eq!(vtpm.pcrs().len(), 24, "{}", case.file);
        assert_eq!(vtpm.extra_data(), &case.nonce[..], "{}", case.file);
        assert_eq!(a.report().vmpl(), 0);
        assert!(!a.is_mock());
        for check in [
            Check::RuntimeClaims,
            Check::VtpmQuote,
            Check::PcrDigest,
            Check::Pcrs,
            Check::QuoteNonce,
            Check::ReportSignature,
            Check::CertificateChain,
        ] {
            assert!(
                a.outcomes()
                    .iter()
                    .any(|o| o.check == check && o.status == veil_attestation::Status::Passed),
                "{}: {check} did not pass",
                case.file
            );
        }
        seen += 1;
    }
    assert_eq!(seen, 4);
}

#[test]
fn v2_runtime_claims_carry_the_nonce_as_user_data() {
    let case = &cases()[2];
    let Some((evidence, at)) = load(case) else {
        return;
    };
    let a = policy(&[])
        .appraise_offline(&evidence, &Offline::nonce(&case.nonce, at).expect("nonce"))
        .expect("accepted");
    let user_data = a.vtpm().and_then(|v| v.user_data()).expect("user-data");
    assert!(user_data
        .to_ascii_lowercase()
        .starts_with(&hex::encode(&case.nonce)));
}

#[test]
fn the_veil_bundle_round_trips_through_json_and_says_az_snp_vtpm() {
    for case in cases() {
        let Some((evidence, at)) = load(&case) else {
            return;
        };
        let json = evidence.to_json();
        assert!(json.contains("\"tee\": \"az-snp-vtpm\""), "{json}");
        let again = Evidence::from_json(json.as_bytes()).expect("parses back");
        assert_eq!(again.vtpm, evidence.vtpm);
        assert_eq!(again.report, evidence.report);
        policy(&[(0, pcr(case.pcr0))])
            .appraise_offline(&again, &Offline::nonce(&case.nonce, at).expect("nonce"))
            .unwrap_or_else(|r| panic!("{}: {r}", case.file));
    }
}

#[test]
fn a_wrong_nonce_is_rejected_naming_quote_nonce() {
    for case in cases() {
        let Some((evidence, at)) = load(&case) else {
            return;
        };
        let mut wrong = case.nonce.clone();
        wrong[0] ^= 1;
        let r = reject(&case, &evidence, at, &wrong);
        assert!(r.failed(Check::QuoteNonce), "{}: {r}", case.file);
        assert_eq!(
            r.failures().count(),
            1,
            "{}: only the binding fails: {r}",
            case.file
        );
        // A prefix of the nonce is another nonce.
        let r = reject(&case, &evidence, at, &case.nonce[..case.nonce.len() - 1]);
        assert!(r.failed(Check::QuoteNonce), "{}: {r}", case.file);
        // Veil's binding (SHA-256 of a REPORT_DATA) is not Trustee's nonce either.
        let r = policy(&[])
            .appraise_offline(&evidence, &Offline::report_data([0; 64], at))
            .map(|_| ())
            .expect_err("not Veil's binding");
        assert!(r.failed(Check::QuoteNonce), "{}: {r}", case.file);
    }
}

#[test]
fn without_an_expected_nonce_the_binding_is_skipped_and_says_so() {
    let case = &cases()[0];
    let Some((evidence, at)) = load(case) else {
        return;
    };
    let a = policy(&[])
        .appraise_offline(&evidence, &Offline::danger_any_report_data(at))
        .expect("genuine");
    let o = a
        .outcomes()
        .iter()
        .find(|o| o.check == Check::QuoteNonce)
        .expect("quote_nonce listed");
    assert_eq!(o.status, veil_attestation::Status::Skipped);
    assert!(
        o.detail.contains(&hex::encode(b"challenge")),
        "{}",
        o.detail
    );
}

#[test]
fn a_flipped_byte_in_the_quote_message_is_rejected_by_vtpm_quote() {
    for case in cases() {
        let Some((evidence, at)) = load(&case) else {
            return;
        };
        let len = evidence.vtpm.as_ref().expect("vtpm").quote.len();
        // The magic, the signer's name, the clock and the PCR digest.
        for at_byte in [0, 12, len - 40, len - 1] {
            let mut e = evidence.clone();
            e.vtpm.as_mut().expect("vtpm").quote[at_byte] ^= 1;
            assert_rejected_by(
                &case,
                &format!("quote[{at_byte}]"),
                &e,
                at,
                Check::VtpmQuote,
            );
        }
    }
}

#[test]
fn a_flipped_byte_in_the_signature_is_rejected_by_vtpm_quote() {
    for case in cases() {
        let Some((evidence, at)) = load(&case) else {
            return;
        };
        for at_byte in [0, 100, 255] {
            let mut e = evidence.clone();
            e.vtpm.as_mut().expect("vtpm").signature[at_byte] ^= 1;
            assert_rejected_by(&case, "signature", &e, at, Check::VtpmQuote);
        }
        let mut e = evidence.clone();
        e.vtpm.as_mut().expect("vtpm").signature.pop();
        assert_rejected_by(&case, "short signature", &e, at, Check::VtpmQuote);
    }
}

#[test]
fn a_flipped_byte_in_the_runtime_claims_is_rejected_by_runtime_claims() {
    for case in cases() {
        let Some((evidence, at)) = load(&case) else {
            return;
        };
        let claims_len = HclReport::from_bytes(&evidence.vtpm.as_ref().expect("vtpm").hcl_report)
            .expect("parses")
            .runtime_claims_bytes()
            .len();
        // In the AK's modulus, and in the user-data at the end.
        for offset in [100, claims_len - 10] {
            let mut e = evidence.clone();
            e.vtpm.as_mut().expect("vtpm").hcl_report[RUNTIME_CLAIMS_OFFSET + offset] ^= 1;
            assert_rejected_by(
                &case,
                &format!("claims[{offset}]"),
                &e,
                at,
                Check::RuntimeClaims,
            );
        }
    }
}

#[test]
fn a_flipped_byte_in_the_snp_report_is_rejected() {
    for case in cases() {
        let Some((evidence, at)) = load(&case) else {
            return;
        };
        // The evidence's report (MEASUREMENT): its signature fails, and it is no longer
        // the one inside the HCL report.
        let mut e = evidence.clone();
        e.report[0x90] ^= 1;
        let r = reject(&case, &e, at, &case.nonce);
        assert!(r.failed(Check::ReportSignature), "{}: {r}", case.file);
        assert!(r.failed(Check::RuntimeClaims), "{}: {r}", case.file);
        // The report inside the HCL report alone.
        let mut e = evidence.clone();
        e.vtpm.as_mut().expect("vtpm").hcl_report[0x20 + 0x90] ^= 1;
        assert_rejected_by(&case, "HCL's SNP report", &e, at, Check::RuntimeClaims);
        // Both, consistently: the VCEK's signature still fails.
        let mut e = evidence.clone();
        e.report[0x90] ^= 1;
        e.vtpm.as_mut().expect("vtpm").hcl_report[0x20 + 0x90] ^= 1;
        let r = reject(&case, &e, at, &case.nonce);
        assert!(r.failed(Check::ReportSignature), "{}: {r}", case.file);
        assert!(!r.failed(Check::RuntimeClaims), "{}: {r}", case.file);
    }
}

#[test]
fn a_flipped_byte_in_the_vcek_is_rejected_by_certificate_chain() {
    for case in cases() {
        let Some((evidence, at)) = load(&case) else {
            return;
        };
        let mut e = evidence.clone();
        let vcek = &mut e.certificates[0];
        let last = vcek.len() - 1;
        vcek[last] ^= 1; // inside the ASK's signature over the VCEK
        assert_rejected_by(&case, "VCEK", &e, at, Check::CertificateChain);
    }
}

#[test]
fn a_changed_pcr_value_is_rejected_by_pcr_digest() {
    for case in cases() {
        let Some((evidence, at)) = load(&case) else {
            return;
        };
        for index in [0, 7, 23] {
            let mut e = evidence.clone();
            e.vtpm.as_mut().expect("vtpm").pcrs[index][5] ^= 1;
            assert_rejected_by(&case, &format!("PCR {index}"), &e, at, Check::PcrDigest);
        }
        let mut e = evidence.clone();
        e.vtpm.as_mut().expect("vtpm").pcrs.pop();
        assert_rejected_by(&case, "23 PCRs", &e, at, Check::PcrDigest);
    }
}

#[test]
fn a_policy_pinning_a_wrong_pcr0_is_rejected_by_pcrs() {
    for case in cases() {
        let Some((evidence, at)) = load(&case) else {
            return;
        };
        let mut wrong = pcr(case.pcr0);
        wrong[31] ^= 1;
        let r = policy(&[(0, wrong)])
            .appraise_offline(&evidence, &Offline::nonce(&case.nonce, at).expect("nonce"))
            .map(|_| ())
            .expect_err("wrong PCR0");
        assert!(r.failed(Check::Pcrs), "{}: {r}", case.file);
        assert_eq!(r.failures().count(), 1, "{}: {r}", case.file);
        assert!(r.to_string().contains("PCR 0"), "{r}");
    }
}

#[test]
fn az_evidence_is_refused_where_the_policy_accepts_only_snp() {
    let case = &cases()[0];
    let Some((evidence, at)) = load(case) else {
        return;
    };
    let r = Policy::genuine_snp()
        .appraise_offline(&evidence, &Offline::nonce(&case.nonce, at).expect("nonce"))
        .map(|_| ())
        .expect_err("snp only");
    assert!(r.failed(Check::TeeKind), "{r}");
}

#[test]
fn the_vtpm_part_belongs_to_az_snp_vtpm_evidence_only() {
    let case = &cases()[0];
    let Some((evidence, at)) = load(case) else {
        return;
    };
    let offline = Offline::nonce(&case.nonce, at).expect("nonce");
    let mut as_snp = evidence.clone();
    as_snp.tee = TeeKind::Snp;
    let r = policy(&[])
        .appraise_offline(&as_snp, &offline)
        .map(|_| ())
        .expect_err("snp with a vtpm part");
    assert!(r.failed(Check::EvidenceFormat), "{r}");
    let mut bare = evidence.clone();
    bare.vtpm = None;
    let r = policy(&[])
        .appraise_offline(&bare, &offline)
        .map(|_| ())
        .expect_err("az without its vtpm part");
    assert!(r.failed(Check::EvidenceFormat), "{r}");
}

#[test]
fn every_truncation_of_the_real_hcl_reports_and_quotes_is_an_error() {
    for case in cases() {
        let Some((evidence, _)) = load(&case) else {
            return;
        };
        let vtpm = evidence.vtpm.expect("vtpm");
        let hcl = HclReport::from_bytes(&vtpm.hcl_report).expect("parses");
        let end = RUNTIME_CLAIMS_OFFSET + hcl.runtime_claims_bytes().len();
        for n in 0..end {
            assert!(
                HclReport::from_bytes(&vtpm.hcl_report[..n]).is_err(),
                "{}: {n}",
                case.file
            );
        }
        for n in 0..vtpm.quote.len() {
            assert!(
                Quote::from_bytes(&vtpm.quote[..n]).is_err(),
                "{}: {n}",
                case.file
            );
        }
        let mut longer = vtpm.quote.clone();
        longer.push(0);
        assert!(Quote::from_bytes(&longer).is_err());
    }
}

#[test]
fn offline_nonces_are_one_to_sixty_four_bytes() {
    let now = SystemTime::now();
    assert!(Offline::nonce(&[], now).is_err());
    assert!(Offline::nonce(&[0; 65], now).is_err());
    assert!(Offline::nonce(&[0; 64], now).is_ok());
    assert!(Offline::nonce(&[0], now).is_ok());
}
