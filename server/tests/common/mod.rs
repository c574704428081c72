//! Shared set-up: a sealed tiny model, a mock platform, and the server state.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::SystemTime;

use veil_attestation::{MockAttester, MockLaunch, MockPlatform, Policy, WrappingKey};
use veil_model::EngineConfig;
use veil_sealing::{seal, ModelKey, SealOptions};
use veil_server::state::{Metrics, RateLimit};
use veil_server::{AppState, Lifecycle};

pub struct Fixture {
    pub state: Arc<AppState>,
    pub key: ModelKey,
    pub policy: Policy,
    pub launch: MockLaunch,
    pub _dir: tempfile::TempDir,
}

pub fn fixture(engine: EngineConfig) -> Fixture {
    fixture_with_model(engine, &veil_model::tiny::gguf(3))
}

/// A locked server state for this engine configuration and model.
pub fn fixture_with_model(engine: EngineConfig, gguf: &[u8]) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ModelKey::generate();
    let path = dir.path().join("tiny.veil");
    let mut out = std::fs::File::create(&path).expect("create");
    let header = seal(
        &mut Cursor::new(gguf),
        &mut out,
        &key,
        &SealOptions::default(),
        &mut |_, _| {},
    )
    .expect("seal");
    let platform = MockPlatform::generate(SystemTime::now()).expect("platform");
    let launch = MockLaunch::server(
        b"veil-server test build",
        "127.0.0.1:0",
        &header.model_sha256,
    );
    let policy = Policy::mock(platform.root(), &[launch.measurement()]);
    let tls = veil_server::tls::generate(vec!["localhost".into()]).expect("tls");
    let state = Arc::new(AppState {
        lifecycle: RwLock::new(Lifecycle::Locked),
        attester: Box::new(MockAttester::new(platform, launch.clone())),
        spki_sha256: tls.spki_sha256,
        wrapping: WrappingKey::generate(),
        header,
        sealed_path: path,
        issued: Mutex::new(VecDeque::new()),
        provisioned: Mutex::new(None),
        key_broker: Mutex::new(None),
        engine: OnceLock::new(),
        engine_config: engine,
        metrics: Metrics::default(),
        attest_limit: RateLimit::new(1000.0, 1000.0),
        max_body: 64 * 1024,
    });
    Fixture {
        state,
        key,
        policy,
        launch,
        _dir: dir,
    }
}
