//! One attested TLS connection to a `veil-server`: handshake (signature checked, certificate
//! captured), the RFC 9266 exporter, a fresh nonce, `GET /v1/attestation` on that same
//! connection, and appraisal with the binding recomputed from what this client saw.
//!
//! The types carry the proof: [`attest`] returns a [`Verified`] connection (the session
//! and the [`Appraisal`] of its evidence) or a [`Rejected`] one. Only a [`Verified`] can
//! mint the [`Pin`] that later connections are held to, and only a [`Trusted`] session (one
//! attested just now, or pinned to an attested key) can carry a prompt or a key. A bare
//! [`Session`] is made only under [`danger`]:
//!
//! ```compile_fail
//! # async fn f(session: &mut veil_client::remote::Session) {
//! // An unverified session is not a `Trusted` one: this does not compile.
//! let request = serde_json::json!({"messages": []});
//! let _ = veil_client::remote_cmd::stream_chat(session, &hyper::HeaderMap::new(), &request, &mut std::io::sink()).await;
//! # }
//! ```
//!
//! ```no_run
//! # async fn f(session: &mut veil_client::remote::Trusted) {
//! let request = serde_json::json!({"messages": []});
//! let _ = veil_client::remote_cmd::stream_chat(session, &hyper::HeaderMap::new(), &request, &mut std::io::sink()).await;
//! # }
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::CertificateError;
use veil_attestation::binding::{Nonce, Purpose, Transcript, EXPORTER_LABEL};
use veil_attestation::{Appraisal, Evidence, Expected, Policy, Rejection, TeeKind};

use crate::kds::Collateral;
use crate::pin::{cert_spki_sha256, client_config, PinMode};

/// Where a server is: `https://HOST:PORT`, and how long each step of talking to it may
/// take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The deadline of each step.
    pub deadlines: Deadlines,
}

/// How long each step of a request may take before it fails, naming the step. No wait on
/// a server is unbounded: a listener that never speaks, a TLS server that never answers
/// and a body that trickles in all end in an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// The TCP connection (default 10 s).
    pub connect: Duration,
    /// The TLS handshake (default 10 s).
    pub handshake: Duration,
    /// From sending a request to the response's status and headers (default 30 s).
    pub response: Duration,
    /// Reading a whole (non-streamed) response body (default 60 s).
    pub body: Duration,
    /// The longest gap between two chunks of a streamed completion (default 60 s); a
    /// stream as a whole may last as long as it keeps sending.
    pub idle: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            connect: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
            response: Duration::from_secs(30),
            body: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

impl Deadlines {
    /// The same deadline for every step.
    pub fn all(each: Duration) -> Self {
        Deadlines {
            connect: each,
            handshake: each,
            response: each,
            body: each,
            idle: each,
        }
    }
}

/// Runs `step`, or fails after `within` with "`what` within N s" (`what` names the step
/// and what did not happen: "TLS handshake with HOST:PORT: no answer").
///
/// # Errors
/// The step's own error, or the timeout.
pub async fn within<T>(
    within: Duration,
    what: impl FnOnce() -> String,
    step: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(within, step).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!("{} within {} s", what(), within.as_secs_f64())),
    }
}

impl Target {
    /// Parses `https://HOST[:PORT]` (default port 8443).
    ///
    /// # Errors
    /// If the URL is not https or the port is invalid.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("{url:?}: Veil servers are reached over https://"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => {
                (h, p.parse().map_err(|_| anyhow!("{url:?}: invalid port"))?)
            }
            _ => (authority, 8443),
        };
        if host.is_empty() {
            bail!("{url:?}: no host");
        }
        Ok(Target {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            deadlines: Deadlines::default(),
        })
    }

    /// `HOST:PORT`, for messages.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The same target with other deadlines.
    #[must_use]
    pub fn with_deadlines(self, deadlines: Deadlines) -> Self {
        Target { deadlines, ..self }
    }
}

/// An HTTP/1.1 connection over TLS 1.3, not yet known to reach a verified server. Made
/// only by [`danger::connect`] (tests, and this module); what may carry prompts and keys
/// is a [`Trusted`] session.
pub struct Session {
    sender: SendRequest<Full<Bytes>>,
    /// SHA-256 of the server certificate's SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
    /// This connection's RFC 9266 exporter.
    pub exporter: [u8; 32],
    /// Where it goes, and the deadlines of each step.
    target: Arc<Target>,
}

