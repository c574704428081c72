//! Key release from Confidential Containers' Trustee: its Key Broker Service over RCAR
//! 0.4.0 (`--key-broker kbs://…`), or a Confidential Containers pod's Confidential Data
//! Hub (`--key-broker cdh:///…`), where the pod's own attestation agent has attested.
//!
//! RCAR as an unmodified Trustee speaks it (`docs/trustee.md`):
//! 1. `POST /kbs/v0/auth` `{"version": "0.4.0", "tee": T, "extra-params": {}}`: a nonce,
//!    and the session cookie `kbs-session-id`;
//! 2. a fresh P-256 key for this round (its JWK, `ECDH-ES+A256KW`), and evidence whose
//!    REPORT_DATA is SHA-384 of the JCS form of
//!    `{"additional-evidence": "", "nonce": N, "tee-pubkey": JWK}` (zero-padded to 64
//!    bytes in an SNP report), sent with `POST /kbs/v0/attest`;
//! 3. `GET /kbs/v0/resource/REPO/TYPE/TAG`: a flattened JWE to that key
//!    (`ECDH-ES+A256KW`: ECDH, Concat KDF, AES key unwrap; `A256GCM` over the content with
//!    the protected header as additional data), which holds the model's key file.
//!
//! The wire structs are `kbs-types`'; JCS is `serde_jcs`; ECDH is `p256`, the KDF
//! `concat-kdf`, the key unwrap `aes-kw`, and AES-GCM ring's. What is written here is
//! only their composition as RFC 7516/7518 define it (no JOSE crate does ECDH-ES+A256KW
//! without OpenSSL or a large dependency tree).

use std::fmt;
use std::sync::Arc;

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hyper::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use hyper::{HeaderMap, Method, StatusCode};
use kbs_types::{
    Attestation, Challenge, CompositeEvidence, RuntimeData, Tee as KbsTeeName, TeePubKey,
};
use p256::elliptic_curve::sec1::{FromEncodedPoint as _, ToEncodedPoint as _};
use serde::Deserialize;
use veil_attestation::TeeKind;
use veil_sealing::ModelKey;
use zeroize::Zeroizing;

use crate::pull::{exchange, Endpoint, PullError};
use crate::state::AppState;
use crate::unlock::{accept_model_key, Accepted};

/// The RCAR protocol version Trustee's KBS accepts (and no other).
pub const RCAR_VERSION: &str = "0.4.0";
/// The KBS's session cookie.
const SESSION_COOKIE: &str = "kbs-session-id";
/// The KBS port unless the URL names one (Trustee's default).
const KBS_PORT: u16 = 8080;
/// The Confidential Data Hub's resource endpoint inside a pod.
const CDH_ADDR: &str = "127.0.0.1:8006";
/// The key-wrapping algorithm of the TEE key.
const KEY_ALG: &str = "ECDH-ES+A256KW";
/// The longest refusal detail quoted at `/ready`.
const MAX_DETAIL: usize = 400;

/// Which of Trustee's evidence formats the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KbsTee {
    /// Trustee's `sample`: the report data and no signature (the mock TEE only).
    Sample,
    /// Trustee's `snp`: the SEV-SNP report and its certificates.
    Snp,
}

impl KbsTee {
    fn name(self) -> KbsTeeName {
        match self {
            KbsTee::Sample => KbsTeeName::Sample,
            KbsTee::Snp => KbsTeeName::Snp,
        }
    }
}

impl fmt::Display for KbsTee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KbsTee::Sample => "sample",
            KbsTee::Snp => "snp",
        })
    }
}

/// `kbs://HOST[:PORT]/REPO/TYPE/TAG[?tee=sample|snp]`: a Trustee KBS over HTTP (port
/// 8080 unless given) and the resource that holds the model key. Without `tee`, the
/// format follows `--tee`: `sample` for the mock TEE, `snp` for SEV-SNP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KbsUrl {
    endpoint: Endpoint,
    resource: String,
    tee: Option<KbsTee>,
}

