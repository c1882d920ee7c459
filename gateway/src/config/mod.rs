//! The gateway's configuration: TOML, loaded and validated once at start.
//!
//! Every key, its default and its meaning is documented in `config.example.toml`.
//! Unknown keys are errors; errors name the key (`storage.nodes[0]: ...`). Relative
//! paths are resolved against the config file's directory here, so nothing after
//! loading parses strings or resolves paths.

pub mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use gitgate_storage_client::{NodeLocation, NodeSpec};
use units::{ByteSize, HumanDuration};

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for reloads), when loaded from a file.
    pub path: Option<PathBuf>,
    /// `[listen]`.
    pub listen: ListenConfig,
    /// `[storage]`.
    pub storage: StorageConfig,
    /// `[metadata]`.
    pub metadata: MetadataConfig,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// `[cache]`.
    pub cache: CacheSettings,
    /// `[auth]`.
    pub auth: crate::auth::AuthConfig,
    /// `[log]`.
    pub log: LogConfig,
}

/// `[listen]`.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_grace: Duration,
    /// PEM certificate chain; with `tls_key`, only HTTPS is served.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
}

/// `[storage]`.
#[derive(Debug, Clone)]
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
    /// The storage nodes.
    pub nodes: Vec<NodeSpec>,
    /// Active health checks and when a node counts as down.
    pub health: gitgate_storage_client::health::HealthPolicy,
}

/// `[metadata]`: where replica metadata lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataConfig {
    /// The embedded store in this file (one gateway).
    Embedded(PathBuf),
    /// PostgreSQL at this URL (shared by several gateways).
    Postgres(String),
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

/// `[cache]`.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Whether fetches go through the pack cache.
    pub enabled: bool,
    /// The cache's own settings (`dir` resolved to an absolute path).
    pub cache: gitgate_packcache::CacheConfig,
}

/// `[limits]`.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Largest upload-pack (fetch) request body after gzip inflation.
    pub max_fetch_request_bytes: u64,
    /// Largest push (receive-pack) request body.
    pub max_push_bytes: u64,
    /// Node-bound fetches per repository at once (0: unlimited).
    pub fetch_concurrency_per_repo: usize,
    /// Fetches that may wait for a slot, per repository.
    pub fetch_queue_per_repo: usize,
    /// How long a fetch may wait for a slot.
    pub fetch_queue_timeout: Duration,
    /// How long a client may take to send its request headers.
    pub header_timeout: Duration,
    /// How long a request body may stall between two chunks.
    pub body_idle_timeout: Duration,
    /// How long a client may take no response bytes while some are ready.
    pub send_timeout: Duration,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// JSON lines instead of human-readable text.
    pub json: bool,
    /// Default filter (`info`, `debug`, `gitgate=debug,info`, ...); `RUST_LOG` wins.
    pub level: String,
}

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Invalid TOML, an unknown key or a value of the wrong type.
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// Several problems, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
    /// A value that parses but is not acceptable.
    #[error("{key}: {reason}")]
    Invalid {
        /// The key path.
        key: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: RawListen,
    storage: RawStorage,
    #[serde(default)]
    metadata: RawMetadata,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    log: RawLog,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCache {
    enabled: bool,
    dir: PathBuf,
    max_age: HumanDuration,
    min_occurrences: u32,
    max_bytes: ByteSize,
    min_free_bytes: ByteSize,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: "data/pack-cache".into(),
            max_age: HumanDuration(Duration::from_secs(300)),
            min_occurrences: 1,
            max_bytes: ByteSize(10 << 30),
            min_free_bytes: ByteSize(1 << 30),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    addr: SocketAddr,
    #[serde(default = "default_grace")]
    shutdown_grace: HumanDuration,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

fn default_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    #[serde(default)]
    create_on_push: bool,
    #[serde(default = "default_factor")]
    replication_factor: u32,
    #[serde(default = "default_replication")]
    replication: Replication,
    #[serde(default)]
    nodes: Vec<RawNode>,
    #[serde(default = "default_health_interval")]
    health_interval: HumanDuration,
    #[serde(default = "default_health_interval")]
    health_timeout: HumanDuration,
    #[serde(default = "default_health_failures")]
    health_failures: u32,
    #[serde(default = "default_workers")]
    replication_workers: usize,
    #[serde(default = "default_retry_max")]
    replication_retry_max: HumanDuration,
    #[serde(default = "default_reconcile_interval")]
    reconcile_interval: HumanDuration,
    #[serde(default = "default_lock_timeout")]
    lock_timeout: HumanDuration,
}

fn default_workers() -> usize {
    4
}

fn default_retry_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

fn default_reconcile_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

fn default_lock_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

fn default_health_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    path: Option<PathBuf>,
    postgres_url: Option<String>,
}

