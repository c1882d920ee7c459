//! The smart-HTTP handlers: `info/refs`, `git-upload-pack`, `git-receive-pack`.
//!
//! Reads (upload-pack) go to an up-to-date replica the cluster picks, trying the next
//! one when a node fails before its first byte; pushes (receive-pack) go to the
//! repository's primary under its write lock, and are acknowledged only once recorded.
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
use gitgate_proto::response::{Expected, ResponseCheck, ResponseError};
use gitgate_proto::smart_http::{self, Endpoint, RouteError};
use gitgate_proto::{normalize, GitProtocol, ProtocolVersion, RepoPath, Service};
use gitgate_storage_client::{ClientError, GitCall, RequestBody};
use http_body_util::{BodyExt, Limited};

use crate::body::{metered, BodyStream};
use crate::error::{AppError, BoxError};
use crate::limits::{LimitError, RepoLimiter, Slot};
use crate::metrics::GatewayMetrics;
use crate::state::AppState;
use gitgate_storage_client::cluster::{Cluster, PushGuard};

/// The protocol v2 commands upload-pack serves; anything else is refused here with a
/// clear 400 instead of failing inside git.
const V2_COMMANDS: &[&str] = &["ls-refs", "fetch", "object-info", "bundle-uri"];

/// Version of the cache key format; bump when the key's fields change meaning.
const CACHE_KEY_FORMAT: u32 = 2;

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
    let stream = match call.service {
        // Pushes are advertised by the node that will take them.
        Service::ReceivePack => {
            let primary = state
                .cluster
                .push_target(call.repo, state.create_on_push)
                .await?;
            let node = state.cluster.node(primary);
            observed(
                &state.metrics,
                &state.cluster,
                primary,
                node.info_refs(call).await,
            )?
        }
        Service::UploadPack => {
            let route = state.cluster.read_route(call.repo).await?;
            let mut last = None;
            let mut found = None;
            for index in route.candidates {
                let node = state.cluster.node(index);
                match observed(
                    &state.metrics,
                    &state.cluster,
                    index,
                    node.info_refs(call).await,
                ) {
                    Ok(stream) => {
                        found = Some(stream);
                        break;
                    }
                    Err(err) => last = Some(err),
                }
            }
            match (found, last) {
                (Some(stream), _) => stream,
                (None, Some(err)) => return Err(err.into()),
                (None, None) => return Err(AppError::NoReplica("no replica answered".into())),
            }
        }
    };
    Ok(git_response(
        boxed(stream),
        call.service.advertisement_content_type(),
        false,
    ))
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
    let route = state.cluster.read_route(call.repo).await?;
    let span = tracing::Span::current();
    if let (Some(cache), Some(expected)) = (&state.cache, normalized.expected) {
        let key = cache_key(&call, version, route.generation, &normalized.canonical);
        span.record("key", &key.to_hex()[..16]);
        let upstream = Producer {
            cluster: state.cluster.clone(),
            candidates: route.candidates.clone(),
            call: OwnedCall::new(&call),
            body: body.clone(),
            limiter: state.limiter.clone(),
            metrics: state.metrics.clone(),
            expected,
        }
        .into_upstream();
        match cache.fetch(key, upstream).await {
            Fetch::Hit(reader) => {
                span.record("cache", "hit");
                return cached_response(reader.into_stream(), false).await;
            }
            Fetch::Miss(reader) => {
                span.record("cache", "miss");
                // The producer (a detached task) calls this node first for the entry.
                if let Some(&first) = route.candidates.first() {
                    span.record("node", state.cluster.node(first).name());
                }
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
    let stream = fetch_from_any(
        &state.cluster,
        &state.metrics,
        &route.candidates,
        call,
        &body,
    )
    .await?;
    Ok(git_response(
        holding(boxed(stream), slot),
        Service::UploadPack.result_content_type(),
        true,
    ))
}

/// Run upload-pack with `body` on the first of `candidates` that answers: a node that
/// fails before its first byte is reported and the next one is tried.
async fn fetch_from_any(
    cluster: &Cluster,
    metrics: &GatewayMetrics,
    candidates: &[usize],
    call: GitCall<'_>,
    body: &Bytes,
) -> Result<gitgate_storage_client::GitStream, ClientError> {
    let mut last = None;
    for &index in candidates {
        let node = cluster.node(index);
        let request: RequestBody = Box::pin(futures_util::stream::once({
            let body = body.clone();
            async move { Ok(body) }
        }));
        match observed(metrics, cluster, index, node.rpc(call, request).await) {
            Ok(stream) => {
                metrics
                    .read_distribution
                    .with_label_values(&[node.name()])
                    .inc();
                return Ok(stream);
            }
            Err(err) => {
                if candidates.len() > 1 {
                    tracing::info!(node = node.name(), error = %err, "fetch failed before its first byte; trying another replica");
                }
                last = Some(err);
            }
        }
    }
    Err(last.unwrap_or_else(|| ClientError::Unavailable {
        node: "-".into(),
        reason: "no replica to try".into(),
    }))
}

/// Count a node call's outcome, report unreachable nodes to the health monitor, and
/// note the node in the request's span.
fn observed<T>(
    metrics: &GatewayMetrics,
    cluster: &Cluster,
    index: usize,
    result: Result<T, ClientError>,
) -> Result<T, ClientError> {
    let node = cluster.node(index);
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) if e.is_not_found() => "not_found",
        Err(e) if e.is_unavailable() => {
            cluster.health().report_failure(index);
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
    generation: i64,
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
    cluster: Arc<Cluster>,
    candidates: Vec<usize>,
    call: OwnedCall,
    body: Bytes,
    limiter: Arc<RepoLimiter>,
    metrics: GatewayMetrics,
    /// The shape of git's complete answer: anything else fails the entry (I3), so
    /// an answer that is not a whole final response is never served from the cache.
    expected: Expected,
}

impl Producer {
    fn into_upstream(self) -> impl FnOnce() -> gitgate_packcache::Upstream {
        let Producer {
            cluster,
            candidates,
            call,
            body,
            limiter,
            metrics,
            expected,
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
                let stream = fetch_from_any(&cluster, &metrics, &candidates, git_call, &body)
                    .await
                    .map_err(UpstreamError::new)?;
                let stream = stream.map(move |item| {
                    let _held_until_the_stream_ends = &slot;
                    item.map_err(UpstreamError::new)
                });
                Ok(checked(Box::pin(stream), expected))
            })
        }
    }
}

