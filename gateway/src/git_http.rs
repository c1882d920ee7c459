//! The smart-HTTP handlers: `info/refs`, `git-upload-pack`, `git-receive-pack`.
//!
//! Fetch requests (upload-pack) are small: they are read whole (up to
//! `limits.max_fetch_request_bytes`, after gzip inflation) and parsed before any node
//! sees them. One that ends negotiation goes through the pack cache, keyed by the
//! repository, its generation, the service, the protocol and the normalized request;
//! the rest stream straight through. Push requests (receive-pack) are streamed to the
//! node as they arrive and never held. Responses are streamed; a stream that breaks
//! after its first byte aborts the connection (see [`crate::body`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use gitgate_packcache::{ByteStream, CacheKey, Fetch, KeyBuilder, ReadError, UpstreamError};
use gitgate_proto::smart_http::{self, Endpoint, RouteError};
use gitgate_proto::{normalize, GitProtocol, ProtocolVersion, RepoPath, Service};
use gitgate_storage_client::{ClientError, GitCall, NodeClient, RequestBody};
use http_body_util::{BodyExt, Limited};

use crate::body::{metered, BodyStream};
use crate::error::{AppError, BoxError};
use crate::generation::Generations;
use crate::limits::{LimitError, RepoLimiter, Slot};
use crate::metrics::GatewayMetrics;
use crate::state::AppState;
use gitgate_storage_client::health::HealthMonitor;

/// The protocol v2 commands upload-pack serves; anything else is refused here with a
/// clear 400 instead of failing inside git.
const V2_COMMANDS: &[&str] = &["ls-refs", "fetch", "object-info", "bundle-uri"];

/// Version of the cache key format; bump when the key's fields change meaning.
const CACHE_KEY_FORMAT: u32 = 1;

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
    span.record("protocol", version_of(protocol.as_ref()).label());
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
                Service::ReceivePack => {
                    let (parts, body) = req.into_parts();
                    receive_pack(&state, call, body, &parts.headers).await
                }
            }
        }
        _ => Err(AppError::MethodNotAllowed),
    }
}

