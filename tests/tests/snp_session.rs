//! The server's SEV-SNP start-up path (`--tee snp`) with an in-memory configfs-tsm in
//! place of the kernel's: the same attester the server uses on an SNP guest (configfs
//! protocol, certificate table, REPORT_DATA check), serving a whole verify → provision →
//! ask session through the real client code. The fake signs with a mock platform's keys,
//! so the evidence is labelled MOCK and appraised under that platform's root; what only
//! an SNP guest can confirm is listed in `docs/snp-attester.md`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use veil_attestation::tsm::fake::{FakeMode, FakeTsm};
use veil_attestation::{
    ConfigFsTsm, LaunchConfig, MockLaunch, MockPlatform, Policy, TeeKind, TsmFs,
};
use veil_client::kds::Collateral;
use veil_client::remote::{attest, Target};
use veil_client::remote_cmd::{release_key, stream_chat};
use veil_sealing::ModelKey;
use veil_server::config::{Config, Tee};
use veil_tests::harness::{Fixture, LISTEN};
use zeroize::Zeroizing;

/// How long the whole session may take before the test calls it a hang.
const SESSION: Duration = Duration::from_secs(120);

fn platform(fixture: &Fixture) -> MockPlatform {
    MockPlatform::from_files(|name| {
        std::fs::read(fixture.platform.join(name))
            .ok()
            .map(Zeroizing::new)
    })
    .expect("the fixture's mock platform loads")
}

fn config(fixture: &Fixture) -> Config {
    Config {
        model: Some(fixture.model.clone()),
        tee: Some(Tee::Snp),
        listen: Some(LISTEN.to_owned()),
        parallel: Some(1),
        context: Some(256),
        ..Config::default()
    }
}

/// Starts the server on `tsm`; returns its address and a sender that stops it.
async fn start(
    fixture: &Fixture,
    tsm: Box<dyn TsmFs>,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    start_with(config(fixture), tsm).await
}

