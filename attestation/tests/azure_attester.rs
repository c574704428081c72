//! The Azure attester over a fake TPM: one answering with Trustee's recorded vectors
//! (`$VEIL_SNP_VECTORS/trustee/az-snp-vtpm/evidence-v1.json`), whose evidence then verifies,
//! and one signing with a test attestation key, which shows the quote binding
//! SHA-256(REPORT_DATA). Without the vectors the tests print SKIPPED, unless
//! `VEIL_REQUIRE_VECTORS=1` (as in CI), where they fail.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rsa::signature::{SignatureEncoding, Signer};
use sha2::{Digest, Sha256};
use veil_attestation::azure::hcl::{IGVM_HEADER_OFFSET, RUNTIME_CLAIMS_OFFSET};
use veil_attestation::azure::{extra_data_for, AzureAttestError, AzureAttester, Quote, Tpm};
use veil_attestation::binding::{Nonce, Purpose, Transcript};
use veil_attestation::{
    Attester, Certificate, Check, Expected, Offline, Policy, TeeKind, TrusteeEvidence,
};

/// A test RSA-2048 attestation key (n, d, p, q in hex), made for these tests only.
const AK: [&str; 4] = ["9c40b073f2a567a0e15e48b6cf7904963c445ee26171edc919dbccfc437148532e125cc47efe1db5b1a35b3e83d4eafd1ba512e9f57589208c8e5f5ea12668919f6db3b0a54a9cb62e62c9385a36cf816d44388341e48791729d820ad7cb1175e4b8189cd511bd98e8f5efa7536fda9bfbadbd575935005e02097c1683cc1a60f5f59338db8313fc4c79c086f13f1a984d0edc61cdb9a3cc05bc348513efc59c1a80ddef7ce95c00a4a9a708ea09e7d17697b638d0dfd7ba286b9fce4f40d44abdebfa4d2f833584c6383740b49a5a70cd5be5d51a024fc316aeadd3637eb612b0335f8246c7b942807949a1c367c5a1f5fd49556b5aefc22d09f6a76e43e633", "7ab13ddd1aa01d3d8b86822263cab7e0ed0eaf8609a171011cde8ccc28e2a6399db543df8deb8c2bde1bec6512492c9bf60ac41a7b9b674352e7e57197422ff6e8f13666404ad48cbfafaef488eefdd184ffe4a69fbf0afb19231e850850a766d696cb6334721e8ce4d3c5bfe5e616d747e40d077b40016e9cbadf79ee6d64819a01046e73319be23eb32bd6481fa88885fd22edc25baaeec34faa87801f3321167023a53f99f36398b5459cbc218059e02d14db7198d7f91e5c0597d0de86913bb827575209e6e2004b2da40ec7c9155c7c772be55403cb4e88a9874861c5b56f1fb78e93e7217303c7a29afc5fe6f11c657601db3f6dd64d1e023b1c79a65", "d61b932d0124fa3e3b7dac5c68d07feb6c1b2f148af57593b972640ec569f364eff5894482b2c2fae41e04c07606084de347b22b972ec118a58f43ccb6220d560dcad793fe22a8f137bba40af25f3a931627ee99499e1f06aa3342eae776e1116632c6d00d1beac9608e54def9d963a1e2a46636b862594cf04c50a6fd1aac15", "bad337f2be26a8d9a829dd67e37b88f8fa7d4eac5fb73a62c331cba2883e43f053c29b543a1facf0f72cc1f19746bdf8d0cbed6facf4876e367aea7e46558e9486c1da8aadcd1e96d0ec1cfbe948e932e4d7651ebf61e88c110219695ac13bb3af2845e0ea06371afe77893d4dea60ac8a5719ab625bf6cf7da2fed6f09db327"];

fn ak() -> rsa::RsaPrivateKey {
    let big = |h: &str| rsa::BigUint::parse_bytes(h.as_bytes(), 16).expect("hex");
    rsa::RsaPrivateKey::from_components(
        big(AK[0]),
        rsa::BigUint::from(65537u32),
        big(AK[1]),
        vec![big(AK[2]), big(AK[3])],
    )
    .expect("the test key is valid")
}

