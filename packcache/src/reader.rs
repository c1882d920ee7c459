//! A reader: streams an entry's bytes from the start, following the growing file; or,
//! for a fetch below `min_occurrences`, what its flight sends until the flight lands
//! into an entry, and then that entry from the same position (see `flight/`).
//!
//! It reads up to the published offset (I2), from the entry's in-memory tail when it
//! keeps up with the producer and otherwise with reads on the entry's open file (so an
//! unlinked file still reads: I5): on the runtime thread when the page cache holds the
//! bytes (`RWF_NOWAIT`), on the blocking pool when they must come from disk. It then
//! waits for the producer to publish more or to finish. After a write error it continues from its in-memory channel (I7). It only
//! observes the entry's state, never changes it: dropping a reader drops its receiver of
//! the published state, and the producer, seeing none left, stops (I6).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use prometheus::IntCounter;
use tokio::sync::{mpsc, watch};

use crate::entry::{Entry, FailReason, Follower, Phase, Progress};
use crate::entry_read;
use crate::flight::{FlightEnd, FlightReceiver};
use crate::upstream::UpstreamError;

/// Largest chunk a reader reads from the file at once. Below glibc's mmap threshold,
/// so buffers come from (and go back to) the heap instead of fresh zeroed pages.
const CHUNK: u64 = 120 * 1024;

/// A region handed out at the head of a live production covers at least this much when
/// it comes within [`COALESCE_WAIT`].
const COALESCE: u64 = 4 << 20;

/// The longest a region at the head waits to grow to [`COALESCE`]. Short next to what a
/// person or a client timeout notices, so git's progress and keep-alive packets still
/// arrive promptly; long enough that a production running at disk speed fills a region,
/// so each follower makes a few large sends instead of one per upstream chunk.
const COALESCE_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Why a reader's stream ended early.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The producer's upstream failed.
    #[error("upstream failed: {0}")]
    Upstream(#[source] UpstreamError),
    /// The producer stopped or panicked.
    #[error("pack cache producer stopped before the end")]
    Producer,
    /// Reading the entry file failed.
    #[error("reading pack cache file: {0}")]
    Io(String),
}

impl ReadError {
    /// The upstream error, for callers that classify failures.
    pub fn upstream(&self) -> Option<&UpstreamError> {
        match self {
            Self::Upstream(e) => Some(e),
            _ => None,
        }
    }
}

/// What [`Reader::next_region`] hands out.
#[derive(Debug)]
pub enum Region {
    /// A published range of the entry file.
    File(FileRegion),
    /// Bytes that never reached the file (they came after a write error).
    Bytes(Bytes),
}

/// A published range of an entry file (I2). It holds the open file, so the range stays
/// readable after the entry is evicted and its name unlinked (I5). Its bytes count as
/// served when the sender reports them with [`FileRegion::sent`], not when the region
/// is handed out: a client that leaves mid-region is not counted for what it never got.
#[derive(Debug, Clone)]
pub struct FileRegion {
    file: Arc<std::fs::File>,
    offset: u64,
    len: u64,
    served: IntCounter,
}

impl FileRegion {
    /// The entry file.
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// Where the range starts in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Its length in bytes; never zero.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: a region holds at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `n` more of its bytes reached the client's socket.
    pub fn sent(&self, n: u64) {
        self.served.inc_by(n);
    }
}

/// What is ready past a reader's position.
enum Available {
    /// File bytes of `entry` up to this published offset; `live` while the producer
    /// is still writing.
    File {
        entry: Arc<Entry>,
        written: u64,
        live: bool,
    },
    /// A chunk in memory: from a flight, or from the reader's spill channel (I7).
    Memory(Bytes),
}

/// One reader of an entry (or of a flight, until it lands in an entry). Use
/// [`Reader::into_stream`] or [`Reader::into_regions`] to consume it.
pub struct Reader {
    key: crate::CacheKey,
    source: Source,
    served: IntCounter,
    pos: u64,
    finished: bool,
}

/// Where a reader's bytes come from.
enum Source {
    /// An entry's file (and its in-memory tail).
    Entry(Following),
    /// A flight's channel; it may hand over to an entry (see `flight/`).
    Flight(FlightReceiver),
}

