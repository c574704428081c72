//! Fetching collateral from AMD's KDS, through a cache directory (the I/O side of
//! `veil_attestation::kds`, which builds the paths and judges the cached bytes).
//!
//! The cache (`--cache DIR`) is readable offline and by hand:
//!
//! ```text
//! DIR/vcek/{Milan|Genoa|Turin}/{hwid hex}/bl{BB}_tee{TT}_snp{SS}_ucode{UU}[_fmc{FF}]/vcek.der
//! DIR/crl/{Milan|Genoa|Turin}/crl.der
//! DIR/cert_chain/{Milan|Genoa|Turin}/cert_chain.pem
//! ```
//!
//! Each VCEK directory is a snpguest-style certs directory (`vcek.der`), so it can also
//! be passed to `veil report verify --certs`. VCEKs are kept forever (a product, hwid and
//! TCB name one key; the chain is verified on every use); CRLs until their nextUpdate.
//! Every verifying command (`veil verify/ask/chat/provision/proxy/broker`, `veil report
//! verify`) completes SNP evidence that carries no VEK through [`Collateral`];
//! `veil kds fetch` fills a cache for verifiers that run `--offline`.
//!
//! `https://` KDS URLs (the default, `https://kdsintf.amd.com`) are verified against the
//! system's root certificates (`rustls-native-certs`); `http://` serves mirrors and the
//! loopback fakes of the tests. TLS here protects availability and privacy only: what KDS
//! answers is checked against the report and then verified up to Veil's built-in AMD
//! roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use veil_attestation::kds::{self, CollateralStore, VcekRequest, DEFAULT_KDS_URL};
use veil_attestation::{Certificate, Crl, Evidence, Product, TeeKind};

/// The largest KDS answer read (a VCEK is ~1.3 KiB, a CRL a few KiB).
const MAX_BODY: usize = 1 << 20;
/// How long one request to KDS may take, from connecting to the end of the body.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// `--kds-url`, `--cache`, `--offline`.
#[derive(Args, Debug, Clone, Default)]
pub struct KdsArgs {
    /// AMD KDS base URL [default: AMD's KDS, kdsintf.amd.com over https; https trusts the system's
    /// roots, http serves mirrors].
    #[arg(long, env = "VEIL_KDS_URL")]
    pub kds_url: Option<String>,
    /// Collateral cache directory (VCEKs kept forever, CRLs until nextUpdate).
    #[arg(long = "cache")]
    pub cache: Option<PathBuf>,
    /// Never touch the network: use the cache only, and name what is missing.
    #[arg(long)]
    pub offline: bool,
}

/// A cache directory as a [`CollateralStore`].
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// The cache rooted at `root` (created on the first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirStore { root: root.into() }
    }

    /// Where `key` lives.
    pub fn path(&self, key: &str) -> PathBuf {
        key.split('/')
            .fold(self.root.clone(), |p, part| p.join(part))
    }
}

impl CollateralStore for DirStore {
    fn get(&self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(key)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir)?;
        // Write then rename: a reader never sees half a certificate.
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut tmp, bytes)?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// How hard to try: attempts, and the most time spent waiting between them in total.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Requests sent at most (at least 1).
    pub attempts: u32,
    /// The first wait when KDS names none (doubled after each failure).
    pub initial: Duration,
    /// The total wait, over all retries, never exceeded.
    pub max_total_wait: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 5,
            initial: Duration::from_secs(2),
            max_total_wait: Duration::from_secs(120),
        }
    }
}

