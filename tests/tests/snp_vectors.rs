//! The 17 real AMD-signed SEV-SNP reports: each verifies, and each mutation is rejected
//! with its check named.

use std::time::Duration;

use veil_attestation::report::Product;
use veil_attestation::{Check, Offline, Policy, Rejection};
use veil_tests::vectors::{self, Vector};

/// A policy that accepts every genuine vector (any VMPL, debug allowed), with `extra`
/// policy-file lines (a policy is changed only through its file form).
fn permissive_with(extra: &str) -> Policy {
    Policy::from_toml(&format!("vmpl = [0, 1, 2, 3]\nallow_debug = true\n{extra}"))
        .expect("the test policy parses")
}

fn permissive() -> Policy {
    permissive_with("any_measurement = true")
}

/// The vectors' report data is not a Veil transcript: they are appraised offline, with
/// their own report data expected.
fn expected(v: &Vector) -> Offline {
    Offline::report_data(v.parsed().report_data(), v.valid_at)
}

fn reject(policy: &Policy, v: &Vector, evidence: &veil_attestation::Evidence) -> Rejection {
    match policy.appraise_offline(evidence, &expected(v)) {
        Ok(_) => panic!("{}: mutated evidence was accepted", v.set.name),
        Err(r) => r,
    }
}

#[test]
fn every_real_vector_verifies() {
    let all = vectors::all();
    if all.is_empty() {
        return;
    }
    assert_eq!(all.len(), 17, "the manifest lists 17 verifiable sets");
    for v in &all {
        let appraisal = permissive()
            .appraise_offline(&v.evidence(), &expected(v))
            .unwrap_or_else(|r| panic!("{}: {r}", v.set.name));
        assert_eq!(appraisal.product().name(), v.set.product, "{}", v.set.name);
        assert!(!appraisal.is_mock());
    }
}

#[test]
fn vectors_verify_with_built_in_roots_only() {
    for mut v in vectors::all() {
        v.chain
            .retain(|c| c.subject_cn().is_some_and(|cn| cn.starts_with("ARK-")));
        permissive()
            .appraise_offline(&v.evidence(), &expected(&v))
            .unwrap_or_else(|r| panic!("{}: {r}", v.set.name));
    }
}

#[test]
fn default_policy_accepts_vmpl0_non_debug_vectors_and_rejects_the_debug_one() {
    for v in vectors::all() {
        let r = v.parsed();
        let result = Policy::genuine_snp().appraise_offline(&v.evidence(), &expected(&v));
        let debug = r.policy() & (1 << 19) != 0;
        match (debug, r.vmpl()) {
            (false, 0) => {
                result.unwrap_or_else(|e| panic!("{}: {e}", v.set.name));
            }
            (true, _) => {
                assert_eq!(v.set.name, "go-sev-guest/milan");
                let e = result.expect_err("debug report rejected by default");
                assert!(e.failed(Check::Debug), "{e}");
                assert_eq!(e.failures().count(), 1, "only debug fails: {e}");
            }
            (false, vmpl) => {
                let e = result.expect_err("non-zero VMPL rejected by default");
                assert!(e.failed(Check::Vmpl), "{}: vmpl {vmpl}: {e}", v.set.name);
            }
        }
    }
}

#[test]
fn the_debug_vector_is_accepted_when_the_policy_allows_debug() {
    let Some(v) = vectors::named("go-sev-guest/milan") else {
        return;
    };
    let policy = Policy::from_toml("any_measurement = true\nallow_debug = true").expect("parses");
    policy
        .appraise_offline(&v.evidence(), &expected(&v))
        .expect("debug allowed");
}

#[test]
fn any_single_byte_flip_in_the_report_is_rejected() {
    // One bit per byte (a different bit each byte), over the whole report: the signed
    // region, the signature and the reserved bytes after it.
    for v in vectors::all() {
        let policy = permissive();
        for i in 0..v.report.len() {
            let mut e = v.evidence();
            e.report[i] ^= 1 << (i % 8);
            let r = reject(&policy, &v, &e);
            assert!(r.failures().count() > 0, "{} byte {i:#x}", v.set.name);
            if i < 0x2A0 {
                // Anything in the signed bytes breaks the signature, unless it changes
                // the version or breaks the report format first.
                assert!(
                    r.failed(Check::ReportSignature) || r.failed(Check::EvidenceFormat),
                    "{} byte {i:#x}: {r}",
                    v.set.name
                );
            }
        }
    }
}

