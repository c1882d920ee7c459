//! The smart-HTTP handlers: `info/refs`, `git-upload-pack`, `git-receive-pack`.
//!
//! Fetch requests (upload-pack) are small: they are read whole (up to
//! `limits.max_fetch_request_bytes`, after gzip inflation) and checked by the proto
//! parsers before any node sees them. Push requests (receive-pack) are streamed to the
//! node as they arrive and never held. Responses are streamed; a stream that breaks
//! after its first byte aborts the connection (see [`crate::body`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::TryStreamExt;
use gitgate_proto::smart_http::{self, Endpoint, RouteError};
use gitgate_proto::{normalize, GitProtocol, ProtocolVersion, RepoPath, Service};
use gitgate_storage_client::{GitCall, GitStream, NodeClient, RequestBody};
use http_body_util::{BodyExt, Limited};

use crate::body::metered;
use crate::error::AppError;
use crate::state::AppState;

/// Entry point for every path that is not an operational endpoint.
pub async fn handle(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, AppError> {
    let (repo, endpoint) = smart_http::parse_path(req.uri().path()).map_err(|err| match err {
        RouteError::NotGit => AppError::NotGit,
        RouteError::BadRepo(bad) => AppError::BadRepoPath(bad),
    })?;
    let protocol = req
        .headers()
        .get("git-protocol")
        .and_then(|v| GitProtocol::parse(v.as_bytes()));
    let request_id = request_id(req.headers());
    let span = tracing::Span::current();
    span.record("repo", repo.as_str());
    span.record(
        "protocol",
        protocol
            .as_ref()
            .map_or(ProtocolVersion::V0, GitProtocol::version)
            .label(),
    );
    match (req.method().clone(), endpoint) {
        (Method::GET, Endpoint::InfoRefs) => {
            let service =
                smart_http::service_from_query(req.uri().query()).ok_or(AppError::DumbHttp)?;
            span.record("service", service.name());
            let call = GitCall {
                repo: &repo,
                service,
                protocol: protocol.as_ref(),
                request_id: &request_id,
            };
            info_refs(&state, call).await
        }
        (Method::POST, Endpoint::Rpc(service)) => {
            span.record("service", service.name());
            let call = GitCall {
                repo: &repo,
                service,
                protocol: protocol.as_ref(),
                request_id: &request_id,
            };
            match service {
                Service::UploadPack => upload_pack(&state, call, req.into_body()).await,
                Service::ReceivePack => receive_pack(&state, call, req.into_body()).await,
            }
        }
        _ => Err(AppError::MethodNotAllowed),
    }
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

async fn info_refs(state: &AppState, call: GitCall<'_>) -> Result<Response, AppError> {
    let node = state.nodes.for_repo(call.repo);
    let stream = match node.info_refs(call).await {
        Err(err)
            if err.is_not_found()
                && call.service == Service::ReceivePack
                && state.create_on_push =>
        {
            create_for_push(node, call.repo).await?;
            node.info_refs(call).await?
        }
        other => other?,
    };
    Ok(git_response(
        stream,
        call.service.advertisement_content_type(),
    ))
}

/// `storage.create_on_push`: a push to a missing repository creates it first.
async fn create_for_push(node: &NodeClient, repo: &RepoPath) -> Result<(), AppError> {
    match node.create(repo).await {
        Ok(()) => {
            tracing::info!(repo = %repo, node = node.name(), "created repository for push");
            Ok(())
        }
        // Someone else created it in the meantime: just as good.
        Err(gitgate_storage_client::ClientError::AlreadyExists(_)) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

async fn upload_pack(
    state: &AppState,
    call: GitCall<'_>,
    body: Body,
) -> Result<Response, AppError> {
    let limit = state.max_fetch_request_bytes;
    let body = read_limited(body, limit).await?;
    let version = call
        .protocol
        .map_or(ProtocolVersion::V0, GitProtocol::version);
    // Validate before any node sees it; the canonical form will key the pack cache.
    let normalized = normalize::upload_pack(version, &body)?;
    tracing::debug!(cacheable = normalized.cacheable, "fetch request parsed");
    let node = state.nodes.for_repo(call.repo);
    let request: RequestBody = Box::pin(futures_util::stream::once(async move { Ok(body) }));
    let stream = node.rpc(call, request).await?;
    Ok(git_response(
        stream,
        Service::UploadPack.result_content_type(),
    ))
}

async fn receive_pack(
    state: &AppState,
    call: GitCall<'_>,
    body: Body,
) -> Result<Response, AppError> {
    let node = state.nodes.for_repo(call.repo);
    let request: RequestBody = Box::pin(TryStreamExt::map_err(
        body.into_data_stream(),
        std::io::Error::other,
    ));
    let stream = node.rpc(call, request).await?;
    Ok(git_response(
        stream,
        Service::ReceivePack.result_content_type(),
    ))
}

/// Read a whole (already inflated) body, refusing more than `limit` bytes.
async fn read_limited(body: Body, limit: u64) -> Result<Bytes, AppError> {
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            Err(AppError::BodyTooLarge { limit })
        }
        Err(err) => Err(AppError::BodyRead(err.to_string())),
    }
}

fn git_response(stream: GitStream, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CACHE_CONTROL,
                "no-cache, max-age=0, must-revalidate",
            ),
        ],
        Body::from_stream(metered(stream)),
    )
        .into_response()
}
