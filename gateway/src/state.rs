//! What the request handlers share.

use std::sync::{Arc, RwLock};

use gitgate_packcache::PackCache;
use gitgate_storage_client::cluster::Cluster;

use crate::auth::AuthConfig;
use crate::limits::FetchLimits;
use crate::metrics::GatewayMetrics;

/// Shared state of the handlers.
pub struct AppState {
    /// The storage tier: nodes, health, replica metadata.
    pub cluster: Arc<Cluster>,
    /// `storage.create_on_push`.
    pub create_on_push: bool,
    /// Fetch bodies in memory: per-request size, the shared budget, the gzip ratio.
    pub fetch_bodies: crate::fetch_body::FetchBodies,
    /// `limits.max_push_bytes`.
    pub max_push_bytes: u64,
    /// The pack cache, when `cache.enabled`.
    pub cache: Option<PackCache>,
    /// The advertisement cache, when `cache.enabled`.
    pub adverts: Option<crate::advert_cache::AdvertCache>,
    /// The registry `/-/metrics` exposes.
    pub registry: prometheus::Registry,
    /// The request path's metric families.
    pub metrics: GatewayMetrics,
    /// Per-repository and per-client limits on node-bound fetches.
    pub limiter: Arc<FetchLimits>,
    /// The fleet, when this gateway is one of several (`[cluster]`).
    pub peers: Option<Arc<crate::peers::Peers>>,
    /// Who may do what; replaced as a whole on reload (SIGHUP).
    pub auth: RwLock<Arc<AuthConfig>>,
}

impl AppState {
    /// The current auth configuration.
    pub fn auth(&self) -> Arc<AuthConfig> {
        self.auth
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replace the auth configuration.
    pub fn set_auth(&self, auth: AuthConfig) {
        *self
            .auth
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(auth);
    }
}