/// The environment variable that overrides `metadata.postgres_url`.
pub const POSTGRES_URL_ENV: &str = "GITGATE_POSTGRES_URL";

fn validate_metadata(
    raw: RawMetadata,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<MetadataConfig, ConfigError> {
    let url = env(POSTGRES_URL_ENV).or(raw.postgres_url);
    match (raw.path, url) {
        (Some(_), Some(_)) => Err(invalid(
            "metadata",
            "set either `path` (embedded store) or `postgres_url`, not both",
        )),
        (None, Some(url)) => {
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                Ok(MetadataConfig::Postgres(url))
            } else {
                Err(invalid(
                    "metadata.postgres_url",
                    "expected a postgres:// or postgresql:// URL",
                ))
            }
        }
        (path, None) => Ok(MetadataConfig::Embedded(
            base.join(path.unwrap_or_else(|| "data/gitgate.db".into())),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    path: Option<PathBuf>,
    url: Option<String>,
    token: Option<String>,
    git: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_fetch_request_bytes: ByteSize,
    max_push_bytes: ByteSize,
    fetch_concurrency_per_repo: usize,
    fetch_queue_per_repo: usize,
    fetch_queue_timeout: HumanDuration,
    header_timeout: HumanDuration,
    body_idle_timeout: HumanDuration,
    send_timeout: HumanDuration,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_fetch_request_bytes: ByteSize(64 << 20),
            max_push_bytes: ByteSize(5 << 30),
            fetch_concurrency_per_repo: 16,
            fetch_queue_per_repo: 100,
            fetch_queue_timeout: HumanDuration(Duration::from_secs(30)),
            header_timeout: HumanDuration(Duration::from_secs(10)),
            body_idle_timeout: HumanDuration(Duration::from_secs(60)),
            send_timeout: HumanDuration(Duration::from_secs(120)),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    anonymous: Option<String>,
    #[serde(default)]
    public: Vec<String>,
    #[serde(default)]
    tokens: Vec<RawToken>,
    proxy: Option<RawProxy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    hash: String,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
    #[serde(default)]
    admin: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    secret: Option<String>,
    header: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

impl Config {
    /// Load and validate `path`; secrets may come from the environment
    /// (`GITGATE_PROXY_SECRET`, `GITGATE_NODE_TOKEN_<NAME>`).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse_with_env(&text, &base, &|name| std::env::var(name).ok())?;
        config.path = Some(path.to_owned());
        Ok(config)
    }

    /// Parse and validate configuration text without environment overrides.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        Self::parse_with_env(text, base, &|_| None)
    }

    /// Parse and validate configuration text; relative paths resolve against `base`;
    /// `env` looks up secret overrides.
    pub fn parse_with_env(
        text: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)?;
        // Check every section, so one run reports every problem.
        let mut problems = Vec::new();
        if raw.listen.tls_cert.is_some() != raw.listen.tls_key.is_some() {
            problems.push(invalid(
                "listen.tls_cert",
                "set both tls_cert and tls_key, or neither",
            ));
        }
        let storage = validate_storage(raw.storage, base, env)
            .map_err(|e| problems.push(e))
            .ok();
        let auth = validate_auth(raw.auth, env)
            .map_err(|e| problems.push(e))
            .ok();
        let metadata = validate_metadata(raw.metadata, base, env)
            .map_err(|e| problems.push(e))
            .ok();
        let json = match raw.log.format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                problems.push(invalid(
                    "log.format",
                    format!("expected \"text\" or \"json\", got {other:?}"),
                ));
                false
            }
        };
        if raw.cache.max_age.0.is_zero() {
            problems.push(invalid("cache.max_age", "must be longer than zero"));
        }
        let cache = CacheSettings {
            enabled: raw.cache.enabled,
            cache: gitgate_packcache::CacheConfig {
                dir: base.join(raw.cache.dir),
                max_age: raw.cache.max_age.0,
                min_occurrences: raw.cache.min_occurrences,
                max_bytes: raw.cache.max_bytes.0,
                min_free_bytes: raw.cache.min_free_bytes.0,
            },
        };
        if raw.limits.fetch_concurrency_per_repo > 0 && raw.limits.fetch_queue_timeout.0.is_zero() {
            problems.push(invalid(
                "limits.fetch_queue_timeout",
                "must be longer than zero",
            ));
        }
        for (key, d) in [
            ("limits.header_timeout", raw.limits.header_timeout.0),
            ("limits.body_idle_timeout", raw.limits.body_idle_timeout.0),
            ("limits.send_timeout", raw.limits.send_timeout.0),
        ] {
            if d.is_zero() {
                problems.push(invalid(key, "must be longer than zero"));
            }
        }
        let (Some(storage), Some(auth), Some(metadata), true) =
            (storage, auth, metadata, problems.is_empty())
        else {
            return Err(if problems.len() == 1 {
                problems.remove(0)
            } else {
                ConfigError::Many(problems)
            });
        };
        Ok(Self {
            path: None,
            auth,
            cache,
            listen: ListenConfig {
                addr: raw.listen.addr,
                shutdown_grace: raw.listen.shutdown_grace.0,
                tls_cert: raw.listen.tls_cert.map(|p| base.join(p)),
                tls_key: raw.listen.tls_key.map(|p| base.join(p)),
            },
            storage,
            metadata,
            limits: LimitsConfig {
                max_fetch_request_bytes: raw.limits.max_fetch_request_bytes.0,
                max_push_bytes: raw.limits.max_push_bytes.0,
                fetch_concurrency_per_repo: raw.limits.fetch_concurrency_per_repo,
                fetch_queue_per_repo: raw.limits.fetch_queue_per_repo,
                fetch_queue_timeout: raw.limits.fetch_queue_timeout.0,
                header_timeout: raw.limits.header_timeout.0,
                body_idle_timeout: raw.limits.body_idle_timeout.0,
                send_timeout: raw.limits.send_timeout.0,
            },
            log: LogConfig {
                json,
                level: raw.log.level.unwrap_or_else(|| "info".into()),
            },
        })
    }
}

