//! The gateway's configuration: TOML, loaded and validated once at start.
//!
//! One file per section ([`listen`], [`storage`], [`metadata`], [`cache`], [`limits`],
//! [`auth`], [`log`], [`cluster`]); this module puts them together. Every key, its default and its
//! meaning is documented in `config.example.toml`. Unknown keys are errors; errors name
//! the key (`storage.nodes[0]: ...`). Closed sets of values are serde enums, sizes parse
//! with `bytesize` and durations with `humantime`. Relative paths are resolved against
//! the config file's directory here, so nothing after loading parses strings or
//! resolves paths.

mod auth;
pub mod cache;
pub mod cluster;
pub mod limits;
pub mod listen;
pub mod log;
pub mod metadata;
pub mod storage;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

pub use cache::CacheSettings;
pub use cluster::{ClusterConfig, CLUSTER_SECRET_ENV};
pub use gitgate_storage_client::daemon::ConfigError;
pub use limits::LimitsConfig;
pub use listen::ListenConfig;
pub use log::{LogConfig, LogFormat};
pub use metadata::{MetadataConfig, POSTGRES_URL_ENV};
pub use storage::{node_token_env, NodeLocation, NodeSpec, Replication, StorageConfig};

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
    /// `[cluster]`, when this gateway is one of a fleet.
    pub cluster: Option<ClusterConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: ListenConfig,
    storage: storage::RawStorage,
    #[serde(default)]
    metadata: metadata::RawMetadata,
    #[serde(default)]
    limits: LimitsConfig,
    #[serde(default)]
    cache: cache::RawCache,
    #[serde(default)]
    auth: auth::RawAuth,
    #[serde(default)]
    log: LogConfig,
    cluster: Option<cluster::RawCluster>,
}

/// A byte size: an integer, or a string such as `10GiB`, `512MiB` or `2GB`.
fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    bytesize::ByteSize::deserialize(d).map(|b| b.as_u64())
}

impl Config {
    /// Load and validate `path`; secrets may come from the environment
    /// (`GITGATE_PROXY_SECRET`, `GITGATE_NODE_TOKEN_<NAME>`, `GITGATE_POSTGRES_URL`,
    /// `GITGATE_CLUSTER_SECRET`).
    pub async fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = gitgate_storage_client::daemon::read_config(path.to_owned()).await?;
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
        let raw: RawConfig = gitgate_storage_client::daemon::parse_toml(text)?;
        // Check every section, so one run reports every problem.
        let mut problems = Vec::new();
        let listen = raw.listen.resolve(base, &mut problems);
        let storage = raw
            .storage
            .resolve(base, env)
            .map_err(|e| problems.push(e))
            .ok();
        let auth = raw.auth.resolve(env).map_err(|e| problems.push(e)).ok();
        let metadata = raw
            .metadata
            .resolve(base, env)
            .map_err(|e| problems.push(e))
            .ok();
        let cache = raw.cache.resolve(base, &mut problems);
        let cluster = raw.cluster.and_then(|c| {
            c.resolve(
                metadata.as_ref(),
                listen.tls_cert.is_some(),
                env,
                &mut problems,
            )
        });
        raw.limits.check(&mut problems);
        match (
            storage,
            auth,
            metadata,
            ConfigError::from_problems(problems),
        ) {
            (Some(storage), Some(auth), Some(metadata), None) => Ok(Self {
                path: None,
                listen,
                storage,
                metadata,
                limits: raw.limits,
                cache,
                auth,
                log: raw.log,
                cluster,
            }),
            (.., Some(problem)) => Err(problem),
            // A section that failed has pushed its problem.
            _ => Err(ConfigError::invalid("config", "invalid")),
        }
    }
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
        assert_eq!(
            d.limits, c.limits,
            "every [limits] default is the documented one"
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
        assert_eq!(ds.stream_idle_timeout, cs.stream_idle_timeout);
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
            (
                MINIMAL.replace("path = \"data/repos\"", "url = \"http://x:1\""),
                "storage.nodes[0].token",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(&text, Path::new("/")).expect_err(key);
            assert!(err.to_string().starts_with(key), "{key}: {err}");
        }
        for (text, key) in [
            (format!("{MINIMAL}[log]\nformat = \"xml\"\n"), "format"),
            (
                format!("{MINIMAL}[auth]\nanonymous = \"all\"\n"),
                "anonymous",
            ),
            (
                format!("{MINIMAL}[cache]\nmax_bytes = \"lots\"\n"),
                "max_bytes",
            ),
        ] {
            let err = Config::parse(&text, Path::new("/")).expect_err(key);
            assert!(err.to_string().contains(key), "{key}: {err}");
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
