//! The Veil client library: the commands of `veil`, and what they share (reading files,
//! printing verdicts).
//!
//! Exit codes: 0 success, 1 error, 2 usage, 3 evidence rejected.

// Only veil-sealing's memory module needs `unsafe` (STYLE.md, Unsafe).
#![forbid(unsafe_code)]

pub mod api_key;
pub mod broker;
pub mod demo;
pub mod files;
pub mod http;
pub mod kds;
pub mod kds_cmd;
pub mod measure_cmd;
pub mod mock_cmd;
pub mod output;
pub mod pin;
pub mod policy_cmd;
pub mod proxy;
pub mod receipt;
pub mod receipt_cmd;
pub mod remote;
pub mod remote_cmd;
pub mod report_cmd;
pub mod seal;

/// How a command failed: rejected evidence (exit 3) or any other error (exit 1).
#[derive(Debug)]
pub enum Failure {
    /// The evidence was appraised and rejected; the verdict has been printed.
    Rejected,
    /// Anything else.
    Error(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Error(e.into())
    }
}

/// Result of a command.
pub type CmdResult = Result<(), Failure>;
