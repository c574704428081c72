//! Optional API keys (`--api-keys FILE`): who may use the model. Checked inside the TEE,
//! on the attested TLS connection, before a request reaches the OpenAI routes; the
//! attestation, provisioning, health, readiness and metrics routes stay open.
//!
//! The file holds SHA-256 digests, never keys: one per line, `sha256:<64 hex digits>`,
//! optionally followed by a name for the log (`veil api-key new` makes a key and its
//! line). Blank lines and lines starting with `#` are skipped. SIGHUP reloads it; a file
//! that no longer parses leaves the keys as they were. A key authorises use; it proves
//! nothing about the server, which only its evidence does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use anyhow::{bail, Context};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Largest API key file.
const MAX_FILE: u64 = 1 << 20;

/// The digests of the keys that may use the model, and the file they came from.
#[derive(Debug)]
pub struct ApiKeys {
    path: PathBuf,
    /// SHA-256 of a key → its name (or `key N`, its line).
    keys: RwLock<HashMap<[u8; 32], String>>,
}

impl ApiKeys {
    /// Loads `path`.
    ///
    /// # Errors
    /// If it cannot be read, a line does not parse (named by number), or it holds no key:
    /// an empty file would lock everyone out, which is never what was meant.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let keys = read(path)?;
        Ok(ApiKeys {
            path: path.to_owned(),
            keys: RwLock::new(keys),
        })
    }

    /// Reads the file again; on error the keys stay as they were.
    ///
    /// # Errors
    /// As [`ApiKeys::load`].
    pub fn reload(&self) -> anyhow::Result<usize> {
        let keys = read(&self.path)?;
        let n = keys.len();
        *self.keys.write().expect("no panics while holding the keys") = keys;
        Ok(n)
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys
            .read()
            .expect("no panics while holding the keys")
            .len()
    }

    /// Whether there are none (never, once loaded).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name of the key that `headers` present (`Authorization: Bearer KEY`), or the
    /// 401 that says what is missing. Never quotes what was presented.
    ///
    /// # Errors
    /// A 401 `invalid_api_key`.
    pub fn check(&self, headers: &HeaderMap) -> Result<String, Unauthorized> {
        self.caller(headers).map(|c| c.name)
    }

    /// Who `headers` authenticate, as [`ApiKeys::check`], with the key's digest.
    ///
    /// # Errors
    /// A 401 `invalid_api_key`.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, Unauthorized> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(Unauthorized(
                "this server requires an API key: send Authorization: Bearer KEY",
            ));
        };
        let key = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, key) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
            })
            .filter(|k| !k.is_empty())
            .ok_or(Unauthorized("the Authorization header must be Bearer KEY"))?;
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        self.keys
            .read()
            .expect("no panics while holding the keys")
            .get(&digest)
            .map(|name| Caller {
                digest,
                name: name.clone(),
            })
            .ok_or(Unauthorized("the API key is not valid for this server"))
    }
}

/// The holder of a listed API key, as the model routes see it (a request extension).
#[derive(Clone, PartialEq, Eq)]
pub struct Caller {
    /// SHA-256 of the key: what scopes the caller's prompt cache.
    pub digest: [u8; 32],
    /// The key's name, for the log.
    pub name: String,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A 401 in OpenAI's shape (`invalid_request_error`, code `invalid_api_key`), with
/// `WWW-Authenticate: Bearer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unauthorized(pub &'static str);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let mut response =
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", self.0).into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

fn read(path: &Path) -> anyhow::Result<HashMap<[u8; 32], String>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the API key file {}", path.display()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_FILE + 1), &mut text)
        .with_context(|| format!("the API key file {} is not UTF-8 text", path.display()))?;
    if text.len() as u64 > MAX_FILE {
        bail!(
            "the API key file {} is larger than {MAX_FILE} bytes",
            path.display()
        );
    }
    let keys = parse(&text).with_context(|| format!("the API key file {}", path.display()))?;
    if keys.is_empty() {
        bail!(
            "the API key file {} holds no key (lines of sha256:HEX [NAME], from `veil api-key new`)",
            path.display()
        );
    }
    Ok(keys)
}

/// Parses the lines; an error names the line by number and never quotes it (a key pasted
/// by mistake must not reach the log).
fn parse(text: &str) -> anyhow::Result<HashMap<[u8; 32], String>> {
    let mut keys = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (digest, name) = line
            .split_once(char::is_whitespace)
            .map_or((line, ""), |(d, rest)| (d, rest.trim()));
        let digest = digest
            .strip_prefix("sha256:")
            .and_then(|h| hex::decode(h).ok())
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .with_context(|| {
                format!("line {n} is not sha256:<64 hex digits> [NAME] (the file holds digests of keys, not keys: `veil api-key new` makes both)")
            })?;
        let name = if name.is_empty() {
            format!("key on line {n}")
        } else {
            name.chars().take(64).collect()
        };
        if keys.insert(digest, name).is_some() {
            bail!("line {n} repeats a key");
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(key: &str) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()))
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header"),
        );
        h
    }

    #[test]
    fn a_listed_key_passes_and_anything_else_is_refused_without_being_quoted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        std::fs::write(
            &path,
            format!(
                "# users\nsha256:{} alice\n\nsha256:{}\n",
                digest("sk-alice"),
                digest("sk-bob")
            ),
        )
        .expect("write");
        let keys = ApiKeys::load(&path).expect("loads");
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys.check(&headers("Bearer sk-alice")).as_deref(),
            Ok("alice")
        );
        assert_eq!(
            keys.check(&headers("bearer  sk-bob ")).as_deref(),
            Ok("key on line 4")
        );
        for bad in [
            "Bearer sk-carol",
            "Basic c2stYWxpY2U=",
            "Bearer ",
            "sk-alice",
        ] {
            let e = keys.check(&headers(bad)).expect_err(bad);
            assert!(!e.0.contains("sk-"), "{bad}: {}", e.0);
        }
        assert!(keys.check(&HeaderMap::new()).is_err());
    }

    #[test]
    fn reload_replaces_the_keys_and_a_broken_file_keeps_the_old_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("sha256:{}\n", digest("old"))).expect("write");
        let keys = ApiKeys::load(&path).expect("loads");
        std::fs::write(&path, format!("sha256:{}\n", digest("new"))).expect("write");
        assert_eq!(keys.reload().expect("reloads"), 1);
        assert!(keys.check(&headers("Bearer new")).is_ok());
        assert!(keys.check(&headers("Bearer old")).is_err());
        std::fs::write(&path, "sk-pasted-by-mistake\n").expect("write");
        let e = format!("{:#}", keys.reload().expect_err("not a digest"));
        assert!(e.contains("line 1") && !e.contains("sk-pasted"), "{e}");
        assert!(keys.check(&headers("Bearer new")).is_ok(), "kept");
    }

    #[test]
    fn an_empty_or_repeating_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        std::fs::write(&path, "# nobody\n").expect("write");
        assert!(format!("{:#}", ApiKeys::load(&path).expect_err("empty")).contains("no key"));
        let line = format!("sha256:{}\n", digest("k"));
        std::fs::write(&path, format!("{line}{line}")).expect("write");
        assert!(format!("{:#}", ApiKeys::load(&path).expect_err("twice")).contains("line 2"));
        assert!(ApiKeys::load(&dir.path().join("missing")).is_err());
    }
}