#[test]
fn a_flip_in_report_data_fails_the_signature_and_the_binding() {
    for v in vectors::all() {
        let mut e = v.evidence();
        e.report[0x50] ^= 1;
        let r = reject(&permissive(), &v, &e);
        assert!(r.failed(Check::ReportSignature), "{r}");
        assert!(r.failed(Check::ReportData), "{r}");
    }
}

#[test]
fn every_bit_of_the_signed_region_matters() {
    if let Some(v) = vectors::named("ms-tav/turin") {
        let report = v.parsed();
        let policy = permissive();
        let base = policy
            .appraise_offline(&v.evidence(), &expected(&v))
            .expect("verifies");
        for bit in 0..(0x2A0 * 8) {
            let mut raw = report.as_bytes().to_vec();
            raw[bit / 8] ^= 1 << (bit % 8);
            let mut e = v.evidence();
            e.report = raw;
            if let Ok(ok) =
                policy.appraise_offline(&e, &Offline::report_data(base.report_data(), v.valid_at))
            {
                panic!(
                    "{}: bit {bit} flipped and still accepted: {:?}",
                    v.set.name,
                    ok.product()
                );
            }
        }
    }
}

#[test]
fn wrong_expected_report_data_is_rejected() {
    for v in vectors::all() {
        let mut want = v.parsed().report_data();
        want[63] ^= 0x80;
        let r = permissive()
            .appraise_offline(&v.evidence(), &Offline::report_data(want, v.valid_at))
            .expect_err("rejected");
        assert!(r.failed(Check::ReportData), "{r}");
        assert_eq!(r.failures().count(), 1, "{r}");
    }
}

#[test]
fn a_wrong_measurement_is_rejected() {
    for v in vectors::all() {
        let with = |m: &[[u8; 48]]| {
            let list: Vec<String> = m
                .iter()
                .map(|m| format!("\"{}\"", hex::encode(m)))
                .collect();
            permissive_with(&format!("measurements = [{}]", list.join(", ")))
        };
        let mut m = v.parsed().measurement();
        with(&[m])
            .appraise_offline(&v.evidence(), &expected(&v))
            .unwrap_or_else(|r| panic!("{}: {r}", v.set.name));
        m[0] ^= 1;
        let r = reject(&with(&[m]), &v, &v.evidence());
        assert!(r.failed(Check::Measurement), "{r}");
        assert!(reject(&with(&[]), &v, &v.evidence()).failed(Check::Measurement));
    }
}

#[test]
fn a_tcb_minimum_above_the_report_is_rejected() {
    for v in vectors::all() {
        let tcb = veil_attestation::Tcb::from_raw(
            v.parsed().reported_tcb_raw(),
            Product::from_name(&v.set.product).expect("product"),
        );
        let with = |snp: u8| {
            permissive_with(&format!(
                "any_measurement = true\n[min_tcb.all]\nsnp = {snp}\nmicrocode = {}",
                tcb.microcode
            ))
        };
        with(tcb.snp)
            .appraise_offline(&v.evidence(), &expected(&v))
            .unwrap_or_else(|r| panic!("{}: {r}", v.set.name));
        let r = reject(&with(tcb.snp + 1), &v, &v.evidence());
        assert!(r.failed(Check::MinimumTcb), "{r}");
        assert!(r.to_string().contains("snp"), "{r}");
    }
}

#[test]
fn the_chain_of_another_product_is_rejected() {
    let all = vectors::all();
    for v in &all {
        for other in ["Milan", "Genoa", "Turin"]
            .into_iter()
            .filter(|p| *p != v.set.product)
        {
            let product = Product::from_name(other).expect("product");
            let roots = veil_attestation::chain::amd_roots(product).expect("AMD roots");
            let mut e = v.evidence();
            e.certificates.truncate(1);
            e.certificates.push(roots.ask.as_der().to_vec());
            e.certificates.push(roots.ark.as_der().to_vec());
            let r = reject(&permissive(), v, &e);
            assert!(
                r.failed(Check::CertificateChain) || r.failed(Check::TrustAnchor),
                "{}: {r}",
                v.set.name
            );
        }
    }
}

