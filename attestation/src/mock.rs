//! The mock platform: a software stand-in for the AMD secure processor.
//!
//! It holds a root (`ARK-Mock`) → intermediate (`SEV-Mock`) → signing key (`SEV-VCEK`,
//! productName `Mock`) chain of ECDSA P-384 keys, with the VCEK's TCB and hwID extensions
//! in AMD's encoding, and signs reports in the exact SNP layout. Its evidence goes
//! through the same chain, signature and appraisal code as real evidence; only the trust
//! anchor differs, and a verifier trusts it only when its policy names the root.
//!
//! # Security
//! The mock platform protects nothing: whoever holds its directory can sign any report.
//! It exists so that the whole system can be run and tested without SEV-SNP hardware.
//! This module does no I/O; the caller stores [`MockPlatform::files`].

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use der::asn1::{BitString, OctetString};
use der::{Decode, Encode};
use p384::ecdsa::SigningKey as EcKey;
use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate as X509, TbsCertificate, Version};
use zeroize::Zeroizing;

use crate::chain::{oid, Certificate};
use crate::evidence::{Evidence, TeeKind};
use crate::report::{guest_policy, offset, Product, Report, Tcb, REPORT_LEN, SIGNED_LEN};

/// Why the mock platform failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MockError {
    /// A file of the platform directory is missing.
    #[error("mock platform: {0} is missing")]
    Missing(&'static str),
    /// A file of the platform directory is malformed (the contents are never shown).
    #[error("mock platform: {0} is malformed")]
    Malformed(&'static str),
    /// The keys do not belong to the certificates.
    #[error("mock platform: {0} does not match its certificate")]
    KeyMismatch(&'static str),
    /// Certificate construction failed.
    #[error("mock platform: cannot build certificates: {0}")]
    Build(String),
}

/// One file of a mock platform directory.
pub struct MockFile {
    /// File name inside the directory.
    pub name: &'static str,
    /// Contents (secret files are zeroized on drop).
    pub contents: Zeroizing<Vec<u8>>,
    /// Whether the file holds a private key (store it with mode 0600).
    pub secret: bool,
}

/// Names of the files of a platform directory.
pub mod files {
    /// Root certificate (`ARK-Mock`), PEM: the trust anchor a verifier names.
    pub const ROOT: &str = "ark.pem";
    /// Root private key, PKCS#8 PEM.
    pub const ROOT_KEY: &str = "ark.key";
    /// Intermediate certificate (`SEV-Mock`), PEM.
    pub const INTERMEDIATE: &str = "ask.pem";
    /// Intermediate private key.
    pub const INTERMEDIATE_KEY: &str = "ask.key";
    /// Signing certificate (`SEV-VCEK`), PEM.
    pub const VCEK: &str = "vcek.pem";
    /// Signing private key.
    pub const VCEK_KEY: &str = "vcek.key";
}

/// Who signs a mock CRL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlSigner {
    /// The root (`ARK-Mock`): its CRL lists revoked intermediates, like AMD's.
    Root,
    /// The intermediate (`SEV-Mock`): its CRL lists revoked VCEKs.
    Intermediate,
}

/// The TCB the mock platform reports.
pub const MOCK_TCB: Tcb = Tcb {
    fmc: None,
    bootloader: 1,
    tee: 0,
    snp: 1,
    microcode: 1,
};
/// The firmware version the mock platform reports.
/// The common name of the mock platform's intermediate, the issuer of its VCEKs.
pub const MOCK_ASK_CN: &str = "SEV-Mock";
const MOCK_FIRMWARE: [u8; 3] = [1, 55, 0]; // major, minor, build
/// The guest ABI the mock launch requires (policy bits 15:0).
const MOCK_ABI: u64 = (1 << 8) | 51;

/// A mock secure processor: certificates and keys.
pub struct MockPlatform {
    root: Certificate,
    root_key: EcKey,
    intermediate: Certificate,
    intermediate_key: EcKey,
    vcek: Certificate,
    vcek_key: EcKey,
    chip_id: [u8; 64],
}

impl std::fmt::Debug for MockPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MockPlatform(MOCK root {})", self.root.fingerprint())
    }
}

