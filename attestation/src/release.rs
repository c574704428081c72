//! The key-release message: the model key sealed with HPKE (RFC 9180, Base mode,
//! X25519 / HKDF-SHA256 / AES-256-GCM) to the key-wrapping public key that appraised
//! evidence binds, with the report data and key id as associated data.
//!
//! ```text
//! info = "veil/v1/key-release"
//! aad  = REPORT_DATA (64) ‖ len(key_id) (1) ‖ key_id
//! (enc, ct) = HPKE.SealBase(wrap_pk, info, aad, model_key[32])
//! ```

use std::fmt;

use base64::{engine::general_purpose::STANDARD, Engine};
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::policy::Appraisal;

/// The HPKE suite name on the wire.
pub const SUITE: &str = "x25519-hkdf-sha256-aes256gcm";
const INFO: &[u8] = b"veil/v1/key-release";
/// Longest key id accepted.
pub const MAX_KEY_ID: usize = 64;

/// Why a key-release message cannot be sealed or opened. Deliberately coarse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// Unknown suite, bad base64 or lengths.
    #[error("key-release message is malformed: {0}")]
    Malformed(&'static str),
    /// The wrapping public key in the evidence is not a valid X25519 key.
    #[error("the evidence binds no valid key-wrapping key")]
    BadWrappingKey,
    /// Decryption failed: sealed to another key, or another report data or key id.
    #[error("key-release message does not open with this server's wrapping key and report data")]
    OpenFailed,
}

/// The server's in-memory key-wrapping key (X25519). Never logged, never cloned.
pub struct WrappingKey {
    secret: <X25519HkdfSha256 as hpke::Kem>::PrivateKey,
    public: [u8; 32],
}

impl fmt::Debug for WrappingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappingKey(public {})", hex::encode(self.public))
    }
}

impl WrappingKey {
    /// A fresh key from the system CSPRNG.
    pub fn generate() -> Self {
        let (secret, public) = X25519HkdfSha256::gen_keypair();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&public.to_bytes());
        WrappingKey {
            secret,
            public: bytes,
        }
    }

    /// The public key, bound in REPORT_DATA.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// Opens a key-release message sealed to this key for this report data.
    ///
    /// # Errors
    /// [`ReleaseError`]; never says more than "does not open".
    pub fn open(
        &self,
        msg: &KeyRelease,
        report_data: &[u8; 64],
    ) -> Result<Zeroizing<[u8; 32]>, ReleaseError> {
        let (enc, ct, key_id) = msg.decode()?;
        let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&enc)
            .map_err(|_| ReleaseError::Malformed("enc"))?;
        let aad = aad(report_data, &key_id);
        let mut ctx = hpke::setup_receiver::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &self.secret,
            &enc,
            INFO,
        )
        .map_err(|_| ReleaseError::OpenFailed)?;
        let pt = Zeroizing::new(ctx.open(&ct, &aad).map_err(|_| ReleaseError::OpenFailed)?);
        let key: [u8; 32] = pt
            .as_slice()
            .try_into()
            .map_err(|_| ReleaseError::OpenFailed)?;
        Ok(Zeroizing::new(key))
    }
}

fn aad(report_data: &[u8; 64], key_id: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(65 + key_id.len());
    aad.extend_from_slice(report_data);
    aad.push(key_id.len() as u8);
    aad.extend_from_slice(key_id);
    aad
}

type Decoded = (Vec<u8>, Vec<u8>, Vec<u8>);

/// The wire form of a released key (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRelease {
    /// Always [`SUITE`].
    pub suite: String,
    /// The key id the model key belongs to (from the key file and the sealed header).
    pub key_id: String,
    /// HPKE encapsulated key, base64.
    pub enc: String,
    /// HPKE ciphertext of the 32-byte model key, base64.
    pub ct: String,
    /// The REPORT_DATA of the evidence the sender appraised, base64.
    pub report_data: String,
}