/// `cdh://[HOST:PORT]/REPO/TYPE/TAG`: the pod's Confidential Data Hub (127.0.0.1:8006
/// unless given), `GET /cdh/resource/REPO/TYPE/TAG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdhUrl {
    endpoint: Endpoint,
    resource: String,
}

/// Splits `SCHEME://AUTHORITY/PATH[?QUERY]` after the scheme.
fn split(rest: &str) -> (&str, &str, Option<&str>) {
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match path.split_once('?') {
        Some((path, query)) => (authority, path, Some(query)),
        None => (authority, path, None),
    }
}

/// `REPO/TYPE/TAG`: three non-empty parts of letters, digits, `-`, `_` and `.` (not `..`).
fn resource_path(url: &str, path: &str) -> anyhow::Result<String> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let valid = |p: &&str| {
        !p.is_empty()
            && *p != "."
            && *p != ".."
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if parts.len() != 3 || !parts.iter().all(valid) {
        bail!("--key-broker {url}: the resource must be REPO/TYPE/TAG (three parts of letters, digits, '-', '_', '.'), as `default/veil/model-key`");
    }
    Ok(parts.join("/"))
}

fn endpoint(url: &str, authority: &str, default_port: u16) -> anyhow::Result<Endpoint> {
    let a: hyper::http::uri::Authority = authority
        .parse()
        .with_context(|| format!("--key-broker {url}: {authority:?} is not HOST[:PORT]"))?;
    if a.as_str().contains('@') {
        bail!("--key-broker {url}: no user name or password in the URL");
    }
    Ok(Endpoint {
        authority: a.as_str().to_owned(),
        addr: format!("{}:{}", a.host(), a.port_u16().unwrap_or(default_port)),
    })
}

impl KbsUrl {
    /// Parses `kbs://…`.
    ///
    /// # Errors
    /// If the URL is not of that form.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url.strip_prefix("kbs://").with_context(|| {
            format!("--key-broker {url}: expected kbs://HOST[:PORT]/REPO/TYPE/TAG")
        })?;
        let (authority, path, query) = split(rest);
        if authority.is_empty() {
            bail!("--key-broker {url}: no host");
        }
        let tee = match query {
            None => None,
            Some("tee=sample") => Some(KbsTee::Sample),
            Some("tee=snp") => Some(KbsTee::Snp),
            Some(q) => {
                bail!("--key-broker {url}: unknown query {q:?} (known: tee=sample, tee=snp)")
            }
        };
        Ok(KbsUrl {
            endpoint: endpoint(url, authority, KBS_PORT)?,
            resource: resource_path(url, path)?,
            tee,
        })
    }

    /// The evidence format for a server whose attester is `tee`.
    ///
    /// # Errors
    /// `sample` asked of a real TEE (it would send no hardware evidence at all), or a TEE
    /// kind whose Trustee format Veil does not write yet.
    pub fn evidence_format(&self, tee: TeeKind) -> anyhow::Result<KbsTee> {
        match (tee, self.tee) {
            (TeeKind::Mock, None | Some(KbsTee::Sample)) => Ok(KbsTee::Sample),
            (TeeKind::Mock | TeeKind::Snp, Some(KbsTee::Snp)) | (TeeKind::Snp, None) => {
                Ok(KbsTee::Snp)
            }
            (TeeKind::Snp, Some(KbsTee::Sample)) => bail!(
                "--key-broker {self}?tee=sample: sample evidence carries no hardware signature; \
                 a real SEV-SNP server sends snp evidence"
            ),
            (TeeKind::AzSnpVtpm, _) => bail!(
                "--key-broker kbs://: Trustee's az-snp-vtpm evidence is not written yet; \
                 on Azure use `veil broker` (http://) or push the key"
            ),
        }
    }
}

impl fmt::Display for KbsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kbs://{}/{}", self.endpoint.authority, self.resource)
    }
}

