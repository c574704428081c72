//! `veil proxy`: a local, plain-HTTP, OpenAI-compatible endpoint for clients that know
//! nothing of attestation (the `openai` SDKs, curl). It forwards `GET /v1/models[/ID]`,
//! `POST /v1/chat/completions` and `POST /v1/completions` (with the client's
//! `Authorization`, or its own from `--api-key-file`) to a `veil-server` only over a
//! connection pinned to a TLS key whose evidence passed the policy, and answers `/health`
//! (itself) and `/ready` (the upstream verified and Ready) on its own; when the server's key changes (a restart, or
//! someone else answering) it verifies again before it forwards, and when verification
//! fails it answers 502 with the reason and forwards nothing.
//!
//! Responses are streamed through as they arrive, so server-sent events keep their pace.
//! The endpoint speaks plain HTTP, so it listens on loopback addresses only.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use veil_attestation::Policy;

use crate::files::load_policy;
use crate::http::{
    json_response, read_body, reload_on_sighup, serve, shutdown_signal, Handler, ListenLimits,
};
use crate::kds::{Collateral, KdsArgs};
use crate::output::report_verification;
use crate::remote::{Connection, Target, Trusted, Upstream, UpstreamError};
use crate::{CmdResult, Failure};

/// Largest request body forwarded.
const MAX_BODY: usize = 4 << 20;

/// `veil proxy`
#[derive(Args)]
pub struct ProxyArgs {
    /// Where to listen (a loopback address: the endpoint is plain HTTP).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// The server, `https://HOST:PORT`.
    #[arg(long)]
    pub upstream: String,
    /// Appraisal policy (TOML).
    #[arg(long)]
    pub policy: PathBuf,
    /// Web origins whose pages may call the proxy (`https://app.example`; repeatable). By
    /// default a request with an `Origin` header is refused: the proxy serves its own
    /// user's programs, not web pages, which could otherwise prompt the model and read the
    /// answers.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origins: Vec<String>,
    /// Where the VCEK of SNP evidence that carries none comes from.
    #[command(flatten)]
    pub kds: KdsArgs,
    /// Seconds a streamed answer may go without a chunk from the server before the proxy
    /// gives up on it and ends the client's response.
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub stream_idle_timeout: u64,
    /// Connection caps and timeouts.
    #[command(flatten)]
    pub limits: ListenLimits,
    /// The server's API key (`veil-server --api-keys`), read from this file and sent with
    /// every forwarded request in place of the client's `Authorization` (which is
    /// forwarded as it is without this option).
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Print every check of each appraisal (on stderr), not just the verdict's line.
    #[arg(long)]
    pub verbose: bool,
    /// Keep every completion's receipt in DIR, one bundle per answer (named by its id) with
    /// the evidence it was verified under and the exact request and response; each is
    /// verified as it is written (`veil receipt verify` checks one again, offline).
    #[arg(long, value_name = "DIR")]
    pub receipts: Option<PathBuf>,
}

/// An error inside a proxied body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a proxied response: the upstream's stream (ended with an error if it
/// stalls past the idle timeout), or a local answer.
pub type ProxyBody = Either<BoxBody<Bytes, BoxError>, Full<Bytes>>;

/// The proxy's state: one verified upstream, and who may call it.
pub struct Proxy {
    upstream: Upstream,
    url: String,
    /// The listening address, which `Host` may name besides `localhost`.
    local: Option<std::net::IpAddr>,
    allow_origins: Vec<String>,
    stream_idle: Duration,
    /// With `--api-key-file`: the `Authorization` sent upstream instead of the client's.
    authorization: Option<hyper::header::HeaderValue>,
    verbose: bool,
    /// With `--receipts`: where each answer's bundle goes.
    receipts: Option<Arc<PathBuf>>,
}

