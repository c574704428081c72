//! Revocation: the certificate revocation lists (CRLs) a policy names.
//!
//! AMD publishes one CRL per product, signed by the product's ARK (RSA-PSS, SHA-384),
//! that lists the ASKs and ASVKs AMD has revoked. A CRL may also come from an
//! intermediate and list VCEKs (the mock platform can issue one). When a policy names
//! CRLs, appraisal requires a current CRL from the evidence's root, signed by that root,
//! and refuses the evidence if its intermediate, or its VCEK/VLEK under a CRL from the
//! intermediate, is listed. A policy that names no CRL does not check revocation.
//!
//! This module does no I/O: the caller reads the files and hands over their bytes.

use std::fmt;
use std::time::SystemTime;

use der::{Decode, Reader as _};
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_cert::time::Time;

use crate::chain::{oid, Certificate};
use crate::check::{Check, Outcomes};

/// Why bytes are not a CRL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    /// Neither DER nor PEM (`X509 CRL`) of an X.509 certificate revocation list.
    #[error("not an X.509 CRL in DER or PEM: {reason}")]
    Malformed {
        /// What the decoder said.
        reason: String,
    },
}

/// `TBSCertList` (RFC 5280 §5.1). `x509-cert`'s own type requires the version field,
/// which a v1 CRL leaves out; this one does not.
#[derive(Clone, Debug, PartialEq, Eq, der::Sequence)]
struct TbsCertList {
    version: Option<x509_cert::Version>,
    signature: AlgorithmIdentifierOwned,
    issuer: x509_cert::name::Name,
    this_update: Time,
    next_update: Option<Time>,
    revoked_certificates: Option<Vec<x509_cert::crl::RevokedCert>>,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    crl_extensions: Option<x509_cert::ext::Extensions>,
}

/// `CertificateList` (RFC 5280 §5.1).
#[derive(Clone, Debug, PartialEq, Eq, der::Sequence)]
struct CertificateList {
    tbs_cert_list: TbsCertList,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: der::asn1::BitString,
}

/// An X.509 certificate revocation list (v1 or v2), with the exact bytes its issuer signed.
#[derive(Clone, PartialEq, Eq)]
pub struct Crl {
    tbs: Vec<u8>,
    list: CertificateList,
}

impl fmt::Debug for Crl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Crl(issued by {:?}, {} revoked, this update {})",
            self.issuer_cn(),
            self.revoked_count(),
            self.list.tbs_cert_list.this_update
        )
    }
}

fn malformed(e: impl fmt::Display) -> CrlError {
    CrlError::Malformed {
        reason: e.to_string(),
    }
}

impl Crl {
    /// Parses DER.
    ///
    /// # Errors
    /// [`CrlError::Malformed`].
    pub fn from_der(der: &[u8]) -> Result<Self, CrlError> {
        let list = CertificateList::from_der(der).map_err(malformed)?;
        // The signature covers the TBS bytes as they were sent, not a re-encoding.
        let mut reader = der::SliceReader::new(der).map_err(malformed)?;
        let tbs = reader
            .sequence(|r| {
                let tbs = r.tlv_bytes()?;
                r.tlv_bytes()?;
                r.tlv_bytes()?;
                Ok(tbs.to_vec())
            })
            .map_err(malformed)?;
        Ok(Crl { tbs, list })
    }

    /// Parses one DER CRL, or one PEM block labelled `X509 CRL`.
    ///
    /// # Errors
    /// [`CrlError::Malformed`].
    pub fn from_pem_or_der(bytes: &[u8]) -> Result<Self, CrlError> {
        if bytes.first() == Some(&0x30) {
            return Crl::from_der(bytes);
        }
        let (label, der) = der::pem::decode_vec(bytes).map_err(malformed)?;
        if label != "X509 CRL" {
            return Err(malformed(format!(
                "a PEM {label:?} block, not \"X509 CRL\""
            )));
        }
        Crl::from_der(&der)
    }

    /// The issuer's common name.
    pub fn issuer_cn(&self) -> Option<String> {
        crate::chain::common_name(&self.list.tbs_cert_list.issuer)
    }

    /// Whether `cert`'s subject is this CRL's issuer (by the whole name, not only the CN).
    pub fn issued_by_name_of(&self, cert: &Certificate) -> bool {
        &self.list.tbs_cert_list.issuer == cert.subject_name()
    }

