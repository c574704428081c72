//! Receipts on the client side: the bundle that keeps an answer's receipt with the
//! evidence it was verified under, and its offline verification (`veil receipt verify`;
//! `docs/receipts.md`).
//!
//! A bundle holds everything an auditor needs and nothing it must fetch: the compact
//! receipt, the evidence of the connection the answer came on (completed with its VCEK),
//! the values this client bound into that evidence (its nonce, the TLS key it saw, its
//! exporter), and the exact request and response bytes.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use veil_attestation::binding::{Nonce, Purpose, Transcript};
use veil_attestation::receipt::{sha256, CHUNK_FIELD};
use veil_attestation::{Evidence, Expected, Policy, Receipt, SignedReceipt, TeeKind};

/// The bundle format this code writes and reads.
pub const FORMAT: &str = "veil-receipt-bundle/v1";
/// Largest bundle read (a receipt is ~1 KiB, evidence a few KiB; the rest is the request
/// and the response).
pub const MAX_BUNDLE: u64 = 64 << 20;

/// What a client verified a connection under: the evidence as appraised, and the values
/// it bound into it itself.
#[derive(Debug, Clone)]
pub struct Attested {
    /// The evidence, completed with its VCEK when it carried none.
    pub evidence: Evidence,
    /// The client's nonce.
    pub nonce: Nonce,
    /// SHA-256 of the TLS key the client saw.
    pub spki_sha256: [u8; 32],
    /// The connection's RFC 9266 exporter.
    pub exporter: [u8; 32],
}

/// The session values of a bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRecord {
    /// The client's nonce, base64url.
    pub nonce: String,
    /// SHA-256 of the server's TLS key, hex.
    pub spki_sha256: String,
    /// The connection's exporter, hex.
    pub exporter: String,
}

/// A receipt with what it is verified against.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// [`FORMAT`].
    pub format: String,
    /// The compact receipt.
    pub receipt: String,
    /// The server's URL, for people (nothing is checked against it).
    pub server: String,
    /// The route the request went to.
    pub route: String,
    /// The evidence the connection was verified under (JSON, as `GET /v1/attestation`
    /// answers it, with the VCEK it was completed with).
    pub evidence: Value,
    /// What the client bound into that evidence.
    pub session: SessionRecord,
    /// The request body, base64.
    pub request: String,
    /// The response body (a streamed one with its SSE framing), base64.
    pub response: String,
}

impl Bundle {
    /// A bundle of `receipt` for `request` → `response` on a connection verified as
    /// `attested`.
    pub fn new(
        receipt: &str,
        server: &str,
        route: &str,
        attested: &Attested,
        request: &[u8],
        response: &[u8],
    ) -> Self {
        Bundle {
            format: FORMAT.to_owned(),
            receipt: receipt.to_owned(),
            server: server.to_owned(),
            route: route.to_owned(),
            evidence: serde_json::from_str(&attested.evidence.to_json()).unwrap_or(Value::Null),
            session: SessionRecord {
                nonce: attested.nonce.to_base64url(),
                spki_sha256: hex::encode(attested.spki_sha256),
                exporter: hex::encode(attested.exporter),
            },
            request: STANDARD.encode(request),
            response: STANDARD.encode(response),
        }
    }

    /// Parses a bundle file's bytes.
    ///
    /// # Errors
    /// If it is not a bundle of this format.
    pub fn from_json(bytes: &[u8]) -> anyhow::Result<Self> {
        let bundle: Bundle = serde_json::from_slice(bytes).context("not a receipt bundle")?;
        anyhow::ensure!(
            bundle.format == FORMAT,
            "bundle format {:?} (this verifier reads {FORMAT:?})",
            bundle.format
        );
        Ok(bundle)
    }

    /// The JSON of the bundle.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a bundle serializes")
    }

    /// Reads a bundle file.
    ///
    /// # Errors
    /// If it cannot be read, is too large, or is not a bundle.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        anyhow::ensure!(
            meta.len() <= MAX_BUNDLE,
            "{} is larger than 64 MiB",
            path.display()
        );
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&bytes).with_context(|| path.display().to_string())
    }

    /// The request bytes.
    ///
    /// # Errors
    /// If they are not base64.
    pub fn request_bytes(&self) -> anyhow::Result<Vec<u8>> {
        STANDARD
            .decode(&self.request)
            .map_err(|_| anyhow!("the bundle's request is not base64"))
    }

    /// The response bytes.
    ///
    /// # Errors
    /// If they are not base64.
    pub fn response_bytes(&self) -> anyhow::Result<Vec<u8>> {
        STANDARD
            .decode(&self.response)
            .map_err(|_| anyhow!("the bundle's response is not base64"))
    }
}

