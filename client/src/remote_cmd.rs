//! `veil verify`, `veil provision`, `veil ask`: verify first, then (and only then) talk.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Args;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use veil_attestation::{KeyRelease, Policy};
use veil_sealing::ModelKey;

use crate::output::{print_verdict, verdict_json};
use crate::remote::{attest, Attested, Target};
use crate::report_cmd::load_policy;
use crate::{CmdResult, Failure};

/// Where and against what policy.
#[derive(Args, Clone)]
pub struct RemoteArgs {
    /// The server, `https://HOST:PORT`.
    pub url: String,
    /// Appraisal policy (TOML).
    #[arg(long)]
    pub policy: PathBuf,
}

/// `veil verify`
#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    remote: RemoteArgs,
    /// Print a machine-readable verdict.
    #[arg(long)]
    json: bool,
}

/// `veil provision`
#[derive(Args)]
pub struct ProvisionArgs {
    #[command(flatten)]
    remote: RemoteArgs,
    /// The model key file (`veil seal --key-out`).
    #[arg(long)]
    key: PathBuf,
    /// Seconds to wait for the server to become ready.
    #[arg(long, default_value_t = 600)]
    wait: u64,
}

/// `veil ask`
#[derive(Args)]
pub struct AskArgs {
    #[command(flatten)]
    remote: RemoteArgs,
    /// The question.
    prompt: String,
    /// Largest number of tokens in the answer.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn verified(remote: &RemoteArgs, quiet: bool) -> Result<(Attested, Policy), Failure> {
    let policy = load_policy(&remote.policy)?;
    let target = Target::parse(&remote.url)?;
    let attested = attest(&target, &policy).await?;
    let mock = attested.evidence.tee == veil_attestation::TeeKind::Mock;
    if attested.result.is_err() || !quiet {
        print_verdict(&attested.result, mock);
    }
    if attested.result.is_err() {
        return Err(Failure::Rejected);
    }
    Ok((attested, policy))
}

/// Runs `veil verify`.
///
/// # Errors
/// [`Failure::Rejected`] (exit 3) when the evidence fails; [`Failure::Error`] otherwise.
pub fn verify(args: VerifyArgs) -> CmdResult {
    runtime()?.block_on(async {
        let policy = load_policy(&args.remote.policy)?;
        let target = Target::parse(&args.remote.url)?;
        let a = attest(&target, &policy).await?;
        let mock = a.evidence.tee == veil_attestation::TeeKind::Mock;
        let report = a.evidence.parsed_report().ok();
        if args.json {
            let mut v = verdict_json(&a.result, report.as_ref(), mock);
            v["url"] = json!(args.remote.url);
            v["tls_spki_sha256"] = json!(hex::encode(a.session.spki_sha256));
            if let Some(b) = &a.evidence.binding {
                v["model_sha256"] = json!(hex::encode(b.model_sha256));
                v["wrap_pk"] = json!(hex::encode(b.wrap_pk));
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!(
                "{}: TLS key sha256 {}",
                args.remote.url,
                hex::encode(a.session.spki_sha256)
            );
            print_verdict(&a.result, mock);
            if let (Ok(_), Some(b)) = (&a.result, &a.evidence.binding) {
                println!("model sha256 {}", hex::encode(b.model_sha256));
            }
        }
        a.result.map(|_| ()).map_err(|_| Failure::Rejected)
    })
}

/// Runs `veil provision`: verify, then send the key sealed to the bound wrapping key on the
/// same connection, then wait for Ready. Nothing is sent if verification fails.
///
/// # Errors
/// [`Failure::Rejected`] or [`Failure::Error`].
pub fn provision(args: ProvisionArgs) -> CmdResult {
    let key = ModelKey::read_key_file(&args.key)
        .with_context(|| format!("key file {}", args.key.display()))?;
    runtime()?.block_on(async move {
        let (mut a, _) = verified(&args.remote, false).await?;
        let Ok(appraisal) = a.result.as_ref() else {
            return Err(Failure::Rejected);
        };
        let binding = a
            .evidence
            .binding
            .clone()
            .ok_or_else(|| anyhow!("the evidence binds no wrapping key"))?;
        let msg = KeyRelease::seal(
            appraisal,
            &binding.wrap_pk,
            &key.key_id().to_string(),
            key.expose_secret(),
        )?;
        drop(key);
        let (status, body) = a
            .session
            .fetch("POST", "/v1/provision", Some(serde_json::to_vec(&msg)?))
            .await?;
        if !status.is_success() {
            return Err(anyhow!(
                "provisioning refused: {status}: {}",
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        println!("key released to the verified server; waiting for it to unseal");
        let started = Instant::now();
        loop {
            let (status, body) = a.session.fetch("GET", "/ready", None).await?;
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            match v["state"].as_str() {
                Some("ready") if status.is_success() => {
                    println!("ready after {:.1?}", started.elapsed());
                    return Ok(());
                }
                Some("failed") => {
                    return Err(anyhow!(
                        "the server failed: {}",
                        v["reason"].as_str().unwrap_or("unknown")
                    )
                    .into());
                }
                Some("unsealing") => {
                    if let (Some(done), Some(total)) =
                        (v["unsealed_bytes"].as_u64(), v["total_bytes"].as_u64())
                    {
                        eprint!("\runsealing {:>3}%", done * 100 / total.max(1));
                    }
                }
                _ => {}
            }
            if started.elapsed() > Duration::from_secs(args.wait) {
                return Err(anyhow!("the server was not ready after {} s", args.wait).into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Runs `veil ask`: verify, then stream the answer to stdout.
///
/// # Errors
/// [`Failure::Rejected`] or [`Failure::Error`].
pub fn ask(args: AskArgs) -> CmdResult {
    runtime()?.block_on(async {
        let (mut a, _) = verified(&args.remote, true).await?;
        let body = json!({
            "messages": [{ "role": "user", "content": args.prompt }],
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
            "stream": true,
        });
        let resp = a
            .session
            .send(
                "POST",
                "/v1/chat/completions",
                Some(serde_json::to_vec(&body)?),
            )
            .await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(anyhow!(
                "the server answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )
            .into());
        }
        let mut body = resp.into_body();
        let mut pending = String::new();
        let mut out = std::io::stdout();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| anyhow!("the stream broke: {e}"))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                for line in event.lines() {
                    let Some(payload) = line.strip_prefix("data: ") else {
                        continue;
                    };
                    if payload == "[DONE]" {
                        writeln!(out)?;
                        return Ok(());
                    }
                    let v: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
                    if let Some(err) = v.get("error") {
                        return Err(anyhow!("generation failed: {}", err["message"]).into());
                    }
                    if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                        write!(out, "{t}")?;
                        out.flush()?;
                    }
                }
            }
        }
        Err(anyhow!("the stream ended without [DONE]").into())
    })
}
