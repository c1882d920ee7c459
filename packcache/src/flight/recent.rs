//! Recent flights: the bytes of flights that ended with every byte still in memory,
//! kept for `max_age` (at most [`RECENT_BYTES`] in all), so the key's next occurrence,
//! which creates an entry, fills it from memory instead of a second generation.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::key::CacheKey;
use crate::upstream::{ByteStream, Upstream, UpstreamError};

/// Most bytes of finished flights kept for their key's next occurrence.
pub(crate) const RECENT_BYTES: u64 = 32 << 20;

/// A finished flight's bytes.
#[derive(Debug)]
pub(crate) struct Recorded {
    pub(crate) chunks: Vec<Bytes>,
    pub(crate) len: u64,
}

impl Recorded {
    /// The bytes again, as an upstream.
    pub(crate) fn upstream(self: Arc<Self>) -> Upstream {
        Box::pin(async move {
            let chunks: Vec<Result<Bytes, UpstreamError>> =
                self.chunks.iter().cloned().map(Ok).collect();
            Ok(Box::pin(futures_util::stream::iter(chunks)) as ByteStream)
        })
    }
}

/// The recent flights, by key.
pub(super) struct Recent(moka::sync::Cache<CacheKey, Arc<Recorded>>);

impl Recent {
    pub(super) fn new(max_age: Duration) -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(RECENT_BYTES)
                .weigher(|_, r: &Arc<Recorded>| u32::try_from(r.len).unwrap_or(u32::MAX))
                .time_to_live(max_age.max(Duration::from_millis(1)))
                .build(),
        )
    }

    /// Keep `recorded` for `key`, unless it is larger than all recent flights may be.
    pub(super) fn keep(&self, key: CacheKey, recorded: Recorded) {
        if recorded.len <= RECENT_BYTES {
            self.0.insert(key, Arc::new(recorded));
        }
    }

    pub(super) fn take(&self, key: &CacheKey) -> Option<Arc<Recorded>> {
        self.0.remove(key)
    }

    pub(super) fn get(&self, key: &CacheKey) -> Option<Arc<Recorded>> {
        self.0.get(key)
    }
}