fn name(cn: &str) -> Result<Name, MockError> {
    Name::from_str(&format!(
        "CN={cn},O=Veil MOCK platform (not AMD),OU=Engineering"
    ))
    .map_err(|e| MockError::Build(e.to_string()))
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .expect("the system CSPRNG works");
    out
}

fn ec_key() -> EcKey {
    loop {
        // A random 48-byte scalar is a valid key except with negligible probability.
        if let Ok(key) = EcKey::from_slice(&random::<48>()) {
            return key;
        }
    }
}

fn ext(id: der::asn1::ObjectIdentifier, value: Vec<u8>) -> Result<Extension, MockError> {
    Ok(Extension {
        extn_id: id,
        critical: false,
        extn_value: OctetString::new(value).map_err(|e| MockError::Build(e.to_string()))?,
    })
}

fn der_of<T: Encode>(v: &T) -> Result<Vec<u8>, MockError> {
    v.to_der().map_err(|e| MockError::Build(e.to_string()))
}

/// Issues a certificate for `subject_key`, signed by `issuer_key` (ECDSA P-384, SHA-384).
fn issue(
    subject: &str,
    issuer: &str,
    subject_key: &EcKey,
    issuer_key: &EcKey,
    serial: u8,
    extensions: Vec<Extension>,
    now: SystemTime,
) -> Result<Certificate, MockError> {
    let build = |e: der::Error| MockError::Build(e.to_string());
    let alg = AlgorithmIdentifierOwned {
        oid: oid::ECDSA_SHA384,
        parameters: None,
    };
    let spki_der = subject_key
        .verifying_key()
        .to_public_key_der()
        .map_err(|e| MockError::Build(e.to_string()))?;
    let validity = Validity {
        not_before: Time::try_from(now - Duration::from_secs(24 * 3600)).map_err(build)?,
        not_after: Time::try_from(now + Duration::from_secs(20 * 365 * 24 * 3600))
            .map_err(build)?,
    };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&[serial]).map_err(build)?,
        signature: alg.clone(),
        issuer: name(issuer)?,
        validity,
        subject: name(subject)?,
        subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes())
            .map_err(build)?,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    use signature::Signer;
    let sig: p384::ecdsa::Signature = issuer_key.sign(&der_of(&tbs)?);
    let cert = X509 {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(sig.to_der().as_bytes()).map_err(build)?,
    };
    Certificate::from_der(&der_of(&cert)?).map_err(|e| MockError::Build(e.to_string()))
}

fn vcek_extensions(chip_id: &[u8; 64], tcb: Tcb) -> Result<Vec<Extension>, MockError> {
    let int = |v: u8| der_of(&v);
    Ok(vec![
        ext(
            oid::PRODUCT_NAME,
            der_of(
                &der::asn1::Ia5StringRef::new("Mock")
                    .map_err(|e| MockError::Build(e.to_string()))?,
            )?,
        )?,
        ext(oid::BL_SPL, int(tcb.bootloader)?)?,
        ext(oid::TEE_SPL, int(tcb.tee)?)?,
        ext(oid::SNP_SPL, int(tcb.snp)?)?,
        ext(oid::UCODE_SPL, int(tcb.microcode)?)?,
        ext(oid::HW_ID, chip_id.to_vec())?,
    ])
}

