//! `POST git-upload-pack`: a fetch.
//!
//! Fetch requests are small: they are read whole, after gzip inflation and within the
//! bounds of [`crate::fetch_body`], and parsed before any node sees them. One that ends negotiation goes through the pack cache, keyed by
//! [`super::cache_key`]; its producer checks that git's answer is a complete final
//! response before the entry can end cleanly. The rest stream straight through from
//! the route's replicas, holding a per-repository slot; protocol v2 `ls-refs` goes
//! through the advertisement cache ([`crate::advert_cache`]).

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use gitgate_packcache::{ByteStream, CacheKey, Fetch, ReadError, Reader, UpstreamError};
use gitgate_proto::response::{Expected, Framing, ResponseCheck, ResponseError};
use gitgate_proto::{normalize, RepoPath, Service};
use gitgate_storage_client::cluster::{Cluster, ClusterError, ReadRoute};

use super::advertise::advert_response;
use super::cache_key::{advert_key, cache_key};
use super::response::{boxed, git_response, git_response_of_len, holding};
use super::GitRequest;
use crate::advert_cache::Kind;
use crate::body::BodyStream;
use crate::error::{AppError, BoxError};
use crate::fetch_body::{HeldBody, RawBytes};
use crate::limits::{FetchLimits, LimitError};
use crate::peers::{owner_of, Forward, Owner, OwnerAnswer};
use crate::state::AppState;
use crate::zero_copy::{self, SendQueue};

/// The protocol v2 commands upload-pack serves; anything else is refused here with a
/// clear 400 instead of failing inside git.
const V2_COMMANDS: &[&str] = &["ls-refs", "fetch", "object-info", "bundle-uri"];

/// Answer a fetch from `repo`.
pub async fn upload_pack(
    state: &AppState,
    git: &GitRequest,
    repo: &RepoPath,
    body: Body,
    raw: Option<RawBytes>,
    send_queue: Option<Arc<SendQueue>>,
) -> Result<Response, AppError> {
    let held = state.fetch_bodies.read(body, raw.as_ref()).await?;
    let body = &held.bytes;
    let version = git.version();
    // Validate before any node sees it; the canonical form keys the pack cache.
    let normalized = normalize::upload_pack(version, body)?;
    if let Some(command) = &normalized.command {
        if !V2_COMMANDS.contains(&command.as_str()) {
            return Err(AppError::UnsupportedCommand(command.clone()));
        }
    }
    let route = state.cluster.read_route(repo).await?;
    // A pack depends on the generation; ls-refs, and a fetch naming refs, on the refs
    // too, which a write in flight may be changing: such answers are not cached then.
    let refs_matter = normalized.command.as_deref() == Some("ls-refs") || normalized.names_refs;
    if let Some(forwarded) = &git.forwarded {
        forwarded.check(&route, refs_matter)?;
    }
    let span = tracing::Span::current();
    let expected = normalized
        .expected
        .filter(|_| !(refs_matter && route.write_in_flight));
    if let (Some(cache), Some(expected)) = (&state.cache, expected) {
        let key = cache_key(
            repo,
            Service::UploadPack,
            version,
            route.generation,
            &normalized.canonical,
        );
        span.record("key", &key.to_hex()[..16]);
        let upstream = Producer {
            // In a fleet, the key's owner produces it, and this cache takes its answer.
            owner: owner_of(state.peers.as_ref(), git, &key),
            cluster: state.cluster.clone(),
            route: route.clone(),
            git: git.clone(),
            repo: repo.clone(),
            body: held.clone(),
            limiter: state.limiter.clone(),
            expected,
        }
        .into_upstream();
        match cache.fetch(key, upstream).await {
            Fetch::Hit(reader) => {
                span.record("cache", "hit");
                return cached_response(reader, send_queue, false, key).await;
            }
            Fetch::Miss(reader) => {
                span.record("cache", "miss");
                // The producer (a detached task) calls this node first for the entry.
                if let Some(&first) = route.candidates().first() {
                    span.record("node", state.cluster.node_name(first));
                }
                return cached_response(reader, send_queue, true, key).await;
            }
            Fetch::Bypass(reason) => {
                span.record("cache", "bypass");
                tracing::debug!(reason = reason.label(), "pack cache bypassed");
            }
        }
    } else {
        span.record("cache", "none");
    }
    let from_node = async {
        let slot = state.limiter.acquire(repo, &git.client()).await?;
        let asked = std::time::Instant::now();
        let stream = state
            .cluster
            .upload_pack(&route, git.call(repo, Service::UploadPack), body)
            .await?;
        state.limiter.observe_ttfb(asked.elapsed());
        Ok::<_, AppError>(holding(boxed(stream), slot))
    };
    if let (Some(adverts), Some("ls-refs")) = (&state.adverts, normalized.command.as_deref()) {
        let key = advert_key(
            Kind::LsRefs,
            repo,
            route.generation,
            git.protocol.as_ref(),
            &normalized.canonical,
        );
        // In a fleet, the key's owner asks the node, and this cache takes its answer.
        let owner = owner_of(state.peers.as_ref(), git, &key);
        let fetch = async {
            if let Some(owner) = &owner {
                let what = Forward::UploadPack {
                    body: body.clone(),
                    generation: route.generation,
                };
                if let Some(stream) = from_owner(owner, git, repo, what).await? {
                    return Ok(stream);
                }
            }
            from_node.await
        };
        let answer = adverts
            .answer(Kind::LsRefs, key, !route.write_in_flight, fetch)
            .await?;
        return Ok(advert_response(
            answer,
            Service::UploadPack.result_content_type(),
        ));
    }
    Ok(git_response(
        from_node.await?,
        Service::UploadPack.result_content_type(),
        true,
    ))
}

