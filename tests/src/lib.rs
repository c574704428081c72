//! End-to-end tests of Veil; the tests live in `tests/tests/`. This library holds what
//! they share: loading the real AMD SEV-SNP vectors ([`vectors`]), finding the measurement
//! vectors ([`measure_vectors`]), and running the real `veil` and `veil-server` binaries on
//! loopback with the mock TEE ([`harness`]).

// Only veil-sealing's memory module needs `unsafe` (STYLE.md, Unsafe).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

pub mod harness;
pub mod raw;

/// A directory of `shared/vectors`: `$var`, by default `../shared/vectors/<default>` beside
/// the checkout, when it holds a `manifest.json`. Otherwise `None`, saying SKIPPED, or with
/// `VEIL_REQUIRE_VECTORS=1` (as in CI) a panic; `what` names the vectors in both messages.
fn shared_vectors(var: &str, default: &str, what: &str) -> Option<PathBuf> {
    let dir = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/vectors")
            .join(default)
    });
    if dir.join("manifest.json").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var("VEIL_REQUIRE_VECTORS").as_deref() != Ok("1"),
        "VEIL_REQUIRE_VECTORS=1 but no {what} at {}",
        dir.display()
    );
    eprintln!("SKIPPED: no {what} at {} (set {var})", dir.display());
    None
}

pub mod measure_vectors {
    //! The measurement vectors in `$VEIL_MEASURE_VECTORS` (default
    //! `../shared/vectors/measure` beside the checkout): firmware images, kernels and the
    //! `manifest.json` of expected launch measurements. Read by path, never copied.

    use std::path::PathBuf;

    /// The measurement vectors directory, or `None` (saying SKIPPED) when it is absent.
    /// With `VEIL_REQUIRE_VECTORS=1` (as in CI) absence is a panic.
    pub fn dir() -> Option<PathBuf> {
        super::shared_vectors("VEIL_MEASURE_VECTORS", "measure", "measurement vectors")
    }
}

pub mod vectors {
    //! The real, AMD-signed SEV-SNP vectors in `$VEIL_SNP_VECTORS` (default
    //! `../shared/vectors/snp` beside the checkout). They are read by path, never copied.

    use std::path::{Path, PathBuf};
    use std::time::{Duration, SystemTime};

    use serde::Deserialize;
    use veil_attestation::{Certificate, Evidence, Report, TeeKind};

    /// One set of `manifest.json`.
    #[derive(Debug, Clone, Deserialize)]
    pub struct Set {
        /// Name, e.g. `oak/genoa-oc`.
        pub name: String,
        /// Product named by the manifest.
        pub product: String,
        /// Report file, relative to the manifest.
        pub report: Option<String>,
        /// `bin` (default), `hex` or `hcl`.
        pub report_format: Option<String>,
        /// VCEK/VLEK certificate.
        pub vek: String,
        /// ASK or ASVK.
        pub ask: Option<String>,
        /// ARK.
        pub ark: Option<String>,
        /// A PEM holding the ASK (or ASVK) and the ARK.
        pub chain: Option<String>,
        /// Whether the set has a report that verifies end to end.
        pub expect_fully_verified: bool,
    }

    #[derive(Deserialize)]
    struct Manifest {
        sets: Vec<Set>,
    }

    /// A loaded vector: evidence and its pieces.
    #[derive(Debug, Clone)]
    pub struct Vector {
        /// The manifest entry.
        pub set: Set,
        /// The raw 1184-byte report.
        pub report: Vec<u8>,
        /// The VCEK/VLEK.
        pub vek: Certificate,
        /// ASK/ASVK and ARK as given by the set (possibly empty).
        pub chain: Vec<Certificate>,
        /// A time at which every certificate of the set is valid (a day after the VEK's
        /// notBefore): tests pin the clock to it.
        pub valid_at: SystemTime,
        /// The directory of the vectors.
        pub root: PathBuf,
    }

    impl Vector {
        /// Evidence with the VEK and the set's chain.
        pub fn evidence(&self) -> Evidence {
            let mut certificates = vec![self.vek.as_der().to_vec()];
            certificates.extend(self.chain.iter().map(|c| c.as_der().to_vec()));
            Evidence {
                tee: TeeKind::Snp,
                report: self.report.clone(),
                certificates,
                binding: None,
                vtpm: None,
            }
        }

