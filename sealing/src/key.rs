//! The model key: 32 random bytes and the id that names them.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::SealError;

/// Length of a key id in bytes (hex in files and messages).
pub const KEY_ID_LEN: usize = 16;

/// A key id: names a model key without revealing it (random, not derived from the key).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl KeyId {
    /// Parses 32 hex digits.
    ///
    /// # Errors
    /// [`SealError::InvalidKeyFile`].
    pub fn from_hex(text: &str) -> Result<Self, SealError> {
        let mut id = [0u8; KEY_ID_LEN];
        hex::decode_to_slice(text.trim(), &mut id)
            .map_err(|_| SealError::InvalidKeyFile("key_id"))?;
        Ok(KeyId(id))
    }
}

/// Opens a sealed model. Never logged, never cloned, zeroized when dropped.
pub struct ModelKey {
    id: KeyId,
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for ModelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelKey(id {}, ..)", self.id)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    key_id: String,
    key: String,
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl ModelKey {
    /// A fresh key and key id from the system CSPRNG.
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let mut key = Zeroizing::new([0u8; 32]);
        let mut id = [0u8; KEY_ID_LEN];
        rng.fill(key.as_mut()).expect("the system CSPRNG works");
        rng.fill(&mut id).expect("the system CSPRNG works");
        ModelKey { id: KeyId(id), key }
    }

    /// A key from its parts (a key received through attested key release).
    pub fn from_parts(id: KeyId, key: Zeroizing<[u8; 32]>) -> Self {
        ModelKey { id, key }
    }

    /// The key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The 32 key bytes.
    ///
    /// # Security
    /// Only for deriving keys and sealing the key for release; never log or store it.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.key
    }

    /// The key file: TOML with `key_id` and `key` (hex), to be stored with mode 0600.
    pub fn to_key_file(&self) -> Zeroizing<String> {
        let file = KeyFile {
            key_id: self.id.to_string(),
            key: hex::encode(self.key.as_ref()),
        };
        let body = toml::to_string(&file).expect("a key file serializes");
        Zeroizing::new(format!(
            "# Veil model key: keep secret (mode 0600).\n{body}"
        ))
    }

    /// Parses a key file. The error never contains the key.
    ///
    /// # Errors
    /// [`SealError::InvalidKeyFile`] naming the field.
    pub fn from_key_file(text: &str) -> Result<Self, SealError> {
        let file: KeyFile =
            toml::from_str(text).map_err(|_| SealError::InvalidKeyFile("not a Veil key file"))?;
        let id = KeyId::from_hex(&file.key_id)?;
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(file.key.trim(), key.as_mut())
            .map_err(|_| SealError::InvalidKeyFile("key"))?;
        Ok(ModelKey { id, key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trips() {
        let k = ModelKey::generate();
        let again = ModelKey::from_key_file(&k.to_key_file()).expect("parses");
        assert_eq!(again.id(), k.id());
        assert_eq!(again.expose_secret(), k.expose_secret());
    }

    #[test]
    fn debug_and_errors_never_show_the_key() {
        let k = ModelKey::generate();
        let hex_key = hex::encode(k.expose_secret());
        assert!(!format!("{k:?}").contains(&hex_key));
        let broken = k.to_key_file().replace("key_id", "key_idx");
        let err = ModelKey::from_key_file(&broken).expect_err("unknown field");
        assert!(!err.to_string().contains(&hex_key), "{err}");
        assert!(ModelKey::from_key_file("key_id = \"00\"\nkey = \"zz\"").is_err());
    }
}