/// A reader's hold on an entry.
struct Following {
    entry: Arc<Entry>,
    /// The entry's published state; holding it keeps the producer going (I6).
    progress: watch::Receiver<Progress>,
    /// Bytes past a write error (I7); `None` once closed, or when attached to a finished
    /// entry.
    spill: Option<mpsc::Receiver<Bytes>>,
    /// This reader's own open file description of the entry file (opened through
    /// /proc/self/fd, which works after unlink), so it reads sequentially into
    /// uninitialized buffers without sharing a file offset. `None` until first needed.
    own: Option<std::fs::File>,
}

impl Following {
    fn new(entry: Arc<Entry>, follower: Follower) -> Self {
        Self {
            entry,
            progress: follower.progress,
            spill: follower.spill,
            own: None,
        }
    }
}

impl Reader {
    /// Follow `entry` from its start; `served` counts the bytes handed out.
    pub(crate) fn new(entry: Arc<Entry>, follower: Follower, served: IntCounter) -> Self {
        Self {
            key: entry.key(),
            source: Source::Entry(Following::new(entry, follower)),
            served,
            pos: 0,
            finished: false,
        }
    }

    /// Read what a flight for `key` sends.
    pub(crate) fn flight(key: crate::CacheKey, flight: FlightReceiver, served: IntCounter) -> Self {
        Self {
            key,
            source: Source::Flight(flight),
            served,
            pos: 0,
            finished: false,
        }
    }

    /// The entry's key, for logs.
    pub fn key(&self) -> crate::CacheKey {
        self.key
    }