/// Pass `stream` through, checking that it is a complete final response; if it is not,
/// end with an error instead of a clean end, so the entry fails and is never served.
fn checked(stream: ByteStream, expected: Expected) -> ByteStream {
    struct Checking {
        stream: ByteStream,
        check: Option<ResponseCheck>,
    }
    let state = Checking {
        stream,
        check: Some(ResponseCheck::new(expected)),
    };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        let check = s.check.as_mut()?;
        match s.stream.next().await {
            Some(Ok(chunk)) => match check.feed(&chunk) {
                Ok(()) => Some((Ok(chunk), s)),
                Err(err) => {
                    s.check = None;
                    Some((Err(incomplete(err)), s))
                }
            },
            Some(Err(err)) => {
                s.check = None;
                Some((Err(err), s))
            }
            None => {
                let check = s.check.take()?;
                match check.finish() {
                    Ok(_) => None,
                    Err(err) => Some((Err(incomplete(err)), s)),
                }
            }
        }
    }))
}

fn incomplete(err: ResponseError) -> UpstreamError {
    tracing::error!(error = %err, "upload-pack answer is not a complete final response; not cached");
    UpstreamError::new(err)
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
    // Holds the repository's lock and its write marker until the outcome is recorded.
    let push = state.cluster.begin_push(call.repo).await?;
    let primary = push.primary();
    let node = state.cluster.node(primary);
    let stream = observed(
        &state.metrics,
        &state.cluster,
        primary,
        node.rpc(call, request).await,
    )?;
    Ok(git_response(
        acknowledged_after(boxed(stream), push),
        Service::ReceivePack.result_content_type(),
        true,
    ))
}

/// The push response, with its last chunk held back until the push is recorded (and,
/// in `sync` mode, replicated): git cannot finish a push before the response's final
/// flush, so nothing is acknowledged before it is durable. If recording fails the
/// response is aborted instead.
fn acknowledged_after(stream: BodyStream, push: PushGuard) -> BodyStream {
    struct Pending {
        stream: BodyStream,
        held: Option<Bytes>,
        push: Option<PushGuard>,
        done: bool,
    }
    let pending = Pending {
        stream,
        held: None,
        push: Some(push),
        done: false,
    };
    Box::pin(futures_util::stream::unfold(pending, |mut p| async move {
        if p.done {
            return None;
        }
        loop {
            match p.stream.next().await {
                Some(Ok(chunk)) => {
                    if let Some(previous) = p.held.replace(chunk) {
                        return Some((Ok(previous), p));
                    }
                }
                Some(Err(err)) => {
                    // The push guard records whatever happened when it is dropped.
                    p.done = true;
                    return Some((Err(err), p));
                }
                None => {
                    p.done = true;
                    if let Some(push) = p.push.take() {
                        if let Err(err) = push.finish().await {
                            tracing::error!(error = %err, "push not acknowledged");
                            return Some((Err(Box::new(err) as BoxError), p));
                        }
                    }
                    let last = p.held.take()?;
                    return Some((Ok(last), p));
                }
            }
        }
    }))
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
