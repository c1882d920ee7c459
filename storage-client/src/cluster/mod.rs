//! [`Cluster`]: the replicated storage tier as the gateway's request path sees it.
//!
//! It joins the nodes, their health and the replica metadata, and decides:
//! - where a read goes ([`Cluster::read_route`]): healthy replicas that hold the
//!   repository's current generation, rotated so load spreads, never a stale one;
//! - where a write goes ([`write`]): the primary, under the repository's lock, with a
//!   write marker recorded before it starts and the generation bumped after it;
//! - how copies catch up ([`replicate`]): jobs run by workers, or at once in `sync` mode;
//! - how the metadata is kept honest ([`repair`]): discovery of repositories on the
//!   nodes, resolution of markers left by a crashed gateway, and a reconciler that
//!   queues outdated replicas and compares ref checksums to find drift.

mod metrics;
pub mod placement;
pub mod repair;
pub mod replicate;
pub mod write;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gitgate_proto::RepoPath;

use crate::client::NodeClient;
use crate::error::ClientError;
use crate::health::HealthMonitor;
use crate::metadata::{MetadataStore, RepoRecord, StoreError};
use crate::nodes::NodeSet;
pub use metrics::ClusterMetrics;
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

/// The generation a newly registered repository starts at: the current time in
/// milliseconds, so a repository deleted and created again never reuses a generation
/// (pack cache keys contain it).
pub(crate) fn first_generation() -> i64 {
    crate::metadata::now_ms()
}

/// Where a read may go.
#[derive(Debug, Clone)]
pub struct ReadRoute {
    /// The repository's generation (part of the pack cache key).
    pub generation: i64,
    /// Node indexes to try in order: healthy and up to date.
    pub candidates: Vec<usize>,
}

/// The storage tier.
pub struct Cluster {
    nodes: NodeSet,
    health: Arc<HealthMonitor>,
    store: Arc<dyn MetadataStore>,
    settings: ClusterSettings,
    metrics: ClusterMetrics,
    rotation: AtomicUsize,
    /// Scrambles the rotation, so requests that come in fixed patterns (a clone is
    /// two or three reads) still spread.
    scramble: std::collections::hash_map::RandomState,
    /// Wakes the replication workers when jobs were queued.
    jobs_queued: tokio::sync::Notify,
    /// One replication at a time per (repository, target) in this process.
    replicating: crate::metadata::LocalLocks<(RepoPath, usize)>,
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
            rotation: AtomicUsize::new(0),
            scramble: std::collections::hash_map::RandomState::new(),
            jobs_queued: tokio::sync::Notify::new(),
            replicating: crate::metadata::LocalLocks::default(),
        }
    }

    /// The nodes.
    pub fn nodes(&self) -> &NodeSet {
        &self.nodes
    }

    /// Node `index`.
    pub fn node(&self, index: usize) -> &NodeClient {
        &self.nodes.nodes()[index]
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

    fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.nodes().iter().position(|n| n.name() == name)
    }

    fn healthy(&self, index: usize) -> bool {
        self.health.is_healthy(index)
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

    /// Node indexes of `record`'s healthy, up-to-date replicas, in node order.
    fn serving_replicas(&self, record: &RepoRecord) -> Vec<usize> {
        record
            .replicas
            .iter()
            .filter(|r| r.generation == record.generation)
            .filter_map(|r| self.index_of(&r.node))
            .filter(|&i| self.healthy(i))
            .collect()
    }

    /// Why nothing can serve `record`, for the 503 message.
    fn unavailable(&self, record: &RepoRecord, what: &str) -> ClusterError {
        let replicas: Vec<String> = record
            .replicas
            .iter()
            .map(|r| {
                let state = if r.generation != record.generation {
                    "out of date"
                } else if self.index_of(&r.node).is_some_and(|i| self.healthy(i)) {
                    "up"
                } else {
                    "down"
                };
                format!("{} {state}", r.node)
            })
            .collect();
        ClusterError::Unavailable(format!(
            "no up-to-date replica of {} can {what} right now (replicas: {})",
            record.repo,
            replicas.join(", ")
        ))
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
        if record.write.is_none() {
            return Ok(record);
        }
        // A marker with the lock free belongs to a write that will never finish.
        let Some(lock) = self.store.try_lock(repo).await? else {
            return Ok(record);
        };
        let record = self.resolve_marker(repo).await?;
        drop(lock);
        Ok(record)
    }

    /// Where a read of `repo` may go: healthy replicas holding the current generation,
    /// starting at a pseudo-random offset so reads spread over them.
    pub async fn read_route(&self, repo: &RepoPath) -> Result<ReadRoute, ClusterError> {
        let record = self.record(repo).await?;
        let mut candidates = self.serving_replicas(&record);
        if candidates.is_empty() {
            return Err(self.unavailable(&record, "serve reads"));
        }
        // While a push runs, its primary may already advertise refs the others lack:
        // keep every read on it, so a fetch never asks a replica for a ref it has not got.
        if let Some(writing) = record
            .write
            .as_ref()
            .and_then(|marker| self.index_of(&marker.node))
        {
            if candidates.contains(&writing) {
                candidates = vec![writing];
            }
        }
        let turn = self.rotation.fetch_add(1, Ordering::Relaxed);
        let spread = std::hash::BuildHasher::hash_one(&self.scramble, turn);
        let start = usize::try_from(spread % candidates.len() as u64).unwrap_or(0);
        candidates.rotate_left(start);
        Ok(ReadRoute {
            generation: record.generation,
            candidates,
        })
    }

    /// Milliseconds since the epoch.
    fn now_ms() -> i64 {
        crate::metadata::now_ms()
    }
}
