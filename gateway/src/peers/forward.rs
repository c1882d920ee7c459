//! The forwarding side: asking a key's owner for an authorized, parsed request and
//! handing its answer, as it streams, to this gateway's own cache (P2, P3, P4 in
//! [`super`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use gitgate_proto::{RepoPath, Service};
use gitgate_storage_client::tokens::TokenScope;
use http_body_util::BodyDataStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{
    encode_client, scope_subject, Peers, CLIENT_HEADER, GENERATION_HEADER, LIMIT_HEADER,
    PACK_CHECKED_HEADER, PEER_PREFIX,
};
use crate::git::GitRequest;

/// How long connecting to a peer may take: peers share a network, so a peer that does
/// not accept within this is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// TCP keepalive on peer connections, so a vanished peer is noticed by the kernel too.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// Idle pooled connections are dropped before the owner's header timeout closes them.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// The HTTP client for peer endpoints.
pub(super) struct PeerClient(Client<HttpConnector, Body>);

impl PeerClient {
    pub(super) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(KEEPALIVE));
        Self(
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_timer(TokioTimer::new())
                .build(connector),
        )
    }
}

/// Why an answer another gateway owns is produced here after all.
#[derive(Debug, thiserror::Error)]
pub enum Fallback {
    /// The request could not be built (a client name that is not a header value).
    #[error("building the peer request")]
    Request(#[source] axum::http::Error),
    /// The owner could not be reached.
    #[error("owner unreachable")]
    Unreachable(#[source] hyper_util::client::legacy::Error),
    /// The owner sent no response headers within `cluster.first_byte_timeout`.
    #[error("owner sent nothing within the first-byte timeout")]
    Timeout,
    /// The owner refused this gateway's token: the fleet's secrets (or clocks) differ.
    #[error("owner refused the fleet token (check cluster.secret and the clocks)")]
    Refused,
    /// The owner sees another generation of the repository, or a write in flight
    /// where that matters: its answer would not belong under this key.
    #[error("owner sees another state of the repository")]
    Stale,
    /// git refused the request at the owner (422): the request is at fault, and this
    /// gateway's nodes will say so to its client.
    #[error("git refused the request at the owner")]
    GitRefused,
    /// The owner answered, but not with the answer.
    #[error("owner answered {0}")]
    Status(StatusCode),
}

impl Fallback {
    fn label(&self) -> &'static str {
        match self {
            Self::Request(_) => "fallback_request",
            Self::Unreachable(_) => "fallback_unreachable",
            Self::Timeout => "fallback_timeout",
            Self::Refused => "fallback_refused",
            Self::Stale => "fallback_stale",
            Self::GitRefused => "fallback_git_refused",
            Self::Status(_) => "fallback_status",
        }
    }
}

/// What is forwarded, with the generation the forwarding gateway keys it under (the
/// owner answers 409 when it sees another, see [`Fallback::Stale`]).
#[derive(Debug, Clone)]
pub enum Forward {
    /// An upload-pack request (a fetch, or a v2 `ls-refs`) with this body.
    UploadPack {
        /// The request body.
        body: Bytes,
        /// The repository's generation in the key.
        generation: i64,
    },
    /// The upload-pack ref advertisement (`info/refs`).
    Advertisement {
        /// The repository's generation in the key.
        generation: i64,
    },
}

impl Forward {
    fn method(&self) -> &'static str {
        match self {
            Self::UploadPack { .. } => "POST",
            Self::Advertisement { .. } => "GET",
        }
    }

    fn generation(&self) -> i64 {
        match self {
            Self::UploadPack { generation, .. } | Self::Advertisement { generation } => *generation,
        }
    }

    fn path_and_query(&self, repo: &RepoPath) -> String {
        match self {
            Self::UploadPack { .. } => format!("{PEER_PREFIX}{}/git-upload-pack", repo.as_str()),
            Self::Advertisement { .. } => format!(
                "{PEER_PREFIX}{}/info/refs?service=git-upload-pack",
                repo.as_str()
            ),
        }
    }
}

/// The owner's answer, before its body.
pub enum OwnerAnswer {
    /// The owner is sending the answer: its body, as it arrives.
    Stream {
        /// The body.
        body: PeerStream,
        /// Whether the owner checked its pack's hash ([`PACK_CHECKED_HEADER`]).
        pack_checked: bool,
    },
    /// The owner's limits refused the forwarded client: the fleet's answer, passed on.
    Limited(crate::limits::LimitError),
}

