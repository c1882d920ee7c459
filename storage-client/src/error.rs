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

    /// The node itself is down or unreachable (another replica might serve).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}