/// A KDS client: base URL, retry policy, and for `https://` the TLS roots it trusts.
#[derive(Clone)]
pub struct Kds {
    host: String,
    port: u16,
    prefix: String,
    retry: Retry,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Kds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kds")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("prefix", &self.prefix)
            .field("https", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The system's trusted roots (`/etc/ssl/certs` and the like; `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` override), for `https://` KDS URLs.
///
/// # Errors
/// If the system has no usable root certificate.
pub fn system_roots() -> anyhow::Result<rustls::RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        bail!(
            "no trusted root certificates found for an https KDS (install the system's CA \
             certificates, e.g. Debian's ca-certificates, or set SSL_CERT_FILE){}",
            found
                .errors
                .first()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    Ok(roots)
}

impl Kds {
    /// A client for `base` (`http[s]://host[:port][/prefix]`); https trusts the system's
    /// roots ([`system_roots`]).
    ///
    /// # Errors
    /// A malformed URL, or https without any system root.
    pub fn new(base: &str, retry: Retry) -> anyhow::Result<Self> {
        let roots = if base.starts_with("https://") {
            Some(system_roots()?)
        } else {
            None
        };
        Self::with_roots(base, retry, roots)
    }

    /// A client for `base`; an `https://` URL is verified against `roots` (which it then
    /// needs).
    ///
    /// # Errors
    /// A malformed URL, or https without roots.
    pub fn with_roots(
        base: &str,
        retry: Retry,
        roots: Option<rustls::RootCertStore>,
    ) -> anyhow::Result<Self> {
        let (rest, default_port, https) = if let Some(rest) = base.strip_prefix("http://") {
            (rest, 80, false)
        } else if let Some(rest) = base.strip_prefix("https://") {
            (rest, 443, true)
        } else {
            bail!("KDS URL {base:?} must start with https:// or http://")
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .with_context(|| format!("KDS URL {base}: bad port"))?,
            ),
            None => (authority, default_port),
        };
        if host.is_empty() {
            bail!("KDS URL {base:?} names no host");
        }
        let tls = match (https, roots) {
            (false, _) => None,
            (true, None) => bail!("KDS URL {base}: https needs trusted roots"),
            (true, Some(roots)) => Some(Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .context("TLS configuration")?
                .with_root_certificates(roots)
                .with_no_client_auth(),
            )),
        };
        Ok(Kds {
            host: host.to_owned(),
            port,
            prefix: prefix.to_owned(),
            retry,
            tls,
        })
    }

    /// One GET, within [`REQUEST_DEADLINE`] in all (connecting, the answer, its body).
    async fn get_once(&self, path: &str) -> anyhow::Result<(StatusCode, Option<u64>, Bytes)> {
        match tokio::time::timeout(REQUEST_DEADLINE, self.get_unbounded(path)).await {
            Ok(result) => result,
            Err(_) => bail!(
                "KDS {}:{} did not answer {path} within {} s",
                self.host,
                self.port,
                REQUEST_DEADLINE.as_secs()
            ),
        }
    }

    async fn get_unbounded(&self, path: &str) -> anyhow::Result<(StatusCode, Option<u64>, Bytes)> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("cannot connect to KDS {}:{}", self.host, self.port))?;
        match &self.tls {
            None => self.exchange(TokioIo::new(tcp), path).await,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|_| anyhow!("KDS host {:?} is not a valid TLS name", self.host))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await
                    .with_context(|| {
                        format!("TLS handshake with KDS {}:{}", self.host, self.port)
                    })?;
                self.exchange(TokioIo::new(tls), path).await
            }
        }
    }

    /// One HTTP/1.1 GET over `io`.
    async fn exchange<IO>(
        &self,
        io: TokioIo<IO>,
        path: &str,
    ) -> anyhow::Result<(StatusCode, Option<u64>, Bytes)>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .context("HTTP handshake with KDS")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get(format!("{}{path}", self.prefix))
            .header("host", &self.host)
            .body(Empty::<Bytes>::new())
            .context("request")?;
        let resp = sender
            .send_request(req)
            .await
            .context("KDS did not answer")?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the KDS answer: {e}"))?
            .to_bytes();
        Ok((status, retry_after, body))
    }

    /// GETs `path`, retrying on 429 (waiting as `Retry-After` says) and on 5xx or a
    /// failed connection (waiting twice as long each time), within [`Retry`]'s bounds.
    ///
    /// # Errors
    /// Any other status (404 included), or when the attempts or the total wait run out.
    pub async fn get(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let mut waited = Duration::ZERO;
        let mut backoff = self.retry.initial;
        let mut last = String::new();
        for attempt in 1..=self.retry.attempts.max(1) {
            let wait = match self.get_once(path).await {
                Ok((StatusCode::OK, _, body)) => return Ok(body.to_vec()),
                Ok((StatusCode::TOO_MANY_REQUESTS, after, _)) => {
                    last = "429 Too Many Requests".into();
                    after.map(Duration::from_secs).unwrap_or(backoff)
                }
                Ok((s, _, _)) if s.is_server_error() => {
                    last = s.to_string();
                    backoff
                }
                Ok((s, _, _)) => bail!("KDS answered {s} for {path}"),
                Err(e) => {
                    last = format!("{e:#}");
                    backoff
                }
            };
            backoff = backoff.saturating_mul(2);
            if attempt == self.retry.attempts.max(1) {
                break;
            }
            if waited + wait > self.retry.max_total_wait {
                bail!(
                    "KDS: {last} for {path}; waiting {}s more would exceed the {}s limit",
                    wait.as_secs(),
                    self.retry.max_total_wait.as_secs()
                );
            }
            tokio::time::sleep(wait).await;
            waited += wait;
        }
        bail!(
            "KDS: {last} for {path} after {} attempts",
            self.retry.attempts
        )
    }
}

