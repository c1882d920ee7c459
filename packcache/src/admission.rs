//! `min_occurrences`: how many times a key must already have been seen within `max_age`
//! before a request creates an entry for it (Gitaly's meaning). Memory is bounded by a capacity on the counter map;
//! counts expire `max_age` after a key was first seen, measured in tokio time (so tests
//! pause it). It decides admission only; the cache decides what to do with the answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::key::CacheKey;

/// Most keys tracked at once.
const CAPACITY: u64 = 100_000;

/// Counts key sightings.
pub(crate) struct Admission {
    min: u32,
    window: Duration,
    /// The map's own time-to-live (wall time) bounds memory; the window itself is
    /// checked against tokio time in [`Admission::admit`].
    seen: moka::sync::Cache<CacheKey, Arc<Mutex<Sightings>>>,
}

/// Sightings of one key since `since`.
struct Sightings {
    since: Instant,
    count: u32,
}

impl Admission {
    /// Admit keys seen at least `min` times within `window`.
    pub(crate) fn new(min: u32, window: Duration) -> Self {
        let seen = moka::sync::Cache::builder()
            .max_capacity(CAPACITY)
            .time_to_live(window)
            .build();
        Self { min, window, seen }
    }

    /// Record one sighting of `key`; whether it may now create an entry: when the key
    /// was already seen at least `min` times within the window (Gitaly's meaning: with
    /// 1, a key's first sighting is not admitted and its second is; 0 admits all).
    pub(crate) fn admit(&self, key: &CacheKey) -> bool {
        if self.min == 0 {
            return true;
        }
        let now = Instant::now();
        let fresh = || Sightings {
            since: now,
            count: 0,
        };
        let sightings = self.seen.get_with(*key, || Arc::new(Mutex::new(fresh())));
        let mut sightings = sightings.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_duration_since(sightings.since) >= self.window {
            *sightings = fresh();
        }
        let seen_before = sightings.count;
        sightings.count = sightings.count.saturating_add(1);
        seen_before >= self.min
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyBuilder;

    #[test]
    fn counts_up_to_the_threshold() {
        let key = KeyBuilder::new(1).field(b"k").finish();
        let other = KeyBuilder::new(1).field(b"other").finish();
        let a = Admission::new(2, Duration::from_secs(60));
        assert!(!a.admit(&key));
        assert!(!a.admit(&key));
        assert!(!a.admit(&other));
        assert!(a.admit(&key), "seen twice before");
        assert!(Admission::new(0, Duration::from_secs(1)).admit(&key));
        let one = Admission::new(1, Duration::from_secs(1));
        assert!(!one.admit(&key), "the first sighting is not admitted");
        assert!(one.admit(&key), "the second is");
    }

    #[tokio::test(start_paused = true)]
    async fn counts_restart_after_the_window() {
        let key = KeyBuilder::new(1).field(b"k").finish();
        let a = Admission::new(1, Duration::from_secs(60));
        assert!(!a.admit(&key));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!a.admit(&key), "the first sighting expired");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(a.admit(&key));
    }
}
