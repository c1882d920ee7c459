//! [`PackCache`]: the index, admission, the disk budget and eviction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::admission::Admission;
use crate::config::CacheConfig;
use crate::entry::{Entry, Status};
use crate::key::CacheKey;
use crate::metrics::CacheMetrics;
use crate::reader::Reader;
use crate::store::{FileStore, StoreError};
use crate::Upstream;

/// What a lookup decided.
pub enum Fetch {
    /// An entry existed (complete or being written): read it.
    Hit(Reader),
    /// A new entry was made and its producer started: read it.
    Miss(Reader),
    /// Do not use the cache for this request: stream straight from upstream.
    Bypass(BypassReason),
}

/// Why a request bypasses the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BypassReason {
    /// The key has not been seen `min_occurrences` times yet.
    NotAdmitted,
    /// The disk budget (`max_bytes`) is used up by entries still in use.
    OverBudget,
    /// The filesystem has less than `min_free_bytes` free.
    LowDiskSpace,
    /// The entry file could not be created.
    StoreError,
}

impl BypassReason {
    /// Short label for logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotAdmitted => "not_admitted",
            Self::OverBudget => "over_budget",
            Self::LowDiskSpace => "low_disk_space",
            Self::StoreError => "store_error",
        }
    }
}

/// Shared internals; entries, readers and producers hold an `Arc` of it.
pub struct Inner {
    /// Settings; all but `dir` can change while running ([`PackCache::reconfigure`]).
    config: std::sync::RwLock<CacheConfig>,
    store: FileStore,
    admission: std::sync::RwLock<Arc<Admission>>,
    pub(crate) metrics: CacheMetrics,
    /// Live entries. Lock order: this lock, then an entry's lock. Never held across
    /// `.await`.
    index: Mutex<HashMap<CacheKey, Arc<Entry>>>,
    /// Bytes of files of entries in the index.
    usage: AtomicU64,
    /// Test hook: writes past this offset fail.
    fault_write_limit: Option<u64>,
}

/// The pack cache.
#[derive(Clone)]
pub struct PackCache {
    inner: Arc<Inner>,
}

impl PackCache {
    /// Open the cache in `config.dir`, removing leftovers of earlier runs.
    pub async fn open(config: CacheConfig, metrics: CacheMetrics) -> Result<Self, StoreError> {
        Self::open_with_fault(config, metrics, None).await
    }

    pub(crate) async fn open_with_fault(
        config: CacheConfig,
        metrics: CacheMetrics,
        fault_write_limit: Option<u64>,
    ) -> Result<Self, StoreError> {
        let dir = config.dir.clone();
        let store = tokio::task::spawn_blocking(move || FileStore::open_blocking(&dir))
            .await
            .map_err(|join| StoreError::Io {
                op: "opening",
                path: config.dir.clone(),
                source: std::io::Error::other(join),
            })??;
        metrics
            .enabled
            .with_label_values(&[&config.dir.display().to_string(), &humanize(config.max_age)])
            .set(1);
        let admission = Admission::new(config.min_occurrences, config.max_age);
        Ok(Self {
            inner: Arc::new(Inner {
                config: std::sync::RwLock::new(config),
                store,
                admission: std::sync::RwLock::new(Arc::new(admission)),
                metrics,
                index: Mutex::new(HashMap::new()),
                usage: AtomicU64::new(0),
                fault_write_limit,
            }),
        })
    }