/// The per-user default cache: `$XDG_CACHE_HOME/veil/kds`, else `~/.cache/veil/kds`.
pub fn default_cache() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .map(|d| d.join("veil").join("kds"))
}

/// Where a verifier finds the collateral a report needs: the cache, then (unless
/// offline) AMD's KDS, whose answers are checked and then cached. Certificates are
/// self-authenticating: what comes from KDS or the cache still has to pass the chain
/// checks of every appraisal, so a bad answer can only cause a rejection.
#[derive(Debug, Clone)]
pub struct Collateral {
    base: String,
    store: Option<DirStore>,
    offline: bool,
    retry: Retry,
}

impl Collateral {
    /// From `--kds-url`, `--cache` (default [`default_cache`]) and `--offline`.
    pub fn new(args: &KdsArgs) -> Self {
        Collateral {
            base: args
                .kds_url
                .clone()
                .unwrap_or_else(|| DEFAULT_KDS_URL.to_owned()),
            store: args.cache.clone().or_else(default_cache).map(DirStore::new),
            offline: args.offline,
            retry: Retry::default(),
        }
    }

    /// No cache and no network: for mock evidence, which needs no collateral.
    pub fn none() -> Self {
        Collateral {
            base: DEFAULT_KDS_URL.to_owned(),
            store: None,
            offline: true,
            retry: Retry::default(),
        }
    }

    /// The same, retrying as `retry` says.
    #[must_use]
    pub fn with_retry(self, retry: Retry) -> Self {
        Collateral { retry, ..self }
    }

    /// The cache directory, if there is one.
    pub fn cache(&self) -> Option<&Path> {
        self.store.as_ref().map(|s| s.root.as_path())
    }

    fn kds(&self, what: &str) -> anyhow::Result<Kds> {
        if self.offline {
            bail!("--offline: {what} is not cached; fetch it on a connected machine (veil kds fetch REPORT --cache DIR) into the same --cache");
        }
        Kds::new(&self.base, self.retry)
    }

    fn put(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
        if let Some(store) = &self.store {
            store
                .put(key, bytes)
                .with_context(|| format!("writing the cache {}", store.root.display()))?;
        }
        Ok(())
    }

    /// Where `key` is (or would be) cached, for messages.
    fn place(&self, key: &str) -> String {
        match &self.store {
            Some(s) => s.path(key).display().to_string(),
            None => format!("{key} (no cache directory)"),
        }
    }

    /// The VCEK `request` names: from the cache, else (unless offline) from KDS, checked
    /// against the request and then cached.
    ///
    /// # Errors
    /// Offline with nothing cached (the missing file named), or a failed or wrong fetch.
    pub async fn vcek(&self, request: &VcekRequest) -> anyhow::Result<Certificate> {
        if let Some(store) = &self.store {
            if let Some(cert) = kds::cached_vcek(store, request)
                .with_context(|| format!("reading the cache {}", store.root.display()))?
            {
                return Ok(cert);
            }
        }
        let client = self.kds(&format!(
            "the VCEK for {} chip {} at TCB {} (missing {})",
            request.product(),
            request.hwid_hex(),
            request.tcb(),
            self.place(&request.cache_key())
        ))?;
        let path = request.path();
        let der = client.get(&path).await?;
        let cert = Certificate::from_der(&der)
            .with_context(|| format!("KDS answered {path} with something not a DER certificate"))?;
        request
            .check(&cert)
            .with_context(|| format!("KDS answered {path}"))?;
        self.put(&request.cache_key(), &der)?;
        Ok(cert)
    }

    /// `product`'s CRL: the cached one while it is current at `now`, else (unless offline)
    /// a fresh one from KDS, cached until its nextUpdate. Whether AMD signed it is checked
    /// where it is used, as for any CRL.
    ///
    /// # Errors
    /// Offline without a current CRL, a failed fetch, or an answer that is no current CRL.
    pub async fn crl(&self, product: Product, now: SystemTime) -> anyhow::Result<Crl> {
        let key = kds::crl_cache_key(product);
        if let Some(store) = &self.store {
            if let Some(crl) = kds::cached_crl(store, product, now)
                .with_context(|| format!("reading the cache {}", store.root.display()))?
            {
                return Ok(crl);
            }
        }
        let client = self.kds(&format!(
            "a current {product} CRL (missing or past its nextUpdate: {})",
            self.place(&key)
        ))?;
        let path = kds::crl_path(product)?;
        let der = client.get(&path).await?;
        let crl = Crl::from_pem_or_der(&der)
            .with_context(|| format!("KDS answered {path} with something not a CRL"))?;
        if !kds::crl_is_current(&crl, now) {
            bail!("KDS answered {path} with a CRL that is not current (thisUpdate..nextUpdate does not cover now)");
        }
        self.put(&key, &der)?;
        Ok(crl)
    }

