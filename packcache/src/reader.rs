//! A reader: streams an entry's bytes from the start, following the growing file.
//!
//! It reads up to the published offset (I2) with positioned reads on the entry's open
//! file (so an unlinked file still reads: I5), then waits for the producer to publish
//! more or to finish. After a write error it continues from its in-memory channel (I7).
//! Dropping a reader detaches it; the last one to leave a still-writing entry stops the
//! producer.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{mpsc, watch};

use crate::cache::Inner;
use crate::entry::{Entry, FailReason, Status, UpstreamError};

/// Largest chunk a reader hands out at once.
const CHUNK: u64 = 256 * 1024;

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
            let (written, status, spill_at) = {
                let state = self.entry.lock();
                (state.written, state.status.clone(), state.spill_at)
            };
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
        let file = self.entry.file.clone();
        let pos = self.pos;
        let result = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
        })
        .await;
        match result {
            Ok(Ok(bytes)) => {
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

impl Drop for Reader {
    fn drop(&mut self) {
        self.inner.release(&self.entry, self.id);
    }
}
