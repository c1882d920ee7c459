//! The write path: the repository's lock, the primary, the write marker, and what a
//! finished push records.
//!
//! A push holds the repository's lock from before it starts until its outcome is
//! recorded. Under the lock: the repository is created when allowed, a marker naming
//! the primary is written, the push runs on the primary, and then the primary's ref
//! checksum is compared with the one from before. A push that changed refs gives the
//! primary a new generation. In `async` mode that is acknowledged at once (the others
//! get jobs). In `sync` mode the push is copied to the other replicas first and
//! acknowledged only once a majority holds it; until then it is neither acknowledged
//! nor served ([`super::routing`]), so a primary that dies with the only copy takes
//! nothing the clients were told about with it, and the others keep serving and taking
//! writes.

use std::sync::Arc;

use gitgate_proto::RepoPath;

use super::routing::{self, Election};
use super::{placement, Cluster, ClusterError, ReplicationMode};
use crate::call::GitCall;
use crate::metadata::{JobKind, RepoLock, RepoRecord, WriteMarker, NO_COPY};
use crate::nodes::NodeId;
use crate::{GitStream, RequestBody};

/// A push in progress. Call [`PushGuard::finish`] when the node's response has ended;
/// dropped unfinished (the client went away), it records the outcome in the background.
pub struct PushGuard {
    cluster: Arc<Cluster>,
    repo: RepoPath,
    primary: NodeId,
    before: Option<String>,
    replicas: Vec<String>,
    lock: Option<RepoLock>,
    finished: bool,
}

impl std::fmt::Debug for PushGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushGuard")
            .field("repo", &self.repo)
            .field("primary", &self.primary)
            .finish()
    }
}

impl PushGuard {
    /// The node the push goes to.
    pub fn primary(&self) -> NodeId {
        self.primary
    }

    /// Send the push (`body`, streamed) to the primary; resolves once its first bytes
    /// are available.
    pub async fn send(
        &self,
        call: GitCall<'_>,
        body: RequestBody,
    ) -> Result<GitStream, ClusterError> {
        let node = self.cluster.node(self.primary);
        Ok(self
            .cluster
            .observe_stream(self.primary, node.rpc(call, body).await)?)
    }

    /// Record the push's outcome; in `sync` mode, copy it to the other replicas first.
    /// An error means the push must not be acknowledged.
    pub async fn finish(mut self) -> Result<(), ClusterError> {
        self.finished = true;
        let result = self
            .cluster
            .finish_push(
                &self.repo,
                self.primary,
                self.before.as_deref(),
                &self.replicas,
            )
            .await;
        drop(self.lock.take());
        result
    }
}

impl Drop for PushGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let cluster = self.cluster.clone();
        let repo = self.repo.clone();
        let primary = self.primary;
        let before = self.before.take();
        let replicas = std::mem::take(&mut self.replicas);
        let lock = self.lock.take();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = cluster
                    .finish_push(&repo, primary, before.as_deref(), &replicas)
                    .await
                {
                    tracing::warn!(repo = %repo, error = %err, "recording an interrupted push failed; the reconciler will resolve it");
                }
                drop(lock);
            });
        }
    }
}

impl Cluster {
    /// The receive-pack ref advertisement of `call.repo`, from the node that will take
    /// the push (see [`Self::push_target`]). For a repository that does not exist yet
    /// and that a push may create (`create`), the advertisement of an empty repository
    /// from its first healthy placement node: asking to push creates nothing; the push
    /// itself does.
    pub async fn receive_pack_advertisement(
        &self,
        call: GitCall<'_>,
        create: bool,
    ) -> Result<GitStream, ClusterError> {
        match self.push_target(call.repo, false).await {
            Ok(primary) => {
                Ok(self.observe_stream(primary, self.node(primary).info_refs(call).await)?)
            }
            Err(ClusterError::NotFound(_)) if create => {
                let names: Vec<&str> = self.nodes.nodes().iter().map(|n| n.name()).collect();
                let placed = placement::nodes_for(
                    call.repo.as_str(),
                    &names,
                    self.settings.replication_factor,
                );
                let Some(node) = placed
                    .into_iter()
                    .map(NodeId::at)
                    .find(|&i| self.healthy(i))
                else {
                    return Err(ClusterError::Unavailable(format!(
                        "cannot create {}: none of its nodes is up",
                        call.repo
                    )));
                };
                Ok(self.observe_stream(
                    node,
                    self.node(node).push_advertisement_or_empty(call).await,
                )?)
            }
            Err(err) => Err(err),
        }
    }

