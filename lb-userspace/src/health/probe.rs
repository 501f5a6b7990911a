//! One probe of one backend. The caller applies the timeout; every failure is a short reason
//! that ends up in the transition log ("3 consecutive tcp probe failures (last: connection
//! refused)").

use std::net::SocketAddr;

use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream, UdpSocket},
};

use crate::config::{HealthCheck, ProbeKind};

/// Largest HTTP answer read (status line, headers and the start of the body).
const HTTP_READ_MAX: u64 = 64 * 1024;

/// Why a probe failed, in a few words for the transition log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProbeFailure(pub String);

impl From<String> for ProbeFailure {
    fn from(s: String) -> Self {
        ProbeFailure(s)
    }
}

impl From<&str> for ProbeFailure {
    fn from(s: &str) -> Self {
        ProbeFailure(s.to_string())
    }
}

fn io_reason(e: std::io::Error) -> ProbeFailure {
    ProbeFailure(match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    })
}

/// One probe of `addr`; with `mark`, through the data path (the socket's packets carry the
/// mark `xlb_probe` encapsulates for the backend).
pub async fn probe(
    addr: SocketAddr,
    mark: Option<u32>,
    c: &HealthCheck,
) -> Result<(), ProbeFailure> {
    match c.kind {
        ProbeKind::None => Ok(()),
        ProbeKind::Tcp => connect(addr, mark).await.map(|_| ()),
        ProbeKind::Http => {
            let s = connect(addr, mark).await?;
            http(s, addr, c).await
        }
        ProbeKind::Https => {
            let s = connect(addr, mark).await?;
            let name = match &c.host {
                Some(h) => ServerName::try_from(h.clone())
                    .map_err(|e| ProbeFailure(format!("server name {h:?}: {e}")))?,
                None => ServerName::IpAddress(addr.ip().into()),
            };
            let tls = tls::connector()
                .connect(name, s)
                .await
                .map_err(|e| ProbeFailure(format!("TLS handshake: {e}")))?;
            http(tls, addr, c).await
        }
        ProbeKind::Udp => udp(addr, c).await,
    }
}

async fn connect(addr: SocketAddr, mark: Option<u32>) -> Result<TcpStream, ProbeFailure> {
    let Some(mark) = mark else {
        return TcpStream::connect(addr).await.map_err(io_reason);
    };
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(io_reason)?;
    set_mark(&s, mark).map_err(|e| ProbeFailure(format!("SO_MARK: {e}")))?;
    s.connect(addr).await.map_err(|e| {
        if e.raw_os_error() == Some(libc::ENETUNREACH) {
            // The marked packets leave through the route to the VIP; there is none.
            ProbeFailure(format!("no route to the VIP {} from this host", addr.ip()))
        } else {
            io_reason(e)
        }
    })
}

fn set_mark(s: &TcpSocket, mark: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid socket descriptor and a 4-byte option value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw const mark).cast(),
            size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

async fn http<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    addr: SocketAddr,
    c: &HealthCheck,
) -> Result<(), ProbeFailure> {
    let host = c.host.clone().unwrap_or_else(|| match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    });
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: xlb-health/{}\r\nConnection: close\r\n\r\n",
        c.path.as_deref().unwrap_or("/"),
        env!("CARGO_PKG_VERSION")
    );
    s.write_all(req.as_bytes()).await.map_err(io_reason)?;
    let mut buf = Vec::new();
    // A TLS peer that closes without close_notify still delivered its answer.
    if let Err(e) = (&mut s).take(HTTP_READ_MAX).read_to_end(&mut buf).await
        && buf.is_empty()
    {
        return Err(io_reason(e));
    }
    let text = String::from_utf8_lossy(&buf);
    let status: u16 = text
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| ProbeFailure::from("no HTTP status line in the answer"))?;
    let (lo, hi) = c.status_range().map_err(|e| ProbeFailure(e.to_string()))?;
    if !(lo..=hi).contains(&status) {
        return Err(ProbeFailure(format!("HTTP status {status}")));
    }
    if let Some(want) = &c.body {
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        if !body.contains(want.as_str()) {
            return Err(ProbeFailure(format!("body lacks {want:?}")));
        }
    }
    Ok(())
}

async fn udp(addr: SocketAddr, c: &HealthCheck) -> Result<(), ProbeFailure> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(bind).await.map_err(io_reason)?;
    s.connect(addr).await.map_err(io_reason)?;
    s.send(c.payload.as_deref().unwrap_or("").as_bytes())
        .await
        .map_err(io_reason)?;
    let mut buf = [0u8; 1500];
    // A closed port answers with ICMP port unreachable, seen here as a refused receive.
    let n = s.recv(&mut buf).await.map_err(io_reason)?;
    if let Some(want) = &c.expect
        && !String::from_utf8_lossy(&buf[..n]).contains(want.as_str())
    {
        return Err(ProbeFailure(format!("answer lacks {want:?}")));
    }
    Ok(())
}

