//! Errors talking to a storage node, classified so callers pick a response without
//! looking at messages.

use gitgate_proto::RepoPath;
use gitgate_storage_node::NodeError;

/// A failed call to a storage node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The repository does not exist on the node.
    #[error("repository {0} not found")]
    NotFound(RepoPath),
    /// The repository already exists on the node.
    #[error("repository {0} already exists")]
    AlreadyExists(RepoPath),
    /// The node could not be reached (connection refused, timeout, reset before a
    /// response).
    #[error("node {node} unreachable: {reason}")]
    Unavailable {
        /// The node's name.
        node: String,
        /// What went wrong.
        reason: String,
    },
    /// The node took the call but sent nothing within the time allowed (its git hung
    /// before answering). Another replica may serve; the node is not taken for down,
    /// since its other repositories may be fine.
    #[error("node {node} sent nothing for {waited:?}")]
    Silent {
        /// The node's name.
        node: String,
        /// How long it was waited for.
        waited: std::time::Duration,
    },
    /// The node answered with an error status.
    #[error("node {node} answered {status}: {message}")]
    Status {
        /// The node's name.
        node: String,
        /// HTTP status.
        status: u16,
        /// The start of the node's text.
        message: String,
    },
    /// The node's answer could not be decoded.
    #[error("node {node} sent an invalid answer: {reason}")]
    Decode {
        /// The node's name.
        node: String,
        /// What was wrong.
        reason: String,
    },
    /// The operation is not possible with this configuration.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// git refused the request before answering anything (upload-pack died on it):
    /// the request's fault, not the node's. `message` is what git said.
    #[error("node {node}: git refused the request: {message}")]
    Refused {
        /// The node's name.
        node: String,
        /// git's message.
        message: String,
    },
    /// The request's own body failed while it was sent to the node (the client went
    /// away, or sent more than allowed): not the node's fault.
    #[error("node {node}: the request body failed: {reason}")]
    RequestBody {
        /// The node's name.
        node: String,
        /// What went wrong.
        reason: String,
    },
    /// An in-process node failed.
    #[error("node {node}: {source}")]
    Local {
        /// The node's name.
        node: String,
        /// The error.
        #[source]
        source: NodeError,
    },
}

impl ClientError {
    /// The repository does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }

    /// The node is down, unreachable or not answering (another replica might serve).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Silent { .. })
    }

    /// What git said when it refused the request ([`ClientError::Refused`]).
    pub fn refusal(&self) -> Option<&str> {
        match self {
            Self::Refused { message, .. } => Some(message),
            _ => None,
        }
    }

    /// The node itself could not be reached: what the health monitor counts.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}
