//! Raw clients for the tests that misbehave on purpose: TCP and TLS connections from a
//! chosen loopback address (127.0.0.2 is another peer to the server), TLS that accepts any
//! certificate (these clients attack, they do not verify), and HTTP/1.1 written and read
//! by hand, so that a test controls every byte and every pause.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;

use crate::harness::Server;

/// The owner's and users' address.
pub const HOME: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The attacker's address: another peer on the same loopback interface.
pub const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// The longest any single step below may take before the test calls it a hang.
pub const STEP: Duration = Duration::from_secs(30);

/// Accepts any certificate: these clients attack, they do not verify.
#[derive(Debug)]
pub struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A runtime with two workers for a test's raw clients.
///
/// # Panics
/// If it cannot be built.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The server's address.
pub fn addr(server: &Server) -> SocketAddr {
    server
        .url()
        .trim_start_matches("https://")
        .parse()
        .expect("https://IP:PORT")
}

/// A TCP connection to `to` from `from` (any port).
pub async fn tcp_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .unwrap_or_else(|e| panic!("cannot bind {from} (a loopback address): {e}"));
    tokio::time::timeout(STEP, socket.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// A TLS connection to `to` from `from`, accepting any certificate.
///
/// # Errors
/// If the handshake fails (e.g. the server closed the connection at once).
pub async fn tls_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(from, to).await;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    tokio::time::timeout(
        STEP,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// An HTTP answer: status, lower-case header lines, body.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The header lines, lower-case.
    pub headers: String,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (a string if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&self.body).into_owned())
        })
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(str::trim)
        })
    }
}

/// Reads one answer with a `Content-Length` body.
pub async fn read_answer(io: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Answer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    let headers = head.lines().skip(1).collect::<Vec<_>>().join("\n");
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Sends one request on a kept-alive connection and reads its answer.
pub async fn request(
    io: &mut (impl AsyncRead + AsyncWrite + Unpin),
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<Answer> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n");
    if let Some(body) = body {
        req.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    io.write_all(req.as_bytes()).await?;
    if let Some(body) = body {
        io.write_all(body).await?;
    }
    io.flush().await?;
    read_answer(io).await
}

/// Whether the peer closes `io` (EOF or an error) within `within`.
pub async fn closed_within(io: &mut (impl AsyncRead + Unpin), within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, io.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// One metric sample's value (0 when absent).
pub fn metric(server: &Server, sample: &str) -> u64 {
    server
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix(sample))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
