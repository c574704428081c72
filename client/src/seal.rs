//! `veil seal`: encrypt a model under a model key, or show a sealed header without a key.
//!
//! ```text
//! veil seal MODEL -o OUT [--key-out KEYFILE | --key KEYFILE] [--name NAME] [--chunk-kib N] [--force]
//! veil seal --inspect FILE [--json]
//! ```
//!
//! One [`SealArgs`] covers both forms: `--inspect FILE` takes the sealed file as its value
//! and conflicts with every sealing argument. Wiring in `main.rs`:
//! `mod seal;`, a `Seal(seal::SealArgs)` subcommand, and `Command::Seal(a) => seal::run(a)`.
//!
//! Sealing with a fresh key (the default) writes the key file, mode 0600, to `--key-out`
//! or `OUT.key`; `--key` reuses an existing key file instead (safe: every file gets its
//! own salt, hence its own payload key). Nothing existing is replaced without `--force`,
//! and nothing is replaced at all until the sealed file is complete: it is written beside
//! `OUT` under a temporary name, then the key file is written, then the rename. A progress
//! bar goes to stderr only when stderr is a terminal. The key never appears in argv,
//! stdout or errors.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use veil_sealing::{read_header, seal, ModelKey, SealOptions, SealedHeader};

/// `veil seal`: arguments.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("keys").args(["key_out", "key"])))]
pub struct SealArgs {
    /// The plaintext model to seal (e.g. a GGUF file).
    #[arg(required_unless_present = "inspect")]
    pub model: Option<PathBuf>,
    /// The sealed file to write.
    #[arg(short, long, value_name = "OUT", required_unless_present = "inspect")]
    pub output: Option<PathBuf>,
    /// Write the fresh random key here (mode 0600). Default: OUT with `.key` appended.
    #[arg(long, value_name = "KEYFILE")]
    pub key_out: Option<PathBuf>,
    /// Seal with an existing key file instead of a fresh key.
    #[arg(long, value_name = "KEYFILE")]
    pub key: Option<PathBuf>,
    /// Model name stored in the authenticated header (default: the model's file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Chunk size in KiB: a power of two from 4 to 16384.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub chunk_kib: u32,
    /// Replace existing output and key files.
    #[arg(long)]
    pub force: bool,
    /// Print the header of a sealed file (needs no key) instead of sealing.
    #[arg(long, value_name = "FILE",
          conflicts_with_all = ["model", "output", "key_out", "key", "name", "force"])]
    pub inspect: Option<PathBuf>,
    /// With --inspect: print JSON.
    #[arg(long, requires = "inspect")]
    pub json: bool,
}

/// Runs `veil seal`.
///
/// # Errors
/// Naming the file and what failed; never showing the key.
pub fn run(args: SealArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.inspect {
        return inspect(path, args.json);
    }
    let (Some(model), Some(output)) = (&args.model, &args.output) else {
        bail!("usage: veil seal MODEL -o OUT (or veil seal --inspect FILE)");
    };
    if output.exists() && !args.force {
        bail!("{} exists; pass --force to replace it", output.display());
    }
    if same_file(model, output) {
        bail!("the output {} is the model itself", output.display());
    }
    let (key, key_path, fresh) = match (&args.key, &args.key_out) {
        (Some(path), _) => {
            let key = ModelKey::read_key_file(path)
                .with_context(|| format!("cannot read the key file {}", path.display()))?;
            (key, path.clone(), false)
        }
        (None, key_out) => {
            let path = key_out.clone().unwrap_or_else(|| {
                let mut p = output.clone().into_os_string();
                p.push(".key");
                PathBuf::from(p)
            });
            if path.exists() && !args.force {
                bail!(
                    "{} exists; pass --force to replace it, or --key {0} to reuse it",
                    path.display()
                );
            }
            (ModelKey::generate(), path, true)
        }
    };
    let name = args.name.clone().unwrap_or_else(|| {
        model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let options = SealOptions::default()
        .with_chunk_size(args.chunk_kib.saturating_mul(1024))
        .with_name(name);

    let partial = partial_path(output);
    let header = match seal_to(model, &partial, &key, &options) {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.context(format!("sealing {} failed", model.display())));
        }
    };
    if fresh {
        if let Err(e) = key.write_key_file(&key_path, args.force) {
            let _ = std::fs::remove_file(&partial);
            return Err(anyhow::Error::new(e)
                .context(format!("cannot write the key file {}", key_path.display())));
        }
    }
    std::fs::rename(&partial, output)
        .with_context(|| format!("cannot create {}", output.display()))?;

    println!("sealed {} -> {}", model.display(), output.display());
    println!("  key id        {}", header.key_id);
    println!("  model sha256  {}", hex::encode(header.model_sha256));
    println!(
        "  size          {} bytes in {} chunks of {} KiB",
        header.plaintext_len,
        header.chunk_count,
        header.chunk_size / 1024
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

/// `OUT` → `.OUT.<pid>.partial` in the same directory, so the final rename stays on one
/// file system.
fn partial_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn seal_to(
    model: &Path,
    partial: &Path,
    key: &ModelKey,
    options: &SealOptions,
) -> anyhow::Result<SealedHeader> {
    let input = File::open(model).with_context(|| format!("cannot open {}", model.display()))?;
    let len = input.metadata()?.len();
    let mut reader = BufReader::with_capacity(4 << 20, input);
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut writer = BufWriter::with_capacity(4 << 20, out);

    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(len);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "sealing [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar
    });
    let result = seal(
        &mut reader,
        &mut writer,
        key,
        options,
        &mut |done, total| {
            if let Some(bar) = &bar {
                bar.set_length(total);
                bar.set_position(done);
            }
        },
    );
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let header = result?;
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(header)
}

fn inspect(path: &Path, json: bool) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let h =
        read_header(&file).with_context(|| format!("{} is not a sealed model", path.display()))?;
    if json {
        let value = serde_json::json!({
            "format": "VEILSEAL",
            "version": 1,
            "suite": "AES-256-GCM/HKDF-SHA-256/HMAC-SHA-256",
            "key_id": h.key_id.to_string(),
            "model_sha256": hex::encode(h.model_sha256),
            "plaintext_len": h.plaintext_len,
            "chunk_size": h.chunk_size,
            "chunk_count": h.chunk_count,
            "metadata": h.metadata,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("JSON values serialize")
        );
        return Ok(());
    }
    println!("sealed model  {}", path.display());
    println!("  format        VEILSEAL v1, AES-256-GCM, HKDF-SHA-256, HMAC-SHA-256");
    println!("  key id        {}", h.key_id);
    println!("  model sha256  {}", hex::encode(h.model_sha256));
    println!("  plaintext     {} bytes", h.plaintext_len);
    println!("  chunks        {} × {} bytes", h.chunk_count, h.chunk_size);
    for (k, v) in &h.metadata {
        println!("  {k:13} {v}");
    }
    println!("  (unverified: only the model key can check the header MAC)");
    Ok(())
}
