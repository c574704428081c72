//! The launch configuration of a `veil-server` guest, bound through HOST_DATA.
//!
//! The operator hands the guest its configuration (listen address, TEE kind, key broker,
//! sealed-model digest) as a small file (fw_cfg or a second disk) and launches it with
//! HOST_DATA = SHA-256 of the configuration's canonical encoding. At start the server
//! reads its own report and refuses to serve if HOST_DATA is not the digest of the
//! configuration it was given; verifiers pin (MEASUREMENT, HOST_DATA), so the evidence
//! names exactly the configuration the server runs with. The mock TEE derives its
//! HOST_DATA from the same encoding ([`crate::MockLaunch::host_data`]).
//!
//! The file: one `key = value` a line, `#` comments and blank lines ignored, each key at
//! most once, only the keys below.

use std::collections::BTreeMap;

use ring::digest;

/// `veil.tee`: `snp` or `mock`.
pub const TEE: &str = "veil.tee";
/// `veil.listen`: the address the server listens on.
pub const LISTEN: &str = "veil.listen";
/// `veil.model_sha256`: the sealed model's plaintext digest (64 hex digits).
pub const MODEL_SHA256: &str = "veil.model_sha256";
/// `veil.key_broker`: the key broker's URL, if the server pulls its key.
pub const KEY_BROKER: &str = "veil.key_broker";

const KEYS: [&str; 4] = [TEE, LISTEN, MODEL_SHA256, KEY_BROKER];
/// The largest configuration file read.
pub const MAX_LEN: usize = 16 << 10;

/// Why a launch configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchConfigError {
    /// A line is not `key = value`.
    #[error("line {line}: expected `key = value`")]
    Syntax {
        /// 1-based.
        line: usize,
    },
    /// A key that is not one of Veil's.
    #[error("line {line}: unknown key {key:?} (known: veil.tee, veil.listen, veil.model_sha256, veil.key_broker)")]
    UnknownKey {
        /// 1-based.
        line: usize,
        /// The key, at most 64 characters of it.
        key: String,
    },
    /// A key given twice.
    #[error("line {line}: {key} is given twice")]
    Duplicate {
        /// 1-based.
        line: usize,
        /// The key.
        key: &'static str,
    },
    /// A required key is missing.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A value is not valid for its key.
    #[error("{key}: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// Longer than [`MAX_LEN`].
    #[error("the launch configuration is over {MAX_LEN} bytes")]
    TooLong,
}

/// A launch configuration: the keys above, each checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    entries: BTreeMap<String, String>,
}

/// The canonical encoding of a configuration: for each pair, sorted by key, the key's
/// and the value's lengths (32-bit big-endian) before them, so that no two
/// configurations encode alike.
pub fn canonical(entries: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in entries {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// SHA-256 of [`canonical`]: the HOST_DATA of a launch with this configuration.
pub fn host_data(entries: &BTreeMap<String, String>) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, &canonical(entries)).as_ref());
    out
}

impl LaunchConfig {
    /// The configuration of a server: TEE kind, listen address, model digest, and the key
    /// broker it pulls from, if any.
    ///
    /// # Errors
    /// If a value is not valid (see [`LaunchConfig::parse`]).
    pub fn server(
        tee: &str,
        listen: &str,
        model_sha256: &[u8; 32],
        key_broker: Option<&str>,
    ) -> Result<Self, LaunchConfigError> {
        let mut entries = BTreeMap::from([
            (TEE.to_owned(), tee.to_owned()),
            (LISTEN.to_owned(), listen.to_owned()),
            (MODEL_SHA256.to_owned(), hex::encode(model_sha256)),
        ]);
        if let Some(url) = key_broker {
            entries.insert(KEY_BROKER.to_owned(), url.to_owned());
        }
        let config = LaunchConfig { entries };
        config.check()?;
        Ok(config)
    }

