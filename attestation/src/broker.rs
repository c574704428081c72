//! The key broker's wire contract (the pull flow): what a locked server sends a key broker
//! and what the broker checks before it releases a model key. The broker (`veil broker`)
//! and the server (`veil-server --key-broker URL`) both build on these types, so the
//! layout lives in one place (documented in `docs/protocol.md`).
//!
//! ```text
//! server                                   broker
//!   POST /v1/challenge                 →
//!                                      ←   200 {"nonce": b64url(32 random bytes), "expires_in": 60}
//!   REPORT_DATA = SHA-512(T) with purpose 2 (broker pull), the broker's nonce,
//!   no TLS values (SPKI hash and exporter are zeros), the wrapping key, the model digest
//!   POST /v1/key {"nonce", "key_id", "evidence"} →
//!                                      ←   200 KeyRelease (HPKE to the bound wrapping key)
//!                                          or 4xx {"error": {"code", "message", "checks"?}}
//! ```
//!
//! The broker accepts each nonce once and only while it is fresh, recomputes REPORT_DATA
//! from that nonce and the binding the evidence states, and appraises the evidence against
//! its own policy (measurement, TCB, debug, the model digest, ...). The key it returns is
//! sealed to the wrapping key that the appraised evidence binds, with that REPORT_DATA as
//! associated data, so only the attested server can open it. The transport therefore need
//! not be trusted for secrecy: someone in the middle sees evidence (public anyway) and a
//! sealed key, and can only withhold the answer or send a wrong key, which the sealed
//! header refuses.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::appraisal::{Appraisal, Expected, Rejection};
use crate::binding::{Binding, Nonce, Purpose, Transcript};
use crate::check::Check;
use crate::evidence::Evidence;
use crate::policy::Policy;
use crate::release::KEY_ID_LEN;

/// `POST`: a fresh nonce.
pub const CHALLENGE_PATH: &str = "/v1/challenge";
/// `POST` a [`KeyRequest`]: a [`crate::KeyRelease`] back.
pub const KEY_PATH: &str = "/v1/key";
/// Bytes of the nonces a broker issues.
pub const NONCE_LEN: usize = 32;

/// The broker's answer to `POST /v1/challenge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// The nonce, base64url without padding.
    pub nonce: Nonce,
    /// Seconds the nonce stays valid.
    pub expires_in: u64,
}

/// What a server sends to `POST /v1/key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// The nonce from [`Challenge`], as issued.
    pub nonce: Nonce,
    /// The key id the sealed model names (32 hex digits).
    #[serde(with = "crate::wire::hex_bytes")]
    pub key_id: [u8; KEY_ID_LEN],
    /// Evidence whose REPORT_DATA is [`pull_report_data`] of that nonce and its binding.
    pub evidence: Evidence,
}

/// The transcript of a pull: purpose 2, the broker's nonce, no TLS values (the server
/// is the client of that connection, and the key is sealed to the wrapping key instead).
pub fn pull_transcript(nonce: Nonce, wrap_pk: [u8; 32], model_sha256: [u8; 32]) -> Transcript {
    Transcript {
        purpose: Purpose::BrokerPull,
        nonce,
        spki_sha256: [0; 32],
        exporter: None,
        wrap_pk,
        model_sha256,
        // A pull's evidence goes to the broker, which asks for no receipts.
        receipt_pk: [0; 32],
    }
}

/// The REPORT_DATA a pull's evidence must carry, recomputed from the nonce the broker
/// issued and the wrapping key and model digest that the evidence's binding states. Any
/// other purpose, or a bound exporter, gives other report data, so such evidence fails the
/// `report_data` check.
pub fn pull_report_data(nonce: Nonce, binding: &Binding) -> [u8; 64] {
    pull_transcript(nonce, binding.wrap_pk, binding.model_sha256).report_data()
}