    /// Look `key` up; join a live entry, or (if admitted and within budget) create one
    /// whose producer runs `upstream()`, or tell the caller to bypass.
    pub async fn fetch(&self, key: CacheKey, upstream: impl FnOnce() -> Upstream) -> Fetch {
        let inner = &self.inner;
        inner.evict_expired();
        if let Some(reader) = inner.join(&key) {
            inner.metrics.lookups.with_label_values(&["hit"]).inc();
            return Fetch::Hit(reader);
        }
        if !inner.admission().admit(&key) {
            return inner.bypass(BypassReason::NotAdmitted);
        }
        if let Some(reason) = self.make_room().await {
            return inner.bypass(reason);
        }
        let store_inner = inner.clone();
        let created =
            tokio::task::spawn_blocking(move || store_inner.store.create_blocking()).await;
        let (file, path) = match created {
            Ok(Ok(created)) => created,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot create pack cache file; bypassing");
                inner.metrics.lookups.with_label_values(&["error"]).inc();
                return Fetch::Bypass(BypassReason::StoreError);
            }
            Err(join) => {
                tracing::warn!(error = %join, "cannot create pack cache file; bypassing");
                inner.metrics.lookups.with_label_values(&["error"]).inc();
                return Fetch::Bypass(BypassReason::StoreError);
            }
        };
        let mut index = inner.lock_index();
        // Someone may have created the entry while we made the file (I1).
        if let Some(existing) = index.get(&key).cloned() {
            if joinable(&existing) {
                let reader = Reader::attach(inner.clone(), existing);
                drop(index);
                unlink_later(path);
                inner.metrics.lookups.with_label_values(&["hit"]).inc();
                return Fetch::Hit(reader);
            }
        }
        let entry = Arc::new(Entry::new(key, file, path));
        index.insert(key, entry.clone());
        inner.metrics.entries.set(index.len() as i64);
        let reader = Reader::attach(inner.clone(), entry.clone());
        drop(index);
        inner.metrics.lookups.with_label_values(&["miss"]).inc();
        // I6: the producer is its own task, not part of this request.
        tokio::spawn(crate::producer::run(inner.clone(), entry, upstream()));
        Fetch::Miss(reader)
    }

    /// Evict entries past `max_age` now (also done on every lookup and by
    /// [`PackCache::spawn_evictor`]).
    pub fn evict_expired(&self) {
        self.inner.evict_expired();
    }

    /// Start a background task that evicts expired entries every `every`; it stops
    /// when the returned handle is dropped.
    pub fn spawn_evictor(&self, every: Duration) -> EvictorHandle {
        let inner = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match inner.upgrade() {
                    Some(inner) => inner.evict_expired(),
                    None => return,
                }
            }
        });
        EvictorHandle(task)
    }

    /// Number of live entries.
    pub fn entries(&self) -> usize {
        self.inner.lock_index().len()
    }

    /// Bytes of entry files in the index.
    pub fn usage(&self) -> u64 {
        self.inner.usage.load(Ordering::Relaxed)
    }

    /// This process life's directory of entry files.
    pub fn life_dir(&self) -> &std::path::Path {
        self.inner.store.life_dir()
    }

    /// Apply new `max_age`, `min_occurrences`, `max_bytes` and `min_free_bytes` (the
    /// directory cannot change while running). Sighting counts restart when admission
    /// settings change.
    pub fn reconfigure(
        &self,
        max_age: Duration,
        min_occurrences: u32,
        max_bytes: u64,
        min_free_bytes: u64,
    ) {
        let inner = &self.inner;
        let mut config = inner.config.write().unwrap_or_else(|p| p.into_inner());
        if config.min_occurrences != min_occurrences || config.max_age != max_age {
            *inner.admission.write().unwrap_or_else(|p| p.into_inner()) =
                Arc::new(Admission::new(min_occurrences, max_age));
        }
        config.max_age = max_age;
        config.min_occurrences = min_occurrences;
        config.max_bytes = max_bytes;
        config.min_free_bytes = min_free_bytes;
        drop(config);
        inner.metrics.enabled.reset();
        let dir = inner
            .store
            .life_dir()
            .parent()
            .unwrap_or(inner.store.life_dir())
            .display()
            .to_string();
        inner
            .metrics
            .enabled
            .with_label_values(&[&dir, &humanize(max_age)])
            .set(1);
        inner.evict_expired();
    }

    /// Evict old complete entries until a new one fits; `Some` if it still does not.
    async fn make_room(&self) -> Option<BypassReason> {
        let inner = &self.inner;
        let (max_bytes, min_free_bytes) = {
            let c = inner.config();
            (c.max_bytes, c.min_free_bytes)
        };
        while inner.usage.load(Ordering::Relaxed) >= max_bytes {
            if !inner.evict_oldest("max_bytes") {
                return Some(BypassReason::OverBudget);
            }
        }
        if min_free_bytes == 0 {
            return None;
        }
        loop {
            let probe = inner.clone();
            let free = tokio::task::spawn_blocking(move || probe.store.free_bytes_blocking()).await;
            match free {
                Ok(Ok(free)) if free >= min_free_bytes => return None,
                Ok(Ok(_)) => {
                    if !inner.evict_oldest("low_disk") {
                        return Some(BypassReason::LowDiskSpace);
                    }
                }
                _ => return Some(BypassReason::StoreError),
            }
        }
    }
}

/// Owns the background eviction task; dropping it stops the task.
pub struct EvictorHandle(tokio::task::JoinHandle<()>);

impl Drop for EvictorHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn joinable(entry: &Entry) -> bool {
    let state = entry.lock();
    state.in_index
        && matches!(state.status, Status::Writing | Status::Done)
        && state.spill_at.is_none()
}

