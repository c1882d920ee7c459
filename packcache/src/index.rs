//! The index: key → live entry, in memory, under one lock that is never held across
//! `.await`; and removal, which takes an entry out of the index, out of disk usage, and
//! unlinks its file.
//!
//! Joining and inserting happen under the index lock, so there is one producer per live
//! key (I1) and a producer that saw its last reader leave can check, under the same lock,
//! that nobody joined since (I6). This module does not decide *when* to remove (the
//! cache and the producer do) and does not touch an entry's published state.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::entry::{DiskUsage, Entry, Follower};
use crate::key::CacheKey;
use crate::metrics::CacheMetrics;
use crate::store::EntryStore;

/// Live entries by key.
#[derive(Debug)]
pub(crate) struct Index {
    /// Lock order: this lock, then an entry's lock. Never held across `.await`.
    entries: Mutex<HashMap<CacheKey, Arc<Entry>>>,
    usage: Arc<DiskUsage>,
    /// The disk budget (`max_bytes`) that [`Index::enforce_budget`] keeps `usage` to.
    budget: AtomicU64,
    store: Arc<dyn EntryStore>,
    metrics: CacheMetrics,
}

/// What [`Index::insert`] did.
pub(crate) enum Insert {
    /// Another request made a joinable entry for the key first; the new one was not
    /// inserted and this follows the existing one.
    Joined(Arc<Entry>, Follower),
    /// The new entry is in the index; this follows it.
    Inserted(Follower),
}

impl Index {
    pub(crate) fn new(store: Arc<dyn EntryStore>, metrics: CacheMetrics, budget: u64) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            usage: Arc::new(DiskUsage::new(metrics.disk_usage.clone())),
            budget: AtomicU64::new(budget),
            store,
            metrics,
        }
    }

    /// The disk usage new entries add to.
    pub(crate) fn usage(&self) -> &Arc<DiskUsage> {
        &self.usage
    }

    /// The disk budget.
    pub(crate) fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    /// Set the disk budget, and keep to it now.
    pub(crate) fn set_budget(&self, budget: u64) {
        self.budget.store(budget, Ordering::Relaxed);
        self.enforce_budget();
    }

    /// While usage is over the budget, evict the oldest complete (or failed) entry.
    /// Entries still being written are never cut: while they alone are over the budget
    /// it stays over, no new entry is made ([`crate::PackCache`] checks before making
    /// one), and the excess goes as soon as they complete. Cheap when under budget; the
    /// producer calls it as its entry grows and when it ends.
    pub(crate) fn enforce_budget(&self) {
        while self.usage.get() > self.budget() && self.evict_oldest("max_bytes") {}
    }

    /// Number of live entries.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Attach a reader to the live entry for `key`, if it can be joined.
    pub(crate) fn join(&self, key: &CacheKey) -> Option<(Arc<Entry>, Follower)> {
        let index = self.lock();
        let entry = index.get(key)?;
        // I1, I6: checked and attached under the index lock.
        entry.joinable().then(|| (entry.clone(), entry.attach()))
    }

    /// Insert a new entry and attach its first reader, unless someone made a joinable
    /// entry for the key while its file was being created: then join that one (I1).
    pub(crate) fn insert(&self, entry: Arc<Entry>) -> Insert {
        let mut index = self.lock();
        if let Some(existing) = index.get(&entry.key()).cloned() {
            if existing.joinable() {
                return Insert::Joined(existing.clone(), existing.attach());
            }
            // A failed entry its producer could not take out (see `Writer`'s drop).
            self.remove_locked(&mut index, &existing, "failed");
        }
        let follower = entry.attach();
        index.insert(entry.key(), entry);
        self.metrics.entries.set(index.len() as i64);
        Insert::Inserted(follower)
    }

    /// Take `entry` out of the index (if it is still there) and unlink its file.
    pub(crate) fn remove(&self, entry: &Arc<Entry>, reason: &'static str) {
        let mut index = self.lock();
        self.remove_locked(&mut index, entry, reason);
    }

    /// Remove `entry` if no reader is attached; whether it was. Under the index lock no
    /// reader can join in between (I6).
    pub(crate) fn remove_if_unread(&self, entry: &Arc<Entry>) -> bool {
        let mut index = self.lock();
        if entry.readers() > 0 {
            return false;
        }
        self.remove_locked(&mut index, entry, "abandoned");
        true
    }

    /// Remove entries at least `max_age` old.
    pub(crate) fn evict_expired(&self, max_age: Duration) {
        let now = Instant::now();
        let mut index = self.lock();
        let expired: Vec<Arc<Entry>> = index
            .values()
            .filter(|e| now.saturating_duration_since(e.created()) >= max_age)
            .cloned()
            .collect();
        for entry in expired {
            self.remove_locked(&mut index, &entry, "max_age");
        }
    }

    /// Evict a failed entry its producer could not take out (see `Writer`'s drop), else
    /// the oldest complete entry; false if there is neither.
    pub(crate) fn evict_oldest(&self, reason: &'static str) -> bool {
        let mut index = self.lock();
        let oldest = index
            .values()
            .find(|e| e.is_failed())
            .or_else(|| {
                index
                    .values()
                    .filter(|e| e.is_done())
                    .min_by_key(|e| e.created())
            })
            .cloned();
        match oldest {
            Some(entry) => {
                self.remove_locked(&mut index, &entry, reason);
                true
            }
            None => false,
        }
    }

    /// Unlink a file in the background (logging failures other than "already gone").
    pub(crate) fn unlink_later(&self, path: PathBuf) {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(err) = store.remove(&path) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %err, "could not remove pack cache file");
                }
            }
        });
    }

    fn remove_locked(
        &self,
        index: &mut HashMap<CacheKey, Arc<Entry>>,
        entry: &Arc<Entry>,
        reason: &'static str,
    ) {
        if index
            .get(&entry.key())
            .is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            index.remove(&entry.key());
        }
        let Some(written) = entry.unindex() else {
            return;
        };
        self.metrics.entries.set(index.len() as i64);
        self.metrics.evictions.with_label_values(&[reason]).inc();
        tracing::debug!(key = %entry.key(), reason, bytes = written, "pack cache entry removed");
        // I5: readers holding the file keep reading it after the name is gone.
        self.unlink_later(entry.path().to_owned());
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<CacheKey, Arc<Entry>>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
