//! Receipts: a signed statement, made by the server for every completion it answers,
//! that binds the answer to the exact request, the weights and the attested launch
//! (`docs/receipts.md`).
//!
//! ```text
//! payload   = JSON of [`Receipt`] (the bytes as sent are what is signed)
//! signed    = "VEIL-RECEIPT-v1\0" ‖ payload
//! signature = Ed25519(receipt key, signed)
//! compact   = base64url(payload) "." base64url(signature)      (no padding)
//! ```
//!
//! The receipt key is made at start, lives in memory only, and its public half is bound
//! into every transcript the server attests ([`crate::Transcript::receipt_pk`]), so a
//! receipt verifies only under the key that evidence of that launch commits to.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

/// Domain separation of the signed bytes, NUL-terminated.
pub const DOMAIN: &[u8; 16] = b"VEIL-RECEIPT-v1\0";
/// The payload version this code writes and reads.
pub const VERSION: u32 = 1;
/// The response header that carries a non-streamed answer's receipt.
pub const HEADER: &str = "veil-receipt";
/// The field of the chunk, the last before `[DONE]`, that carries a streamed answer's
/// receipt.
pub const CHUNK_FIELD: &str = "veil_receipt";
/// Longest compact receipt accepted (a receipt is about 1 KiB).
pub const MAX_COMPACT: usize = 16 * 1024;

/// Why a receipt is refused. Each names the part that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// Not `base64url "." base64url`, too long, or the payload is not a version-1
    /// receipt.
    #[error("receipt is malformed: {0}")]
    Malformed(String),
    /// The signature does not verify under the receipt key.
    #[error("signature: the receipt is not signed by the receipt key the evidence binds")]
    Signature,
}

/// Sampling parameters as the engine applied them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptSampling {
    /// Temperature (0: greedy).
    pub temperature: f32,
    /// Nucleus sampling.
    pub top_p: f32,
    /// Top-k (0: off).
    pub top_k: u32,
    /// Min-p.
    pub min_p: f32,
    /// Repetition penalty.
    pub repetition_penalty: f32,
    /// Seed, if the request gave one.
    pub seed: Option<u32>,
    /// The token budget.
    pub max_tokens: u32,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Whether end-of-generation tokens were ignored.
    pub ignore_eos: bool,
    /// Biased token ids and their biases.
    pub logit_bias: Vec<(u32, f32)>,
    /// SHA-256 of the grammar the output was constrained to (a JSON schema or a tool
    /// call), if any.
    #[serde(with = "opt_hex32")]
    pub grammar_sha256: Option<[u8; 32]>,
}

/// What a receipt states. Field order is the order on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// [`VERSION`].
    pub version: u32,
    /// The answer's `id` (`chatcmpl-…`, `cmpl-…`).
    pub id: String,
    /// The route answered (`/v1/chat/completions`, `/v1/completions`).
    pub route: String,
    /// Per-process sequence number, from 1: receipts of one launch are ordered, and a
    /// gap shows one missing.
    pub seq: u64,
    /// When it was signed, Unix seconds.
    pub issued_at: u64,
    /// SHA-256 of the request body, byte for byte as received.
    #[serde(with = "crate::wire::hex_bytes")]
    pub request_sha256: [u8; 32],
    /// SHA-256 of the response as sent: a non-streamed answer's body, byte for byte; a
    /// streamed answer's `data:` payloads before the receipt's own event, each followed
    /// by `\n` (keep-alive comments and SSE framing are not part of it).
    #[serde(with = "crate::wire::hex_bytes")]
    pub response_sha256: [u8; 32],
    /// SHA-256 of the generated text (UTF-8): a chat's concatenated `content` deltas, a
    /// completion's `text`. With tool calls, the text as the model wrote it, before the
    /// calls were parsed out of it.
    #[serde(with = "crate::wire::hex_bytes")]
    pub text_sha256: [u8; 32],
    /// SHA-256 of the generated token ids, each a u32 little-endian.
    #[serde(with = "crate::wire::hex_bytes")]
    pub tokens_sha256: [u8; 32],
    /// How many tokens were generated.
    pub completion_tokens: u32,
    /// Tokens in the rendered prompt.
    pub prompt_tokens: u32,
    /// Why generation ended (`stop`, `length`).
    pub finish_reason: String,
    /// SHA-256 of the weights (the sealed model's plaintext, from its authenticated
    /// header).
    #[serde(with = "crate::wire::hex_bytes")]
    pub model_sha256: [u8; 32],
    /// The sealed model's key id.
    #[serde(with = "crate::wire::hex_bytes")]
    pub key_id: [u8; 16],
    /// The launch measurement of the server's reports.
    #[serde(with = "crate::wire::hex_bytes")]
    pub measurement: [u8; 48],
    /// The sampling applied.
    pub sampling: ReceiptSampling,
}

