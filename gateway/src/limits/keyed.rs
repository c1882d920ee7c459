//! Slots per key with a bounded queue and a wait limit, whose size can change while
//! slots are held: the mechanism under both of [`super::FetchLimits`]' limits.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{LimitError, LimitSettings, Scope};
use crate::metrics::GatewayMetrics;

/// Slots of one key.
struct Slots {
    semaphore: Arc<Semaphore>,
    /// Fetches waiting for a slot (bounded by `max_queue`).
    queued: AtomicUsize,
    /// Slots held now.
    held: AtomicUsize,
    /// The limit this key's permits were issued for.
    limit: AtomicUsize,
    /// Permits to take out of circulation as they come back: the limit went down
    /// while they were held.
    debt: AtomicUsize,
}

impl Slots {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            semaphore: Arc::new(Semaphore::new(limit)),
            queued: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            debt: AtomicUsize::new(0),
        })
    }

    /// Issue or withdraw permits so that `limit` run at once from now on: free
    /// permits are withdrawn at once, held ones as they come back.
    fn resize(&self, limit: usize) {
        let old = self.limit.swap(limit, Ordering::SeqCst);
        if limit > old {
            let mut add = limit - old;
            let owed = self.debt.load(Ordering::SeqCst).min(add);
            self.debt.fetch_sub(owed, Ordering::SeqCst);
            add -= owed;
            self.semaphore.add_permits(add);
        } else if limit < old {
            let cut = old - limit;
            let withdrawn = self.semaphore.forget_permits(cut);
            self.debt.fetch_add(cut - withdrawn, Ordering::SeqCst);
        }
    }

    /// Nothing holds or waits for a slot, and only `refs` references (the map's and
    /// the caller's) exist, so no fetch is between finding the key and taking a slot.
    fn idle(self: &Arc<Self>, refs: usize) -> bool {
        self.held.load(Ordering::SeqCst) == 0
            && self.queued.load(Ordering::SeqCst) == 0
            && Arc::strong_count(self) == refs
    }
}

/// Slots per key of type `K`; keys with nothing running or queued are forgotten.
pub struct Limiter<K> {
    pub(super) settings: LimitSettings,
    /// Slots per key now: `settings.limit`, or less while the adaptive mode holds it
    /// down.
    pub(super) limit: AtomicUsize,
    scope: Scope,
    keys: Mutex<HashMap<K, Arc<Slots>>>,
    metrics: GatewayMetrics,
}

/// A held slot of one limiter; released when dropped.
pub(super) struct Held<K: Eq + Hash + Clone> {
    permit: Option<OwnedSemaphorePermit>,
    limiter: Arc<Limiter<K>>,
    key: K,
    slots: Arc<Slots>,
}

impl<K: Eq + Hash + Clone> Limiter<K> {
    pub(super) fn new(settings: LimitSettings, scope: Scope, metrics: GatewayMetrics) -> Arc<Self> {
        Arc::new(Self {
            settings,
            limit: AtomicUsize::new(settings.limit),
            scope,
            keys: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<Slots>>> {
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keys whose slots are held or waited for now (forgotten ones are not).
    #[cfg(test)]
    pub(super) fn tracked(&self) -> usize {
        self.lock().len()
    }

    /// Whether `key`'s slots are held or waited for now.
    #[cfg(test)]
    pub(super) fn tracks(&self, key: &K) -> bool {
        self.lock().contains_key(key)
    }

    /// Slots per key from now on (at least one); fetches holding more keep them until
    /// they end. No effect when the limit is off.
    pub(super) fn set_limit(&self, limit: usize) {
        if self.settings.limit == 0 {
            return;
        }
        let limit = limit.max(1);
        let keys = self.lock();
        self.limit.store(limit, Ordering::SeqCst);
        for slots in keys.values() {
            slots.resize(limit);
        }
    }

    /// Wait for a slot for `key`; `None` when the limit is off.
    pub(super) async fn acquire(self: &Arc<Self>, key: &K) -> Result<Option<Held<K>>, LimitError> {
        let LimitSettings {
            limit,
            max_queue,
            max_wait,
        } = self.settings;
        if limit == 0 {
            return Ok(None);
        }
        let slots = {
            let mut keys = self.lock();
            let current = self.limit.load(Ordering::SeqCst);
            keys.entry(key.clone())
                .or_insert_with(|| Slots::new(current))
                .clone()
        };
        let held = |permit| {
            slots.held.fetch_add(1, Ordering::SeqCst);
            Held {
                permit: Some(permit),
                limiter: self.clone(),
                key: key.clone(),
                slots: slots.clone(),
            }
        };
        if let Ok(permit) = slots.semaphore.clone().try_acquire_owned() {
            return Ok(Some(held(permit)));
        }
        if slots.queued.fetch_add(1, Ordering::SeqCst) >= max_queue {
            slots.queued.fetch_sub(1, Ordering::SeqCst);
            let err = LimitError::QueueFull(self.scope);
            self.metrics
                .rejected
                .with_label_values(&[err.label()])
                .inc();
            // Forget the key if it was only made for this refused fetch.
            self.forget_if_idle(key, &slots);
            return Err(err);
        }
        self.metrics.queued.inc();
        let waited = tokio::time::timeout(max_wait, slots.semaphore.clone().acquire_owned()).await;
        slots.queued.fetch_sub(1, Ordering::SeqCst);
        self.metrics.queued.dec();
        match waited {
            Ok(Ok(permit)) => Ok(Some(held(permit))),
            // The semaphore is never closed; treat it like a timeout if it were.
            Ok(Err(_)) | Err(_) => {
                let err = LimitError::Timeout(self.scope);
                self.metrics
                    .rejected
                    .with_label_values(&[err.label()])
                    .inc();
                self.forget_if_idle(key, &slots);
                Err(err)
            }
        }
    }

    /// Forget `key` (whose slots the caller holds a reference to) when nothing holds
    /// or waits for its slots.
    fn forget_if_idle(&self, key: &K, slots: &Arc<Slots>) {
        let mut keys = self.lock();
        if slots.idle(2) {
            keys.remove(key);
        }
    }
}

impl<K: Eq + Hash + Clone> Drop for Held<K> {
    fn drop(&mut self) {
        let slots = &self.slots;
        // Under the map's lock, so a resize or a new fetch sees a consistent count.
        let mut keys = self.limiter.lock();
        if let Some(permit) = self.permit.take() {
            let owed = slots
                .debt
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1))
                .is_ok();
            if owed {
                // The limit went down while this slot was held: withdraw it.
                permit.forget();
            } else {
                drop(permit);
            }
        }
        slots.held.fetch_sub(1, Ordering::SeqCst);
        if slots.idle(2) {
            keys.remove(&self.key);
        }
    }
}
