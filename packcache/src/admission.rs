//! `min_occurrences`: how many times a key must have been seen within `max_age` before a
//! request creates an entry for it. Memory is bounded by a capacity on the counter map;
//! counts expire `max_age` after a key was first seen.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::key::CacheKey;

/// Most keys tracked at once.
const CAPACITY: u64 = 100_000;

/// Counts key sightings.
pub struct Admission {
    min: u32,
    seen: moka::sync::Cache<CacheKey, Arc<AtomicU32>>,
}

impl Admission {
    /// Admit keys seen at least `min` times within `window`.
    pub fn new(min: u32, window: Duration) -> Self {
        let seen = moka::sync::Cache::builder()
            .max_capacity(CAPACITY)
            .time_to_live(window)
            .build();
        Self { min, seen }
    }

    /// Record one sighting of `key`; whether it may now create an entry.
    pub fn admit(&self, key: &CacheKey) -> bool {
        if self.min <= 1 {
            return true;
        }
        let counter = self.seen.get_with(*key, || Arc::new(AtomicU32::new(0)));
        counter.fetch_add(1, Ordering::Relaxed) + 1 >= self.min
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
        let a = Admission::new(3, Duration::from_secs(60));
        assert!(!a.admit(&key));
        assert!(!a.admit(&key));
        assert!(!a.admit(&other));
        assert!(a.admit(&key));
        assert!(Admission::new(0, Duration::from_secs(1)).admit(&key));
        assert!(Admission::new(1, Duration::from_secs(1)).admit(&key));
    }
}
