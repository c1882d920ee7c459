//! The node's metrics: how many git processes it started, by kind.
//!
//! Registered on the caller's registry (the gateway's, for in-process nodes; the node
//! binary's own, served at `/-/metrics`), with the node's name as a constant label.

use prometheus::{IntCounterVec, Opts, Registry};

/// Node metric families.
#[derive(Clone, Debug)]
pub struct NodeMetrics {
    /// `gitgate_node_git_processes_total{node,service}`: git processes started, where
    /// `service` is `upload-pack`, `receive-pack` or `advertise-refs`.
    pub git_processes: IntCounterVec,
}

impl NodeMetrics {
    /// Create the families for node `name` and register them on `registry`.
    pub fn register(registry: &Registry, name: &str) -> Result<Self, prometheus::Error> {
        let git_processes = IntCounterVec::new(
            Opts::new(
                "gitgate_node_git_processes_total",
                "git processes started by the storage node.",
            )
            .const_label("node", name),
            &["service"],
        )?;
        registry.register(Box::new(git_processes.clone()))?;
        for service in ["upload-pack", "receive-pack", "advertise-refs"] {
            git_processes.with_label_values(&[service]);
        }
        Ok(Self { git_processes })
    }
}
