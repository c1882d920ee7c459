//! The one place where failures become HTTP responses.
//!
//! Before a response body starts, git shows a short `text/plain` body to its user; so
//! every variant gets a status and a short reason. Client faults are logged at debug,
//! our faults and the storage tier's at warn/error, once, here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gitgate_proto::repo_path::InvalidRepoPath;
use gitgate_proto::request::ParseError;
use gitgate_storage_client::cluster::ClusterError;
use gitgate_storage_client::ClientError;

/// Everything a git request can fail with before its response body starts.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Not a smart-HTTP git path.
    #[error("not found")]
    NotGit,
    /// The repository path is not acceptable.
    #[error("invalid repository path: {0}")]
    BadRepoPath(#[from] InvalidRepoPath),
    /// `info/refs` without a smart `service` parameter (dumb HTTP).
    #[error("only smart HTTP is supported; use a git client newer than 1.6.6")]
    DumbHttp,
    /// Wrong method for the endpoint, which allows only `allow`.
    #[error("method not allowed (use {allow})")]
    MethodNotAllowed {
        /// The method the endpoint takes (sent in `Allow`).
        allow: &'static str,
    },
    /// The repository does not exist.
    #[error("repository not found")]
    RepoNotFound,
    /// No or unknown credentials.
    #[error("authentication required")]
    Unauthenticated,
    /// Known client without the scope.
    #[error("you do not have {permission} access to this repository")]
    Forbidden {
        /// `read` or `write`.
        permission: &'static str,
    },
    /// The per-repository queue is full.
    #[error("too many fetches of this repository are waiting; try again shortly")]
    QueueFull,
    /// Waited too long in the per-repository queue.
    #[error("timed out waiting for a free slot for this repository; try again shortly")]
    QueueTimeout,
    /// This client's queue is full.
    #[error("too many of your fetches are waiting; try again shortly")]
    ClientQueueFull,
    /// Waited too long in this client's queue.
    #[error("timed out waiting for one of your fetches to finish; try again shortly")]
    ClientQueueTimeout,
    /// The request body is not a valid git request.
    #[error("malformed request: {0}")]
    BadRequest(#[from] ParseError),
    /// A protocol v2 command upload-pack does not serve.
    #[error("unsupported protocol v2 command {0:?}")]
    UnsupportedCommand(String),
    /// The request body could not be read (client went away, bad gzip).
    #[error("reading request body: {0}")]
    BodyRead(String),
    /// The request body is larger than allowed.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: u64,
    },
    /// A gzip request body inflates by more than the allowed ratio.
    #[error("gzip request body inflates more than {limit} times")]
    GzipRatio {
        /// `limits.max_gzip_ratio`.
        limit: u64,
    },
    /// Fetch bodies in memory across all requests are at `limits.fetch_body_budget`.
    #[error("too many large fetch requests at once; try again shortly")]
    FetchBodyBudget,
    /// The storage node cannot be reached.
    #[error("storage unavailable, try again later")]
    Unavailable(#[source] BoxError),
    /// No replica that could serve the request is available.
    #[error("{0}")]
    NoReplica(String),
    /// Another write holds the repository.
    #[error("repository is busy with another write; try again shortly")]
    Busy,
    /// git refused the fetch before answering (upload-pack died on the request: a
    /// `deepen-not` naming no ref, a `want` no replica has): what git said. Answered
    /// the way git answers it, as an `ERR` pkt-line its client shows as "remote error".
    #[error("{0}")]
    Refused(String),
    /// The storage node failed before answering.
    #[error("storage node failed")]
    NodeFailed(#[source] BoxError),
    /// A request to the peer endpoint without a valid fleet token.
    #[error("peer authentication failed")]
    PeerRefused(#[from] gitgate_storage_client::tokens::AuthError),
    /// A forwarded request for a state of the repository this gateway does not see.
    #[error("this gateway sees another state of the repository")]
    PeerStale,
}

/// A boxed error kept as the source of a storage failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl From<ClientError> for AppError {
    fn from(err: ClientError) -> Self {
        if err.is_not_found() {
            Self::RepoNotFound
        } else if let Some(message) = err.refusal() {
            Self::Refused(message.to_owned())
        } else if let ClientError::RequestBody { reason, .. } = &err {
            Self::BodyRead(reason.clone())
        } else if err.is_unavailable() {
            Self::Unavailable(Box::new(err))
        } else {
            Self::NodeFailed(Box::new(err))
        }
    }
}

impl From<ClusterError> for AppError {
    fn from(err: ClusterError) -> Self {
        match err {
            ClusterError::NotFound(_) => Self::RepoNotFound,
            ClusterError::Unavailable(message) => Self::NoReplica(message),
            ClusterError::Busy(_) => Self::Busy,
            quorum @ ClusterError::QuorumNotReached { .. } => Self::NoReplica(quorum.to_string()),
            ClusterError::Node(client) => client.into(),
            other => Self::Unavailable(Box::new(other)),
        }
    }
}

impl From<crate::limits::LimitError> for AppError {
    fn from(err: crate::limits::LimitError) -> Self {
        use crate::limits::{LimitError, Scope};
        match err {
            LimitError::QueueFull(Scope::Repository) => Self::QueueFull,
            LimitError::Timeout(Scope::Repository) => Self::QueueTimeout,
            LimitError::QueueFull(Scope::Client) => Self::ClientQueueFull,
            LimitError::Timeout(Scope::Client) => Self::ClientQueueTimeout,
        }
    }
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NotGit | Self::RepoNotFound => StatusCode::NOT_FOUND,
            Self::BadRepoPath(_)
            | Self::BadRequest(_)
            | Self::BodyRead(_)
            | Self::GzipRatio { .. }
            | Self::UnsupportedCommand(_) => StatusCode::BAD_REQUEST,
            Self::DumbHttp | Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::Unauthenticated | Self::PeerRefused(_) => StatusCode::UNAUTHORIZED,
            Self::QueueFull | Self::ClientQueueFull => StatusCode::TOO_MANY_REQUESTS,
            Self::QueueTimeout | Self::ClientQueueTimeout => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) | Self::NoReplica(_) | Self::Busy | Self::FetchBodyBudget => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::NodeFailed(_) => StatusCode::BAD_GATEWAY,
            // The answer git gives: a response whose body is its `ERR` line.
            Self::Refused(_) => StatusCode::OK,
            Self::PeerStale => StatusCode::CONFLICT,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let Self::Refused(message) = &self {
            return refusal_response(message);
        }
        let status = self.status();
        match &self {
            Self::Unavailable(source) | Self::NodeFailed(source) => {
                tracing::warn!(error = %source, status = status.as_u16(), "storage failure");
            }
            Self::NoReplica(reason) => {
                tracing::warn!(error = %reason, status = status.as_u16(), "storage failure");
            }
            Self::PeerRefused(reason) => {
                tracing::warn!(error = %reason, "refused a peer request");
            }
            other => tracing::debug!(error = %other, status = status.as_u16(), "refused request"),
        }
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response();
        let limit = match &self {
            Self::QueueFull | Self::QueueTimeout => Some("repository"),
            Self::ClientQueueFull | Self::ClientQueueTimeout => Some("client"),
            _ => None,
        };
        if let Some(limit) = limit {
            // A forwarding gateway passes a limit's refusal on (see `peers`).
            resp.headers_mut()
                .insert(crate::peers::LIMIT_HEADER, HeaderValue::from_static(limit));
        }
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if let Self::MethodNotAllowed { allow } = &self {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if status == StatusCode::UNAUTHORIZED {
            // Lets git's credential helpers ask for a user name and token.
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"gitgate\""),
            );
        }
        resp
    }
}

/// git's refusal of a fetch, as git's own upload-pack answers it: one `ERR` pkt-line,
/// which git clients report as "remote error: <message>" in protocol v0 and v2.
fn refusal_response(message: &str) -> Response {
    tracing::info!(%message, "git refused the request");
    let mut body = Vec::new();
    gitgate_proto::pktline::encode_error(&mut body, message);
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                gitgate_proto::Service::UploadPack.result_content_type(),
            ),
            (
                header::CACHE_CONTROL,
                "no-cache, max-age=0, must-revalidate",
            ),
        ],
        body,
    )
        .into_response()
}
