//! The key-release message: the model key sealed with HPKE (RFC 9180, Base mode,
//! X25519 / HKDF-SHA256 / AES-256-GCM) to the key-wrapping public key that appraised
//! evidence binds, with the report data and key id as associated data.
//!
//! ```text
//! info = "veil/v1/key-release"
//! aad  = REPORT_DATA (64) ‖ len(key_id) (1) ‖ key_id   (key_id as its 32 hex digits)
//!        [‖ "veil/v1/lease" ‖ ttl_s (u64 BE) ‖ grace_s (u64 BE)]   (with a lease only)
//! (enc, ct) = HPKE.SealBase(wrap_pk, info, aad, model_key[32])
//! ```
//!
//! A release may carry a [`Lease`]: its terms are part of the associated data, so the
//! server learns them from the answer that only a holder of the model key could make
//! (nobody on the path can lengthen or drop a lease without the key failing to open).
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
        if let Some(lease) = &msg.lease {
            lease.check()?;
        }
        let aad = aad(report_data, &msg.key_id, msg.lease.as_ref());
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

fn aad(report_data: &[u8; 64], key_id: &[u8; KEY_ID_LEN], lease: Option<&Lease>) -> Vec<u8> {
    let id = hex::encode(key_id);
    let mut aad = Vec::with_capacity(65 + id.len() + LEASE_LABEL.len() + 16);
    aad.extend_from_slice(report_data);
    aad.push(id.len() as u8);
    aad.extend_from_slice(id.as_bytes());
    if let Some(lease) = lease {
        aad.extend_from_slice(LEASE_LABEL);
        aad.extend_from_slice(&lease.ttl_s.to_be_bytes());
        aad.extend_from_slice(&lease.grace_s.to_be_bytes());
    }
    aad
}

const LEASE_LABEL: &[u8] = b"veil/v1/lease";

/// The terms on which a key is released for a time: the server may serve with it for
/// `ttl_s` seconds from when it asked, renewing before then with fresh evidence; when the
/// sender cannot be reached it may go on for `grace_s` more; then it must lock, drop the
/// engine and wipe the weights. Relative seconds, so that no clocks need agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// Seconds the key may be used, from the request that brought it.
    pub ttl_s: u64,
    /// Seconds more, after `ttl_s`, while the sender cannot be reached.
    pub grace_s: u64,
}

impl Lease {
    /// The longest lease a server accepts: 30 days.
    pub const MAX_TTL_S: u64 = 30 * 24 * 3600;

    /// A lease of `ttl_s` seconds with `grace_s` seconds of grace.
    ///
    /// # Errors
    /// [`ReleaseError::Malformed`] unless 1 ≤ `ttl_s` ≤ [`Lease::MAX_TTL_S`] and
    /// `grace_s` ≤ `ttl_s`.
    pub fn new(ttl_s: u64, grace_s: u64) -> Result<Self, ReleaseError> {
        let lease = Lease { ttl_s, grace_s };
        lease.check()?;
        Ok(lease)
    }

    /// Whether the terms are ones a server accepts (as [`Lease::new`]).
    ///
    /// # Errors
    /// [`ReleaseError::Malformed`] naming the lease.
    pub fn check(&self) -> Result<(), ReleaseError> {
        if self.ttl_s == 0 || self.ttl_s > Self::MAX_TTL_S || self.grace_s > self.ttl_s {
            return Err(ReleaseError::Malformed(
                "lease: ttl_s must be 1 s to 30 days, and grace_s at most ttl_s",
            ));
        }
        Ok(())
    }

    /// How long the key may be used.
    pub fn ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.ttl_s)
    }

    /// How long past the ttl while the sender cannot be reached.
    pub fn grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.grace_s)
    }
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
    /// With a lease, its terms (authenticated with the key: part of the associated data).
    /// Absent, the key is released for good (a server that predates leases refuses a
    /// release that has one, naming the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
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
        Self::seal_leased(appraisal, key_id, model_key, None)
    }

    /// [`KeyRelease::seal`], for the time `lease` says (or for good, with `None`).
    ///
    /// # Errors
    /// As [`KeyRelease::seal`], or [`ReleaseError::Malformed`] for a lease no server
    /// accepts.
    pub fn seal_leased(
        appraisal: &Appraisal,
        key_id: &[u8; KEY_ID_LEN],
        model_key: &[u8; 32],
        lease: Option<Lease>,
    ) -> Result<Self, ReleaseError> {
        seal_to(
            &appraisal.binding().wrap_pk,
            appraisal.report_data(),
            key_id,
            model_key,
            lease,
        )
    }
}

fn seal_to(
    wrap_pk: &[u8; 32],
    report_data: [u8; 64],
    key_id: &[u8; KEY_ID_LEN],
    model_key: &[u8; 32],
    lease: Option<Lease>,
) -> Result<KeyRelease, ReleaseError> {
    if let Some(lease) = &lease {
        lease.check()?;
    }
    let pk = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(wrap_pk)
        .map_err(|_| ReleaseError::BadWrappingKey)?;
    let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
        &OpModeS::Base,
        &pk,
        INFO,
        model_key,
        &aad(&report_data, key_id, lease.as_ref()),
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
        lease,
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
        super::seal_to(wrap_pk, report_data, key_id, model_key, None)
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
    fn a_leases_terms_are_authenticated_with_the_key() {
        let wk = WrappingKey::generate();
        let (a, rd) = appraisal(wk.public(), 5);
        let lease = Lease::new(60, 10).expect("lease");
        let msg = KeyRelease::seal_leased(&a, &[1; 16], &[9; 32], Some(lease)).expect("seal");
        assert_eq!(**wk.open(&msg, &rd).expect("opens"), [9; 32]);
        let json = serde_json::to_value(&msg).expect("json");
        assert_eq!(
            json["lease"],
            serde_json::json!({ "ttl_s": 60, "grace_s": 10 })
        );
        // Someone on the path lengthens the lease, shortens the grace, or drops it.
        for changed in [
            Some(Lease::new(3600, 10).expect("lease")),
            Some(Lease::new(60, 0).expect("lease")),
            None,
        ] {
            let forged = KeyRelease {
                lease: changed,
                ..msg.clone()
            };
            assert_eq!(wk.open(&forged, &rd), Err(ReleaseError::OpenFailed));
        }
        // A lease cannot be added to a release made for good either.
        let forever = KeyRelease::seal(&a, &[1; 16], &[9; 32]).expect("seal");
        assert!(serde_json::to_value(&forever)
            .expect("json")
            .get("lease")
            .is_none());
        let leased = KeyRelease {
            lease: Some(lease),
            ..forever
        };
        assert_eq!(wk.open(&leased, &rd), Err(ReleaseError::OpenFailed));
    }

    #[test]
    fn a_lease_no_server_accepts_is_neither_sealed_nor_opened() {
        assert!(Lease::new(0, 0).is_err());
        assert!(Lease::new(10, 11).is_err());
        assert!(Lease::new(Lease::MAX_TTL_S + 1, 0).is_err());
        let wk = WrappingKey::generate();
        let (a, rd) = appraisal(wk.public(), 5);
        let bad = Lease {
            ttl_s: 0,
            grace_s: 0,
        };
        assert!(KeyRelease::seal_leased(&a, &[1; 16], &[9; 32], Some(bad)).is_err());
        let msg = KeyRelease::seal(&a, &[1; 16], &[9; 32]).expect("seal");
        let with_bad = KeyRelease {
            lease: Some(bad),
            ..msg
        };
        assert!(matches!(
            wk.open(&with_bad, &rd),
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