    /// The node that takes pushes to `repo` (for the push's ref advertisement),
    /// creating the repository when `create` allows. In `sync` mode a majority of the
    /// replicas must hold the current generation (caught up now if needed).
    async fn push_target(&self, repo: &RepoPath, create: bool) -> Result<NodeId, ClusterError> {
        let lock = self
            .store
            .lock(repo, self.settings.lock_timeout)
            .await
            .map_err(ClusterError::from_lock)?;
        let (_, mut primary) = self.prepare_write(repo, create).await?;
        if self.settings.mode == ReplicationMode::Sync {
            // A client that sees its refs here stops ("Everything up-to-date"): only
            // show them when a majority holds them.
            self.ensure_quorum(repo).await?;
            // Copies may have changed which replicas serve: advertise from the primary
            // the push itself will find.
            (_, primary) = self.prepare_write(repo, create).await?;
        }
        drop(lock);
        Ok(primary)
    }

    /// Start a push to `repo`: take its lock, find (or elect) the primary, note its
    /// refs and record the write marker.
    pub async fn begin_push(self: &Arc<Self>, repo: &RepoPath) -> Result<PushGuard, ClusterError> {
        let lock = self
            .store
            .lock(repo, self.settings.lock_timeout)
            .await
            .map_err(ClusterError::from_lock)?;
        let (record, primary) = self
            .prepare_write(repo, self.settings.create_on_push)
            .await?;
        let node = self.node(primary);
        let before = match node.state(repo).await {
            Ok(state) => state.checksum,
            Err(err) => {
                if err.is_unavailable() {
                    self.health.report_failure(primary);
                }
                return Err(err.into());
            }
        };
        let marker = WriteMarker {
            node: node.name().to_owned(),
            owner: self.settings.owner.clone(),
            started_ms: Self::now_ms(),
        };
        self.store.begin_write(repo, &marker).await?;
        Ok(PushGuard {
            cluster: self.clone(),
            repo: repo.clone(),
            primary,
            before,
            replicas: self
                .configured_replicas(&record)
                .map(|r| r.node.clone())
                .collect(),
            lock: Some(lock),
            finished: false,
        })
    }

    /// Under the lock: the record (registered or created as needed, marker resolved)
    /// and the primary.
    async fn prepare_write(
        &self,
        repo: &RepoPath,
        create: bool,
    ) -> Result<(RepoRecord, NodeId), ClusterError> {
        if self.store.get(repo).await?.is_none() && !self.discover_locked(repo).await? {
            if !create {
                return Err(ClusterError::NotFound(repo.clone()));
            }
            self.create_locked(repo).await?;
        }
        let mut record = self.resolve_marker(repo).await?;
        if let Some(marker) = &record.write {
            // The last push's primary cannot be asked what it applied. That push was never
            // acknowledged: record the others as the current state, so its node is
            // repaired from them when it is back instead of serving what it may hold.
            let holders: Vec<String> = self
                .serving_replicas(&record)
                .map(|(_, nodes)| nodes)
                .unwrap_or_default()
                .into_iter()
                .map(|i| self.node_name(i).to_owned())
                .filter(|name| *name != marker.node)
                .collect();
            let Some(state) = holders.first().and_then(|h| record.replica(h)) else {
                return Err(self.unavailable(&record, "take writes"));
            };
            let checksum = state.checksum.clone();
            tracing::warn!(repo = %repo, node = %marker.node, "unfinished write on an unreachable node: moving on without it");
            self.metrics.repairs.with_label_values(&["marker"]).inc();
            // The holders keep the state every acknowledged write is in.
            self.record_write(repo, &holders, checksum.as_deref(), true)
                .await?;
            self.queue(repo, &[marker.node.as_str()], JobKind::Update)
                .await?;
            record = self.reread(repo).await?;
        }
        let primary = self.elect(&record).await?;
        Ok((record, primary))
    }

    /// The current primary if it is healthy and up to date, otherwise a newly elected
    /// one (see [`routing::elect`]).
    async fn elect(&self, record: &RepoRecord) -> Result<NodeId, ClusterError> {
        let serving = self
            .serving_replicas(record)
            .map(|(_, nodes)| nodes)
            .unwrap_or_default();
        let current = record.primary.as_deref().and_then(|p| self.index_of(p));
        match routing::elect(current, &serving) {
            Election::Keep(primary) => Ok(primary),
            Election::Elect(elected) => {
                let name = self.node_name(elected);
                self.store.set_primary(&record.repo, name).await?;
                tracing::info!(repo = %record.repo, primary = name, previous = ?record.primary, "elected primary");
                Ok(elected)
            }
            Election::Nobody => Err(self.unavailable(record, "take writes")),
        }
    }

