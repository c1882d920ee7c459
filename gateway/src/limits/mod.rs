//! Concurrency limits for fetches that reach a storage node: per repository and per
//! client.
//!
//! Only work that runs `upload-pack` on a node takes slots: cache misses (the producer
//! takes them, so the clients sharing its entry cost one) and fetches that bypass the
//! cache. Cache hits never wait. A fetch takes a slot of its client first (the token
//! name when authenticated, else the peer address), then one of its repository, so a
//! client over its share is refused before it can fill the repository's slots and
//! queue that everyone shares. Each [`Limiter`] gives `limit` slots per key; a fetch
//! that finds them taken waits in a bounded queue for at most its timeout: past the
//! queue bound it is refused at once (429), past the wait it is refused (503), both
//! with `Retry-After`. The limits sit here rather than in a route layer because
//! whether a request needs a slot is only known after the cache lookup.

mod keyed;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gitgate_proto::RepoPath;

use crate::metrics::GatewayMetrics;
use keyed::{Held, Limiter};

/// Why a fetch got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The queue is full.
    #[error("{0} queue full")]
    QueueFull(Scope),
    /// The wait in the queue ran out.
    #[error("timed out in the {0} queue")]
    Timeout(Scope),
}

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The repository's.
    Repository,
    /// The client's.
    Client,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Repository => "per-repository",
            Self::Client => "per-client",
        })
    }
}

impl LimitError {
    /// The metric label: `queue_full`, `queue_timeout`, `client_queue_full`,
    /// `client_queue_timeout`.
    pub fn label(self) -> &'static str {
        match self {
            Self::QueueFull(Scope::Repository) => "queue_full",
            Self::Timeout(Scope::Repository) => "queue_timeout",
            Self::QueueFull(Scope::Client) => "client_queue_full",
            Self::Timeout(Scope::Client) => "client_queue_timeout",
        }
    }
}

/// How many slots, how long a queue, how long a wait.
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    /// Slots per key (0: unlimited).
    pub limit: usize,
    /// Fetches that may wait, per key.
    pub max_queue: usize,
    /// Longest wait.
    pub max_wait: Duration,
}

/// Both limits of node-bound fetches.
pub struct FetchLimits {
    repos: Arc<Limiter<RepoPath>>,
    clients: Arc<Limiter<String>>,
    metrics: GatewayMetrics,
    /// The slowest first byte of a node-bound fetch since the adaptive mode last
    /// looked.
    slowest_ttfb: Mutex<Option<Duration>>,
}

/// The slots one node-bound fetch holds; released when dropped (with the response
/// stream that owns it).
pub struct Slot {
    _client: Option<Held<String>>,
    _repo: Option<Held<RepoPath>>,
    metrics: GatewayMetrics,
}

impl FetchLimits {
    /// Limits per repository and per client.
    pub fn new(repo: LimitSettings, client: LimitSettings, metrics: GatewayMetrics) -> Self {
        Self {
            repos: Limiter::new(repo, Scope::Repository, metrics.clone()),
            clients: Limiter::new(client, Scope::Client, metrics.clone()),
            metrics,
            slowest_ttfb: Mutex::new(None),
        }
    }

    /// Note how long a node-bound fetch waited for its first byte.
    pub fn observe_ttfb(&self, waited: Duration) {
        let mut slowest = self.slowest_ttfb.lock().unwrap_or_else(|p| p.into_inner());
        *slowest = Some(slowest.map_or(waited, |s| s.max(waited)));
    }

