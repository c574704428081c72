//! API keys for servers started with `--api-keys FILE`: `veil api-key new` makes a key and
//! the digest line the server's file takes; `--api-key-file` (ask, chat, proxy) reads one.
//! A key authorises use of the model; it proves nothing about the server, which only its
//! evidence does, so the client sends it only over a connection already verified.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::Engine as _;
use clap::Subcommand;
use hyper::header::HeaderValue;

use crate::files::{read_small, write_new};
use crate::CmdResult;

/// `veil api-key`
#[derive(Subcommand)]
pub enum ApiKeyCommand {
    /// Make a random API key: the key goes to --key-out (mode 0600) and never to the
    /// terminal; its digest line (`sha256:HEX NAME`, for `veil-server --api-keys`) goes
    /// to stdout and, with --keys, is appended to that file.
    New {
        /// Where to write the key.
        #[arg(long, value_name = "FILE")]
        key_out: PathBuf,
        /// A name for the server's log (`alice`, `ci`).
        #[arg(long)]
        name: Option<String>,
        /// The server's API key file, to append the digest line to (created if missing).
        #[arg(long, value_name = "FILE")]
        keys: Option<PathBuf>,
        /// Replace an existing --key-out file.
        #[arg(long)]
        force: bool,
    },
}

/// Runs `veil api-key`.
///
/// # Errors
/// If a file cannot be written, or the name holds whitespace.
pub fn run(cmd: ApiKeyCommand) -> CmdResult {
    new_key(cmd).map_err(Into::into)
}

fn new_key(cmd: ApiKeyCommand) -> anyhow::Result<()> {
    let ApiKeyCommand::New {
        key_out,
        name,
        keys,
        force,
    } = cmd;
    if let Some(n) = &name {
        if n.is_empty() || n.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("--name must be a word without spaces or control characters");
        }
    }
    let mut random = zeroize::Zeroizing::new([0u8; 32]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), random.as_mut())
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let key = zeroize::Zeroizing::new(format!(
        "veil-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random.as_ref())
    ));
    let line = digest_line(&key, name.as_deref());
    let contents = zeroize::Zeroizing::new(format!("{}\n", key.as_str()));
    write_new(&key_out, contents.as_bytes(), true, force)?;
    if let Some(keys) = &keys {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(keys)
            .with_context(|| format!("cannot open {}", keys.display()))?;
        writeln!(file, "{line}").with_context(|| format!("cannot write {}", keys.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot write {}", keys.display()))?;
    }
    println!("{line}");
    Ok(())
}

/// `sha256:HEX [NAME]`: the line of a server's `--api-keys` file for `key`.
pub fn digest_line(key: &str, name: Option<&str>) -> String {
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()));
    match name {
        Some(n) => format!("sha256:{digest} {n}"),
        None => format!("sha256:{digest}"),
    }
}

/// Reads an API key file (its first non-empty line) as the `Authorization: Bearer KEY`
/// value, marked sensitive. Errors name the file and never quote it.
///
/// # Errors
/// If it cannot be read, holds no key, or the key is not one token of visible ASCII.
pub fn load_api_key(path: &Path) -> anyhow::Result<HeaderValue> {
    let bytes = zeroize::Zeroizing::new(read_small(path)?);
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("the API key file {} is not UTF-8 text", path.display()))?;
    let Some(key) = text.lines().map(str::trim).find(|l| !l.is_empty()) else {
        bail!("the API key file {} holds no key", path.display());
    };
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "the API key in {} must be one word of visible ASCII characters",
            path.display()
        );
    }
    let bearer = zeroize::Zeroizing::new(format!("Bearer {key}"));
    let mut value = HeaderValue::from_str(&bearer)
        .with_context(|| format!("the API key in {} is not a valid header", path.display()))?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_written_0600_and_its_digest_line_matches_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (key_out, keys) = (dir.path().join("a.key"), dir.path().join("api-keys"));
        for name in ["alice", "bob"] {
            run(ApiKeyCommand::New {
                key_out: dir.path().join(format!("{name}.key")),
                name: Some(name.into()),
                keys: Some(keys.clone()),
                force: false,
            })
            .map_err(|_| "run")
            .expect("new key");
        }
        let alice = std::fs::read_to_string(dir.path().join("alice.key")).expect("key");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("alice.key"))
                .expect("meta")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let lines = std::fs::read_to_string(&keys).expect("keys");
        assert_eq!(
            lines.lines().next(),
            Some(digest_line(alice.trim(), Some("alice")).as_str())
        );
        assert_eq!(lines.lines().count(), 2);
        assert!(!lines.contains(alice.trim()), "the file holds digests only");
        let header = load_api_key(&dir.path().join("alice.key")).expect("loads");
        assert!(header.is_sensitive());
        assert_eq!(
            header.to_str().ok(),
            Some(format!("Bearer {}", alice.trim()).as_str())
        );
        assert!(!key_out.exists());
    }

    #[test]
    fn a_bad_key_file_is_refused_without_being_quoted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        for bad in ["\n\n", "two words\n", "tab\there\n"] {
            std::fs::write(&path, bad).expect("write");
            let e = format!("{:#}", load_api_key(&path).expect_err(bad));
            assert!(!e.contains("words") && !e.contains("here"), "{e}");
        }
    }
}