impl CdhUrl {
    /// Parses `cdh://…`.
    ///
    /// # Errors
    /// If the URL is not of that form.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("cdh://")
            .with_context(|| format!("--key-broker {url}: expected cdh:///REPO/TYPE/TAG"))?;
        let (authority, path, query) = split(rest);
        if query.is_some() {
            bail!("--key-broker {url}: no query string expected");
        }
        let endpoint = if authority.is_empty() {
            endpoint(url, CDH_ADDR, 8006)?
        } else {
            endpoint(url, authority, 8006)?
        };
        Ok(CdhUrl {
            endpoint,
            resource: resource_path(url, path)?,
        })
    }
}

impl fmt::Display for CdhUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cdh://{}/{}", self.endpoint.authority, self.resource)
    }
}

/// One RCAR round with a Trustee KBS: a session, evidence for its nonce and a fresh key,
/// the resource sealed to that key.
///
/// # Errors
/// [`PullError`]: unreachable, refused (the KBS's error type and detail), or unusable.
pub async fn pull_kbs(
    state: &Arc<AppState>,
    kbs: &KbsUrl,
    tee: KbsTee,
) -> Result<Accepted, PullError> {
    let url = kbs.to_string();

    let auth = kbs_types::Request {
        version: RCAR_VERSION.to_owned(),
        tee: tee.name(),
        extra_params: serde_json::json!({}),
    };
    let answer = exchange(
        &kbs.endpoint,
        &url,
        Method::POST,
        "/kbs/v0/auth",
        &[(CONTENT_TYPE, "application/json".to_owned())],
        Some(to_json(&auth)?),
    )
    .await?;
    let answer = accepted(answer, "POST /kbs/v0/auth")?;
    let cookie = session_cookie(&answer.headers).ok_or_else(|| {
        PullError::Unusable(format!("POST /kbs/v0/auth: no {SESSION_COOKIE} cookie"))
    })?;
    let challenge: Challenge = serde_json::from_slice(&answer.body)
        .map_err(|e| PullError::Unusable(format!("POST /kbs/v0/auth: {e}")))?;

    let key = TeeKey::generate();
    let runtime = RuntimeData {
        nonce: challenge.nonce,
        tee_pubkey: key.jwk(),
    };
    let digest = runtime_data_digest(&runtime)?;
    let primary_evidence = match tee {
        KbsTee::Sample => veil_attestation::trustee::sample_evidence(&digest),
        KbsTee::Snp => {
            let mut report_data = [0u8; 64];
            report_data[..digest.len()].copy_from_slice(&digest);
            let evidence = state
                .issue_report(report_data)
                .await
                .map_err(|e| PullError::Unusable(e.to_string()))?;
            veil_attestation::trustee::snp_evidence(&evidence)
                .map_err(|e| PullError::Unusable(e.to_string()))?
        }
    };
    let attestation = Attestation {
        init_data: None,
        runtime_data: runtime,
        tee_evidence: CompositeEvidence {
            primary_evidence,
            additional_evidence: String::new(),
        },
    };
    let session = [
        (COOKIE, format!("{SESSION_COOKIE}={cookie}")),
        (CONTENT_TYPE, "application/json".to_owned()),
    ];
    let answer = exchange(
        &kbs.endpoint,
        &url,
        Method::POST,
        "/kbs/v0/attest",
        &session,
        Some(to_json(&attestation)?),
    )
    .await?;
    // The answer is an attestation token: neither kept nor logged (the cookie suffices).
    accepted(answer, "POST /kbs/v0/attest")?;

    let path = format!("/kbs/v0/resource/{}", kbs.resource);
    let answer = exchange(&kbs.endpoint, &url, Method::GET, &path, &session[..1], None).await?;
    let answer = accepted(answer, &format!("GET {path}"))?;
    let plaintext = key
        .open(&answer.body)
        .map_err(|e| PullError::Unusable(format!("GET {path}: the resource does not open: {e}")))?;
    accept_key_file(
        state,
        &plaintext,
        &format!("the KBS resource {}", kbs.resource),
    )
}

