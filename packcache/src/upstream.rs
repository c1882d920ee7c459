//! What a producer consumes: the upstream byte stream, the future that starts it, and the
//! error both can fail with.
//!
//! This module only names the types; running an upstream is the producer's job.

use std::error::Error;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

/// The byte stream a producer forwards.
pub type ByteStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, UpstreamError>> + Send>>;

/// The future that starts a producer's upstream.
pub type Upstream =
    Pin<Box<dyn std::future::Future<Output = Result<ByteStream, UpstreamError>> + Send>>;

/// A producer's upstream failure, shared by every reader of the entry.
#[derive(Clone)]
pub struct UpstreamError(Arc<dyn Error + Send + Sync>);

impl UpstreamError {
    /// Wrap an error.
    pub fn new(err: impl Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(err))
    }

    /// The original error, if it is a `T` (so callers can classify it).
    pub fn downcast_ref<T: Error + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }
}

impl fmt::Debug for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Error for UpstreamError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}
