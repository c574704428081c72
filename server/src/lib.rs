//! `veil-server`: serves a sealed model from inside a TEE. It starts locked, serves only
//! attestation and health until the model key arrives through attested key release, then
//! unseals the weights into memory and serves an OpenAI-compatible API, all over TLS 1.3
//! whose key and exporter the evidence binds.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod harden;
pub mod kbs;
pub mod lease;
pub mod metrics;
pub mod openai;
pub mod pull;
pub mod serve;
pub mod start;
pub mod state;
pub mod tls;
pub mod unlock;

pub use api::app;
pub use config::Config;
pub use start::run;
pub use state::{AppState, Lifecycle};