impl KeyRelease {
    /// Seals `model_key` to the wrapping key bound by `appraisal` (whose binding says
    /// which key that is). Taking an [`Appraisal`] means only appraised evidence can
    /// receive a key.
    ///
    /// # Errors
    /// [`ReleaseError::BadWrappingKey`] or [`ReleaseError::Malformed`] (key id too long).
    pub fn seal(
        appraisal: &Appraisal,
        wrap_pk: &[u8; 32],
        key_id: &str,
        model_key: &[u8; 32],
    ) -> Result<Self, ReleaseError> {
        if key_id.len() > MAX_KEY_ID {
            return Err(ReleaseError::Malformed("key_id"));
        }
        let report_data = appraisal.report_data();
        let pk = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(wrap_pk)
            .map_err(|_| ReleaseError::BadWrappingKey)?;
        let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &OpModeS::Base,
            &pk,
            INFO,
            model_key,
            &aad(&report_data, key_id.as_bytes()),
        )
        .map_err(|_| ReleaseError::BadWrappingKey)?;
        Ok(KeyRelease {
            suite: SUITE.to_owned(),
            key_id: key_id.to_owned(),
            enc: STANDARD.encode(enc.to_bytes()),
            ct: STANDARD.encode(ct),
            report_data: STANDARD.encode(report_data),
        })
    }

    /// The report data the sender says it appraised.
    ///
    /// # Errors
    /// [`ReleaseError::Malformed`].
    pub fn report_data(&self) -> Result<[u8; 64], ReleaseError> {
        let raw = STANDARD
            .decode(&self.report_data)
            .map_err(|_| ReleaseError::Malformed("report_data"))?;
        raw.try_into()
            .map_err(|_| ReleaseError::Malformed("report_data"))
    }

    /// Decodes `(enc, ct, key_id)`.
    fn decode(&self) -> Result<Decoded, ReleaseError> {
        if self.suite != SUITE {
            return Err(ReleaseError::Malformed("suite"));
        }
        if self.key_id.len() > MAX_KEY_ID {
            return Err(ReleaseError::Malformed("key_id"));
        }
        let enc = STANDARD
            .decode(&self.enc)
            .map_err(|_| ReleaseError::Malformed("enc"))?;
        let ct = STANDARD
            .decode(&self.ct)
            .map_err(|_| ReleaseError::Malformed("ct"))?;
        if enc.len() != 32 || ct.len() != 48 {
            return Err(ReleaseError::Malformed("lengths"));
        }
        Ok((enc, ct, self.key_id.as_bytes().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use super::*;
    use crate::{Expected, MockLaunch, MockPlatform, Policy};

    fn appraisal(report_data: [u8; 64]) -> Appraisal {
        let now = SystemTime::now();
        let platform = MockPlatform::generate(now).expect("platform");
        let launch = MockLaunch::new(b"exe", BTreeMap::new());
        let evidence = platform.attest(&launch, report_data);
        Policy::mock(&platform.root().fingerprint(), &[launch.measurement()])
            .appraise(&evidence, &Expected::new(report_data, now))
            .expect("accepted")
    }

    #[test]
    fn a_sealed_key_opens_with_the_wrapping_key_and_report_data() {
        let wk = WrappingKey::generate();
        let a = appraisal([5; 64]);
        let msg = KeyRelease::seal(&a, &wk.public(), "k1", &[9; 32]).expect("seal");
        assert_eq!(*wk.open(&msg, &[5; 64]).expect("opens"), [9; 32]);
    }

    #[test]
    fn a_key_sealed_to_another_wrapping_key_does_not_open() {
        let a = appraisal([5; 64]);
        let msg =
            KeyRelease::seal(&a, &WrappingKey::generate().public(), "k1", &[9; 32]).expect("seal");
        assert_eq!(
            WrappingKey::generate().open(&msg, &[5; 64]),
            Err(ReleaseError::OpenFailed)
        );
    }

    #[test]
    fn other_report_data_or_key_id_does_not_open() {
        let wk = WrappingKey::generate();
        let a = appraisal([5; 64]);
        let msg = KeyRelease::seal(&a, &wk.public(), "k1", &[9; 32]).expect("seal");
        assert_eq!(wk.open(&msg, &[6; 64]), Err(ReleaseError::OpenFailed));
        let other_id = KeyRelease {
            key_id: "k2".into(),
            ..msg.clone()
        };
        assert_eq!(wk.open(&other_id, &[5; 64]), Err(ReleaseError::OpenFailed));
        let bad = KeyRelease {
            ct: "!!".into(),
            ..msg
        };
        assert!(matches!(
            wk.open(&bad, &[5; 64]),
            Err(ReleaseError::Malformed(_))
        ));
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let wk = WrappingKey::generate();
        assert_eq!(
            format!("{wk:?}"),
            format!("WrappingKey(public {})", hex::encode(wk.public()))
        );
    }
}
