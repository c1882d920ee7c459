//! `[cache]`: the pack cache's switch, directory, age, admission and disk budget.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{bytes, ConfigError};

/// `[cache]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Whether fetches go through the pack cache.
    pub enabled: bool,
    /// The cache's own settings (`dir` resolved to an absolute path).
    pub cache: gitgate_packcache::CacheConfig,
}

/// `[cache]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCache {
    enabled: bool,
    dir: PathBuf,
    #[serde(with = "humantime_serde")]
    max_age: Duration,
    min_occurrences: u32,
    #[serde(deserialize_with = "bytes")]
    max_bytes: u64,
    #[serde(deserialize_with = "bytes")]
    min_free_bytes: u64,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: "data/pack-cache".into(),
            max_age: Duration::from_secs(300),
            min_occurrences: 1,
            max_bytes: 10 << 30,
            min_free_bytes: 1 << 30,
        }
    }
}

impl RawCache {
    /// Check the section and resolve `dir` against `base`.
    pub(super) fn resolve(self, base: &Path, problems: &mut Vec<ConfigError>) -> CacheSettings {
        if self.max_age.is_zero() {
            problems.push(ConfigError::invalid(
                "cache.max_age",
                "must be longer than zero",
            ));
        }
        CacheSettings {
            enabled: self.enabled,
            cache: gitgate_packcache::CacheConfig {
                dir: base.join(self.dir),
                max_age: self.max_age,
                min_occurrences: self.min_occurrences,
                max_bytes: self.max_bytes,
                min_free_bytes: self.min_free_bytes,
            },
        }
    }
}