/// The owner's answer as a response body stream; `None` when the owner could not give
/// one (produce it here). A 429 from the owner's limits is the fleet's answer.
pub(super) async fn from_owner(
    owner: &Owner,
    git: &GitRequest,
    repo: &RepoPath,
    what: Forward,
) -> Result<Option<BodyStream>, AppError> {
    match owner.ask(git, repo, what).await {
        Ok(OwnerAnswer::Stream { body, .. }) => {
            Ok(Some(Box::pin(body.map_err(|e| Box::new(e) as BoxError))))
        }
        Ok(OwnerAnswer::Limited(limit)) => Err(limit.into()),
        Err(_produce_here) => Ok(None),
    }
}

/// The producer of a cache entry: the same upload-pack call, owned so it can outlive
/// the request that started it.
struct Producer {
    /// The key's owner in a fleet: asked first, instead of a node.
    owner: Option<Owner>,
    cluster: Arc<Cluster>,
    route: ReadRoute,
    git: GitRequest,
    repo: RepoPath,
    /// The request body, holding its share of the fetch-body budget until the
    /// producer is done with it.
    body: Arc<HeldBody>,
    limiter: Arc<FetchLimits>,
    /// The shape of git's complete answer: anything else fails the entry (I3), so
    /// an answer that is not a whole final response is never served from the cache.
    expected: Expected,
}

