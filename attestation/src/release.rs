//! The key-release message: the model key sealed with HPKE (RFC 9180, Base mode,
//! X25519 / HKDF-SHA256 / AES-256-GCM) to the key-wrapping public key that appraised
//! evidence binds, with the report data and key id as associated data.
//!
//! ```text
//! info = "veil/v1/key-release"
//! aad  = REPORT_DATA (64) ‖ len(key_id) (1) ‖ key_id   (key_id as its 32 hex digits)
//! (enc, ct) = HPKE.SealBase(wrap_pk, info, aad, model_key[32])
//! ```
//!
//! [`KeyRelease::seal`] takes an [`Appraisal`] and nothing else to say where the key goes:
//! the wrapping key is the one the appraised evidence was verified to bind. An
//! [`crate::OfflineAppraisal`] (no transcript checked) cannot be passed.

use std::fmt;

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::appraisal::Appraisal;

/// The HPKE suite name on the wire.
pub const SUITE: &str = "x25519-hkdf-sha256-aes256gcm";
const INFO: &[u8] = b"veil/v1/key-release";
/// Bytes of a key id (the sealed model's, shown as 32 hex digits).
pub const KEY_ID_LEN: usize = 16;

/// Why a key-release message cannot be sealed or opened. Deliberately coarse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// Unknown suite.
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

    /// Opens a key-release message sealed to this key for this report data. The key is
    /// built in place on the heap, so no copy of it is left behind on the stack.
    ///
    /// # Errors
    /// [`ReleaseError`]; never says more than "does not open".
    pub fn open(
        &self,
        msg: &KeyRelease,
        report_data: &[u8; 64],
    ) -> Result<Box<Zeroizing<[u8; 32]>>, ReleaseError> {
        if msg.suite != SUITE {
            return Err(ReleaseError::Malformed("suite"));
        }
        let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&msg.enc)
            .map_err(|_| ReleaseError::Malformed("enc"))?;
        let aad = aad(report_data, &msg.key_id);
        let mut ctx = hpke::setup_receiver::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &self.secret,
            &enc,
            INFO,
        )
        .map_err(|_| ReleaseError::OpenFailed)?;
        let pt = Zeroizing::new(
            ctx.open(&msg.ct, &aad)
                .map_err(|_| ReleaseError::OpenFailed)?,
        );
        if pt.len() != 32 {
            return Err(ReleaseError::OpenFailed);
        }
        let mut key = Box::new(Zeroizing::new([0u8; 32]));
        key.copy_from_slice(&pt);
        Ok(key)
    }
}

fn aad(report_data: &[u8; 64], key_id: &[u8; KEY_ID_LEN]) -> Vec<u8> {
    let id = hex::encode(key_id);
    let mut aad = Vec::with_capacity(65 + id.len());
    aad.extend_from_slice(report_data);
    aad.push(id.len() as u8);
    aad.extend_from_slice(id.as_bytes());
    aad
}

/// The wire form of a released key (JSON). Every field but the suite has its fixed size,
/// checked when the message is decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRelease {
    /// Always [`SUITE`].
    pub suite: String,
    /// The key id the model key belongs to (from the key file and the sealed header),
    /// 32 hex digits.
    #[serde(with = "crate::wire::hex_bytes")]
    pub key_id: [u8; KEY_ID_LEN],
    /// HPKE encapsulated key, base64.
    #[serde(with = "crate::wire::b64_bytes")]
    pub enc: [u8; 32],
    /// HPKE ciphertext of the 32-byte model key (and its tag), base64.
    #[serde(with = "crate::wire::b64_bytes")]
    pub ct: [u8; 48],
    /// The REPORT_DATA of the evidence the sender appraised, base64.
    #[serde(with = "crate::wire::b64_bytes")]
    pub report_data: [u8; 64],
}

impl KeyRelease {
    /// Seals `model_key` to the wrapping key that `appraisal` verified the evidence binds,
    /// with the report data it verified. Only an [`Appraisal`] of fresh evidence can be
    /// given, and it alone says where the key goes.
    ///
    /// # Errors
    /// [`ReleaseError::BadWrappingKey`] if the bound key is not a valid X25519 key.
    pub fn seal(
        appraisal: &Appraisal,
        key_id: &[u8; KEY_ID_LEN],
        model_key: &[u8; 32],
    ) -> Result<Self, ReleaseError> {
        seal_to(
            &appraisal.binding().wrap_pk,
            appraisal.report_data(),
            key_id,
            model_key,
        )
    }
}

fn seal_to(
    wrap_pk: &[u8; 32],
    report_data: [u8; 64],
    key_id: &[u8; KEY_ID_LEN],
    model_key: &[u8; 32],
) -> Result<KeyRelease, ReleaseError> {
    let pk = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(wrap_pk)
        .map_err(|_| ReleaseError::BadWrappingKey)?;
    let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
        &OpModeS::Base,
        &pk,
        INFO,
        model_key,
        &aad(&report_data, key_id),
    )
    .map_err(|_| ReleaseError::BadWrappingKey)?;
    Ok(KeyRelease {
        suite: SUITE.to_owned(),
        key_id: *key_id,
        enc: enc
            .to_bytes()
            .as_slice()
            .try_into()
            .map_err(|_| ReleaseError::BadWrappingKey)?,
        ct: ct
            .as_slice()
            .try_into()
            .map_err(|_| ReleaseError::BadWrappingKey)?,
        report_data,
    })
}