    /// When the CRL was issued (thisUpdate).
    pub fn this_update(&self) -> SystemTime {
        self.list.tbs_cert_list.this_update.to_system_time()
    }

    /// When the next CRL is due (nextUpdate), if the CRL says.
    pub fn next_update(&self) -> Option<SystemTime> {
        self.list
            .tbs_cert_list
            .next_update
            .map(|t| t.to_system_time())
    }

    /// How many certificates the CRL lists.
    pub fn revoked_count(&self) -> usize {
        self.list
            .tbs_cert_list
            .revoked_certificates
            .as_ref()
            .map_or(0, Vec::len)
    }

    /// The revocation date of the certificate with this serial number, if it is listed.
    pub fn revocation_of(&self, cert: &Certificate) -> Option<String> {
        let serial = cert.serial();
        self.list
            .tbs_cert_list
            .revoked_certificates
            .as_ref()?
            .iter()
            .find(|r| r.serial_number.as_bytes() == serial)
            .map(|r| r.revocation_date.to_string())
    }

    /// Whether the CRL carries a valid signature by `issuer`'s key (RSA-PSS/SHA-384 as
    /// AMD signs, or ECDSA P-384/SHA-384 as the mock platform signs) and names it as issuer.
    pub fn is_signed_by(&self, issuer: &Certificate) -> bool {
        let alg = &self.list.signature_algorithm;
        if *alg != self.list.tbs_cert_list.signature || !self.issued_by_name_of(issuer) {
            return false;
        }
        let Some(sig) = self.list.signature.as_bytes() else {
            return false;
        };
        if alg.oid == oid::RSASSA_PSS {
            issuer.verify_rsa_pss_sha384(&self.tbs, sig)
        } else if alg.oid == oid::ECDSA_SHA384 {
            issuer.verify_p384(&self.tbs, sig, true)
        } else {
            false
        }
    }

    /// Why the CRL is not current at `now`, if it is not.
    fn stale_at(&self, now: SystemTime) -> Option<String> {
        let t = &self.list.tbs_cert_list;
        if self.this_update() > now {
            return Some(format!("was issued in the future ({})", t.this_update));
        }
        match t.next_update {
            Some(next) if next.to_system_time() < now => Some(format!(
                "expired at its nextUpdate {next}: fetch a fresh one"
            )),
            _ => None,
        }
    }

    fn summary(&self) -> String {
        let t = &self.list.tbs_cert_list;
        match t.next_update {
            Some(next) => format!("CRL of {} (next update {next})", t.this_update),
            None => format!("CRL of {}", t.this_update),
        }
    }
}

/// The CRLs of `crls` issued (by name) by `issuer`, each checked for its signature and
/// currency; problems are pushed to `problems`.
fn current_from<'c>(
    crls: &'c [Crl],
    issuer: &Certificate,
    now: SystemTime,
    problems: &mut Vec<String>,
) -> Vec<&'c Crl> {
    let name = issuer.subject_cn().unwrap_or_default();
    crls.iter()
        .filter(|c| c.issued_by_name_of(issuer))
        .filter(|c| {
            if !c.is_signed_by(issuer) {
                problems.push(format!(
                    "a CRL that names {name} as issuer is not signed by it"
                ));
                return false;
            }
            if let Some(why) = c.stale_at(now) {
                problems.push(format!("the {name} {} {why}", c.summary()));
                return false;
            }
            true
        })
        .collect()
}

