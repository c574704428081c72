//! Shared set-up: a sealed tiny model, a mock platform, and the server state.
#![allow(dead_code, unreachable_pub)]

use std::io::Cursor;
use std::sync::Arc;
use std::time::SystemTime;

use veil_attestation::{MockAttester, MockLaunch, MockPlatform, Policy};
use veil_model::EngineConfig;
use veil_sealing::{seal, ModelKey, SealOptions};
use veil_server::state::AppStateBuilder;
use veil_server::tls::TlsIdentity;
use veil_server::AppState;

pub struct Fixture {
    pub state: Arc<AppState>,
    pub key: ModelKey,
    pub policy: Policy,
    pub launch: MockLaunch,
    /// The TLS identity whose key the state's evidence binds.
    pub tls: TlsIdentity,
    pub _dir: tempfile::TempDir,
}

pub fn fixture(engine: EngineConfig) -> Fixture {
    fixture_with_model(engine, &veil_model::tiny::gguf(3))
}

/// A locked server state for this engine configuration and model.
pub fn fixture_with_model(engine: EngineConfig, gguf: &[u8]) -> Fixture {
    fixture_custom(engine, gguf, SealOptions::default(), |b| b)
}

/// The same, sealed with `options` and built through `custom`.
pub fn fixture_custom(
    engine: EngineConfig,
    gguf: &[u8],
    options: SealOptions,
    custom: impl FnOnce(AppStateBuilder) -> AppStateBuilder,
) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ModelKey::generate();
    let path = dir.path().join("tiny.veil");
    let mut out = std::fs::File::create(&path).expect("create");
    let header = seal(
        &mut Cursor::new(gguf),
        &mut out,
        &key,
        &options,
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
    let state = Arc::new(
        custom(
            AppState::builder(
                Box::new(MockAttester::new(platform, launch.clone())),
                tls.spki_sha256,
                header,
                veil_server::state::SealedFile::open(path).expect("the sealed model opens"),
            )
            .engine_config(engine)
            .attest_limit(1000.0, 1000.0)
            .max_body(64 * 1024),
        )
        .build(),
    );
    Fixture {
        state,
        key,
        policy,
        launch,
        tls,
        _dir: dir,
    }
}
