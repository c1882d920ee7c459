//! The node's internal HTTP API.
//!
//! - `GET /-/health`: unauthenticated liveness and load (running git processes and
//!   cores, see [`crate::api::NodeLoad`]); `GET /-/metrics`: Prometheus text;
//! - ordinary smart HTTP for git (`info/refs`, `git-upload-pack`, `git-receive-pack`),
//!   so gateways and other nodes (replication) use plain git traffic;
//! - `GET /admin/repos`, `GET /admin/state?repo=`, `POST /admin/create?repo=`,
//!   `POST /admin/delete?repo=`, `POST /admin/replicate?repo=&digest=` (JSON body
//!   [`crate::api::ReplicateRequest`], whose blake3 digest is in the query so the token
//!   covers it; answers the resulting state): the admin API, JSON answers.
//!
//! Everything but health requires `Authorization: Bearer <token>` (see [`crate::auth`]).
//! Request bodies may be gzip-encoded. A git response that fails after its first byte
//! aborts the connection rather than ending cleanly.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use gitgate_proto::smart_http::{self, Endpoint, RouteError};
use gitgate_proto::{GitProtocol, RepoPath, Service};
use serde::Deserialize;
use tokio::net::TcpListener;
use tower_http::decompression::RequestDecompressionLayer;
use tracing::Instrument;

use crate::api::{self, ReplicateRequest};
use crate::auth::Verifier;
use crate::node::{BadReplication, Node, NodeError, ReplicaSource};
use crate::process::{self, GitStream};

/// Shared state of the node's handlers.
#[derive(Clone)]
struct AppState {
    node: Arc<Node>,
}

/// Build the node's router. `verifier` guards everything but `/-/health`.
pub fn router(node: Arc<Node>, verifier: Arc<Verifier>, registry: prometheus::Registry) -> Router {
    let protected = Router::new()
        .route("/admin/repos", get(list))
        .route("/admin/state", get(state))
        .route("/admin/create", post(create))
        .route("/admin/delete", post(delete))
        .route("/admin/replicate", post(replicate))
        .fallback(git)
        // Clients (other nodes replicating with `git fetch`) gzip large fetch bodies.
        .layer(RequestDecompressionLayer::new())
        .layer(middleware::from_fn_with_state(verifier, authenticate));
    Router::new()
        .route(
            "/-/health",
            get(|State(s): State<AppState>| async move { s.node.load().health_text() }),
        )
        .route("/-/metrics", get(move || metrics_text(registry.clone())))
        .merge(protected)
        .with_state(AppState { node })
}

/// Serve the node API on `listener` until `shutdown` completes, with the header
/// timeout, connection limits and bounded drain of `settings`.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    verifier: Arc<Verifier>,
    registry: prometheus::Registry,
    settings: crate::daemon::http_server::ServeSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::daemon::http_server::serve_http(
        listener,
        router(node, verifier, registry),
        settings,
        shutdown,
    )
    .await
}

/// Prometheus text exposition of `registry`.
async fn metrics_text(registry: prometheus::Registry) -> Response {
    let mut out = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut out) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], out).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response(),
    }
}

async fn authenticate(State(verifier): State<Arc<Verifier>>, req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |p| p.as_str());
    let presented = crate::auth::Presented {
        token,
        method: req.method().as_str(),
        path_and_query,
        host,
    };
    match verifier.check(presented, SystemTime::now()) {
        Ok(()) => next.run(req).await,
        Err(err) => {
            tracing::debug!(error = %err, "refused request");
            (StatusCode::UNAUTHORIZED, format!("{err}\n")).into_response()
        }
    }
}

#[derive(Deserialize)]
struct RepoQuery {
    repo: String,
}

/// Failures of the admin API, mapped to responses in one place.
enum ApiError {
    BadRepo(gitgate_proto::repo_path::InvalidRepoPath),
    Node(NodeError),
}

