//! The pull flow: started with `--key-broker URL`, the locked server asks a key broker
//! for its model key: `veil broker` (`http://`, here), a Trustee KBS (`kbs://`) or a
//! Confidential Containers pod's data hub (`cdh://`) ([`crate::kbs`]). From `veil broker` it fetches a nonce, attests with report data for
//! purpose "broker pull" (that nonce, its wrapping key, the sealed model's digest), sends
//! the evidence with the sealed model's key id, and opens the answer with its wrapping
//! key. The wire contract is [`veil_attestation::broker`].
//!
//! A broker that cannot be reached is asked again with a growing delay (up to
//! [`MAX_DELAY`]); one that refuses is asked again every [`REFUSED_DELAY`], since its
//! owner may change the policy. Each outcome is logged and shown by `/ready` as `key_broker`.
//! Pushing a key (`veil provision`) still works meanwhile; the first key that opens the
//! sealed header wins.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderName, CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use veil_attestation::broker::{pull_transcript, Challenge, KeyRequest, CHALLENGE_PATH, KEY_PATH};
use veil_attestation::{KeyRelease, TeeKind};
use veil_sealing::KeyId;

use crate::kbs::{CdhUrl, KbsTee, KbsUrl};
use crate::state::{AppState, Lifecycle};
use crate::unlock::{accept_key, Accepted, UnlockError};

/// The longest wait between two requests to the broker.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// The wait after a broker refused (its owner may change the policy meanwhile).
pub const REFUSED_DELAY: Duration = Duration::from_secs(10);
/// The first wait after a broker could not be reached.
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest one request to the broker may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from the broker.
const MAX_ANSWER: usize = 64 << 10;

/// Where a key broker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `HOST[:PORT]` as given (the `Host` header).
    pub(crate) authority: String,
    /// `HOST:PORT` to connect to.
    pub(crate) addr: String,
}

/// The key broker named by `--key-broker`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyBroker {
    /// `veil broker`: `http://HOST[:PORT][/PREFIX]`.
    Veil(BrokerUrl),
    /// A Trustee KBS: `kbs://HOST[:PORT]/REPO/TYPE/TAG`, in the evidence format chosen at
    /// start.
    Kbs(KbsUrl, KbsTee),
    /// A pod's Confidential Data Hub: `cdh:///REPO/TYPE/TAG`.
    Cdh(CdhUrl),
}

impl KeyBroker {
    /// Parses `--key-broker URL` for a server whose attester is `tee`.
    ///
    /// # Errors
    /// An unknown scheme, a malformed URL, or a KBS evidence format this TEE cannot send.
    pub fn parse(url: &str, tee: TeeKind) -> anyhow::Result<Self> {
        if url.starts_with("kbs://") {
            let kbs = KbsUrl::parse(url)?;
            let format = kbs.evidence_format(tee)?;
            Ok(KeyBroker::Kbs(kbs, format))
        } else if url.starts_with("cdh://") {
            Ok(KeyBroker::Cdh(CdhUrl::parse(url)?))
        } else if url.starts_with("http://") {
            Ok(KeyBroker::Veil(BrokerUrl::parse(url)?))
        } else {
            bail!(
                "--key-broker {url:?}: expected http://HOST:PORT (veil broker), \
                 kbs://HOST:PORT/REPO/TYPE/TAG (a Trustee KBS) or cdh:///REPO/TYPE/TAG \
                 (a Confidential Containers pod's data hub)"
            )
        }
    }
}

impl fmt::Display for KeyBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyBroker::Veil(url) => url.fmt(f),
            KeyBroker::Kbs(url, _) => url.fmt(f),
            KeyBroker::Cdh(url) => url.fmt(f),
        }
    }
}

/// A key broker's address: `http://HOST[:PORT][/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    endpoint: Endpoint,
    prefix: String,
}

