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
use gitgate_storage_node::{Node, NodeSettings};

/// A gitgate storage node.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
}

fn load(path: &std::path::Path) -> anyhow::Result<NodeConfig> {
    NodeConfig::load(path, std::env::var("GITGATE_NODE_TOKEN").ok())
        .with_context(|| format!("loading {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = load(&args.config)?;
    init_logging(config.json_logs);
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
    let reloader = tokio::spawn(reload_on_sighup(args.config.clone(), verifier.clone()));
    gitgate_storage_node::serve(
        listener,
        Arc::new(node),
        verifier,
        registry,
        shutdown_signal(),
    )
    .await?;
    reloader.abort();
    tracing::info!("gitgate-node stopped");
    Ok(())
}

/// Apply `node.token` and `node.auth_mode` from the config file on every SIGHUP.
async fn reload_on_sighup(path: PathBuf, verifier: Arc<Verifier>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGHUP; reloading is off");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match load(&path) {
            Ok(config) => {
                verifier.reload(Secret::new(&config.token), config.auth_mode);
                tracing::info!(auth_mode = ?config.auth_mode, "reloaded node token and auth mode");
            }
            Err(err) => tracing::error!(
                error = format!("{err:#}"),
                "reload failed; keeping the current settings"
            ),
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM; only ctrl-c stops the node");
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