/// Check 6 of appraisal: `intermediate` is not revoked by a current CRL from `root`, and
/// `vek` not by a CRL from `intermediate` (if the policy has one). `named` is how many
/// CRL files the policy names: fewer loaded CRLs than that fails closed.
pub(crate) fn check_revocation(
    crls: &[Crl],
    named: usize,
    [root, intermediate, vek]: [&Certificate; 3],
    now: SystemTime,
    out: &mut Outcomes,
) {
    if crls.is_empty() && named == 0 {
        out.skip(Check::Revocation, "the policy names no CRL");
        return;
    }
    if crls.len() < named {
        out.fail(
            Check::Revocation,
            format!(
                "the policy names {named} CRL files but {} were loaded with it",
                crls.len()
            ),
        );
        return;
    }
    let cn = |c: &Certificate| c.subject_cn().unwrap_or_default();
    let mut problems = Vec::new();
    let from_root = current_from(crls, root, now, &mut problems);
    if from_root.is_empty() && problems.is_empty() {
        let issuers: Vec<String> = crls
            .iter()
            .map(|c| c.issuer_cn().unwrap_or_else(|| "?".to_owned()))
            .collect();
        problems.push(format!(
            "no CRL from {} (the policy's CRLs are from {}): every product it accepts needs one",
            cn(root),
            issuers.join(", ")
        ));
    }
    let from_intermediate = current_from(crls, intermediate, now, &mut problems);
    let mut passed = Vec::new();
    for (issuer, subject, lists) in [
        (root, intermediate, from_root),
        (intermediate, vek, from_intermediate),
    ] {
        for crl in lists {
            match crl.revocation_of(subject) {
                Some(date) => problems.push(format!(
                    "{} (serial {}) was revoked on {date} by the {} {}",
                    cn(subject),
                    hex::encode(subject.serial()),
                    cn(issuer),
                    crl.summary()
                )),
                None => passed.push(format!(
                    "{} not revoked by the {} {}",
                    cn(subject),
                    cn(issuer),
                    crl.summary()
                )),
            }
        }
    }
    if problems.is_empty() {
        out.pass(Check::Revocation, passed.join("; "));
    } else {
        out.fail(Check::Revocation, problems.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    // A CRL made by OpenSSL (not by this code), so that parsing and the RSA-PSS check are
    // tested against an independent implementation. See tests/data/crl/README.md.
    const TEST_ARK: &[u8] = include_bytes!("../tests/data/crl/ark-test.pem");
    const TEST_ASK: &[u8] = include_bytes!("../tests/data/crl/ask-test.pem");
    const TEST_CRL_DER: &[u8] = include_bytes!("../tests/data/crl/crl-test.der");
    const TEST_CRL_PEM: &[u8] = include_bytes!("../tests/data/crl/crl-test.pem");

    fn ark() -> Certificate {
        Certificate::from_pem(TEST_ARK).expect("fixture ARK")
    }

    #[test]
    fn an_openssl_rsa_pss_crl_parses_and_verifies_under_its_issuer_only() {
        let crl = Crl::from_pem_or_der(TEST_CRL_DER).expect("DER CRL");
        assert_eq!(crl, Crl::from_pem_or_der(TEST_CRL_PEM).expect("PEM CRL"));
        assert_eq!(crl.issuer_cn().as_deref(), Some("ARK-Test"));
        assert_eq!(crl.revoked_count(), 1);
        assert!(crl.is_signed_by(&ark()));
        assert!(crl.next_update().expect("nextUpdate") > crl.this_update());

        // AMD's Genoa ARK did not sign it; neither did the revoked certificate's key.
        let genoa = crate::chain::amd_roots(crate::Product::Genoa).expect("roots");
        assert!(!crl.is_signed_by(&genoa.ark));
        let ask = Certificate::from_pem(TEST_ASK).expect("fixture ASK");
        assert!(!crl.is_signed_by(&ask));

        // The revoked serial 0x2A changed to 0x2B: same issuer, broken signature.
        let mut bad = TEST_CRL_DER.to_vec();
        let at = bad
            .windows(3)
            .position(|w| w == [0x02, 0x01, 0x2a])
            .expect("the revoked serial in the DER");
        bad[at + 2] = 0x2b;
        let bad = Crl::from_der(&bad).expect("still parses");
        assert!(bad.issued_by_name_of(&ark()));
        assert!(!bad.is_signed_by(&ark()));
    }

    #[test]
    fn a_crl_in_amds_name_but_not_by_its_key_is_refused() {
        let forged = Crl::from_der(include_bytes!("../tests/data/crl/crl-forged-milan.der"))
            .expect("parses");
        let milan = crate::chain::amd_roots(crate::Product::Milan).expect("roots");
        assert!(
            forged.issued_by_name_of(&milan.ark),
            "the exact name of ARK-Milan"
        );
        assert!(!forged.is_signed_by(&milan.ark));
        let genoa = crate::chain::amd_roots(crate::Product::Genoa).expect("roots");
        assert!(!forged.issued_by_name_of(&genoa.ark));
    }

    #[test]
    fn a_version_1_crl_without_a_version_field_parses_and_verifies() {
        let crl = Crl::from_der(include_bytes!("../tests/data/crl/crl-test-v1.der"))
            .expect("a v1 CRL parses");
        assert_eq!(crl.list.tbs_cert_list.version, None);
        assert!(crl.is_signed_by(&ark()));
        let ask = Certificate::from_pem(TEST_ASK).expect("fixture ASK");
        assert!(crl.revocation_of(&ask).is_some());
    }

    #[test]
    fn the_listed_serial_is_revoked_and_others_are_not() {
        let crl = Crl::from_der(TEST_CRL_DER).expect("CRL");
        let ask = Certificate::from_pem(TEST_ASK).expect("fixture ASK");
        assert_eq!(hex::encode(ask.serial()), "2a");
        assert!(crl.revocation_of(&ask).is_some());
        assert!(crl.revocation_of(&ark()).is_none());
    }

    #[test]
    fn a_crl_is_current_only_between_its_updates() {
        let crl = Crl::from_der(TEST_CRL_DER).expect("CRL");
        let issued = crl.this_update();
        assert!(crl.stale_at(issued + Duration::from_secs(3600)).is_none());
        let early = crl
            .stale_at(issued - Duration::from_secs(3600))
            .expect("before thisUpdate");
        assert!(early.contains("future"), "{early}");
        let next = crl.next_update().expect("nextUpdate");
        let late = crl
            .stale_at(next + Duration::from_secs(1))
            .expect("after nextUpdate");
        assert!(late.contains("fetch a fresh one"), "{late}");
    }

    mod appraisal {
        use std::collections::BTreeMap;
        use std::time::{Duration, SystemTime};

        use crate::appraisal::{Offline, Rejection};
        use crate::check::{Check, Status};
        use crate::mock::{CrlSigner, MockLaunch, MockPlatform};
        use crate::policy::Policy;
        use crate::revocation::Crl;

        const DAY: Duration = Duration::from_secs(24 * 3600);

        struct Setup {
            now: SystemTime,
            platform: MockPlatform,
            launch: MockLaunch,
        }

        fn setup() -> Setup {
            let now = SystemTime::now();
            Setup {
                now,
                platform: MockPlatform::generate(now).expect("platform"),
                launch: MockLaunch::new(b"server", BTreeMap::new()),
            }
        }

        impl Setup {
            fn crl(&self, signer: CrlSigner, revoked: &[&crate::Certificate]) -> Crl {
                let der = self
                    .platform
                    .crl(signer, revoked, self.now - DAY, 7 * DAY)
                    .expect("CRL");
                Crl::from_der(&der).expect("parses")
            }

            fn policy(&self, crls: Vec<Crl>) -> Policy {
                let mut policy = Policy::mock(self.platform.root(), &[self.launch.measurement()]);
                policy.crl_files = (0..crls.len()).map(|i| format!("{i}.crl")).collect();
                for crl in crls {
                    policy.add_crl(crl);
                }
                policy
            }

            fn appraise(&self, policy: &Policy) -> Result<String, Rejection> {
                let evidence = self.platform.attest(&self.launch, [3; 64]);
                let appraisal =
                    policy.appraise_offline(&evidence, &Offline::report_data([3; 64], self.now))?;
                let outcome = appraisal
                    .outcomes()
                    .iter()
                    .find(|o| o.check == Check::Revocation)
                    .expect("a revocation outcome");
                assert_eq!(outcome.status, Status::Passed, "{outcome:?}");
                Ok(outcome.detail.clone())
            }
        }

        /// Only the revocation check failed, and its detail says `needle`.
        fn only_revocation_failed(rejection: &Rejection, needle: &str) {
            let failed: Vec<Check> = rejection.failures().map(|o| o.check).collect();
            assert_eq!(failed, [Check::Revocation], "{rejection}");
            assert!(rejection.to_string().contains(needle), "{rejection}");
        }

        #[test]
        fn without_crls_revocation_is_not_checked() {
            let s = setup();
            let evidence = s.platform.attest(&s.launch, [3; 64]);
            let appraisal = s
                .policy(Vec::new())
                .appraise_offline(&evidence, &Offline::report_data([3; 64], s.now))
                .expect("accepted");
            let outcome = appraisal
                .outcomes()
                .iter()
                .find(|o| o.check == Check::Revocation)
                .expect("outcome");
            assert_eq!(outcome.status, Status::Skipped);
        }

        #[test]
        fn a_current_crl_from_the_root_accepts_a_chain_it_does_not_list() {
            let s = setup();
            // The root's CRL lists serial 00, the VCEK's serial; but the root did not
            // issue the VCEK, so that entry is about another certificate.
            let crl = s.crl(CrlSigner::Root, &[s.platform.vcek()]);
            let detail = s.appraise(&s.policy(vec![crl])).expect("accepted");
            assert!(
                detail.contains("SEV-Mock not revoked by the ARK-Mock CRL of"),
                "{detail}"
            );
        }

        #[test]
        fn a_revoked_intermediate_is_rejected() {
            let s = setup();
            let crl = s.crl(CrlSigner::Root, &[s.platform.intermediate()]);
            let rejection = s.appraise(&s.policy(vec![crl])).expect_err("revoked");
            only_revocation_failed(&rejection, "SEV-Mock (serial 02) was revoked on");
        }

        #[test]
        fn a_revoked_vcek_is_rejected_under_a_crl_from_the_intermediate() {
            let s = setup();
            let root = s.crl(CrlSigner::Root, &[]);
            let clean = s.crl(CrlSigner::Intermediate, &[]);
            let detail = s
                .appraise(&s.policy(vec![root.clone(), clean]))
                .expect("accepted");
            assert!(
                detail.contains("SEV-VCEK not revoked by the SEV-Mock CRL"),
                "{detail}"
            );

            let revoked = s.crl(CrlSigner::Intermediate, &[s.platform.vcek()]);
            let rejection = s
                .appraise(&s.policy(vec![root, revoked]))
                .expect_err("revoked");
            only_revocation_failed(&rejection, "SEV-VCEK (serial 00) was revoked on");
        }

        #[test]
        fn a_crl_from_the_intermediate_alone_is_not_enough() {
            let s = setup();
            let crl = s.crl(CrlSigner::Intermediate, &[]);
            let rejection = s.appraise(&s.policy(vec![crl])).expect_err("no root CRL");
            only_revocation_failed(&rejection, "no CRL from ARK-Mock");
        }

        #[test]
        fn a_stale_or_future_crl_fails_closed() {
            let s = setup();
            let expired = s
                .platform
                .crl(CrlSigner::Root, &[], s.now - 10 * DAY, 7 * DAY)
                .expect("CRL");
            let rejection = s
                .appraise(&s.policy(vec![Crl::from_der(&expired).expect("parses")]))
                .expect_err("expired");
            only_revocation_failed(&rejection, "fetch a fresh one");

            let future = s
                .platform
                .crl(CrlSigner::Root, &[], s.now + DAY, 7 * DAY)
                .expect("CRL");
            let rejection = s
                .appraise(&s.policy(vec![Crl::from_der(&future).expect("parses")]))
                .expect_err("future");
            only_revocation_failed(&rejection, "issued in the future");
        }

        #[test]
        fn a_crl_under_the_same_name_from_another_key_is_refused() {
            let s = setup();
            // Another mock platform has a root with the same name, ARK-Mock, but its key
            // did not sign this platform's chain: its CRL must not count, revoked or not.
            let other = MockPlatform::generate(s.now).expect("platform");
            let forged = other
                .crl(CrlSigner::Root, &[], s.now - DAY, 7 * DAY)
                .expect("CRL");
            let rejection = s
                .appraise(&s.policy(vec![Crl::from_der(&forged).expect("parses")]))
                .expect_err("forged");
            only_revocation_failed(&rejection, "is not signed by it");
        }

        #[test]
        fn crls_named_but_not_loaded_fail_closed() {
            let s = setup();
            let mut policy = s.policy(Vec::new());
            policy.crl_files = vec!["genoa.crl".to_owned()];
            let rejection = s.appraise(&policy).expect_err("not loaded");
            only_revocation_failed(&rejection, "names 1 CRL files but 0 were loaded");
        }
    }

    proptest::proptest! {
        #[test]
        fn no_changed_byte_keeps_the_signature_or_panics(at in 0usize..4096, byte: u8) {
            let mut der = TEST_CRL_DER.to_vec();
            let at = at % der.len();
            proptest::prop_assume!(der[at] != byte);
            der[at] = byte;
            if let Ok(crl) = Crl::from_pem_or_der(&der) {
                proptest::prop_assert!(!crl.is_signed_by(&ark()));
                let _ = (crl.issuer_cn(), crl.next_update(), crl.revocation_of(&ark()));
            }
        }
    }

    #[test]
    fn garbage_and_certificates_are_not_crls() {
        assert!(Crl::from_pem_or_der(b"\x30\x03\x02\x01\x00").is_err());
        assert!(Crl::from_pem_or_der(b"hello").is_err());
        let err = Crl::from_pem_or_der(TEST_ARK).expect_err("a certificate");
        assert!(err.to_string().contains("CERTIFICATE"), "{err}");
    }
}