/// Why a body arriving from the owner broke (P3).
#[derive(Debug, thiserror::Error)]
pub enum PeerStreamError {
    /// The connection failed.
    #[error("peer answer broke")]
    Broken(#[source] hyper::Error),
    /// Nothing arrived for `cluster.first_byte_timeout`.
    #[error("peer answer stalled")]
    Stalled,
}

/// A body arriving from the owner; an error means it broke (P3).
pub type PeerStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, PeerStreamError>> + Send>>;

impl Peers {
    /// Ask `owner` for `what` (already authorized for `git`'s client and parsed). `Err`
    /// means: produce it here (P2); it has been counted and logged.
    pub async fn ask(
        self: &Arc<Self>,
        owner: &str,
        git: &GitRequest,
        repo: &RepoPath,
        what: Forward,
    ) -> Result<OwnerAnswer, Fallback> {
        let answer = self.send(owner, git, repo, what).await;
        let label = match &answer {
            Ok(OwnerAnswer::Stream { .. }) => "ok",
            Ok(OwnerAnswer::Limited(_)) => "limited",
            Err(fallback) => {
                match fallback {
                    // Down or partitioned: skip it for a while (P4).
                    Fallback::Unreachable(_) | Fallback::Timeout => self.suspect(owner),
                    // Misconfigured: every request would say so; once per owner.
                    Fallback::Refused if self.note_refusal(owner) => {
                        tracing::error!(owner, "a fleet member refuses this gateway's token: cluster.secret or the clocks differ; producing its keys locally");
                    }
                    _ => {}
                }
                if matches!(fallback, Fallback::GitRefused) {
                    tracing::debug!(owner, "git refused the request at the owner; asking here");
                } else {
                    tracing::warn!(owner, error = %fallback, source = ?std::error::Error::source(fallback), "peer request failed before the first byte; producing locally");
                }
                fallback.label()
            }
        };
        self.metrics.count("forwarder", label);
        answer
    }

    async fn send(
        self: &Arc<Self>,
        owner: &str,
        git: &GitRequest,
        repo: &RepoPath,
        what: Forward,
    ) -> Result<OwnerAnswer, Fallback> {
        let path = what.path_and_query(repo);
        let client = encode_client(&git.client());
        let protocol = git.protocol.as_ref().map_or("", |p| p.as_str());
        let generation = what.generation().to_string();
        let authority = owner.trim_start_matches("http://");
        let subject = scope_subject(&path, &client, protocol, &generation);
        let token = self.secret.token(
            authority,
            TokenScope::Request {
                method: what.method(),
                path_and_query: &subject,
            },
            SystemTime::now(),
        );
        let mut req = Request::builder()
            .method(what.method())
            .uri(format!("{owner}{path}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header("x-request-id", &git.request_id)
            .header(CLIENT_HEADER, &client)
            .header(GENERATION_HEADER, &generation);
        if !protocol.is_empty() {
            req = req.header("git-protocol", protocol);
        }
        let body = match what {
            Forward::UploadPack { body, .. } => {
                req = req.header(
                    header::CONTENT_TYPE,
                    Service::UploadPack.request_content_type(),
                );
                Body::from(body)
            }
            Forward::Advertisement { .. } => Body::empty(),
        };
        let req = req.body(body).map_err(Fallback::Request)?;
        let resp =
            tokio::time::timeout(self.settings.first_byte_timeout, self.client.0.request(req))
                .await
                .map_err(|_| Fallback::Timeout)?
                .map_err(Fallback::Unreachable)?;
        let status = resp.status();
        if let Some(limit) = owner_limit(&resp) {
            return Ok(OwnerAnswer::Limited(limit));
        }
        match status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => return Err(Fallback::Refused),
            StatusCode::CONFLICT => return Err(Fallback::Stale),
            StatusCode::UNPROCESSABLE_ENTITY => return Err(Fallback::GitRefused),
            other => return Err(Fallback::Status(other)),
        }
        let pack_checked = resp.headers().contains_key(PACK_CHECKED_HEADER);
        Ok(OwnerAnswer::Stream {
            body: self.watched(owner, resp.into_body()),
            pack_checked,
        })
    }

    /// The owner's body as a stream that fails (P3) when the connection breaks or
    /// nothing arrives for `cluster.first_byte_timeout` (a partitioned owner), counting
    /// the break and skipping the owner for a while.
    fn watched(self: &Arc<Self>, owner: &str, body: hyper::body::Incoming) -> PeerStream {
        let stall = self.settings.first_byte_timeout;
        let broken = self
            .metrics
            .requests
            .with_label_values(&["forwarder", "broken"]);
        let owner = owner.to_owned();
        let peers = self.clone();
        let chunks = BodyDataStream::new(body);
        Box::pin(futures_util::stream::unfold(
            (Box::pin(chunks), false),
            move |(mut chunks, done)| {
                let (broken, owner, peers) = (broken.clone(), owner.clone(), peers.clone());
                async move {
                    if done {
                        return None;
                    }
                    let failed = match tokio::time::timeout(stall, chunks.next()).await {
                        Ok(None) => return None,
                        Ok(Some(Ok(chunk))) => return Some((Ok(chunk), (chunks, false))),
                        Ok(Some(Err(err))) => PeerStreamError::Broken(err),
                        Err(_) => PeerStreamError::Stalled,
                    };
                    broken.inc();
                    peers.suspect(&owner);
                    tracing::warn!(owner = %owner, error = %failed, "peer answer broke mid-stream");
                    Some((Err(failed), (chunks, true)))
                }
            },
        ))
    }
}

/// A limit's refusal from the owner (429, or 503 marked as the limits'), as the limit
/// error it stands for.
fn owner_limit<B>(resp: &axum::http::Response<B>) -> Option<crate::limits::LimitError> {
    use crate::limits::{LimitError, Scope};
    let limit = resp.headers().get(LIMIT_HEADER)?.to_str().ok()?;
    let scope = if limit.starts_with("client") {
        Scope::Client
    } else {
        Scope::Repository
    };
    match resp.status() {
        StatusCode::TOO_MANY_REQUESTS => Some(LimitError::QueueFull(scope)),
        StatusCode::SERVICE_UNAVAILABLE => Some(LimitError::Timeout(scope)),
        _ => None,
    }
}
