//! [`Cluster`]: the replicated storage tier as the gateway's request path sees it.
//!
//! It joins the nodes, their health and the replica metadata, and decides:
//! - where a read goes and the read itself ([`read`]): healthy replicas that hold the
//!   repository's current generation, rotated so load spreads, never a stale one, with
//!   failover before the first byte; the choices are pure functions ([`routing`]);
//! - where a write goes ([`write`]): the primary, under the repository's lock, with a
//!   write marker recorded before it starts and the generation bumped after it;
//! - how copies catch up ([`replicate`]): jobs run by workers, or at once in `sync` mode;
//! - what generations are recorded (`generations`, the only writer, whose rules are
//!   stated there);
//! - how the metadata is kept honest ([`repair`]): discovery of repositories on the
//!   nodes, resolution of markers left by a crashed gateway, and a reconciler that
//!   queues outdated replicas and compares ref checksums to find drift.

mod create;
mod delete;
mod generations;
mod metrics;
pub mod placement;
pub mod read;
pub mod repair;
pub mod replicate;
pub mod routing;
pub mod write;

use std::sync::Arc;
use std::time::Duration;

use gitgate_proto::RepoPath;

use crate::client::NodeClient;
use crate::error::ClientError;
use crate::health::HealthMonitor;
use crate::metadata::{MetadataStore, RepoRecord, StoreError};
use crate::nodes::{NodeId, NodeSet};
pub use metrics::ClusterMetrics;
pub use read::ReadRoute;
pub use write::PushGuard;

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationMode {
    /// Once the primary holds it; the other replicas catch up in the background.
    Async,
    /// Once a majority of the replicas hold it.
    Sync,
}

/// How the cluster behaves.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Copies per repository (capped by the number of nodes).
    pub replication_factor: usize,
    /// When writes are acknowledged.
    pub mode: ReplicationMode,
    /// How long a write waits for the repository's lock.
    pub lock_timeout: Duration,
    /// How long a node's git output (an advertisement, a pack, a push's report) may
    /// send nothing before it is cut off as stalled.
    pub stream_idle_timeout: Duration,
    /// How often the reconciler looks at every repository.
    pub reconcile_interval: Duration,
    /// Replication jobs run at once by this gateway.
    pub workers: usize,
    /// Longest wait between retries of a failing job.
    pub max_retry_delay: Duration,
    /// Whether a push to a missing repository creates it.
    pub create_on_push: bool,
    /// This gateway's name in leases and write markers.
    pub owner: String,
}

/// Why the cluster could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No node has the repository.
    #[error("repository {0} not found")]
    NotFound(RepoPath),
    /// No replica that could serve is available.
    #[error("{0}")]
    Unavailable(String),
    /// Another write holds the repository's lock for too long.
    #[error("repository {0} is busy with another write; try again")]
    Busy(RepoPath),
    /// A write reached fewer replicas than `sync` mode requires.
    #[error("the push reached {got} of the {needed} replicas required; it is kept and will be replicated, but was not acknowledged")]
    QuorumNotReached {
        /// Replicas holding it.
        got: usize,
        /// Replicas required.
        needed: usize,
    },
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A node failed.
    #[error(transparent)]
    Node(#[from] ClientError),
}

impl ClusterError {
    fn from_lock(err: StoreError) -> Self {
        match err {
            StoreError::LockTimeout(repo) => Self::Busy(repo),
            other => Self::Store(other),
        }
    }
}

/// The storage tier.
pub struct Cluster {
    nodes: NodeSet,
    health: Arc<HealthMonitor>,
    store: Arc<dyn MetadataStore>,
    settings: ClusterSettings,
    metrics: ClusterMetrics,
    /// What reads keep: how they spread.
    reads: read::ReadState,
    /// What replication keeps: the workers' wake-up and the copies running here.
    replication: replicate::ReplicationState,
    /// What repair keeps: when unresolved write markers may be tried again.
    repair: repair::RepairState,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.nodes)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Cluster {
    /// A cluster over `nodes` (whose health `health` tracks) with `store` as metadata.
    pub fn new(
        nodes: NodeSet,
        health: Arc<HealthMonitor>,
        store: Arc<dyn MetadataStore>,
        settings: ClusterSettings,
        metrics: ClusterMetrics,
    ) -> Self {
        Self {
            nodes,
            health,
            store,
            settings,
            metrics,
            reads: read::ReadState::default(),
            replication: replicate::ReplicationState::default(),
            repair: repair::RepairState::default(),
        }
    }

    /// The nodes.
    pub fn nodes(&self) -> &NodeSet {
        &self.nodes
    }

    /// Node `id`'s client.
    pub(crate) fn node(&self, id: NodeId) -> &NodeClient {
        self.nodes.get(id)
    }

    /// Node `id`'s configured name.
    pub fn node_name(&self, id: NodeId) -> &str {
        self.nodes.get(id).name()
    }

    /// Their health.
    pub fn health(&self) -> &Arc<HealthMonitor> {
        &self.health
    }

    /// The metadata store.
    pub fn store(&self) -> &Arc<dyn MetadataStore> {
        &self.store
    }

    /// The settings.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    fn index_of(&self, name: &str) -> Option<NodeId> {
        self.nodes.find(name)
    }

    fn healthy(&self, id: NodeId) -> bool {
        self.health.is_healthy(id)
    }

    /// `record`'s replicas on nodes this gateway has configured.
    fn configured_replicas<'r>(
        &self,
        record: &'r RepoRecord,
    ) -> impl Iterator<Item = &'r crate::metadata::ReplicaRecord> + use<'r, '_> {
        record
            .replicas
            .iter()
            .filter(|r| self.index_of(&r.node).is_some())
    }

    /// The record of `repo`, registering it first when a node has it but the metadata
    /// does not, and resolving a write marker a crashed gateway left.
    async fn record(&self, repo: &RepoPath) -> Result<RepoRecord, ClusterError> {
        let record = match self.store.get(repo).await? {
            Some(record) => record,
            None => {
                if !self.discover_one(repo).await? {
                    return Err(ClusterError::NotFound(repo.clone()));
                }
                self.store
                    .get(repo)
                    .await?
                    .ok_or_else(|| ClusterError::NotFound(repo.clone()))?
            }
        };
        let Some(marker) = &record.write else {
            return Ok(record);
        };
        // A marker whose node is down is left alone (reads use the replicas that serve
        // meanwhile); one whose node is up is tried with backoff, not by every request.
        if self
            .index_of(&marker.node)
            .is_some_and(|node| !self.healthy(node))
            || !self.repair.marker_retry.due(repo)
        {
            return Ok(record);
        }
        // A marker with the lock free belongs to a write that will never finish.
        let Some(lock) = self.store.try_lock(repo).await? else {
            return Ok(record);
        };
        let record = self.resolve_marker(repo).await?;
        drop(lock);
        if record.write.is_some() {
            self.repair.marker_retry.failed(repo);
        } else {
            self.repair.marker_retry.cleared(repo);
        }
        Ok(record)
    }

    /// Milliseconds since the epoch.
    fn now_ms() -> i64 {
        crate::metadata::now_ms()
    }
}
