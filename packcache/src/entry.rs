//! One entry: the file one producer writes and any number of readers follow, and the one
//! state they share.
//!
//! The coordination primitive, like Gitaly's cursor: a [`Progress`] value (bytes written
//! plus one [`Phase`]) published through one `tokio::sync::watch` channel. Only the
//! producer's [`Writer`] changes it; readers hold receivers and only observe it, and the
//! number of receivers is the number of attached readers, which is how the producer learns
//! that the last one has gone (I6). Every change happens under the entry's one
//! `std::sync::Mutex`, never held across `.await`; besides publishing, that lock guards
//! what the producer hands to readers directly: the in-memory tail of the newest chunks
//! and, after a write error, one bounded channel per attached reader (I7).
//!
//! This module knows nothing of the index, the file store or the upstream: the index
//! calls [`Entry::attach`] and [`Entry::unindex`], the producer drives the [`Writer`], and
//! readers read the file and [`Entry::tail`].

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use prometheus::IntGauge;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::key::CacheKey;
use crate::upstream::UpstreamError;

/// How much of the newest output an entry keeps in memory for readers at the head.
const TAIL_BYTES: usize = 4 << 20;

/// Chunks buffered per reader after a write error (I7).
const SPILL_CHUNKS: usize = 8;

/// The published state of an entry.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    /// Bytes in the file and readable. I2: readers never read past this.
    pub(crate) written: u64,
    /// Where the entry is in its life.
    pub(crate) phase: Phase,
}

/// Where an entry is in its life.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    /// The producer is still writing the file.
    Writing,
    /// A write failed at `written`: the file grows no more and the rest of the stream
    /// goes to the attached readers' channels (I7).
    Spilling,
    /// Every byte is out; after `Writing` the file holds `written` bytes, after
    /// `Spilling` the readers' channels hold the rest.
    Done,
    /// The producer failed; readers fail when they reach the end of what they can get.
    Failed(FailReason),
}

/// Why an entry failed.
#[derive(Debug, Clone)]
pub(crate) enum FailReason {
    /// The upstream stream failed.
    Upstream(UpstreamError),
    /// Every reader left before the end, so production stopped.
    Abandoned,
    /// The producer task panicked.
    Panicked,
    /// The file was cut short under the cache while being written: serving it would
    /// end short, or send zeros where later writes left a hole.
    Damaged,
    /// The [`Writer`] went away without publishing an end (its task was dropped).
    Dropped,
}

/// Bytes of entry files in the index, shared by every entry and kept in the
/// `disk_usage` gauge. An entry adds to it only while it is in the index.
#[derive(Debug)]
pub(crate) struct DiskUsage {
    bytes: AtomicU64,
    gauge: IntGauge,
}

impl DiskUsage {
    pub(crate) fn new(gauge: IntGauge) -> Self {
        Self {
            bytes: AtomicU64::new(0),
            gauge,
        }
    }

    /// The current total.
    pub(crate) fn get(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        let total = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        self.gauge.set(total as i64);
    }

    fn sub(&self, n: u64) {
        let total = self.bytes.fetch_sub(n, Ordering::Relaxed).saturating_sub(n);
        self.gauge.set(total as i64);
    }
}

/// A cache entry.
#[derive(Debug)]
pub(crate) struct Entry {
    key: CacheKey,
    /// Kept open, so readers can finish after the name is unlinked (I5).
    file: Arc<File>,
    /// I4: unique to this process life, never reused.
    path: PathBuf,
    /// When it was created, for `max_age`; paused tokio time in tests.
    created: Instant,
    usage: Arc<DiskUsage>,
    /// The published state. Changed only under `shared`, and only by the [`Writer`].
    progress: watch::Sender<Progress>,
    /// The entry's one lock. Lock order: the index lock, then this one, then the watch
    /// channel's own (so never take this one while holding a `borrow()` of `progress`).
    shared: Mutex<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Whether the entry is in the index; its bytes count in [`DiskUsage`] while it is.
    indexed: bool,
    /// The newest written chunks, so readers keeping up with the producer take bytes
    /// from memory instead of reading them back from the file.
    tail: Tail,
    /// One bounded channel per reader attached while writing; used only after a write
    /// error (I7). Cleared at the end, which closes them.
    spill: Vec<mpsc::Sender<Bytes>>,
}

