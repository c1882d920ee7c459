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
//! [log]
//! format = "text"             # or "json"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::Mode;

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
    /// Emit JSON log lines.
    pub json_logs: bool,
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
    /// The TOML is invalid or has unknown keys or wrong types.
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// A key has an invalid value.
    #[error("{key}: {reason}")]
    Invalid {
        /// The key path, such as `node.token`.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Listen,
    node: NodeSection,
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
    auth_mode: String,
    #[serde(default = "default_git")]
    git: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Log {
    #[serde(default)]
    format: Option<String>,
}

fn default_mode() -> String {
    "enforced".into()
}

fn default_git() -> PathBuf {
    "git".into()
}

impl NodeConfig {
    /// Load `path`; `env_token` (from `GITGATE_NODE_TOKEN`) overrides `node.token`.
    pub fn load(path: &Path, env_token: Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base, env_token)
    }

    /// Parse configuration text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path, env_token: Option<String>) -> Result<Self, ConfigError> {
        let file: File = toml::from_str(text)?;
        let token = env_token.or(file.node.token).unwrap_or_default();
        if token.len() < 16 {
            return Err(ConfigError::Invalid {
                key: "node.token",
                reason: "a shared secret of at least 16 characters is required".into(),
            });
        }
        let auth_mode = match file.node.auth_mode.as_str() {
            "enforced" => Mode::Enforced,
            "transitioning" => Mode::Transitioning,
            other => {
                return Err(ConfigError::Invalid {
                    key: "node.auth_mode",
                    reason: format!("expected \"enforced\" or \"transitioning\", got {other:?}"),
                })
            }
        };
        let json_logs = match file.log.format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "log.format",
                    reason: format!("expected \"text\" or \"json\", got {other:?}"),
                })
            }
        };
        Ok(Self {
            addr: file.listen.addr,
            path: base.join(file.node.path),
            token,
            auth_mode,
            git: file.node.git,
            json_logs,
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
    }
}
