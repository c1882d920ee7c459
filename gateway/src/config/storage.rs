//! `[storage]` and `[[storage.nodes]]`: the nodes, the replication factor and mode,
//! replication workers and retries, the reconciler, write locks and health checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
pub use gitgate_storage_client::{NodeLocation, NodeSpec};

/// `[storage]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Whether a push to a missing repository creates it.
    pub create_on_push: bool,
    /// Copies per repository (capped by the number of nodes).
    pub replication_factor: u32,
    /// When a write is acknowledged.
    pub replication: Replication,
    /// Replication jobs this gateway runs at once.
    pub replication_workers: usize,
    /// Longest pause between retries of a failing replication.
    pub replication_retry_max: Duration,
    /// How often every repository's replicas are checked.
    pub reconcile_interval: Duration,
    /// How long a push waits for another write to the same repository.
    pub lock_timeout: Duration,
    /// How long a node's git output may send nothing before it is cut off.
    pub stream_idle_timeout: Duration,
    /// The storage nodes.
    pub nodes: Vec<NodeSpec>,
    /// Active health checks and when a node counts as down.
    pub health: gitgate_storage_client::health::HealthPolicy,
}

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// After the primary holds it.
    Async,
    /// After a quorum holds it.
    Sync,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    #[serde(default)]
    create_on_push: bool,
    #[serde(default = "default_factor")]
    replication_factor: u32,
    #[serde(default = "default_replication")]
    replication: Replication,
    #[serde(default)]
    nodes: Vec<RawNode>,
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    health_interval: Duration,
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    health_timeout: Duration,
    #[serde(default = "default_health_failures")]
    health_failures: u32,
    #[serde(default = "default_workers")]
    replication_workers: usize,
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    replication_retry_max: Duration,
    #[serde(default = "default_reconcile_interval", with = "humantime_serde")]
    reconcile_interval: Duration,
    #[serde(default = "default_lock_timeout", with = "humantime_serde")]
    lock_timeout: Duration,
    #[serde(default = "default_stream_idle_timeout", with = "humantime_serde")]
    stream_idle_timeout: Duration,
}

fn default_workers() -> usize {
    4
}

fn default_retry_max() -> Duration {
    Duration::from_secs(30)
}

fn default_reconcile_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_lock_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_stream_idle_timeout() -> Duration {
    Duration::from_secs(120)
}

fn default_health_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_health_failures() -> u32 {
    3
}

fn default_factor() -> u32 {
    3
}

fn default_replication() -> Replication {
    Replication::Async
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    name: String,
    path: Option<PathBuf>,
    url: Option<String>,
    token: Option<String>,
    git: Option<PathBuf>,
}

/// The environment variable that overrides a remote node's token.
pub fn node_token_env(name: &str) -> String {
    format!(
        "GITGATE_NODE_TOKEN_{}",
        name.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

impl RawStorage {
    /// Check the section, resolve local paths against `base` and remote tokens from
    /// `env` ([`node_token_env`]).
    pub(super) fn resolve(
        self,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<StorageConfig, ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::invalid(
                "storage.nodes",
                "at least one node is required",
            ));
        }
        let locals = self.nodes.iter().filter(|n| n.path.is_some()).count();
        if self.nodes.len() > 1 && locals > 0 && locals < self.nodes.len() {
            return Err(ConfigError::invalid(
            "storage.nodes",
            "nodes must be all local (path) or all remote (url): replication copies between nodes of the same kind",
        ));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if self.nodes[..i].iter().any(|n| n.name == node.name) {
                return Err(ConfigError::invalid(
                    format!("storage.nodes[{i}].name"),
                    format!("{:?} is used by another node", node.name),
                ));
            }
        }
        if self.replication_workers == 0 {
            return Err(ConfigError::invalid(
                "storage.replication_workers",
                "must be at least 1",
            ));
        }
        for (key, d) in [
            ("storage.replication_retry_max", self.replication_retry_max),
            ("storage.reconcile_interval", self.reconcile_interval),
            ("storage.lock_timeout", self.lock_timeout),
            ("storage.stream_idle_timeout", self.stream_idle_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than zero"));
            }
        }
        if self.replication_factor == 0 {
            return Err(ConfigError::invalid(
                "storage.replication_factor",
                "must be at least 1",
            ));
        }
        let mut nodes = Vec::new();
        for (i, node) in self.nodes.into_iter().enumerate() {
            let key = format!("storage.nodes[{i}]");
            let name_ok = !node.name.is_empty()
                && node.name.len() <= 64
                && node
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !name_ok {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    "1-64 characters of [A-Za-z0-9._-]",
                ));
            }
            let location = match (node.path, node.url) {
                (Some(path), None) => {
                    if node.token.is_some() {
                        return Err(ConfigError::invalid(
                            format!("{key}.token"),
                            "only remote (url) nodes take a token",
                        ));
                    }
                    NodeLocation::Local {
                        path: base.join(path),
                        git: node.git.unwrap_or_else(|| "git".into()),
                    }
                }
                (None, Some(url)) => {
                    let token = env(&node_token_env(&node.name))
                        .or(node.token)
                        .unwrap_or_default();
                    if token.len() < 16 {
                        return Err(ConfigError::invalid(
                            format!("{key}.token"),
                            "a remote node needs its shared secret (at least 16 characters)",
                        ));
                    }
                    if node.git.is_some() {
                        return Err(ConfigError::invalid(
                            format!("{key}.git"),
                            "only local (path) nodes run git in this process",
                        ));
                    }
                    NodeLocation::Remote { url, token }
                }
                _ => {
                    return Err(ConfigError::invalid(
                        key,
                        "set exactly one of `path` (local node) or `url` (remote node)",
                    ))
                }
            };
            nodes.push(NodeSpec {
                name: node.name,
                location,
            });
        }
        if self.health_interval.is_zero() || self.health_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "storage.health_interval",
                "health_interval and health_timeout must be longer than zero",
            ));
        }
        if self.health_failures == 0 {
            return Err(ConfigError::invalid(
                "storage.health_failures",
                "must be at least 1",
            ));
        }
        Ok(StorageConfig {
            health: gitgate_storage_client::health::HealthPolicy {
                interval: self.health_interval,
                timeout: self.health_timeout,
                failures_before_down: self.health_failures,
            },
            create_on_push: self.create_on_push,
            replication_factor: self.replication_factor,
            replication: self.replication,
            replication_workers: self.replication_workers,
            replication_retry_max: self.replication_retry_max,
            reconcile_interval: self.reconcile_interval,
            lock_timeout: self.lock_timeout,
            stream_idle_timeout: self.stream_idle_timeout,
            nodes,
        })
    }
}
