//! Detecting a client that stopped reading its response.
//!
//! Each connection gets a [`ConnProgress`], put into every request's extensions by the
//! server loop. The access-log body wrapper reports on it: when it hands hyper a chunk,
//! and whether it is now waiting on its own source (git, the cache) or on hyper. hyper
//! stops asking for more only when the socket does not drain, so "a response is in
//! flight, the body is not waiting on its source, and nothing was handed over for
//! `send_timeout`" means the client stopped reading. The server loop then closes the
//! connection, which drops the response and with it any git process behind it.
//!
//! File ranges (see [`crate::zero_copy`]) leave hyper's hands long before they leave the
//! process: hyper is done with a body once it has its last placeholder, while up to a
//! whole range may still wait for the socket. So a connection also counts the file
//! bytes its responses queued and the ones `sendfile` sent; while some are unsent, a
//! response is still in flight for the stall check, and a body that ended cleanly has
//! its access-log line deferred ([`ConnProgress::after_file_bytes`]) until they are out,
//! or the connection closes short of them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    /// File bytes its responses queued for `sendfile`, over its life.
    file_queued: AtomicU64,
    /// What waits for the file bytes queued so far to be sent, oldest first; `None`
    /// once the connection is closed.
    after_sent: Mutex<Option<VecDeque<AfterSent>>>,
}

/// Something to run once the connection's `sendfile` count reaches `until`, or when
/// the connection closes; it is given the count then.
struct AfterSent {
    until: u64,
    run: Box<dyn FnOnce(u64) + Send>,
}

impl std::fmt::Debug for AfterSent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfterSent")
            .field("until", &self.until)
            .finish_non_exhaustive()
    }
}

impl Default for ConnProgress {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            streaming: AtomicUsize::new(0),
            waiting_on_source: AtomicBool::new(false),
            file_bytes: AtomicU64::new(0),
            file_queued: AtomicU64::new(0),
            after_sent: Mutex::new(Some(VecDeque::new())),
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

    /// A response body is over. Its last poll may have waited on its source (an entry
    /// still being written): it waits on nothing now, and any file bytes it left unsent
    /// are the client's to take from here on.
    pub fn end(&self) {
        self.progress();
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
        let sent = self.file_bytes.fetch_add(n, Ordering::SeqCst) + n;
        let due: Vec<AfterSent> = match self.lock_after_sent().as_mut() {
            Some(waiting) => {
                let ready = waiting.iter().take_while(|w| w.until <= sent).count();
                waiting.drain(..ready).collect()
            }
            None => Vec::new(),
        };
        for waiter in due {
            (waiter.run)(sent);
        }
    }

    /// A response queued `n` file bytes for the connection to send; returns the
    /// connection's queued total, this range included.
    pub fn queued_file_bytes(&self, n: u64) -> u64 {
        self.file_queued.fetch_add(n, Ordering::SeqCst) + n
    }

    /// Run `run` once `until` file bytes have been sent on this connection (at once if
    /// they have, or if the connection is closed), or when the connection closes; it
    /// gets the count sent by then.
    pub fn after_file_bytes(&self, until: u64, run: impl FnOnce(u64) + Send + 'static) {
        {
            let mut waiting = self.lock_after_sent();
            // Checked under the lock `sent_file_bytes` and `closed` drain under: none is
            // missed, none left behind.
            if let Some(waiting) = waiting.as_mut().filter(|_| self.file_bytes() < until) {
                waiting.push_back(AfterSent {
                    until,
                    run: Box::new(run),
                });
                return;
            }
        }
        run(self.file_bytes());
    }

    /// The connection is closed: whatever waits for file bytes runs now, and what
    /// asks to wait from here on runs at once.
    pub fn closed(&self) {
        let waiting: Vec<AfterSent> = self
            .lock_after_sent()
            .take()
            .map(Vec::from)
            .unwrap_or_default();
        let sent = self.file_bytes();
        for waiter in waiting {
            (waiter.run)(sent);
        }
    }

    fn lock_after_sent(&self) -> std::sync::MutexGuard<'_, Option<VecDeque<AfterSent>>> {
        self.after_sent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether file bytes queued by a response still wait for the socket.
    fn file_bytes_unsent(&self) -> bool {
        self.file_queued.load(Ordering::SeqCst) > self.file_bytes()
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
        (self.streaming.load(Ordering::SeqCst) > 0 || self.file_bytes_unsent())
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

    #[tokio::test(start_paused = true)]
    async fn a_body_that_last_waited_on_its_source_can_still_stall_on_its_file_bytes() {
        let p = ConnProgress::default();
        let limit = Duration::from_secs(5);
        p.start();
        p.queued_file_bytes(100);
        // An entry still being written: the last poll before the end waited on it.
        p.waiting_on_source();
        p.end();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!p.stalled(limit), "the end counts as progress");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(p.stalled(limit), "100 bytes wait and the client takes none");
    }

    #[tokio::test(start_paused = true)]
    async fn file_bytes_left_after_the_body_ended_are_still_in_flight() {
        let p = ConnProgress::default();
        let limit = Duration::from_secs(5);
        p.start();
        let until = p.queued_file_bytes(100);
        p.progress();
        p.end();
        let got = Arc::new(Mutex::new(Vec::new()));
        let log = got.clone();
        p.after_file_bytes(until, move |sent| log.lock().expect("lock").push(sent));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(p.stalled(limit), "100 bytes wait and the client takes none");
        p.sent_file_bytes(60);
        p.wrote();
        assert!(
            got.lock().expect("lock").is_empty(),
            "ran before its bytes were out"
        );
        p.sent_file_bytes(40);
        assert_eq!(*got.lock().expect("lock"), vec![100]);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!p.stalled(limit), "everything was sent");
        // Already sent: runs at once. Never sent: runs when the connection closes.
        p.after_file_bytes(100, move |_| {});
        let log = got.clone();
        let until = p.queued_file_bytes(50);
        p.after_file_bytes(until, move |sent| log.lock().expect("lock").push(sent));
        p.sent_file_bytes(10);
        p.closed();
        assert_eq!(*got.lock().expect("lock"), vec![100, 110]);
        // After the close, nothing waits.
        let log = got.clone();
        let until = p.queued_file_bytes(50);
        p.after_file_bytes(until, move |sent| log.lock().expect("lock").push(sent));
        assert_eq!(*got.lock().expect("lock"), vec![100, 110, 110]);
    }
}
