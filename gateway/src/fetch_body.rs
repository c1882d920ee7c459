//! Fetch request bodies in memory, within bounds that hold across all requests.
//!
//! A fetch body is read whole (it is parsed before any node sees it, and keys the pack
//! cache), after gzip inflation. Three bounds keep that from being a way to exhaust
//! the gateway's memory:
//!
//! - `limits.max_fetch_request_bytes` per request (413 beyond it);
//! - `limits.fetch_body_budget` across all requests: every buffer holding an inflated
//!   body takes its share of one budget (by its capacity, which is what it costs) until
//!   the request (and a cache producer it started) is done with the body; a body that would go over it is refused with 503 and
//!   `Retry-After` instead of waiting, so a flood cannot hold the memory it is refused;
//! - `limits.max_gzip_ratio`: a gzip body that inflates to more than this many times
//!   its compressed size (past the first MiB) is refused with 400. Real fetch bodies
//!   (pkt-lines of hex object ids) compress by 2–3×; a "zip bomb" by 1000×.
//!
//! The compressed size is counted by the request-body layer of [`crate::body_pace`],
//! outside the decompression layer, into a [`RawBytes`] counter in the request
//! extensions.

use std::sync::Arc;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use crate::body_pace::RawBytes;
use crate::error::AppError;

/// Below this many inflated bytes the gzip ratio is not checked (small bodies compress
/// well without being bombs).
const RATIO_FREE_BYTES: u64 = 1 << 20;

/// The budget is counted in units of this many bytes (a semaphore permit each).
const UNIT: u64 = 1 << 10;

/// Bodies whose buffer stays this small (a clone's or a fetch's, a few KiB) draw on a
/// reserve that large bodies cannot take, so a flood of large bodies never refuses an
/// ordinary clone.
const SMALL_BODY: u64 = 64 << 10;

/// The budget for inflated fetch bodies held in memory, shared by all requests.
#[derive(Debug, Clone)]
pub struct FetchBodies {
    /// For bodies past [`SMALL_BODY`].
    budget: Arc<Semaphore>,
    /// Kept for bodies under [`SMALL_BODY`].
    reserve: Arc<Semaphore>,
    /// `limits.max_fetch_request_bytes`.
    max_bytes: u64,
    /// `limits.max_gzip_ratio`.
    max_ratio: u64,
}

/// A fetch body in memory, holding its share of the budget until dropped.
#[derive(Debug)]
pub struct HeldBody {
    /// The inflated body.
    pub bytes: Bytes,
    _share: Option<OwnedSemaphorePermit>,
}

impl FetchBodies {
    /// A budget of `budget_bytes` for bodies of at most `max_bytes` each, inflating at
    /// most `max_ratio` times.
    pub fn new(budget_bytes: u64, max_bytes: u64, max_ratio: u64) -> Self {
        let units = |bytes: u64| {
            usize::try_from(bytes / UNIT)
                .unwrap_or(usize::MAX)
                .min(Semaphore::MAX_PERMITS)
        };
        let reserve = (budget_bytes / 8).min(16 << 20);
        Self {
            budget: Arc::new(Semaphore::new(units(budget_bytes - reserve))),
            reserve: Arc::new(Semaphore::new(units(reserve))),
            max_bytes,
            max_ratio,
        }
    }