impl Proxy {
    /// A proxy to `url`, appraised against `policy`, its evidence completed from
    /// `collateral`.
    ///
    /// # Errors
    /// If the URL is not a Veil server URL.
    pub fn new(url: &str, policy: Policy, collateral: Collateral) -> anyhow::Result<Self> {
        Ok(Proxy {
            upstream: Upstream::new(Target::parse(url)?, policy, collateral),
            url: url.to_owned(),
            local: None,
            allow_origins: Vec::new(),
            stream_idle: Duration::from_secs(60),
            authorization: None,
            verbose: false,
            receipts: None,
        })
    }

    /// The same, listening at `local` (which `Host` may name) and answering pages of
    /// `origins` too.
    #[must_use]
    pub fn serving(self, local: SocketAddr, origins: &[String]) -> Self {
        Proxy {
            local: Some(local.ip()),
            allow_origins: origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            ..self
        }
    }

    /// The same, giving up on an upstream answer that sends nothing for `idle`.
    #[must_use]
    pub fn stream_idle_timeout(self, idle: Duration) -> Self {
        Proxy {
            stream_idle: idle,
            ..self
        }
    }

    /// The same, sending `authorization` upstream in place of the client's.
    #[must_use]
    pub fn authorization(self, authorization: Option<hyper::header::HeaderValue>) -> Self {
        Proxy {
            authorization,
            ..self
        }
    }

    /// The same, keeping each completion's receipt bundle in `dir`.
    #[must_use]
    pub fn receipts(self, dir: Option<PathBuf>) -> Self {
        Proxy {
            receipts: dir.map(Arc::new),
            ..self
        }
    }

    /// The same, printing every check of each appraisal.
    #[must_use]
    pub fn verbose(self, verbose: bool) -> Self {
        Proxy { verbose, ..self }
    }

    /// A connection to the verified upstream (verified again if its key changed), or the
    /// 502 that says why there is none.
    async fn trusted(&self) -> Result<Trusted, Response<ProxyBody>> {
        self.trusted_or_reason()
            .await
            .map_err(|(code, message)| local_error(StatusCode::BAD_GATEWAY, code, &message))
    }

    /// The same, or the error code and message.
    async fn trusted_or_reason(&self) -> Result<Trusted, (&'static str, String)> {
        match self.upstream.connect().await {
            Ok(Connection::Pinned(s)) => Ok(s),
            Ok(Connection::Verified(v)) => {
                let mock = v.appraisal().is_mock();
                report_verification(Ok(v.appraisal().claims()), mock, &self.url, self.verbose);
                Ok(v.into_trusted())
            }
            Err(e) => {
                let code = match &e {
                    UpstreamError::Rejected { rejection, mock } => {
                        report_verification(Err(rejection), *mock, &self.url, self.verbose);
                        "attestation_rejected"
                    }
                    UpstreamError::Unreachable(_) => "upstream_unreachable",
                };
                eprintln!("veil proxy: refusing to forward: {e}");
                Err((code, format!("veil proxy did not forward the request: {e}")))
            }
        }
    }