    /// The slowest first byte since the last call.
    pub fn take_slowest_ttfb(&self) -> Option<Duration> {
        self.slowest_ttfb
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The per-client limit now.
    pub fn client_limit(&self) -> usize {
        self.clients.limit.load(Ordering::SeqCst)
    }

    /// The configured per-client limit (0: off): the most the adaptive mode grows to.
    pub fn client_limit_ceiling(&self) -> usize {
        self.clients.settings.limit
    }

    /// Change the per-client limit (the adaptive mode).
    pub fn set_client_limit(&self, limit: usize) {
        self.clients.set_limit(limit);
    }

    /// Wait for a slot of `client`, then one of `repo`.
    pub async fn acquire(&self, repo: &RepoPath, client: &str) -> Result<Slot, LimitError> {
        let client = self.clients.acquire(&client.to_owned()).await?;
        let repo = self.repos.acquire(repo).await?;
        self.metrics.in_progress.inc();
        Ok(Slot {
            _client: client,
            _repo: repo,
            metrics: self.metrics.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.in_progress.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(limit: usize, max_queue: usize) -> LimitSettings {
        LimitSettings {
            limit,
            max_queue,
            max_wait: Duration::from_secs(5),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn limits_queues_and_times_out() {
        let metrics = GatewayMetrics::register(&prometheus::Registry::new()).expect("metrics");
        let limits = Arc::new(FetchLimits::new(
            settings(2, 1),
            settings(0, 0),
            metrics.clone(),
        ));
        let repo = RepoPath::parse("r").expect("repo");
        let a = limits.acquire(&repo, "x").await.expect("slot");
        let _b = limits.acquire(&repo, "x").await.expect("slot");
        let waiting = {
            let limits = limits.clone();
            let repo = repo.clone();
            tokio::spawn(async move { limits.acquire(&repo, "x").await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert_eq!(metrics.queued.get(), 1);
        assert_eq!(
            limits.acquire(&repo, "x").await.err(),
            Some(LimitError::QueueFull(Scope::Repository))
        );
        drop(a);
        assert_eq!(waiting.await.expect("task"), Ok(()));
        let other = RepoPath::parse("other").expect("repo");
        let _c = limits.acquire(&other, "x").await.expect("slot");
        let _d = limits.acquire(&other, "x").await.expect("slot");
        assert_eq!(
            limits.acquire(&other, "x").await.err(),
            Some(LimitError::Timeout(Scope::Repository))
        );
        // _b, _c and _d; the waiter dropped its slot when its task ended.
        assert_eq!(metrics.in_progress.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn one_client_cannot_take_a_repository() {
        let metrics = GatewayMetrics::register(&prometheus::Registry::new()).expect("metrics");
        let limits = Arc::new(FetchLimits::new(settings(4, 4), settings(2, 2), metrics));
        let repo = RepoPath::parse("r").expect("repo");
        let held: Vec<Slot> = vec![
            limits.acquire(&repo, "a").await.expect("a1"),
            limits.acquire(&repo, "a").await.expect("a2"),
        ];
        let queued: Vec<_> = (0..2)
            .map(|_| {
                let limits = limits.clone();
                let repo = repo.clone();
                tokio::spawn(async move { limits.acquire(&repo, "a").await.map(|_| ()) })
            })
            .collect();
        tokio::task::yield_now().await;
        // A's third and fourth wait in A's queue; the fifth is refused at once...
        assert_eq!(
            limits.acquire(&repo, "a").await.err(),
            Some(LimitError::QueueFull(Scope::Client))
        );
        // ...while B still finds free slots of the repository.
        let _b1 = limits.acquire(&repo, "b").await.expect("b1");
        let _b2 = limits.acquire(&repo, "b").await.expect("b2");
        drop(held);
        for q in queued {
            assert_eq!(q.await.expect("task"), Ok(()));
        }
        // Nothing running or queued for A any more: its key is forgotten.
        assert!(!limits.clients.tracks(&"a".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_client_limit_moves_while_fetches_hold_slots() {
        let metrics = GatewayMetrics::register(&prometheus::Registry::new()).expect("metrics");
        let limits = FetchLimits::new(settings(0, 0), settings(4, 0), metrics);
        let repo = RepoPath::parse("r").expect("repo");
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(limits.acquire(&repo, "a").await.expect("slot"));
        }
        let refused = Some(LimitError::QueueFull(Scope::Client));
        // Down to 2 while 4 run: nothing new until fewer than 2 run.
        limits.set_client_limit(2);
        assert_eq!(limits.client_limit(), 2);
        assert_eq!(limits.acquire(&repo, "a").await.err(), refused);
        held.truncate(2);
        assert_eq!(limits.acquire(&repo, "a").await.err(), refused);
        held.truncate(1);
        held.push(
            limits
                .acquire(&repo, "a")
                .await
                .expect("back under the limit"),
        );
        assert_eq!(limits.acquire(&repo, "a").await.err(), refused);
        // Up to 3: one more now; a new client starts at the current limit.
        limits.set_client_limit(3);
        held.push(limits.acquire(&repo, "a").await.expect("grown"));
        assert_eq!(limits.acquire(&repo, "a").await.err(), refused);
        let b: Vec<Slot> = vec![
            limits.acquire(&repo, "b").await.expect("b1"),
            limits.acquire(&repo, "b").await.expect("b2"),
            limits.acquire(&repo, "b").await.expect("b3"),
        ];
        assert_eq!(limits.acquire(&repo, "b").await.err(), refused);
        drop(b);
        drop(held);
        // Everything given back: no key is kept, and a fresh start sees 3 slots.
        assert_eq!(limits.clients.tracked(), 0);
        limits.set_client_limit(0);
        assert_eq!(limits.client_limit(), 1, "the limit never goes below one");
    }
}