/// How one check of a receipt came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// It held.
    Passed,
    /// It did not.
    Failed,
    /// It could not run (an earlier failure left nothing to check).
    Skipped,
}

/// One check of a receipt's verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptCheck {
    /// Its name: `receipt`, `evidence`, `receipt_key`, `signature`, `model`,
    /// `measurement`, `request`, `response`.
    pub name: &'static str,
    /// How it came out.
    pub status: CheckStatus,
    /// What was found.
    pub detail: String,
}

/// Every check of a receipt, and the receipt if it parsed.
#[derive(Debug, Clone)]
pub struct ReceiptVerdict {
    /// The checks, in order.
    pub checks: Vec<ReceiptCheck>,
    /// What the receipt states (trust it only if [`ReceiptVerdict::verified`]).
    pub receipt: Option<Receipt>,
    /// Whether the evidence came from a mock platform.
    pub mock: bool,
}

impl ReceiptVerdict {
    /// Whether every check passed.
    pub fn verified(&self) -> bool {
        self.checks.iter().all(|c| c.status == CheckStatus::Passed)
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &ReceiptCheck> {
        self.checks
            .iter()
            .filter(|c| c.status == CheckStatus::Failed)
    }
}

impl fmt::Display for ReceiptVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mock {
            writeln!(
                f,
                "MOCK evidence: signed by a software mock platform, not by an AMD secure processor"
            )?;
        }
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            let mark = match c.status {
                CheckStatus::Passed => "✓",
                CheckStatus::Failed => "✗",
                CheckStatus::Skipped => "–",
            };
            writeln!(f, "  {mark} {:width$}  {}", c.name, c.detail)?;
        }
        let mock = if self.mock { " (MOCK)" } else { "" };
        if self.verified() {
            let r = self.receipt.as_ref().expect("a verified receipt parsed");
            write!(
                f,
                "RECEIPT VERIFIED{mock}: {} #{} of that launch, model {}",
                r.id,
                r.seq,
                hex::encode(&r.model_sha256[..8])
            )
        } else {
            let failed: Vec<_> = self.failures().map(|c| c.name).collect();
            write!(
                f,
                "RECEIPT REJECTED{mock}: {} check(s) failed: {}",
                failed.len(),
                failed.join(", ")
            )
        }
    }
}

struct Checks(Vec<ReceiptCheck>);

impl Checks {
    fn push(&mut self, name: &'static str, result: Result<String, String>) -> bool {
        let (status, detail) = match result {
            Ok(d) => (CheckStatus::Passed, d),
            Err(d) => (CheckStatus::Failed, d),
        };
        self.0.push(ReceiptCheck {
            name,
            status,
            detail,
        });
        status == CheckStatus::Passed
    }

    fn skip(&mut self, name: &'static str, why: &str) {
        self.0.push(ReceiptCheck {
            name,
            status: CheckStatus::Skipped,
            detail: why.to_owned(),
        });
    }
}

