//! Operational endpoints under `/-/`: liveness, readiness and metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use crate::state::AppState;

/// `/-/health`: the process is up and serving HTTP.
pub async fn health() -> &'static str {
    "ok\n"
}

/// How long the readiness check waits for the metadata store.
const STORE_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `/-/ready`: the metadata store answers and at least one storage node passes its
/// health checks.
pub async fn ready(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    match tokio::time::timeout(STORE_PING_TIMEOUT, state.cluster.store().ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "not ready: metadata store unreachable");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: metadata store unreachable: {err}\n"),
            );
        }
        Err(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: metadata store did not answer in time\n".to_owned(),
            )
        }
    }
    if state.cluster.health().any_healthy() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        let names: Vec<&str> = state
            .cluster
            .nodes()
            .nodes()
            .iter()
            .map(|n| n.name())
            .collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: no healthy storage node ({})\n",
                names.join(", ")
            ),
        )
    }
}

/// `/-/metrics`: the registry in Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut out = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&state.registry.gather(), &mut out) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            out,
        ),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{err}\n"),
        ),
    }
}
