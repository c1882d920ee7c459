//! `gitgate-node`: serve the bare repositories under one directory to gitgate gateways.

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = NodeConfig::load(&args.config, std::env::var("GITGATE_NODE_TOKEN").ok())
        .with_context(|| format!("loading {}", args.config.display()))?;
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
    let verifier = Verifier::new(Secret::new(&config.token), config.auth_mode, DEFAULT_SKEW);
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gitgate-node listening");
    // One line on stdout for scripts and test harnesses that asked for port 0.
    println!("listening on http://{addr}");
    gitgate_storage_node::serve(
        listener,
        Arc::new(node),
        Arc::new(verifier),
        registry,
        shutdown_signal(),
    )
    .await?;
    tracing::info!("gitgate-node stopped");
    Ok(())
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
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM; only ctrl-c stops the node");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