/// Verifies `bundle`'s receipt, offline, against `request` and `response` (the bundle's
/// own bytes unless the caller has others to hold it to) and `policy`: the receipt
/// parses; the evidence passes the policy with the transcript rebuilt from the bundle's
/// session values, at the time the receipt was issued; that evidence binds a receipt
/// key; the receipt's signature verifies under it; the receipt's model and measurement
/// are the evidence's; the request's and the response's digests (and the response's id,
/// text and, for a stream, the receipt it carried) are the receipt's.
pub fn verify(bundle: &Bundle, request: &[u8], response: &[u8], policy: &Policy) -> ReceiptVerdict {
    let mut checks = Checks(Vec::new());
    let parsed = SignedReceipt::parse(&bundle.receipt);
    let receipt = parsed.as_ref().ok().map(|p| p.receipt().clone());
    let parsed_ok = checks.push(
        "receipt",
        parsed
            .as_ref()
            .map(|p| {
                let r = p.receipt();
                format!(
                    "{} #{} on {}, issued at {}",
                    r.id, r.seq, r.route, r.issued_at
                )
            })
            .map_err(ToString::to_string),
    );
    let evidence = serde_json::to_vec(&bundle.evidence)
        .ok()
        .and_then(|b| Evidence::from_json(&b).map_err(|e| e.to_string()).ok());
    let mock = evidence.as_ref().is_some_and(|e| e.tee == TeeKind::Mock);
    let appraisal = match (&evidence, &receipt) {
        (None, _) => {
            checks.push(
                "evidence",
                Err("the bundle's evidence does not parse".into()),
            );
            None
        }
        (Some(_), None) => {
            checks.skip("evidence", "no receipt to date it by");
            None
        }
        (Some(evidence), Some(r)) => match transcript(bundle, evidence) {
            Err(e) => {
                checks.push("evidence", Err(e));
                None
            }
            Ok(t) => {
                let at = UNIX_EPOCH + Duration::from_secs(r.issued_at);
                match policy.appraise(evidence, &Expected::new(&t, at)) {
                    Ok(a) => {
                        checks.push(
                            "evidence",
                            Ok(format!(
                                "passes the policy, bound to this session, at the receipt's time{}",
                                if a.is_mock() { " (MOCK)" } else { "" }
                            )),
                        );
                        Some(a)
                    }
                    Err(rejection) => {
                        let failed: Vec<_> = rejection
                            .failures()
                            .map(|o| format!("{} ({})", o.check.name(), o.detail))
                            .collect();
                        checks.push(
                            "evidence",
                            Err(format!("rejected by the policy: {}", failed.join("; "))),
                        );
                        None
                    }
                }
            }
        },
    };
    let key = appraisal.as_ref().map(|a| a.binding().receipt_pk);
    let key_ok = match key {
        None => {
            checks.skip("receipt_key", "no verified evidence");
            false
        }
        Some(k) if k == [0; 32] => checks.push(
            "receipt_key",
            Err("the evidence binds no receipt key (the server signs no receipts)".into()),
        ),
        Some(k) => checks.push(
            "receipt_key",
            Ok(format!("Ed25519 {} bound by the evidence", hex::encode(k))),
        ),
    };
    match (&parsed, key) {
        (Ok(p), Some(k)) if key_ok => {
            checks.push(
                "signature",
                p.verify(&k)
                    .map(|_| "Ed25519 over the payload".to_owned())
                    .map_err(|e| e.to_string()),
            );
        }
        _ => checks.skip("signature", "no parsed receipt or no bound key"),
    }
    match (&receipt, &appraisal) {
        (Some(r), Some(a)) => {
            let model = a.binding().model_sha256;
            checks.push(
                "model",
                if r.model_sha256 == model {
                    Ok(format!("weights {} (the evidence's)", hex::encode(model)))
                } else {
                    Err(format!(
                        "the receipt names weights {}, the evidence binds {}",
                        hex::encode(r.model_sha256),
                        hex::encode(model)
                    ))
                },
            );
            let m = a.measurement();
            checks.push(
                "measurement",
                if r.measurement == m {
                    Ok(format!("{} (the evidence's)", hex::encode(m)))
                } else {
                    Err(format!(
                        "the receipt names launch {}, the evidence's is {}",
                        hex::encode(r.measurement),
                        hex::encode(m)
                    ))
                },
            );
        }
        _ => {
            checks.skip("model", "no receipt or no verified evidence");
            checks.skip("measurement", "no receipt or no verified evidence");
        }
    }
    match &receipt {
        Some(r) if parsed_ok => {
            let got = sha256(request);
            checks.push(
                "request",
                if got == r.request_sha256 {
                    Ok(format!(
                        "SHA-256 {} ({} bytes)",
                        hex::encode(got),
                        request.len()
                    ))
                } else {
                    Err(format!(
                        "the request's SHA-256 is {}, the receipt's {}",
                        hex::encode(got),
                        hex::encode(r.request_sha256)
                    ))
                },
            );
            checks.push("response", check_response(r, &bundle.receipt, response));
        }
        _ => {
            checks.skip("request", "no receipt");
            checks.skip("response", "no receipt");
        }
    }
    ReceiptVerdict {
        checks: checks.0,
        receipt,
        mock,
    }
}

/// The transcript the evidence must bind: this bundle's session values, and the keys and
/// model the evidence says it binds.
fn transcript(bundle: &Bundle, evidence: &Evidence) -> Result<Transcript, String> {
    let s = &bundle.session;
    let nonce = Nonce::from_base64url(&s.nonce).map_err(|e| format!("the session's nonce: {e}"))?;
    let hex32 = |what: &str, text: &str| {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out)
            .map(|()| out)
            .map_err(|_| format!("the session's {what} is not 32 bytes of hex"))
    };
    let binding = evidence
        .binding
        .as_ref()
        .ok_or("the evidence states no binding")?;
    Ok(Transcript {
        purpose: Purpose::ClientSession,
        nonce,
        spki_sha256: hex32("spki_sha256", &s.spki_sha256)?,
        exporter: Some(hex32("exporter", &s.exporter)?),
        wrap_pk: binding.wrap_pk,
        model_sha256: binding.model_sha256,
        receipt_pk: binding.receipt_pk,
    })
}

