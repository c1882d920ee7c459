//! The gateway's admin API under `/-/admin/`, for tokens with an `admin` scope.
//!
//! - `DELETE /-/admin/repos?repo=NAME`: delete a repository from every replica and
//!   forget it (204; 404 when no node has it; 503 while one of its replicas is down).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use gitgate_proto::RepoPath;
use serde::Deserialize;

use crate::auth::layer::authorize;
use crate::auth::Permission;
use crate::error::AppError;
use crate::state::AppState;

/// The `repo` query parameter.
#[derive(Deserialize)]
pub struct RepoQuery {
    repo: String,
}

/// `DELETE /-/admin/repos?repo=NAME`.
pub async fn delete_repo(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<RepoQuery>,
) -> Result<Response, AppError> {
    let repo = RepoPath::parse(&query.repo)?;
    tracing::Span::current().record("repo", repo.as_str());
    authorize(&state, &repo, Permission::Admin, &headers)?;
    let nodes = state.cluster.delete_repository(&repo).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [("gitgate-deleted-from", nodes.join(","))],
    )
        .into_response())
}