impl Session {
    /// Connects with the given certificate policy.
    ///
    /// # Errors
    /// If the connection or handshake fails (a pin mismatch is a handshake failure), or
    /// either takes longer than its deadline.
    async fn connect(target: &Target, mode: PinMode) -> anyhow::Result<Self> {
        let authority = target.authority();
        let deadlines = target.deadlines;
        let tcp = within(
            deadlines.connect,
            || format!("connecting to {authority}: no answer"),
            async {
                tokio::net::TcpStream::connect((target.host.as_str(), target.port))
                    .await
                    .with_context(|| format!("cannot connect to {authority}"))
            },
        )
        .await?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(target.host.clone())
            .map_err(|_| anyhow!("{:?} is not a valid server name", target.host))?;
        let tls = within(
            deadlines.handshake,
            || format!("TLS handshake with {authority}: no answer"),
            async {
                tokio_rustls::TlsConnector::from(client_config(mode))
                    .connect(name, tcp)
                    .await
                    .with_context(|| format!("TLS handshake with {authority} failed"))
            },
        )
        .await?;
        let (_, conn) = tls.get_ref();
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| anyhow!("the server sent no certificate"))?;
        let spki_sha256 = cert_spki_sha256(cert.as_ref())
            .ok_or_else(|| anyhow!("the server certificate does not parse"))?;
        let mut exporter = [0u8; 32];
        conn.export_keying_material(&mut exporter, EXPORTER_LABEL, None)
            .map_err(|e| anyhow!("TLS exporter: {e}"))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Session {
            sender,
            spki_sha256,
            exporter,
            target: Arc::new(target.clone()),
        })
    }

    /// The deadlines of this connection's target.
    pub fn deadlines(&self) -> Deadlines {
        self.target.deadlines
    }

    /// Sends a request and waits for its status and headers for at most
    /// [`Deadlines::response`].
    ///
    /// # Errors
    /// If the connection fails or the server does not answer in time.
    pub async fn send_within_deadline(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Response<Incoming>> {
        let limit = self.target.deadlines.response;
        let authority = self.target.authority();
        within(
            limit,
            || format!("{method} {} to {authority}: no answer", without_query(path)),
            self.send(method, path, body),
        )
        .await
    }

    /// Sends a request on this connection, with no deadline on the answer (the caller
    /// bounds it; [`Session::send_within_deadline`] and [`Session::fetch`] do).
    ///
    /// # Errors
    /// If the connection fails.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Response<Incoming>> {
        self.send_with(method, path, &hyper::HeaderMap::new(), body)
            .await
    }

    /// [`Session::send`] with `headers` added (an `Authorization` for the server's API
    /// keys: send one only over a [`Trusted`] session).
    ///
    /// # Errors
    /// If the connection fails.
    pub async fn send_with(
        &mut self,
        method: &str,
        path: &str,
        headers: &hyper::HeaderMap,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Response<Incoming>> {
        self.sender.ready().await.context("the connection closed")?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.target.host);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .context("request")?;
        self.sender
            .send_request(req)
            .await
            .context("the server did not answer")
    }

    /// Whether the server has closed this connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends a request and reads the whole body (at most 1 MiB), each within its deadline
    /// ([`Deadlines::response`] for the headers, [`Deadlines::body`] for the body).
    ///
    /// # Errors
    /// If the connection fails, the body is too large, or a deadline passes.
    pub async fn fetch(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let (status, _, bytes) = self.fetch_with_headers(method, path, body).await?;
        Ok((status, bytes))
    }

    /// [`Session::fetch`], with the response's headers.
    ///
    /// # Errors
    /// As [`Session::fetch`].
    pub async fn fetch_with_headers(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, hyper::HeaderMap, Bytes)> {
        let resp = self.send_within_deadline(method, path, body).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let authority = self.target.authority();
        let bytes = within(
            self.target.deadlines.body,
            || {
                format!(
                    "the body of the answer to {method} {} from {authority}: not complete",
                    without_query(path)
                )
            },
            async {
                http_body_util::Limited::new(resp.into_body(), 1 << 20)
                    .collect()
                    .await
                    .map_err(|e| anyhow!("reading the response: {e}"))
            },
        )
        .await?
        .to_bytes();
        Ok((status, headers, bytes))
    }
}

