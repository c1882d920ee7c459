//! `[log]`: the format of log lines and the default filter.

use serde::Deserialize;

pub use gitgate_storage_client::daemon::LogFormat;

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json` lines.
    pub format: LogFormat,
    /// Default filter (`info`, `debug`, `gitgate=debug,info`, ...); `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}