/// What a newly attached reader follows.
pub(crate) struct Follower {
    /// The published state; holding it counts as an attached reader (I6).
    pub(crate) progress: watch::Receiver<Progress>,
    /// This reader's channel for bytes past a write error; `None` when attached to a
    /// finished entry.
    pub(crate) spill: Option<mpsc::Receiver<Bytes>>,
}

impl Entry {
    /// A new, empty entry in the `Writing` phase, counted as in the index; the [`Writer`]
    /// is the only handle that can change its published state.
    pub(crate) fn new(
        key: CacheKey,
        file: File,
        path: PathBuf,
        usage: Arc<DiskUsage>,
    ) -> (Arc<Self>, Writer) {
        let progress = watch::Sender::new(Progress {
            written: 0,
            phase: Phase::Writing,
        });
        let entry = Arc::new(Self {
            key,
            file: Arc::new(file),
            path,
            created: Instant::now(),
            usage,
            progress,
            shared: Mutex::new(Shared {
                indexed: true,
                tail: Tail::default(),
                spill: Vec::new(),
            }),
        });
        let writer = Writer {
            entry: entry.clone(),
            finished: false,
        };
        (entry, writer)
    }

    /// The key it answers.
    pub(crate) fn key(&self) -> CacheKey {
        self.key
    }

    /// The open entry file.
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// The entry file's name.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// When the entry was created.
    pub(crate) fn created(&self) -> Instant {
        self.created
    }

