//! Cache settings.

use std::path::PathBuf;
use std::time::Duration;

/// How the cache behaves; see DESIGN.md "The pack cache".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Directory for entry files (a private subdirectory is made per process life).
    pub dir: PathBuf,
    /// Entries older than this are evicted.
    pub max_age: Duration,
    /// A key must already have been seen this many times within `max_age` before a
    /// request creates an entry (0: always; 1, the default: from its second occurrence).
    /// Below it, identical requests in flight still share one upstream call.
    pub min_occurrences: u32,
    /// Most bytes of entry files kept on disk.
    pub max_bytes: u64,
    /// Create no entry while the filesystem has less free space than this.
    pub min_free_bytes: u64,
}
