//! Deleting a repository from every replica, then from the metadata.

use gitgate_proto::RepoPath;

use super::{Cluster, ClusterError};

impl Cluster {
    /// Delete `repo` from every replica, then forget it. Refused while a replica's node
    /// is down (its copy would come back); a node failing midway leaves the metadata in
    /// place, so the reconciler restores the deleted copies and the deletion can be
    /// retried. Returns the nodes it was deleted from.
    pub async fn delete_repository(&self, repo: &RepoPath) -> Result<Vec<String>, ClusterError> {
        let lock = self
            .store
            .lock(repo, self.settings.lock_timeout)
            .await
            .map_err(ClusterError::from_lock)?;
        if self.store.get(repo).await?.is_none() && !self.discover_locked(repo).await? {
            return Err(ClusterError::NotFound(repo.clone()));
        }
        let record = self.resolve_marker(repo).await?;
        let mut targets = Vec::new();
        for replica in &record.replicas {
            match self.index_of(&replica.node) {
                Some(i) if self.healthy(i) => targets.push(i),
                Some(_) => {
                    return Err(ClusterError::Unavailable(format!(
                        "cannot delete {repo} while node {} (a replica) is down",
                        replica.node
                    )))
                }
                // A node no longer configured cannot serve it anyway.
                None => {}
            }
        }
        let mut deleted = Vec::new();
        for i in targets {
            let node = self.node(i);
            match node.delete(repo).await {
                Ok(()) | Err(crate::ClientError::NotFound(_)) => {
                    deleted.push(node.name().to_owned())
                }
                Err(err) => return Err(err.into()),
            }
        }
        self.store.forget(repo).await?;
        tracing::info!(repo = %repo, nodes = ?deleted, "deleted repository");
        drop(lock);
        Ok(deleted)
    }
}
