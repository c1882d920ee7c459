//! [`PackCache`], the front door: a lookup joins a live entry or flight, or starts a
//! flight (below `min_occurrences`), or (admitted and within the disk budget) creates an
//! entry and starts its producer, or answers [`Fetch::Bypass`].
//! It also owns the settings and when to evict (`max_age` by tokio time, so tests
//! pause it); the room an entry needs on disk is checked in `room`.
//!
//! The index itself, the entries' state and the producer live in their own modules;
//! this one only wires them together.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::admission::Admission;
use crate::config::CacheConfig;
use crate::entry::{Entry, Follower, Writer};
use crate::flight::{Flights, MakeEntry, Started};
use crate::index::{Index, Insert};
use crate::key::CacheKey;
use crate::metrics::CacheMetrics;
use crate::producer::Producer;
use crate::reader::Reader;
use crate::store::{EntryStore, FileStore, StoreError};
use crate::Upstream;

mod room;

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

/// What [`Inner::create`] did.
enum Created {
    /// A new entry, its writer (no producer yet) and its first follower.
    New(Arc<Entry>, Writer, Follower),
    /// Someone else's entry for the key, joined.
    Joined(Arc<Entry>, Follower),
}

/// Shared internals; the evictor holds a weak reference.
struct Inner {
    /// Settings; all but `dir` can change while running ([`PackCache::reconfigure`]).
    config: RwLock<CacheConfig>,
    store: Arc<dyn EntryStore>,
    admission: RwLock<Arc<Admission>>,
    metrics: CacheMetrics,
    index: Arc<Index>,
    flights: Arc<Flights>,
}

/// The pack cache.
#[derive(Clone)]
pub struct PackCache {
    inner: Arc<Inner>,
}

impl PackCache {
    /// Open the cache in `config.dir`, removing leftovers of earlier runs.
    pub async fn open(config: CacheConfig, metrics: CacheMetrics) -> Result<Self, StoreError> {
        let dir = config.dir.clone();
        let store = tokio::task::spawn_blocking(move || FileStore::open_blocking(&dir))
            .await
            .map_err(|join| StoreError::Io {
                op: "opening",
                path: config.dir.clone(),
                source: std::io::Error::other(join),
            })??;
        Ok(Self::with_store(config, metrics, Arc::new(store)))
    }

    /// The cache over any store (tests pass one that injects faults).
    pub(crate) fn with_store(
        config: CacheConfig,
        metrics: CacheMetrics,
        store: Arc<dyn EntryStore>,
    ) -> Self {
        metrics
            .enabled
            .with_label_values(&[&config.dir.display().to_string(), &humanize(config.max_age)])
            .set(1);
        let admission = Admission::new(config.min_occurrences, config.max_age);
        let max_age = config.max_age;
        let max_bytes = config.max_bytes;
        Self {
            inner: Arc::new(Inner {
                config: RwLock::new(config),
                index: Arc::new(Index::new(store.clone(), metrics.clone(), max_bytes)),
                store,
                admission: RwLock::new(Arc::new(admission)),
                flights: Arc::new(Flights::new(max_age)),
                metrics,
            }),
        }
    }