/// Appraises a pull request's evidence against `policy`, for the nonce the broker issued:
/// the report data must be [`pull_report_data`] of that nonce and the evidence's binding,
/// and the evidence must bind a wrapping key (a key-release needs one). The appraisal
/// then carries that binding, so the key goes to the wrapping key it names.
///
/// # Errors
/// A [`Rejection`] naming every failed check (`report_data` when the evidence carries no
/// binding or another nonce).
pub fn appraise_pull(
    policy: &Policy,
    evidence: &Evidence,
    nonce: Nonce,
    now: SystemTime,
) -> Result<Appraisal, Rejection> {
    let Some(binding) = &evidence.binding else {
        return Err(Rejection::single(
            Check::ReportData,
            "the evidence states no binding (wrapping key, model digest)".to_owned(),
        ));
    };
    let transcript = pull_transcript(nonce, binding.wrap_pk, binding.model_sha256);
    policy.appraise(evidence, &Expected::new(&transcript, now))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{Attester, MockAttester, MockLaunch, MockPlatform, Policy, WrappingKey};

    struct Setup {
        attester: MockAttester,
        policy: Policy,
        wrapping: WrappingKey,
        now: SystemTime,
    }

    fn setup() -> Setup {
        let now = SystemTime::now();
        let platform = MockPlatform::generate(now).expect("platform");
        let launch = MockLaunch::server(b"server", "127.0.0.1:0", &[7; 32]);
        let policy = Policy::mock(platform.root(), &[launch.measurement()]);
        Setup {
            attester: MockAttester::new(platform, launch),
            policy,
            wrapping: WrappingKey::generate(),
            now,
        }
    }

    fn pull_evidence(s: &Setup, transcript: &Transcript) -> Evidence {
        s.attester.attest(transcript).expect("attests")
    }

    fn nonce(b: u8) -> Nonce {
        Nonce::new(&[b; NONCE_LEN]).expect("nonce length")
    }

    #[test]
    fn evidence_for_the_issued_nonce_is_accepted_and_a_released_key_opens() {
        let s = setup();
        let nonce = nonce(1);
        let evidence = pull_evidence(&s, &pull_transcript(nonce, s.wrapping.public(), [7; 32]));
        let appraisal = appraise_pull(&s.policy, &evidence, nonce, s.now).expect("accepted");
        let binding = evidence.binding.as_ref().expect("bound");
        let release = crate::KeyRelease::seal(&appraisal, &[1; 16], &[9; 32]).expect("sealed");
        let rd = pull_report_data(nonce, binding);
        assert_eq!(**s.wrapping.open(&release, &rd).expect("opens"), [9; 32]);
    }

    #[test]
    fn another_nonce_fails_report_data_only() {
        let s = setup();
        let evidence = pull_evidence(&s, &pull_transcript(nonce(1), s.wrapping.public(), [7; 32]));
        let rejection = appraise_pull(&s.policy, &evidence, nonce(2), s.now).unwrap_err();
        let failed: Vec<Check> = rejection.failures().map(|o| o.check).collect();
        assert_eq!(failed, vec![Check::ReportData]);
    }

    #[test]
    fn session_evidence_cannot_be_used_for_a_pull() {
        // Evidence a server gave a client (purpose 1, TLS values bound) for the same nonce.
        let s = setup();
        let nonce = nonce(1);
        let session = Transcript {
            purpose: Purpose::ClientSession,
            nonce,
            spki_sha256: [3; 32],
            exporter: Some([4; 32]),
            wrap_pk: s.wrapping.public(),
            model_sha256: [7; 32],
            receipt_pk: [0; 32],
        };
        let evidence = pull_evidence(&s, &session);
        let rejection = appraise_pull(&s.policy, &evidence, nonce, s.now).unwrap_err();
        assert!(rejection.failed(Check::ReportData), "{rejection}");
    }

    #[test]
    fn a_swapped_wrapping_key_fails_report_data() {
        let s = setup();
        let nonce = nonce(1);
        let mut evidence = pull_evidence(&s, &pull_transcript(nonce, s.wrapping.public(), [7; 32]));
        // Someone in the middle substitutes its own wrapping key in the stated binding.
        if let Some(b) = evidence.binding.as_mut() {
            b.wrap_pk = WrappingKey::generate().public();
        }
        let rejection = appraise_pull(&s.policy, &evidence, nonce, s.now).unwrap_err();
        assert!(rejection.failed(Check::ReportData), "{rejection}");
    }

    #[test]
    fn evidence_without_a_binding_is_refused() {
        let s = setup();
        let nonce = nonce(1);
        let mut evidence = pull_evidence(&s, &pull_transcript(nonce, s.wrapping.public(), [7; 32]));
        evidence.binding = None;
        let rejection = appraise_pull(&s.policy, &evidence, nonce, s.now).unwrap_err();
        assert!(rejection.failed(Check::ReportData), "{rejection}");
    }
}
