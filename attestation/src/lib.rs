//! Veil attestation.
