//! Veil attestation: SEV-SNP reports, AMD certificate chains, the mock platform, the
//! binding of evidence to a channel, and appraisal against a policy.
//!
//! What it does: parse the 1184-byte SNP report (versions 2, 3 and 5) from its raw
//! bytes; verify ARK → ASK/ASVK → VCEK/VLEK → report with built-in AMD roots (Milan,
//! Genoa, Turin) or with a mock root that the policy names; appraise every claim against
//! a [`Policy`] and the report data the verifier expects. What it does not do: network,
//! files, TLS. Those live in the server and the client.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::time::SystemTime;
//! use veil_attestation::{Expected, MockLaunch, MockPlatform, Policy};
//!
//! let now = SystemTime::now();
//! let platform = MockPlatform::generate(now)?;
//! let launch = MockLaunch::new(b"server binary", BTreeMap::new());
//! let evidence = platform.attest(&launch, [42; 64]);
//!
//! let policy = Policy::mock(&platform.root().fingerprint(), &[launch.measurement()]);
//! let appraisal = policy.appraise(&evidence, &Expected::new([42; 64], now))?;
//! assert!(appraisal.is_mock());
//!
//! // The same evidence, expected with other report data: rejected, and the check named.
//! let rejection = policy.appraise(&evidence, &Expected::new([0; 64], now)).unwrap_err();
//! assert!(rejection.to_string().contains("report_data"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod attester;
pub mod binding;
pub mod broker;
pub mod chain;
pub mod check;
pub mod evidence;
pub mod measure;
pub mod mock;
pub mod policy;
pub mod release;
pub mod report;
pub mod revocation;

pub use attester::{AttestError, Attester, MockAttester};
pub use binding::{Binding, Purpose, Transcript};
pub use chain::Certificate;
pub use check::{Check, Outcome, Status};
pub use evidence::{Evidence, EvidenceError, TeeKind};
pub use mock::{MockLaunch, MockPlatform};
pub use policy::{Appraisal, Expected, Policy, PolicyError, Rejection};
pub use release::{KeyRelease, ReleaseError, WrappingKey};
pub use report::{Product, Report, ReportError, SigningKey, Tcb};
pub use revocation::{Crl, CrlError};
