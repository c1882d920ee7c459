//! Response bodies streamed from storage (or the pack cache).
//!
//! A stream error becomes an IO error, on which hyper aborts the connection, so a
//! truncated response never ends cleanly. The error is logged once, here, in the
//! request's span; the request's summary line comes from [`crate::access_log`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use crate::error::BoxError;

/// A response body on its way to the client.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// Wrap `inner` for sending as a response body. `generated` says whether these bytes
/// were produced by a storage node for this request (a cache miss, or no cache); the
/// byte count is then recorded as `bytes_generated` in the request's span.
pub fn metered(inner: BodyStream, generated: bool) -> Metered {
    Metered {
        inner,
        bytes: 0,
        generated,
        span: tracing::Span::current(),
    }
}

/// See [`metered`].
pub struct Metered {
    inner: BodyStream,
    bytes: u64,
    generated: bool,
    /// The request's span, so the abort line carries its fields.
    span: tracing::Span,
}

impl Stream for Metered {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.bytes += chunk.len() as u64;
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.span.in_scope(|| {
                    tracing::warn!(bytes_sent = this.bytes, error = %err, "response aborted after a storage error");
                });
                // hyper aborts the connection on this error.
                Poll::Ready(Some(Err(std::io::Error::other(err))))
            }
            Poll::Ready(None) => {
                this.span.record(
                    "bytes_generated",
                    if this.generated { this.bytes } else { 0 },
                );
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