    /// `product`'s ASK (or ASVK) and ARK as KDS serves them (`cert_chain`), cached; the
    /// verifier's built-in roots remain the anchors, so these are only checked to parse.
    ///
    /// # Errors
    /// Offline with nothing cached, a failed fetch, or an answer that is not two
    /// certificates.
    pub async fn cert_chain(&self, product: Product) -> anyhow::Result<Vec<Certificate>> {
        let key = kds::cert_chain_cache_key(product);
        if let Some(store) = &self.store {
            if let Some(pem) = store
                .get(&key)
                .with_context(|| format!("reading the cache {}", store.root.display()))?
            {
                if let Ok(certs) = Certificate::all_from_pem_or_der(&pem) {
                    if certs.len() == 2 {
                        return Ok(certs);
                    }
                }
            }
        }
        let client = self.kds(&format!(
            "the {product} ASK and ARK (missing {})",
            self.place(&key)
        ))?;
        let path = kds::cert_chain_path(product)?;
        let pem = client.get(&path).await?;
        let certs = Certificate::all_from_pem_or_der(&pem)
            .ok()
            .filter(|c| c.len() == 2)
            .ok_or_else(|| anyhow!("KDS answered {path} with something not two certificates"))?;
        self.put(&key, &pem)?;
        Ok(certs)
    }

    /// Completes SNP evidence that carries no VEK (every upstream KVM host gives none) with
    /// the report's VCEK. The product comes from the report; for a v2 report, which does
    /// not say, from `products` when it names exactly one of Milan and Genoa. Returns
    /// whether a certificate was added. Mock evidence, and evidence that has its VEK, are
    /// left as they are.
    ///
    /// # Errors
    /// When a VCEK is needed but cannot be had: a VLEK-signed report, an unknown product,
    /// offline without it cached, or KDS failing; each named.
    pub async fn complete(
        &self,
        evidence: &mut Evidence,
        products: Option<&[Product]>,
    ) -> anyhow::Result<bool> {
        if evidence.tee == TeeKind::Mock || has_vek(evidence) {
            return Ok(false);
        }
        let report = evidence.parsed_report().context("the evidence's report")?;
        let product = match kds::report_product(&report) {
            Some(p) => p,
            None => {
                let named: Vec<Product> = products
                    .unwrap_or_default()
                    .iter()
                    .copied()
                    .filter(|p| matches!(p, Product::Milan | Product::Genoa))
                    .collect();
                match named.as_slice() {
                    [one] => *one,
                    _ => bail!(
                        "the evidence carries no VCEK, and its v2 report does not say whether \
                         it is Milan or Genoa: name one product in the policy (products = \
                         [\"Milan\"]) to fetch it"
                    ),
                }
            }
        };
        let request =
            VcekRequest::from_report(&report, product).context("the evidence carries no VEK")?;
        let vcek = self
            .vcek(&request)
            .await
            .context("the evidence carries no VEK, and its VCEK could not be had")?;
        evidence.certificates.insert(0, vcek.as_der().to_vec());
        Ok(true)
    }
}

/// Whether the evidence's first certificate is a VEK (`SEV-VCEK` or `SEV-VLEK`) rather
/// than an ASK or ARK (a host may give only those).
fn has_vek(evidence: &Evidence) -> bool {
    evidence
        .certificates
        .first()
        .and_then(|der| Certificate::from_der(der).ok())
        .and_then(|c| c.subject_cn())
        .is_some_and(|cn| cn == "SEV-VCEK" || cn == "SEV-VLEK")
}

