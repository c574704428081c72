//! Veil attestation: SEV-SNP reports, AMD certificate chains, the mock platform, the
//! binding of evidence to a channel, and appraisal against a policy.
//!
//! What it does: parse the 1184-byte SNP report (versions 2, 3 and 5) from its raw
//! bytes, and Azure CVM evidence (HCL report, runtime claims, vTPM quote: [`azure`]); verify ARK → ASK/ASVK → VCEK/VLEK → report with built-in AMD roots (Milan,
//! Genoa, Turin) or with a mock root that the policy names; appraise every claim against
//! a [`Policy`] and the report data the verifier expects. What it does not do: network,
//! files, TLS. Those live in the server and the client.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::time::SystemTime;
//! use veil_attestation::binding::{Nonce, Purpose, Transcript};
//! use veil_attestation::{Attester, Expected, MockAttester, MockLaunch, MockPlatform, Policy};
//!
//! let now = SystemTime::now();
//! let platform = MockPlatform::generate(now)?;
//! let launch = MockLaunch::new(b"server binary", BTreeMap::new());
//! let policy = Policy::mock(platform.root(), &[launch.measurement()]);
//! let attester = MockAttester::new(platform, launch);
//!
//! // The verifier's transcript: its nonce, the channel it saw, what the server binds.
//! let transcript = Transcript {
//!     purpose: Purpose::ClientSession,
//!     nonce: Nonce::random::<32>(),
//!     spki_sha256: [1; 32],
//!     exporter: Some([2; 32]),
//!     wrap_pk: [3; 32],
//!     model_sha256: [4; 32],
//!     receipt_pk: [5; 32],
//! };
//! let evidence = attester.attest(&transcript)?;
//! let appraisal = policy.appraise(&evidence, &Expected::new(&transcript, now))?;
//! assert!(appraisal.is_mock());
//!
//! // The same evidence, expected for another nonce: rejected, and the check named.
//! let other = Transcript { nonce: Nonce::random::<32>(), ..transcript };
//! let rejection = policy.appraise(&evidence, &Expected::new(&other, now)).unwrap_err();
//! assert!(rejection.to_string().contains("report_data"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// Only veil-sealing's memory module needs `unsafe` (STYLE.md, Unsafe).
#![forbid(unsafe_code)]

pub mod appraisal;
pub mod attester;
pub mod azure;
pub mod binding;
pub mod broker;
pub mod certtable;
pub mod chain;
pub mod check;
pub mod evidence;
pub mod kds;
pub mod launch_config;
pub mod measure;
pub mod mock;
pub mod policy;
pub mod receipt;
pub mod release;
pub mod report;
pub mod revocation;
pub mod trustee;
pub mod tsm;
mod wire;

pub use appraisal::{
    Appraisal, Claims, Expected, NonceLengthError, Offline, OfflineAppraisal, Rejection,
};
pub use attester::{AttestError, Attester, MockAttester};
pub use azure::{AzureError, TrusteeEvidence, VtpmClaims};
pub use binding::{Binding, Nonce, Purpose, Transcript};
pub use certtable::{CertKind, CertTable, CertTableError};
pub use chain::Certificate;
pub use check::{Check, Outcome, Status};
pub use evidence::{Evidence, EvidenceError, TeeKind, VtpmEvidence};
pub use kds::{KdsError, VcekRequest};
pub use launch_config::{LaunchConfig, LaunchConfigError};
pub use mock::{MockLaunch, MockPlatform};
pub use policy::{Policy, PolicyError};
pub use receipt::{Receipt, ReceiptError, ReceiptSigner, SignedReceipt};
pub use release::{KeyRelease, Lease, ReleaseError, WrappingKey};
pub use report::{Product, Report, ReportError, SigningKey, Tcb};
pub use revocation::{Crl, CrlError};
pub use tsm::{ConfigFsTsm, TsmAttester, TsmError, TsmFs};