/// How the fake TPM quotes.
enum Signing {
    /// Answer with the recorded quote and signature.
    Recorded,
    /// Build a quote over the given extraData and sign it with the test AK.
    TestKey,
    /// Answer every command with this response code.
    Fail(u32),
    /// Report PCR values that differ from the quoted ones.
    MovingPcrs,
}

struct FakeTpm {
    hcl: Vec<u8>,
    quote: Vec<u8>,
    signature: Vec<u8>,
    pcrs: Vec<[u8; 32]>,
    signing: Signing,
    extra_data: Mutex<Vec<Vec<u8>>>,
}

fn u16_at(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

fn response(tag: u16, code: u32, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend(tag.to_be_bytes());
    r.extend(((10 + body.len()) as u32).to_be_bytes());
    r.extend(code.to_be_bytes());
    r.extend(body);
    r
}

/// An empty-password session's response: nonce, attributes, hmac.
const AUTH_RESPONSE: [u8; 5] = [0, 0, 1, 0, 0];

fn tpm2b(b: &[u8]) -> Vec<u8> {
    let mut out = (b.len() as u16).to_be_bytes().to_vec();
    out.extend(b);
    out
}

impl FakeTpm {
    fn sessions(params: &[u8]) -> Vec<u8> {
        let mut body = (params.len() as u32).to_be_bytes().to_vec();
        body.extend(params);
        body.extend(AUTH_RESPONSE);
        response(0x8002, 0, &body)
    }

    /// A quote like the recorded one with another extraData and the PCR digest of `pcrs`.
    fn quote_over(&self, extra: &[u8]) -> Vec<u8> {
        let q = Quote::from_bytes(&self.quote).expect("recorded quote");
        let mut out = self.quote[..6].to_vec();
        out.extend(tpm2b(q.qualified_signer()));
        out.extend(tpm2b(extra));
        let fixed = 6 + 2 + q.qualified_signer().len() + 2 + q.extra_data().len();
        out.extend(&self.quote[fixed..self.quote.len() - 34]);
        let mut h = Sha256::new();
        for p in &self.pcrs {
            h.update(p);
        }
        out.extend(tpm2b(&h.finalize()));
        out
    }
}

impl Tpm for FakeTpm {
    fn transact(&self, c: &[u8]) -> io::Result<Vec<u8>> {
        assert_eq!(
            u32::from_be_bytes([c[2], c[3], c[4], c[5]]) as usize,
            c.len(),
            "commandSize"
        );
        if let Signing::Fail(code) = self.signing {
            return Ok(response(0x8001, code, &[]));
        }
        let code = u32::from_be_bytes([c[6], c[7], c[8], c[9]]);
        Ok(match code {
            // TPM2_NV_ReadPublic: TPMS_NV_PUBLIC with dataSize, then a name.
            0x169 => {
                assert_eq!(&c[10..14], &0x0140_0001u32.to_be_bytes());
                let mut public = 0x0140_0001u32.to_be_bytes().to_vec();
                public.extend(0x000bu16.to_be_bytes());
                public.extend(0x4206_0004u32.to_be_bytes());
                public.extend(tpm2b(&[]));
                public.extend((self.hcl.len() as u16).to_be_bytes());
                let mut body = tpm2b(&public);
                body.extend(tpm2b(&[0; 34]));
                response(0x8001, 0, &body)
            }
            // TPM2_NV_Read: size and offset are the last four bytes.
            0x14e => {
                assert_eq!(&c[10..14], &0x4000_0001u32.to_be_bytes(), "owner auth");
                let (size, offset) = (u16_at(c, c.len() - 4), u16_at(c, c.len() - 2));
                assert!(size <= 1024);
                let end = (offset + size).min(self.hcl.len());
                Self::sessions(&tpm2b(&self.hcl[offset..end]))
            }
            // TPM2_Quote: AK handle, a password session (13 bytes), then qualifyingData.
            0x158 => {
                assert_eq!(&c[10..14], &0x8100_0003u32.to_be_bytes(), "the AK");
                let at = 14 + 13;
                let extra = c[at + 2..at + 2 + u16_at(c, at)].to_vec();
                self.extra_data.lock().expect("lock").push(extra.clone());
                let (quote, sig) = match self.signing {
                    Signing::TestKey => {
                        let q = self.quote_over(&extra);
                        let key = rsa::pkcs1v15::SigningKey::<Sha256>::new(ak());
                        let sig = key.sign(&q).to_vec();
                        (q, sig)
                    }
                    _ => (self.quote.clone(), self.signature.clone()),
                };
                let mut params = tpm2b(&quote);
                params.extend(0x0014u16.to_be_bytes());
                params.extend(0x000bu16.to_be_bytes());
                params.extend(tpm2b(&sig));
                Self::sessions(&params)
            }
            // TPM2_PCR_Read: one SHA-256 selection of one byte.
            0x17e => {
                let select = &c[c.len() - 3..];
                let byte = select
                    .iter()
                    .position(|&b| b == 0xff)
                    .expect("a byte selected");
                let mut body = 7u32.to_be_bytes().to_vec();
                body.extend(1u32.to_be_bytes());
                body.extend(0x000bu16.to_be_bytes());
                body.push(3);
                body.extend(select);
                body.extend(8u32.to_be_bytes());
                for p in &self.pcrs[8 * byte..8 * byte + 8] {
                    let mut v = *p;
                    if matches!(self.signing, Signing::MovingPcrs) {
                        v[0] ^= 1;
                    }
                    body.extend(tpm2b(&v));
                }
                response(0x8001, 0, &body)
            }
            other => panic!("unexpected command {other:#x}"),
        })
    }
}

/// A fake TPM answering with the recorded v1 evidence, its certificates, and a time at
/// which its VCEK is valid.
fn recorded(signing: Signing) -> Option<(FakeTpm, Vec<Vec<u8>>, SystemTime)> {
    let dir = veil_tests::vectors::dir()?.join("trustee/az-snp-vtpm");
    let t = TrusteeEvidence::from_json(&std::fs::read(dir.join("evidence-v1.json")).expect("read"))
        .expect("parses");
    let vcek = Certificate::from_der(&t.certificates[0]).expect("VCEK");
    let at = vcek.not_before() + Duration::from_secs(24 * 3600);
    let tpm = FakeTpm {
        hcl: t.hcl_report,
        quote: t.quote,
        signature: t.signature,
        pcrs: t.pcrs,
        signing,
        extra_data: Mutex::new(Vec::new()),
    };
    Some((tpm, t.certificates, at))
}

fn az_policy() -> Policy {
    let mut p = Policy::genuine_snp();
    p.set_tee(&[TeeKind::AzSnpVtpm]);
    p
}

#[test]
fn the_attester_reads_the_hcl_report_and_quotes_with_sha256_of_report_data() {
    let Some((tpm, certificates, at)) = recorded(Signing::Recorded) else {
        return;
    };
    let hcl = tpm.hcl.clone();
    let attester = AzureAttester::new(&tpm);
    assert_eq!(attester.tee(), TeeKind::AzSnpVtpm);
    let mut evidence = attester.report([5; 64]).expect("evidence");
    assert_eq!(
        tpm.extra_data.lock().expect("lock").as_slice(),
        &[extra_data_for(&[5; 64]).to_vec()]
    );
    let vtpm = evidence.vtpm.clone().expect("vtpm part");
    assert_eq!(vtpm.hcl_report, hcl, "read back in 1024-byte chunks");
    assert_eq!(evidence.report, hcl[0x20..0x4c0]);
    assert_eq!(vtpm.pcrs.len(), 24);
    assert!(evidence.certificates.is_empty());
    // With the VCEK, the recorded answers verify (their nonce is Trustee's "challenge").
    evidence.certificates = certificates;
    let a = az_policy()
        .appraise_offline(&evidence, &Offline::nonce(b"challenge", at).expect("nonce"))
        .unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(a.vtpm().expect("vtpm").pcrs().len(), 24);
    let r = az_policy()
        .appraise_offline(&evidence, &Offline::report_data([5; 64], at))
        .map(|_| ())
        .expect_err("the recorded quote does not bind [5; 64]");
    assert!(r.failed(Check::QuoteNonce), "{r}");
}

#[test]
fn a_quote_by_the_ak_over_sha256_of_the_transcript_passes_quote_nonce() {
    use base64::Engine;
    use rsa::traits::PublicKeyParts;
    let Some((mut tpm, certificates, at)) = recorded(Signing::TestKey) else {
        return;
    };
    // Runtime claims holding the test AK (so REPORT_DATA no longer matches them: only
    // runtime_claims can fail).
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ak().n().to_bytes_be());
    let claims = format!(
        r#"{{"keys":[{{"kid":"HCLAkPub","key_ops":["sign"],"kty":"RSA","e":"AQAB","n":"{n}"}}]}}"#
    );
    let mut hcl = tpm.hcl[..RUNTIME_CLAIMS_OFFSET].to_vec();
    let len = claims.len() as u32;
    hcl[IGVM_HEADER_OFFSET..IGVM_HEADER_OFFSET + 4].copy_from_slice(&(len + 20).to_le_bytes());
    hcl[IGVM_HEADER_OFFSET + 16..IGVM_HEADER_OFFSET + 20].copy_from_slice(&len.to_le_bytes());
    hcl.extend(claims.as_bytes());
    tpm.hcl = hcl;
    let transcript = Transcript {
        purpose: Purpose::ClientSession,
        nonce: Nonce::new(&[9; 32]).expect("nonce"),
        spki_sha256: [1; 32],
        exporter: Some([2; 32]),
        wrap_pk: [3; 32],
        model_sha256: [4; 32],
        receipt_pk: [5; 32],
    };
    let mut evidence = AzureAttester::new(&tpm)
        .attest(&transcript)
        .expect("evidence");
    evidence.certificates = certificates;
    let r = az_policy()
        .appraise(&evidence, &Expected::new(&transcript, at))
        .map(|_| ())
        .expect_err("the claims are not the paravisor's");
    for passed in [
        Check::VtpmQuote,
        Check::PcrDigest,
        Check::QuoteNonce,
        Check::ReportSignature,
    ] {
        assert!(!r.failed(passed), "{passed}: {r}");
    }
    assert!(r.failed(Check::RuntimeClaims), "{r}");
    // Another verifier's nonce: the binding fails too.
    let other = Transcript {
        nonce: Nonce::new(&[8; 32]).expect("nonce"),
        ..transcript
    };
    let r = az_policy()
        .appraise(&evidence, &Expected::new(&other, at))
        .map(|_| ())
        .expect_err("another nonce");
    assert!(r.failed(Check::QuoteNonce), "{r}");
}