impl MockPlatform {
    /// Creates a new platform: fresh keys, a fresh chip id, certificates valid from a day
    /// before `now` for twenty years.
    ///
    /// # Errors
    /// [`MockError::Build`] if certificate encoding fails.
    pub fn generate(now: SystemTime) -> Result<Self, MockError> {
        let (root_key, intermediate_key, vcek_key) = (ec_key(), ec_key(), ec_key());
        let chip_id = random::<64>();
        let ca = || -> Result<Vec<Extension>, MockError> {
            let bc = x509_cert::ext::pkix::BasicConstraints {
                ca: true,
                path_len_constraint: None,
            };
            Ok(vec![Extension {
                extn_id: der::asn1::ObjectIdentifier::new_unwrap("2.5.29.19"),
                critical: true,
                extn_value: OctetString::new(der_of(&bc)?)
                    .map_err(|e| MockError::Build(e.to_string()))?,
            }])
        };
        let root = issue("ARK-Mock", "ARK-Mock", &root_key, &root_key, 1, ca()?, now)?;
        let intermediate = issue(
            MOCK_ASK_CN,
            "ARK-Mock",
            &intermediate_key,
            &root_key,
            2,
            ca()?,
            now,
        )?;
        let vcek = issue(
            "SEV-VCEK",
            MOCK_ASK_CN,
            &vcek_key,
            &intermediate_key,
            0,
            vcek_extensions(&chip_id, MOCK_TCB)?,
            now,
        )?;
        Ok(MockPlatform {
            root,
            root_key,
            intermediate,
            intermediate_key,
            vcek,
            vcek_key,
            chip_id,
        })
    }

    /// The root certificate: what a verifier must name to trust this platform.
    pub fn root(&self) -> &Certificate {
        &self.root
    }

    /// The intermediate certificate (`SEV-Mock`).
    pub fn intermediate(&self) -> &Certificate {
        &self.intermediate
    }

    /// The signing certificate (`SEV-VCEK`).
    pub fn vcek(&self) -> &Certificate {
        &self.vcek
    }

    /// A certificate revocation list (DER), as AMD's KDS serves one per product: signed by
    /// the root ([`CrlSigner::Root`], listing intermediates) or by the intermediate
    /// ([`CrlSigner::Intermediate`], listing VCEKs); issued at `now`, next update due
    /// `valid_for` later; `revoked` are listed as revoked at `now`.
    ///
    /// # Errors
    /// [`MockError::Build`] if encoding fails.
    pub fn crl(
        &self,
        signer: CrlSigner,
        revoked: &[&Certificate],
        now: SystemTime,
        valid_for: Duration,
    ) -> Result<Vec<u8>, MockError> {
        use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
        let build = |e: der::Error| MockError::Build(e.to_string());
        let (issuer, key) = match signer {
            CrlSigner::Root => (&self.root, &self.root_key),
            CrlSigner::Intermediate => (&self.intermediate, &self.intermediate_key),
        };
        let alg = AlgorithmIdentifierOwned {
            oid: oid::ECDSA_SHA384,
            parameters: None,
        };
        let at = Time::try_from(now).map_err(build)?;
        let revoked = revoked
            .iter()
            .map(|c| {
                Ok(RevokedCert {
                    serial_number: SerialNumber::new(c.serial()).map_err(build)?,
                    revocation_date: at,
                    crl_entry_extensions: None,
                })
            })
            .collect::<Result<Vec<_>, MockError>>()?;
        let tbs = TbsCertList {
            version: Version::V2,
            signature: alg.clone(),
            issuer: issuer.subject_name().clone(),
            this_update: at,
            next_update: Some(Time::try_from(now + valid_for).map_err(build)?),
            revoked_certificates: (!revoked.is_empty()).then_some(revoked),
            crl_extensions: None,
        };
        use signature::Signer;
        let sig: p384::ecdsa::Signature = key.sign(&der_of(&tbs)?);
        der_of(&CertificateList {
            tbs_cert_list: tbs,
            signature_algorithm: alg,
            signature: BitString::from_bytes(sig.to_der().as_bytes()).map_err(build)?,
        })
    }

