//! gitgate: an HTTP smart-git gateway.
//!
//! Git clients speak smart HTTP (protocol v0 and v2) to gitgate; gitgate checks each
//! request and forwards it to the storage node that holds the repository, streaming
//! bodies both ways.
//!
//! Modules:
//! - [`config`]: the TOML configuration, validated once;
//! - [`app`]: the router and the middleware stack;
//! - [`auth`]: client authentication and authorization;
//! - [`access_log`]: one log line and request metrics per request;
//! - [`advert_cache`]: upload-pack advertisements and `ls-refs` answers, in memory;
//! - [`admin`]: the admin API (repository deletion);
//! - [`adaptive`]: the per-client limit moving with the storage tier's saturation;
//! - [`limits`]: the per-repository and per-client limits on node-bound fetches;
//! - [`metrics`]: the request path's metric families;
//! - [`git`]: the smart-HTTP handlers and the one parsed view of a request;
//! - [`body`]: streamed, metered response bodies;
//! - [`body_pace`]: a minimum rate and a deadline for request bodies;
//! - [`client_addr`]: the client's address, through trusted proxies;
//! - [`fetch_body`]: fetch request bodies in memory, within a shared budget;
//! - [`error`]: the mapping of failures to responses;
//! - [`ops`]: `/-/health`, `/-/ready` and `/-/metrics`;
//! - [`peers`]: a fleet of gateways, one owner per pack-cache key;
//! - [`progress`]: noticing clients that stopped reading;
//! - [`reload`]: what SIGHUP changes while serving;
//! - [`server`]: connections, TLS, header timeouts and draining;
//! - [`state`]: what the handlers share;
//! - [`zero_copy`]: pack cache bytes sent with `sendfile`.
#![deny(missing_docs)]

pub mod access_log;
pub mod adaptive;
pub mod admin;
pub mod advert_cache;
pub mod app;
pub mod auth;
pub mod body;
pub mod body_pace;
pub mod client_addr;
pub mod config;
pub mod error;
pub mod fetch_body;
pub mod git;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod peers;
pub mod progress;
pub mod reload;
pub mod server;
pub mod state;
pub mod zero_copy;

use std::future::Future;
use std::sync::Arc;

