//! One cache entry: a file being written by one producer and read by many readers.
//!
//! The coordination primitive is small: a published write offset and a terminal status
//! under one `std::sync::Mutex` (never held across `.await`), and a `watch` channel whose
//! only job is to wake readers when either changed.

use std::error::Error;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, watch, Notify};

use crate::key::CacheKey;

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

/// Where an entry is in its life.
#[derive(Debug, Clone)]
pub enum Status {
    /// The producer is still writing.
    Writing,
    /// Every byte is written; `written` is the final length.
    Done,
    /// The producer failed; readers fail when they reach the end of what was written.
    Failed(FailReason),
}

/// Why an entry failed.
#[derive(Debug, Clone)]
pub enum FailReason {
    /// The upstream stream failed.
    Upstream(UpstreamError),
    /// Every reader left before the end, so production stopped.
    Abandoned,
    /// The producer task panicked.
    Panicked,
}

/// Mutable state of an entry; see the module docs.
#[derive(Debug)]
pub struct State {
    /// Bytes written to the file and readable (I2: readers never go past this).
    pub written: u64,
    /// Terminal status.
    pub status: Status,
    /// After a write error: the offset from which bytes go through the readers'
    /// channels instead of the file (I7).
    pub spill_at: Option<u64>,
    /// Readers currently attached; production stops when it drops to zero (I6).
    pub readers: usize,
    /// Next reader id.
    pub next_reader: u64,
    /// One bounded channel per attached reader, used only after a write error.
    pub spill: Vec<(u64, mpsc::Sender<Bytes>)>,
    /// Whether the entry is still in the index (new readers may join).
    pub in_index: bool,
    /// The most recently written chunks with their offsets (at most [`TAIL_BYTES`]),
    /// so readers keeping up with the producer take bytes from memory instead of
    /// reading them back from the file.
    pub tail: std::collections::VecDeque<(u64, Bytes)>,
    /// Bytes held in `tail`.
    pub tail_bytes: usize,
}

/// How much of the newest output an entry keeps in memory for readers at the head.
pub const TAIL_BYTES: usize = 4 << 20;

impl State {
    /// Remember a chunk just written at `offset`, dropping the oldest beyond the cap.
    pub fn push_tail(&mut self, offset: u64, chunk: Bytes) {
        self.tail_bytes += chunk.len();
        self.tail.push_back((offset, chunk));
        while self.tail_bytes > TAIL_BYTES {
            match self.tail.pop_front() {
                Some((_, old)) => self.tail_bytes -= old.len(),
                None => break,
            }
        }
    }

    /// The written bytes from `pos`, if they are still in the tail.
    pub fn from_tail(&self, pos: u64) -> Option<Bytes> {
        let (first, _) = self.tail.front()?;
        if pos < *first {
            return None;
        }
        self.tail.iter().find_map(|(offset, chunk)| {
            let end = offset + chunk.len() as u64;
            (pos >= *offset && pos < end).then(|| chunk.slice((pos - offset) as usize..))
        })
    }
}

/// A cache entry.
#[derive(Debug)]
pub struct Entry {
    /// The key it answers.
    pub key: CacheKey,
    /// Its file (kept open, so readers can finish after the name is unlinked: I5).
    pub file: Arc<std::fs::File>,
    /// The file's name (I4: unique, never reused).
    pub path: PathBuf,
    /// When it was created, for `max_age`.
    pub created: Instant,
    state: Mutex<State>,
    /// Bumped whenever `state` changes in a way readers care about.
    changed: watch::Sender<u64>,
    /// Wakes the producer when the last reader leaves.
    pub abandoned: Notify,
}

impl Entry {
    /// A new, empty entry in the `Writing` state.
    pub fn new(key: CacheKey, file: std::fs::File, path: PathBuf) -> Self {
        Self {
            key,
            file: Arc::new(file),
            path,
            created: Instant::now(),
            state: Mutex::new(State {
                written: 0,
                status: Status::Writing,
                spill_at: None,
                readers: 0,
                next_reader: 0,
                spill: Vec::new(),
                in_index: true,
                tail: std::collections::VecDeque::new(),
                tail_bytes: 0,
            }),
            changed: watch::channel(0).0,
            abandoned: Notify::new(),
        }
    }

    /// Lock the state. The lock is never held across `.await`.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wake every reader.
    pub fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that wakes on [`Entry::notify`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