    /// The files that make up the platform directory.
    pub fn files(&self) -> Vec<MockFile> {
        // Each certificate, then its private key.
        let table = [
            (files::ROOT, &self.root, files::ROOT_KEY, &self.root_key),
            (
                files::INTERMEDIATE,
                &self.intermediate,
                files::INTERMEDIATE_KEY,
                &self.intermediate_key,
            ),
            (files::VCEK, &self.vcek, files::VCEK_KEY, &self.vcek_key),
        ];
        table
            .into_iter()
            .flat_map(|(cert_name, cert, key_name, key)| {
                let pem = key
                    .to_pkcs8_pem(p384::pkcs8::LineEnding::LF)
                    .expect("a P-384 key encodes");
                [
                    MockFile {
                        name: cert_name,
                        contents: Zeroizing::new(cert.to_pem().into_bytes()),
                        secret: false,
                    },
                    MockFile {
                        name: key_name,
                        contents: Zeroizing::new(pem.as_bytes().to_vec()),
                        secret: true,
                    },
                ]
            })
            .collect()
    }

    /// Loads a platform from its files; `read` returns a file's contents by name.
    ///
    /// # Errors
    /// [`MockError`] naming the missing or malformed file (never its contents).
    pub fn from_files(
        read: impl Fn(&'static str) -> Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Self, MockError> {
        let cert = |n: &'static str| -> Result<Certificate, MockError> {
            let bytes = read(n).ok_or(MockError::Missing(n))?;
            Certificate::from_pem(&bytes).map_err(|_| MockError::Malformed(n))
        };
        let key = |n: &'static str| -> Result<EcKey, MockError> {
            let bytes = read(n).ok_or(MockError::Missing(n))?;
            let text = std::str::from_utf8(&bytes).map_err(|_| MockError::Malformed(n))?;
            EcKey::from_pkcs8_pem(text).map_err(|_| MockError::Malformed(n))
        };
        let (root, intermediate, vcek) = (
            cert(files::ROOT)?,
            cert(files::INTERMEDIATE)?,
            cert(files::VCEK)?,
        );
        let (root_key, intermediate_key, vcek_key) = (
            key(files::ROOT_KEY)?,
            key(files::INTERMEDIATE_KEY)?,
            key(files::VCEK_KEY)?,
        );
        for (c, k, n) in [
            (&root, &root_key, files::ROOT_KEY),
            (&intermediate, &intermediate_key, files::INTERMEDIATE_KEY),
            (&vcek, &vcek_key, files::VCEK_KEY),
        ] {
            let public = k.verifying_key().to_encoded_point(false);
            if c.p384_key() != Some(public.as_bytes()) {
                return Err(MockError::KeyMismatch(n));
            }
        }
        let hwid = vcek
            .hardware_id()
            .ok_or(MockError::Malformed(files::VCEK))?;
        let chip_id: [u8; 64] = hwid
            .try_into()
            .map_err(|_| MockError::Malformed(files::VCEK))?;
        Ok(MockPlatform {
            root,
            root_key,
            intermediate,
            intermediate_key,
            vcek,
            vcek_key,
            chip_id,
        })
    }

    /// Signs a report for `launch` with the given report data, in the SNP v5 layout.
    pub fn sign_report(&self, launch: &MockLaunch, report_data: [u8; 64]) -> Report {
        let mut raw = [0u8; REPORT_LEN];
        let mut put = |off: usize, bytes: &[u8]| raw[off..off + bytes.len()].copy_from_slice(bytes);
        let tcb = MOCK_TCB.to_raw(Product::Mock).to_le_bytes();
        let mut policy = MOCK_ABI | guest_policy::SMT | guest_policy::RESERVED_ONE;
        if launch.debug {
            policy |= guest_policy::DEBUG;
        }
        let [major, minor, build] = MOCK_FIRMWARE;
        put(offset::VERSION, &5u32.to_le_bytes());
        put(offset::GUEST_SVN, &launch.guest_svn.to_le_bytes());
        put(offset::POLICY, &policy.to_le_bytes());
        put(offset::VMPL, &launch.vmpl.to_le_bytes());
        put(offset::SIGNATURE_ALGO, &1u32.to_le_bytes());
        put(offset::CURRENT_TCB, &tcb);
        put(offset::PLATFORM_INFO, &0x25u64.to_le_bytes());
        put(offset::REPORT_DATA, &report_data);
        put(offset::MEASUREMENT, &launch.measurement());
        put(offset::HOST_DATA, &launch.host_data());
        put(offset::REPORT_ID, &random::<32>());
        put(offset::REPORTED_TCB, &tcb);
        put(offset::CHIP_ID, &self.chip_id);
        put(offset::COMMITTED_TCB, &tcb);
        put(offset::CURRENT_VERSION, &[build, minor, major]);
        put(offset::COMMITTED_VERSION, &[build, minor, major]);
        let launch_tcb = launch
            .launch_tcb
            .map_or(tcb, |t| t.to_raw(Product::Mock).to_le_bytes());
        put(offset::LAUNCH_TCB, &launch_tcb);
        use signature::Signer;
        let sig: p384::ecdsa::Signature = self.vcek_key.sign(&raw[..SIGNED_LEN]);
        let (r, s) = sig.split_bytes();
        for i in 0..48 {
            raw[offset::SIGNATURE + i] = r[47 - i];
            raw[offset::SIGNATURE + 72 + i] = s[47 - i];
        }
        Report::from_raw_unchecked(raw)
    }

    /// Evidence for `launch` with this report data: the report, the VCEK, the
    /// intermediate and the root (a verifier trusts the root only if it names it).
    pub fn attest(&self, launch: &MockLaunch, report_data: [u8; 64]) -> Evidence {
        Evidence {
            tee: TeeKind::Mock,
            report: self.sign_report(launch, report_data).as_bytes().to_vec(),
            certificates: vec![
                self.vcek.as_der().to_vec(),
                self.intermediate.as_der().to_vec(),
                self.root.as_der().to_vec(),
            ],
            binding: None,
            vtpm: None,
        }
    }

    /// Evidence for `launch` and `transcript`: its report data, its binding stated (what
    /// [`crate::Attester::attest`] gives for a [`crate::MockAttester`]).
    pub fn issue(&self, launch: &MockLaunch, transcript: &crate::binding::Transcript) -> Evidence {
        crate::attester::bind(transcript, |rd| {
            Ok::<_, std::convert::Infallible>(self.attest(launch, rd))
        })
        .unwrap_or_else(|never| match never {})
    }
}