/// [`Collateral::vcek`], for callers outside an async runtime.
///
/// # Errors
/// As [`Collateral::vcek`].
pub fn vcek(args: &KdsArgs, request: &VcekRequest, retry: Retry) -> anyhow::Result<Certificate> {
    let collateral = Collateral::new(args).with_retry(retry);
    current_thread()?.block_on(collateral.vcek(request))
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::sync::{Arc, Mutex};
    use veil_attestation::{Product, Report};

    /// What the fake KDS answers: status, Retry-After, body.
    type Answer = (u16, Option<u64>, Vec<u8>);
    type Route = dyn Fn(&str, usize) -> Answer + Send + Sync;

    /// A loopback fake KDS: `route(path, nth request so far)` answers each request.
    /// Returns its base URL and the paths requested.
    fn fake_kds(route: Box<Route>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(Vec::new()));
        let seen = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                }
                let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                let nth = {
                    let mut hits = seen.lock().unwrap();
                    hits.push(path.clone());
                    hits.iter().filter(|p| **p == path).count() - 1
                };
                let (status, after, body) = route(&path, nth);
                let mut head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                if let Some(after) = after {
                    head.push_str(&format!("retry-after: {after}\r\n"));
                }
                head.push_str("\r\n");
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        (base, hits)
    }

    fn fast() -> Retry {
        Retry {
            attempts: 4,
            initial: Duration::from_millis(10),
            max_total_wait: Duration::from_secs(5),
        }
    }

    fn vectors() -> Option<PathBuf> {
        // The one lookup of the real vectors (SKIPPED when absent, a failure when
        // VEIL_REQUIRE_VECTORS=1); only a path crosses between the two crates.
        veil_tests::vectors::dir()
    }

    /// Every VCEK-signed report of the vectors: its request and the VCEK it ships.
    fn vcek_sets(dir: &Path) -> Vec<(String, Report, VcekRequest, Vec<u8>)> {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        let mut out = Vec::new();
        for set in manifest["sets"].as_array().unwrap() {
            let Some(report) = set["report"].as_str() else {
                continue;
            };
            let name = set["name"].as_str().unwrap().to_owned();
            let report =
                Report::from_bytes_or_hex(&std::fs::read(dir.join(report)).unwrap()).unwrap();
            let product = Product::from_name(set["product"].as_str().unwrap()).unwrap();
            let Ok(request) = VcekRequest::from_report(&report, product) else {
                continue; // the VLEK set
            };
            let vek = std::fs::read(dir.join(set["vek"].as_str().unwrap())).unwrap();
            let der = Certificate::all_from_pem_or_der(&vek).unwrap()[0]
                .as_der()
                .to_vec();
            out.push((name, report, request, der));
        }
        out
    }

    fn args(base: &str, cache: &Path, offline: bool) -> KdsArgs {
        KdsArgs {
            kds_url: Some(base.to_owned()),
            cache: Some(cache.to_owned()),
            offline,
        }
    }

    #[test]
    fn every_real_vcek_is_fetched_at_its_kds_path_cached_then_read_offline() {
        let Some(dir) = vectors() else { return };
        let sets = vcek_sets(&dir);
        assert_eq!(sets.len(), 16);
        let served: Vec<(String, Vec<u8>)> = sets
            .iter()
            .map(|(_, _, r, der)| (r.path(), der.clone()))
            .collect();
        let (base, hits) = fake_kds(Box::new(move |path, _| {
            match served.iter().find(|(p, _)| p == path) {
                Some((_, der)) => (200, None, der.clone()),
                None => (404, None, Vec::new()),
            }
        }));
        let cache = tempfile::tempdir().unwrap();
        for (name, _, request, der) in &sets {
            let cert = vcek(&args(&base, cache.path(), false), request, fast())
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(cert.as_der(), der.as_slice(), "{name}");
            let file = cache.path().join(request.cache_dir()).join("vcek.der");
            assert_eq!(&std::fs::read(&file).unwrap(), der, "{name}");
        }
        // Distinct paths: the vectors share a few chips and TCBs.
        let fetched = hits.lock().unwrap().len();
        assert!(fetched >= 1 && fetched <= sets.len());
        for (name, _, request, der) in &sets {
            let cert = vcek(
                &args("http://127.0.0.1:9", cache.path(), true),
                request,
                fast(),
            )
            .unwrap_or_else(|e| panic!("{name} offline: {e:#}"));
            assert_eq!(cert.as_der(), der.as_slice(), "{name}");
        }
        assert_eq!(
            hits.lock().unwrap().len(),
            fetched,
            "offline touched the network"
        );
    }

    #[test]
    fn report_verify_accepts_every_real_report_with_only_the_vcek_from_kds() {
        use crate::report_cmd::{run, ReportCommand, VerifyArgs};
        let Some(dir) = vectors() else { return };
        let sets = vcek_sets(&dir);
        let served: Vec<(String, Vec<u8>)> = sets
            .iter()
            .map(|(_, _, r, der)| (r.path(), der.clone()))
            .collect();
        let (base, _) = fake_kds(Box::new(move |path, _| {
            match served.iter().find(|(p, _)| p == path) {
                Some((_, der)) => (200, None, der.clone()),
                None => (404, None, Vec::new()),
            }
        }));
        let tmp = tempfile::tempdir().unwrap();
        let policy = tmp.path().join("permissive.toml");
        std::fs::write(
            &policy,
            "any_measurement = true\nallow_debug = true\nvmpl = [0, 1, 2, 3]\n",
        )
        .unwrap();
        for (i, (name, report, request, der)) in sets.iter().enumerate() {
            let file = tmp.path().join(format!("{i}.bin"));
            std::fs::write(&file, report.as_bytes()).unwrap();
            // When the VCEK (and so, AMD's older ASK and ARK) is valid.
            let at = Certificate::from_der(der).unwrap().not_before() + Duration::from_secs(86400);
            let at = time::OffsetDateTime::from(at)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            let verify = |offline: bool| VerifyArgs {
                file: file.clone(),
                certs: None,
                policy: Some(policy.clone()),
                mock_root: None,
                crls: Vec::new(),
                report_data: None,
                at: Some(at.clone()),
                json: true,
                product: Some(request.product().name().to_owned()),
                kds: args(&base, &tmp.path().join("cache"), offline),
            };
            let result = run(ReportCommand::Verify(Box::new(verify(false))));
            assert!(result.is_ok(), "{name}: {:?}", result.err());
            // And again from the cache alone.
            let result = run(ReportCommand::Verify(Box::new(verify(true))));
            assert!(result.is_ok(), "{name} offline: {:?}", result.err());
        }
    }

    fn one_set() -> Option<(VcekRequest, Vec<u8>)> {
        let dir = vectors()?;
        let (_, _, request, der) = vcek_sets(&dir).remove(0);
        Some((request, der))
    }

    #[test]
    fn a_429_with_retry_after_is_waited_out_then_the_vcek_served() {
        let Some((request, der)) = one_set() else {
            return;
        };
        let (base, hits) = fake_kds(Box::new(move |_, nth| match nth {
            0 => (429, Some(1), Vec::new()),
            1 => (503, None, Vec::new()),
            _ => (200, None, der.clone()),
        }));
        let cache = tempfile::tempdir().unwrap();
        let start = std::time::Instant::now();
        vcek(&args(&base, cache.path(), false), &request, fast()).unwrap();
        assert!(
            start.elapsed() >= Duration::from_secs(1),
            "Retry-After ignored"
        );
        assert_eq!(hits.lock().unwrap().len(), 3);
    }

    #[test]
    fn a_retry_after_beyond_the_total_wait_gives_up_at_once() {
        let Some((request, _)) = one_set() else {
            return;
        };
        let (base, hits) = fake_kds(Box::new(|_, _| (429, Some(3600), Vec::new())));
        let cache = tempfile::tempdir().unwrap();
        let start = std::time::Instant::now();
        let err = vcek(&args(&base, cache.path(), false), &request, fast()).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        let text = format!("{err:#}");
        assert!(text.contains("429") && text.contains("limit"), "{text}");
        assert_eq!(hits.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_404_is_not_retried_and_nothing_is_cached() {
        let Some((request, _)) = one_set() else {
            return;
        };
        let (base, hits) = fake_kds(Box::new(|_, _| (404, None, Vec::new())));
        let cache = tempfile::tempdir().unwrap();
        let err = vcek(&args(&base, cache.path(), false), &request, fast()).unwrap_err();
        assert!(format!("{err:#}").contains("404"), "{err:#}");
        assert_eq!(hits.lock().unwrap().len(), 1);
        assert!(!cache.path().join(request.cache_key()).exists());
    }

    #[test]
    fn a_vcek_for_another_chip_is_refused_and_not_cached() {
        let Some(dir) = vectors() else { return };
        let sets = vcek_sets(&dir);
        let (_, _, request, _) = &sets[0];
        let other = sets
            .iter()
            .find(|(_, _, r, _)| r.hwid() != request.hwid())
            .map(|(_, _, _, der)| der.clone())
            .unwrap();
        let (base, _) = fake_kds(Box::new(move |_, _| (200, None, other.clone())));
        let cache = tempfile::tempdir().unwrap();
        let err = vcek(&args(&base, cache.path(), false), request, fast()).unwrap_err();
        assert!(format!("{err:#}").contains("hwID"), "{err:#}");
        assert!(!cache.path().join(request.cache_key()).exists());
    }

    #[test]
    fn offline_names_the_missing_file() {
        let Some((request, _)) = one_set() else {
            return;
        };
        let cache = tempfile::tempdir().unwrap();
        let err = vcek(
            &args("http://127.0.0.1:9", cache.path(), true),
            &request,
            fast(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--offline") && err.contains("vcek.der"),
            "{err}"
        );
        assert!(err.contains(&request.hwid_hex()), "{err}");
    }

    /// Serves each set's VCEK at its KDS path, and 404 for anything else.
    fn serving(
        sets: &[(String, Report, VcekRequest, Vec<u8>)],
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let served: Vec<(String, Vec<u8>)> = sets
            .iter()
            .map(|(_, _, r, der)| (r.path(), der.clone()))
            .collect();
        fake_kds(Box::new(move |path, _| {
            match served.iter().find(|(p, _)| p == path) {
                Some((_, der)) => (200, None, der.clone()),
                None => (404, None, Vec::new()),
            }
        }))
    }

    fn bare(report: &Report) -> Evidence {
        Evidence {
            tee: TeeKind::Snp,
            report: report.as_bytes().to_vec(),
            certificates: Vec::new(),
            binding: None,
            vtpm: None,
        }
    }

    #[test]
    fn evidence_without_certificates_is_completed_with_its_vcek_and_then_appraises() {
        use veil_attestation::{Offline, Policy};
        let Some(dir) = vectors() else { return };
        let sets = vcek_sets(&dir);
        let (base, _) = serving(&sets);
        let cache = tempfile::tempdir().unwrap();
        let collateral = Collateral::new(&args(&base, cache.path(), false)).with_retry(fast());
        let rt = current_thread().unwrap();
        let policy =
            Policy::from_toml("any_measurement = true\nallow_debug = true\nvmpl = [0, 1, 2, 3]\n")
                .unwrap();
        for (name, report, request, der) in &sets {
            let mut evidence = bare(report);
            let added = rt
                .block_on(collateral.complete(&mut evidence, Some(&[request.product()])))
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(added, "{name}");
            assert_eq!(evidence.certificates, vec![der.clone()], "{name}");
            let at = Certificate::from_der(der).unwrap().not_before() + Duration::from_secs(86400);
            policy
                .appraise_offline(&evidence, &Offline::danger_any_report_data(at))
                .unwrap_or_else(|r| panic!("{name}: {r}"));
            // Without the VCEK the same evidence is refused: the completion did the work.
            assert!(policy
                .appraise_offline(&bare(report), &Offline::danger_any_report_data(at))
                .is_err());
        }
    }

    #[test]
    fn evidence_with_its_vek_or_from_the_mock_is_left_alone_and_offline_names_what_is_missing() {
        let Some(dir) = vectors() else { return };
        let sets = vcek_sets(&dir);
        let (base, hits) = serving(&sets);
        let cache = tempfile::tempdir().unwrap();
        let rt = current_thread().unwrap();
        let online = Collateral::new(&args(&base, cache.path(), false)).with_retry(fast());
        let (name, report, request, der) = &sets[0];
        let mut with_vek = bare(report);
        with_vek.certificates.push(der.clone());
        assert!(
            !rt.block_on(online.complete(&mut with_vek, None)).unwrap(),
            "{name}"
        );
        let mut mock = bare(report);
        mock.tee = TeeKind::Mock;
        assert!(!rt.block_on(online.complete(&mut mock, None)).unwrap());
        assert!(mock.certificates.is_empty());
        assert!(
            hits.lock().unwrap().is_empty(),
            "nothing needed the network"
        );

        let offline = Collateral::new(&args(&base, cache.path(), true));
        let err = rt
            .block_on(offline.complete(&mut bare(report), Some(&[request.product()])))
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("--offline") && text.contains("vcek.der"),
            "{text}"
        );
        assert!(
            hits.lock().unwrap().is_empty(),
            "offline touched the network"
        );
    }

    #[test]
    fn a_v2_report_needs_the_policy_to_name_its_product() {
        let Some(dir) = vectors() else { return };
        let sets = vcek_sets(&dir);
        let Some((_, report, request, _)) = sets
            .iter()
            .find(|(_, r, _, _)| kds::report_product(r).is_none())
        else {
            panic!("the vectors hold v2 Milan/Genoa reports");
        };
        let (base, _) = serving(&sets);
        let cache = tempfile::tempdir().unwrap();
        let rt = current_thread().unwrap();
        let c = Collateral::new(&args(&base, cache.path(), false)).with_retry(fast());
        let err = rt
            .block_on(c.complete(&mut bare(report), None))
            .unwrap_err();
        assert!(err.to_string().contains("Milan or Genoa"), "{err}");
        let both = [Product::Milan, Product::Genoa];
        assert!(rt
            .block_on(c.complete(&mut bare(report), Some(&both)))
            .is_err());
        assert!(rt
            .block_on(c.complete(&mut bare(report), Some(&[request.product()])))
            .unwrap());
    }

    #[test]
    fn kds_fetch_fills_a_cache_that_offline_verification_then_uses() {
        use crate::kds_cmd::{run, FetchArgs, KdsCommand};
        let Some(dir) = vectors() else { return };
        let sets = vcek_sets(&dir);
        let (name, report, request, der) = sets
            .iter()
            .find(|(_, r, _, _)| kds::report_product(r) == Some(Product::Milan))
            .cloned()
            .expect("a Milan v3 report");
        let chain = [
            std::fs::read(dir.join("amd-roots/ask_milan.pem")).unwrap(),
            std::fs::read(dir.join("amd-roots/ark_milan.pem")).unwrap(),
        ]
        .concat();
        let platform = veil_attestation::MockPlatform::generate(SystemTime::now()).unwrap();
        let crl = platform
            .crl(
                veil_attestation::mock::CrlSigner::Root,
                &[],
                SystemTime::now() - Duration::from_secs(60),
                Duration::from_secs(7 * 86400),
            )
            .unwrap();
        let vcek_path = request.path();
        let crl_path = kds::crl_path(Product::Milan).unwrap();
        let chain_path = kds::cert_chain_path(Product::Milan).unwrap();
        let (base, hits) = fake_kds(Box::new(move |path, _| {
            if path == vcek_path {
                (200, None, der.clone())
            } else if path == crl_path {
                (200, None, crl.clone())
            } else if path == chain_path {
                (200, None, chain.clone())
            } else {
                (404, None, Vec::new())
            }
        }));
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("report.bin");
        std::fs::write(&file, report.as_bytes()).unwrap();
        let cache = tmp.path().join("cache");
        let fetch = |offline: bool| {
            run(KdsCommand::Fetch(FetchArgs {
                report: file.clone(),
                product: None,
                kds: args(&base, &cache, offline),
            }))
        };
        // Offline before any fetch: refused, naming the missing VCEK.
        match fetch(true) {
            Err(crate::Failure::Error(e)) => {
                assert!(format!("{e:#}").contains("vcek.der"), "{e:#}")
            }
            other => panic!("{name}: offline with an empty cache: {other:?}"),
        }
        assert!(hits.lock().unwrap().is_empty());
        fetch(false).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(hits.lock().unwrap().len(), 3, "VCEK, ASK/ARK and CRL");
        for key in [
            request.cache_key(),
            kds::crl_cache_key(Product::Milan),
            kds::cert_chain_cache_key(Product::Milan),
        ] {
            assert!(cache.join(&key).is_file(), "{key}");
        }
        // Again: everything is cached and current, nothing is fetched; and offline passes.
        fetch(false).unwrap();
        fetch(true).unwrap();
        assert_eq!(hits.lock().unwrap().len(), 3, "the cache was not used");
    }

    /// A loopback KDS over TLS, with a self-signed certificate for 127.0.0.1 (returned as
    /// the one root to trust), answering every request with `body`.
    fn fake_tls_kds(body: Vec<u8>) -> (String, rustls::RootCertStore) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert = cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("https://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let conn = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match std::io::Read::read(&mut tls, &mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(&body);
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        (base, roots)
    }

    #[test]
    fn an_https_kds_is_fetched_over_tls_verified_against_the_roots_given() {
        let (base, roots) = fake_tls_kds(b"vcek bytes".to_vec());
        let rt = current_thread().unwrap();
        let kds = Kds::with_roots(&base, fast(), Some(roots)).unwrap();
        assert_eq!(
            rt.block_on(kds.get("/vcek/v1/Milan/x")).unwrap(),
            b"vcek bytes"
        );
        // Another root: the handshake fails, and is not taken for an answer.
        let (_, other) = fake_tls_kds(Vec::new());
        let kds = Kds::with_roots(&base, fast(), Some(other)).unwrap();
        let err = rt.block_on(kds.get("/vcek/v1/Milan/x")).unwrap_err();
        assert!(format!("{err:#}").contains("TLS handshake"), "{err:#}");
    }

    #[test]
    fn urls_parse_with_their_default_ports_and_malformed_ones_are_refused() {
        assert!(Kds::new("ftp://x", Retry::default()).is_err());
        assert!(Kds::new("http://:80", Retry::default()).is_err());
        assert!(Kds::with_roots("https://kds.example", Retry::default(), None).is_err());
        let k = Kds::new("http://127.0.0.1:8080/mirror/", Retry::default()).unwrap();
        assert_eq!(
            (k.host.as_str(), k.port, k.prefix.as_str(), k.tls.is_some()),
            ("127.0.0.1", 8080, "/mirror", false)
        );
        let roots = rustls::RootCertStore::empty();
        let k = Kds::with_roots(DEFAULT_KDS_URL, Retry::default(), Some(roots)).unwrap();
        assert_eq!(
            (k.host.as_str(), k.port, k.tls.is_some()),
            ("kdsintf.amd.com", 443, true)
        );
    }

    #[test]
    fn the_system_roots_load_where_the_system_has_them() {
        if std::fs::read_dir("/etc/ssl/certs").map_or(true, |d| d.count() == 0) {
            return;
        }
        assert!(!system_roots().unwrap().is_empty());
    }
}
