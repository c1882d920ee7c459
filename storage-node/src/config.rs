//! The `gitgate-node` configuration file.
//!
//! ```toml
//! [listen]
//! addr = "127.0.0.1:9100"
//!
//! [node]
//! path = "repos"              # relative to this file's directory
//! token = "shared secret"     # or the GITGATE_NODE_TOKEN environment variable
//! auth_mode = "enforced"      # or "transitioning" while rotating the secret
//! git = "git"                 # program, looked up in PATH once at start
//!
//! [limits]
//! header_timeout = "10s"      # for a request's headers, and between kept-alive requests (keep it above the 4 s gateways keep idle connections)
//! max_connections = 1024      # open connections at once (0: no limit)
//! max_connections_per_client = 256
//! shutdown_grace = "30s"      # in-flight requests may finish after SIGTERM
//!
//! [log]
//! format = "text"             # or "json"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::Mode;
pub use crate::daemon::ConfigError;
use crate::daemon::LogFormat;

/// The parsed, resolved node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Listen address.
    pub addr: SocketAddr,
    /// Root of the repositories (absolute).
    pub path: PathBuf,
    /// Shared secret with the gateways.
    pub token: String,
    /// Token enforcement mode.
    pub auth_mode: Mode,
    /// git program.
    pub git: PathBuf,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// `[limits]`.
    pub limits: Limits,
}

/// `[limits]`: how connections are served.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Time allowed for a request's headers, and between requests on one connection.
    #[serde(with = "humantime_serde")]
    pub header_timeout: std::time::Duration,
    /// Open connections at once (0: no limit).
    pub max_connections: usize,
    /// Open connections at once from one address (0: no limit).
    pub max_connections_per_client: usize,
    /// Time in-flight requests get after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: std::time::Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_client: 256,
            shutdown_grace: std::time::Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// The serving settings these limits make.
    pub fn serve_settings(&self) -> crate::daemon::http_server::ServeSettings {
        crate::daemon::http_server::ServeSettings {
            header_timeout: self.header_timeout,
            shutdown_grace: self.shutdown_grace,
            connections: crate::daemon::connections::ConnectionLimits::new(
                self.max_connections,
                self.max_connections_per_client,
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Listen,
    node: NodeSection,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    log: Log,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Listen {
    addr: SocketAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSection {
    path: PathBuf,
    token: Option<String>,
    #[serde(default = "default_mode")]
    auth_mode: Mode,
    #[serde(default = "default_git")]
    git: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Log {
    #[serde(default)]
    format: LogFormat,
}

fn default_mode() -> Mode {
    Mode::Enforced
}

fn default_git() -> PathBuf {
    "git".into()
}

impl NodeConfig {
    /// Load `path`; `env_token` (from `GITGATE_NODE_TOKEN`) overrides `node.token`.
    pub async fn load(path: &Path, env_token: Option<String>) -> Result<Self, ConfigError> {
        let text = crate::daemon::read_config(path.to_owned()).await?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base, env_token)
    }

    /// Parse configuration text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path, env_token: Option<String>) -> Result<Self, ConfigError> {
        let file: File = crate::daemon::parse_toml(text)?;
        let token = env_token.or(file.node.token).unwrap_or_default();
        if token.len() < 16 {
            return Err(ConfigError::invalid(
                "node.token",
                "a shared secret of at least 16 characters is required",
            ));
        }
        Ok(Self {
            addr: file.listen.addr,
            path: base.join(file.node.path),
            token,
            auth_mode: file.node.auth_mode,
            git: file.node.git,
            log_format: file.log.format,
            limits: file.limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        let c = NodeConfig::parse(
            "[listen]\naddr = \"127.0.0.1:9100\"\n[node]\npath = \"repos\"\ntoken = \"0123456789abcdef\"\n",
            Path::new("/etc/gitgate"),
            None,
        )
        .expect("valid");
        assert_eq!(c.path, Path::new("/etc/gitgate/repos"));
        assert_eq!(c.auth_mode, Mode::Enforced);
    }

    #[test]
    fn names_the_bad_key() {
        let err = NodeConfig::parse(
            "[listen]\naddr = \"127.0.0.1:9100\"\n[node]\npath = \"r\"\ntoken = \"short\"\n",
            Path::new("/"),
            None,
        )
        .expect_err("short token");
        assert!(err.to_string().starts_with("node.token:"), "{err}");
        let err = NodeConfig::parse(
            "[listen]\naddr = \"127.0.0.1:9100\"\nbogus = 1\n[node]\npath = \"r\"\n",
            Path::new("/"),
            None,
        )
        .expect_err("unknown key");
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = NodeConfig::parse(
            "[listen]\naddr = \"127.0.0.1:9100\"\n[node]\npath = \"r\"\ntoken = \"0123456789abcdef\"\nauth_mode = \"lax\"\n",
            Path::new("/"),
            None,
        )
        .expect_err("unknown mode");
        assert!(err.to_string().contains("transitioning"), "{err}");
    }
}