    /// Read `body` whole, within the bounds (see the module docs). `raw` counts its
    /// compressed bytes when the counting layer ran.
    pub async fn read(
        &self,
        body: Body,
        raw: Option<&RawBytes>,
    ) -> Result<Arc<HeldBody>, AppError> {
        let mut body = body;
        let mut out = BytesMut::new();
        let mut share: Option<OwnedSemaphorePermit> = None;
        let mut held_units: u64 = 0;
        let mut small = true;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| AppError::BodyRead(err.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let total = out.len() as u64 + data.len() as u64;
            if total > self.max_bytes {
                return Err(AppError::BodyTooLarge {
                    limit: self.max_bytes,
                });
            }
            if let Some(raw) = raw {
                let compressed = raw.get().max(1);
                if total > RATIO_FREE_BYTES && total > compressed.saturating_mul(self.max_ratio) {
                    return Err(AppError::GzipRatio {
                        limit: self.max_ratio,
                    });
                }
            }
            // The budget is charged for the memory the buffer will take, which is its
            // capacity once it grows, not only the bytes in it.
            let capacity = (out.capacity() as u64).max(if total > out.capacity() as u64 {
                total.next_power_of_two()
            } else {
                0
            });
            let needed = capacity.div_ceil(UNIT);
            if small && capacity > SMALL_BODY {
                // Grown past the reserve: all of it is charged to the budget now.
                small = false;
                share = None;
                held_units = 0;
            }
            if needed > held_units {
                let pool = if small { &self.reserve } else { &self.budget };
                let more = u32::try_from(needed - held_units).unwrap_or(u32::MAX);
                let permit = pool
                    .clone()
                    .try_acquire_many_owned(more)
                    .map_err(|_| AppError::FetchBodyBudget)?;
                match &mut share {
                    Some(held) => held.merge(permit),
                    None => share = Some(permit),
                }
                held_units = needed;
            }
            out.reserve(data.len());
            out.extend_from_slice(&data);
        }
        Ok(Arc::new(HeldBody {
            bytes: out.freeze(),
            _share: share,
        }))
    }

    /// Bytes of the budget free now, reserve included.
    pub fn available(&self) -> u64 {
        (self.budget.available_permits() + self.reserve.available_permits()) as u64 * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chunks: Vec<&'static [u8]>) -> Body {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c))),
        );
        Body::from_stream(stream)
    }

    #[tokio::test]
    async fn the_budget_is_shared_and_given_back() {
        // 1 MiB: 128 KiB of reserve for small bodies, 896 KiB for the rest.
        let bodies = FetchBodies::new(1 << 20, 1 << 20, 100);
        let chunk: &'static [u8] = &[b'x'; 100 << 10];
        let first = bodies
            .read(body(vec![chunk, chunk, chunk]), None)
            .await
            .expect("fits");
        assert_eq!(first.bytes.len(), 300 << 10);
        let charged = (1 << 20) - bodies.available();
        assert!(
            ((300 << 10)..=(512 << 10)).contains(&charged),
            "charged for its buffer: {charged}"
        );
        let refused = bodies
            .read(body(vec![chunk, chunk, chunk, chunk, chunk, chunk]), None)
            .await;
        assert!(matches!(refused, Err(AppError::FetchBodyBudget)));
        assert_eq!(
            bodies.available(),
            (1 << 20) - charged,
            "the refused one holds nothing"
        );
        // A small body still fits, from the reserve.
        let small: &'static [u8] = &[b'y'; 2048];
        bodies.read(body(vec![small]), None).await.expect("small");
        drop(first);
        assert_eq!(bodies.available(), 1 << 20);
    }

    #[tokio::test]
    async fn size_and_ratio_limits() {
        let bodies = FetchBodies::new(1 << 30, 2048, 100);
        let chunk: &'static [u8] = &[b'x'; 1024];
        assert!(matches!(
            bodies.read(body(vec![chunk, chunk, chunk]), None).await,
            Err(AppError::BodyTooLarge { limit: 2048 })
        ));
        let bodies = FetchBodies::new(1 << 30, 1 << 30, 100);
        let big: &'static [u8] = &[b'0'; 1 << 20];
        let raw = RawBytes::default();
        raw.add(1000);
        assert!(matches!(
            bodies.read(body(vec![big, big]), Some(&raw)).await,
            Err(AppError::GzipRatio { limit: 100 })
        ));
        raw.add((1 << 20) - 1000);
        assert!(bodies.read(body(vec![big, big]), Some(&raw)).await.is_ok());
    }
}