/// A receipt as received: the payload bytes, the signature and the parsed payload.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedReceipt {
    payload: Vec<u8>,
    signature: [u8; 64],
    receipt: Receipt,
}

impl SignedReceipt {
    /// Parses a compact receipt. The signature is not checked: see
    /// [`SignedReceipt::verify`].
    ///
    /// # Errors
    /// [`ReceiptError::Malformed`], naming what.
    pub fn parse(compact: &str) -> Result<Self, ReceiptError> {
        let bad = |what: &str| ReceiptError::Malformed(what.to_owned());
        let compact = compact.trim();
        if compact.len() > MAX_COMPACT {
            return Err(bad("longer than 16 KiB"));
        }
        let (payload, signature) = compact
            .split_once('.')
            .ok_or_else(|| bad("no '.' between payload and signature"))?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| bad("payload is not base64url"))?;
        let signature: [u8; 64] = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| bad("signature is not base64url"))?
            .try_into()
            .map_err(|_| bad("signature is not 64 bytes"))?;
        let receipt: Receipt = serde_json::from_slice(&payload)
            .map_err(|e| ReceiptError::Malformed(format!("payload: {e}")))?;
        if receipt.version != VERSION {
            return Err(ReceiptError::Malformed(format!(
                "version {} (this verifier reads version {VERSION})",
                receipt.version
            )));
        }
        Ok(SignedReceipt {
            payload,
            signature,
            receipt,
        })
    }

    /// What the receipt states (check [`SignedReceipt::verify`] before trusting it).
    pub fn receipt(&self) -> &Receipt {
        &self.receipt
    }

    /// The compact form.
    pub fn to_compact(&self) -> String {
        compact(&self.payload, &self.signature)
    }

    /// Checks the signature under `public_key` (the Ed25519 key the evidence binds).
    ///
    /// # Errors
    /// [`ReceiptError::Signature`].
    pub fn verify(&self, public_key: &[u8; 32]) -> Result<&Receipt, ReceiptError> {
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&signed_bytes(&self.payload), &self.signature)
            .map_err(|_| ReceiptError::Signature)?;
        Ok(&self.receipt)
    }
}

fn signed_bytes(payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + payload.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(payload);
    m
}

fn compact(payload: &[u8], signature: &[u8]) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// The server's receipt-signing key (Ed25519, in memory only; ring keeps the secret
/// and never shows it) and its sequence counter.
pub struct ReceiptSigner {
    key: Ed25519KeyPair,
    public: [u8; 32],
    seq: AtomicU64,
}

impl fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReceiptSigner(public {})", hex::encode(self.public))
    }
}

