//! The model key: 32 random bytes and the id that names them.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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

/// Opens a sealed model. Never logged, never cloned, zeroized when dropped. The key bytes
/// live on the heap and are written there in place, so moving a `ModelKey` (into a map,
/// into a worker thread) moves a pointer and leaves no copy of the key behind.
pub struct ModelKey {
    id: KeyId,
    key: Box<Zeroizing<[u8; 32]>>,
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
        let mut key = Box::new(Zeroizing::new([0u8; 32]));
        let mut id = [0u8; KEY_ID_LEN];
        rng.fill(&mut key[..]).expect("the system CSPRNG works");
        rng.fill(&mut id).expect("the system CSPRNG works");
        ModelKey { id: KeyId(id), key }
    }

    /// A key from its parts (a key received through attested key release, already on
    /// the heap).
    pub fn from_parts(id: KeyId, key: Box<Zeroizing<[u8; 32]>>) -> Self {
        ModelKey { id, key }
    }

    /// The key id: names this key in sealed headers, key files and key release.
    pub fn key_id(&self) -> KeyId {
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
            key: hex::encode(&self.key[..]),
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
        let mut key = Box::new(Zeroizing::new([0u8; 32]));
        hex::decode_to_slice(file.key.trim(), &mut key[..])
            .map_err(|_| SealError::InvalidKeyFile("key"))?;
        Ok(ModelKey { id, key })
    }
}

pub mod danger {
    //! Weakens [`ModelKey::read_key_file`](super::ModelKey::read_key_file): for the
    //! `--allow-insecure-key-file` flag only.

    use std::sync::atomic::{AtomicBool, Ordering};

    static ALLOWED: AtomicBool = AtomicBool::new(false);

    /// From now on, in this process, key files open to group or others are read anyway.
    pub fn allow_insecure_key_files() {
        ALLOWED.store(true, Ordering::Relaxed);
    }

    pub(super) fn insecure_key_files_allowed() -> bool {
        ALLOWED.load(Ordering::Relaxed)
    }
}

/// Largest key file read (a key file is about 150 bytes).
const MAX_KEY_FILE: u64 = 4096;

impl ModelKey {
    /// Reads a key file written by [`ModelKey::write_key_file`].
    ///
    /// # Errors
    /// [`SealError::Io`] if it cannot be read; [`SealError::InvalidKeyFile`] if it is not
    /// a key file (the key never appears in the error).
    ///
    /// # Security
    /// A key file whose group or others have any permission bit is refused
    /// ([`SealError::InsecureKeyFile`], naming `chmod 600`) unless
    /// [`danger::allow_insecure_key_files`] was called: someone else on the machine may
    /// already have read it.
    pub fn read_key_file(path: &Path) -> Result<Self, SealError> {
        let file = File::open(path)?;
        let mode = file.metadata()?.mode() & 0o7777;
        if mode & 0o077 != 0 && !danger::insecure_key_files_allowed() {
            return Err(SealError::InsecureKeyFile {
                path: path.to_owned(),
                mode,
            });
        }
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_KEY_FILE + 1).read_to_string(&mut text)?;
        if text.len() as u64 > MAX_KEY_FILE {
            return Err(SealError::InvalidKeyFile("larger than 4 KiB"));
        }
        Self::from_key_file(&text)
    }

    /// Writes the key file with mode 0600. Refuses to replace an existing file unless
    /// `force`; with `force` it writes a new file beside it and renames it over, so the
    /// old file's mode never applies to the new key.
    ///
    /// # Errors
    /// [`SealError::Io`]; of kind `AlreadyExists` if `path` exists and `force` is false.
    pub fn write_key_file(&self, path: &Path, force: bool) -> Result<(), SealError> {
        let create = |p: &Path| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(p)
        };
        let write = |mut f: File| -> std::io::Result<()> {
            f.write_all(self.to_key_file().as_bytes())?;
            f.sync_all()
        };
        if !force {
            let file = create(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => SealError::Io(std::io::Error::new(
                    e.kind(),
                    format!("{} exists; refusing to replace a key file", path.display()),
                )),
                _ => SealError::Io(e),
            })?;
            return write(file).map_err(|e| {
                let _ = std::fs::remove_file(path);
                SealError::Io(e)
            });
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", self.id));
        let tmp = PathBuf::from(tmp);
        let result = create(&tmp)
            .and_then(write)
            .and_then(|()| std::fs::rename(&tmp, path));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(SealError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trips() {
        let k = ModelKey::generate();
        let again = ModelKey::from_key_file(&k.to_key_file()).expect("parses");
        assert_eq!(again.key_id(), k.key_id());
        assert_eq!(again.expose_secret(), k.expose_secret());
    }

    #[test]
    fn key_files_are_private_and_never_silently_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.key");
        let k = ModelKey::generate();
        k.write_key_file(&path, false).expect("writes");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = ModelKey::read_key_file(&path).expect("reads");
        assert_eq!(again.key_id(), k.key_id());
        assert_eq!(again.expose_secret(), k.expose_secret());

        let other = ModelKey::generate();
        match other.write_key_file(&path, false) {
            Err(SealError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists),
            r => panic!("{r:?}"),
        }
        assert_eq!(
            ModelKey::read_key_file(&path).expect("reads").key_id(),
            k.key_id()
        );

        // Open to others: refused, naming the fix.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        match ModelKey::read_key_file(&path) {
            Err(e @ SealError::InsecureKeyFile { mode: 0o644, .. }) => {
                assert!(
                    e.to_string()
                        .contains(&format!("chmod 600 {}", path.display())),
                    "{e}"
                );
            }
            r => panic!("{r:?}"),
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(matches!(
            ModelKey::read_key_file(&path),
            Err(SealError::InsecureKeyFile { mode: 0o640, .. })
        ));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        other.write_key_file(&path, true).expect("forced");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "a forced write is private too");
        assert_eq!(
            ModelKey::read_key_file(&path).expect("reads").key_id(),
            other.key_id()
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            1,
            "no temp left"
        );
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