impl Producer {
    fn into_upstream(self) -> impl FnOnce() -> gitgate_packcache::Upstream {
        let Producer {
            owner,
            cluster,
            route,
            git,
            repo,
            body,
            limiter,
            expected,
        } = self;
        move || {
            Box::pin(async move {
                if let Some(owner) = &owner {
                    let what = Forward::UploadPack {
                        body: body.bytes.clone(),
                        generation: route.generation,
                    };
                    match owner.ask(&git, &repo, what).await {
                        // The owner holds the node slots; its answer is checked here
                        // as a node's would be, but for a hash the owner checked. A
                        // raw pack (v0 without side-band) has no framing to end it, so
                        // only its hash shows that a copy is whole.
                        Ok(OwnerAnswer::Stream { body, pack_checked }) => {
                            let raw = expected.framing == Framing::V0 { sideband: false };
                            let check = if pack_checked && !raw {
                                ResponseCheck::without_hash(expected)
                            } else {
                                ResponseCheck::new(expected)
                            };
                            return Ok(checked(Box::pin(body.map_err(UpstreamError::new)), check));
                        }
                        Ok(OwnerAnswer::Limited(limit)) => return Err(UpstreamError::new(limit)),
                        // Counted and logged: produce it here.
                        Err(_) => {}
                    }
                }
                // The producer takes the repository's slot; its readers share it.
                // The client that started production holds the slots its readers share.
                let slot = limiter
                    .acquire(&repo, &git.client())
                    .await
                    .map_err(UpstreamError::new)?;
                let asked = std::time::Instant::now();
                let stream = cluster
                    .upload_pack(&route, git.call(&repo, Service::UploadPack), &body.bytes)
                    .await
                    .map_err(UpstreamError::new)?;
                limiter.observe_ttfb(asked.elapsed());
                let stream = stream.map(move |item| {
                    let _held_until_the_stream_ends = &slot;
                    item.map_err(UpstreamError::new)
                });
                Ok(checked(Box::pin(stream), ResponseCheck::new(expected)))
            })
        }
    }
}

/// Pass `stream` through, checking with `check` that it is a complete final response;
/// if it is not, end with an error instead of a clean end, so the entry fails and is
/// never served.
fn checked(stream: ByteStream, check: ResponseCheck) -> ByteStream {
    struct Checking {
        stream: ByteStream,
        check: Option<ResponseCheck>,
    }
    let state = Checking {
        stream,
        check: Some(check),
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

/// Marks a response served from the pack cache for `key`: its bytes passed the
/// completeness check as they were produced, pack hash included, unless the entry was
/// made from a fleet owner's copy (the peer layer knows which keys those can be, see
/// `Peers::vouches_for`). A fleet owner tells the forwarding gateway so. It vouches
/// for the bytes as produced: a copy corrupted later (on disk, or on the wire past
/// TCP's checksum) is caught by the client's own pack check, not by the forwarder's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PackChecked(pub(crate) CacheKey);

/// Answer from a cache reader: wait for the first bytes so a failure before any output
/// still gets a proper status. An entry already complete is announced with its length;
/// on a plaintext connection its bytes go out with `sendfile` ([`crate::zero_copy`]).
async fn cached_response(
    reader: Reader,
    send_queue: Option<Arc<SendQueue>>,
    generated: bool,
    key: CacheKey,
) -> Result<Response, AppError> {
    let len = reader.complete_len();
    let mut stream = Box::pin(zero_copy::body(reader, send_queue));
    let first = match stream.next().await {
        None => Bytes::new(),
        Some(Ok(first)) => first,
        Some(Err(err)) => return Err(read_error(err)),
    };
    let rest = stream.map_err(|e| Box::new(e) as BoxError);
    let body: BodyStream =
        Box::pin(futures_util::stream::once(async move { Ok(first) }).chain(rest));
    let mut resp = git_response_of_len(
        body,
        Service::UploadPack.result_content_type(),
        generated,
        len,
    );
    resp.extensions_mut().insert(PackChecked(key));
    Ok(resp)
}

fn read_error(err: ReadError) -> AppError {
    if let Some(limit) = err
        .upstream()
        .and_then(|up| up.downcast_ref::<LimitError>())
    {
        return AppError::from(*limit);
    }
    match err
        .upstream()
        .and_then(|up| up.downcast_ref::<ClusterError>())
    {
        Some(ClusterError::NotFound(_)) => AppError::RepoNotFound,
        Some(ClusterError::Node(client)) if client.is_not_found() => AppError::RepoNotFound,
        Some(ClusterError::Node(client)) if client.refusal().is_some() => {
            AppError::Refused(client.refusal().unwrap_or_default().to_owned())
        }
        Some(ClusterError::Unavailable(message)) => AppError::NoReplica(message.clone()),
        Some(ClusterError::Node(client)) if client.is_unavailable() => {
            AppError::Unavailable(Box::new(err))
        }
        _ => AppError::NodeFailed(Box::new(err)),
    }
}
