//! Operational endpoints under `/-/`: liveness and readiness.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::state::AppState;

/// `/-/health`: the process is up and serving HTTP.
pub async fn health() -> &'static str {
    "ok\n"
}

/// `/-/ready`: at least one storage node answers its health check.
pub async fn ready(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut problems = Vec::new();
    for node in state.nodes.nodes() {
        match node.check_health().await {
            Ok(()) => return (StatusCode::OK, "ready\n".to_owned()),
            Err(err) => problems.push(err.to_string()),
        }
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {}\n", problems.join("; ")),
    )
}
