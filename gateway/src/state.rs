//! What the request handlers share.

use gitgate_storage_client::NodeSet;

/// Shared, read-only state of the git handlers.
#[derive(Debug)]
pub struct AppState {
    /// The storage nodes.
    pub nodes: NodeSet,
    /// `storage.create_on_push`.
    pub create_on_push: bool,
    /// `limits.max_fetch_request_bytes`.
    pub max_fetch_request_bytes: u64,
}