mod tls {
    //! A TLS client that checks the handshake's signatures but not the certificate chain or
    //! name: health checks address backends by IP, and backend certificates are often
    //! self-signed. The probe answers "does the service speak TLS and HTTP", not "is it who
    //! it claims to be".

    use std::sync::{Arc, OnceLock};

    use rustls::{
        ClientConfig, DigitallySignedStruct, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    };
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio_rustls::TlsConnector;

    #[derive(Debug)]
    struct AnyCertificate(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    pub fn connector() -> TlsConnector {
        static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
        let cfg = CONFIG.get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cfg = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Arc::new(cfg)
        });
        TlsConnector::from(cfg.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StartState;

    fn check(kind: ProbeKind) -> HealthCheck {
        HealthCheck {
            kind,
            port: None,
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 2,
            fall: 3,
            start: StartState::Up,
            path: Some("/healthz".into()),
            host: None,
            status: None,
            body: None,
            payload: Some("ping".into()),
            expect: None,
            via: Default::default(),
        }
    }

    /// One-shot HTTP server on loopback answering `answer` to the first request; returns the
    /// request it saw.
    async fn http_once(answer: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let h = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.expect("accept");
            let mut buf = vec![0u8; 1024];
            let n = c.read(&mut buf).await.expect("read");
            c.write_all(answer.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (addr, h)
    }

    #[tokio::test]
    async fn http_checks_status_and_body() {
        let mut c = check(ProbeKind::Http);
        let (addr, h) = http_once("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nall ok\n").await;
        c.body = Some("all ok".into());
        assert_eq!(probe(addr, None, &c).await, Ok(()));
        let req = h.await.expect("server");
        assert!(
            req.starts_with("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"),
            "{req}"
        );

        let (addr, _h) = http_once("HTTP/1.1 200 OK\r\n\r\ndegraded").await;
        assert_eq!(
            probe(addr, None, &c).await,
            Err("body lacks \"all ok\"".into())
        );

        c.body = None;
        let (addr, _h) = http_once("HTTP/1.0 503 Service Unavailable\r\n\r\n").await;
        assert_eq!(probe(addr, None, &c).await, Err("HTTP status 503".into()));
        c.status = Some("500-503".into());
        let (addr, _h) = http_once("HTTP/1.0 503 Service Unavailable\r\n\r\n").await;
        assert_eq!(probe(addr, None, &c).await, Ok(()));

        let (addr, _h) = http_once("SSH-2.0-OpenSSH\r\n").await;
        assert_eq!(
            probe(addr, None, &c).await,
            Err("no HTTP status line in the answer".into())
        );
    }

    #[tokio::test]
    async fn https_speaks_tls_to_self_signed_backends() {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
        let certs = vec![
            CertificateDer::from_pem_slice(include_bytes!("testdata/cert.pem")).expect("cert"),
        ];
        let key = PrivateKeyDer::from_pem_slice(include_bytes!("testdata/key.pem")).expect("key");
        let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 200 OK\r\n\r\nsecure ok",
                "HTTP/1.1 500 Oops\r\n\r\n",
            ] {
                let (c, _) = l.accept().await.expect("accept");
                let mut t = acceptor.accept(c).await.expect("handshake");
                let mut buf = vec![0u8; 1024];
                let _ = t.read(&mut buf).await.expect("request");
                t.write_all(answer.as_bytes()).await.expect("answer");
                t.shutdown().await.expect("close");
            }
        });
        let mut c = check(ProbeKind::Https);
        c.body = Some("secure ok".into());
        assert_eq!(probe(addr, None, &c).await, Ok(()));
        c.body = None;
        assert_eq!(probe(addr, None, &c).await, Err("HTTP status 500".into()));
        // Plain HTTP spoken to a TLS client fails the handshake.
        let (plain, _h) = http_once("HTTP/1.1 200 OK\r\n\r\n").await;
        let e = probe(plain, None, &c).await.expect_err("not TLS");
        assert!(e.0.starts_with("TLS handshake"), "{e}");
    }

    #[tokio::test]
    async fn tcp_and_udp_report_refusals() {
        // A port nobody listens on: bind, learn it, close.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        assert_eq!(
            probe(addr, None, &check(ProbeKind::Tcp)).await,
            Err("connection refused".into())
        );
        let u = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let uaddr = u.local_addr().expect("addr");
        drop(u);
        assert_eq!(
            probe(uaddr, None, &check(ProbeKind::Udp)).await,
            Err("connection refused".into())
        );
        let echo = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("udp");
        let eaddr = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut b = [0u8; 64];
            let (n, p) = echo.recv_from(&mut b).await.expect("recv");
            echo.send_to(&b[..n], p).await.expect("send");
        });
        let mut c = check(ProbeKind::Udp);
        c.expect = Some("ping".into());
        assert_eq!(probe(eaddr, None, &c).await, Ok(()));
    }
}
