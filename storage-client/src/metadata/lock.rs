//! Per-repository write locks: the guard type both stores hand out, and the in-process
//! lock table the embedded store uses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gitgate_proto::RepoPath;
use tokio::sync::OwnedMutexGuard;

use super::StoreError;

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

type Table = Arc<Mutex<HashMap<RepoPath, Arc<tokio::sync::Mutex<()>>>>>;

/// Locks held in this process, one mutex per repository that someone holds or waits
/// for (entries go away when unused).
#[derive(Debug, Default, Clone)]
pub(crate) struct LocalLocks {
    table: Table,
}

struct LocalGuard {
    guard: Option<OwnedMutexGuard<()>>,
    table: Table,
    repo: RepoPath,
}

impl Drop for LocalGuard {
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

fn lock_table(
    table: &Table,
) -> std::sync::MutexGuard<'_, HashMap<RepoPath, Arc<tokio::sync::Mutex<()>>>> {
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LocalLocks {
    fn entry(&self, repo: &RepoPath) -> Arc<tokio::sync::Mutex<()>> {
        lock_table(&self.table)
            .entry(repo.clone())
            .or_default()
            .clone()
    }

    fn guard(&self, repo: &RepoPath, guard: OwnedMutexGuard<()>) -> RepoLock {
        RepoLock::new(LocalGuard {
            guard: Some(guard),
            table: self.table.clone(),
            repo: repo.clone(),
        })
    }

    pub(crate) async fn lock(
        &self,
        repo: &RepoPath,
        wait: Duration,
    ) -> Result<RepoLock, StoreError> {
        let mutex = self.entry(repo);
        match tokio::time::timeout(wait, mutex.lock_owned()).await {
            Ok(guard) => Ok(self.guard(repo, guard)),
            Err(_) => Err(StoreError::LockTimeout(repo.clone())),
        }
    }

    pub(crate) fn try_lock(&self, repo: &RepoPath) -> Option<RepoLock> {
        let mutex = self.entry(repo);
        let guard = mutex.try_lock_owned().ok();
        // On failure the entry stays: its holder removes it when done.
        guard.map(|guard| self.guard(repo, guard))
    }
}
