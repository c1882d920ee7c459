//! Keeping the metadata true to the nodes.
//!
//! - Discovery: a repository found on the nodes but not in the metadata is registered.
//!   When copies disagree, the most recent one (newest branch tip, then the most copies
//!   agreeing) holds the first generation and the others are replicated from it; the
//!   disagreement is logged and counted, never silently resolved.
//! - Write markers: a marker whose repository lock is free belongs to a push whose
//!   gateway died. The primary's actual refs decide: changed refs are recorded as a
//!   write (the other replicas get jobs), unchanged refs just clear the marker.
//! - The reconciler, every `reconcile_interval`: queues jobs for replicas that are
//!   behind or missing, and compares the ref checksums of the up-to-date replicas.
//!   Replicas that disagree with the recorded state (a crash, a hand edit) are made
//!   outdated by recording a new generation without them, so they are repaired.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gitgate_proto::RepoPath;
use tokio_util::task::AbortOnDropHandle;

use super::{placement, Cluster, ClusterError};
use crate::metadata::{JobKind, NewRepo, QueueMode, ReplicaRecord, RepoRecord, NO_COPY};
use crate::nodes::NodeId;

/// What repair keeps between requests.
#[derive(Default)]
pub(super) struct RepairState {
    /// When a write marker that could not be resolved may be tried again.
    pub(super) marker_retry: MarkerRetry,
}

/// Backoff for resolving write markers whose node answers health checks but not the
/// repository's state: 1 s, doubling to 30 s, per repository.
#[derive(Default)]
pub(super) struct MarkerRetry(
    std::sync::Mutex<std::collections::HashMap<RepoPath, (tokio::time::Instant, Duration)>>,
);

impl MarkerRetry {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    pub(super) fn due(&self, repo: &RepoPath) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(repo)
            .is_none_or(|(at, _)| tokio::time::Instant::now() >= *at)
    }

    pub(super) fn failed(&self, repo: &RepoPath) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let wait = map
            .get(repo)
            .map_or(Self::FIRST, |(_, w)| (*w * 2).min(Self::MAX));
        tracing::info!(repo = %repo, retry_in = ?wait, "write marker not resolved; retrying later");
        map.insert(repo.clone(), (tokio::time::Instant::now() + wait, wait));
    }

    pub(super) fn cleared(&self, repo: &RepoPath) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(repo);
    }
}

/// Copies of one repository that have the same refs.
struct Agreeing {
    checksum: Option<String>,
    nodes: Vec<NodeId>,
    latest: Option<i64>,
}

/// Group `states` (node, checksum, newest tip) by checksum.
fn group(states: Vec<(NodeId, Option<String>, Option<i64>)>) -> Vec<Agreeing> {
    let mut groups: BTreeMap<Option<String>, Agreeing> = BTreeMap::new();
    for (index, checksum, latest) in states {
        let entry = groups.entry(checksum.clone()).or_insert(Agreeing {
            checksum,
            nodes: Vec::new(),
            latest: None,
        });
        entry.nodes.push(index);
        entry.latest = entry.latest.max(latest);
    }
    groups.into_values().collect()
}

impl Cluster {
    /// Register `repo` if a node has it; `false` when none does.
    pub async fn discover_one(&self, repo: &RepoPath) -> Result<bool, ClusterError> {
        let lock = self
            .store
            .lock(repo, self.settings.lock_timeout)
            .await
            .map_err(ClusterError::from_lock)?;
        let found = self.discover_locked(repo).await;
        drop(lock);
        found
    }