    /// Look `key` up: join a live entry or flight; below `min_occurrences`, start a
    /// flight (nothing on disk unless someone joins it); else, within the disk budget,
    /// create an entry whose producer runs `upstream()` (or refills it from the key's
    /// recent flight); else tell the caller to bypass.
    pub async fn fetch(&self, key: CacheKey, upstream: impl FnOnce() -> Upstream) -> Fetch {
        let inner = &self.inner;
        inner.evict_expired();
        if let Some((entry, follower)) = inner.index.join(&key) {
            if !entry.is_truncated() {
                return inner.hit(entry, follower);
            }
            // Damaged on disk by something else: drop it and go on as if it were gone
            // (readers already sending it fail, never end cleanly).
            drop(follower);
            tracing::warn!(key = %key, path = %entry.path().display(), "pack cache entry file is shorter than written; evicting it");
            inner.index.remove(&entry, "damaged");
        }
        if let Some(answer) = inner.flights.join(&key) {
            // The flight lands in an entry for us, or says it cannot (it outgrew its
            // memory, or there is no room): then go on as if it did not exist.
            if let Ok(Some((entry, follower))) = answer.await {
                return inner.hit(entry, follower);
            }
        }
        if !inner.admission().admit(&key) {
            return self.fly(key, upstream);
        }
        if let Some(reason) = self.inner.make_room().await {
            return inner.bypass(reason);
        }
        let (entry, writer, follower) = match inner.create(key, false).await {
            Ok(Created::New(entry, writer, follower)) => (entry, writer, follower),
            Ok(Created::Joined(existing, follower)) => return inner.hit(existing, follower),
            Err(fetch) => return fetch,
        };
        let reader = inner.reader(entry, follower);
        match inner.flights.take_recent(&key) {
            // The key's last flight kept every byte: no second generation.
            Some(recorded) => {
                inner.metrics.lookups.with_label_values(&["hit"]).inc();
                inner.producer(false).spawn(writer, recorded.upstream());
                Fetch::Hit(reader)
            }
            None => {
                inner.metrics.lookups.with_label_values(&["miss"]).inc();
                inner.producer(true).spawn(writer, upstream());
                Fetch::Miss(reader)
            }
        }
    }

    /// Start a flight for a fetch below `min_occurrences`; from the key's recent flight's
    /// bytes when they are still kept.
    fn fly(&self, key: CacheKey, upstream: impl FnOnce() -> Upstream) -> Fetch {
        let inner = &self.inner;
        let (upstream, generates) = match inner.flights.recent(&key) {
            Some(recorded) => (recorded.upstream(), false),
            None => (upstream(), true),
        };
        let cache = self.clone();
        let make_entry: MakeEntry = Box::new(move || {
            Box::pin(async move {
                if cache.inner.make_room().await.is_some() {
                    return None;
                }
                match cache.inner.create(key, true).await {
                    Ok(Created::New(entry, writer, follower)) => Some((entry, writer, follower)),
                    // Another entry for the key: its bytes may differ from the flight's,
                    // so the flight's request cannot switch to it.
                    Ok(Created::Joined(..)) | Err(_) => None,
                }
            })
        });
        match inner.flights.start(
            key,
            upstream,
            make_entry,
            inner.producer(generates),
            inner.metrics.clone(),
            &inner.index,
        ) {
            Started::Entry(entry, follower) => inner.hit(entry, follower),
            Started::Flight(flight) => {
                let reader = Reader::flight(key, flight, inner.metrics.served_bytes.clone());
                if generates {
                    inner.metrics.lookups.with_label_values(&["miss"]).inc();
                    Fetch::Miss(reader)
                } else {
                    inner.metrics.lookups.with_label_values(&["hit"]).inc();
                    Fetch::Hit(reader)
                }
            }
            // A flight for the key started a moment ago and could not be joined.
            Started::Busy => inner.bypass(BypassReason::NotAdmitted),
        }
    }

    /// Evict entries past `max_age` now (also done on every lookup and by
    /// [`PackCache::spawn_evictor`]).
    pub fn evict_expired(&self) {
        self.inner.evict_expired();
    }

    /// Start a background task that, every `every`, evicts expired entries and, while
    /// the filesystem has less than `min_free_bytes` free, the oldest complete one; it
    /// stops when the returned handle is dropped.
    pub fn spawn_evictor(&self, every: Duration) -> EvictorHandle {
        let inner = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = inner.upgrade() else { return };
                inner.evict_expired();
                inner.keep_free_space().await;
            }
        });
        EvictorHandle(task)
    }

    /// Number of live entries.
    pub fn entries(&self) -> usize {
        self.inner.index.len()
    }

    /// Bytes of entry files in the index.
    pub fn usage(&self) -> u64 {
        self.inner.index.usage().get()
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
        // A lower budget applies now, not when the next entry is made.
        inner.index.set_budget(max_bytes);
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
}

