//! The node's metrics: how many git processes it started, by kind.
//!
//! Registered on the caller's registry (the gateway's, for in-process nodes; the node
//! binary's own, served at `/-/metrics`), with the node's name as a constant label.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Node metric families.
#[derive(Clone, Debug)]
pub struct NodeMetrics {
    /// `gitgate_node_git_processes_total{node,service}`: git processes started, where
    /// `service` is `upload-pack`, `receive-pack` or `advertise-refs`.
    pub git_processes: IntCounterVec,
    /// `gitgate_node_git_processes_running{node,service}`: git processes running now.
    pub running: IntGaugeVec,
    /// `gitgate_node_git_processes_running_max{node,service}`: the most that ever ran
    /// at once since the node started (a high-water mark for capacity planning).
    pub running_max: IntGaugeVec,
    /// `gitgate_node_replication_overlaps_total{node}`: replications refused because
    /// another one into the same repository was running (0 when gateways coordinate).
    pub replication_overlaps: IntCounter,
}

/// Counts one running git process; dropped when the process is done with.
pub struct RunningGuard {
    metrics: NodeMetrics,
    service: &'static str,
    counter: Arc<AtomicI64>,
}

impl NodeMetrics {
    /// Count a git process for `service` as running until the guard drops.
    pub fn running(&self, service: &'static str, counter: Arc<AtomicI64>) -> RunningGuard {
        let now = counter.fetch_add(1, Ordering::SeqCst) + 1;
        self.running.with_label_values(&[service]).set(now);
        let max = self.running_max.with_label_values(&[service]);
        if now > max.get() {
            max.set(now);
        }
        RunningGuard {
            metrics: self.clone(),
            service,
            counter,
        }
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let now = self.counter.fetch_sub(1, Ordering::SeqCst) - 1;
        self.metrics
            .running
            .with_label_values(&[self.service])
            .set(now);
    }
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
        let running = IntGaugeVec::new(
            Opts::new(
                "gitgate_node_git_processes_running",
                "git processes running on the storage node.",
            )
            .const_label("node", name),
            &["service"],
        )?;
        let running_max = IntGaugeVec::new(
            Opts::new(
                "gitgate_node_git_processes_running_max",
                "Most git processes that ran at once on the storage node since it started.",
            )
            .const_label("node", name),
            &["service"],
        )?;
        let replication_overlaps = IntCounter::with_opts(
            Opts::new(
                "gitgate_node_replication_overlaps_total",
                "Replications refused because another one into the same repository was running.",
            )
            .const_label("node", name),
        )?;
        registry.register(Box::new(replication_overlaps.clone()))?;
        registry.register(Box::new(git_processes.clone()))?;
        registry.register(Box::new(running.clone()))?;
        registry.register(Box::new(running_max.clone()))?;
        for service in ["upload-pack", "receive-pack", "advertise-refs"] {
            git_processes.with_label_values(&[service]);
            running.with_label_values(&[service]);
            running_max.with_label_values(&[service]);
        }
        Ok(Self {
            git_processes,
            running,
            running_max,
            replication_overlaps,
        })
    }
}
