//! The HTTP server: accepting connections, TLS, per-connection limits and draining.
//!
//! Each connection is HTTP/1.1 served by hyper with a header read timeout (a client
//! that trickles its headers is cut off), behind an optional rustls handshake (bounded
//! by the same timeout). Plaintext connections send pack cache bytes with `sendfile`
//! (see [`crate::zero_copy`]). Connections over the total or per-client limit are refused
//! at accept (`gitgate_storage_client::daemon::connections`). On shutdown the listener closes at once, connections finish
//! their in-flight requests, and whatever is left after the grace period is closed.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::git::request::PeerAddr;
use crate::progress::ConnProgress;
use crate::zero_copy::{SendQueue, ZeroCopyStream};
use gitgate_storage_client::daemon::connections::{refuse, ConnectionLimits};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{key}: {path}: {reason}")]
    Pem {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the certificate and key.
    #[error("listen.tls_cert / listen.tls_key: {0}")]
    Config(#[from] rustls::Error),
}

/// Build a TLS acceptor from PEM files (a certificate chain and its private key).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            key: "listen.tls_cert",
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            key: "listen.tls_cert",
            path: cert.display().to_string(),
            reason: "no certificate found".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        key: "listen.tls_key",
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Bytes of a response the kernel may hold unsent (`TCP_NOTSENT_LOWAT`). The socket
/// turns writable once less than half of it is left, so a reading client shows
/// progress every 1 MiB it takes. Smaller marks cost CPU on every hit: at 128 KiB, 20
/// sequential `git clone --depth 1` hits of a 44.5 MiB pack took 0.38 s of gateway CPU,
/// at 2 MiB 0.17–0.19 s (a `sendfile` and a wake-up per mark's worth taken).
const NOTSENT_LOWAT: u32 = 2 * 1024 * 1024;

/// Connection settings.
#[derive(Clone)]
pub struct ServerSettings {
    /// TLS, if configured; then plain HTTP is not served.
    pub tls: Option<TlsAcceptor>,
    /// Time allowed for the TLS handshake and the request headers.
    pub header_timeout: Duration,
    /// Time in-flight requests get after shutdown starts.
    pub shutdown_grace: Duration,
    /// A response whose client takes no bytes for this long is closed.
    pub send_timeout: Duration,
    /// Open connections, total and per client address.
    pub connections: Arc<ConnectionLimits>,
    /// `gitgate_connections_refused_total{reason}`.
    pub refused: prometheus::IntCounterVec,
}

/// Serve `router` on `listener` until `shutdown`, then drain (see the module docs).
pub async fn run(
    listener: TcpListener,
    router: Router,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        // Queue body frames instead of copying them into one buffer: cheaper for large
        // chunks, and what zero-copy responses rely on (`zero_copy`, Z3).
        .writev(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let admitted = match settings.connections.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(reason) => {
                settings.refused.with_label_values(&[reason.label()]).inc();
                tracing::debug!(%peer, reason = reason.label(), "refusing a connection over the limit");
                if settings.tls.is_none() {
                    // Say why, then drain what the client sent (closing with unread
                    // input would reset the connection before it reads the answer).
                    // Best effort, bounded: the client may already be gone.
                    tokio::spawn(tokio::time::timeout(Duration::from_secs(1), refuse(tcp)));
                }
                continue;
            }
        };
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "TCP_NODELAY not set");
        }
        // The kernel holds at most this much of a response not yet sent: a write
        // happens, and counts as progress, each time a reading client takes half of
        // it, so `send_timeout` judges the client by that instead of by a send buffer
        // that autotuning grows to several megabytes (drained by a slow reader in
        // longer than the timeout, with no write meanwhile).
        if let Err(err) = socket2::SockRef::from(&tcp).set_tcp_notsent_lowat(NOTSENT_LOWAT) {
            tracing::debug!(error = %err, "TCP_NOTSENT_LOWAT not set");
        }
        // Every request on this connection reports its response progress here.
        let progress = Arc::new(ConnProgress::default());
        let tagged = progress.clone();
        // Plaintext connections send pack cache bytes with sendfile (Z5).
        let send_queue = settings
            .tls
            .is_none()
            .then(|| Arc::new(SendQueue::default()));
        let queue_tag = send_queue.clone();
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(tagged.clone());
                req.extensions_mut().insert(PeerAddr(peer));
                if let Some(queue) = &queue_tag {
                    req.extensions_mut().insert(queue.clone());
                }
                req
            },
        ));
        let send_timeout = settings.send_timeout;
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = settings.tls.clone();
        let conn_progress = progress.clone();
        let handshake_timeout = settings.header_timeout;
        tokio::spawn(async move {
            // Holds this connection's place in the limits until it ends.
            let _admitted = admitted;
            let served = async {
                match (tls, send_queue) {
                    (None, Some(queue)) => {
                        let stream = ZeroCopyStream::new(tcp, queue, conn_progress);
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(stream), service))
                            .await
                    }
                    (None, None) => {
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(tcp), service))
                            .await
                    }
                    (Some(acceptor), _) => {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                watcher
                                    .watch(builder.serve_connection(TokioIo::new(stream), service))
                                    .await
                            }
                            Ok(Err(err)) => {
                                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                                Ok(())
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                Ok(())
                            }
                        }
                    }
                }
            };
            // Dropping the connection drops its response, and any git process behind it.
            let result = tokio::select! {
                result = served => result,
                () = crate::progress::stall(progress, send_timeout) => {
                    tracing::info!(%peer, timeout = ?send_timeout, "client stopped reading its response; closing the connection");
                    Ok(())
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("no longer accepting connections; draining");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!(grace = ?settings.shutdown_grace, "shutdown grace period over; closing remaining connections");
        }
    }
    Ok(())
}