/// Asks the pod's Confidential Data Hub for the resource.
///
/// # Errors
/// [`PullError`].
pub async fn pull_cdh(state: &Arc<AppState>, cdh: &CdhUrl) -> Result<Accepted, PullError> {
    let path = format!("/cdh/resource/{}", cdh.resource);
    let answer = exchange(
        &cdh.endpoint,
        &cdh.to_string(),
        Method::GET,
        &path,
        &[],
        None,
    )
    .await?;
    let answer = accepted(answer, &format!("GET {path}"))?;
    let plaintext = Zeroizing::new(answer.body.to_vec());
    accept_key_file(
        state,
        &plaintext,
        &format!("the CDH resource {}", cdh.resource),
    )
}

/// The released resource: a Veil key file for the sealed model's key id.
fn accept_key_file(
    state: &Arc<AppState>,
    plaintext: &[u8],
    what: &str,
) -> Result<Accepted, PullError> {
    let key = std::str::from_utf8(plaintext)
        .ok()
        .and_then(|text| ModelKey::from_key_file(text).ok())
        .ok_or_else(|| {
            PullError::Unusable(format!(
                "{what} is not a Veil key file (`veil seal --key-out`)"
            ))
        })?;
    if key.key_id() != state.header.key_id {
        return Err(PullError::Unusable(format!(
            "{what} holds key {}; the sealed model needs {}",
            key.key_id(),
            state.header.key_id
        )));
    }
    // A KBS or data hub releases a resource for good: no lease.
    Ok(accept_model_key(
        state,
        key,
        crate::lease::Terms::for_good(),
    )?)
}

/// A 200 answer, or the refusal with the KBS's error type and detail.
fn accepted(answer: crate::pull::Answer, what: &str) -> Result<crate::pull::Answer, PullError> {
    if answer.status == StatusCode::OK {
        return Ok(answer);
    }
    Err(PullError::Refused(describe(
        what,
        answer.status,
        &answer.body,
    )))
}

/// `GET /kbs/v0/resource/…: 401 PolicyDeny: …` from an RFC 7807 body
/// (`{"type": ".../errors/PolicyDeny", "detail": "…"}`), else the status alone.
pub(crate) fn describe(what: &str, status: StatusCode, body: &[u8]) -> String {
    let info = serde_json::from_slice::<kbs_types::ErrorInformation>(body).ok();
    match info {
        Some(info) => {
            let kind = info.error_type.rsplit('/').next().unwrap_or_default();
            let printable = info.detail.chars().filter(|c| !c.is_control());
            let mut detail: String = printable.clone().take(MAX_DETAIL).collect();
            if printable.count() > MAX_DETAIL {
                detail.push('…');
            }
            format!("{what}: {} {kind}: {detail}", status.as_u16())
        }
        None => format!("{what}: {status}"),
    }
}

/// The session id from `Set-Cookie: kbs-session-id=…; …`.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            v.split(';')
                .next()?
                .trim()
                .strip_prefix(SESSION_COOKIE)?
                .strip_prefix('=')
        })
        .find(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() && b != b';'))
        .map(str::to_owned)
}

