//! REPORT_DATA: the digest that binds evidence to a verifier's nonce, the TLS channel,
//! the key-wrapping key and the sealed model. This is the one place the layout lives
//! (documented in `docs/protocol.md`).
//!
//! ```text
//! T = "VEIL-REPORT-DATA-v2\0"        20 bytes
//!   ‖ flags                           1  (bit 0: an exporter value is bound)
//!   ‖ purpose                         1  (1 session, 2 broker pull, 3 offline)
//!   ‖ len(nonce) ‖ nonce              1 + 16..=64
//!   ‖ SHA-256(TLS leaf SPKI DER)      32 (zeros for purpose 2 and 3)
//!   ‖ TLS exporter (RFC 9266)         32 (zeros when flag bit 0 is clear)
//!   ‖ X25519 wrapping public key      32 (zeros once no key is accepted)
//!   ‖ sealed model SHA-256            32 (zeros while unknown)
//!   ‖ Ed25519 receipt public key      32 (zeros when the server signs no receipts)
//! REPORT_DATA = SHA-512(T)
//! ```
//!
//! Version 2 added the receipt key (`docs/receipts.md`). A version-1 client refuses a
//! version-2 server's evidence, naming the field it does not know (`receipt_pk`); a
//! version-2 client refuses a version-1 server's, naming the field it lacks.

use ring::digest;
use serde::{Deserialize, Serialize};

/// Domain separation string, NUL-terminated.
pub const DOMAIN: &[u8; 20] = b"VEIL-REPORT-DATA-v2\0";
/// Flag bit 0: the TLS exporter of the connection is bound.
pub const FLAG_EXPORTER: u8 = 0x01;
/// Shortest nonce accepted.
pub const MIN_NONCE: usize = 16;
/// Longest nonce accepted.
pub const MAX_NONCE: usize = 64;
/// RFC 9266 exporter label.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// What the evidence is for: hashed, so evidence for one purpose is useless for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// A client (user, or owner pushing a key) talking to the server.
    ClientSession,
    /// The server asking a key broker for the key.
    BrokerPull,
    /// Offline evidence, e.g. a self-test.
    Offline,
}

impl Purpose {
    fn byte(self) -> u8 {
        match self {
            Purpose::ClientSession => 1,
            Purpose::BrokerPull => 2,
            Purpose::Offline => 3,
        }
    }
}

/// Why a nonce is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindingError {
    /// The nonce length is out of range.
    #[error("nonce must be {MIN_NONCE}..={MAX_NONCE} bytes, got {found}")]
    NonceLength {
        /// Bytes given.
        found: usize,
    },
    /// The nonce is not base64url.
    #[error("nonce is not base64url")]
    NonceEncoding,
}

/// A verifier's nonce: 16 to 64 bytes, checked once when it is made or decoded, so every
/// [`Transcript`] holds a valid one. On the wire it is base64url without padding (padding
/// is tolerated on input).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce {
    bytes: [u8; MAX_NONCE],
    len: u8,
}

impl Nonce {
    /// A nonce of these bytes.
    ///
    /// # Errors
    /// [`BindingError::NonceLength`] unless 16..=64 bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, BindingError> {
        let n = bytes.len();
        if !(MIN_NONCE..=MAX_NONCE).contains(&n) {
            return Err(BindingError::NonceLength { found: n });
        }
        let mut out = [0u8; MAX_NONCE];
        out[..n].copy_from_slice(bytes);
        Ok(Nonce {
            bytes: out,
            len: n as u8,
        })
    }

    /// `LEN` fresh bytes from the system CSPRNG (`LEN` in 16..=64).
    ///
    /// # Panics
    /// If `LEN` is out of range (a constant, so a programming error) or the system
    /// CSPRNG fails.
    pub fn random<const LEN: usize>() -> Self {
        let mut b = [0u8; LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .expect("the system CSPRNG works");
        Nonce::new(&b).expect("a nonce length in 16..=64")
    }

    /// Decodes base64url (padding tolerated).
    ///
    /// # Errors
    /// [`BindingError::NonceEncoding`] or [`BindingError::NonceLength`].
    pub fn from_base64url(text: &str) -> Result<Self, BindingError> {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('=').as_bytes())
            .map_err(|_| BindingError::NonceEncoding)?;
        Nonce::new(&raw)
    }

    /// base64url without padding.
    pub fn to_base64url(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.as_bytes())
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nonce({})", hex::encode(self.as_bytes()))
    }
}

impl Serialize for Nonce {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64url())
    }
}

impl<'de> Deserialize<'de> for Nonce {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Nonce::from_base64url(&text).map_err(serde::de::Error::custom)
    }
}

/// The server-side values of the binding, sent inside the evidence so the verifier can
/// recompute the digest (the verifier supplies its nonce, SPKI hash and exporter itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// Flags (bit 0: exporter bound).
    pub flags: u8,
    /// Purpose.
    pub purpose: Purpose,
    /// X25519 key-wrapping public key, hex.
    #[serde(with = "crate::wire::hex_bytes")]
    pub wrap_pk: [u8; 32],
    /// SHA-256 of the sealed model's plaintext (from its authenticated header), hex.
    #[serde(with = "crate::wire::hex_bytes")]
    pub model_sha256: [u8; 32],
    /// The Ed25519 public key that signs this server's receipts, hex (zeros: none).
    #[serde(with = "crate::wire::hex_bytes")]
    pub receipt_pk: [u8; 32],
}

