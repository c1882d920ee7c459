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

/// `/-/ready`: at least one storage node passes its health checks.
pub async fn ready(State(state): State<Arc<AppState>>) -> impl IntoResponse {
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