/// [`start`] with `config`.
async fn start_with(
    config: Config,
    tsm: Box<dyn TsmFs>,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let result = veil_server::start::run_with(
            config,
            tsm,
            async {
                let _ = stopped.await;
            },
            move |addr| {
                let _ = tx.send(addr);
            },
        )
        .await;
        if let Err(e) = result {
            eprintln!("server: {e:#}");
        }
    });
    let addr = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("the server starts within 30 s")
        .expect("the server is listening");
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snp_start_up_path_on_configfs_tsm_serves_verify_provision_ask() {
    let fixture = Fixture::new();
    let launch = MockLaunch::new(b"an SNP guest image", Default::default());
    let fake = FakeTsm::new(platform(&fixture), launch.clone());
    let (addr, stop) = start(&fixture, Box::new(fake)).await;
    let target = Target::parse(&format!("https://{addr}")).expect("a URL");

    tokio::time::timeout(SESSION, async {
        // The server says which TEE and interface it attests with.
        let mut probe = veil_client::remote::danger::connect(
            &target,
            veil_client::remote::danger::PinMode::Capture,
        )
        .await
        .expect("a TLS connection");
        let (_, body) = probe.fetch("GET", "/ready", None).await.expect("/ready");
        let ready: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(ready["state"], "locked", "{ready}");
        assert_eq!(ready["tee"], "snp", "{ready}");
        assert_eq!(ready["interface"], "configfs-tsm", "{ready}");

        // Verify: the evidence came through the configfs protocol, its certificates from
        // the certificate table; the policy names the fake's root and launch.
        let root = platform(&fixture).root().clone();
        let policy = Policy::mock(&root, &[launch.measurement()]);
        let mut verified = attest(&target, &policy, &Collateral::none())
            .await
            .expect("attestation answers")
            .unwrap_or_else(|r| panic!("rejected: {}", r.rejection));
        assert_eq!(verified.evidence().tee, TeeKind::Mock);
        assert_eq!(verified.evidence().certificates.len(), 3);

        // Provision on the attested connection, then ask on it.
        let key = ModelKey::read_key_file(&fixture.key).expect("the key file");
        release_key(&mut verified, key, None, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("provisioning failed: {e:?}"));
        let mut trusted = verified.into_trusted();
        let request = json!({
            "messages": [{ "role": "user", "content": "Hello" }],
            "max_tokens": 8,
            "temperature": 0.0,
            "stream": true,
        });
        let mut out = Vec::new();
        let answer = stream_chat(&mut trusted, &Default::default(), &request, &mut out)
            .await
            .expect("an answer");
        assert!(!answer.is_empty(), "an empty answer");
        assert_eq!(String::from_utf8_lossy(&out), answer);

        // Another policy's launch is refused: the measurement came from the fake's launch.
        let other = Policy::mock(&root, &[[7u8; 48]]);
        let rejected = attest(&target, &other, &Collateral::none())
            .await
            .expect("attestation answers");
        let rejection = rejected
            .err()
            .expect("another launch is rejected")
            .rejection;
        assert!(
            rejection.failed(veil_attestation::Check::Measurement),
            "{rejection}"
        );
    })
    .await
    .expect("the session ends within its bound");
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configfs_tsm_that_fails_to_report_refuses_attestation_and_names_no_secret() {
    let fixture = Fixture::new();
    let launch = MockLaunch::new(b"an SNP guest image", Default::default());
    let fake = FakeTsm::new(platform(&fixture), launch).with_mode(FakeMode::RacingWriter);
    let (addr, stop) = start(&fixture, Box::new(fake)).await;
    let target = Target::parse(&format!("https://{addr}")).expect("a URL");
    let root = platform(&fixture).root().clone();
    let policy = Policy::mock(&root, &[[0u8; 48]]);
    let err = tokio::time::timeout(SESSION, attest(&target, &policy, &Collateral::none()))
        .await
        .expect("bounded")
        .err()
        .expect("no evidence from a racing configfs entry");
    let text = format!("{err:#}");
    assert!(text.contains("/v1/attestation"), "{text}");
    assert!(text.contains("500") || text.contains("503"), "{text}");
    let _ = stop.send(());
}

#[tokio::test]
async fn snp_without_configfs_tsm_or_the_device_fails_at_start_naming_both() {
    if std::path::Path::new("/dev/sev-guest").exists() {
        return; // an SNP guest: the ioctl is there
    }
    let fixture = Fixture::new();
    let err = veil_server::start::run_with(
        config(&fixture),
        Box::new(ConfigFsTsm::new("/nonexistent/tsm/report")),
        std::future::pending(),
        |_| panic!("it must not start"),
    )
    .await
    .expect_err("no SNP interface");
    let text = format!("{err:#}");
    assert!(text.contains("configfs-tsm"), "{text}");
    assert!(
        text.contains("/dev/sev-guest") || text.contains("--features sev"),
        "{text}"
    );
}

#[tokio::test]
async fn az_snp_vtpm_without_a_tpm_fails_at_start_naming_the_device() {
    if std::path::Path::new("/dev/tpmrm0").exists() {
        return; // a machine with a TPM: the attester would start
    }
    let fixture = Fixture::new();
    let config = Config {
        tee: Some(Tee::AzSnpVtpm),
        ..config(&fixture)
    };
    let err = veil_server::start::run_with(
        config,
        Box::new(ConfigFsTsm::new("/nonexistent/tsm/report")),
        std::future::pending(),
        |_| panic!("it must not start"),
    )
    .await
    .expect_err("no vTPM");
    let text = format!("{err:#}");
    assert!(text.contains("/dev/tpmrm0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_configuration_is_served_only_when_host_data_is_its_digest() {
    let fixture = Fixture::new();
    let bound = LaunchConfig::server("snp", LISTEN, &fixture.model_sha256, None).expect("valid");
    let file = fixture.path("launch.conf");
    std::fs::write(&file, bound.to_text()).expect("written");
    // The same TEE kind and address by flag as in the file: accepted.
    let with_file = |path: &std::path::Path| Config {
        launch_config: Some(path.to_owned()),
        ..config(&fixture)
    };
    let image = b"an SNP guest image";

    // Launched for this configuration: HOST_DATA is its digest, and the server serves.
    let fake = FakeTsm::new(
        platform(&fixture),
        MockLaunch::new(image, bound.entries().clone()),
    );
    let (addr, stop) = start_with(with_file(&file), Box::new(fake)).await;
    let target = Target::parse(&format!("https://{addr}")).expect("a URL");
    let mut probe = veil_client::remote::danger::connect(
        &target,
        veil_client::remote::danger::PinMode::Capture,
    )
    .await
    .expect("a TLS connection");
    let (_, body) = probe.fetch("GET", "/ready", None).await.expect("/ready");
    let ready: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(ready["state"], "locked", "{ready}");
    let _ = stop.send(());

    let refused = |config: Config, launch: &LaunchConfig| {
        let fake = FakeTsm::new(
            platform(&fixture),
            MockLaunch::new(image, launch.entries().clone()),
        );
        async move {
            let err = veil_server::start::run_with(
                config,
                Box::new(fake),
                std::future::pending(),
                |_| panic!("it must not start"),
            )
            .await
            .expect_err("refused at start");
            format!("{err:#}")
        }
    };
    // Launched for another configuration (another address) than the one it was given:
    // refused, both digests named.
    let other =
        LaunchConfig::server("snp", "0.0.0.0:8443", &fixture.model_sha256, None).expect("valid");
    let text = refused(with_file(&file), &other).await;
    assert!(
        text.contains("HOST_DATA")
            && text.contains(&hex::encode(other.host_data()))
            && text.contains(&hex::encode(bound.host_data())),
        "{text}"
    );
    // A flag that contradicts the file is refused before anything else.
    let text = refused(
        Config {
            key_broker: Some("http://127.0.0.1:9".into()),
            ..with_file(&file)
        },
        &bound,
    )
    .await;
    assert!(
        text.contains("--key-broker http://127.0.0.1:9 contradicts"),
        "{text}"
    );
    // A configuration for another model than the sealed file's is refused.
    let elsewhere = LaunchConfig::server("snp", LISTEN, &[9; 32], None).expect("valid");
    let other_file = fixture.path("other-model.conf");
    std::fs::write(&other_file, elsewhere.to_text()).expect("written");
    let text = refused(with_file(&other_file), &elsewhere).await;
    assert!(text.contains("names model 0909"), "{text}");
}
