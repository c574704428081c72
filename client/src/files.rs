//! Files: reading inputs with their names in errors, writing secrets with mode 0600.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use veil_attestation::{Crl, Policy};

/// Largest input file read whole (reports, certificates, policies, evidence).
const MAX_INPUT: u64 = 1 << 20;

/// Reads a small input file, naming it in the error.
///
/// # Errors
/// If the file cannot be read or is larger than 1 MiB.
pub fn read_small(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= MAX_INPUT,
        "{} is larger than 1 MiB",
        path.display()
    );
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes `bytes` to a new file; with `secret`, the file is created with mode 0600.
/// Refuses to replace an existing file unless `force`.
///
/// # Errors
/// If the file exists (without `force`) or cannot be written.
pub fn write_new(path: &Path, bytes: &[u8], secret: bool, force: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).mode(if secret { 0o600 } else { 0o644 });
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).with_context(|| {
        if path.exists() && !force {
            format!("{} exists; pass --force to replace it", path.display())
        } else {
            format!("cannot create {}", path.display())
        }
    })?;
    if secret {
        // An existing file keeps its mode on open: make sure a replaced secret is 0600.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Loads a policy file, and the CRL files it names (relative to its directory), naming
/// the file at fault in errors.
///
/// # Errors
/// If a file cannot be read, the policy is not valid, or a CRL does not parse.
pub fn load_policy(path: &Path) -> anyhow::Result<Policy> {
    let text = String::from_utf8(read_small(path)?)
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    let mut policy =
        Policy::from_toml(&text).with_context(|| format!("policy {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new(""));
    for name in policy.crl_files().to_vec() {
        let file = base.join(&name);
        let crl = Crl::from_pem_or_der(
            &read_small(&file)
                .with_context(|| format!("policy {}: crls entry {name:?}", path.display()))?,
        )
        .with_context(|| format!("policy {}: CRL {}", path.display(), file.display()))?;
        policy.add_crl(crl);
    }
    Ok(policy)
}