/// SHA-384 of the JCS form of `{"additional-evidence": "", "nonce", "tee-pubkey"}`: the
/// report data Trustee checks (the empty `additional-evidence` is hashed too).
///
/// # Errors
/// Never in practice (the values are strings).
pub fn runtime_data_digest(runtime: &RuntimeData) -> Result<[u8; 48], PullError> {
    let value = serde_json::json!({
        "additional-evidence": "",
        "nonce": runtime.nonce,
        "tee-pubkey": runtime.tee_pubkey,
    });
    let canonical = serde_jcs::to_vec(&value).map_err(|e| PullError::Unusable(e.to_string()))?;
    let digest = ring::digest::digest(&ring::digest::SHA384, &canonical);
    let mut out = [0u8; 48];
    out.copy_from_slice(digest.as_ref());
    Ok(out)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, PullError> {
    serde_json::to_vec(value).map_err(|e| PullError::Unusable(e.to_string()))
}

/// The TEE's key for one RCAR round: a P-256 key the KBS seals the resource to.
pub struct TeeKey {
    secret: p256::SecretKey,
}

impl TeeKey {
    /// A fresh key.
    pub fn generate() -> Self {
        TeeKey {
            secret: p256::SecretKey::random(&mut rand_core::OsRng),
        }
    }

    /// Its public half as the JWK RCAR sends (`alg` `ECDH-ES+A256KW`).
    pub fn jwk(&self) -> TeePubKey {
        let point = self.secret.public_key().to_encoded_point(false);
        TeePubKey::EC {
            crv: "P-256".to_owned(),
            alg: KEY_ALG.to_owned(),
            x: URL_SAFE_NO_PAD.encode(point.x().expect("an uncompressed point has x")),
            y: URL_SAFE_NO_PAD.encode(point.y().expect("an uncompressed point has y")),
        }
    }

    /// Opens a flattened JWE (JSON) sealed to this key with `ECDH-ES+A256KW` and
    /// `A256GCM`.
    ///
    /// # Errors
    /// A message naming what failed; it never holds key material.
    pub fn open(&self, jwe: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        let jwe: FlattenedJwe =
            serde_json::from_slice(jwe).map_err(|e| format!("not a flattened JWE: {e}"))?;
        let b64 = |field: &str, value: &str| {
            URL_SAFE_NO_PAD
                .decode(value)
                .map_err(|_| format!("{field} is not base64url"))
        };
        let header: ProtectedHeader = serde_json::from_slice(&b64("protected", &jwe.protected)?)
            .map_err(|e| format!("protected header: {e}"))?;
        if header.alg != KEY_ALG || header.enc != "A256GCM" {
            return Err(format!(
                "alg {:?} enc {:?}: expected {KEY_ALG} and A256GCM",
                header.alg, header.enc
            ));
        }
        let epk = header.epk.ok_or("protected header: no epk")?;
        if epk.kty != "EC" || epk.crv != "P-256" {
            return Err(format!("epk {} {}: expected EC P-256", epk.kty, epk.crv));
        }
        let coordinate = |field: &str, value: &str| -> Result<[u8; 32], String> {
            b64(field, value)?
                .try_into()
                .map_err(|_| format!("{field} is not 32 bytes"))
        };
        let (x, y) = (coordinate("epk.x", &epk.x)?, coordinate("epk.y", &epk.y)?);
        let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
        let epk = Option::<p256::PublicKey>::from(p256::PublicKey::from_encoded_point(&point))
            .ok_or("epk is not a point of P-256")?;
        let shared = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), epk.as_affine());

        // Concat KDF (RFC 7518 4.6.2): AlgorithmID, PartyUInfo, PartyVInfo, SuppPubInfo.
        let mut other_info = Vec::new();
        let mut field = |bytes: &[u8]| {
            other_info.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(0).to_be_bytes());
            other_info.extend_from_slice(bytes);
        };
        field(KEY_ALG.as_bytes());
        field(
            &header
                .apu
                .as_deref()
                .map(|v| b64("apu", v))
                .transpose()?
                .unwrap_or_default(),
        );
        field(
            &header
                .apv
                .as_deref()
                .map(|v| b64("apv", v))
                .transpose()?
                .unwrap_or_default(),
        );
        other_info.extend_from_slice(&256u32.to_be_bytes());
        let mut kek = Zeroizing::new([0u8; 32]);
        concat_kdf::derive_key_into::<sha2::Sha256>(
            shared.raw_secret_bytes(),
            &other_info,
            &mut kek[..],
        )
        .map_err(|_| "key derivation failed".to_owned())?;

        let wrapped = b64("encrypted_key", &jwe.encrypted_key)?;
        let mut cek = Zeroizing::new([0u8; 32]);
        if wrapped.len() != 40 {
            return Err("encrypted_key is not a wrapped 256-bit key".into());
        }
        aes_kw::KekAes256::from(*kek)
            .unwrap(&wrapped, &mut cek[..])
            .map_err(|_| {
                "the content key does not unwrap (a changed byte, or sealed to another tee-pubkey)"
                    .to_owned()
            })?;

        let iv: [u8; 12] = b64("iv", &jwe.iv)?
            .try_into()
            .map_err(|_| "iv is not 12 bytes".to_owned())?;
        let mut sealed = Zeroizing::new(b64("ciphertext", &jwe.ciphertext)?);
        let tag = b64("tag", &jwe.tag)?;
        if tag.len() != 16 {
            return Err("tag is not 16 bytes".into());
        }
        sealed.extend_from_slice(&tag);
        // RFC 7516 5.2: the additional data is the encoded protected header, and the
        // encoded JWE AAD after a dot if there is one.
        let mut aad = jwe.protected.clone().into_bytes();
        if let Some(extra) = &jwe.aad {
            aad.push(b'.');
            aad.extend_from_slice(extra.as_bytes());
        }
        let key = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &cek[..])
                .map_err(|_| "content key".to_owned())?,
        );
        let len = key
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(iv),
                ring::aead::Aad::from(&aad[..]),
                &mut sealed,
            )
            .map_err(|_| "the content does not authenticate (a changed byte)".to_owned())?
            .len();
        sealed.truncate(len);
        Ok(sealed)
    }
}