impl BrokerUrl {
    /// Parses a broker URL.
    ///
    /// # Errors
    /// If it is not an `http://` URL with a host. (The answer is sealed to the attested
    /// wrapping key, so the transport carries nothing secret.)
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--key-broker {url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--key-broker {url}: expected http://HOST:PORT (what the broker answers is sealed to this server's attested wrapping key)");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("--key-broker {url}: no host"))?;
        if uri.query().is_some() {
            bail!("--key-broker {url}: no query string expected");
        }
        let addr = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        Ok(BrokerUrl {
            endpoint: Endpoint {
                authority: authority.as_str().to_owned(),
                addr,
            },
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.endpoint.authority, self.prefix)
    }
}

/// Why a pull brought no key.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Connecting or reading failed, or timed out.
    #[error("the key broker at {url} could not be reached: {reason}")]
    Unreachable {
        /// The broker.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The broker said no for now (its answer is quoted): busy, a spent nonce, ...
    #[error("the key broker refused: {0}")]
    Refused(String),
    /// The broker said no by the owner's decision (its answer is quoted): the evidence
    /// fails the policy, the key is unknown or revoked. A lease is not renewed.
    #[error("the key broker refused: {0}")]
    Denied(String),
    /// The broker answered something this server cannot use.
    #[error("the key broker's answer is unusable: {0}")]
    Unusable(String),
    /// The broker released a key that does not open the sealed model.
    #[error("the key broker's answer is unusable: {0}")]
    Unlock(#[from] UnlockError),
}

/// Asks the broker until the server is no longer locked (a key arrived, by pull or push).
pub async fn pull_until_unlocked(state: Arc<AppState>, broker: KeyBroker) {
    let mut backoff = FIRST_DELAY;
    loop {
        if !matches!(state.state(), Lifecycle::Locked) {
            return;
        }
        set_status(&state, format!("asking {broker}"));
        let outcome = match &broker {
            KeyBroker::Veil(url) => pull_once(&state, url).await,
            KeyBroker::Kbs(url, tee) => crate::kbs::pull_kbs(&state, url, *tee).await,
            KeyBroker::Cdh(url) => crate::kbs::pull_cdh(&state, url).await,
        };
        let wait = match outcome {
            Ok(Accepted::Unsealing | Accepted::Repeat) => {
                tracing::info!(%broker, "key broker released the model key");
                set_status(&state, format!("{broker} released the key"));
                return;
            }
            Err(e) => {
                let wait = match e {
                    PullError::Unreachable { .. } => {
                        let wait = backoff;
                        backoff = (backoff * 2).min(MAX_DELAY);
                        wait
                    }
                    _ => REFUSED_DELAY,
                };
                tracing::warn!(%broker, error = %e, retry_in_s = wait.as_secs_f64(), "no key from the key broker");
                set_status(&state, e.to_string());
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

fn set_status(state: &AppState, status: String) {
    state.set_key_broker_status(status);
}

/// One round: a nonce, evidence for it, the key.
///
/// # Errors
/// [`PullError`].
pub async fn pull_once(state: &Arc<AppState>, broker: &BrokerUrl) -> Result<Accepted, PullError> {
    // A lease runs from here: the broker may have answered at any time after.
    let asked_at = std::time::Instant::now();
    let body = post(broker, CHALLENGE_PATH, Vec::new()).await?;
    let challenge: Challenge = serde_json::from_slice(&body)
        .map_err(|e| PullError::Unusable(format!("{CHALLENGE_PATH}: {e}")))?;
    // The nonce's encoding and length were checked when the challenge was decoded.
    let transcript = pull_transcript(challenge.nonce, state.wrap_pk(), state.header.model_sha256);
    let report_data = transcript.report_data();
    let evidence = state
        .issue_evidence(&transcript)
        .await
        .map_err(|e| PullError::Unusable(e.to_string()))?;

    let request = KeyRequest {
        nonce: challenge.nonce,
        key_id: state.header.key_id.0,
        evidence,
    };
    let json = serde_json::to_vec(&request).map_err(|e| PullError::Unusable(e.to_string()))?;
    let body = post(broker, KEY_PATH, json).await?;
    let release: KeyRelease = serde_json::from_slice(&body)
        .map_err(|e| PullError::Unusable(format!("{KEY_PATH}: {e}")))?;
    if release.report_data != report_data {
        return Err(PullError::Unusable(
            "the released key names other report data than this server's evidence".into(),
        ));
    }
    let key_id = KeyId(release.key_id);
    if key_id != state.header.key_id {
        return Err(PullError::Unusable(format!(
            "the broker released key {key_id}; the sealed model needs {}",
            state.header.key_id
        )));
    }
    let secret = state.wrapping.open(&release, &report_data).map_err(|_| {
        PullError::Unusable("the released key does not open with this server's wrapping key".into())
    })?;
    let terms = crate::lease::Terms {
        lease: release.lease,
        asked_at,
    };
    Ok(accept_key(state, key_id, secret, terms)?)
}

/// POSTs `body` (JSON) to `path` under the broker's prefix; the answer's body if 200.
async fn post(broker: &BrokerUrl, path: &str, body: Vec<u8>) -> Result<Bytes, PullError> {
    let answer = exchange(
        &broker.endpoint,
        &broker.to_string(),
        Method::POST,
        &format!("{}{path}", broker.prefix),
        &[(CONTENT_TYPE, "application/json".to_owned())],
        Some(body),
    )
    .await?;
    if answer.status == StatusCode::OK {
        return Ok(answer.body);
    }
    let parsed = error_parts(&answer.body);
    let denied = matches!(
        parsed.as_ref().map(|(code, _)| code.as_str()),
        Some("attestation_rejected" | "unknown_key" | "key_revoked")
    );
    let refusal = describe(path, answer.status, parsed);
    if denied {
        return Err(PullError::Denied(refusal));
    }
    Err(PullError::Refused(refusal))
}

/// An answer from a key broker. No `Debug`: a data hub's body is the key file itself.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// One request on a new HTTP/1.1 connection, within [`REQUEST_TIMEOUT`]; the answer's
/// body is read up to [`MAX_ANSWER`]. `url` names the broker in errors.
pub(crate) async fn exchange(
    endpoint: &Endpoint,
    url: &str,
    method: Method,
    path: &str,
    headers: &[(HeaderName, String)],
    body: Option<Vec<u8>>,
) -> Result<Answer, PullError> {
    let unreachable = |reason: String| PullError::Unreachable {
        url: url.to_owned(),
        reason,
    };
    let exchange = async {
        let tcp = TcpStream::connect(&endpoint.addr)
            .await
            .map_err(|e| unreachable(format!("connect {}: {e}", endpoint.addr)))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &endpoint.authority);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| PullError::Unusable(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok::<_, PullError>(Answer {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))?
}

/// The `error.code` and `error.message` of a broker's JSON refusal.
fn error_parts(body: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    Some((
        e.get("code")?.as_str()?.to_owned(),
        e.get("message")?.as_str()?.to_owned(),
    ))
}

/// `POST /v1/key: 403 attestation_rejected: evidence rejected: measurement: …`, from the
/// refusal's [`error_parts`].
fn describe(path: &str, status: StatusCode, parsed: Option<(String, String)>) -> String {
    match parsed {
        Some((code, message)) => format!("POST {path}: {} {code}: {message}", status.as_u16()),
        None => format!("POST {path}: {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_are_plain_http_with_a_host() {
        let u = BrokerUrl::parse("http://127.0.0.1:8444").expect("valid");
        assert_eq!(u.endpoint.addr, "127.0.0.1:8444");
        assert_eq!(u.prefix, "");
        assert_eq!(u.to_string(), "http://127.0.0.1:8444");
        let u = BrokerUrl::parse("http://broker.example/keys/").expect("valid");
        assert_eq!(u.endpoint.addr, "broker.example:80");
        assert_eq!(u.prefix, "/keys");
        for bad in [
            "https://127.0.0.1:8444",
            "127.0.0.1:8444",
            "http://",
            "http://h/?q=1",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_refusal_quotes_the_brokers_code_and_message() {
        let body = br#"{"error":{"code":"attestation_rejected","message":"evidence rejected: measurement: 00"}}"#;
        assert_eq!(
            describe(KEY_PATH, StatusCode::FORBIDDEN, error_parts(body)),
            "POST /v1/key: 403 attestation_rejected: evidence rejected: measurement: 00"
        );
        assert_eq!(
            describe(KEY_PATH, StatusCode::BAD_GATEWAY, error_parts(b"<html>")),
            "POST /v1/key: 502 Bad Gateway"
        );
    }
}
