//! `veil verify`, `veil provision`, `veil ask`, `veil chat`: verify first, then (and only
//! then) talk.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use veil_attestation::KeyRelease;
use veil_sealing::ModelKey;

use crate::files::load_policy;
use crate::kds::{Collateral, KdsArgs};
use crate::output::{print_claims, print_verdict, report_verification, verdict_json};
use crate::remote::{
    attest, within, Connection, Deadlines, Rejected, Session, Target, Trusted, Upstream,
    UpstreamError, Verified,
};
use crate::{CmdResult, Failure};

/// Where and against what policy.
#[derive(Args, Clone)]
pub struct RemoteArgs {
    /// The server, `https://HOST:PORT`.
    pub url: String,
    /// Appraisal policy (TOML).
    #[arg(long)]
    pub policy: PathBuf,
    /// Seconds each step may take: connecting, the TLS handshake, the answer's headers,
    /// a whole answer body, and the gap between two chunks of a streamed answer (default
    /// 10, 10, 30, 60 and 60 s).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: Option<u64>,
    /// Where the VCEK of SNP evidence that carries none comes from.
    #[command(flatten)]
    pub kds: KdsArgs,
}

impl RemoteArgs {
    /// The server, with the deadlines asked for.
    ///
    /// # Errors
    /// If the URL does not parse.
    pub fn target(&self) -> anyhow::Result<Target> {
        let target = Target::parse(&self.url)?;
        Ok(match self.timeout {
            Some(s) => target.with_deadlines(Deadlines::all(Duration::from_secs(s))),
            None => target,
        })
    }

    /// Where collateral the evidence lacks comes from.
    pub fn collateral(&self) -> Collateral {
        Collateral::new(&self.kds)
    }
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
    /// Release the key for this long only (`90s`, `10m`, `2h`, `1d`): provision again
    /// before then to renew; when it runs out (and its grace), the server stops serving
    /// and wipes the weights. Without it, the key is released for good.
    #[arg(long, value_name = "DURATION", value_parser = crate::broker::parse_duration)]
    lease: Option<u64>,
    /// How long past the lease the server may go on (default: a quarter of the lease).
    #[arg(long, value_name = "DURATION", value_parser = crate::broker::parse_duration, requires = "lease")]
    lease_grace: Option<u64>,
}

/// What to ask and how to sample, shared by `ask` and `chat`.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Largest number of tokens in an answer.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// A system message sent before the conversation; `--system ''` sends none (the
    /// model's template may then put its own).
    #[arg(long, default_value = DEFAULT_SYSTEM)]
    pub system: String,
    /// The server's API key (`veil-server --api-keys`), read from this file and sent only
    /// after the server's evidence passed the policy.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Print every check of the appraisal (on stderr), not just the verdict's line.
    #[arg(long)]
    pub verbose: bool,
}

/// The system message `ask` and `chat` send unless told otherwise. Without one, the default
/// model's template says it is "SmolLM, trained by Hugging Face", and its answers to plain
/// questions wander (asked for France's capital it answered with a list of landmarks).
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

impl SamplingArgs {
    /// The headers of a model request: `Authorization` when `--api-key-file` is given.
    ///
    /// # Errors
    /// If the key file cannot be read.
    pub fn headers(&self) -> anyhow::Result<hyper::HeaderMap> {
        let mut headers = hyper::HeaderMap::new();
        if let Some(path) = &self.api_key_file {
            headers.insert(
                hyper::header::AUTHORIZATION,
                crate::api_key::load_api_key(path)?,
            );
        }
        Ok(headers)
    }

    /// The chat-completions request for this conversation, streamed.
    pub fn request(&self, conversation: &[Value]) -> Value {
        let mut messages = Vec::with_capacity(conversation.len() + 1);
        if !self.system.is_empty() {
            messages.push(json!({ "role": "system", "content": self.system }));
        }
        messages.extend_from_slice(conversation);
        json!({
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": true,
        })
    }
}