/// Owns the background eviction task; dropping it stops the task.
pub struct EvictorHandle(tokio::task::JoinHandle<()>);

impl Drop for EvictorHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `5m`, `30s`, `1h 30m`, `250ms`: the `max_age` metric label, as the config writes it.
fn humanize(d: Duration) -> String {
    humantime::format_duration(d).to_string()
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

    fn reader(&self, entry: Arc<Entry>, follower: Follower) -> Reader {
        Reader::new(entry, follower, self.metrics.served_bytes.clone())
    }

    fn hit(&self, entry: Arc<Entry>, follower: Follower) -> Fetch {
        self.metrics.lookups.with_label_values(&["hit"]).inc();
        Fetch::Hit(self.reader(entry, follower))
    }

    /// A producer; `generates` says whether its upstream makes new bytes.
    fn producer(&self, generates: bool) -> Producer {
        Producer {
            index: self.index.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            generates,
        }
    }

    /// Create an entry file and put a new entry for `key` in the index, unless a
    /// joinable one appeared meanwhile (I1); `Err` is the bypass to answer (I7: a store
    /// error before the entry exists).
    ///
    /// A request (`for_flight` false) joins a live flight for the key instead, if one
    /// started meanwhile; a landing flight (`for_flight` true) makes its own entry.
    async fn create(&self, key: CacheKey, for_flight: bool) -> Result<Created, Fetch> {
        let store = self.store.clone();
        let created = tokio::task::spawn_blocking(move || store.create()).await;
        let (file, path) = match created {
            Ok(Ok(created)) => created,
            Ok(Err(err)) => return Err(self.store_error(&err)),
            Err(join) => return Err(self.store_error(&join)),
        };
        let (entry, writer) = Entry::new(key, file, path.clone(), self.index.usage().clone());
        let inserted = if for_flight {
            self.index.insert(entry.clone())
        } else {
            match self
                .flights
                .insert_unless_flying(&self.index, entry.clone())
            {
                Ok(inserted) => inserted,
                Err(answer) => {
                    writer.discard();
                    self.index.unlink_later(path);
                    return match answer.await {
                        Ok(Some((entry, follower))) => Ok(Created::Joined(entry, follower)),
                        // The flight could not take us (rare): no cache for this one.
                        _ => Err(self.bypass(BypassReason::NotAdmitted)),
                    };
                }
            }
        };
        Ok(match inserted {
            Insert::Joined(existing, follower) => {
                writer.discard();
                self.index.unlink_later(path);
                Created::Joined(existing, follower)
            }
            Insert::Inserted(follower) => Created::New(entry, writer, follower),
        })
    }

    fn bypass(&self, reason: BypassReason) -> Fetch {
        self.metrics.lookups.with_label_values(&["bypass"]).inc();
        Fetch::Bypass(reason)
    }

    fn store_error(&self, err: &dyn std::fmt::Display) -> Fetch {
        tracing::warn!(error = %err, "cannot create pack cache file; bypassing");
        self.metrics.lookups.with_label_values(&["error"]).inc();
        Fetch::Bypass(BypassReason::StoreError)
    }

    fn evict_expired(&self) {
        self.index.evict_expired(self.config().max_age);
    }
}

#[cfg(test)]
mod tests {
    use super::humanize;
    use std::time::Duration;

    #[test]
    fn max_age_labels() {
        assert_eq!(humanize(Duration::from_secs(300)), "5m");
        assert_eq!(humanize(Duration::from_secs(90)), "1m 30s");
        assert_eq!(humanize(Duration::from_millis(250)), "250ms");
        assert_eq!(humanize(Duration::from_secs(7200)), "2h");
    }
}