fn validate_auth(
    raw: RawAuth,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<crate::auth::AuthConfig, ConfigError> {
    use crate::auth::{pattern::RepoPattern, proxy::ProxySecret, token, Permission};
    let anonymous = match raw.anonymous.as_deref() {
        None | Some("none") => None,
        Some("read") => Some(Permission::Read),
        Some("write") => Some(Permission::Write),
        Some(other) => {
            return Err(invalid(
                "auth.anonymous",
                format!("expected \"none\", \"read\" or \"write\", got {other:?}"),
            ))
        }
    };
    let patterns = |key: String, list: Vec<String>| -> Result<Vec<RepoPattern>, ConfigError> {
        list.iter()
            .map(|p| RepoPattern::parse(p).map_err(|e| invalid(key.clone(), e)))
            .collect()
    };
    let public = patterns("auth.public".into(), raw.public)?;
    let mut tokens = token::TokenTable::default();
    let mut names = std::collections::HashSet::new();
    for (i, t) in raw.tokens.into_iter().enumerate() {
        let key = format!("auth.tokens[{i}]");
        if t.name.is_empty() || !names.insert(t.name.clone()) {
            return Err(invalid(
                format!("{key}.name"),
                "a unique, non-empty name is required",
            ));
        }
        if !token::valid_hash(&t.hash) {
            return Err(invalid(
                format!("{key}.hash"),
                "expected \"blake3:<64 hex digits>\" as printed by `gitgate hash-token`",
            ));
        }
        let read = patterns(format!("{key}.read"), t.read)?;
        let write = patterns(format!("{key}.write"), t.write)?;
        let admin = patterns(format!("{key}.admin"), t.admin)?;
        tokens.insert(token::TokenEntry::new(t.name, t.hash, read, write).with_admin(admin));
    }
    let proxy = match raw.proxy {
        None => None,
        Some(p) => {
            let secret = env("GITGATE_PROXY_SECRET").or(p.secret).unwrap_or_default();
            if secret.len() < 16 {
                return Err(invalid("auth.proxy.secret", "a shared secret of at least 16 characters is required (or GITGATE_PROXY_SECRET)"));
            }
            let header = p
                .header
                .unwrap_or_else(|| crate::auth::proxy::DEFAULT_HEADER.into());
            if header.is_empty()
                || !header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                || header.eq_ignore_ascii_case("authorization")
            {
                return Err(invalid(
                    "auth.proxy.header",
                    "a header name of [A-Za-z0-9-], not Authorization",
                ));
            }
            Some(ProxySecret::new(secret).with_header(header))
        }
    };
    Ok(crate::auth::AuthConfig {
        anonymous,
        public,
        tokens,
        proxy,
    })
}

/// The environment variable that overrides a remote node's token.
pub fn node_token_env(name: &str) -> String {
    format!(
        "GITGATE_NODE_TOKEN_{}",
        name.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

fn validate_storage(
    raw: RawStorage,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<StorageConfig, ConfigError> {
    if raw.nodes.is_empty() {
        return Err(invalid("storage.nodes", "at least one node is required"));
    }
    let locals = raw.nodes.iter().filter(|n| n.path.is_some()).count();
    if raw.nodes.len() > 1 && locals > 0 && locals < raw.nodes.len() {
        return Err(invalid(
            "storage.nodes",
            "nodes must be all local (path) or all remote (url): replication copies between nodes of the same kind",
        ));
    }
    for (i, node) in raw.nodes.iter().enumerate() {
        if raw.nodes[..i].iter().any(|n| n.name == node.name) {
            return Err(invalid(
                format!("storage.nodes[{i}].name"),
                format!("{:?} is used by another node", node.name),
            ));
        }
    }
    if raw.replication_workers == 0 {
        return Err(invalid("storage.replication_workers", "must be at least 1"));
    }
    for (key, d) in [
        ("storage.replication_retry_max", raw.replication_retry_max.0),
        ("storage.reconcile_interval", raw.reconcile_interval.0),
        ("storage.lock_timeout", raw.lock_timeout.0),
    ] {
        if d.is_zero() {
            return Err(invalid(key, "must be longer than zero"));
        }
    }
    if raw.replication_factor == 0 {
        return Err(invalid("storage.replication_factor", "must be at least 1"));
    }
    let mut nodes = Vec::new();
    for (i, node) in raw.nodes.into_iter().enumerate() {
        let key = format!("storage.nodes[{i}]");
        let name_ok = !node.name.is_empty()
            && node.name.len() <= 64
            && node
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err(invalid(
                format!("{key}.name"),
                "1-64 characters of [A-Za-z0-9._-]",
            ));
        }
        let location = match (node.path, node.url) {
            (Some(path), None) => {
                if node.token.is_some() {
                    return Err(invalid(
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
                    return Err(invalid(
                        format!("{key}.token"),
                        "a remote node needs its shared secret (at least 16 characters)",
                    ));
                }
                if node.git.is_some() {
                    return Err(invalid(
                        format!("{key}.git"),
                        "only local (path) nodes run git in this process",
                    ));
                }
                NodeLocation::Remote { url, token }
            }
            _ => {
                return Err(invalid(
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
    if raw.health_interval.0.is_zero() || raw.health_timeout.0.is_zero() {
        return Err(invalid(
            "storage.health_interval",
            "health_interval and health_timeout must be longer than zero",
        ));
    }
    if raw.health_failures == 0 {
        return Err(invalid("storage.health_failures", "must be at least 1"));
    }
    Ok(StorageConfig {
        health: gitgate_storage_client::health::HealthPolicy {
            interval: raw.health_interval.0,
            timeout: raw.health_timeout.0,
            failures_before_down: raw.health_failures,
        },
        create_on_push: raw.create_on_push,
        replication_factor: raw.replication_factor,
        replication: raw.replication,
        replication_workers: raw.replication_workers,
        replication_retry_max: raw.replication_retry_max.0,
        reconcile_interval: raw.reconcile_interval.0,
        lock_timeout: raw.lock_timeout.0,
        nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[listen]\naddr = \"127.0.0.1:8080\"\n[storage]\n[[storage.nodes]]\nname = \"local\"\npath = \"data/repos\"\n";

    #[test]
    fn example_config_parses_with_documented_defaults() {
        let text = include_str!("../../../config.example.toml");
        let c = Config::parse(text, Path::new("/srv/gitgate")).expect("example config is valid");
        assert_eq!(c.listen.addr, "127.0.0.1:8080".parse().expect("addr"));
        assert!(!c.storage.create_on_push);
        assert_eq!(c.storage.replication, Replication::Async);
        assert!(
            matches!(&c.storage.nodes[0].location, NodeLocation::Local { path, .. } if path == Path::new("/srv/gitgate/data/repos"))
        );
        // Defaults in the code match the values the example documents.
        let d = Config::parse(MINIMAL, Path::new("/")).expect("minimal");
        assert_eq!(d.listen.shutdown_grace, c.listen.shutdown_grace);
        assert_eq!(
            d.limits.max_fetch_request_bytes,
            c.limits.max_fetch_request_bytes
        );
        assert_eq!(d.storage.replication_factor, c.storage.replication_factor);
        assert_eq!(d.cache.enabled, c.cache.enabled);
        assert_eq!(d.cache.cache.max_age, c.cache.cache.max_age);
        assert_eq!(d.cache.cache.min_occurrences, c.cache.cache.min_occurrences);
        assert_eq!(d.cache.cache.max_bytes, c.cache.cache.max_bytes);
        assert_eq!(d.cache.cache.min_free_bytes, c.cache.cache.min_free_bytes);
        assert_eq!(c.cache.cache.dir, Path::new("/srv/gitgate/data/pack-cache"));
        let (dl, cl) = (&d.limits, &c.limits);
        assert_eq!(
            (
                dl.max_push_bytes,
                dl.fetch_concurrency_per_repo,
                dl.fetch_queue_per_repo
            ),
            (
                cl.max_push_bytes,
                cl.fetch_concurrency_per_repo,
                cl.fetch_queue_per_repo
            )
        );
        assert_eq!(
            (
                dl.fetch_queue_timeout,
                dl.header_timeout,
                dl.body_idle_timeout
            ),
            (
                cl.fetch_queue_timeout,
                cl.header_timeout,
                cl.body_idle_timeout
            )
        );
        // The example deliberately allows anonymous pushes (documented there); the
        // default allows nothing.
        assert_eq!(d.auth.anonymous, None);
        let (ds, cs) = (&d.storage, &c.storage);
        assert_eq!(
            (ds.replication_workers, ds.replication_retry_max),
            (cs.replication_workers, cs.replication_retry_max)
        );
        assert_eq!(
            (ds.reconcile_interval, ds.lock_timeout),
            (cs.reconcile_interval, cs.lock_timeout)
        );
        assert_eq!(
            c.metadata,
            MetadataConfig::Embedded("/srv/gitgate/data/gitgate.db".into())
        );
        assert_eq!(
            d.metadata,
            MetadataConfig::Embedded("/data/gitgate.db".into())
        );
    }

    #[test]
    fn replica_settings_are_checked() {
        let remote = |name: &str| {
            format!("[[storage.nodes]]\nname = \"{name}\"\nurl = \"http://{name}:9100\"\ntoken = \"0123456789abcdef\"\n")
        };
        let three = format!(
            "[listen]\naddr = \"127.0.0.1:8080\"\n[storage]\nreplication = \"sync\"\n{}{}{}",
            remote("a"),
            remote("b"),
            remote("c")
        );
        let c = Config::parse(&three, Path::new("/")).expect("three remote nodes");
        assert_eq!(c.storage.nodes.len(), 3);
        assert_eq!(c.storage.replication, Replication::Sync);
        let pg = format!("{three}[metadata]\npostgres_url = \"postgres://gw@db/gitgate\"\n");
        let c = Config::parse(&pg, Path::new("/")).expect("postgres");
        assert_eq!(
            c.metadata,
            MetadataConfig::Postgres("postgres://gw@db/gitgate".into())
        );
        let env = |k: &str| (k == POSTGRES_URL_ENV).then(|| "postgresql://env/db".to_owned());
        let c = Config::parse_with_env(&three, Path::new("/"), &env).expect("postgres from env");
        assert_eq!(
            c.metadata,
            MetadataConfig::Postgres("postgresql://env/db".into())
        );
        let mixed = format!("{MINIMAL}{}", remote("b"));
        let dup = format!("{three}{}", remote("a"));
        let both =
            format!("{three}[metadata]\npath = \"x.db\"\npostgres_url = \"postgres://a/b\"\n");
        let bad_url = format!("{three}[metadata]\npostgres_url = \"mysql://a/b\"\n");
        let zero = three.replace("replication = \"sync\"", "replication_workers = 0");
        let unknown_mode = three.replace("\"sync\"", "\"quorum\"");
        for (text, key) in [
            (mixed, "storage.nodes"),
            (dup, "storage.nodes[3].name"),
            (both, "metadata"),
            (bad_url, "metadata.postgres_url"),
            (zero, "storage.replication_workers"),
        ] {
            let err = Config::parse(&text, Path::new("/"))
                .expect_err(key)
                .to_string();
            assert!(err.contains(key), "{err:?} should name {key}");
        }
        assert!(Config::parse(&unknown_mode, Path::new("/")).is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                MINIMAL.replace(
                    "path = \"data/repos\"",
                    "path = \"a\"\nurl = \"http://x:1\"",
                ),
                "storage.nodes[0]",
            ),
            (
                MINIMAL.replace("name = \"local\"", "name = \"bad name\""),
                "storage.nodes[0].name",
            ),
            (format!("{MINIMAL}[log]\nformat = \"xml\"\n"), "log.format"),
            (
                MINIMAL.replace("path = \"data/repos\"", "url = \"http://x:1\""),
                "storage.nodes[0].token",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(&text, Path::new("/")).expect_err(key);
            assert!(err.to_string().starts_with(key), "{key}: {err}");
        }
        let err =
            Config::parse(&format!("{MINIMAL}bogus = 1\n"), Path::new("/")).expect_err("unknown");
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = Config::parse(
            &MINIMAL.replace("[listen]\n", "[listen]\nshutdown_grace = \"soon\"\n"),
            Path::new("/"),
        )
        .expect_err("duration");
        assert!(err.to_string().contains("shutdown_grace"), "{err}");
    }
}
