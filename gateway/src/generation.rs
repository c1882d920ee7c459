//! Per-repository generations, as this gateway sees them.
//!
//! A repository's generation is part of every pack cache key, so a change to the
//! repository makes new fetches miss instead of being answered from an entry made
//! before it. Until replica metadata exists, a generation is an in-memory counter that
//! every push through this gateway bumps, once when it starts and once when it ends (so
//! entries made while it ran are not reused after). Pushes that bypass the gateway are
//! not seen; entries made before them live at most `cache.max_age`.

use std::collections::HashMap;
use std::sync::Mutex;

use gitgate_proto::RepoPath;

/// Generation counters.
#[derive(Debug, Default)]
pub struct Generations {
    counters: Mutex<HashMap<RepoPath, u64>>,
}

impl Generations {
    /// The current generation of `repo`.
    pub fn get(&self, repo: &RepoPath) -> u64 {
        self.lock().get(repo).copied().unwrap_or(0)
    }

    /// Bump `repo`'s generation.
    pub fn bump(&self, repo: &RepoPath) {
        *self.lock().entry(repo.clone()).or_insert(0) += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RepoPath, u64>> {
        // Plain counters stay valid after a panic elsewhere.
        self.counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