/// Sealing without an appraisal: for tests that must show what a server does with a key
/// sent to the wrong place. Nothing in Veil releases a key this way.
pub mod danger {
    use super::{KeyRelease, ReleaseError, KEY_ID_LEN};

    /// Seals `model_key` to `wrap_pk` with `report_data`, vouched for by nothing.
    ///
    /// # Errors
    /// [`ReleaseError::BadWrappingKey`].
    pub fn seal_unappraised(
        wrap_pk: &[u8; 32],
        report_data: [u8; 64],
        key_id: &[u8; KEY_ID_LEN],
        model_key: &[u8; 32],
    ) -> Result<KeyRelease, ReleaseError> {
        super::seal_to(wrap_pk, report_data, key_id, model_key)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use super::*;
    use crate::attester::Attester;
    use crate::binding::{Nonce, Purpose, Transcript};
    use crate::{Expected, MockAttester, MockLaunch, MockPlatform, Policy};

    /// An appraisal of fresh evidence binding `wrap_pk`, and its report data.
    fn appraisal(wrap_pk: [u8; 32], nonce: u8) -> (Appraisal, [u8; 64]) {
        let now = SystemTime::now();
        let platform = MockPlatform::generate(now).expect("platform");
        let launch = MockLaunch::new(b"exe", BTreeMap::new());
        let policy = Policy::mock(platform.root(), &[launch.measurement()]);
        let transcript = Transcript {
            purpose: Purpose::ClientSession,
            nonce: Nonce::new(&[nonce; 32]).expect("nonce"),
            spki_sha256: [1; 32],
            exporter: Some([2; 32]),
            wrap_pk,
            model_sha256: [3; 32],
            receipt_pk: [5; 32],
        };
        let evidence = MockAttester::new(platform, launch)
            .attest(&transcript)
            .expect("attests");
        let a = policy
            .appraise(&evidence, &Expected::new(&transcript, now))
            .expect("accepted");
        (a, transcript.report_data())
    }

    #[test]
    fn a_sealed_key_opens_with_the_wrapping_key_and_report_data() {
        let wk = WrappingKey::generate();
        let (a, rd) = appraisal(wk.public(), 5);
        let msg = KeyRelease::seal(&a, &[1; 16], &[9; 32]).expect("seal");
        assert_eq!(**wk.open(&msg, &rd).expect("opens"), [9; 32]);
    }

    #[test]
    fn a_key_sealed_to_another_wrapping_key_does_not_open() {
        let (a, rd) = appraisal(WrappingKey::generate().public(), 5);
        let msg = KeyRelease::seal(&a, &[1; 16], &[9; 32]).expect("seal");
        assert_eq!(
            WrappingKey::generate().open(&msg, &rd),
            Err(ReleaseError::OpenFailed)
        );
    }

    #[test]
    fn other_report_data_or_key_id_does_not_open() {
        let wk = WrappingKey::generate();
        let (a, rd) = appraisal(wk.public(), 5);
        let msg = KeyRelease::seal(&a, &[1; 16], &[9; 32]).expect("seal");
        assert_eq!(wk.open(&msg, &[6; 64]), Err(ReleaseError::OpenFailed));
        let other_id = KeyRelease {
            key_id: [2; 16],
            ..msg.clone()
        };
        assert_eq!(wk.open(&other_id, &rd), Err(ReleaseError::OpenFailed));
        let bad = KeyRelease {
            suite: "other".into(),
            ..msg.clone()
        };
        assert!(matches!(
            wk.open(&bad, &rd),
            Err(ReleaseError::Malformed(_))
        ));
        // Wrong lengths and bad base64 cannot even be decoded into a message.
        let mut json: serde_json::Value = serde_json::to_value(&msg).expect("json");
        json["ct"] = "!!".into();
        assert!(serde_json::from_value::<KeyRelease>(json.clone()).is_err());
        json["ct"] = serde_json::to_value(&msg).expect("json")["ct"].clone();
        json["report_data"] = "AAAA".into();
        assert!(serde_json::from_value::<KeyRelease>(json).is_err());
    }

    #[test]
    fn the_wire_form_keeps_its_field_encodings() {
        let wk = WrappingKey::generate();
        let (a, _) = appraisal(wk.public(), 5);
        let msg = KeyRelease::seal(&a, &[0xab; 16], &[9; 32]).expect("seal");
        let json = serde_json::to_value(&msg).expect("json");
        assert_eq!(json["key_id"], "ab".repeat(16));
        assert_eq!(json["suite"], SUITE);
        assert_eq!(
            serde_json::from_value::<KeyRelease>(json).expect("decodes"),
            msg
        );
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
