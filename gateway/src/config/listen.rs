//! `[listen]`: where the gateway listens, TLS, and how long shutdown may drain.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// `[listen]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// How long in-flight requests may run after a shutdown signal.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// PEM certificate chain; with `tls_key`, only HTTPS is served.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_grace() -> Duration {
    Duration::from_secs(30)
}

impl ListenConfig {
    /// Check the section and resolve its paths against `base`.
    pub(super) fn resolve(mut self, base: &Path, problems: &mut Vec<ConfigError>) -> Self {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            problems.push(ConfigError::invalid(
                "listen.tls_cert",
                "set both tls_cert and tls_key, or neither",
            ));
        }
        self.tls_cert = self.tls_cert.map(|p| base.join(p));
        self.tls_key = self.tls_key.map(|p| base.join(p));
        self
    }
}
