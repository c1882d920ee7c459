//! `[limits]`: request sizes, per-repository concurrency for node-bound fetches, and
//! the timeouts that cut off slow clients.

use std::time::Duration;

use serde::Deserialize;

use super::{bytes, ConfigError};

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest upload-pack (fetch) request body after gzip inflation.
    #[serde(deserialize_with = "bytes")]
    pub max_fetch_request_bytes: u64,
    /// Largest push (receive-pack) request body.
    #[serde(deserialize_with = "bytes")]
    pub max_push_bytes: u64,
    /// Inflated fetch bodies held in memory across all requests at once.
    #[serde(deserialize_with = "bytes")]
    pub fetch_body_budget: u64,
    /// Most a gzip request body may inflate, as a multiple of its compressed size.
    pub max_gzip_ratio: u64,
    /// Node-bound fetches per repository at once (0: unlimited).
    pub fetch_concurrency_per_repo: usize,
    /// Fetches that may wait for a slot, per repository.
    pub fetch_queue_per_repo: usize,
    /// How long a fetch may wait for a slot.
    #[serde(with = "humantime_serde")]
    pub fetch_queue_timeout: Duration,
    /// How long a client may take to send its request headers.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long a request body may stall between two chunks.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// How long a client may take no response bytes while some are ready.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Lowest average rate of a request body, past `body_rate_grace`.
    #[serde(deserialize_with = "bytes")]
    pub body_min_rate: u64,
    /// Time before a request body's rate counts.
    #[serde(with = "humantime_serde")]
    pub body_rate_grace: Duration,
    /// Longest a request body may take in all.
    #[serde(with = "humantime_serde")]
    pub body_deadline: Duration,
    /// Node-bound fetches of one client at once (0: unlimited).
    pub client_concurrency: usize,
    /// Fetches of one client that may wait for a slot.
    pub client_queue: usize,
    /// How long a fetch may wait for a slot of its client.
    #[serde(with = "humantime_serde")]
    pub client_queue_timeout: Duration,
    /// Open connections at once (0: no limit).
    pub max_connections: usize,
    /// Open connections at once from one client address (0: no limit).
    pub max_connections_per_client: usize,
    /// Proxies whose `X-Forwarded-For` names the client (for per-client limits and
    /// logs); networks such as `10.0.0.0/8` or single addresses `192.0.2.1/32`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Move the per-client limit with the storage tier's saturation (see
    /// `crate::adaptive`), between `adaptive_min` and `client_concurrency`.
    pub adaptive: bool,
    /// How often the adaptive limit is reconsidered.
    #[serde(with = "humantime_serde")]
    pub adaptive_interval: Duration,
    /// The adaptive limit's floor.
    pub adaptive_min: usize,
    /// Running git processes per core at which a node counts as saturated.
    pub adaptive_git_per_core: u64,
    /// A node-bound fetch waiting longer than this for its first byte means saturation.
    #[serde(with = "humantime_serde")]
    pub adaptive_max_ttfb: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_fetch_request_bytes: 64 << 20,
            max_push_bytes: 5 << 30,
            fetch_body_budget: 128 << 20,
            max_gzip_ratio: 100,
            fetch_concurrency_per_repo: 16,
            fetch_queue_per_repo: 100,
            fetch_queue_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(120),
            body_min_rate: 1 << 10,
            body_rate_grace: Duration::from_secs(30),
            body_deadline: Duration::from_secs(2 * 3600),
            client_concurrency: 0,
            client_queue: 32,
            client_queue_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_connections_per_client: 256,
            trusted_proxies: Vec::new(),
            adaptive: false,
            adaptive_interval: Duration::from_secs(5),
            adaptive_min: 1,
            adaptive_git_per_core: 2,
            adaptive_max_ttfb: Duration::from_secs(10),
        }
    }
}

impl LimitsConfig {
    /// The pace request bodies must keep.
    pub fn pace(&self) -> crate::body_pace::Pace {
        crate::body_pace::Pace {
            min_rate: self.body_min_rate,
            grace: self.body_rate_grace,
            deadline: self.body_deadline,
        }
    }

    /// Report values that parse but cannot work.
    pub(super) fn check(&self, problems: &mut Vec<ConfigError>) {
        if self.fetch_body_budget < self.max_fetch_request_bytes {
            problems.push(ConfigError::invalid(
                "limits.fetch_body_budget",
                "must be at least limits.max_fetch_request_bytes",
            ));
        }
        if self.max_gzip_ratio < 2 {
            problems.push(ConfigError::invalid(
                "limits.max_gzip_ratio",
                "must be at least 2",
            ));
        }
        if self.fetch_concurrency_per_repo > 0 && self.fetch_queue_timeout.is_zero() {
            problems.push(ConfigError::invalid(
                "limits.fetch_queue_timeout",
                "must be longer than zero",
            ));
        }
        if self.client_concurrency > 0 && self.client_queue_timeout.is_zero() {
            problems.push(ConfigError::invalid(
                "limits.client_queue_timeout",
                "must be longer than zero",
            ));
        }
        if self.adaptive && self.client_concurrency == 0 {
            problems.push(ConfigError::invalid(
                "limits.adaptive",
                "needs limits.client_concurrency above zero: the most the adaptive limit grows to",
            ));
        }
        if self.adaptive && self.adaptive_min > self.client_concurrency {
            problems.push(ConfigError::invalid(
                "limits.adaptive_min",
                "must not exceed limits.client_concurrency",
            ));
        }
        for (key, d) in [
            ("limits.adaptive_interval", self.adaptive_interval),
            ("limits.adaptive_max_ttfb", self.adaptive_max_ttfb),
            ("limits.body_deadline", self.body_deadline),
            ("limits.header_timeout", self.header_timeout),
            ("limits.body_idle_timeout", self.body_idle_timeout),
            ("limits.send_timeout", self.send_timeout),
        ] {
            if d.is_zero() {
                problems.push(ConfigError::invalid(key, "must be longer than zero"));
            }
        }
    }
}
