//! TLS for the management API: a rustls (aws-lc-rs provider) acceptor over
//! a TCP listener, exposed as an [`axum::serve::Listener`].
//!
//! Handshakes run in their own tasks (bounded by a timeout), so a slow or
//! hostile client cannot stall the accept loop; only completed handshakes
//! reach axum. The accept task stops when the shutdown token is cancelled.
//! Configuration failures are typed ([`TlsError`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// Why the API's TLS configuration cannot be built (each names the file or
/// step, its source the cause).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file cannot be read.
    #[error("reading certificate {0}")]
    ReadCert(String, #[source] pem::Error),
    /// The certificate file is not PEM certificates.
    #[error("parsing certificate {0}")]
    ParseCert(String, #[source] pem::Error),
    /// The certificate file holds none.
    #[error("{0} holds no certificate")]
    NoCert(String),
    /// The key file cannot be read or parsed.
    #[error("reading private key {0}")]
    ReadKey(String, #[source] pem::Error),
    /// rustls refused its default protocol versions.
    #[error("TLS protocol versions")]
    Versions(#[source] rustls::Error),
    /// The key does not belong to the certificate.
    #[error("TLS certificate and key do not match")]
    KeyMismatch(#[source] rustls::Error),
}

/// Builds a TLS server configuration from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let name = cert.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::ReadCert(name.clone(), e))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::ParseCert(name.clone(), e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(name));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::ReadKey(key.display().to_string(), e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Versions)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::KeyMismatch)?;
    Ok(Arc::new(cfg))
}

/// A listener yielding TLS streams whose handshake has completed.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp`.
    pub fn new(
        tcp: TcpListener,
        cfg: Arc<rustls::ServerConfig>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(cfg);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    a = tcp.accept() => match a {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "API accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task ended (shutdown): never yield again; graceful
            // shutdown ends the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
