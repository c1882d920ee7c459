//! What both binaries (`gitgate` and `gitgate-node`) do the same way around their
//! server: logging setup, the shutdown signal, reloading on SIGHUP, the shape of a
//! configuration error, connection limits ([`connections`]) and, for the node, the
//! HTTP serving loop ([`http_server`]).
//!
//! It lives in this crate because it is the lowest one with a runtime that both binaries
//! reach (the gateway through `gitgate_storage_client::daemon`); nothing in it knows of
//! nodes.

pub mod connections;
pub mod http_server;

use std::future::Future;
use std::path::PathBuf;

use serde::Deserialize;

/// How log lines are written (`[log] format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Log to stderr in `format`; `RUST_LOG`, when set, wins over `default_filter`.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM; only ctrl-c stops the process");
            if let Err(err) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %err, "cannot listen for ctrl-c either");
                std::future::pending::<()>().await;
            }
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

/// Run `reload` on every SIGHUP, for as long as the returned future is polled.
pub async fn on_sighup<F, Fut>(mut reload: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGHUP; reloading is off");
            return;
        }
    };
    while hup.recv().await.is_some() {
        reload().await;
    }
}

/// Read a configuration file without blocking the runtime.
pub async fn read_config(path: PathBuf) -> Result<String, ConfigError> {
    tokio::fs::read_to_string(&path)
        .await
        .map_err(|source| ConfigError::Read { path, source })
}

/// Parse TOML `text` into `T`. A type error (a wrong type, an unknown variant, a size or
/// duration that does not parse) names its key path, such as `auth.anonymous`.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text)?;
    serde_path_to_error::deserialize(de).map_err(|err| {
        let key = err.path().to_string();
        let inner = err.into_inner();
        if key.is_empty() || key == "." {
            ConfigError::Parse(inner)
        } else {
            ConfigError::invalid(key, inner.to_string().trim_end().to_owned())
        }
    })
}

/// A configuration problem, named by its key.
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
        /// The key path, such as `storage.nodes[0].token`.
        key: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

impl ConfigError {
    /// A value at `key` that is not acceptable, and why.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// One error for `problems`: the only one, or all of them; `None` when empty.
    pub fn from_problems(mut problems: Vec<ConfigError>) -> Option<Self> {
        match problems.len() {
            0 => None,
            1 => Some(problems.remove(0)),
            _ => Some(Self::Many(problems)),
        }
    }
}
