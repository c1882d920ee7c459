//! A reader: streams an entry's bytes from the start, following the growing file.
//!
//! It reads up to the published offset (I2) with positioned reads on the entry's open
//! file (so an unlinked file still reads: I5), then waits for the producer to publish
//! more or to finish. After a write error it continues from its in-memory channel (I7).
//! Dropping a reader detaches it; the last one to leave a still-writing entry stops the
//! producer.

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{mpsc, watch};

use crate::cache::Inner;
use crate::entry::{Entry, FailReason, Status, UpstreamError};

/// Largest chunk a reader reads from the file at once. Below glibc's mmap threshold,
/// so buffers come from (and go back to) the heap instead of fresh zeroed pages.
const CHUNK: u64 = 120 * 1024;

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

/// One reader of an entry. Use [`Reader::into_stream`] to consume it.
pub struct Reader {
    inner: Arc<Inner>,
    entry: Arc<Entry>,
    id: u64,
    pos: u64,
    changed: watch::Receiver<u64>,
    spill: mpsc::Receiver<Bytes>,
    finished: bool,
    /// This reader's own open file description of the entry file (opened through
    /// /proc/self/fd, which works after unlink), so it reads sequentially into
    /// uninitialized buffers without sharing a file offset. `None` until first needed.
    own: Option<std::fs::File>,
}

impl Reader {
    /// Attach to `entry`; the caller holds the index lock and has checked that the entry
    /// can be joined.
    pub(crate) fn attach(inner: Arc<Inner>, entry: Arc<Entry>) -> Self {
        let (tx, rx) = mpsc::channel(8);
        let id = {
            let mut state = entry.lock();
            state.readers += 1;
            state.next_reader += 1;
            let id = state.next_reader;
            state.spill.push((id, tx));
            id
        };
        let changed = entry.subscribe();
        Self {
            inner,
            entry,
            id,
            pos: 0,
            changed,
            spill: rx,
            finished: false,
            own: None,
        }
    }

    /// The entry's key, for logs.
    pub fn key(&self) -> crate::CacheKey {
        self.entry.key
    }

    /// The next chunk, `None` at the clean end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ReadError>> {
        if self.finished {
            return None;
        }
        loop {
            self.changed.borrow_and_update();
            let (written, status, spill_at, from_tail) = {
                let state = self.entry.lock();
                let from_tail = if self.pos < state.written {
                    state.from_tail(self.pos)
                } else {
                    None
                };
                (
                    state.written,
                    state.status.clone(),
                    state.spill_at,
                    from_tail,
                )
            };
            if let Some(bytes) = from_tail {
                // Keeping up with the producer: straight from memory, no file read.
                self.pos += bytes.len() as u64;
                self.inner.metrics.served_bytes.inc_by(bytes.len() as u64);
                return Some(Ok(bytes));
            }
            if self.pos < written {
                let len = (written - self.pos).min(CHUNK);
                return Some(self.read_file(len).await);
            }
            if spill_at.is_some_and(|at| self.pos >= at) {
                match self.spill.recv().await {
                    Some(chunk) => {
                        self.pos += chunk.len() as u64;
                        self.inner.metrics.served_bytes.inc_by(chunk.len() as u64);
                        return Some(Ok(chunk));
                    }
                    None => {
                        // Channel closed: the producer finished one way or the other.
                        let status = self.entry.lock().status.clone();
                        return self.end(status);
                    }
                }
            }
            match status {
                Status::Writing => {
                    if self.changed.changed().await.is_err() {
                        return self.end(Status::Failed(FailReason::Panicked));
                    }
                }
                other => return self.end(other),
            }
        }
    }

    fn end(&mut self, status: Status) -> Option<Result<Bytes, ReadError>> {
        self.finished = true;
        match status {
            Status::Done => None,
            Status::Failed(FailReason::Upstream(err)) => Some(Err(ReadError::Upstream(err))),
            Status::Failed(_) | Status::Writing => Some(Err(ReadError::Producer)),
        }
    }

    async fn read_file(&mut self, len: u64) -> Result<Bytes, ReadError> {
        let shared = self.entry.file.clone();
        let own = self.own.take();
        let pos = self.pos;
        let result = tokio::task::spawn_blocking(move || read_at(&shared, own, pos, len)).await;
        match result {
            Ok(Ok((own, bytes))) => {
                self.own = own;
                self.pos += bytes.len() as u64;
                self.inner.metrics.served_bytes.inc_by(bytes.len() as u64);
                Ok(bytes)
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

    /// The reader as a stream of chunks.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, ReadError>> + Send + 'static {
        futures_util::stream::unfold(self, |mut reader| async move {
            reader.next_chunk().await.map(|item| (item, reader))
        })
    }
}

/// Read `len` bytes at `pos`: through the reader's own file description when it can
/// have one, else with a positioned read on the shared one. Blocking.
fn read_at(
    shared: &std::fs::File,
    own: Option<std::fs::File>,
    pos: u64,
    len: u64,
) -> std::io::Result<(Option<std::fs::File>, Bytes)> {
    let own = match own {
        Some(file) => Some(file),
        None => std::fs::File::open(format!("/proc/self/fd/{}", shared.as_raw_fd())).ok(),
    };
    match own {
        Some(mut file) => {
            file.seek(SeekFrom::Start(pos))?;
            let mut buf = Vec::with_capacity(len as usize);
            (&mut file).take(len).read_to_end(&mut buf)?;
            if buf.len() as u64 != len {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "entry file shorter than written",
                ));
            }
            Ok((Some(file), Bytes::from(buf)))
        }
        None => {
            let mut buf = vec![0u8; len as usize];
            shared.read_exact_at(&mut buf, pos)?;
            Ok((None, Bytes::from(buf)))
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.inner.release(&self.entry, self.id);
    }
}
