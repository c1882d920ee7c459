//! Creating a repository on its first push: its placement nodes, the copy on the first
//! healthy one, its record, and jobs that create the other copies. The caller holds the
//! repository's lock.

use gitgate_proto::RepoPath;

use super::{placement, Cluster, ClusterError};
use crate::metadata::{JobKind, NewRepo, ReplicaRecord, NO_COPY};
use crate::nodes::NodeId;

impl Cluster {
    /// Create a new repository on its first healthy placement node and register it;
    /// the other placement nodes get jobs that create their copies.
    pub(super) async fn create_locked(&self, repo: &RepoPath) -> Result<(), ClusterError> {
        let names: Vec<&str> = self.nodes.nodes().iter().map(|n| n.name()).collect();
        let placed: Vec<NodeId> =
            placement::nodes_for(repo.as_str(), &names, self.settings.replication_factor)
                .into_iter()
                .map(NodeId::at)
                .collect();
        let Some(&first) = placed.iter().find(|&&i| self.healthy(i)) else {
            return Err(ClusterError::Unavailable(format!(
                "cannot create {repo}: none of its nodes is up"
            )));
        };
        let node = self.node(first);
        match node.create(repo).await {
            Ok(()) | Err(crate::ClientError::AlreadyExists(_)) => {}
            Err(err) => return Err(err.into()),
        }
        let state = node.state(repo).await?;
        let generation = super::generations::first_generation();
        let replicas = placed
            .iter()
            .map(|&i| ReplicaRecord {
                node: names[i.index()].to_owned(),
                generation: if i == first { generation } else { NO_COPY },
                checksum: (i == first).then(|| state.checksum.clone()).flatten(),
            })
            .collect();
        self.register_repository(&NewRepo {
            repo: repo.clone(),
            generation,
            checksum: state.checksum.clone(),
            replicas,
        })
        .await?;
        self.store.set_primary(repo, names[first.index()]).await?;
        tracing::info!(repo = %repo, primary = names[first.index()], replicas = placed.len(), "created repository");
        let others: Vec<&str> = placed
            .iter()
            .filter(|&&i| i != first)
            .map(|&i| names[i.index()])
            .collect();
        self.queue(repo, &others, JobKind::Update).await
    }
}
