//! Node health: a state machine fed with check results, and the loop that feeds it.
//!
//! A node is down after `failures_before_down` consecutive failed checks (active checks
//! every `interval`, each bounded by `timeout`, plus failures reported from real
//! traffic) and up again after one successful active check. The state machine is pure
//! (no clock, no IO) so its rules are tested directly; [`HealthMonitor::spawn`] owns the
//! background task, which stops when the returned handle is dropped, and keeps the load
//! each node reports with its check ([`HealthMonitor::loads`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntGaugeVec, Opts, Registry};
use tokio_util::task::AbortOnDropHandle;

use crate::client::NodeClient;
use crate::nodes::NodeId;
use gitgate_storage_node::api::NodeLoad;

/// When a node counts as down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Time between active checks.
    pub interval: Duration,
    /// Time an active check may take.
    pub timeout: Duration,
    /// Consecutive failures that mark a node down.
    pub failures_before_down: u32,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failures_before_down: 3,
        }
    }
}

/// One node's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthState {
    /// Whether the node takes traffic.
    pub healthy: bool,
    /// Failures since the last success.
    pub consecutive_failures: u32,
}

impl Default for HealthState {
    fn default() -> Self {
        Self {
            healthy: true,
            consecutive_failures: 0,
        }
    }
}

impl HealthState {
    /// Record a check result; returns whether `healthy` changed.
    pub fn record(&mut self, ok: bool, policy: &HealthPolicy) -> bool {
        let before = self.healthy;
        if ok {
            self.consecutive_failures = 0;
            self.healthy = true;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            if self.consecutive_failures >= policy.failures_before_down {
                self.healthy = false;
            }
        }
        before != self.healthy
    }
}

/// Health of every node, shared by the request path and the checker.
pub struct HealthMonitor {
    names: Vec<String>,
    states: Vec<Mutex<HealthState>>,
    /// What each node last reported about its load (with its last successful check).
    loads: Vec<Mutex<Option<NodeLoad>>>,
    policy: HealthPolicy,
    /// `gitgate_node_healthy{node}`: 1 up, 0 down.
    gauge: IntGaugeVec,
    /// Counts transitions, so others can wait for a node to come back.
    changes: tokio::sync::watch::Sender<u64>,
}

impl HealthMonitor {
    /// Monitor nodes named `names` (in the order of the node set).
    pub fn new(
        names: Vec<String>,
        policy: HealthPolicy,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "gitgate_node_healthy",
                "1 when a storage node passes its health checks.",
            ),
            &["node"],
        )?;
        registry.register(Box::new(gauge.clone()))?;
        for name in &names {
            gauge.with_label_values(&[name]).set(1);
        }
        let states = names
            .iter()
            .map(|_| Mutex::new(HealthState::default()))
            .collect();
        let loads = names.iter().map(|_| Mutex::new(None)).collect();
        Ok(Self {
            names,
            states,
            loads,
            policy,
            gauge,
            changes: tokio::sync::watch::Sender::new(0),
        })
    }

    fn record(&self, node: NodeId, ok: bool) {
        let index = node.index();
        let Some(state) = self.states.get(index) else {
            return;
        };
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        if state.record(ok, &self.policy) {
            let name = &self.names[index];
            self.gauge
                .with_label_values(&[name])
                .set(i64::from(state.healthy));
            self.changes.send_modify(|n| *n += 1);
            if state.healthy {
                tracing::info!(node = %name, "storage node is healthy again");
            } else {
                tracing::warn!(node = %name, failures = state.consecutive_failures, "storage node marked down");
            }
        }
    }

    /// Whether `node` takes traffic.
    pub fn is_healthy(&self, node: NodeId) -> bool {
        self.states
            .get(node.index())
            .is_some_and(|s| s.lock().unwrap_or_else(|p| p.into_inner()).healthy)
    }

    /// Changes whenever a node goes down or comes back.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether any node takes traffic.
    pub fn any_healthy(&self) -> bool {
        (0..self.states.len()).any(|i| self.is_healthy(NodeId::at(i)))
    }

    /// A request to `node` failed because the node was unreachable.
    pub fn report_failure(&self, node: NodeId) {
        self.record(node, false);
    }

    /// The load each healthy node reported at its last check (nodes that report none,
    /// or are down, are left out).
    pub fn loads(&self) -> Vec<NodeLoad> {
        self.loads
            .iter()
            .enumerate()
            .filter(|(i, _)| self.is_healthy(NodeId::at(*i)))
            .filter_map(|(_, l)| *l.lock().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }

    /// Check `nodes` (same order as the names) every interval until the returned
    /// handle, the checker's owner, is dropped.
    pub fn spawn(self: &Arc<Self>, nodes: Vec<NodeClient>) -> AbortOnDropHandle<()> {
        let monitor = self.clone();
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut tick = tokio::time::interval(monitor.policy.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // All at once, so one hanging node does not delay the others' checks.
                let checks = nodes.iter().map(|node| async {
                    match tokio::time::timeout(monitor.policy.timeout, node.check_health()).await {
                        Ok(Ok(load)) => Some(load),
                        _ => None,
                    }
                });
                let results = futures_util::future::join_all(checks).await;
                for (i, checked) in results.into_iter().enumerate() {
                    monitor.record(NodeId::at(i), checked.is_some());
                    if let Some(slot) = monitor.loads.get(i) {
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) = checked.flatten();
                    }
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_n_failures_up_after_one_success() {
        let policy = HealthPolicy::default();
        let mut s = HealthState::default();
        assert!(!s.record(false, &policy));
        assert!(!s.record(false, &policy));
        assert!(s.healthy);
        assert!(s.record(false, &policy), "third failure marks it down");
        assert!(!s.healthy);
        assert!(!s.record(false, &policy));
        assert!(s.record(true, &policy));
        assert!(s.healthy && s.consecutive_failures == 0);
        // A success in between resets the count.
        s.record(false, &policy);
        s.record(false, &policy);
        s.record(true, &policy);
        s.record(false, &policy);
        assert!(s.healthy);
    }
}