/// What the mock platform launched: the executable and its launch configuration.
/// The launch measurement covers both, so a different binary or configuration gives a
/// different measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockLaunch {
    /// SHA-384 of the executable's bytes.
    pub executable_sha384: [u8; 48],
    /// Launch configuration: sorted `key = value` pairs (sealed model digest, listen
    /// address, TEE options, ...).
    pub config: BTreeMap<String, String>,
    /// Whether the guest policy allows debugging (a debug launch; appraisal rejects it
    /// unless the policy allows debug).
    pub debug: bool,
    /// VMPL the report is requested at.
    pub vmpl: u32,
    /// GUEST_SVN.
    pub guest_svn: u32,
    /// The TCB the guest was launched at, when the platform's firmware has been updated
    /// since (LAUNCH_TCB); `None`: launched at the current TCB.
    pub launch_tcb: Option<Tcb>,
}

impl MockLaunch {
    /// A launch of an executable with these bytes and this configuration.
    pub fn new(executable: &[u8], config: BTreeMap<String, String>) -> Self {
        let mut executable_sha384 = [0u8; 48];
        executable_sha384.copy_from_slice(digest::digest(&digest::SHA384, executable).as_ref());
        MockLaunch {
            executable_sha384,
            config,
            debug: false,
            vmpl: 0,
            guest_svn: 0,
            launch_tcb: None,
        }
    }

