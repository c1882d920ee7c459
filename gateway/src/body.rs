//! Response bodies streamed from storage (or the pack cache).
//!
//! A stream error becomes an IO error, on which hyper aborts the connection, so a
//! truncated response never ends cleanly. The error is logged once, here, in the
//! request's span; the request's summary line comes from [`crate::access_log`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http_body::{Body as HttpBody, Frame, SizeHint};

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

/// A body whose length is known in advance: it reports the length as exact, so hyper
/// sends `Content-Length` instead of chunked framing.
pub struct OfLength<B> {
    inner: B,
    remaining: u64,
}

impl<B> OfLength<B> {
    /// `inner`, which will yield exactly `len` bytes.
    pub fn new(inner: B, len: u64) -> Self {
        Self {
            inner,
            remaining: len,
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for OfLength<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.remaining = this.remaining.saturating_sub(data.len() as u64);
                if this.remaining == 0 && !data.is_empty() {
                    // hyper stops polling once the announced length is out; poll the
                    // end now, so the layers inside see their stream finish (metering).
                    if let Poll::Ready(Some(Ok(extra))) = Pin::new(&mut this.inner).poll_frame(cx) {
                        if extra.data_ref().is_some_and(|d| !d.is_empty()) {
                            tracing::error!("response body longer than its announced length");
                        }
                    }
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