impl fmt::Debug for TeeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TeeKey(…)")
    }
}

/// A flattened JWE (RFC 7516 7.2.2), its members still encoded.
#[derive(Deserialize)]
struct FlattenedJwe {
    protected: String,
    encrypted_key: String,
    iv: String,
    ciphertext: String,
    tag: String,
    #[serde(default)]
    aad: Option<String>,
}

#[derive(Deserialize)]
struct ProtectedHeader {
    alg: String,
    enc: String,
    epk: Option<Epk>,
    apu: Option<String>,
    apv: Option<String>,
}

#[derive(Deserialize)]
struct Epk {
    kty: String,
    crv: String,
    x: String,
    y: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kbs_and_cdh_urls_name_a_host_and_a_three_part_resource() {
        let u = KbsUrl::parse("kbs://127.0.0.1:8080/default/veil/model-key").expect("valid");
        assert_eq!(u.endpoint.addr, "127.0.0.1:8080");
        assert_eq!(u.resource, "default/veil/model-key");
        assert_eq!(u.tee, None);
        assert_eq!(u.to_string(), "kbs://127.0.0.1:8080/default/veil/model-key");
        let u = KbsUrl::parse("kbs://kbs.example/a/b/c?tee=snp").expect("valid");
        assert_eq!(u.endpoint.addr, "kbs.example:8080");
        assert_eq!(u.tee, Some(KbsTee::Snp));
        for bad in [
            "kbs://",
            "kbs:///a/b/c",
            "kbs://h:1/a/b",
            "kbs://h:1/a/b/c/d",
            "kbs://h:1/a/../c",
            "kbs://h:1/a//c",
            "kbs://h:1/a/b/c?tee=tdx",
            "kbs://u:p@h:1/a/b/c",
            "http://h:1/a/b/c",
        ] {
            assert!(KbsUrl::parse(bad).is_err(), "{bad} accepted");
        }
        let c = CdhUrl::parse("cdh:///default/veil/model-key").expect("valid");
        assert_eq!(c.endpoint.addr, "127.0.0.1:8006");
        assert_eq!(c.to_string(), "cdh://127.0.0.1:8006/default/veil/model-key");
        let c = CdhUrl::parse("cdh://127.0.0.1:9/a/b/c").expect("valid");
        assert_eq!(c.endpoint.addr, "127.0.0.1:9");
        assert!(CdhUrl::parse("cdh:///a/b").is_err());
        assert!(CdhUrl::parse("cdh:///a/b/c?x=1").is_err());
    }

