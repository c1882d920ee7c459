//! The node's HTTP serving loop: HTTP/1.1 by hyper with a header read timeout (a client
//! that trickles its headers, or leaves a kept-alive connection idle, is cut off), the
//! connection limits of [`super::connections`], and a bounded drain on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use super::connections::ConnectionLimits;

/// How connections are served.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// Time allowed for a request's headers (and between requests on one connection).
    pub header_timeout: Duration,
    /// Time in-flight requests get after shutdown starts.
    pub shutdown_grace: Duration,
    /// Open connections, total and per client address.
    pub connections: Arc<ConnectionLimits>,
}

/// Serve `router` on `listener` until `shutdown`, then let in-flight requests finish
/// for at most `settings.shutdown_grace`.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    settings: ServeSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
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
                tracing::debug!(%peer, reason = reason.label(), "refusing a connection over the limit");
                tokio::spawn(tokio::time::timeout(
                    Duration::from_secs(1),
                    super::connections::refuse(tcp),
                ));
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = builder.serve_connection(TokioIo::new(tcp), service);
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            let _admitted = admitted;
            if let Err(err) = watched.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!(grace = ?settings.shutdown_grace, "shutdown grace period over; closing remaining connections");
        }
    }
    Ok(())
}
