//! Per-repository write locks: the guard type both stores hand out, and the in-process
//! lock table the embedded store uses.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gitgate_proto::RepoPath;
use tokio::sync::OwnedMutexGuard;

use super::StoreError;

impl LocalLocks<RepoPath> {
    pub(crate) async fn lock(
        &self,
        repo: &RepoPath,
        wait: Duration,
    ) -> Result<RepoLock, StoreError> {
        self.lock_for(repo, wait)
            .await
            .ok_or_else(|| StoreError::LockTimeout(repo.clone()))
    }
}

/// A held repository lock; released when dropped.
pub struct RepoLock {
    _held: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for RepoLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RepoLock")
    }
}

impl RepoLock {
    /// A lock that is released when `held` is dropped.
    pub(crate) fn new(held: impl Send + Sync + 'static) -> Self {
        Self {
            _held: Box::new(held),
        }
    }
}

type Table<K> = Arc<Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>>;

/// Locks held in this process, one mutex per key (a repository, or a repository and a
/// node) that someone holds or waits for; entries go away when unused.
#[derive(Debug, Clone)]
pub(crate) struct LocalLocks<K = RepoPath> {
    table: Table<K>,
}

impl<K> Default for LocalLocks<K> {
    fn default() -> Self {
        Self {
            table: Arc::default(),
        }
    }
}

struct LocalGuard<K: Eq + Hash> {
    guard: Option<OwnedMutexGuard<()>>,
    table: Table<K>,
    repo: K,
}

impl<K: Eq + Hash> Drop for LocalGuard<K> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut table = lock_table(&self.table);
        if table
            .get(&self.repo)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            table.remove(&self.repo);
        }
    }
}

fn lock_table<K>(
    table: &Table<K>,
) -> std::sync::MutexGuard<'_, HashMap<K, Arc<tokio::sync::Mutex<()>>>> {
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> LocalLocks<K> {
    fn entry(&self, key: &K) -> Arc<tokio::sync::Mutex<()>> {
        lock_table(&self.table)
            .entry(key.clone())
            .or_default()
            .clone()
    }

    fn guard(&self, key: &K, guard: OwnedMutexGuard<()>) -> RepoLock {
        RepoLock::new(LocalGuard {
            guard: Some(guard),
            table: self.table.clone(),
            repo: key.clone(),
        })
    }

    /// Wait at most `wait` for the lock of `key`.
    pub(crate) async fn lock_for(&self, key: &K, wait: Duration) -> Option<RepoLock> {
        let mutex = self.entry(key);
        tokio::time::timeout(wait, mutex.lock_owned())
            .await
            .ok()
            .map(|guard| self.guard(key, guard))
    }

    /// The lock of `key` if nobody holds it.
    pub(crate) fn try_lock(&self, key: &K) -> Option<RepoLock> {
        let mutex = self.entry(key);
        let guard = mutex.try_lock_owned().ok();
        // On failure the entry stays: its holder removes it when done.
        guard.map(|guard| self.guard(key, guard))
    }
}