impl ReceiptSigner {
    /// A fresh key from the system CSPRNG.
    ///
    /// # Panics
    /// If the system CSPRNG fails.
    pub fn generate() -> Self {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), seed.as_mut())
            .expect("the system CSPRNG works");
        Self::from_seed(&seed)
    }

    /// The key of this 32-byte seed (RFC 8032); for test vectors.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32 bytes are a seed");
        let public = key
            .public_key()
            .as_ref()
            .try_into()
            .expect("an Ed25519 public key is 32 bytes");
        ReceiptSigner {
            key,
            public,
            seq: AtomicU64::new(0),
        }
    }

    /// The public key, bound into every transcript.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The next sequence number (1, 2, …).
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Signs `receipt`; the compact form.
    ///
    /// # Panics
    /// Never in practice: a [`Receipt`] always serializes.
    pub fn sign(&self, receipt: &Receipt) -> String {
        let payload = serde_json::to_vec(receipt).expect("a receipt serializes");
        let signature = self.key.sign(&signed_bytes(&payload));
        compact(&payload, signature.as_ref())
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// SHA-256 of token ids, each a u32 little-endian.
pub fn tokens_sha256(tokens: &[u32]) -> [u8; 32] {
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    for t in tokens {
        d.update(&t.to_le_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(d.finish().as_ref());
    out
}

mod opt_hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&hex::encode(v)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<[u8; 32]>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out)
            .map_err(|_| serde::de::Error::custom("expected 32 bytes of hex"))?;
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of `docs/protocol.md`.
    pub(crate) fn vector() -> Receipt {
        Receipt {
            version: VERSION,
            id: "chatcmpl-000102030405060708090a0b".into(),
            route: "/v1/chat/completions".into(),
            seq: 1,
            issued_at: 1_796_342_400,
            request_sha256: sha256(br#"{"messages":[{"role":"user","content":"Hi"}]}"#),
            response_sha256: sha256(b"{}"),
            text_sha256: sha256(b"Hello!"),
            tokens_sha256: tokens_sha256(&[19556, 17]),
            completion_tokens: 2,
            prompt_tokens: 30,
            finish_reason: "stop".into(),
            model_sha256: [0x11; 32],
            key_id: [0x22; 16],
            measurement: [0x33; 48],
            sampling: ReceiptSampling {
                temperature: 0.0,
                top_p: 1.0,
                top_k: 0,
                min_p: 0.0,
                repetition_penalty: 1.0,
                seed: None,
                max_tokens: 16,
                stop: vec![],
                ignore_eos: false,
                logit_bias: vec![],
                grammar_sha256: None,
            },
        }
    }

    fn vector_seed() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn the_documented_vector_signs_and_verifies() {
        let signer = ReceiptSigner::from_seed(&vector_seed());
        let compact = signer.sign(&vector());
        let doc = include_str!("../../docs/protocol.md");
        assert!(
            doc.contains(&hex::encode(signer.public())),
            "docs/protocol.md states the vector's public key {}",
            hex::encode(signer.public())
        );
        assert!(
            doc.contains(&compact),
            "docs/protocol.md states the vector's receipt:\n{compact}"
        );
        let parsed = SignedReceipt::parse(&compact).expect("parses");
        assert_eq!(
            parsed.verify(&signer.public()).expect("verifies"),
            &vector()
        );
        assert_eq!(parsed.to_compact(), compact);
    }

    #[test]
    fn every_changed_byte_of_a_receipt_fails_and_says_where() {
        let signer = ReceiptSigner::from_seed(&vector_seed());
        let compact = signer.sign(&vector());
        let (payload, signature) = compact.split_once('.').expect("compact");
        let payload = URL_SAFE_NO_PAD.decode(payload).expect("b64");
        let signature = URL_SAFE_NO_PAD.decode(signature).expect("b64");
        for i in 0..payload.len() {
            let mut p = payload.clone();
            p[i] ^= 0x01;
            let e = SignedReceipt::parse(&compact_of(&p, &signature))
                .and_then(|r| r.verify(&signer.public()).map(|_| ()))
                .expect_err("a changed payload byte is refused");
            // The JSON may still parse (a changed digit): then the signature fails.
            assert!(
                matches!(e, ReceiptError::Malformed(_) | ReceiptError::Signature),
                "byte {i}: {e}"
            );
        }
        for i in 0..signature.len() {
            let mut s = signature.clone();
            s[i] ^= 0x80;
            let e = SignedReceipt::parse(&compact_of(&payload, &s))
                .expect("still well formed")
                .verify(&signer.public())
                .expect_err("a changed signature byte is refused");
            assert_eq!(e, ReceiptError::Signature, "signature byte {i}");
        }
        let other = ReceiptSigner::generate();
        assert_eq!(
            SignedReceipt::parse(&compact)
                .expect("parses")
                .verify(&other.public()),
            Err(ReceiptError::Signature),
            "another launch's key"
        );
    }

    fn compact_of(p: &[u8], s: &[u8]) -> String {
        compact(p, s)
    }

    #[test]
    fn malformed_receipts_name_what_is_wrong() {
        let cases = [
            ("", "no '.'"),
            ("abc", "no '.'"),
            ("!!.AAAA", "payload is not base64url"),
            ("e30.!!", "signature is not base64url"),
            ("e30.AAAA", "signature is not 64 bytes"),
        ];
        for (text, what) in cases {
            let e = SignedReceipt::parse(text).expect_err(text);
            assert!(e.to_string().contains(what), "{text:?}: {e}");
        }
        let sig = URL_SAFE_NO_PAD.encode([0u8; 64]);
        let e = SignedReceipt::parse(&format!("e30.{sig}")).expect_err("{}");
        assert!(e.to_string().contains("payload: missing field"), "{e}");
        let mut v2 = serde_json::to_value(vector()).expect("json");
        v2["version"] = 2.into();
        let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v2).expect("json"));
        let e = SignedReceipt::parse(&format!("{p}.{sig}")).expect_err("v2");
        assert!(e.to_string().contains("version 2"), "{e}");
        let long = "A".repeat(MAX_COMPACT + 1);
        assert!(SignedReceipt::parse(&long).is_err());
    }

    #[test]
    fn sequence_numbers_start_at_one_and_count_up() {
        let s = ReceiptSigner::generate();
        assert_eq!((s.next_seq(), s.next_seq(), s.next_seq()), (1, 2, 3));
        assert!(!format!("{s:?}").is_empty());
    }

    #[test]
    fn token_digests_are_over_little_endian_u32s() {
        assert_eq!(tokens_sha256(&[1, 256]), sha256(&[1, 0, 0, 0, 0, 1, 0, 0]));
        assert_ne!(tokens_sha256(&[1, 2]), tokens_sha256(&[2, 1]));
    }
}
