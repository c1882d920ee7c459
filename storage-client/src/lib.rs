//! gitgate's view of the storage tier.
//!
//! [`NodeClient`] is one interface to a storage node, whether the node is served
//! in-process from a local directory or is a remote `gitgate-node` reached over HTTP;
//! the gateway's request path never asks which. [`NodeSet`] holds the configured nodes
//! and opens them from their [`NodeSpec`]s.
//!
//! [`health`] tracks whether nodes are up (active checks plus failures seen by real
//! requests).
//!
//! [`metadata`] records which replicas are up to date (embedded SQLite or PostgreSQL),
//! and [`cluster::Cluster`] uses it to route reads to up-to-date replicas, send writes
//! to the primary, replicate, and repair. The gateway reads and writes only through
//! `Cluster` (reads end to end in [`cluster::read`], pushes in [`cluster::write`]): node
//! choice, failover, health reports and node metrics all happen here, and nodes are
//! named by [`NodeId`].
#![deny(missing_docs)]

mod call;
mod client;
pub mod cluster;
mod error;
pub mod health;
pub mod metadata;
mod nodes;
pub mod remote;
mod stall;

pub use call::GitCall;
pub use client::NodeClient;
pub use error::ClientError;
pub use gitgate_storage_node::api::{GitStream, GitStreamError, RepoState, RequestBody};
/// Shared-secret tokens (minting and checking), used between gateways too.
pub use gitgate_storage_node::auth as tokens;
/// Logging, signals, reloads and config errors, shared by both binaries.
pub use gitgate_storage_node::daemon;
pub use nodes::{ConnectError, NodeId, NodeLocation, NodeSet, NodeSpec};
pub use remote::RemoteNode;

#[cfg(feature = "test-postgres")]
pub mod throwaway_postgres;
