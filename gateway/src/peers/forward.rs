//! The forwarding side: asking a key's owner for an authorized, parsed request and
//! handing its answer, as it streams, to this gateway's own cache (P2, P3, P4 in
//! [`super`]).

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use bytes::Bytes;
use futures_util::TryStreamExt;
use gitgate_proto::{RepoPath, Service};
use gitgate_storage_client::tokens::TokenScope;
use http_body_util::BodyDataStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{scope_subject, Peers, CLIENT_HEADER, PEER_PREFIX};
use crate::git::GitRequest;

/// How long connecting to a peer may take: peers share a network, so a peer that does
/// not accept within this is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle pooled connections are dropped before the owner's header timeout closes them.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// The HTTP client for peer endpoints.
pub(super) struct PeerClient(Client<HttpConnector, Body>);

impl PeerClient {
    pub(super) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Self(
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_timer(TokioTimer::new())
                .build(connector),
        )
    }
}

/// Why a fetch for another owner is served here after all.
#[derive(Debug, thiserror::Error)]
pub enum Fallback {
    /// The owner could not be reached (or the request could not be built).
    #[error("owner unreachable: {0}")]
    Unreachable(String),
    /// The owner sent no response headers within `cluster.first_byte_timeout`.
    #[error("owner sent nothing within the first-byte timeout")]
    Timeout,
    /// The owner answered, but not with a pack.
    #[error("owner answered {0}")]
    Status(StatusCode),
}

impl Fallback {
    fn label(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "fallback_unreachable",
            Self::Timeout => "fallback_timeout",
            Self::Status(_) => "fallback_status",
        }
    }
}

/// What is forwarded.
#[derive(Debug, Clone)]
pub enum Forward {
    /// An upload-pack request (a fetch, or a v2 `ls-refs`) with this body.
    UploadPack(Bytes),
    /// The upload-pack ref advertisement (`info/refs`).
    Advertisement,
}

impl Forward {
    fn method(&self) -> &'static str {
        match self {
            Self::UploadPack(_) => "POST",
            Self::Advertisement => "GET",
        }
    }

    fn path_and_query(&self, repo: &RepoPath) -> String {
        match self {
            Self::UploadPack(_) => format!("{PEER_PREFIX}{}/git-upload-pack", repo.as_str()),
            Self::Advertisement => format!(
                "{PEER_PREFIX}{}/info/refs?service=git-upload-pack",
                repo.as_str()
            ),
        }
    }
}

/// The owner's answer, before its body.
pub enum OwnerAnswer {
    /// The owner is sending the answer: its body, as it arrives.
    Stream(PeerStream),
    /// The owner's limits refused the forwarded client (429): the fleet's answer.
    Limited,
}

/// A body arriving from the owner; an error means it broke (P3).
pub type PeerStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, hyper::Error>> + Send>>;

impl Peers {
    /// Ask `owner` for `what` (already authorized for `git`'s client and parsed). `Err`
    /// means: produce it here (P2); it has been counted and logged.
    pub async fn ask(
        &self,
        owner: &str,
        git: &GitRequest,
        repo: &RepoPath,
        what: Forward,
    ) -> Result<OwnerAnswer, Fallback> {
        let answer = self.send(owner, git, repo, what).await;
        let label = match &answer {
            Ok(OwnerAnswer::Stream(_)) => "ok",
            Ok(OwnerAnswer::Limited) => "limited",
            Err(fallback) => {
                if matches!(fallback, Fallback::Unreachable(_) | Fallback::Timeout) {
                    self.suspect(owner);
                }
                tracing::warn!(owner, error = %fallback, "peer forward failed before the first byte; producing locally");
                fallback.label()
            }
        };
        self.metrics.count("forwarder", label);
        answer
    }

    async fn send(
        &self,
        owner: &str,
        git: &GitRequest,
        repo: &RepoPath,
        what: Forward,
    ) -> Result<OwnerAnswer, Fallback> {
        let path = what.path_and_query(repo);
        let client = git.client();
        let protocol = git.protocol.as_ref().map_or("", |p| p.as_str());
        let authority = owner.trim_start_matches("http://");
        let subject = scope_subject(&path, &client, protocol);
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
            .header(CLIENT_HEADER, &client);
        if !protocol.is_empty() {
            req = req.header("git-protocol", protocol);
        }
        let body = match what {
            Forward::UploadPack(body) => {
                req = req.header(
                    header::CONTENT_TYPE,
                    Service::UploadPack.request_content_type(),
                );
                Body::from(body)
            }
            Forward::Advertisement => Body::empty(),
        };
        let req = req
            .body(body)
            .map_err(|e| Fallback::Unreachable(format!("building the request: {e}")))?;
        let resp =
            tokio::time::timeout(self.settings.first_byte_timeout, self.client.0.request(req))
                .await
                .map_err(|_| Fallback::Timeout)?
                .map_err(|e| Fallback::Unreachable(error_chain(&e)))?;
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Ok(OwnerAnswer::Limited);
        }
        if status != StatusCode::OK {
            return Err(Fallback::Status(status));
        }
        let broken = self
            .metrics
            .requests
            .with_label_values(&["forwarder", "broken"]);
        let owner = owner.to_owned();
        let stream = BodyDataStream::new(resp.into_body()).inspect_err(move |err| {
            broken.inc();
            tracing::warn!(owner = %owner, error = %err, "peer answer broke mid-stream");
        });
        Ok(OwnerAnswer::Stream(Box::pin(stream)))
    }
}

/// An error and its sources on one line (hyper's outer errors say little alone).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