/// `veil ask`
#[derive(Args)]
pub struct AskArgs {
    #[command(flatten)]
    remote: RemoteArgs,
    /// The question.
    prompt: String,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Verify the answer's receipt against the evidence, the request and the answer as
    /// received, and write it to FILE with all of them (`veil receipt verify FILE`
    /// checks it again, offline).
    #[arg(long, value_name = "FILE")]
    receipt: Option<PathBuf>,
}

/// `veil chat`
#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Prints a rejection's verdict and turns it into exit 3.
pub(crate) fn rejected(r: &Rejected) -> Failure {
    print_verdict(Err(&r.rejection), r.mock);
    Failure::Rejected
}

/// How a command shows the verdict: the table on stdout (`verify`, `provision`), or one
/// line on stderr (`ask`, `chat`, whose stdout is the answer), the table there with
/// `--verbose`.
#[derive(Debug, Clone, Copy)]
enum Show {
    Table,
    Line { verbose: bool },
}

async fn verified(remote: &RemoteArgs, show: Show) -> Result<Verified, Failure> {
    let policy = load_policy(&remote.policy)?;
    let target = remote.target()?;
    match attest(&target, &policy, &remote.collateral()).await? {
        Ok(verified) => {
            let mock = verified.appraisal().is_mock();
            match show {
                Show::Table => print_verdict(Ok(verified.appraisal().claims()), mock),
                Show::Line { verbose } => report_verification(
                    Ok(verified.appraisal().claims()),
                    mock,
                    &remote.url,
                    verbose,
                ),
            }
            Ok(verified)
        }
        Err(r) => match show {
            Show::Table => Err(rejected(&r)),
            Show::Line { verbose } => {
                report_verification(Err(&r.rejection), r.mock, &remote.url, verbose);
                Err(Failure::Rejected)
            }
        },
    }
}