    /// The next chunk, `None` at the clean end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ReadError>> {
        match self.next_available().await? {
            Err(err) => Some(Err(err)),
            Ok(Available::Memory(chunk)) => Some(Ok(self.hand_out(chunk))),
            Ok(Available::File { entry, written, .. }) => {
                // I2: from memory or the file, never past the published offset.
                if let Some(bytes) = entry.tail(self.pos, written) {
                    // Keeping up with the producer: no file read.
                    return Some(Ok(self.hand_out(bytes)));
                }
                let len = (written - self.pos).min(CHUNK);
                if let Some(bytes) = entry_read::cached(entry.file(), self.pos, len) {
                    // In the page cache (the usual case for a hit): no hand-off to the
                    // blocking pool.
                    return Some(Ok(self.hand_out(bytes)));
                }
                Some(self.read_file(len).await)
            }
        }
    }

    /// The next region of at most `max` bytes (`max` > 0), `None` at the clean end: a
    /// range of the entry file for a caller that sends it without reading it (with
    /// `sendfile(2)`), or bytes in memory (a flight's, the newest bytes of an entry
    /// still being written, or bytes past a write error, I7).
    pub async fn next_region(&mut self, max: u64) -> Option<Result<Region, ReadError>> {
        match self.next_available().await? {
            Err(err) => Some(Err(err)),
            Ok(Available::Memory(chunk)) => Some(Ok(Region::Bytes(self.hand_out(chunk)))),
            Ok(Available::File {
                entry,
                written,
                live,
            }) => {
                let mut written = written;
                if live && self.pos > 0 && written - self.pos < COALESCE {
                    // At the head of a live production: let a larger range build up
                    // (briefly), so each send moves more than one upstream chunk.
                    written = self.coalesce(written).await;
                }
                // I2: the range ends at the published offset; I5: it holds the open file.
                let region = FileRegion {
                    file: entry.file().clone(),
                    offset: self.pos,
                    len: (written - self.pos).min(max.max(1)),
                    served: self.served.clone(),
                };
                self.pos += region.len;
                Some(Ok(Region::File(region)))
            }
        }
    }

    /// Wait until [`COALESCE`] bytes past this reader's position are published, the
    /// production ends, or [`COALESCE_WAIT`] passes; the published offset then.
    async fn coalesce(&mut self, written: u64) -> u64 {
        let Source::Entry(following) = &mut self.source else {
            return written;
        };
        let target = self.pos + COALESCE;
        let wait = following
            .progress
            .wait_for(|p| p.written >= target || !matches!(p.phase, Phase::Writing));
        let reached = match tokio::time::timeout(COALESCE_WAIT, wait).await {
            Ok(Ok(progress)) => Some(progress.written),
            _ => None,
        };
        reached.unwrap_or_else(|| following.progress.borrow().written)
    }

    /// The entry's whole length when it is already complete in its file, so a response
    /// can announce it; `None` while it is still being written.
    pub fn complete_len(&self) -> Option<u64> {
        let Source::Entry(following) = &self.source else {
            return None;
        };
        let progress = following.progress.borrow();
        (matches!(progress.phase, Phase::Done) && following.spill.is_none())
            .then_some(progress.written)
    }

    /// Wait until there is something past this reader's position: published bytes in
    /// the file, or a chunk in memory (a flight's channel, or a spill channel); `None` at
    /// the clean end.
    async fn next_available(&mut self) -> Option<Result<Available, ReadError>> {
        if self.finished {
            return None;
        }
        loop {
            let following = match &mut self.source {
                Source::Entry(following) => following,
                Source::Flight(flight) => {
                    if let Some(chunk) = flight.data.recv().await {
                        return Some(Ok(Available::Memory(chunk)));
                    }
                    // The channel is closed after everything queued: how did it end?
                    match (&mut flight.end).await {
                        Ok(FlightEnd::Follow(entry, follower)) => {
                            // The entry holds the same bytes from the start: go on from
                            // this position.
                            self.source = Source::Entry(Following::new(entry, follower));
                            continue;
                        }
                        Ok(FlightEnd::Done) => {
                            self.finished = true;
                            return None;
                        }
                        Ok(FlightEnd::Failed(err)) => {
                            self.finished = true;
                            return Some(Err(ReadError::Upstream(err)));
                        }
                        Err(_) => {
                            self.finished = true;
                            return Some(Err(ReadError::Producer));
                        }
                    }
                }
            };
            // A copy: the borrow must not be held while the entry lock is taken.
            let Progress { written, phase } = following.progress.borrow_and_update().clone();
            if self.pos < written {
                let entry = following.entry.clone();
                let live = matches!(phase, Phase::Writing);
                return Some(Ok(Available::File {
                    entry,
                    written,
                    live,
                }));
            }
            if !matches!(phase, Phase::Writing) {
                // The file part is over; the rest, if any, is in this reader's channel.
                if let Some(spill) = &mut following.spill {
                    match spill.recv().await {
                        Some(chunk) => return Some(Ok(Available::Memory(chunk))),
                        // Closed: the producer has published its end (I7).
                        None => {
                            following.spill = None;
                            continue;
                        }
                    }
                }
                if !matches!(phase, Phase::Spilling) {
                    return self.end(phase).map(Err);
                }
            }
            if following.progress.changed().await.is_err() {
                return self.end(Phase::Failed(FailReason::Panicked)).map(Err);
            }
        }
    }

    fn hand_out(&mut self, bytes: Bytes) -> Bytes {
        self.pos += bytes.len() as u64;
        self.served.inc_by(bytes.len() as u64);
        bytes
    }

    /// The end of the stream: `None` when clean, else why it failed.
    fn end(&mut self, phase: Phase) -> Option<ReadError> {
        self.finished = true;
        match phase {
            Phase::Done => None,
            Phase::Failed(FailReason::Upstream(err)) => Some(ReadError::Upstream(err)),
            Phase::Failed(_) | Phase::Writing | Phase::Spilling => Some(ReadError::Producer),
        }
    }

    async fn read_file(&mut self, len: u64) -> Result<Bytes, ReadError> {
        let Source::Entry(following) = &mut self.source else {
            self.finished = true;
            return Err(ReadError::Producer);
        };
        let shared = following.entry.file().clone();
        let own = following.own.take();
        let pos = self.pos;
        let result =
            tokio::task::spawn_blocking(move || entry_read::blocking(&shared, own, pos, len)).await;
        match result {
            Ok(Ok((own, bytes))) => {
                following.own = own;
                Ok(self.hand_out(bytes))
            }
            Ok(Err(err)) => {
                self.finished = true;
                Err(ReadError::Io(err.to_string()))
            }
            Err(join) => {
                self.finished = true;
                Err(ReadError::Io(join.to_string()))
            }
        }
    }

    /// The reader as a stream of regions of at most `max` bytes each.
    pub fn into_regions(
        self,
        max: u64,
    ) -> impl Stream<Item = Result<Region, ReadError>> + Send + 'static {
        futures_util::stream::unfold(self, move |mut reader| async move {
            reader.next_region(max).await.map(|item| (item, reader))
        })
    }

    /// The reader as a stream of chunks.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, ReadError>> + Send + 'static {
        futures_util::stream::unfold(self, |mut reader| async move {
            reader.next_chunk().await.map(|item| (item, reader))
        })
    }
}