    /// `GET /ready`: 200 while the upstream verifies and is Ready itself; 503 otherwise,
    /// with the reason (the upstream's state, or why it is not verified).
    async fn ready(&self) -> Response<ProxyBody> {
        let not_ready = |reason: String| {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "ready": false, "upstream": self.url, "reason": reason }),
            )
            .map(Either::Right)
        };
        let mut session = match self.trusted_or_reason().await {
            Ok(s) => s,
            Err((code, message)) => return not_ready(format!("{code}: {message}")),
        };
        match session.session().fetch("GET", "/ready", None).await {
            Ok((status, _)) if status == StatusCode::OK => json_response(
                StatusCode::OK,
                &serde_json::json!({ "ready": true, "upstream": self.url, "verified": true }),
            )
            .map(Either::Right),
            Ok((status, body)) => {
                let state = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["state"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| status.to_string());
                not_ready(format!("the verified upstream is {state}"))
            }
            Err(e) => not_ready(format!("the verified upstream did not answer: {e:#}")),
        }
    }

    /// Refuses what a web page, rather than the user's own program, would send: a `Host`
    /// that is not this machine (DNS rebinding), an `Origin` not allowed, and a chat
    /// request that is not `application/json` (a "simple" cross-site form or `text/plain`
    /// POST, which browsers send without asking).
    fn refuse(&self, parts: &hyper::http::request::Parts) -> Option<Response<ProxyBody>> {
        let host = parts
            .headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !self.is_local_host(host) {
            return Some(local_error(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                &format!(
                    "veil proxy answers requests for localhost or its own address, not Host {host:?} (a web page reaching it through DNS rebinding)"
                ),
            ));
        }
        if let Some(origin) = parts.headers.get(hyper::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            let wanted = origin.trim_end_matches('/').to_ascii_lowercase();
            if !self.allow_origins.contains(&wanted) {
                return Some(local_error(
                    StatusCode::FORBIDDEN,
                    "origin_not_allowed",
                    &format!(
                        "veil proxy does not answer web pages (Origin {origin:?}); allow one with --allow-origin"
                    ),
                ));
            }
        }
        if parts.method == Method::POST {
            let json = parts
                .headers
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|c| c.to_str().ok())
                .and_then(|c| c.split(';').next())
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/json"));
            if !json {
                return Some(local_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "veil proxy takes chat requests as Content-Type: application/json",
                ));
            }
        }
        None
    }

    /// Whether `host` (a `Host` header: name or address, optional port) is this machine.
    fn is_local_host(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            // [v6]:port
            Some(rest) => rest.split(']').next().unwrap_or_default(),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        match name.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback() || Some(ip) == self.local,
            Err(_) => false,
        }
    }

    /// Verifies the upstream now (the proxy also does so lazily on the first request).
    ///
    /// # Errors
    /// As [`Upstream::connect`].
    pub async fn verify(&self) -> Result<Connection, UpstreamError> {
        self.upstream.connect().await
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        if let Some(refused) = self.refuse(&parts) {
            return refused;
        }
        let path = parts.uri.path().to_owned();
        match (&parts.method, path.as_str()) {
            (&Method::GET, "/health") => {
                return json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
                    .map(Either::Right)
            }
            (&Method::GET, "/ready") => return self.ready().await,
            _ => {}
        }
        if !forwarded(&parts.method, &path) {
            return local_error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!(
                    "veil proxy forwards GET /v1/models[/ID], POST /v1/chat/completions, /v1/completions and /v1/embeddings, not {} {path}",
                    parts.method
                ),
            );
        }
        let body = match read_body(&parts.extensions, body, MAX_BODY).await {
            Ok(b) => b,
            Err(e) => return local_error(e.status(), e.code(), &e.to_string()),
        };
        let mut session = match self.trusted().await {
            Ok(s) => s,
            Err(refused) => return refused,
        };
        // The API key: the proxy's own, or the client's as it came; nothing else of the
        // client's headers goes upstream.
        let mut headers = hyper::HeaderMap::new();
        if let Some(auth) = self
            .authorization
            .as_ref()
            .or_else(|| parts.headers.get(hyper::header::AUTHORIZATION))
        {
            headers.insert(hyper::header::AUTHORIZATION, auth.clone());
        }
        let body = (parts.method == Method::POST).then(|| body.to_vec());
        let spki = session.session().spki_sha256;
        let recorder = self.receipts.as_ref().and_then(|dir| {
            let completion = matches!(path.as_str(), "/v1/chat/completions" | "/v1/completions");
            completion.then(|| Recorder {
                dir: Arc::clone(dir),
                url: self.url.clone(),
                route: path.clone(),
                request: body.clone().unwrap_or_default(),
                attested: self.upstream.attested(&spki),
                policy: self.upstream.policy(),
                headers: hyper::HeaderMap::new(),
                body: Vec::new(),
            })
        });
        let resp = match session
            .session()
            .send_with(parts.method.as_str(), &path, &headers, body)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return local_error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_failed",
                    &format!("the verified server did not answer: {e:#}"),
                )
            }
        };
        let (mut head, body) = resp.into_parts();
        for hop in ["connection", "keep-alive", "transfer-encoding"] {
            head.headers.remove(hop);
        }
        let recorder = recorder
            .filter(|_| head.status.is_success())
            .map(|r| Recorder {
                headers: head.headers.clone(),
                ..r
            });
        Response::from_parts(
            head,
            Either::Left(idle_bounded(body, self.stream_idle, recorder)),
        )
    }
}

