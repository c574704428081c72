//! Fetching collateral from AMD's KDS, through a cache directory (the I/O side of
//! `veil_attestation::kds`, which builds the paths and judges the cached bytes).
//!
//! The cache (`--cache DIR`) is readable offline and by hand:
//!
//! ```text
//! DIR/vcek/{Milan|Genoa|Turin}/{hwid hex}/bl{BB}_tee{TT}_snp{SS}_ucode{UU}[_fmc{FF}]/vcek.der
//! DIR/crl/{Milan|Genoa|Turin}/crl.der
//! ```
//!
//! Each VCEK directory is a snpguest-style certs directory (`vcek.der`), so it can also
//! be passed to `veil report verify --certs`. VCEKs are kept forever (a product, hwid and
//! TCB name one key; the chain is verified on every use); CRLs until their nextUpdate.
//!
//! Only `http://` KDS URLs are fetched for now: Veil ships no web PKI root store (no
//! roots crate is in the dependency tree), so the default `https://kdsintf.amd.com` is
//! refused with that reason. Use an http mirror, or fill the cache elsewhere and verify
//! with `--offline`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use veil_attestation::kds::{self, CollateralStore, VcekRequest, DEFAULT_KDS_URL};
use veil_attestation::Certificate;

/// The largest KDS answer read (a VCEK is ~1.3 KiB, a CRL a few KiB).
const MAX_BODY: usize = 1 << 20;

/// `--kds-url`, `--cache`, `--offline`.
#[derive(Args, Debug, Clone, Default)]
pub struct KdsArgs {
    /// AMD KDS base URL (default: AMD's KDS, kdsintf.amd.com over https; only plain http
    /// URLs are fetched for now).
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

/// A KDS client: base URL and retry policy.
#[derive(Debug, Clone)]
pub struct Kds {
    host: String,
    port: u16,
    prefix: String,
    retry: Retry,
}

impl Kds {
    /// A client for `base` (`http://host[:port][/prefix]`).
    ///
    /// # Errors
    /// For https (no root store yet, see the module docs) or a malformed URL.
    pub fn new(base: &str, retry: Retry) -> anyhow::Result<Self> {
        let rest = if let Some(rest) = base.strip_prefix("http://") {
            rest
        } else if base.starts_with("https://") {
            bail!(
                "KDS URL {base}: https is not supported yet (Veil ships no web PKI root store); \
                 use an http:// mirror with --kds-url, or a filled --cache with --offline"
            )
        } else {
            bail!("KDS URL {base:?} must start with http://")
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
            None => (authority, 80),
        };
        if host.is_empty() {
            bail!("KDS URL {base:?} names no host");
        }
        Ok(Kds {
            host: host.to_owned(),
            port,
            prefix: prefix.to_owned(),
            retry,
        })
    }

    async fn get_once(&self, path: &str) -> anyhow::Result<(StatusCode, Option<u64>, Bytes)> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("cannot connect to KDS {}:{}", self.host, self.port))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
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

/// The VCEK `request` names: from the cache, else (unless offline) from KDS, checked
/// against the request and then cached.
///
/// # Errors
/// Offline with nothing cached (the missing file named), or a failed or wrong fetch.
pub fn vcek(args: &KdsArgs, request: &VcekRequest, retry: Retry) -> anyhow::Result<Certificate> {
    let cache = args.cache.clone().or_else(default_cache);
    let store = cache.as_ref().map(DirStore::new);
    if let Some(store) = &store {
        if let Some(cert) = kds::cached_vcek(store, request)
            .with_context(|| format!("reading the cache {}", store.root.display()))?
        {
            return Ok(cert);
        }
    }
    if args.offline {
        let missing = match &store {
            Some(s) => s.path(&request.cache_key()).display().to_string(),
            None => request.cache_key(),
        };
        bail!(
            "--offline: the VCEK for {} chip {} at TCB {} is not cached (missing {missing}); \
             fetch it on a connected machine into the same --cache",
            request.product(),
            request.hwid_hex(),
            request.tcb()
        );
    }
    let base = args.kds_url.as_deref().unwrap_or(DEFAULT_KDS_URL);
    let client = Kds::new(base, retry)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let path = request.path();
    let der = runtime.block_on(client.get(&path))?;
    let cert = Certificate::from_der(&der)
        .with_context(|| format!("KDS answered {path} with something not a DER certificate"))?;
    request
        .check(&cert)
        .with_context(|| format!("KDS answered {path}"))?;
    if let Some(store) = &store {
        store
            .put(&request.cache_key(), &der)
            .with_context(|| format!("writing the cache {}", store.root.display()))?;
    }
    Ok(cert)
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

    #[test]
    fn https_and_malformed_urls_are_refused_with_the_reason() {
        let err = Kds::new(DEFAULT_KDS_URL, Retry::default()).unwrap_err();
        assert!(err.to_string().contains("https is not supported"), "{err}");
        assert!(Kds::new("ftp://x", Retry::default()).is_err());
        assert!(Kds::new("http://:80", Retry::default()).is_err());
        let k = Kds::new("http://127.0.0.1:8080/mirror/", Retry::default()).unwrap();
        assert_eq!(
            (k.host.as_str(), k.port, k.prefix.as_str()),
            ("127.0.0.1", 8080, "/mirror")
        );
    }
}
