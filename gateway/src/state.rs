//! What the request handlers share.

use std::sync::Arc;

use gitgate_packcache::PackCache;
use gitgate_storage_client::NodeSet;

use crate::generation::Generations;

/// Shared state of the handlers.
pub struct AppState {
    /// The storage nodes.
    pub nodes: NodeSet,
    /// `storage.create_on_push`.
    pub create_on_push: bool,
    /// `limits.max_fetch_request_bytes`.
    pub max_fetch_request_bytes: u64,
    /// The pack cache, when `cache.enabled`.
    pub cache: Option<PackCache>,
    /// Repository generations (part of every cache key).
    pub generations: Arc<Generations>,
    /// The registry `/-/metrics` exposes.
    pub registry: prometheus::Registry,
}