    /// [`Self::discover_one`] with the lock already held.
    pub(crate) async fn discover_locked(&self, repo: &RepoPath) -> Result<bool, ClusterError> {
        if self.store.get(repo).await?.is_some() {
            return Ok(true);
        }
        let healthy: Vec<NodeId> = self.nodes.ids().filter(|&i| self.healthy(i)).collect();
        let reads: Vec<_> = healthy
            .iter()
            .map(|&i| async move { (i, self.node(i).state(repo).await) })
            .collect();
        let states = futures_util::future::join_all(reads).await;
        let mut copies = Vec::new();
        let mut answered = 0;
        for (i, state) in states {
            if state.is_ok() {
                answered += 1;
            }
            match state {
                Ok(state) if state.exists => copies.push((i, state.checksum, state.latest)),
                Ok(_) => {}
                Err(err) => {
                    if err.is_unavailable() {
                        self.health.report_failure(i);
                    }
                    tracing::warn!(repo = %repo, node = self.node(i).name(), error = %err, "could not read repository state during discovery");
                }
            }
        }
        if copies.is_empty() {
            if answered == 0 {
                return Err(ClusterError::Unavailable(format!(
                    "cannot tell whether {repo} exists: no storage node is answering"
                )));
            }
            return Ok(false);
        }
        let mut groups = group(copies);
        groups.sort_by_key(|g| {
            (
                g.latest,
                g.nodes.len(),
                std::cmp::Reverse(g.nodes.first().copied()),
            )
        });
        let Some(winner) = groups.pop() else {
            return Ok(false);
        };
        if !groups.is_empty() {
            self.metrics.repairs.with_label_values(&["diverged"]).inc();
            let losers: Vec<&str> = groups
                .iter()
                .flat_map(|g| g.nodes.iter().map(|&i| self.node(i).name()))
                .collect();
            let winners: Vec<&str> = winner.nodes.iter().map(|&i| self.node(i).name()).collect();
            tracing::warn!(
                repo = %repo,
                kept = ?winners,
                replaced = ?losers,
                newest_tip = ?winner.latest,
                "copies of the repository disagree: keeping the most recent and replicating it over the others"
            );
        }
        let names: Vec<&str> = self.nodes.nodes().iter().map(|n| n.name()).collect();
        let generation = super::generations::first_generation();
        let mut replicas: Vec<ReplicaRecord> = Vec::new();
        let holders = winner.nodes.iter().copied();
        let others = groups.iter().flat_map(|g| g.nodes.iter().copied());
        for i in holders.chain(others) {
            let holds = winner.nodes.contains(&i);
            replicas.push(ReplicaRecord {
                node: names[i.index()].to_owned(),
                generation: if holds { generation } else { NO_COPY },
                checksum: if holds { winner.checksum.clone() } else { None },
            });
        }
        // Up to the replication factor with nodes that have no copy yet.
        let factor = self.settings.replication_factor.max(replicas.len());
        for i in placement::nodes_for(repo.as_str(), &names, self.nodes.nodes().len()) {
            if replicas.len() >= factor {
                break;
            }
            if !replicas.iter().any(|r| r.node == names[i]) {
                replicas.push(ReplicaRecord {
                    node: names[i].to_owned(),
                    generation: NO_COPY,
                    checksum: None,
                });
            }
        }
        let behind: Vec<String> = replicas
            .iter()
            .filter(|r| r.generation == NO_COPY)
            .map(|r| r.node.clone())
            .collect();
        let registered = self
            .register_repository(&NewRepo {
                repo: repo.clone(),
                generation,
                checksum: winner.checksum.clone(),
                replicas,
            })
            .await?;
        if registered {
            self.metrics
                .repairs
                .with_label_values(&["discovered"])
                .inc();
            tracing::info!(repo = %repo, copies = winner.nodes.len(), to_replicate = behind.len(), "registered repository found on the nodes");
            let behind: Vec<&str> = behind.iter().map(String::as_str).collect();
            self.queue(repo, &behind, JobKind::Update).await?;
        }
        Ok(true)
    }