        /// The parsed report.
        pub fn parsed(&self) -> Report {
            Report::from_bytes(&self.report).expect("vector reports parse")
        }
    }

    /// The vectors directory, or `None` (with a message saying the tests skipped) when it
    /// is absent. With `VEIL_REQUIRE_VECTORS=1` (as in CI) absence is a panic.
    pub fn dir() -> Option<PathBuf> {
        super::shared_vectors("VEIL_SNP_VECTORS", "snp", "SNP vectors")
    }

    fn read(dir: &Path, rel: &str) -> Vec<u8> {
        std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Extracts the raw report bytes of a set in any of the manifest's formats.
    pub fn report_bytes(dir: &Path, set: &Set) -> Option<Vec<u8>> {
        let bytes = read(dir, set.report.as_deref()?);
        Some(match set.report_format.as_deref().unwrap_or("bin") {
            "hex" => {
                let text: String = String::from_utf8(bytes)
                    .expect("hex is text")
                    .split_whitespace()
                    .collect();
                hex::decode(text).expect("valid hex")
            }
            "hcl" => bytes[0x20..0x20 + 1184].to_vec(),
            _ => bytes,
        })
    }

    /// Every set of the manifest that has a fully verifiable report, or none when the
    /// vectors directory is absent (see [`dir`]).
    ///
    /// # Panics
    /// If the vectors are present but the manifest lists no fully verifiable set, or a
    /// file it names cannot be read or parsed.
    pub fn all() -> Vec<Vector> {
        dir().map(|dir| load(&dir)).unwrap_or_default()
    }

    /// The fully verifiable set called `name` (e.g. `go-sev-guest/milan`), or `None` when
    /// the vectors directory is absent (see [`dir`]).
    ///
    /// # Panics
    /// If the vectors are present but no fully verifiable set has that name: a test that
    /// looks a vector up by name never passes with nothing checked because a set was
    /// renamed or dropped.
    pub fn named(name: &str) -> Option<Vector> {
        let dir = dir()?;
        let found = load(&dir).into_iter().find(|v| v.set.name == name);
        Some(found.unwrap_or_else(|| {
            panic!(
                "no fully verifiable SNP vector set named {name:?} in {}",
                dir.join("manifest.json").display()
            )
        }))
    }

    /// Every fully verifiable set for which `keep` holds, or none when the vectors
    /// directory is absent (see [`dir`]). `what` describes the selection for the panic
    /// message, e.g. `"with a hex report"`.
    ///
    /// # Panics
    /// If the vectors are present but no set matches: a test over a selection of vectors
    /// never passes with nothing checked.
    pub fn matching(what: &str, keep: impl Fn(&Vector) -> bool) -> Vec<Vector> {
        let Some(dir) = dir() else { return Vec::new() };
        let found: Vec<Vector> = load(&dir).into_iter().filter(|v| keep(v)).collect();
        assert!(
            !found.is_empty(),
            "no fully verifiable SNP vector set {what} in {}",
            dir.join("manifest.json").display()
        );
        found
    }

    fn load(dir: &Path) -> Vec<Vector> {
        let manifest: Manifest =
            serde_json::from_slice(&read(dir, "manifest.json")).expect("manifest parses");
        let vectors: Vec<Vector> = manifest
            .sets
            .into_iter()
            .filter(|s| s.expect_fully_verified)
            .map(|set| {
                let report = report_bytes(dir, &set).expect("verifiable sets have reports");
                let vek = Certificate::all_from_pem_or_der(&read(dir, &set.vek))
                    .expect("vek parses")[0]
                    .clone();
                let mut chain = Vec::new();
                for rel in [&set.ask, &set.ark, &set.chain].into_iter().flatten() {
                    for c in
                        Certificate::all_from_pem_or_der(&read(dir, rel)).expect("chain parses")
                    {
                        // The Azure HCL set's "chain" is its VCEK file: skip the VEK itself.
                        if c != vek {
                            chain.push(c);
                        }
                    }
                }
                let valid_at = vek.not_before() + Duration::from_secs(24 * 3600);
                Vector {
                    set,
                    report,
                    vek,
                    chain,
                    valid_at,
                    root: dir.to_path_buf(),
                }
            })
            .collect();
        assert!(
            !vectors.is_empty(),
            "{} lists no fully verifiable set",
            dir.join("manifest.json").display()
        );
        vectors
    }
}
