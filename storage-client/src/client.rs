//! [`NodeClient`]: the same calls on an in-process or a remote node.

use std::sync::Arc;

use gitgate_proto::RepoPath;
use gitgate_storage_node::api::{
    self, GitStream, NodeLoad, ReplicateRequest, RepoState, RequestBody,
};
use gitgate_storage_node::{Node, ReplicaSource};

use crate::call::GitCall;
use crate::error::ClientError;
use crate::remote::RemoteNode;

/// One storage node.
#[derive(Debug, Clone)]
pub enum NodeClient {
    /// A node served in this process from a local directory.
    Local {
        /// Its configured name.
        name: String,
        /// The node.
        node: Arc<Node>,
    },
    /// A `gitgate-node` reached over HTTP.
    Remote(RemoteNode),
}

impl NodeClient {
    /// The node's configured name.
    pub fn name(&self) -> &str {
        match self {
            Self::Local { name, .. } => name,
            Self::Remote(r) => r.name(),
        }
    }

    fn local_error(
        name: &str,
        repo: &RepoPath,
        err: gitgate_storage_node::NodeError,
    ) -> ClientError {
        if err.is_not_found() {
            ClientError::NotFound(repo.clone())
        } else if err.is_already_exists() {
            ClientError::AlreadyExists(repo.clone())
        } else {
            ClientError::Local {
                node: name.to_owned(),
                source: err,
            }
        }
    }

    /// The `info/refs` body. Resolves once the first bytes are available, so failures
    /// before output are errors rather than broken streams.
    pub async fn info_refs(&self, call: GitCall<'_>) -> Result<GitStream, ClientError> {
        match self {
            Self::Local { name, node } => {
                let stream = node
                    .info_refs(call.repo, call.service, call.protocol)
                    .await
                    .map_err(|e| Self::local_error(name, call.repo, e))?;
                peek_local(name, stream).await
            }
            Self::Remote(r) => r.info_refs(call).await,
        }
    }

    /// The receive-pack advertisement of `call.repo`, or an empty repository's when it
    /// does not exist on this node (a push will create it). Creates nothing.
    pub async fn push_advertisement_or_empty(
        &self,
        call: GitCall<'_>,
    ) -> Result<GitStream, ClientError> {
        match self {
            Self::Local { name, node } => {
                let stream = node
                    .push_advertisement_or_empty(call.repo, call.protocol)
                    .await
                    .map_err(|e| Self::local_error(name, call.repo, e))?;
                peek_local(name, stream).await
            }
            Self::Remote(r) => r.push_advertisement_or_empty(call).await,
        }
    }

    /// Run `upload-pack` / `receive-pack` with `body`. Resolves once the first bytes
    /// are available.
    pub async fn rpc(
        &self,
        call: GitCall<'_>,
        body: RequestBody,
    ) -> Result<GitStream, ClientError> {
        match self {
            Self::Local { name, node } => {
                let stream = node
                    .rpc(call.repo, call.service, call.protocol, body)
                    .await
                    .map_err(|e| Self::local_error(name, call.repo, e))?;
                match api::peek(stream).await {
                    Ok(stream) => Ok(stream),
                    Err(err) => Err(match err.refusal() {
                        Some(message) if call.service == gitgate_proto::Service::UploadPack => {
                            ClientError::Refused {
                                node: name.clone(),
                                message,
                            }
                        }
                        _ if matches!(err, api::GitStreamError::RequestBody(_)) => {
                            ClientError::RequestBody {
                                node: name.clone(),
                                reason: err.to_string(),
                            }
                        }
                        _ => ClientError::Local {
                            node: name.clone(),
                            source: gitgate_storage_node::NodeError::Git(err),
                        },
                    }),
                }
            }
            Self::Remote(r) => r.rpc(call, body).await,
        }
    }

    /// The repository's state on this node.
    pub async fn state(&self, repo: &RepoPath) -> Result<RepoState, ClientError> {
        match self {
            Self::Local { name, node } => node
                .state(repo)
                .await
                .map_err(|e| Self::local_error(name, repo, e)),
            Self::Remote(r) => r.state(repo).await,
        }
    }