    /// Register every repository the healthy nodes have that the metadata lacks.
    pub async fn discover_all(&self) -> Result<usize, ClusterError> {
        let mut found = std::collections::BTreeSet::new();
        for i in self.nodes.ids() {
            if !self.healthy(i) {
                continue;
            }
            let node = self.node(i);
            match node.list().await {
                Ok(repos) => found.extend(repos),
                Err(err) => {
                    tracing::warn!(node = node.name(), error = %err, "could not list repositories for discovery");
                }
            }
        }
        let known: std::collections::BTreeSet<RepoPath> =
            self.store.list().await?.into_iter().collect();
        let mut registered = 0;
        for repo in found.difference(&known) {
            match self.discover_one(repo).await {
                Ok(true) => registered += 1,
                Ok(false) => {}
                Err(err) => tracing::warn!(repo = %repo, error = %err, "discovery failed"),
            }
        }
        Ok(registered)
    }

    /// With the lock held: resolve a write marker from the primary's actual refs.
    /// Returns the (possibly updated) record.
    pub(crate) async fn resolve_marker(&self, repo: &RepoPath) -> Result<RepoRecord, ClusterError> {
        let record = self
            .store
            .get(repo)
            .await?
            .ok_or_else(|| ClusterError::NotFound(repo.clone()))?;
        let Some(marker) = &record.write else {
            return Ok(record);
        };
        let Some(index) = self.index_of(&marker.node) else {
            self.store.clear_write(repo).await?;
            return self.reread(repo).await;
        };
        let state = match self.node(index).state(repo).await {
            Ok(state) => state,
            Err(err) => {
                if err.is_unavailable() {
                    self.health.report_failure(index);
                }
                tracing::warn!(repo = %repo, node = %marker.node, error = %err, "cannot resolve an unfinished write yet");
                return Ok(record);
            }
        };
        self.metrics.repairs.with_label_values(&["marker"]).inc();
        if state.checksum == record.checksum {
            tracing::info!(repo = %repo, node = %marker.node, owner = %marker.owner, "unfinished write changed nothing");
            self.store.clear_write(repo).await?;
        } else {
            tracing::warn!(repo = %repo, node = %marker.node, owner = %marker.owner, "recording an unfinished write found on its primary");
            let holders = [marker.node.clone()];
            // Found on its primary, never acknowledged: served once a majority has it.
            self.record_write(repo, &holders, state.checksum.as_deref(), false)
                .await?;
            let others: Vec<&str> = record
                .replicas
                .iter()
                .filter(|r| r.node != marker.node)
                .map(|r| r.node.as_str())
                .collect();
            self.queue(repo, &others, JobKind::Update).await?;
        }
        self.reread(repo).await
    }

    pub(crate) async fn reread(&self, repo: &RepoPath) -> Result<RepoRecord, ClusterError> {
        self.store
            .get(repo)
            .await?
            .ok_or_else(|| ClusterError::NotFound(repo.clone()))
    }

