//! A gitgate storage node: bare repositories on local disk, served with the real `git`.
//!
//! The crate is a library first. [`Node`] is the node's whole behaviour as async
//! methods (smart-HTTP services, repository state, create, delete and replication); the gateway
//! calls it directly for in-process nodes, and [`serve`] puts the same methods behind
//! the authenticated internal HTTP API that the `gitgate-node` binary runs.
//!
//! Modules:
//! - [`api`]: the contract with clients (token minting, admin bodies, stream types);
//!   the only module `storage-client` uses besides [`Node`] itself;
//! - [`git`]: the only place that builds a `git` command line;
//! - [`process`]: a running git child as a byte stream (stdin fed, stderr drained,
//!   exit status checked, process group killed when dropped);
//! - [`repos`]: mapping a [`gitgate_proto::RepoPath`] to a directory under the root,
//!   discovery, creation and deletion;
//! - [`refstate`]: HEAD and a checksum over all refs, read with gix;
//! - [`config`]: the `gitgate-node` configuration file;
//! - [`daemon`]: logging, signals, reloads and config errors, shared by both binaries;
//! - [`auth`]: the shared-secret tokens between gateway and node;
//! - [`http`]: the internal HTTP API;
//! - [`metrics`]: counts of git processes started.
#![deny(missing_docs)]

pub mod api;
pub mod auth;
pub mod config;
pub mod daemon;
pub mod git;
pub mod http;
pub mod metrics;
mod node;
mod process;
pub mod refstate;
pub mod repos;

pub use api::{GitStream, GitStreamError, RequestBody};
pub use http::{router, serve};
pub use metrics::NodeMetrics;
pub use node::{BadReplication, Node, NodeError, NodeSettings, ReplicaSource};
pub use refstate::RepoState;