fn version_of(protocol: Option<&GitProtocol>) -> ProtocolVersion {
    protocol.map_or(ProtocolVersion::V0, GitProtocol::version)
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

async fn info_refs(state: &AppState, call: GitCall<'_>) -> Result<Response, AppError> {
    let (index, node) = healthy_node(state, call.repo)?;
    let stream = match node.info_refs(call).await {
        Err(err)
            if err.is_not_found()
                && call.service == Service::ReceivePack
                && state.create_on_push =>
        {
            create_for_push(node, call.repo).await?;
            observed(
                &state.metrics,
                &state.health,
                (index, node),
                node.info_refs(call).await,
            )?
        }
        other => observed(&state.metrics, &state.health, (index, node), other)?,
    };
    Ok(git_response(
        boxed(stream),
        call.service.advertisement_content_type(),
        false,
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
        Err(ClientError::AlreadyExists(_)) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

async fn upload_pack(
    state: &AppState,
    call: GitCall<'_>,
    body: Body,
) -> Result<Response, AppError> {
    let body = read_limited(body, state.max_fetch_request_bytes).await?;
    let version = version_of(call.protocol);
    // Validate before any node sees it; the canonical form keys the pack cache.
    let normalized = normalize::upload_pack(version, &body)?;
    if let Some(command) = &normalized.command {
        if !V2_COMMANDS.contains(&command.as_str()) {
            return Err(AppError::UnsupportedCommand(command.clone()));
        }
    }
    let (index, node) = healthy_node(state, call.repo)?;
    let span = tracing::Span::current();
    if let (Some(cache), true) = (&state.cache, normalized.cacheable) {
        let key = cache_key(
            &call,
            version,
            state.generations.get(call.repo),
            &normalized.canonical,
        );
        span.record("key", &key.to_hex()[..16]);
        let upstream = Producer {
            node: node.clone(),
            index,
            call: OwnedCall::new(&call),
            body: body.clone(),
            limiter: state.limiter.clone(),
            metrics: state.metrics.clone(),
            health: state.health.clone(),
        }
        .into_upstream();
        match cache.fetch(key, upstream).await {
            Fetch::Hit(reader) => {
                span.record("cache", "hit");
                return cached_response(reader.into_stream(), false).await;
            }
            Fetch::Miss(reader) => {
                span.record("cache", "miss");
                // The producer (a detached task) calls this node for the entry.
                span.record("node", node.name());
                return cached_response(reader.into_stream(), true).await;
            }
            Fetch::Bypass(reason) => {
                span.record("cache", "bypass");
                tracing::debug!(reason = reason.label(), "pack cache bypassed");
            }
        }
    } else {
        span.record("cache", "none");
    }
    let slot = state.limiter.acquire(call.repo).await?;
    let request: RequestBody = Box::pin(futures_util::stream::once(async move { Ok(body) }));
    let stream = observed(
        &state.metrics,
        &state.health,
        (index, node),
        node.rpc(call, request).await,
    )?;
    state
        .metrics
        .read_distribution
        .with_label_values(&[node.name()])
        .inc();
    Ok(git_response(
        holding(boxed(stream), slot),
        Service::UploadPack.result_content_type(),
        true,
    ))
}

/// The node that serves `repo`, if it is up; otherwise 503 at once instead of waiting
/// for a connection that is known to fail.
fn healthy_node<'a>(
    state: &'a AppState,
    repo: &RepoPath,
) -> Result<(usize, &'a NodeClient), AppError> {
    let (index, node) = state.nodes.for_repo(repo);
    if state.health.is_healthy(index) {
        Ok((index, node))
    } else {
        Err(AppError::Unavailable(
            format!("storage node {} is down", node.name()).into(),
        ))
    }
}

/// Count a node call's outcome, report unreachable nodes to the health monitor, and
/// note the node in the request's span.
fn observed<T>(
    metrics: &GatewayMetrics,
    health: &HealthMonitor,
    (index, node): (usize, &NodeClient),
    result: Result<T, ClientError>,
) -> Result<T, ClientError> {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) if e.is_not_found() => "not_found",
        Err(e) if e.is_unavailable() => {
            health.report_failure(index);
            "unavailable"
        }
        Err(_) => "error",
    };
    metrics
        .backend
        .with_label_values(&[node.name(), outcome])
        .inc();
    tracing::Span::current().record("node", node.name());
    result
}

/// Keep `slot` (a concurrency slot) until the body is done with.
fn holding(stream: BodyStream, slot: Option<Slot>) -> BodyStream {
    match slot {
        None => stream,
        Some(slot) => Box::pin(stream.map(move |item| {
            let _held_until_the_body_ends = &slot;
            item
        })),
    }
}

/// Everything that can change an upload-pack response, and nothing else.
fn cache_key(
    call: &GitCall<'_>,
    version: ProtocolVersion,
    generation: u64,
    canonical: &[u8],
) -> CacheKey {
    KeyBuilder::new(CACHE_KEY_FORMAT)
        .field(call.repo.as_str().as_bytes())
        .field(&generation.to_be_bytes())
        .field(call.service.name().as_bytes())
        .field(version.label().as_bytes())
        .field(canonical)
        .finish()
}

/// The parts of a [`GitCall`] a detached producer needs to own.
struct OwnedCall {
    repo: RepoPath,
    protocol: Option<GitProtocol>,
    request_id: String,
}

impl OwnedCall {
    fn new(call: &GitCall<'_>) -> Self {
        Self {
            repo: call.repo.clone(),
            protocol: call.protocol.cloned(),
            request_id: call.request_id.to_owned(),
        }
    }
}

/// The producer of a cache entry: the same upload-pack call, owned so it can outlive
/// the request that started it.
struct Producer {
    node: NodeClient,
    index: usize,
    call: OwnedCall,
    body: Bytes,
    limiter: Arc<RepoLimiter>,
    metrics: GatewayMetrics,
    health: Arc<HealthMonitor>,
}

impl Producer {
    fn into_upstream(self) -> impl FnOnce() -> gitgate_packcache::Upstream {
        let Producer {
            node,
            index,
            call,
            body,
            limiter,
            metrics,
            health,
        } = self;
        move || {
            Box::pin(async move {
                // The producer takes the repository's slot; its readers share it.
                let slot = limiter
                    .acquire(&call.repo)
                    .await
                    .map_err(UpstreamError::new)?;
                let git_call = GitCall {
                    repo: &call.repo,
                    service: Service::UploadPack,
                    protocol: call.protocol.as_ref(),
                    request_id: &call.request_id,
                };
                let request: RequestBody =
                    Box::pin(futures_util::stream::once(async move { Ok(body) }));
                let stream = observed(
                    &metrics,
                    &health,
                    (index, &node),
                    node.rpc(git_call, request).await,
                )
                .map_err(UpstreamError::new)?;
                metrics
                    .read_distribution
                    .with_label_values(&[node.name()])
                    .inc();
                let stream = stream.map(move |item| {
                    let _held_until_the_stream_ends = &slot;
                    item.map_err(UpstreamError::new)
                });
                Ok(Box::pin(stream) as ByteStream)
            })
        }
    }
}

/// Answer from a cache reader: wait for the first bytes so a failure before any output
/// still gets a proper status.
async fn cached_response(
    stream: impl Stream<Item = Result<Bytes, ReadError>> + Send + 'static,
    generated: bool,
) -> Result<Response, AppError> {
    let mut stream = Box::pin(stream);
    let first = match stream.next().await {
        None => Bytes::new(),
        Some(Ok(first)) => first,
        Some(Err(err)) => return Err(read_error(err)),
    };
    let rest = stream.map_err(|e| Box::new(e) as BoxError);
    let body: BodyStream =
        Box::pin(futures_util::stream::once(async move { Ok(first) }).chain(rest));
    Ok(git_response(
        body,
        Service::UploadPack.result_content_type(),
        generated,
    ))
}

fn read_error(err: ReadError) -> AppError {
    if let Some(limit) = err
        .upstream()
        .and_then(|up| up.downcast_ref::<LimitError>())
    {
        return AppError::from(*limit);
    }
    if let Some(client) = err
        .upstream()
        .and_then(|up| up.downcast_ref::<ClientError>())
    {
        if client.is_not_found() {
            return AppError::RepoNotFound;
        }
        if client.is_unavailable() {
            return AppError::Unavailable(Box::new(err));
        }
    }
    AppError::NodeFailed(Box::new(err))
}

async fn receive_pack(
    state: &AppState,
    call: GitCall<'_>,
    body: Body,
    headers: &HeaderMap,
) -> Result<Response, AppError> {
    let (index, node) = healthy_node(state, call.repo)?;
    let limit = state.max_push_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(AppError::BodyTooLarge { limit });
    }
    // Chunked pushes are counted as they stream; past the limit the body fails, git is
    // killed before it can apply anything, and the connection is aborted.
    let mut seen = 0u64;
    let counted = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len() as u64;
        if seen > limit {
            return Err(std::io::Error::other(format!(
                "push larger than limits.max_push_bytes ({limit} bytes)"
            )));
        }
        Ok(chunk)
    });
    let request: RequestBody = Box::pin(counted);
    // New fetches must not be answered from entries made before this push...
    state.generations.bump(call.repo);
    let stream = observed(
        &state.metrics,
        &state.health,
        (index, node),
        node.rpc(call, request).await,
    )?;
    // ...nor from entries made while it runs: bump again as soon as the response has
    // ended (before the client sees its end), or when it is dropped unfinished.
    let mut bump = BumpOnEnd {
        generations: state.generations.clone(),
        repo: call.repo.clone(),
        done: false,
    };
    let tail = futures_util::stream::poll_fn(move |_| {
        bump.now();
        std::task::Poll::Ready(None)
    });
    let stream = boxed(stream).chain(tail);
    Ok(git_response(
        Box::pin(stream),
        Service::ReceivePack.result_content_type(),
        true,
    ))
}

/// Bumps a repository's generation once: when asked, or at the latest when dropped.
struct BumpOnEnd {
    generations: Arc<Generations>,
    repo: RepoPath,
    done: bool,
}

impl BumpOnEnd {
    fn now(&mut self) {
        if !self.done {
            self.done = true;
            self.generations.bump(&self.repo);
        }
    }
}

impl Drop for BumpOnEnd {
    fn drop(&mut self) {
        self.now();
    }
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

fn boxed(stream: gitgate_storage_client::GitStream) -> BodyStream {
    Box::pin(stream.map_err(|e| Box::new(e) as BoxError))
}

fn git_response(stream: BodyStream, content_type: &'static str, generated: bool) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CACHE_CONTROL,
                "no-cache, max-age=0, must-revalidate",
            ),
        ],
        Body::from_stream(metered(stream, generated)),
    )
        .into_response()
}
