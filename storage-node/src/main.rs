//! `gitgate-node`: serve the bare repositories under one directory to gitgate gateways.
//!
//! SIGHUP re-reads the config file and applies `node.token` and `node.auth_mode` (the
//! way a shared secret is rotated); other keys need a restart.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use gitgate_storage_node::auth::{Secret, Verifier, DEFAULT_SKEW};
use gitgate_storage_node::config::NodeConfig;
use gitgate_storage_node::{daemon, Node, NodeSettings};
use tokio_util::task::AbortOnDropHandle;

/// A gitgate storage node.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
}

async fn load(path: &std::path::Path) -> anyhow::Result<NodeConfig> {
    NodeConfig::load(path, std::env::var("GITGATE_NODE_TOKEN").ok())
        .await
        .with_context(|| format!("loading {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = load(&args.config).await?;
    daemon::init_logging(config.log_format, "info");
    let registry = prometheus::Registry::new();
    let metrics = gitgate_storage_node::NodeMetrics::register(&registry, "self")
        .context("registering metrics")?;
    let node = Node::open(NodeSettings {
        root: config.path.clone(),
        git: config.git.clone(),
        metrics,
    })
    .await
    .context("opening node")?;
    let repos = node.list().await.context("discovering repositories")?;
    tracing::info!(root = %config.path.display(), repositories = repos.len(), "discovered repositories");
    let verifier = Arc::new(
        Verifier::new(
            Secret::new(&config.token),
            config.auth_mode,
            DEFAULT_SKEW,
            &registry,
        )
        .context("registering metrics")?,
    );
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gitgate-node listening");
    // One line on stdout for scripts and test harnesses that asked for port 0.
    println!("listening on http://{addr}");
    // Reloads on SIGHUP while serving; aborted when this handle drops.
    let reloader = AbortOnDropHandle::new(tokio::spawn(reload_on_sighup(
        args.config.clone(),
        verifier.clone(),
    )));
    gitgate_storage_node::serve(
        listener,
        Arc::new(node),
        verifier,
        registry,
        config.limits.serve_settings(),
        daemon::shutdown_signal(),
    )
    .await?;
    drop(reloader);
    tracing::info!("gitgate-node stopped");
    Ok(())
}

/// Apply `node.token` and `node.auth_mode` from the config file on every SIGHUP.
async fn reload_on_sighup(path: PathBuf, verifier: Arc<Verifier>) {
    daemon::on_sighup(|| async {
        match load(&path).await {
            Ok(config) => {
                verifier.reload(Secret::new(&config.token), config.auth_mode);
                tracing::info!(auth_mode = ?config.auth_mode, "reloaded node token and auth mode");
            }
            Err(err) => tracing::error!(
                error = format!("{err:#}"),
                "reload failed; keeping the current settings"
            ),
        }
    })
    .await;
}
