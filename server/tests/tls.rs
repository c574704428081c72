//! The real listener on 127.0.0.1:0: TLS 1.3, and evidence bound to each connection's own
//! exporter and the certificate's key.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use veil_attestation::binding::{spki_sha256, Purpose, Transcript, EXPORTER_LABEL};
use veil_attestation::{Certificate, Check, Evidence, Expected};
use veil_model::EngineConfig;

async fn attest_on_new_connection(
    addr: std::net::SocketAddr,
    nonce: &[u8; 32],
) -> ([u8; 32], [u8; 32], Evidence) {
    // Any certificate, handshake signature checked: what a client does before it has a pin.
    let config = veil_client::pin::client_config(veil_client::pin::PinMode::Capture);
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    let (_, conn) = tls.get_ref();
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, None)
        .expect("exporter");
    let cert =
        Certificate::from_der(conn.peer_certificates().expect("certs")[0].as_ref()).expect("cert");
    let spki = spki_sha256(&cert.spki_der());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http");
    tokio::spawn(connection);
    use base64::Engine;
    let uri = format!(
        "/v1/attestation?nonce={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(nonce)
    );
    let req = hyper::Request::get(uri)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .expect("req");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (
        exporter,
        spki,
        serde_json::from_slice(&body).expect("evidence"),
    )
}

#[tokio::test]
async fn evidence_over_tls_binds_this_connection_and_no_other() {
    let f = common::fixture(EngineConfig::small());
    // The listener serves the fixture's TLS identity, whose key the state's evidence binds.
    let state = Arc::clone(&f.state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(veil_server::serve::serve(
        listener,
        Arc::clone(&f.tls.config),
        veil_server::app(state.clone()),
        veil_server::serve::Limits {
            drain: Duration::from_secs(2),
            ..veil_server::serve::Limits::default()
        },
        state.metrics(),
        async {
            let _ = stop_rx.await;
        },
    ));

    let nonce = [3u8; 32];
    let (exporter, spki, evidence) = attest_on_new_connection(addr, &nonce).await;
    assert_eq!(
        spki,
        state.spki_sha256(),
        "the certificate the client saw is the one the evidence binds"
    );
    let b = evidence.binding.clone().expect("binding");
    let transcript = |exporter| Transcript {
        purpose: Purpose::ClientSession,
        nonce: veil_attestation::Nonce::new(&nonce).expect("nonce"),
        spki_sha256: spki,
        exporter: Some(exporter),
        wrap_pk: b.wrap_pk,
        model_sha256: b.model_sha256,
        receipt_pk: b.receipt_pk,
    };
    let now = SystemTime::now();
    f.policy
        .appraise(&evidence, &Expected::new(&transcript(exporter), now))
        .expect("binds this connection");

    // The same evidence checked against another connection's exporter: a relay is caught.
    let (other_exporter, _, _) = attest_on_new_connection(addr, &nonce).await;
    assert_ne!(other_exporter, exporter);
    let r = f
        .policy
        .appraise(&evidence, &Expected::new(&transcript(other_exporter), now))
        .expect_err("relayed");
    assert!(r.failed(Check::ReportData), "{r}");

    let _ = stop_tx.send(());
    server.await.expect("join").expect("serve");
}