    /// The launch of `veil-server`: its executable and the configuration it measures
    /// (`veil.tee`, `veil.listen`, `veil.model_sha256`). `veil mock-platform measure` and
    /// verifiers compute the expected measurement from the same values.
    pub fn server(executable: &[u8], listen: &str, model_sha256: &[u8; 32]) -> Self {
        use crate::launch_config::{LISTEN, MODEL_SHA256, TEE};
        let config = BTreeMap::from([
            (TEE.to_owned(), "mock".to_owned()),
            (LISTEN.to_owned(), listen.to_owned()),
            (MODEL_SHA256.to_owned(), hex::encode(model_sha256)),
        ]);
        MockLaunch::new(executable, config)
    }

    /// The canonical encoding of the configuration
    /// ([`crate::launch_config::canonical`]).
    pub fn canonical_config(&self) -> Vec<u8> {
        crate::launch_config::canonical(&self.config)
    }

    /// MEASUREMENT = SHA-384("VEIL-MOCK-MEASUREMENT-v1\0" ‖ SHA-384(executable) ‖
    /// SHA-384(canonical config) ‖ debug byte).
    pub fn measurement(&self) -> [u8; 48] {
        let mut ctx = digest::Context::new(&digest::SHA384);
        ctx.update(b"VEIL-MOCK-MEASUREMENT-v1\0");
        ctx.update(&self.executable_sha384);
        ctx.update(digest::digest(&digest::SHA384, &self.canonical_config()).as_ref());
        ctx.update(&[u8::from(self.debug)]);
        let mut out = [0u8; 48];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// HOST_DATA = SHA-256 of the canonical configuration, as for a real launch
    /// ([`crate::launch_config::host_data`]).
    pub fn host_data(&self) -> [u8; 32] {
        crate::launch_config::host_data(&self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::appraisal::{Offline, OfflineAppraisal, Rejection};
    use crate::check::Check;
    use crate::policy::Policy;

    fn snp_at_least(snp: u8) -> crate::policy::MinimumTcb {
        crate::policy::MinimumTcb {
            snp,
            ..Default::default()
        }
    }

    fn launch() -> MockLaunch {
        let mut config = BTreeMap::new();
        config.insert("model_sha256".to_owned(), "ab".repeat(32));
        config.insert("listen".to_owned(), "127.0.0.1:8443".to_owned());
        MockLaunch::new(b"server executable bytes", config)
    }

    /// The REPORT_DATA of the fixture's evidence.
    const REPORT_DATA: [u8; 64] = [7; 64];

    /// A fresh platform, a launch on it, and a policy naming the platform's root and the
    /// launch's measurement: where most tests start.
    struct Fixture {
        now: SystemTime,
        platform: MockPlatform,
        launch: MockLaunch,
        policy: Policy,
    }

    impl Fixture {
        fn new(launch: MockLaunch) -> Self {
            let now = SystemTime::now();
            let platform = MockPlatform::generate(now).expect("generate");
            let policy = Policy::mock(platform.root(), &[launch.measurement()]);
            Fixture {
                now,
                platform,
                launch,
                policy,
            }
        }

        /// The launch's evidence over [`REPORT_DATA`].
        fn evidence(&self) -> Evidence {
            self.platform.attest(&self.launch, REPORT_DATA)
        }

        /// The policy's offline verdict on `evidence`, expecting [`REPORT_DATA`] now.
        fn appraise(&self, evidence: &Evidence) -> Result<OfflineAppraisal, Rejection> {
            self.policy
                .appraise_offline(evidence, &Offline::report_data(REPORT_DATA, self.now))
        }
    }

    #[test]
    fn mock_evidence_verifies_when_the_root_is_named() {
        let f = Fixture::new(launch());
        let appraisal = f.appraise(&f.evidence()).expect("accepted");
        assert!(appraisal.is_mock());
        assert_eq!(appraisal.product(), Product::Mock);
    }

    #[test]
    fn mock_evidence_is_rejected_without_the_root() {
        let mut f = Fixture::new(launch());
        let evidence = f.evidence();
        f.policy.mock_roots.clear();
        let rejection = f.appraise(&evidence).expect_err("rejected");
        assert!(rejection.failed(Check::TrustAnchor), "{rejection}");
        let named = format!(
            "MOCK root {} is not one the verifier trusts",
            &f.platform.root().fingerprint()[..16]
        );
        assert!(rejection.to_string().contains(&named), "{rejection}");

        let other = MockPlatform::generate(f.now).expect("generate");
        f.policy = Policy::mock(other.root(), &[f.launch.measurement()]);
        let rejection = f.appraise(&evidence).expect_err("rejected");
        assert!(rejection.failed(Check::TrustAnchor), "{rejection}");
        assert!(rejection.to_string().contains(&named), "{rejection}");
    }

    #[test]
    fn default_policy_does_not_accept_mock_evidence() {
        let mut f = Fixture::new(launch());
        f.policy = Policy::genuine_snp();
        let mut evidence = f.evidence();
        let rejection = f.appraise(&evidence).expect_err("rejected");
        assert!(rejection.failed(Check::TeeKind), "{rejection}");
        // Claiming to be SNP does not help: the chain does not lead to an AMD root.
        evidence.tee = TeeKind::Snp;
        let rejection = f.appraise(&evidence).expect_err("rejected");
        assert!(rejection.failed(Check::TrustAnchor), "{rejection}");
    }

    #[test]
    fn executable_and_config_change_the_measurement() {
        let base = launch();
        let mut other_exe = MockLaunch::new(b"another executable", base.config.clone());
        assert_ne!(other_exe.measurement(), base.measurement());
        other_exe = base.clone();
        other_exe
            .config
            .insert("listen".to_owned(), "0.0.0.0:8443".to_owned());
        assert_ne!(other_exe.measurement(), base.measurement());
        assert_ne!(other_exe.host_data(), base.host_data());
        let mut debug = base.clone();
        debug.debug = true;
        assert_ne!(debug.measurement(), base.measurement());
    }

    #[test]
    fn the_policy_can_name_the_models_the_evidence_may_bind() {
        let mut f = Fixture::new(launch());
        let transcript = crate::binding::Transcript {
            purpose: crate::binding::Purpose::ClientSession,
            nonce: crate::binding::Nonce::new(&[1; 32]).expect("nonce"),
            spki_sha256: [2; 32],
            exporter: Some([3; 32]),
            wrap_pk: [4; 32],
            model_sha256: [0xAB; 32],
            receipt_pk: [5; 32],
        };
        let rd = transcript.report_data();
        let mut evidence = f.platform.issue(&f.launch, &transcript);
        let expected = Offline::report_data(rd, f.now);
        f.policy
            .appraise_offline(&evidence, &expected)
            .expect("any model by default");
        f.policy.models = vec![[0xab; 32]];
        f.policy
            .appraise_offline(&evidence, &expected)
            .expect("the named model");
        f.policy.models = vec![[0xcd; 32]];
        let rejection = f
            .policy
            .appraise_offline(&evidence, &expected)
            .expect_err("another model");
        assert!(rejection.failed(Check::Model), "{rejection}");
        assert_eq!(rejection.failures().count(), 1, "{rejection}");
        evidence.binding = None;
        let rejection = f
            .policy
            .appraise_offline(&evidence, &expected)
            .expect_err("no binding");
        assert!(rejection.failed(Check::Model), "{rejection}");
    }

    #[test]
    fn debug_launch_is_rejected_by_default() {
        let mut launch = launch();
        launch.debug = true;
        let mut f = Fixture::new(launch);
        let evidence = f.evidence();
        let rejection = f.appraise(&evidence).expect_err("rejected");
        assert!(rejection.failed(Check::Debug), "{rejection}");
        f.policy.allow_debug = true;
        f.appraise(&evidence).expect("debug allowed");
    }

    #[test]
    fn a_product_specific_minimum_tcb_overrides_all() {
        let mut f = Fixture::new(launch());
        let evidence = f.evidence();
        f.policy
            .min_tcb
            .push((None, snp_at_least(MOCK_TCB.snp + 1)));
        f.policy
            .min_tcb
            .push((Some(Product::Mock), snp_at_least(MOCK_TCB.snp)));
        f.appraise(&evidence).expect("the Mock entry applies");
        f.policy.min_tcb.retain(|(p, _)| p.is_none());
        let rejection = f.appraise(&evidence).expect_err("all applies");
        assert!(rejection.failed(Check::MinimumTcb), "{rejection}");
    }

    #[test]
    fn a_guest_launched_below_the_minimum_tcb_is_rejected_after_an_update() {
        // The platform now runs the minimum, but the guest was launched before the update.
        let mut f = Fixture::new(launch());
        f.policy.min_tcb.push((None, snp_at_least(MOCK_TCB.snp)));
        f.appraise(&f.evidence())
            .expect("launched at the current TCB");
        f.launch.launch_tcb = Some(Tcb {
            snp: MOCK_TCB.snp - 1,
            ..MOCK_TCB
        });
        let rejection = f
            .appraise(&f.evidence())
            .expect_err("launched below the minimum");
        let failed: Vec<String> = rejection
            .failures()
            .map(|o| format!("{}: {}", o.check, o.detail))
            .collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(
            failed[0].starts_with("minimum_tcb: LAUNCH_TCB")
                && failed[0].ends_with("launched below the minimum in snp"),
            "{failed:?}"
        );
        // Without a minimum, the launch TCB is not constrained.
        f.policy.min_tcb.clear();
        f.appraise(&f.evidence()).expect("no minimum");
    }

    #[test]
    fn files_are_each_certificate_then_its_secret_key() {
        let platform = MockPlatform::generate(SystemTime::now()).expect("generate");
        let listed: Vec<(&str, bool)> = platform
            .files()
            .iter()
            .map(|f| (f.name, f.secret))
            .collect();
        assert_eq!(
            listed,
            [
                (files::ROOT, false),
                (files::ROOT_KEY, true),
                (files::INTERMEDIATE, false),
                (files::INTERMEDIATE_KEY, true),
                (files::VCEK, false),
                (files::VCEK_KEY, true),
            ]
        );
        for f in platform.files() {
            let text = std::str::from_utf8(&f.contents).expect("PEM is text");
            let label = if f.secret {
                "PRIVATE KEY"
            } else {
                "CERTIFICATE"
            };
            assert!(
                text.starts_with(&format!("-----BEGIN {label}-----\n")),
                "{}",
                f.name
            );
        }
    }

    #[test]
    fn platform_survives_a_round_trip_through_its_files() {
        let f = Fixture::new(launch());
        let files = f.platform.files();
        let again = MockPlatform::from_files(|n| {
            files
                .iter()
                .find(|f| f.name == n)
                .map(|f| f.contents.clone())
        })
        .expect("loads");
        assert_eq!(again.root(), f.platform.root());
        f.appraise(&again.attest(&f.launch, REPORT_DATA))
            .expect("accepted");
        // A missing key is named.
        let err = MockPlatform::from_files(|n| {
            (n != files::VCEK_KEY)
                .then(|| {
                    files
                        .iter()
                        .find(|f| f.name == n)
                        .map(|f| f.contents.clone())
                })
                .flatten()
        })
        .expect_err("missing key");
        assert!(err.to_string().contains("vcek.key"));
    }

    #[test]
    fn mock_report_has_the_snp_layout() {
        let platform = MockPlatform::generate(SystemTime::now()).expect("generate");
        let launch = launch();
        let report = platform.sign_report(&launch, [9; 64]);
        let parsed = Report::from_bytes(report.as_bytes()).expect("parses as SNP");
        assert_eq!(parsed.version(), 5);
        assert_eq!(parsed.report_data(), [9; 64]);
        assert_eq!(parsed.measurement(), launch.measurement());
        assert_eq!(parsed.host_data(), launch.host_data());
        assert!(parsed.nonzero_reserved().is_empty());
    }
}
