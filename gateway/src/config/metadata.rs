//! `[metadata]`: where replica metadata lives: an embedded file (one gateway) or
//! PostgreSQL (several gateways).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// The environment variable that overrides `metadata.postgres_url`.
pub const POSTGRES_URL_ENV: &str = "GITGATE_POSTGRES_URL";

/// `[metadata]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataConfig {
    /// The embedded store in this file (one gateway).
    Embedded(PathBuf),
    /// PostgreSQL at this URL (shared by several gateways).
    Postgres(String),
}

/// `[metadata]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetadata {
    path: Option<PathBuf>,
    postgres_url: Option<String>,
}

impl RawMetadata {
    /// Exactly one store; the URL may come from [`POSTGRES_URL_ENV`].
    pub(super) fn resolve(
        self,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<MetadataConfig, ConfigError> {
        let url = env(POSTGRES_URL_ENV).or(self.postgres_url);
        match (self.path, url) {
            (Some(_), Some(_)) => Err(ConfigError::invalid(
                "metadata",
                "set either `path` (embedded store) or `postgres_url`, not both",
            )),
            (None, Some(url)) => {
                if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                    Ok(MetadataConfig::Postgres(url))
                } else {
                    Err(ConfigError::invalid(
                        "metadata.postgres_url",
                        "expected a postgres:// or postgresql:// URL",
                    ))
                }
            }
            (path, None) => Ok(MetadataConfig::Embedded(
                base.join(path.unwrap_or_else(|| "data/gitgate.db".into())),
            )),
        }
    }
}