    /// Create an empty repository.
    pub async fn create(&self, repo: &RepoPath) -> Result<(), ClientError> {
        match self {
            Self::Local { name, node } => node
                .create(repo)
                .await
                .map_err(|e| Self::local_error(name, repo, e)),
            Self::Remote(r) => r.create(repo).await,
        }
    }

    /// Delete a repository.
    pub async fn delete(&self, repo: &RepoPath) -> Result<(), ClientError> {
        match self {
            Self::Local { name, node } => node
                .delete(repo)
                .await
                .map_err(|e| Self::local_error(name, repo, e)),
            Self::Remote(r) => r.delete(repo).await,
        }
    }

    /// Every repository on the node.
    pub async fn list(&self) -> Result<Vec<RepoPath>, ClientError> {
        match self {
            Self::Local { name, node } => node.list().await.map_err(|source| ClientError::Local {
                node: name.clone(),
                source,
            }),
            Self::Remote(r) => {
                let names = r.list().await?;
                // A name that does not parse is skipped, not fatal: discovery goes on.
                Ok(names
                    .iter()
                    .filter_map(|name| match RepoPath::parse(name) {
                        Ok(repo) => Some(repo),
                        Err(err) => {
                            tracing::warn!(node = r.name(), name, error = %err, "skipping unusable repository name");
                            None
                        }
                    })
                    .collect())
            }
        }
    }

    /// Make this node's copy of `repo` an exact copy of `source`'s (creating it when
    /// missing), with HEAD pointing at `head`. Returns this node's resulting state.
    ///
    /// In-process nodes fetch from each other by path, remote nodes from each other
    /// over their authenticated git endpoint; the two kinds cannot be mixed. A remote
    /// target is told the node set (`nodes`), and refuses a source outside it.
    pub async fn replicate_from(
        &self,
        repo: &RepoPath,
        source: &NodeClient,
        head: Option<&str>,
        nodes: &[NodeClient],
    ) -> Result<RepoState, ClientError> {
        match (self, source) {
            (Self::Local { name, node }, Self::Local { node: from, .. }) => {
                let source = ReplicaSource::Path(from.repo_dir(repo));
                node.replicate(repo, &source, head)
                    .await
                    .map_err(|e| Self::local_error(name, repo, e))
            }
            (Self::Remote(target), Self::Remote(from)) => {
                let (source_url, authorization) = from.fetch_source(repo);
                let request = ReplicateRequest {
                    source_url,
                    authorization,
                    head: head.map(str::to_owned),
                    nodes: nodes
                        .iter()
                        .filter_map(|n| match n {
                            Self::Remote(r) => Some(r.base().to_owned()),
                            Self::Local { .. } => None,
                        })
                        .collect(),
                };
                target.replicate(repo, &request).await
            }
            _ => Err(ClientError::Unsupported(
                "replication between an in-process node and a remote node",
            )),
        }
    }

    /// Whether the node is up: its root is reachable (local) or `/-/health` answers
    /// (remote); with its load when it reports one.
    pub async fn check_health(&self) -> Result<Option<NodeLoad>, ClientError> {
        match self {
            Self::Local { name, node } => match tokio::fs::metadata(node.root()).await {
                Ok(meta) if meta.is_dir() => Ok(Some(node.load())),
                Ok(_) => Err(ClientError::Unavailable {
                    node: name.clone(),
                    reason: "root is not a directory".into(),
                }),
                Err(err) => Err(ClientError::Unavailable {
                    node: name.clone(),
                    reason: err.to_string(),
                }),
            },
            Self::Remote(r) => r.check_health().await,
        }
    }
}

async fn peek_local(name: &str, stream: GitStream) -> Result<GitStream, ClientError> {
    api::peek(stream).await.map_err(|err| ClientError::Local {
        node: name.to_owned(),
        source: gitgate_storage_node::NodeError::Git(err),
    })
}
