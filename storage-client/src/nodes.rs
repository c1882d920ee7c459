//! The configured storage nodes: what the gateway's configuration names
//! ([`NodeSpec`]), and opening them as clients ([`NodeSet::connect`]).
//!
//! In-process nodes are opened here, with their metrics on the gateway's registry, so
//! the gateway never depends on the node crate itself.

use std::path::PathBuf;
use std::sync::Arc;

use gitgate_storage_node::{Node, NodeError, NodeMetrics, NodeSettings};

use crate::client::NodeClient;
use crate::remote::{InvalidNodeUrl, RemoteNode};

/// One storage node as configured: a unique name and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// Where the node is.
    pub location: NodeLocation,
}

/// Where a node's repositories are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeLocation {
    /// Served in-process from this directory.
    Local {
        /// Absolute root directory.
        path: PathBuf,
        /// The git program.
        git: PathBuf,
    },
    /// A `gitgate-node` at this URL.
    Remote {
        /// `http://host:port`.
        url: String,
        /// Shared secret.
        token: String,
    },
}

/// Why the nodes could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No nodes configured.
    #[error("no storage nodes configured")]
    NoNodes,
    /// An in-process node could not be opened.
    #[error("storage node {name}: {source}")]
    Local {
        /// The node's name.
        name: String,
        /// The error.
        #[source]
        source: NodeError,
    },
    /// A remote node's URL is unusable.
    #[error("storage node {name}: {source}")]
    Remote {
        /// The node's name.
        name: String,
        /// The error.
        #[source]
        source: InvalidNodeUrl,
    },
    /// Node metrics could not be registered (a duplicate name: a bug).
    #[error("storage node metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A node of the configured set: its position in configuration order. The only way
/// code outside this crate names a node; [`crate::cluster::Cluster::node_name`] gives
/// its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(usize);

impl NodeId {
    /// The node at position `index` of the set.
    pub(crate) fn at(index: usize) -> Self {
        Self(index)
    }

    /// Its position in the node set.
    pub fn index(self) -> usize {
        self.0
    }
}

/// The configured storage nodes, in configuration order.
#[derive(Debug, Clone)]
pub struct NodeSet {
    nodes: Vec<NodeClient>,
}

impl NodeSet {
    /// A set of nodes; must not be empty.
    pub fn new(nodes: Vec<NodeClient>) -> Option<Self> {
        (!nodes.is_empty()).then_some(Self { nodes })
    }

    /// Open every node in `specs`: in-process nodes are opened (their metrics on
    /// `registry`), remote ones get a client.
    pub async fn connect(
        specs: &[NodeSpec],
        registry: &prometheus::Registry,
    ) -> Result<Self, ConnectError> {
        let mut nodes = Vec::with_capacity(specs.len());
        for spec in specs {
            nodes.push(open(spec, registry).await?);
        }
        Self::new(nodes).ok_or(ConnectError::NoNodes)
    }

    /// All nodes.
    pub fn nodes(&self) -> &[NodeClient] {
        &self.nodes
    }

    /// Every node's id, in order.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + use<> {
        (0..self.nodes.len()).map(NodeId::at)
    }

    /// Node `id`.
    pub fn get(&self, id: NodeId) -> &NodeClient {
        &self.nodes[id.index()]
    }

    /// The id of the node named `name`.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.nodes
            .iter()
            .position(|n| n.name() == name)
            .map(NodeId::at)
    }
}

async fn open(
    spec: &NodeSpec,
    registry: &prometheus::Registry,
) -> Result<NodeClient, ConnectError> {
    let name = &spec.name;
    match &spec.location {
        NodeLocation::Local { path, git } => {
            let metrics = NodeMetrics::register(registry, name)?;
            let node = Node::open(NodeSettings {
                root: path.clone(),
                git: git.clone(),
                metrics,
            })
            .await
            .map_err(|source| ConnectError::Local {
                name: name.clone(),
                source,
            })?;
            match node.list().await {
                Ok(repos) => {
                    tracing::info!(node = %name, root = %path.display(), repositories = repos.len(), "serving local node")
                }
                Err(err) => {
                    tracing::warn!(node = %name, error = %err, "could not list repositories")
                }
            }
            Ok(NodeClient::Local {
                name: name.clone(),
                node: Arc::new(node),
            })
        }
        NodeLocation::Remote { url, token } => {
            let remote = RemoteNode::new(name.clone(), url, token).map_err(|source| {
                ConnectError::Remote {
                    name: name.clone(),
                    source,
                }
            })?;
            tracing::info!(node = %name, url = %url, "using remote node");
            Ok(NodeClient::Remote(remote))
        }
    }
}