/// `path` without its query (which may carry a nonce), for messages.
fn without_query(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// Unverified connections, for tests and tools that must see what a server does before
/// it is verified. Nothing sent on one of these is protected by attestation.
pub mod danger {
    pub use super::Session;
    pub use crate::pin::PinMode;

    /// Connects without attesting: [`PinMode::Capture`] accepts any certificate.
    ///
    /// # Errors
    /// If the connection or handshake fails.
    pub async fn connect(target: &super::Target, mode: PinMode) -> anyhow::Result<Session> {
        Session::connect(target, mode).await
    }
}

/// The SHA-256 of a TLS key whose evidence passed appraisal. Only [`Verified::pin`] makes
/// one, and [`Trusted::connect`] accepts only a server presenting that key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin([u8; 32]);

impl Pin {
    /// The pinned SubjectPublicKeyInfo SHA-256.
    pub fn spki_sha256(&self) -> [u8; 32] {
        self.0
    }
}

/// A session to a verified server: attested just now ([`Verified::trusted`]), or pinned
/// to the key of one that was ([`Trusted::connect`]). Prompts and keys go only over one.
pub struct Trusted(Session);

impl Trusted {
    /// Connects, accepting only the server whose TLS key is `pin`.
    ///
    /// # Errors
    /// If the connection fails; a different key fails the handshake ([`is_key_change`]).
    pub async fn connect(target: &Target, pin: &Pin) -> anyhow::Result<Self> {
        Session::connect(target, PinMode::Pinned(pin.0))
            .await
            .map(Trusted)
    }

    /// The connection.
    pub fn session(&mut self) -> &mut Session {
        &mut self.0
    }

    /// Whether the server has closed this connection.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// A connection whose evidence passed appraisal, bound to this very connection.
pub struct Verified {
    session: Trusted,
    evidence: Evidence,
    appraisal: Appraisal,
    nonce: Nonce,
}

impl Verified {
    /// The attested connection.
    pub fn trusted(&mut self) -> &mut Trusted {
        &mut self.session
    }
    /// The connection, for what follows on it.
    pub fn into_trusted(self) -> Trusted {
        self.session
    }
    /// The evidence as received.
    pub fn evidence(&self) -> &Evidence {
        &self.evidence
    }
    /// The appraisal: the claims, and the binding (wrapping key, model) it verified.
    pub fn appraisal(&self) -> &Appraisal {
        &self.appraisal
    }
    /// The pin for later connections: this connection's verified TLS key.
    pub fn pin(&self) -> Pin {
        Pin(self.session.0.spki_sha256)
    }
    /// SHA-256 of the verified TLS key.
    pub fn spki_sha256(&self) -> [u8; 32] {
        self.session.0.spki_sha256
    }
    /// What this connection was verified under, for the receipts of answers on it (and
    /// on later connections pinned to its key).
    pub fn attested(&self) -> crate::receipt::Attested {
        crate::receipt::Attested {
            evidence: self.evidence.clone(),
            nonce: self.nonce,
            spki_sha256: self.session.0.spki_sha256,
            exporter: self.session.0.exporter,
        }
    }
}

/// A connection whose evidence failed appraisal: nothing may be sent on it.
#[derive(Debug)]
pub struct Rejected {
    /// Every check, the failed ones named.
    pub rejection: Rejection,
    /// Whether the (unverified) evidence said it came from a mock platform.
    pub mock: bool,
    /// The evidence as received.
    pub evidence: Evidence,
    /// SHA-256 of the TLS key the server presented.
    pub spki_sha256: [u8; 32],
}

/// Connects, attests on the same connection with a fresh 32-byte nonce, completes SNP
/// evidence that carries no VEK from `collateral` (the cache, or AMD's KDS), and
/// appraises.
///
/// # Errors
/// Network and protocol errors, and a VCEK that is needed but cannot be had; a rejection
/// is not an error but [`Rejected`].
pub async fn attest(
    target: &Target,
    policy: &Policy,
    collateral: &Collateral,
) -> anyhow::Result<Result<Verified, Rejected>> {
    let mut session = Session::connect(target, PinMode::Capture).await?;
    let mut busy = RateLimited::default();
    let (nonce, body) = loop {
        let nonce = Nonce::random::<32>();
        let path = format!("/v1/attestation?nonce={}", nonce.to_base64url());
        let (status, headers, body) = session.fetch_with_headers("GET", &path, None).await?;
        if status == StatusCode::OK {
            break (nonce, body);
        }
        let refused = || {
            format!(
                "GET /v1/attestation: {status}: {}",
                String::from_utf8_lossy(&body)
            )
        };
        if status != StatusCode::TOO_MANY_REQUESTS {
            bail!(refused());
        }
        // A busy server: wait as it says, a bounded number of times, with a new nonce.
        let Some(wait) = busy.next_wait(&headers) else {
            bail!(
                "{} (still refused after {} tries over {} s of waiting as Retry-After said)",
                refused(),
                busy.tries,
                busy.waited.as_secs()
            );
        };
        tokio::time::sleep(wait).await;
        if session.is_closed() {
            session = Session::connect(target, PinMode::Capture).await?;
        }
    };
    let mut evidence = Evidence::from_json(&body).context("the server's evidence")?;
    collateral
        .complete(&mut evidence, policy.products())
        .await?;
    // The server says which wrapping key and model it binds; everything else comes from
    // this client: its nonce, the certificate it saw, its own exporter, the purpose.
    let (wrap_pk, model_sha256, receipt_pk) = evidence
        .binding
        .as_ref()
        .map_or(([0; 32], [0; 32], [0; 32]), |b| {
            (b.wrap_pk, b.model_sha256, b.receipt_pk)
        });
    let transcript = Transcript {
        purpose: Purpose::ClientSession,
        nonce,
        spki_sha256: session.spki_sha256,
        exporter: Some(session.exporter),
        wrap_pk,
        model_sha256,
        receipt_pk,
    };
    Ok(
        match policy.appraise(&evidence, &Expected::new(&transcript, SystemTime::now())) {
            Ok(appraisal) => Ok(Verified {
                session: Trusted(session),
                evidence,
                appraisal,
                nonce: transcript.nonce,
            }),
            Err(rejection) => Err(Rejected {
                rejection,
                mock: evidence.tee == TeeKind::Mock,
                spki_sha256: session.spki_sha256,
                evidence,
            }),
        },
    )
}

/// How [`attest`] waits out `429 Too Many Requests`: as `Retry-After` says (1 s if it
/// says nothing usable, at most [`RateLimited::LONGEST_WAIT`] each time), at most
/// [`RateLimited::RETRIES`] times and [`RateLimited::TOTAL_WAIT`] in all.
#[derive(Debug, Default)]
struct RateLimited {
    tries: u32,
    waited: Duration,
}

impl RateLimited {
    const RETRIES: u32 = 5;
    const LONGEST_WAIT: Duration = Duration::from_secs(10);
    const TOTAL_WAIT: Duration = Duration::from_secs(20);

    /// How long to wait before the next try, or `None` to give up.
    fn next_wait(&mut self, headers: &hyper::HeaderMap) -> Option<Duration> {
        let asked = headers
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Duration::from_secs(1), Duration::from_secs);
        let wait = asked.clamp(Duration::from_millis(100), Self::LONGEST_WAIT);
        self.tries += 1;
        if self.tries > Self::RETRIES || self.waited + wait > Self::TOTAL_WAIT {
            return None;
        }
        self.waited += wait;
        Some(wait)
    }
}

/// Whether a connection failed because the server presented a key other than the pinned
/// one (the handshake was refused by [`PinMode::Pinned`]).
pub fn is_key_change(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|r| {
                matches!(
                    r,
                    rustls::Error::InvalidCertificate(
                        CertificateError::ApplicationVerificationFailure
                    )
                )
            })
    })
}

