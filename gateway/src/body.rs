//! Response bodies that count what they send and say how they ended.
//!
//! Wraps a node's response stream: counts bytes, turns a stream error into an IO error
//! (hyper then aborts the connection, so a truncated response never ends cleanly), and
//! logs once, in the request's span, whether the body completed, broke, or was dropped
//! because the client went away.

use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::BoxError;
use bytes::Bytes;
use futures_util::Stream;

/// A response body on its way to the client.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// Wrap `inner` for sending as a response body. `generated` says whether these bytes
/// were produced by a storage node for this request (a cache miss, or no cache), so the
/// completion log line reports them as generated as well as served.
pub fn metered(inner: BodyStream, generated: bool) -> Metered {
    Metered {
        inner,
        bytes: 0,
        generated,
        span: tracing::Span::current(),
        ended: false,
    }
}

/// See [`metered`].
pub struct Metered {
    inner: BodyStream,
    bytes: u64,
    generated: bool,
    /// The request's span, so the completion line carries its fields.
    span: tracing::Span,
    /// Set when the end or an error was seen, so `Drop` knows the client left early.
    ended: bool,
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
                this.ended = true;
                this.span.in_scope(|| {
                    tracing::warn!(bytes_served = this.bytes, error = %err, "response aborted after a storage error");
                });
                Poll::Ready(Some(Err(std::io::Error::other(err))))
                // hyper aborts the connection on this error.
            }
            Poll::Ready(None) => {
                if !this.ended {
                    this.ended = true;
                    let generated = if this.generated { this.bytes } else { 0 };
                    this.span.in_scope(|| {
                        tracing::info!(
                            bytes_served = this.bytes,
                            bytes_generated = generated,
                            "response complete"
                        )
                    });
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if !self.ended {
            self.span.in_scope(|| {
                tracing::info!(
                    bytes_served = self.bytes,
                    "client went away before the response ended"
                );
            });
        }
    }
}