#[test]
fn a_vek_from_another_vector_does_not_verify_the_report() {
    let all = vectors::all();
    for (v, other) in all.iter().zip(all.iter().cycle().skip(1)) {
        if v.vek == other.vek {
            continue;
        }
        let mut e = v.evidence();
        e.certificates = other.evidence().certificates;
        let r = reject(&permissive(), v, &e);
        assert!(
            r.failed(Check::ReportSignature)
                || r.failed(Check::Product)
                || r.failed(Check::SigningKey),
            "{} with {}'s VEK: {r}",
            v.set.name,
            other.set.name
        );
    }
}

#[test]
fn certificates_outside_their_validity_are_rejected() {
    for v in vectors::all() {
        let too_early = v.vek.not_before() - Duration::from_secs(3600);
        let r = permissive()
            .appraise_offline(
                &v.evidence(),
                &Offline::report_data(v.parsed().report_data(), too_early),
            )
            .expect_err("not yet valid");
        assert!(r.failed(Check::CertificateValidity), "{r}");
    }
}

#[test]
fn with_crls_in_the_policy_a_real_chain_needs_a_crl_signed_by_its_own_ark() {
    use veil_attestation::Crl;
    let crl = |bytes: &[u8]| Crl::from_der(bytes).expect("fixture CRL");
    // A CRL from another issuer: no CRL from the vector's ARK.
    let other = crl(include_bytes!(
        "../../attestation/tests/data/crl/crl-test.der"
    ));
    // A CRL in ARK-Milan's exact name, signed by another key.
    let forged = crl(include_bytes!(
        "../../attestation/tests/data/crl/crl-forged-milan.der"
    ));
    for v in vectors::all() {
        let mut policy = permissive();
        policy.require_crl("other.crl", other.clone());
        policy.require_crl("forged.crl", forged.clone());
        let r = reject(&policy, &v, &v.evidence());
        let failed: Vec<Check> = r.failures().map(|o| o.check).collect();
        assert_eq!(failed, [Check::Revocation], "{}: {r}", v.set.name);
        let ark = format!("ARK-{}", v.set.product);
        let why = if v.set.product == "Milan" {
            "a CRL that names ARK-Milan as issuer is not signed by it".to_owned()
        } else {
            format!("no CRL from {ark}")
        };
        assert!(r.to_string().contains(&why), "{}: {r}", v.set.name);
    }
}

#[test]
fn a_report_claiming_vlek_but_signed_by_a_vcek_is_rejected() {
    for v in vectors::matching("signed by a VCEK", |v| {
        v.vek.subject_cn().as_deref() == Some("SEV-VCEK")
    }) {
        let mut e = v.evidence();
        e.report[0x48] = (e.report[0x48] & !0b11100) | (1 << 2);
        let r = reject(&permissive(), &v, &e);
        assert!(r.failed(Check::SigningKey), "{r}");
    }
}

#[test]
fn our_parser_agrees_with_the_sev_crate() {
    use sev::parser::ByteParser;
    for v in vectors::all() {
        let ours = v.parsed();
        let theirs =
            sev::firmware::guest::AttestationReport::from_bytes(&v.report).expect("sev parses");
        assert_eq!(ours.version(), theirs.version);
        assert_eq!(ours.measurement(), theirs.measurement);
        assert_eq!(ours.report_data(), theirs.report_data);
        assert_eq!(ours.chip_id(), theirs.chip_id);
        assert_eq!(ours.vmpl(), theirs.vmpl);
        assert_eq!(ours.policy(), u64::from(theirs.policy));
        let product = Product::from_name(&v.set.product).expect("product");
        let tcb = veil_attestation::Tcb::from_raw(ours.reported_tcb_raw(), product);
        assert_eq!(
            (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode),
            (
                theirs.reported_tcb.bootloader,
                theirs.reported_tcb.tee,
                theirs.reported_tcb.snp,
                theirs.reported_tcb.microcode
            ),
            "{}",
            v.set.name
        );
        assert_eq!(ours.current_version().major, theirs.current.major);
    }
}