/// Whether `method path` is one of the OpenAI routes the proxy forwards.
fn forwarded(method: &Method, path: &str) -> bool {
    match *method {
        Method::GET => {
            path == "/v1/models"
                || path
                    .strip_prefix("/v1/models/")
                    .is_some_and(|id| !id.is_empty() && !id.contains('/'))
        }
        Method::POST => matches!(
            path,
            "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings"
        ),
        _ => false,
    }
}

/// What `--receipts` keeps of one answer while it passes through.
struct Recorder {
    dir: Arc<PathBuf>,
    url: String,
    route: String,
    request: Vec<u8>,
    /// What the connection's key was verified under (none: a policy reload raced it).
    attested: Option<Arc<crate::receipt::Attested>>,
    policy: Arc<Policy>,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

impl Recorder {
    fn record(&mut self, data: &Bytes) {
        if self.body.len() + data.len() <= crate::remote_cmd::MAX_RECORDED {
            self.body.extend_from_slice(data);
        } else {
            self.body.clear();
            self.body.shrink_to_fit();
            self.route.clear();
        }
    }

    /// The answer is complete: verify its receipt and write its bundle.
    fn finish(self) {
        let what = || format!("veil proxy: the answer to {}", self.route);
        if self.route.is_empty() {
            eprintln!("veil proxy: an answer too long to keep for its receipt was not kept");
            return;
        }
        let Some(receipt) = crate::receipt::receipt_of(&self.headers, &self.body) else {
            eprintln!("{} came without a receipt (the server signs none?)", what());
            return;
        };
        let Some(attested) = &self.attested else {
            eprintln!(
                "{}: its connection's evidence is no longer known; receipt not kept",
                what()
            );
            return;
        };
        let bundle = crate::receipt::Bundle::new(
            &receipt,
            &self.url,
            &self.route,
            attested,
            &self.request,
            &self.body,
        );
        let verdict = crate::receipt::verify(&bundle, &self.request, &self.body, &self.policy);
        let mut name = crate::receipt::file_name(&receipt);
        if !verdict.verified() {
            eprintln!("{}: its receipt did not verify:\n{verdict}", what());
            name = format!("rejected-{name}");
        }
        let path = self.dir.join(name);
        if let Err(e) = crate::files::write_new(&path, bundle.to_json().as_bytes(), true, false) {
            eprintln!("{}: receipt not kept: {e:#}", what());
        }
    }
}

/// `body`, ended with an error (which aborts the client's response) when no frame comes
/// within `idle`: a stalled server does not hold the client's request open for ever. With
/// a `recorder`, the answer is kept as it passes, and its receipt written when it ends.
fn idle_bounded(
    body: Incoming,
    idle: Duration,
    recorder: Option<Recorder>,
) -> BoxBody<Bytes, BoxError> {
    let state = Some((body, recorder));
    let frames = futures_util::stream::unfold(state, move |state| async move {
        let (mut body, mut recorder) = state?;
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let (Some(r), Some(data)) = (recorder.as_mut(), frame.data_ref()) {
                    r.record(data);
                }
                // A body of known length ends with its last byte: the client's side is
                // not polled again for the end, so the receipt is kept now, before the
                // last frame goes out.
                if body.is_end_stream() {
                    finish(recorder.take()).await;
                }
                Some((Ok(frame), Some((body, recorder))))
            }
            Ok(Some(Err(e))) => Some((Err(BoxError::from(e)), None)),
            Ok(None) => {
                finish(recorder).await;
                None
            }
            Err(_) => {
                let message = format!(
                    "the server sent nothing for {} s (--stream-idle-timeout): the answer is cut off",
                    idle.as_secs()
                );
                eprintln!("veil proxy: {message}");
                Some((Err(BoxError::from(message)), None))
            }
        }
    });
    StreamBody::new(frames).boxed()
}