/// Why no verified connection could be had.
#[derive(Debug)]
pub enum UpstreamError {
    /// The evidence was appraised and rejected.
    Rejected {
        /// Every check, the failed ones marked.
        rejection: Rejection,
        /// Whether the evidence came from a mock platform.
        mock: bool,
    },
    /// The server could not be reached or spoke no valid protocol.
    Unreachable(anyhow::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Rejected { rejection, mock } => {
                let failed = rejection.failures().count();
                let tee = if *mock { "MOCK evidence" } else { "evidence" };
                write!(
                    f,
                    "the server's {tee} was rejected: {failed} check(s) failed: "
                )?;
                for (i, o) in rejection.failures().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{} ({})", o.check.name(), o.detail)?;
                }
                Ok(())
            }
            UpstreamError::Unreachable(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for UpstreamError {}

/// A fresh connection to a verified server.
pub enum Connection {
    /// A connection to the key verified earlier (the certificate was pinned).
    Pinned(Trusted),
    /// A connection verified just now: the first, or the server's key changed.
    Verified(Box<Verified>),
}

impl Connection {
    /// The connection itself.
    pub fn into_trusted(self) -> Trusted {
        match self {
            Connection::Pinned(s) => s,
            Connection::Verified(v) => v.into_trusted(),
        }
    }
}

/// A server that is verified once and then reached only under the attested key.
///
/// Every connection is pinned to the TLS key whose evidence passed appraisal; when the
/// server presents another key (it restarted, or someone else answers), the new key is
/// verified on a fresh connection before anything is sent on it, and the pin moves only
/// if that verification passes. A rejected key is never used.
pub struct Upstream {
    target: Target,
    collateral: Collateral,
    /// The policy, and the key verified under exactly that policy.
    state: Mutex<(Arc<Policy>, Option<Pin>)>,
    /// What the last key to pass was verified under (kept across a policy reload: the
    /// evidence of a connection already pinned does not change).
    attested: Mutex<Option<Arc<crate::receipt::Attested>>>,
}

impl Upstream {
    /// An upstream not yet verified, whose evidence is completed from `collateral`.
    pub fn new(target: Target, policy: Policy, collateral: Collateral) -> Self {
        Upstream {
            target,
            collateral,
            state: Mutex::new((Arc::new(policy), None)),
            attested: Mutex::new(None),
        }
    }

    /// What the connection whose TLS key is `spki_sha256` was verified under, if it is the
    /// last key verified.
    pub fn attested(&self, spki_sha256: &[u8; 32]) -> Option<Arc<crate::receipt::Attested>> {
        self.attested
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|a| a.spki_sha256 == *spki_sha256)
            .cloned()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (Arc<Policy>, Option<Pin>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy connections are verified under.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.state().0)
    }

    /// The pinned key, if one has been verified.
    pub fn pinned(&self) -> Option<Pin> {
        self.state().1
    }

    /// Replaces the policy and forgets the pinned key: the next connection verifies the
    /// server again, under the new policy (fresh CRLs, a changed allowlist).
    pub fn set_policy(&self, policy: Policy) {
        *self.state() = (Arc::new(policy), None);
    }

    /// A connection on which requests may be sent: pinned to the verified key, or
    /// verified now if there is no pin yet or the server's key changed.
    ///
    /// # Errors
    /// [`UpstreamError::Rejected`] if the (new) evidence fails the policy;
    /// [`UpstreamError::Unreachable`] for network and protocol errors.
    pub async fn connect(&self) -> Result<Connection, UpstreamError> {
        if let Some(pin) = self.pinned() {
            match Trusted::connect(&self.target, &pin).await {
                Ok(s) => return Ok(Connection::Pinned(s)),
                Err(e) if is_key_change(&e) => {
                    eprintln!(
                        "veil: the server's TLS key is no longer {}: verifying the new one",
                        hex::encode(&pin.0[..8])
                    );
                }
                Err(e) => return Err(UpstreamError::Unreachable(e)),
            }
        }
        let policy = Arc::clone(&self.state().0);
        match attest(&self.target, &policy, &self.collateral)
            .await
            .map_err(UpstreamError::Unreachable)?
        {
            Ok(verified) => {
                let mut state = self.state();
                // Pin only if the policy was not replaced meanwhile.
                if Arc::ptr_eq(&state.0, &policy) {
                    state.1 = Some(verified.pin());
                }
                drop(state);
                *self.attested.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Arc::new(verified.attested()));
                Ok(Connection::Verified(Box::new(verified)))
            }
            Err(r) => Err(UpstreamError::Rejected {
                rejection: r.rejection,
                mock: r.mock,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after(v: &str) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        h.insert(hyper::header::RETRY_AFTER, v.parse().expect("header value"));
        h
    }

    #[test]
    fn a_busy_server_is_waited_out_as_it_says_within_bounds() {
        let mut busy = RateLimited::default();
        assert_eq!(
            busy.next_wait(&retry_after("2")),
            Some(Duration::from_secs(2))
        );
        // Nothing usable: 1 s. Too long: the longest wait.
        assert_eq!(
            busy.next_wait(&hyper::HeaderMap::new()),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            busy.next_wait(&retry_after("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            busy.next_wait(&retry_after("3600")),
            Some(RateLimited::LONGEST_WAIT)
        );
        // 14 s waited: another 10 s would pass the total.
        assert_eq!(busy.next_wait(&retry_after("10")), None);
        let mut many = RateLimited::default();
        let waits: Vec<_> = (0..10)
            .map_while(|_| many.next_wait(&retry_after("0")))
            .collect();
        assert_eq!(waits.len(), RateLimited::RETRIES as usize);
        assert!(waits.iter().all(|w| *w == Duration::from_millis(100)));
    }
}
