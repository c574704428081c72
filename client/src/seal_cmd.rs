//! `veil seal MODEL -o OUT [--key-out KEYFILE | --key KEYFILE] [--name NAME] [--force]`
//! and `veil seal --inspect FILE`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::Args;
use veil_sealing::{read_header, seal, ModelKey, SealOptions};

use crate::files::{read_small, write_new};
use crate::CmdResult;

/// `veil seal`
#[derive(Args)]
#[command(group(clap::ArgGroup::new("keys").args(["key_out", "key"])))]
pub struct SealArgs {
    /// The plaintext model (e.g. a GGUF file), or with --inspect a sealed file.
    pub model: PathBuf,
    /// The sealed file to write.
    #[arg(short, long, required_unless_present = "inspect")]
    pub output: Option<PathBuf>,
    /// Write a fresh random key here (mode 0600). Default: OUT with `.key` appended.
    #[arg(long)]
    pub key_out: Option<PathBuf>,
    /// Seal with an existing key file instead of a fresh key.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Model name stored in the authenticated header (default: the file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Chunk size in KiB (power of two, 4..=16384).
    #[arg(long, default_value_t = 1024)]
    pub chunk_kib: u32,
    /// Replace existing output files.
    #[arg(long)]
    pub force: bool,
    /// Print the header of a sealed file (no key needed) instead of sealing.
    #[arg(long, conflicts_with_all = ["output", "key_out", "key", "name"])]
    pub inspect: bool,
}

/// Loads a key file.
///
/// # Errors
/// If the file cannot be read or is not a key file (the key is never shown).
pub fn load_key(path: &Path) -> anyhow::Result<ModelKey> {
    let bytes = zeroize::Zeroizing::new(read_small(path)?);
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| anyhow!("{} is not a Veil key file", path.display()))?;
    ModelKey::from_key_file(text).with_context(|| format!("key file {}", path.display()))
}

/// Runs `veil seal`.
///
/// # Errors
/// Naming the file and what failed.
pub fn run(args: SealArgs) -> CmdResult {
    if args.inspect {
        return inspect(&args.model);
    }
    let output = args
        .output
        .as_ref()
        .expect("clap requires -o unless --inspect");
    if output.exists() && !args.force {
        return Err(anyhow!("{} exists; pass --force to replace it", output.display()).into());
    }
    let (key, key_path, fresh) = match (&args.key, &args.key_out) {
        (Some(path), _) => (load_key(path)?, path.clone(), false),
        (None, out) => {
            let path = out.clone().unwrap_or_else(|| {
                let mut p = output.clone().into_os_string();
                p.push(".key");
                PathBuf::from(p)
            });
            if path.exists() && !args.force {
                return Err(anyhow!(
                    "{} exists; pass --force to replace it, or --key to reuse it",
                    path.display()
                )
                .into());
            }
            (ModelKey::generate(), path, true)
        }
    };
    let name = args
        .name
        .clone()
        .or_else(|| {
            args.model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let options = SealOptions::default()
        .with_chunk_size(args.chunk_kib.saturating_mul(1024))
        .with_metadata(BTreeMap::from([("name".to_owned(), name)]));

    let input =
        File::open(&args.model).with_context(|| format!("cannot open {}", args.model.display()))?;
    let len = input.metadata()?.len();
    let mut reader = BufReader::with_capacity(4 << 20, input);
    // Write to a temporary name beside the output, then rename: a failed seal leaves nothing.
    let partial = output.with_extension("veil.partial");
    let out_file =
        File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let mut writer = BufWriter::with_capacity(4 << 20, out_file);

    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(len.saturating_mul(2));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message("sealing");
        bar
    });
    let result = seal(&mut reader, &mut writer, &key, &options, &mut |done, _| {
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let header = match result.and_then(|h| {
        writer
            .into_inner()
            .map_err(|e| e.into_error().into())
            .map(|f| (h, f))
    }) {
        Ok((h, f)) => {
            f.sync_all()?;
            h
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(anyhow!("sealing {} failed: {e}", args.model.display()).into());
        }
    };
    std::fs::rename(&partial, output)
        .with_context(|| format!("cannot create {}", output.display()))?;
    if fresh {
        write_new(&key_path, key.to_key_file().as_bytes(), true, args.force)?;
    }
    println!("sealed {} -> {}", args.model.display(), output.display());
    println!("  key id        {}", header.key_id);
    println!("  model sha256  {}", hex::encode(header.model_sha256));
    println!(
        "  size          {} bytes in {} chunks",
        header.plaintext_len, header.chunk_count
    );
    if fresh {
        println!(
            "  key file      {} (mode 0600; keep it secret)",
            key_path.display()
        );
    } else {
        println!("  key file      {} (reused)", key_path.display());
    }
    Ok(())
}

fn inspect(path: &Path) -> CmdResult {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let h = read_header(&file).with_context(|| format!("{}", path.display()))?;
    println!("sealed model  {}", path.display());
    println!("  format        VEILSEAL v1, AES-256-GCM, HKDF-SHA-256, HMAC-SHA-256");
    println!("  key id        {}", h.key_id);
    println!("  model sha256  {}", hex::encode(h.model_sha256));
    println!("  plaintext     {} bytes", h.plaintext_len);
    println!("  chunks        {} × {} bytes", h.chunk_count, h.chunk_size);
    for (k, v) in &h.metadata {
        println!("  {k:13} {v}");
    }
    println!("  (the header is authenticated by a MAC only the key can check)");
    Ok(())
}