impl From<NodeError> for ApiError {
    fn from(err: NodeError) -> Self {
        Self::Node(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::BadRepo(err) => (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response(),
            Self::Node(err) => error_response(&err),
        }
    }
}

fn repo_from(query: &RepoQuery) -> Result<RepoPath, ApiError> {
    RepoPath::parse(&query.repo).map_err(ApiError::BadRepo)
}

async fn list(State(s): State<AppState>) -> Result<Response, ApiError> {
    let repos = s.node.list().await?;
    Ok(Json(
        repos
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
    .into_response())
}

async fn state(
    State(s): State<AppState>,
    Query(q): Query<RepoQuery>,
) -> Result<Response, ApiError> {
    let repo = repo_from(&q)?;
    Ok(Json(s.node.state(&repo).await?).into_response())
}

async fn create(
    State(s): State<AppState>,
    Query(q): Query<RepoQuery>,
) -> Result<Response, ApiError> {
    let repo = repo_from(&q)?;
    s.node.create(&repo).await?;
    Ok(StatusCode::CREATED.into_response())
}

async fn delete(
    State(s): State<AppState>,
    Query(q): Query<RepoQuery>,
) -> Result<Response, ApiError> {
    let repo = repo_from(&q)?;
    s.node.delete(&repo).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct ReplicateQuery {
    repo: String,
    digest: Option<String>,
}

/// Copy a repository from another node. The token covers the path and query; the
/// query's digest covers the body, so neither the source nor the node set can be
/// changed without a new token. The source must be on one of the nodes the gateway
/// named. Everything is checked before anything is created.
async fn replicate(
    State(s): State<AppState>,
    Query(q): Query<ReplicateQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let repo = RepoPath::parse(&q.repo).map_err(ApiError::BadRepo)?;
    if q.digest.as_deref() != Some(api::body_digest(&body).as_str()) {
        return Err(NodeError::from(BadReplication::Digest).into());
    }
    let body: ReplicateRequest = serde_json::from_slice(&body)
        .map_err(|e| NodeError::from(BadReplication::Body(e.to_string())))?;
    if !body.source_is_a_node() {
        return Err(NodeError::from(BadReplication::Source(body.source_url)).into());
    }
    let source = ReplicaSource::Http {
        url: body.source_url,
        authorization: body.authorization,
    };
    let state = s
        .node
        .replicate(&repo, &source, body.head.as_deref())
        .await?;
    Ok(Json(state).into_response())
}

async fn git(
    State(s): State<AppState>,
    method: Method,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let uri = req.uri().clone();
    let (repo, endpoint) = match smart_http::parse_path(uri.path()) {
        Ok(found) => found,
        Err(RouteError::NotGit) => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
        Err(err @ RouteError::BadRepo(_)) => {
            return (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response()
        }
    };
    let protocol = headers
        .get("git-protocol")
        .and_then(|v| GitProtocol::parse(v.as_bytes()));
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    // The span follows the handler across awaits (`instrument`); a guard from
    // `span.enter()` held over an await would leave it "current" on whichever worker
    // thread the task happened to run on, and a later span there could name it as a
    // parent after it closed (a tracing-subscriber panic).
    let span = tracing::info_span!("git", request_id, repo = %repo, ?endpoint);
    async {
        match (method, endpoint) {
            (Method::GET, Endpoint::InfoRefs) => {
                let Some(service) = smart_http::service_from_query(uri.query()) else {
                    return (StatusCode::FORBIDDEN, "only smart HTTP is served\n").into_response();
                };
                let empty_if_missing = service == Service::ReceivePack
                    && headers.contains_key(crate::api::EMPTY_IF_MISSING);
                let result = if empty_if_missing {
                    s.node
                        .push_advertisement_or_empty(&repo, protocol.as_ref())
                        .await
                } else {
                    s.node.info_refs(&repo, service, protocol.as_ref()).await
                };
                respond(result, service.advertisement_content_type(), false).await
            }
            (Method::POST, Endpoint::Rpc(service)) => {
                let body = req
                    .into_body()
                    .into_data_stream()
                    .map_err(std::io::Error::other);
                let result = s
                    .node
                    .rpc(&repo, service, protocol.as_ref(), Box::pin(body))
                    .await;
                respond(result, result_type(service), service == Service::UploadPack).await
            }
            _ => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response(),
        }
    }
    .instrument(span)
    .await
}

fn result_type(service: Service) -> &'static str {
    service.result_content_type()
}

/// Answer with git's output, or with why there is none. `refusals`: git dying before
/// its first byte is it refusing the request (upload-pack), answered with
/// [`crate::api::REFUSED`] and git's message rather than as a failure.
async fn respond(
    result: Result<GitStream, NodeError>,
    content_type: &'static str,
    refusals: bool,
) -> Response {
    let stream = match result {
        Ok(stream) => stream,
        Err(err) => return error_response(&err),
    };
    match process::peek(stream).await {
        Ok(stream) => git_response(stream, content_type),
        Err(err) => {
            if let Some(message) = err.refusal().filter(|_| refusals) {
                tracing::info!(%message, "git refused the request");
                return (crate::api::REFUSED, format!("{message}\n")).into_response();
            }
            tracing::warn!(error = %err, "git failed before answering");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response()
        }
    }
}

/// A streaming smart-HTTP response. An error item aborts the connection.
pub fn git_response(stream: GitStream, content_type: &'static str) -> Response {
    let body = Body::from_stream(stream.map_err(std::io::Error::other));
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CACHE_CONTROL,
                "no-cache, max-age=0, must-revalidate",
            ),
        ],
        body,
    )
        .into_response()
}

fn error_response(err: &NodeError) -> Response {
    if err.is_not_found() {
        return (StatusCode::NOT_FOUND, "repository not found\n").into_response();
    }
    if err.is_already_exists() {
        return (StatusCode::CONFLICT, "repository already exists\n").into_response();
    }
    if let NodeError::BadReplication(bad) = err {
        return (StatusCode::BAD_REQUEST, format!("{bad}\n")).into_response();
    }
    if let NodeError::ReplicationRunning(_) = err {
        return (StatusCode::CONFLICT, format!("{err}\n")).into_response();
    }
    tracing::error!(error = %err, "node operation failed");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response()
}
