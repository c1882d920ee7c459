//! Per-repository concurrency limit for fetches that reach a storage node.
//!
//! Only work that runs `upload-pack` on a node takes a slot: cache misses (the producer
//! takes it, so the clients sharing its entry cost one slot) and fetches that bypass the
//! cache. Cache hits never wait. A fetch that finds every slot of its repository taken
//! waits in a bounded queue for at most `fetch_queue_timeout`; past the queue bound it
//! is refused at once (429), past the wait it is refused (503), both with
//! `Retry-After`. The limit sits here rather than in a route layer because whether a
//! request needs a slot is only known after the cache lookup.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gitgate_proto::RepoPath;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::GatewayMetrics;

/// Why a fetch got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The repository's queue is full.
    #[error("per-repository queue full")]
    QueueFull,
    /// The wait in the queue ran out.
    #[error("timed out in the per-repository queue")]
    Timeout,
}

/// Slots of one repository.
struct RepoSlots {
    semaphore: Arc<Semaphore>,
    /// Fetches waiting for a slot (bounded by `max_queue`).
    queued: AtomicUsize,
}

/// The limiter.
pub struct RepoLimiter {
    limit: usize,
    max_queue: usize,
    max_wait: Duration,
    /// Repositories with fetches in progress or queued; idle ones are removed.
    repos: Mutex<HashMap<RepoPath, Arc<RepoSlots>>>,
    metrics: GatewayMetrics,
}

/// A held slot; released when dropped (with the response stream that owns it).
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    limiter: Arc<RepoLimiter>,
    repo: RepoPath,
    slots: Arc<RepoSlots>,
}

impl RepoLimiter {
    /// `limit` concurrent node fetches per repository (0: unlimited), at most
    /// `max_queue` waiting, each for at most `max_wait`.
    pub fn new(
        limit: usize,
        max_queue: usize,
        max_wait: Duration,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            limit,
            max_queue,
            max_wait,
            repos: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RepoPath, Arc<RepoSlots>>> {
        self.repos
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wait for a slot for `repo`; `None` when the limit is off.
    pub async fn acquire(self: &Arc<Self>, repo: &RepoPath) -> Result<Option<Slot>, LimitError> {
        if self.limit == 0 {
            return Ok(None);
        }
        let slots = self
            .lock()
            .entry(repo.clone())
            .or_insert_with(|| {
                Arc::new(RepoSlots {
                    semaphore: Arc::new(Semaphore::new(self.limit)),
                    queued: AtomicUsize::new(0),
                })
            })
            .clone();
        let permit = match slots.semaphore.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if slots.queued.fetch_add(1, Ordering::SeqCst) >= self.max_queue {
                    slots.queued.fetch_sub(1, Ordering::SeqCst);
                    self.metrics
                        .rejected
                        .with_label_values(&["queue_full"])
                        .inc();
                    return Err(LimitError::QueueFull);
                }
                self.metrics.queued.inc();
                let waited =
                    tokio::time::timeout(self.max_wait, slots.semaphore.clone().acquire_owned())
                        .await;
                slots.queued.fetch_sub(1, Ordering::SeqCst);
                self.metrics.queued.dec();
                match waited {
                    Ok(Ok(permit)) => permit,
                    // The semaphore is never closed; treat it like a timeout if it were.
                    Ok(Err(_)) | Err(_) => {
                        self.metrics
                            .rejected
                            .with_label_values(&["queue_timeout"])
                            .inc();
                        return Err(LimitError::Timeout);
                    }
                }
            }
        };
        self.metrics.in_progress.inc();
        Ok(Some(Slot {
            _permit: permit,
            limiter: self.clone(),
            repo: repo.clone(),
            slots,
        }))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.metrics.in_progress.dec();
        let mut repos = self.limiter.lock();
        // Forget idle repositories: only the map and this slot hold the entry, nobody
        // waits, and this is the last permit out.
        let idle = Arc::strong_count(&self.slots) == 2
            && self.slots.queued.load(Ordering::SeqCst) == 0
            && self.slots.semaphore.available_permits() + 1 == self.limiter.limit;
        if idle {
            repos.remove(&self.repo);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limits_queues_and_times_out() {
        let metrics = GatewayMetrics::register(&prometheus::Registry::new()).expect("metrics");
        let limiter = Arc::new(RepoLimiter::new(
            2,
            1,
            Duration::from_secs(5),
            metrics.clone(),
        ));
        let repo = RepoPath::parse("r").expect("repo");
        let a = limiter
            .acquire(&repo)
            .await
            .expect("slot")
            .expect("limited");
        let _b = limiter
            .acquire(&repo)
            .await
            .expect("slot")
            .expect("limited");
        let waiting = {
            let limiter = limiter.clone();
            let repo = repo.clone();
            tokio::spawn(async move { limiter.acquire(&repo).await.map(|s| s.is_some()) })
        };
        tokio::task::yield_now().await;
        assert_eq!(metrics.queued.get(), 1);
        assert_eq!(
            limiter.acquire(&repo).await.err(),
            Some(LimitError::QueueFull)
        );
        drop(a);
        assert_eq!(waiting.await.expect("task"), Ok(true));
        let other = RepoPath::parse("other").expect("repo");
        let _c = limiter.acquire(&other).await.expect("slot");
        let _d = limiter.acquire(&other).await.expect("slot");
        assert_eq!(
            limiter.acquire(&other).await.err(),
            Some(LimitError::Timeout)
        );
        // _b, _c and _d; the waiter dropped its slot when its task ended.
        assert_eq!(metrics.in_progress.get(), 3);
    }
}