/// The response against the receipt: its digest, and what it says (the id, the text, the
/// receipt a stream carried).
fn check_response(r: &Receipt, compact: &str, response: &[u8]) -> Result<String, String> {
    let streamed = response.starts_with(b"data:") || response.starts_with(b":");
    let (digest, body) = if streamed {
        let stream = parse_stream(response)?;
        if stream.receipt.as_deref() != Some(compact) {
            return Err(match stream.receipt {
                Some(_) => "the stream carried another receipt than this one".into(),
                None => "the stream carried no receipt".into(),
            });
        }
        (
            stream.digest,
            Answer {
                ids: stream.ids,
                text: stream.text,
            },
        )
    } else {
        let v: Value = serde_json::from_slice(response)
            .map_err(|e| format!("the response is neither SSE nor JSON: {e}"))?;
        let choice = &v["choices"][0];
        let text = choice["message"]["content"]
            .as_str()
            .or_else(|| choice["text"].as_str())
            .map(str::to_owned);
        let ids = v["id"].as_str().map(str::to_owned).into_iter().collect();
        (
            sha256(response),
            Answer {
                ids,
                text: text.unwrap_or_default(),
            },
        )
    };
    if digest != r.response_sha256 {
        return Err(format!(
            "the response's SHA-256 is {}, the receipt's {}",
            hex::encode(digest),
            hex::encode(r.response_sha256)
        ));
    }
    if body.ids.is_empty() || body.ids.iter().any(|id| *id != r.id) {
        return Err(format!("the response is not answer {}", r.id));
    }
    if sha256(body.text.as_bytes()) != r.text_sha256 {
        return Err("the response's text is not the text the receipt states".into());
    }
    Ok(format!(
        "SHA-256 {}, {} bytes of text, {} tokens",
        hex::encode(digest),
        body.text.len(),
        r.completion_tokens
    ))
}

struct Answer {
    ids: Vec<String>,
    text: String,
}

/// What a streamed answer held.
#[derive(Debug, Default)]
pub struct Stream {
    /// SHA-256 of the `data:` payloads before the receipt's chunk, each followed by `\n`.
    pub digest: [u8; 32],
    /// The concatenated text deltas.
    pub text: String,
    /// Every chunk's id.
    pub ids: Vec<String>,
    /// The receipt the last chunk carried.
    pub receipt: Option<String>,
}

/// Reads an SSE body as the server writes it (`data: …` lines, events ended by a blank
/// line, `:` comments).
///
/// # Errors
/// If a payload is not JSON or anything follows the receipt but `[DONE]`.
pub fn parse_stream(body: &[u8]) -> Result<Stream, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the stream is not UTF-8".to_owned())?;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut out = Stream::default();
    let mut done = false;
    for line in text.lines() {
        let Some(payload) = line.strip_prefix("data:") else {
            continue;
        };
        let payload = payload.strip_prefix(' ').unwrap_or(payload);
        if done {
            return Err("the stream goes on after [DONE]".into());
        }
        if payload == "[DONE]" {
            done = true;
            continue;
        }
        if out.receipt.is_some() {
            return Err("the stream goes on after its receipt".into());
        }
        let v: Value = serde_json::from_str(payload)
            .map_err(|e| format!("a chunk of the stream is not JSON: {e}"))?;
        if let Some(r) = v.get(CHUNK_FIELD) {
            out.receipt = Some(r.as_str().unwrap_or_default().to_owned());
            continue;
        }
        digest.update(payload.as_bytes());
        digest.update(b"\n");
        if let Some(id) = v["id"].as_str() {
            out.ids.push(id.to_owned());
        }
        let choice = &v["choices"][0];
        if let Some(t) = choice["delta"]["content"]
            .as_str()
            .or_else(|| choice["text"].as_str())
        {
            out.text.push_str(t);
        }
    }
    out.digest.copy_from_slice(digest.finish().as_ref());
    Ok(out)
}

/// The receipt of a response, as the server delivers it: the `veil-receipt` header of a
/// non-streamed answer, or the last chunk of a streamed one.
pub fn receipt_of(headers: &hyper::HeaderMap, body: &[u8]) -> Option<String> {
    if let Some(h) = headers.get(veil_attestation::receipt::HEADER) {
        return h.to_str().ok().map(str::to_owned);
    }
    parse_stream(body).ok().and_then(|s| s.receipt)
}

/// A file name for a bundle: the answer's id, or the time when it has none.
pub fn file_name(receipt: &str) -> String {
    let id = SignedReceipt::parse(receipt)
        .map(|r| r.receipt().id.clone())
        .unwrap_or_default();
    let safe: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(80)
        .collect();
    if safe.is_empty() {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!("receipt-{t}.json")
    } else {
        format!("{safe}.json")
    }
}