fn unlink_later(path: std::path::PathBuf) {
    tokio::spawn(async move {
        if let Err(err) = tokio::fs::remove_file(&path).await {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %err, "could not remove pack cache file");
            }
        }
    });
}

fn humanize(d: Duration) -> String {
    humantime_like(d)
}

/// `5m`, `30s`, `1h`, `250ms`: a compact label for the `max_age` metric label.
fn humantime_like(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 {
        format!("{}ms", d.as_millis())
    } else if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

impl Inner {
    fn config(&self) -> CacheConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn admission(&self) -> Arc<Admission> {
        self.admission
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lock_index(&self) -> MutexGuard<'_, HashMap<CacheKey, Arc<Entry>>> {
        self.index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bypass(&self, reason: BypassReason) -> Fetch {
        self.metrics.lookups.with_label_values(&["bypass"]).inc();
        Fetch::Bypass(reason)
    }

    pub(crate) fn fault_write_limit(&self) -> Option<u64> {
        self.fault_write_limit
    }

    pub(crate) fn add_usage(&self, bytes: u64) {
        let total = self.usage.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.metrics.disk_usage.set(total as i64);
    }

    fn join(self: &Arc<Self>, key: &CacheKey) -> Option<Reader> {
        let index = self.lock_index();
        let entry = index.get(key)?.clone();
        if !joinable(&entry) {
            return None;
        }
        let reader = Reader::attach(self.clone(), entry);
        drop(index);
        Some(reader)
    }

    /// Take `entry` out of the index (if it is still there) and unlink its file.
    pub(crate) fn remove(&self, entry: &Arc<Entry>, reason: &'static str) {
        let mut index = self.lock_index();
        self.remove_locked(&mut index, entry, reason);
    }

    fn remove_locked(
        &self,
        index: &mut HashMap<CacheKey, Arc<Entry>>,
        entry: &Arc<Entry>,
        reason: &'static str,
    ) {
        if index.get(&entry.key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            index.remove(&entry.key);
        }
        let mut state = entry.lock();
        if !state.in_index {
            return;
        }
        state.in_index = false;
        let written = state.written;
        drop(state);
        let total = self
            .usage
            .fetch_sub(written, Ordering::Relaxed)
            .saturating_sub(written);
        self.metrics.disk_usage.set(total as i64);
        self.metrics.entries.set(index.len() as i64);
        self.metrics.evictions.with_label_values(&[reason]).inc();
        tracing::debug!(key = %entry.key, reason, bytes = written, "pack cache entry removed");
        // I5: readers holding the file keep reading it after the name is gone.
        unlink_later(entry.path.clone());
    }

    /// A reader left. The last reader leaving an entry still being written stops the
    /// producer (there is nobody to write for) and removes the entry first, so nobody
    /// joins an entry that is about to fail.
    pub(crate) fn release(&self, entry: &Arc<Entry>, reader: u64) {
        let mut index = self.lock_index();
        let mut state = entry.lock();
        state.readers = state.readers.saturating_sub(1);
        state.spill.retain(|(id, _)| *id != reader);
        let abandon = state.readers == 0 && matches!(state.status, Status::Writing);
        drop(state);
        if abandon {
            self.remove_locked(&mut index, entry, "abandoned");
            entry.abandoned.notify_one();
        }
    }

    fn evict_expired(&self) {
        let max_age = self.config().max_age;
        let mut index = self.lock_index();
        let expired: Vec<Arc<Entry>> = index
            .values()
            .filter(|e| e.created.elapsed() >= max_age)
            .cloned()
            .collect();
        for entry in expired {
            self.remove_locked(&mut index, &entry, "max_age");
        }
    }

    /// Evict the oldest complete entry; false if there is none.
    fn evict_oldest(&self, reason: &'static str) -> bool {
        let mut index = self.lock_index();
        let oldest = index
            .values()
            .filter(|e| matches!(e.lock().status, Status::Done))
            .min_by_key(|e| e.created)
            .cloned();
        match oldest {
            Some(entry) => {
                self.remove_locked(&mut index, &entry, reason);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::humantime_like;
    use std::time::Duration;

    #[test]
    fn max_age_labels() {
        assert_eq!(humantime_like(Duration::from_secs(300)), "5m");
        assert_eq!(humantime_like(Duration::from_secs(90)), "90s");
        assert_eq!(humantime_like(Duration::from_millis(250)), "250ms");
        assert_eq!(humantime_like(Duration::from_secs(7200)), "2h");
    }
}