    #[test]
    fn the_evidence_format_follows_the_tee_and_sample_is_for_the_mock_only() {
        let plain = KbsUrl::parse("kbs://h/a/b/c").expect("valid");
        let snp = KbsUrl::parse("kbs://h/a/b/c?tee=snp").expect("valid");
        let sample = KbsUrl::parse("kbs://h/a/b/c?tee=sample").expect("valid");
        assert_eq!(
            plain.evidence_format(TeeKind::Mock).ok(),
            Some(KbsTee::Sample)
        );
        assert_eq!(plain.evidence_format(TeeKind::Snp).ok(), Some(KbsTee::Snp));
        assert_eq!(snp.evidence_format(TeeKind::Mock).ok(), Some(KbsTee::Snp));
        assert!(sample.evidence_format(TeeKind::Snp).is_err());
        assert!(plain.evidence_format(TeeKind::AzSnpVtpm).is_err());
    }

    #[test]
    fn a_refusal_quotes_the_kbs_error_type_and_detail() {
        let body = br#"{"type":"https://github.com/confidential-containers/kbs/errors/PolicyDeny","detail":"Resource policy denied\nthe request"}"#;
        assert_eq!(
            describe("GET /kbs/v0/resource/a/b/c", StatusCode::UNAUTHORIZED, body),
            "GET /kbs/v0/resource/a/b/c: 401 PolicyDeny: Resource policy deniedthe request"
        );
        assert_eq!(
            describe("POST /kbs/v0/auth", StatusCode::BAD_GATEWAY, b"<html>"),
            "POST /kbs/v0/auth: 502 Bad Gateway"
        );
        let long = format!(r#"{{"type":"x/Long","detail":"{}"}}"#, "d".repeat(5000));
        assert!(describe("w", StatusCode::UNAUTHORIZED, long.as_bytes()).len() < MAX_DETAIL + 40);
    }

    #[test]
    fn the_session_cookie_is_read_from_set_cookie() {
        let mut headers = HeaderMap::new();
        headers.append(SET_COOKIE, "other=1; Path=/".parse().expect("valid"));
        assert_eq!(session_cookie(&headers), None);
        headers.append(
            SET_COOKIE,
            "kbs-session-id=abc123; Expires=Wed, 21 Oct 2026 07:28:00 GMT"
                .parse()
                .expect("valid"),
        );
        assert_eq!(session_cookie(&headers).as_deref(), Some("abc123"));
    }

    #[test]
    fn the_runtime_data_digest_is_sha384_of_its_jcs_form() {
        let runtime = RuntimeData {
            nonce: "bm9uY2U=".into(),
            tee_pubkey: TeePubKey::EC {
                crv: "P-256".into(),
                alg: KEY_ALG.into(),
                x: "eA".into(),
                y: "eQ".into(),
            },
        };
        // Keys sorted, no blanks: what JCS (RFC 8785) makes of it, written out here.
        let jcs = r#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"eA","y":"eQ"}}"#;
        let expected = ring::digest::digest(&ring::digest::SHA384, jcs.as_bytes());
        assert_eq!(
            runtime_data_digest(&runtime).expect("digest").as_slice(),
            expected.as_ref()
        );
    }

    #[test]
    fn a_jwe_that_is_not_one_is_refused_by_name() {
        let key = TeeKey::generate();
        assert!(key
            .open(b"{}")
            .expect_err("refused")
            .contains("not a flattened JWE"));
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#);
        let jwe = format!(
            r#"{{"protected":"{header}","encrypted_key":"","iv":"","ciphertext":"","tag":""}}"#
        );
        assert!(key
            .open(jwe.as_bytes())
            .expect_err("refused")
            .contains("RSA-OAEP"));
    }
}