/// Runs `veil verify`.
///
/// # Errors
/// [`Failure::Rejected`] (exit 3) when the evidence fails; [`Failure::Error`] otherwise.
pub fn verify(args: VerifyArgs) -> CmdResult {
    runtime()?.block_on(async {
        let policy = load_policy(&args.remote.policy)?;
        let target = args.remote.target()?;
        let outcome = attest(&target, &policy, &args.remote.collateral()).await?;
        let (verdict, evidence, spki, mock) = match &outcome {
            Ok(v) => (
                Ok(v.appraisal().claims()),
                v.evidence(),
                v.spki_sha256(),
                v.appraisal().is_mock(),
            ),
            Err(r) => (Err(&r.rejection), &r.evidence, r.spki_sha256, r.mock),
        };
        let report = evidence.parsed_report().ok();
        if args.json {
            let mut v = verdict_json(verdict, report.as_ref(), mock);
            v["url"] = json!(args.remote.url);
            v["tls_spki_sha256"] = json!(hex::encode(spki));
            if let Some(b) = &evidence.binding {
                v["model_sha256"] = json!(hex::encode(b.model_sha256));
                v["wrap_pk"] = json!(hex::encode(b.wrap_pk));
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("{}: TLS key sha256 {}", args.remote.url, hex::encode(spki));
            print_verdict(verdict, mock);
            if let Some(r) = &report {
                print_claims(r);
            }
            if let Some(b) = &evidence.binding {
                println!("  {:12} {}", "model_sha256", hex::encode(b.model_sha256));
            }
        }
        outcome.map(|_| ()).map_err(|_| Failure::Rejected)
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
    let lease = crate::broker::lease_terms(args.lease, args.lease_grace)?;
    runtime()?.block_on(async move {
        let mut verified = verified(&args.remote, Show::Table).await?;
        let took = release_key(&mut verified, key, lease, Duration::from_secs(args.wait)).await?;
        if let Some(l) = lease {
            println!(
                "key leased for {} s (grace {} s): provision again before then to renew",
                l.ttl_s, l.grace_s
            );
        }
        println!("ready after {took:.1?}");
        Ok(())
    })
}

/// Sends `key` to a server whose evidence passed appraisal, HPKE-sealed to the wrapping
/// key that appraisal verified, on the attested connection (for the time `lease` says, or
/// for good); then waits (up to `wait`) for the server to unseal, showing progress on
/// stderr. Returns the time to Ready.
///
/// # Errors
/// [`Failure::Error`] if the server refuses the key, fails to unseal, or is not ready in
/// time.
pub async fn release_key(
    verified: &mut Verified,
    key: ModelKey,
    lease: Option<veil_attestation::Lease>,
    wait: Duration,
) -> Result<Duration, Failure> {
    let msg = KeyRelease::seal_leased(
        verified.appraisal(),
        &key.key_id().0,
        key.expose_secret(),
        lease,
    )?;
    drop(key);
    let session = verified.trusted().session();
    let started = Instant::now();
    let (status, body) = session
        .fetch("POST", "/v1/provision", Some(serde_json::to_vec(&msg)?))
        .await?;
    if !status.is_success() {
        return Err(anyhow!(
            "provisioning refused: {status}: {}",
            String::from_utf8_lossy(&body)
        )
        .into());
    }
    eprintln!("key released to the verified server; waiting for it to unseal");
    wait_ready(session, started, wait).await
}

/// Polls `/ready` on `session` every 5 ms until the server is ready (the time since
/// `started`), showing the unsealing progress on a terminal.
///
/// # Errors
/// If the server failed, a key broker it pulls from refused it, or it is not ready
/// `wait` after `started`.
pub async fn wait_ready(
    session: &mut Session,
    started: Instant,
    wait: Duration,
) -> Result<Duration, Failure> {
    let progress = std::io::stderr().is_terminal();
    let mut shown = None;
    loop {
        let (status, body) = session.fetch("GET", "/ready", None).await?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match v["state"].as_str() {
            Some("ready") if status.is_success() => {
                if shown.is_some() {
                    eprintln!();
                }
                return Ok(started.elapsed());
            }
            Some("failed") => {
                return Err(anyhow!(
                    "the server failed: {}",
                    v["reason"].as_str().unwrap_or("unknown")
                )
                .into());
            }
            Some("locked") => {
                if let Some(refused) = v["key_broker"].as_str().filter(|s| s.contains("refused")) {
                    return Err(anyhow!("the server is still locked: {refused}").into());
                }
            }
            Some("unsealing") if progress => {
                if let (Some(done), Some(total)) =
                    (v["unsealed_bytes"].as_u64(), v["total_bytes"].as_u64())
                {
                    let percent = done * 100 / total.max(1);
                    if shown != Some(percent) {
                        if percent < 100 {
                            eprint!("\runsealing {percent:>3}%");
                        } else {
                            eprint!("\runsealed; loading the model");
                        }
                        shown = Some(percent);
                    }
                }
            }
            _ => {}
        }
        if started.elapsed() > wait {
            return Err(anyhow!("the server was not ready after {wait:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `veil ask`: verify, then stream the answer to stdout.
///
/// # Errors
/// [`Failure::Rejected`] or [`Failure::Error`].
pub fn ask(args: AskArgs) -> CmdResult {
    runtime()?.block_on(async {
        let headers = args.sampling.headers()?;
        let show = Show::Line {
            verbose: args.sampling.verbose,
        };
        let verified = verified(&args.remote, show).await?;
        let request = args
            .sampling
            .request(&[json!({ "role": "user", "content": args.prompt })]);
        let request = serde_json::to_vec(&request)?;
        let attested = verified.attested();
        let mut session = verified.into_trusted();
        let answer = stream_chat_recorded(
            &mut session,
            &headers,
            request.clone(),
            &mut std::io::stdout(),
        )
        .await?;
        println!();
        if let Some(path) = &args.receipt {
            let policy = load_policy(&args.remote.policy)?;
            keep_receipt(
                path,
                &args.remote.url,
                &attested,
                &request,
                &answer,
                &policy,
            )?;
        }
        Ok(())
    })
}

/// Verifies a streamed answer's receipt at once and writes its bundle to `path` (mode
/// 0600: it holds the prompt and the answer).
fn keep_receipt(
    path: &std::path::Path,
    url: &str,
    attested: &crate::receipt::Attested,
    request: &[u8],
    answer: &StreamedAnswer,
    policy: &veil_attestation::Policy,
) -> CmdResult {
    let Some(receipt) = &answer.receipt else {
        return Err(anyhow!(
            "the server sent no receipt with its answer (started with --no-receipts?); nothing written to {}",
            path.display()
        )
        .into());
    };
    if answer.body.is_empty() {
        return Err(anyhow!("the answer was too long to keep for its receipt").into());
    }
    let bundle = crate::receipt::Bundle::new(
        receipt,
        url,
        "/v1/chat/completions",
        attested,
        request,
        &answer.body,
    );
    let verdict = crate::receipt::verify(&bundle, request, &answer.body, policy);
    if !verdict.verified() {
        eprintln!("{verdict}");
        return Err(Failure::Rejected);
    }
    crate::files::write_new(path, bundle.to_json().as_bytes(), true, true)?;
    let r = verdict.receipt.as_ref().expect("verified");
    eprintln!(
        "veil: receipt {} #{} verified and written to {}",
        r.id,
        r.seq,
        path.display()
    );
    Ok(())
}

/// Runs `veil chat`: verify, then a conversation read line by line from stdin, each turn
/// sent with the whole history. Every connection is pinned to the verified key; a changed
/// key is verified again before anything is sent. `/reset` forgets the history; `/quit`
/// or end of input leaves.
///
/// # Errors
/// [`Failure::Rejected`] or [`Failure::Error`].
pub fn chat(args: ChatArgs) -> CmdResult {
    runtime()?.block_on(async {
        let policy = load_policy(&args.remote.policy)?;
        let upstream = Upstream::new(args.remote.target()?, policy, args.remote.collateral());
        let headers = args.sampling.headers()?;
        let (url, verbose) = (args.remote.url.as_str(), args.sampling.verbose);
        let mut session = connect_verified(&upstream, url, verbose).await?;
        eprintln!("type a message (/reset forgets the conversation, /quit leaves)");
        let mut history: Vec<Value> = Vec::new();
        // The server reuses this conversation's prompt prefix only for requests that
        // carry this key, a secret of this conversation (docs/threat-model.md).
        let mut conversation = conversation_key();
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut out = std::io::stdout();
        let interactive = std::io::stdin().is_terminal();
        loop {
            if interactive {
                eprint!("> ");
            }
            let Some(line) = lines.next_line().await.context("reading stdin")? else {
                return Ok(());
            };
            let line = line.trim();
            match line {
                "" => continue,
                "/quit" | "/exit" => return Ok(()),
                "/reset" => {
                    history.clear();
                    conversation = conversation_key();
                    eprintln!("(conversation forgotten)");
                    continue;
                }
                _ => {}
            }
            history.push(json!({ "role": "user", "content": line }));
            let mut request = args.sampling.request(&history);
            request["prompt_cache_key"] = json!(conversation);
            let answer = match stream_chat(&mut session, &headers, &request, &mut out).await {
                Ok(answer) => answer,
                Err(e) if session.is_closed() => {
                    // The server closed the connection (restart, idle timeout): reconnect
                    // under the pin, or verify the new key, and send this turn again.
                    eprintln!("veil: connection lost ({e:#}); reconnecting");
                    session = connect_verified(&upstream, url, verbose).await?;
                    stream_chat(&mut session, &headers, &request, &mut out).await?
                }
                Err(e) => return Err(e.into()),
            };
            writeln!(out)?;
            history.push(json!({ "role": "assistant", "content": answer }));
        }
    })
}

/// A random `prompt_cache_key` for one conversation (128 bits, hex).
fn conversation_key() -> String {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the system CSPRNG works");
    hex::encode(b)
}

async fn connect_verified(
    upstream: &Upstream,
    url: &str,
    verbose: bool,
) -> Result<Trusted, Failure> {
    match upstream.connect().await {
        Ok(Connection::Pinned(s)) => Ok(s),
        Ok(Connection::Verified(v)) => {
            report_verification(
                Ok(v.appraisal().claims()),
                v.appraisal().is_mock(),
                url,
                verbose,
            );
            Ok(v.into_trusted())
        }
        Err(UpstreamError::Rejected { rejection, mock }) => {
            report_verification(Err(&rejection), mock, url, verbose);
            Err(Failure::Rejected)
        }
        Err(UpstreamError::Unreachable(e)) => Err(Failure::Error(e)),
    }
}

/// Sends a streamed chat-completions request over a [`Trusted`] session (a prompt never
/// goes over an unverified one) and writes the answer's text to `out` as it arrives.
/// Returns the whole answer.
///
/// # Errors
/// If the server refuses the request (its error message is quoted), the stream breaks,
/// or it ends without `[DONE]`.
pub async fn stream_chat(
    session: &mut Trusted,
    headers: &hyper::HeaderMap,
    request: &Value,
    out: &mut dyn Write,
) -> anyhow::Result<String> {
    let body = serde_json::to_vec(request)?;
    Ok(stream_chat_recorded(session, headers, body, out)
        .await?
        .text)
}

/// A streamed answer as it came: its text, the exact body bytes (for its receipt's
/// bundle), and the receipt its last chunk carried.
#[derive(Debug)]
pub struct StreamedAnswer {
    /// The concatenated text deltas.
    pub text: String,
    /// The response body, SSE framing and all (empty if it outgrew
    /// [`MAX_RECORDED`]).
    pub body: Vec<u8>,
    /// The compact receipt of the answer, if the server signed one.
    pub receipt: Option<String>,
}

/// Longest streamed body [`stream_chat_recorded`] keeps.
pub const MAX_RECORDED: usize = 32 << 20;

/// [`stream_chat`] with the request's exact bytes, returning what a receipt is verified
/// against.
///
/// # Errors
/// As [`stream_chat`].
pub async fn stream_chat_recorded(
    session: &mut Trusted,
    headers: &hyper::HeaderMap,
    request: Vec<u8>,
    out: &mut dyn Write,
) -> anyhow::Result<StreamedAnswer> {
    let deadlines = session.session().deadlines();
    let resp = within(
        deadlines.response,
        || "POST /v1/chat/completions: no answer".to_owned(),
        session
            .session()
            .send_with("POST", "/v1/chat/completions", headers, Some(request)),
    )
    .await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let bytes = tokio::time::timeout(
            deadlines.body,
            http_body_util::Limited::new(resp.into_body(), 1 << 16).collect(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| b.to_bytes())
        .unwrap_or_default();
        bail!(
            "the server answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let mut body = resp.into_body();
    let mut pending = Vec::new();
    let mut answer = StreamedAnswer {
        text: String::new(),
        body: Vec::new(),
        receipt: None,
    };
    let mut recording = true;
    // The stream may last as long as generation does, but never stalls for longer than
    // the idle deadline.
    while let Some(frame) = within(
        deadlines.idle,
        || "the streamed answer: no next chunk".to_owned(),
        async { Ok(body.frame().await) },
    )
    .await?
    {
        let frame = frame.map_err(|e| anyhow!("the stream broke: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if recording && answer.body.len() + data.len() <= MAX_RECORDED {
            answer.body.extend_from_slice(data);
        } else if recording {
            recording = false;
            answer.body = Vec::new();
        }
        pending.extend_from_slice(data);
        // Events are split on the blank line; a UTF-8 sequence never spans one.
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            for line in String::from_utf8_lossy(&event).lines() {
                let Some(payload) = line.strip_prefix("data: ") else {
                    continue;
                };
                if payload == "[DONE]" {
                    return Ok(answer);
                }
                let v: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
                if let Some(err) = v.get("error") {
                    bail!("generation failed: {}", err["message"]);
                }
                if let Some(r) = v.get(veil_attestation::receipt::CHUNK_FIELD) {
                    answer.receipt = r.as_str().map(str::to_owned);
                    continue;
                }
                if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                    write!(out, "{t}")?;
                    out.flush()?;
                    answer.text.push_str(t);
                }
            }
        }
    }
    bail!("the stream ended without [DONE]")
}