    /// Reconcile every repository every `reconcile_interval` until the handle drops.
    pub fn spawn_reconciler(self: &Arc<Self>) -> AbortOnDropHandle<()> {
        let cluster = self.clone();
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut tick = tokio::time::interval(cluster.settings.reconcile_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                cluster.reconcile_all().await;
            }
        }))
    }

    /// One pass over every repository.
    pub async fn reconcile_all(&self) {
        let repos = match self.store.list().await {
            Ok(repos) => repos,
            Err(err) => {
                tracing::warn!(error = %err, "reconciler could not list repositories");
                return;
            }
        };
        for repo in repos {
            if let Err(err) = self.reconcile(&repo).await {
                tracing::warn!(repo = %repo, error = %err, "reconciling failed");
            }
        }
    }

    /// Check one repository (skipped while a write holds its lock).
    pub async fn reconcile(&self, repo: &RepoPath) -> Result<(), ClusterError> {
        let Some(lock) = self.store.try_lock(repo).await? else {
            return Ok(());
        };
        let result = self.reconcile_locked(repo).await;
        drop(lock);
        result
    }

    async fn reconcile_locked(&self, repo: &RepoPath) -> Result<(), ClusterError> {
        let record = match self.resolve_marker(repo).await {
            Ok(record) => record,
            Err(ClusterError::NotFound(_)) => return Ok(()),
            Err(err) => return Err(err),
        };
        if record.write.is_some() {
            return Ok(());
        }
        let now = Self::now_ms();
        let names: Vec<&str> = self.nodes.nodes().iter().map(|n| n.name()).collect();
        // Nodes added since the repository was registered fill it up to the factor.
        // Replicas on nodes no longer configured do not count towards the factor.
        let mut replicas: Vec<String> = self
            .configured_replicas(&record)
            .map(|r| r.node.clone())
            .collect();
        let factor = self.settings.replication_factor.min(names.len());
        for i in placement::nodes_for(repo.as_str(), &names, names.len()) {
            if replicas.len() >= factor {
                break;
            }
            if !replicas.iter().any(|r| r == names[i]) {
                self.add_replica_slot(repo, names[i]).await?;
                replicas.push(names[i].to_owned());
            }
        }
        for name in &replicas {
            let behind = record
                .replica(name)
                .is_none_or(|r| r.generation < record.generation);
            if behind && self.index_of(name).is_some() {
                self.store
                    .enqueue(repo, name, JobKind::Update, now, QueueMode::IfMissing)
                    .await?;
                self.replication.jobs_queued.notify_one();
            }
        }
        self.verify_checksums(&record).await
    }

    /// Compare the refs of the up-to-date replicas with the recorded state. Skipped
    /// while reads serve an older generation than the current one (an unacknowledged
    /// write not yet spread): the recorded state is not theirs.
    async fn verify_checksums(&self, record: &RepoRecord) -> Result<(), ClusterError> {
        let repo = &record.repo;
        let serving = match self.serving_replicas(record) {
            Some((generation, nodes)) if generation == record.generation => nodes,
            _ => return Ok(()),
        };
        let reads: Vec<_> = serving
            .iter()
            .map(|&i| async move { (i, self.node(i).state(repo).await) })
            .collect();
        let states = futures_util::future::join_all(reads).await;
        let mut seen = Vec::new();
        for (i, state) in states {
            match state {
                Ok(state) => seen.push((i, state.checksum, state.latest)),
                Err(err) => {
                    if err.is_unavailable() {
                        self.health.report_failure(i);
                    }
                }
            }
        }
        let groups = group(seen);
        if groups.len() == 1 && groups[0].checksum == record.checksum {
            return Ok(());
        }
        if groups.is_empty() {
            return Ok(());
        }
        let primary = record.primary.as_deref().and_then(|p| self.index_of(p));
        let recorded = groups.iter().position(|g| g.checksum == record.checksum);
        let winner = recorded.unwrap_or_else(|| {
            let mut best = 0;
            for (i, g) in groups.iter().enumerate() {
                let key = |g: &Agreeing| {
                    (
                        g.checksum.is_some(),
                        primary.is_some_and(|p| g.nodes.contains(&p)),
                        g.latest,
                        g.nodes.len(),
                    )
                };
                if key(g) > key(&groups[best]) {
                    best = i;
                }
            }
            best
        });
        let keep = &groups[winner];
        let holders: Vec<String> = keep
            .nodes
            .iter()
            .map(|&i| self.node(i).name().to_owned())
            .collect();
        let drifted: Vec<&str> = groups
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != winner)
            .flat_map(|(_, g)| g.nodes.iter().map(|&i| self.node(i).name()))
            .collect();
        self.metrics.repairs.with_label_values(&["drift"]).inc();
        tracing::warn!(
            repo = %repo,
            kept = ?holders,
            drifted = ?drifted,
            "replica refs differ from the recorded state: recording a new generation and repairing the others"
        );
        self.record_write(repo, &holders, keep.checksum.as_deref(), true)
            .await?;
        self.queue(repo, &drifted, JobKind::Update).await
    }
}