/// Everything REPORT_DATA binds.
#[derive(Debug, Clone, Copy)]
pub struct Transcript {
    /// Purpose of the evidence.
    pub purpose: Purpose,
    /// The verifier's fresh nonce.
    pub nonce: Nonce,
    /// SHA-256 of the server's TLS leaf SubjectPublicKeyInfo (DER).
    pub spki_sha256: [u8; 32],
    /// RFC 9266 exporter of the connection, if bound.
    pub exporter: Option<[u8; 32]>,
    /// The server's X25519 wrapping public key.
    pub wrap_pk: [u8; 32],
    /// The sealed model's plaintext SHA-256.
    pub model_sha256: [u8; 32],
    /// The server's Ed25519 receipt-signing public key (zeros: it signs none).
    pub receipt_pk: [u8; 32],
}

impl Transcript {
    /// The flags byte this transcript implies.
    pub fn flags(&self) -> u8 {
        if self.exporter.is_some() {
            FLAG_EXPORTER
        } else {
            0
        }
    }

    /// The server-side part that travels in the evidence.
    pub fn binding(&self) -> Binding {
        Binding {
            flags: self.flags(),
            purpose: self.purpose,
            wrap_pk: self.wrap_pk,
            model_sha256: self.model_sha256,
            receipt_pk: self.receipt_pk,
        }
    }

    /// The transcript bytes `T` (never sent; hashed).
    pub fn to_bytes(&self) -> Vec<u8> {
        let nonce = self.nonce.as_bytes();
        let mut t = Vec::with_capacity(20 + 3 + nonce.len() + 5 * 32);
        t.extend_from_slice(DOMAIN);
        t.push(self.flags());
        t.push(self.purpose.byte());
        t.push(nonce.len() as u8);
        t.extend_from_slice(nonce);
        t.extend_from_slice(&self.spki_sha256);
        t.extend_from_slice(&self.exporter.unwrap_or([0; 32]));
        t.extend_from_slice(&self.wrap_pk);
        t.extend_from_slice(&self.model_sha256);
        t.extend_from_slice(&self.receipt_pk);
        t
    }

    /// REPORT_DATA = SHA-512(T).
    pub fn report_data(&self) -> [u8; 64] {
        let d = digest::digest(&digest::SHA512, &self.to_bytes());
        let mut out = [0u8; 64];
        out.copy_from_slice(d.as_ref());
        out
    }
}

/// SHA-256 of a DER SubjectPublicKeyInfo.
pub fn spki_sha256(spki_der: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, spki_der).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(nonce: &[u8]) -> Transcript {
        Transcript {
            purpose: Purpose::ClientSession,
            nonce: Nonce::new(nonce).expect("valid nonce"),
            spki_sha256: [1; 32],
            exporter: Some([2; 32]),
            wrap_pk: [3; 32],
            model_sha256: [4; 32],
            receipt_pk: [5; 32],
        }
    }

    #[test]
    fn transcript_layout_is_as_documented() {
        let nonce = [9u8; 32];
        let t = sample(&nonce).to_bytes();
        assert_eq!(t.len(), 20 + 1 + 1 + 1 + 32 + 5 * 32);
        assert_eq!(&t[..20], DOMAIN);
        assert_eq!(t[20], FLAG_EXPORTER);
        assert_eq!(t[21], 1);
        assert_eq!(t[22], 32);
        assert_eq!(&t[23..55], &nonce);
        assert_eq!(&t[55..87], &[1; 32]);
        assert_eq!(&t[t.len() - 64..t.len() - 32], &[4; 32]);
        assert_eq!(&t[t.len() - 32..], &[5; 32]);
    }

    #[test]
    fn every_field_changes_the_digest() {
        let nonce = [9u8; 32];
        let base = sample(&nonce).report_data();
        let variants = [
            Transcript {
                nonce: Nonce::new(&[8u8; 32]).expect("valid"),
                ..sample(&nonce)
            },
            Transcript {
                purpose: Purpose::BrokerPull,
                ..sample(&nonce)
            },
            Transcript {
                spki_sha256: [0; 32],
                ..sample(&nonce)
            },
            Transcript {
                exporter: None,
                ..sample(&nonce)
            },
            Transcript {
                exporter: Some([7; 32]),
                ..sample(&nonce)
            },
            Transcript {
                wrap_pk: [0; 32],
                ..sample(&nonce)
            },
            Transcript {
                model_sha256: [0; 32],
                ..sample(&nonce)
            },
            Transcript {
                receipt_pk: [0; 32],
                ..sample(&nonce)
            },
        ];
        for v in variants {
            assert_ne!(v.report_data(), base, "{v:?}");
        }
    }

    #[test]
    fn rejects_short_and_long_nonces() {
        assert_eq!(
            Nonce::new(&[0; 15]),
            Err(BindingError::NonceLength { found: 15 })
        );
        assert_eq!(
            Nonce::new(&[0; 65]),
            Err(BindingError::NonceLength { found: 65 })
        );
        assert!(Nonce::new(&[0; 16]).is_ok());
        assert!(Nonce::new(&[0; 64]).is_ok());
    }

    #[test]
    fn nonces_travel_as_base64url_and_are_checked_when_decoded() {
        let n = Nonce::new(&[0xfb; 32]).expect("valid");
        let json = serde_json::to_string(&n).expect("serializes");
        assert!(
            !json.contains('+') && !json.contains('/') && !json.contains('='),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Nonce>(&json).expect("decodes"), n);
        assert_eq!(
            Nonce::from_base64url(&format!("{}==", n.to_base64url())),
            Ok(n)
        );
        assert_eq!(
            Nonce::from_base64url("!!"),
            Err(BindingError::NonceEncoding)
        );
        assert!(serde_json::from_str::<Nonce>("\"AAAA\"").is_err());
    }
}