    /// Whether every byte is written.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.progress.borrow().phase, Phase::Done)
    }

    /// Whether the entry is done but its file holds fewer bytes than were written:
    /// something outside the cache truncated it. Such an entry must not be served (a
    /// hit would end short, however it is read); one `fstat` on the open file, which
    /// on a local filesystem reads only the in-memory inode.
    pub(crate) fn is_truncated(&self) -> bool {
        let written = {
            let progress = self.progress.borrow();
            if !matches!(progress.phase, Phase::Done) {
                return false;
            }
            progress.written
        };
        crate::store::holds(&self.file, written).is_ok_and(|whole| !whole)
    }

    /// Whether the producer failed.
    pub(crate) fn is_failed(&self) -> bool {
        matches!(self.progress.borrow().phase, Phase::Failed(_))
    }

    /// Readers attached now.
    pub(crate) fn readers(&self) -> usize {
        self.progress.receiver_count()
    }

    /// Whether a new reader may join: still in the index, and writing or done.
    pub(crate) fn joinable(&self) -> bool {
        let shared = self.lock();
        shared.indexed && matches!(self.progress.borrow().phase, Phase::Writing | Phase::Done)
    }

    /// Attach a reader. The index calls this under its lock after [`Entry::joinable`],
    /// so the producer cannot see the reader count drop to zero in between (I1, I6).
    pub(crate) fn attach(&self) -> Follower {
        let mut shared = self.lock();
        let progress = self.progress.subscribe();
        let spill = match progress.borrow().phase {
            Phase::Writing => {
                let (tx, rx) = mpsc::channel(SPILL_CHUNKS);
                shared.spill.push(tx);
                Some(rx)
            }
            _ => None,
        };
        Follower { progress, spill }
    }

    /// Take the entry's bytes out of disk usage; `Some(bytes)` the first time only.
    pub(crate) fn unindex(&self) -> Option<u64> {
        let mut shared = self.lock();
        if !shared.indexed {
            return None;
        }
        shared.indexed = false;
        let written = self.progress.borrow().written;
        self.usage.sub(written);
        Some(written)
    }

    /// The written bytes from `pos`, up to `limit`, if they are still in memory.
    pub(crate) fn tail(&self, pos: u64, limit: u64) -> Option<Bytes> {
        self.lock().tail.get(pos, limit)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The producer's handle on an entry: the only way to change its published state.
///
/// Dropped without [`Writer::finish`] (a producer task cancelled, say, at runtime
/// shutdown), it fails the entry, so no reader waits for bytes that will never come;
/// the index replaces the failed entry (unlinking its file) or evicts it at `max_age`.
#[derive(Debug)]
pub(crate) struct Writer {
    entry: Arc<Entry>,
    finished: bool,
}

impl Writer {
    /// The entry being written.
    pub(crate) fn entry(&self) -> &Arc<Entry> {
        &self.entry
    }

    /// Publish `chunk`, just written to the file at `offset`; `wake` says whether to
    /// wake the readers waiting for it now (else they see it when they next look, or
    /// at the next [`Writer::wake`]).
    pub(crate) fn wrote(&self, offset: u64, chunk: Bytes, wake: bool) {
        let len = chunk.len() as u64;
        let mut shared = self.entry.lock();
        shared.tail.push(offset, chunk);
        if shared.indexed {
            self.entry.usage.add(len);
        }
        // I2: the offset is published only once the bytes are in the file.
        self.entry.progress.send_if_modified(|progress| {
            progress.written = offset + len;
            wake
        });
    }

    /// Wake the readers waiting for what was published quietly.
    pub(crate) fn wake(&self) {
        let _shared = self.entry.lock();
        self.entry.progress.send_modify(|_| {});
    }

    /// The file failed: from here on, bytes go through the readers' channels (I7).
    pub(crate) fn start_spilling(&self) {
        let _shared = self.entry.lock();
        self.entry
            .progress
            .send_modify(|progress| progress.phase = Phase::Spilling);
    }

    /// The channels of the readers attached when writing stopped.
    pub(crate) fn spill_targets(&self) -> Vec<mpsc::Sender<Bytes>> {
        self.entry.lock().spill.clone()
    }

    /// Forget the channels of readers that left; false when none is left.
    pub(crate) fn keep_open_spill_targets(&self) -> bool {
        let mut shared = self.entry.lock();
        shared.spill.retain(|tx| !tx.is_closed());
        !shared.spill.is_empty()
    }

    /// Resolves when no reader is attached (it may resolve again after one joins and
    /// leaves).
    pub(crate) async fn readers_gone(&self) {
        self.entry.progress.closed().await;
    }

    /// Publish the end: `Done` on `Ok`, `Failed` otherwise.
    pub(crate) fn finish(mut self, result: Result<(), FailReason>) {
        let phase = match result {
            Ok(()) => Phase::Done,
            Err(reason) => Phase::Failed(reason),
        };
        self.publish_end(phase);
    }

    /// Give up on an entry that never went into the index (another one for its key
    /// did): nobody can have attached to it.
    pub(crate) fn discard(mut self) {
        self.publish_end(Phase::Failed(FailReason::Abandoned));
    }

    fn publish_end(&mut self, phase: Phase) {
        self.finished = true;
        let mut shared = self.entry.lock();
        self.entry
            .progress
            .send_modify(|progress| progress.phase = phase);
        // Closed only after the end is published, so a reader whose channel closes
        // finds the end when it looks.
        shared.spill.clear();
        // Nothing is written any more: readers read the file (the page cache), and a
        // finished entry holds no memory for as long as it stays cached. Freed once
        // the lock is let go.
        let tail = std::mem::take(&mut shared.tail);
        drop(shared);
        drop(tail);
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.finished {
            // At runtime shutdown, for every producer still running.
            tracing::warn!(key = %self.entry.key(), "pack cache writer dropped before the end");
            self.publish_end(Phase::Failed(FailReason::Dropped));
        }
    }
}

/// The newest written chunks with their offsets, at most [`TAIL_BYTES`].
#[derive(Debug, Default)]
struct Tail {
    chunks: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Tail {
    /// Remember a chunk just written at `offset`, dropping the oldest beyond the cap.
    fn push(&mut self, offset: u64, chunk: Bytes) {
        self.bytes += chunk.len();
        self.chunks.push_back((offset, chunk));
        while self.bytes > TAIL_BYTES {
            match self.chunks.pop_front() {
                Some((_, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// The bytes from `pos` to the end of the chunk holding it, but not past `limit`.
    fn get(&self, pos: u64, limit: u64) -> Option<Bytes> {
        let (first, _) = self.chunks.front()?;
        if pos < *first || pos >= limit {
            return None;
        }
        self.chunks.iter().find_map(|(offset, chunk)| {
            let end = (offset + chunk.len() as u64).min(limit);
            (pos >= *offset && pos < end)
                .then(|| chunk.slice((pos - offset) as usize..(end - offset) as usize))
        })
    }
}

#[cfg(test)]
mod tests;