use config::Config;
use gitgate_storage_client::cluster::{Cluster, ClusterMetrics, ClusterSettings, ReplicationMode};
use gitgate_storage_client::metadata::postgres::PostgresStore;
use gitgate_storage_client::NodeSet;
use tokio::net::TcpListener;
use tokio_util::task::AbortOnDropHandle;

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A storage node could not be opened.
    #[error(transparent)]
    Nodes(#[from] gitgate_storage_client::ConnectError),
    /// The pack cache could not be opened.
    #[error("pack cache: {0}")]
    Cache(#[from] gitgate_packcache::store::StoreError),
    /// Metrics could not be registered (a duplicate name: a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] server::TlsError),
    /// The metadata store could not be opened.
    #[error("metadata store: {0}")]
    Metadata(#[from] gitgate_storage_client::metadata::StoreError),
    /// Serving failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// Serve on `listener` until `shutdown` completes, then let in-flight requests finish
/// for at most `listen.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let registry = prometheus::Registry::new();
    let nodes = NodeSet::connect(&config.storage.nodes, &registry).await?;
    let cache = if config.cache.enabled {
        let metrics = gitgate_packcache::CacheMetrics::register(&registry)?;
        let cache = gitgate_packcache::PackCache::open(config.cache.cache.clone(), metrics).await?;
        tracing::info!(dir = %cache.life_dir().display(), max_age = ?config.cache.cache.max_age, "pack cache enabled");
        Some(cache)
    } else {
        tracing::info!("pack cache disabled");
        None
    };
    // Advertisements are cached in memory alongside the pack cache (and off with it).
    // Not in `sync` replication: there a replica serving the current generation may
    // also hold an unacknowledged push's refs, so an advertisement is not a function of
    // the generation, and a cached one could name objects other replicas lack.
    let sync_replicas = matches!(
        config.storage.replication,
        config::storage::Replication::Sync
    ) && config.storage.nodes.len() > 1;
    let adverts = if config.cache.enabled && !sync_replicas {
        Some(advert_cache::AdvertCache::new(
            config.cache.cache.max_age,
            &registry,
        )?)
    } else {
        None
    };
    // Evicts expired entries even when no requests come in; stops when serve returns.
    let _evictor = cache
        .as_ref()
        .map(|c| c.spawn_evictor(evict_every(config.cache.cache.max_age)));
    let metrics = metrics::GatewayMetrics::register(&registry)?;
    let connections_refused = metrics.connections_refused.clone();
    let limiter = Arc::new(limits::FetchLimits::new(
        limits::LimitSettings {
            limit: config.limits.fetch_concurrency_per_repo,
            max_queue: config.limits.fetch_queue_per_repo,
            max_wait: config.limits.fetch_queue_timeout,
        },
        limits::LimitSettings {
            limit: config.limits.client_concurrency,
            max_queue: config.limits.client_queue,
            max_wait: config.limits.client_queue_timeout,
        },
        metrics.clone(),
    ));
    if config.auth.anonymous == Some(auth::Permission::Write) {
        tracing::warn!("auth.anonymous = \"write\": anyone who can reach this gateway may push");
    }
    let health = Arc::new(gitgate_storage_client::health::HealthMonitor::new(
        nodes.nodes().iter().map(|n| n.name().to_owned()).collect(),
        config.storage.health,
        &registry,
    )?);
    // Active checks run while serving and stop with serve.
    let health_checks = health.spawn(nodes.nodes().to_vec());
    // The per-client limit as a metric; in adaptive mode it moves while serving.
    let gauges = adaptive::LimitGauges::register(&registry, &limiter)?;
    let adaptive = config.limits.adaptive.then(|| {
        let l = &config.limits;
        adaptive::spawn(
            limiter.clone(),
            health.clone(),
            adaptive::AdaptiveSettings {
                interval: l.adaptive_interval,
                min: l.adaptive_min,
                git_per_core: l.adaptive_git_per_core,
                max_ttfb: l.adaptive_max_ttfb,
            },
            gauges,
        )
    });
    let (cluster, shared_store) = open_cluster(&config, nodes, health, &registry).await?;
    // A fleet: register with the shared store and keep the live set fresh while
    // serving (config validation guarantees the store is PostgreSQL).
    let peers = match (&config.cluster, shared_store) {
        (Some(settings), Some(store)) => {
            let max_age = config.cache.cache.max_age;
            Some(peers::Peers::join(settings.clone(), store, max_age, &registry).await?)
        }
        _ => None,
    };
    let heartbeat = peers.as_ref().map(|p| p.spawn_heartbeat());
    // Background work runs while serving and stops with serve: registering repositories
    // found on the nodes, replication jobs, and the reconciler (whose first pass, at
    // once, resolves write markers a previous life left).
    let discovery = {
        let cluster = cluster.clone();
        AbortOnDropHandle::new(tokio::spawn(async move {
            match cluster.discover_all().await {
                Ok(n) => tracing::info!(registered = n, "discovery finished"),
                Err(err) => tracing::warn!(error = %err, "discovery failed"),
            }
        }))
    };
    let workers = cluster.spawn_workers();
    let reconciler = cluster.spawn_reconciler();
    let state = Arc::new(state::AppState {
        cluster,
        create_on_push: config.storage.create_on_push,
        fetch_bodies: fetch_body::FetchBodies::new(
            config.limits.fetch_body_budget,
            config.limits.max_fetch_request_bytes,
            config.limits.max_gzip_ratio,
        ),
        max_push_bytes: config.limits.max_push_bytes,
        cache,
        adverts,
        registry,
        metrics,
        limiter,
        auth: std::sync::RwLock::new(Arc::new(config.auth.clone())),
        peers: peers.clone(),
    });
    let tls = match (&config.listen.tls_cert, &config.listen.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls_acceptor(cert, key)?),
        _ => None,
    };
    let router = app::app(
        state.clone(),
        config.limits.body_idle_timeout,
        config.limits.pace(),
        Arc::new(client_addr::TrustedProxies::new(
            config.limits.trusted_proxies.clone(),
        )),
    );
    // Reloads on SIGHUP while serving; stops with serve.
    let reloader = config.path.clone().map(|path| {
        AbortOnDropHandle::new(tokio::spawn(reload::on_sighup(path, config.clone(), state)))
    });
    let settings = server::ServerSettings {
        tls,
        header_timeout: config.limits.header_timeout,
        shutdown_grace: config.listen.shutdown_grace,
        send_timeout: config.limits.send_timeout,
        connections: gitgate_storage_client::daemon::connections::ConnectionLimits::new(
            config.limits.max_connections,
            config.limits.max_connections_per_client,
        ),
        refused: connections_refused,
    };
    // When shutdown starts, leave the fleet first, so peers stop choosing this gateway
    // as an owner while it drains.
    let shutdown = async move {
        shutdown.await;
        if let Some(heartbeat) = heartbeat {
            heartbeat.leave().await;
        }
    };
    let served = server::run(listener, router, settings, shutdown).await;
    // Stop the background work and wait for each task to end, in the order it depends
    // on the others: reloads and discovery, then replication and repair, then health.
    let tasks =
        reloader
            .into_iter()
            .chain(adaptive)
            .chain([discovery, workers, reconciler, health_checks]);
    for task in tasks {
        task.abort();
        // A cancelled task's result says so; nothing to report.
        let _ = task.await;
    }
    Ok(served?)
}

/// Open the metadata store and join it with the nodes; the shared store is also
/// returned on its own (the fleet registry lives there).
async fn open_cluster(
    config: &Config,
    nodes: NodeSet,
    health: Arc<gitgate_storage_client::health::HealthMonitor>,
    registry: &prometheus::Registry,
) -> Result<(Arc<Cluster>, Option<PostgresStore>), ServeError> {
    use gitgate_storage_client::metadata::embedded::EmbeddedStore;
    let (store, shared): (Arc<dyn gitgate_storage_client::metadata::MetadataStore>, _) =
        match &config.metadata {
            config::MetadataConfig::Embedded(path) => {
                tracing::info!(path = %path.display(), "embedded metadata store");
                (Arc::new(EmbeddedStore::open(path).await?), None)
            }
            config::MetadataConfig::Postgres(url) => {
                tracing::info!("postgres metadata store");
                let store = PostgresStore::open(url).await?;
                (Arc::new(store.clone()), Some(store))
            }
        };
    let storage = &config.storage;
    let factor = usize::try_from(storage.replication_factor)
        .unwrap_or(usize::MAX)
        .min(nodes.nodes().len());
    let settings = ClusterSettings {
        replication_factor: factor,
        mode: match storage.replication {
            config::Replication::Async => ReplicationMode::Async,
            config::Replication::Sync => ReplicationMode::Sync,
        },
        lock_timeout: storage.lock_timeout,
        stream_idle_timeout: storage.stream_idle_timeout,
        reconcile_interval: storage.reconcile_interval,
        workers: storage.replication_workers,
        max_retry_delay: storage.replication_retry_max,
        create_on_push: storage.create_on_push,
        owner: gateway_name(),
    };
    tracing::info!(nodes = nodes.nodes().len(), replication_factor = factor, mode = ?settings.mode, owner = %settings.owner, "storage cluster");
    let metrics = ClusterMetrics::register(registry)?;
    Ok((
        Arc::new(Cluster::new(nodes, health, store, settings, metrics)),
        shared,
    ))
}

/// This gateway's name in leases and write markers: host, process id and start time.
fn gateway_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "gateway".into());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{host}-{}-{started}", std::process::id())
}

/// How often the evictor looks for expired entries: a tenth of `max_age`, between 100 ms
/// and 10 s.
fn evict_every(max_age: std::time::Duration) -> std::time::Duration {
    (max_age / 10).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(10),
    )
}