#[test]
fn tpm_errors_name_the_command() {
    let Some((tpm, _, _)) = recorded(Signing::Fail(0x18b)) else {
        return;
    };
    let e = AzureAttester::new(&tpm)
        .hcl_report()
        .expect_err("TPM error");
    assert!(matches!(
        e,
        AzureAttestError::Tpm {
            command: "TPM2_NV_ReadPublic",
            code: 0x18b
        }
    ));
    assert!(AzureAttester::new(&tpm).report([0; 64]).is_err());
}

#[test]
fn pcrs_that_change_under_every_quote_are_refused() {
    let Some((tpm, _, _)) = recorded(Signing::MovingPcrs) else {
        return;
    };
    let e = AzureAttester::new(&tpm)
        .vtpm_evidence(b"x")
        .expect_err("moving PCRs");
    assert!(matches!(e, AzureAttestError::PcrsChanged), "{e}");
    assert_eq!(tpm.extra_data.lock().expect("lock").len(), 3);
}

struct Garbage(Vec<u8>);

impl Tpm for Garbage {
    fn transact(&self, _: &[u8]) -> io::Result<Vec<u8>> {
        Ok(self.0.clone())
    }
}

#[test]
fn malformed_responses_are_errors_not_panics() {
    let ok_header = response(0x8001, 0, &[]);
    for n in 0..ok_header.len() {
        let e = AzureAttester::new(Garbage(ok_header[..n].to_vec())).hcl_report();
        assert!(
            matches!(e, Err(AzureAttestError::Response { .. })),
            "{n}: {e:?}"
        );
    }
    // A header whose size is not the response's.
    let mut lying = response(0x8001, 0, &[0; 4]);
    lying[5] += 1;
    assert!(AzureAttester::new(Garbage(lying)).pcrs().is_err());
    // A well-formed empty success where data is due.
    let attester = AzureAttester::new(Garbage(ok_header));
    assert!(attester.hcl_report().is_err());
    assert!(attester.quote(b"n").is_err());
    assert!(attester.pcrs().is_err());
}