    /// In `sync` mode: make sure a majority of `repo`'s replicas hold the state reads
    /// serve, copying to the ones behind now if needed. An unacknowledged write that a
    /// healthy replica still holds is copied forward now too (the replication workers
    /// would do it anyway): done later, it could land between this advertisement and
    /// the push, whose ref updates git would then refuse ("cannot lock ref").
    async fn ensure_quorum(&self, repo: &RepoPath) -> Result<(), ClusterError> {
        let record = self.reread(repo).await?;
        let needed = routing::majority(self.configured_replicas(&record).count());
        let holding = |record: &RepoRecord| {
            self.serving_replicas(record).map_or(0, |(generation, _)| {
                self.configured_replicas(record)
                    .filter(|r| r.generation == generation)
                    .count()
            })
        };
        let serving_generation = self
            .serving_replicas(&record)
            .map_or(record.generation, |(g, _)| g);
        let most_advanced = self
            .configured_replicas(&record)
            .filter(|r| r.generation != NO_COPY)
            .filter(|r| self.index_of(&r.node).is_some_and(|i| self.healthy(i)))
            .map(|r| r.generation)
            .fold(serving_generation, i64::max);
        if holding(&record) >= needed && most_advanced == serving_generation {
            return Ok(());
        }
        let behind: Vec<NodeId> = record
            .replicas
            .iter()
            .filter(|r| r.generation < most_advanced)
            .filter_map(|r| self.index_of(&r.node))
            .filter(|&i| self.healthy(i))
            .collect();
        let copies: Vec<_> = behind
            .iter()
            .map(|&target| self.replicate_now(repo, target))
            .collect();
        for result in futures_util::future::join_all(copies).await {
            if let Err(err) = result {
                tracing::warn!(repo = %repo, error = %err, "catching up a replica for the quorum failed");
            }
        }
        let record = self.reread(repo).await?;
        let got = holding(&record);
        if got >= needed {
            Ok(())
        } else {
            Err(ClusterError::QuorumNotReached { got, needed })
        }
    }

    /// Record a push's outcome (see the module documentation).
    pub(crate) async fn finish_push(
        &self,
        repo: &RepoPath,
        primary: NodeId,
        before: Option<&str>,
        replicas: &[String],
    ) -> Result<(), ClusterError> {
        let node = self.node(primary);
        let after = match node.state(repo).await {
            Ok(state) => state,
            Err(err) => {
                // The marker stays: repair reads the primary's refs once it answers.
                if err.is_unavailable() {
                    self.health.report_failure(primary);
                }
                return Err(err.into());
            }
        };
        if after.checksum.as_deref() == before {
            self.store.clear_write(repo).await?;
            if self.settings.mode == ReplicationMode::Sync {
                // Nothing new, but the answer still says a majority holds what the
                // client has: an earlier push may have reached only the primary.
                return self.ensure_quorum(repo).await;
            }
            return Ok(());
        }
        let sync = self.settings.mode == ReplicationMode::Sync;
        let primary_name = node.name().to_owned();
        // The primary holds the push. In `async` mode that is the acknowledgement; in
        // `sync` mode it is not acknowledged (nor served) until a majority holds it.
        let generation = self
            .record_write(
                repo,
                std::slice::from_ref(&primary_name),
                after.checksum.as_deref(),
                !sync,
            )
            .await?;
        let others: Vec<&String> = replicas.iter().filter(|r| **r != primary_name).collect();
        if sync {
            let copies: Vec<_> = others
                .iter()
                .filter_map(|name| self.index_of(name))
                .filter(|&i| self.healthy(i))
                .map(|target| async move {
                    if let Err(err) = self.replicate_now(repo, target).await {
                        tracing::warn!(repo = %repo, node = self.node_name(target), error = %err, "synchronous replication failed");
                    }
                })
                .collect();
            futures_util::future::join_all(copies).await;
        }
        let record = self.reread(repo).await?;
        let holders: Vec<&str> = record
            .replicas
            .iter()
            .filter(|r| r.generation >= generation && replicas.contains(&r.node))
            .map(|r| r.node.as_str())
            .collect();
        let behind: Vec<&str> = others
            .iter()
            .map(|name| name.as_str())
            .filter(|name| !holders.contains(name))
            .collect();
        self.queue(repo, &behind, JobKind::Update).await?;
        tracing::debug!(repo = %repo, generation, holders = ?holders, "recorded push");
        if sync {
            let needed = routing::majority(replicas.len());
            if holders.len() < needed {
                return Err(ClusterError::QuorumNotReached {
                    got: holders.len(),
                    needed,
                });
            }
            self.acknowledge(repo, generation).await?;
        }
        Ok(())
    }
}