    /// Parses the file form.
    ///
    /// # Errors
    /// [`LaunchConfigError`], naming the line or key at fault.
    pub fn parse(text: &str) -> Result<Self, LaunchConfigError> {
        if text.len() > MAX_LEN {
            return Err(LaunchConfigError::TooLong);
        }
        let mut entries = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (key, value) = trimmed
                .split_once('=')
                .ok_or(LaunchConfigError::Syntax { line })?;
            let (key, value) = (key.trim(), value.trim());
            let Some(known) = KEYS.iter().find(|k| **k == key) else {
                return Err(LaunchConfigError::UnknownKey {
                    line,
                    key: key.chars().take(64).collect(),
                });
            };
            if entries
                .insert((*known).to_owned(), value.to_owned())
                .is_some()
            {
                return Err(LaunchConfigError::Duplicate { line, key: known });
            }
        }
        let config = LaunchConfig { entries };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), LaunchConfigError> {
        for key in [TEE, LISTEN, MODEL_SHA256] {
            if !self.entries.contains_key(key) {
                return Err(LaunchConfigError::Missing(key));
            }
        }
        let invalid = |key, reason: &str| LaunchConfigError::Invalid {
            key,
            reason: reason.to_owned(),
        };
        if !matches!(self.tee(), "snp" | "mock") {
            return Err(invalid(TEE, "expected snp or mock"));
        }
        if self.listen().parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(LISTEN, "expected IP:PORT"));
        }
        if self.model_sha256().is_none() {
            return Err(invalid(MODEL_SHA256, "expected 64 hex digits"));
        }
        if let Some(url) = self.key_broker() {
            if url.is_empty() || url.chars().any(char::is_whitespace) {
                return Err(invalid(KEY_BROKER, "expected a URL"));
            }
        }
        Ok(())
    }

    /// The file form: one `key = value` a line, sorted.
    pub fn to_text(&self) -> String {
        self.entries
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    }

    /// The pairs, as [`crate::MockLaunch`] measures them.
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.entries
    }

    /// HOST_DATA for a launch with this configuration.
    pub fn host_data(&self) -> [u8; 32] {
        host_data(&self.entries)
    }

    fn get(&self, key: &str) -> &str {
        self.entries.get(key).map_or("", String::as_str)
    }

    /// `veil.tee`.
    pub fn tee(&self) -> &str {
        self.get(TEE)
    }

    /// `veil.listen`.
    pub fn listen(&self) -> &str {
        self.get(LISTEN)
    }

    /// `veil.model_sha256`, decoded.
    pub fn model_sha256(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(self.get(MODEL_SHA256), &mut out).ok()?;
        Some(out)
    }

    /// `veil.key_broker`, if given.
    pub fn key_broker(&self) -> Option<&str> {
        self.entries.get(KEY_BROKER).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# the operator's\nveil.tee = snp\nveil.listen = 0.0.0.0:8443\n\
                        veil.model_sha256 = abababababababababababababababababababababababababababababababab\n\
                        veil.key_broker = http://10.0.0.1:8444\n";

    #[test]
    fn the_file_form_round_trips_and_its_digest_is_the_mock_launchs() {
        let c = LaunchConfig::parse(FILE).expect("valid");
        assert_eq!(c.tee(), "snp");
        assert_eq!(c.key_broker(), Some("http://10.0.0.1:8444"));
        assert_eq!(LaunchConfig::parse(&c.to_text()).expect("round trip"), c);
        let built = LaunchConfig::server(
            "snp",
            "0.0.0.0:8443",
            &[0xab; 32],
            Some("http://10.0.0.1:8444"),
        )
        .expect("valid");
        assert_eq!(built, c);
        let mock = crate::MockLaunch::new(b"exe", c.entries().clone());
        assert_eq!(mock.host_data(), c.host_data());
        // Any change of a value changes the digest.
        let other = LaunchConfig::server(
            "snp",
            "0.0.0.0:8444",
            &[0xab; 32],
            Some("http://10.0.0.1:8444"),
        )
        .expect("valid");
        assert_ne!(other.host_data(), c.host_data());
    }

    #[test]
    fn every_malformed_file_is_refused_naming_the_line_or_key() {
        let ok = "veil.tee = mock\nveil.listen = 127.0.0.1:1\nveil.model_sha256 = ".to_owned()
            + &"00".repeat(32);
        assert!(LaunchConfig::parse(&ok).is_ok());
        for (text, expected) in [
            (
                format!("{ok}\nnonsense"),
                LaunchConfigError::Syntax { line: 4 },
            ),
            (
                format!("{ok}\nveil.debug = 1"),
                LaunchConfigError::UnknownKey {
                    line: 4,
                    key: "veil.debug".into(),
                },
            ),
            (
                format!("{ok}\nveil.tee = snp"),
                LaunchConfigError::Duplicate { line: 4, key: TEE },
            ),
            (
                "veil.tee = snp\nveil.listen = 1.2.3.4:5".to_owned(),
                LaunchConfigError::Missing(MODEL_SHA256),
            ),
        ] {
            assert_eq!(LaunchConfig::parse(&text), Err(expected), "{text}");
        }
        for (bad, key) in [
            (ok.replace("mock", "tdx"), TEE),
            (ok.replace("127.0.0.1:1", "localhost"), LISTEN),
            (ok.replace(&"00".repeat(32), "00"), MODEL_SHA256),
            (format!("{ok}\nveil.key_broker = a b"), KEY_BROKER),
        ] {
            assert!(
                matches!(LaunchConfig::parse(&bad), Err(LaunchConfigError::Invalid { key: k, .. }) if k == key),
                "{bad}"
            );
        }
        assert_eq!(
            LaunchConfig::parse(&"#".repeat(MAX_LEN + 1)),
            Err(LaunchConfigError::TooLong)
        );
    }
}
