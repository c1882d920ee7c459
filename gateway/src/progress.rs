//! Detecting a client that stopped reading its response.
//!
//! Each connection gets a [`ConnProgress`], put into every request's extensions by the
//! server loop. The access-log body wrapper reports on it: when it hands hyper a chunk,
//! and whether it is now waiting on its own source (git, the cache) or on hyper. hyper
//! stops asking for more only when the socket does not drain, so "a response is in
//! flight, the body is not waiting on its source, and nothing was handed over for
//! `send_timeout`" means the client stopped reading. The server loop then closes the
//! connection, which drops the response and with it any git process behind it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

// tokio's clock, so tests can drive it.
use tokio::time::Instant;

/// Response progress of one connection.
#[derive(Debug)]
pub struct ConnProgress {
    base: Instant,
    /// Milliseconds since `base` when a chunk was last handed to hyper.
    last_progress_ms: AtomicU64,
    /// Response bodies in flight on this connection.
    streaming: AtomicUsize,
    /// Whether the body in flight is waiting on its own source rather than on hyper.
    waiting_on_source: AtomicBool,
    /// File bytes this connection has sent with `sendfile`, over its life.
    file_bytes: AtomicU64,
}

impl Default for ConnProgress {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            streaming: AtomicUsize::new(0),
            waiting_on_source: AtomicBool::new(false),
            file_bytes: AtomicU64::new(0),
        }
    }
}

impl ConnProgress {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// A response body starts.
    pub fn start(&self) {
        self.streaming.fetch_add(1, Ordering::SeqCst);
        self.progress();
    }

    /// A response body is over.
    pub fn end(&self) {
        self.streaming.fetch_sub(1, Ordering::SeqCst);
    }

    /// A chunk was handed to hyper.
    pub fn progress(&self) {
        self.last_progress_ms.store(self.now_ms(), Ordering::SeqCst);
        self.waiting_on_source.store(false, Ordering::SeqCst);
    }

    /// Bytes of the response reached the socket (reported by the connection itself,
    /// which sends file ranges without handing them through the body).
    pub fn wrote(&self) {
        self.last_progress_ms.store(self.now_ms(), Ordering::SeqCst);
    }

    /// `n` bytes of a file range reached the socket.
    pub fn sent_file_bytes(&self, n: u64) {
        self.file_bytes.fetch_add(n, Ordering::SeqCst);
    }

    /// File bytes sent on this connection so far (see [`Self::sent_file_bytes`]).
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes.load(Ordering::SeqCst)
    }

    /// The body is waiting for its source to produce more.
    pub fn waiting_on_source(&self) {
        self.waiting_on_source.store(true, Ordering::SeqCst);
        // Time spent waiting on the source is not the client's fault.
        self.last_progress_ms.store(self.now_ms(), Ordering::SeqCst);
    }

    /// Whether the client has not taken any bytes for `limit` while we had some ready.
    pub fn stalled(&self, limit: Duration) -> bool {
        self.streaming.load(Ordering::SeqCst) > 0
            && !self.waiting_on_source.load(Ordering::SeqCst)
            && self
                .now_ms()
                .saturating_sub(self.last_progress_ms.load(Ordering::SeqCst))
                > limit.as_millis() as u64
    }
}

/// Resolves when the connection's response has stalled for `limit`.
pub async fn stall(progress: Arc<ConnProgress>, limit: Duration) {
    let every = (limit / 4).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        if progress.stalled(limit) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stalls_only_when_bytes_wait_for_the_client() {
        let p = ConnProgress::default();
        let limit = Duration::from_secs(5);
        assert!(!p.stalled(limit), "nothing in flight");
        p.start();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(p.stalled(limit), "a chunk was ready and nobody took it");
        p.waiting_on_source();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!p.stalled(limit), "a slow source is not a slow client");
        p.progress();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!p.stalled(limit));
        p.end();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!p.stalled(limit), "nothing in flight");
    }
}