/// Verifies and writes a finished answer's receipt, off the async threads.
async fn finish(recorder: Option<Recorder>) {
    if let Some(r) = recorder {
        let _ = tokio::task::spawn_blocking(move || r.finish()).await;
    }
}

fn local_error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "error": { "message": message, "type": "veil_proxy_error", "param": null, "code": code }
    });
    json_response(status, &body).map(Either::Right)
}

impl Handler for Proxy {
    type Body = ProxyBody;

    // The client's connection and the upstream one.
    const DESCRIPTORS_PER_CONNECTION: u64 = 2;

    fn handle(
        &self,
        req: Request<Incoming>,
        _peer: std::net::SocketAddr,
    ) -> impl Future<Output = Response<ProxyBody>> + Send {
        Proxy::handle(self, req)
    }
}

/// Binds `listen`, refusing addresses other than loopback.
///
/// # Errors
/// If the address is not loopback or cannot be bound.
pub async fn bind_loopback(listen: &str) -> anyhow::Result<TcpListener> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(listen)
        .await
        .with_context(|| format!("--listen {listen:?}"))?
        .collect();
    if addrs.is_empty() || !addrs.iter().all(|a| a.ip().is_loopback()) {
        bail!("--listen {listen}: the proxy speaks plain HTTP, so it listens on loopback only (e.g. 127.0.0.1:8080)");
    }
    TcpListener::bind(addrs.as_slice())
        .await
        .with_context(|| format!("cannot listen on {listen}"))
}

/// Runs `veil proxy`: verifies the upstream once at start (exit 3 if rejected), then
/// serves until Ctrl-C.
///
/// # Errors
/// [`Failure::Rejected`] or [`Failure::Error`].
pub fn run(args: ProxyArgs) -> CmdResult {
    let policy = load_policy(&args.policy)?;
    let proxy = Proxy::new(&args.upstream, policy, Collateral::new(&args.kds))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if let Some(dir) = &args.receipts {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--receipts {}: cannot create it", dir.display()))?;
    }
    runtime.block_on(async {
        let listener = bind_loopback(&args.listen).await?;
        let authorization = args
            .api_key_file
            .as_deref()
            .map(crate::api_key::load_api_key)
            .transpose()?;
        let proxy = Arc::new(
            proxy
                .serving(listener.local_addr()?, &args.allow_origins)
                .stream_idle_timeout(Duration::from_secs(args.stream_idle_timeout))
                .authorization(authorization)
                .verbose(args.verbose)
                .receipts(args.receipts.clone()),
        );
        let (reloaded, path) = (Arc::clone(&proxy), args.policy.clone());
        reload_on_sighup(format!("policy {}", path.display()), move || {
            let policy = load_policy(&path)?;
            let crls = policy.loaded_crls().len();
            reloaded.upstream.set_policy(policy);
            Ok(format!("policy {} reloaded ({crls} CRLs)", path.display()))
        })?;
        match proxy.verify().await {
            Ok(c) => {
                if let Connection::Verified(v) = &c {
                    let mock = v.appraisal().is_mock();
                    report_verification(Ok(v.appraisal().claims()), mock, &args.upstream, args.verbose);
                }
            }
            Err(UpstreamError::Rejected { rejection, mock }) => {
                report_verification(Err(&rejection), mock, &args.upstream, args.verbose);
                return Err(Failure::Rejected);
            }
            Err(UpstreamError::Unreachable(e)) => return Err(Failure::Error(e)),
        }
        let addr = listener.local_addr()?;
        println!(
            "veil proxy listening on http://{addr}/v1 -> {} (verified; re-verified whenever its key changes, or on SIGHUP with the policy reloaded)",
            args.upstream
        );
        serve(listener, proxy, args.limits, shutdown_signal()).await?;
        Ok(())
    })
}
