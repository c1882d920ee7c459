//! The only code that writes generations. Every change of a repository's or a
//! replica's generation goes through one of these methods, and they keep these rules:
//!
//! 1. A repository registered (created, or discovered on the nodes) starts at the
//!    registration time in milliseconds ([`first_generation`]), so a repository deleted
//!    and created again never reuses a generation, and so never a pack-cache key.
//! 2. A write that changed refs (a push, a write marker resolved from its primary's
//!    refs, drift found by the checksum reconciler) gives the repository a new, higher
//!    generation held by exactly the replicas known to hold its refs
//!    ([`Cluster::record_write`]). Everyone else is now behind and gets repaired.
//! 3. A copy records its target at the generation read *before* the fetch started
//!    ([`Cluster::record_copy`]): never above what it was copied from. The store only
//!    ever raises a replica's generation, never lowers it.
//! 4. A replica added to fill the replication factor starts with no copy
//!    ([`NO_COPY`]), which is below every generation ([`Cluster::add_replica_slot`]).
//! 5. The acknowledged generation ([`crate::metadata::RepoRecord::acked`]) moves only
//!    up, and only to a generation whose state a client was told is written (a push
//!    acknowledged: at once in `async` mode, at the quorum in `sync` mode) or that a
//!    repair kept from such a state. Replicas below it never serve.

use gitgate_proto::RepoPath;

use super::{Cluster, ClusterError};
use crate::metadata::{NewRepo, NO_COPY};

/// The generation a newly registered repository starts at (rule 1).
pub(crate) fn first_generation() -> i64 {
    crate::metadata::now_ms()
}

impl Cluster {
    /// Register `new` (its generation from [`first_generation`], rule 1); `true` when
    /// this call registered it.
    pub(super) async fn register_repository(&self, new: &NewRepo) -> Result<bool, ClusterError> {
        Ok(self.store.register(new).await?)
    }

    /// Rule 2: a write changed `repo`'s refs to `checksum`; `holders` have them.
    /// `acknowledged` (rule 5) when the new state holds every acknowledged write and
    /// may be acknowledged now. Returns the new generation.
    pub(super) async fn record_write(
        &self,
        repo: &RepoPath,
        holders: &[String],
        checksum: Option<&str>,
        acknowledged: bool,
    ) -> Result<i64, ClusterError> {
        Ok(self
            .store
            .finish_write(repo, holders, checksum, acknowledged)
            .await?)
    }

    /// Rule 5: a majority holds `generation`; it is acknowledged.
    pub(super) async fn acknowledge(
        &self,
        repo: &RepoPath,
        generation: i64,
    ) -> Result<(), ClusterError> {
        Ok(self.store.acknowledge(repo, generation).await?)
    }

    /// Rule 3: `target` was copied from a replica at `generation`, read before the
    /// copy started, and now has refs `checksum`.
    pub(super) async fn record_copy(
        &self,
        repo: &RepoPath,
        target: &str,
        generation: i64,
        checksum: Option<&str>,
    ) -> Result<(), ClusterError> {
        Ok(self
            .store
            .record_replica(repo, target, generation, checksum)
            .await?)
    }

    /// Rule 4: `node` becomes a replica of `repo` with no copy yet.
    pub(super) async fn add_replica_slot(
        &self,
        repo: &RepoPath,
        node: &str,
    ) -> Result<(), ClusterError> {
        Ok(self.store.record_replica(repo, node, NO_COPY, None).await?)
    }
}
