//! [`GitCall`]: the parameters of one git service call on a node, shared by the
//! in-process and the remote client.

use gitgate_proto::{GitProtocol, RepoPath, Service};

/// The parameters of one git call.
#[derive(Debug, Clone, Copy)]
pub struct GitCall<'a> {
    /// The repository.
    pub repo: &'a RepoPath,
    /// The service.
    pub service: Service,
    /// The sanitized `Git-Protocol` value, if the client sent one.
    pub protocol: Option<&'a GitProtocol>,
    /// The request id, passed on to the node's logs.
    pub request_id: &'a str,
}
