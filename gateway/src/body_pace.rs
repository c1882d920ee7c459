//! A floor under how slowly a client may send its request body, and a ceiling on how
//! long it may take.
//!
//! The idle timeout (`limits.body_idle_timeout`) cuts a body that stops; this cuts one
//! that trickles. Past `limits.body_rate_grace`, a body whose average rate since the
//! request began is under `limits.body_min_rate` fails, and so does any body still
//! arriving after `limits.body_deadline`. A failed body fails its request: a push's git
//! process is killed before it applies anything and the push's repository lock is
//! released, so a trickling client cannot hold a repository's writes.
//!
//! The check runs as each chunk arrives; a body that sends nothing at all is the idle
//! timeout's. The same wrapper counts the body's bytes as they arrive, before any
//! inflation, into a [`RawBytes`] extension, which the gzip ratio limit of
//! [`crate::fetch_body`] compares the inflated size with.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

/// Bytes of the request body as they arrived, before inflation.
#[derive(Clone, Default, Debug)]
pub struct RawBytes(Arc<AtomicU64>);

impl RawBytes {
    /// Bytes counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Count `n` more.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// The pace a request body must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Lowest average rate, in bytes per second, once `grace` has passed.
    pub min_rate: u64,
    /// Time before the rate counts (connection setup, slow starts, git's own work).
    pub grace: Duration,
    /// Longest a body may take in all.
    pub deadline: Duration,
}

/// Why a body was cut.
#[derive(Debug, thiserror::Error)]
pub enum PaceError {
    /// The average rate fell under the floor.
    #[error("request body too slow: {bytes} bytes in {elapsed:?} is under the minimum of {min_rate} bytes/s")]
    TooSlow {
        /// Bytes so far.
        bytes: u64,
        /// Time so far.
        elapsed: Duration,
        /// `limits.body_min_rate`.
        min_rate: u64,
    },
    /// The body took longer than the deadline.
    #[error("request body still arriving after {0:?}")]
    Deadline(Duration),
}

impl Pace {
    /// Whether `bytes` received `elapsed` after the start keep the pace.
    pub fn check(&self, bytes: u64, elapsed: Duration) -> Result<(), PaceError> {
        if elapsed > self.deadline {
            return Err(PaceError::Deadline(self.deadline));
        }
        if elapsed > self.grace {
            let floor = u128::from(self.min_rate) * elapsed.as_millis() / 1000;
            if u128::from(bytes) < floor {
                return Err(PaceError::TooSlow {
                    bytes,
                    elapsed,
                    min_rate: self.min_rate,
                });
            }
        }
        Ok(())
    }
}

/// The layer function: hold every request body to `pace`, counting its bytes into a
/// [`RawBytes`] extension.
pub async fn enforce(State(pace): State<Pace>, req: Request, next: Next) -> Response {
    let raw = RawBytes::default();
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(raw.clone());
    let paced = Body::new(Paced {
        inner: body,
        pace,
        started: Instant::now(),
        raw,
    });
    next.run(Request::from_parts(parts, paced)).await
}

struct Paced {
    inner: Body,
    pace: Pace,
    started: Instant,
    /// Bytes so far, shared with the request's extensions.
    raw: RawBytes,
}

impl HttpBody for Paced {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.raw.add(data.len() as u64);
                }
                match this.pace.check(this.raw.get(), this.started.elapsed()) {
                    Ok(()) => Poll::Ready(Some(Ok(frame))),
                    Err(err) => {
                        tracing::info!(error = %err, "cutting off a slow request body");
                        Poll::Ready(Some(Err(axum::Error::new(err))))
                    }
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_then_rate_then_deadline() {
        let pace = Pace {
            min_rate: 1000,
            grace: Duration::from_secs(10),
            deadline: Duration::from_secs(60),
        };
        // Anything goes during the grace period.
        assert!(pace.check(0, Duration::from_secs(9)).is_ok());
        // Then the average must keep up.
        assert!(pace.check(20_000, Duration::from_secs(20)).is_ok());
        assert!(matches!(
            pace.check(19_000, Duration::from_secs(20)),
            Err(PaceError::TooSlow { .. })
        ));
        // And nothing is slow enough to pass the deadline.
        assert!(matches!(
            pace.check(u64::MAX, Duration::from_secs(61)),
            Err(PaceError::Deadline(_))
        ));
    }
}
