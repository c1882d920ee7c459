//! The producer task: drains the upstream stream into the entry's file and publishes
//! each offset through the entry's [`Writer`].
//!
//! It is spawned detached from the request that created the entry (I6) and runs until
//! the upstream ends, fails, or every reader has gone. A panic inside it fails the entry
//! like any other error, since no request middleware protects it. A failure removes the
//! entry from the index before the readers learn of it (I3); a write error mid-stream
//! removes it too, and hands the rest of the stream to the attached readers (I7). The
//! producer decides nothing about admission or eviction.

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};

use crate::entry::{FailReason, Writer};
use crate::index::Index;
use crate::metrics::CacheMetrics;
use crate::store::EntryStore;
use crate::{ByteStream, Upstream};

/// Readers are woken at least once per this many published bytes.
const WAKE_BYTES: u64 = 1024 * 1024;

/// And at most this long after a byte was published.
const WAKE_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// Upstream bytes read ahead of the file: past this, the producer waits for the write in
/// progress before it reads on.
const MAX_PENDING: u64 = 1 << 20;

/// Writes end on multiples of this many bytes of the file where they can (the rest
/// waits for the next write), so the page cache holds the entry in folios of this size
/// rather than one small folio per unaligned upstream chunk. Every later `sendfile` and
/// every client's copy of the entry walks those folios: on a 32-way hit fan-out, an
/// entry written in unaligned pipe-sized chunks costs the machine about a tenth more
/// than one written in aligned 256 KiB pieces.
const ALIGN: u64 = 256 * 1024;

/// The longest bytes wait in memory for an aligned write: a slow upstream's bytes (git's
/// progress while it counts objects) still reach the file, and the readers, promptly.
const ALIGN_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// What a producer needs besides its entry.
#[derive(Clone)]
pub(crate) struct Producer {
    pub(crate) index: Arc<Index>,
    pub(crate) store: Arc<dyn EntryStore>,
    pub(crate) metrics: CacheMetrics,
    /// Whether its bytes are new output of the upstream (`generated_bytes`); false when
    /// it replays a finished flight's bytes.
    pub(crate) generates: bool,
}

impl Producer {
    /// Run the producer for `writer`'s entry on its own task.
    pub(crate) fn spawn(self, writer: Writer, upstream: Upstream) {
        // I6: its own task, not part of the request that started it.
        tokio::spawn(self.run(writer, upstream));
    }

    async fn run(self, writer: Writer, upstream: Upstream) {
        let result = AssertUnwindSafe(self.drive(&writer, upstream))
            .catch_unwind()
            .await;
        self.finish(writer, result);
    }

    /// Go on with `stream` from `offset` for `writer`'s entry, whose first `offset`
    /// bytes are written and published (a flight that landed, see `flight/`).
    pub(crate) async fn drain(self, writer: Writer, stream: ByteStream, offset: u64) {
        let result = AssertUnwindSafe(self.forward(&writer, stream, offset))
            .catch_unwind()
            .await;
        self.finish(writer, result);
    }

    /// Give up on an entry nobody reads yet: out of the index, and failed.
    pub(crate) fn abandon(&self, writer: Writer, reason: &'static str) {
        self.index.remove(writer.entry(), reason);
        writer.finish(Err(FailReason::Abandoned));
    }

    fn finish(
        &self,
        writer: Writer,
        result: Result<Result<(), FailReason>, Box<dyn std::any::Any + Send>>,
    ) {
        let result = match result {
            Ok(result) => result,
            Err(_) => {
                tracing::error!(key = %writer.entry().key(), "pack cache producer panicked");
                Err(FailReason::Panicked)
            }
        };
        if let Err(reason) = &result {
            let label = match reason {
                FailReason::Abandoned => "abandoned",
                FailReason::Damaged => "damaged",
                _ => "failed",
            };
            // I3: out of the index before any reader wakes up to the failure.
            self.index.remove(writer.entry(), label);
        }
        let done = result.is_ok();
        writer.finish(result);
        if done {
            // Complete now, so it can be evicted itself if it alone is over the budget.
            self.index.enforce_budget();
        }
    }

    async fn drive(&self, writer: &Writer, mut upstream: Upstream) -> Result<(), FailReason> {
        let stream = loop {
            tokio::select! {
                started = &mut upstream => break started.map_err(FailReason::Upstream)?,
                () = writer.readers_gone() => self.stop_if_unread(writer)?,
            }
        };
        self.forward(writer, stream, 0).await
    }

    async fn forward(
        &self,
        writer: &Writer,
        mut stream: ByteStream,
        mut offset: u64,
    ) -> Result<(), FailReason> {
        let mut spilling = false;
        let mut ended = false;
        // Bytes published without waking the readers, and when they must be woken.
        let mut quiet = 0u64;
        let mut wake_by = tokio::time::Instant::now();
        // Chunks read and not yet written; the batch being written meanwhile.
        let mut pending = Batch::default();
        let mut writing: Option<(Batch, tokio::task::JoinHandle<io::Result<()>>)> = None;
        // When what is pending is written even if it ends off ALIGN.
        let mut flush_by = tokio::time::Instant::now();
        loop {
            if writing.is_none() && !pending.is_empty() && !spilling {
                // One write per batch: chunks that arrive while a write runs go in the
                // next, so a fast upstream costs few hand-offs to the blocking pool. It
                // ends on an ALIGN boundary unless the stream ended, this is the first
                // write (the first bytes go out at once), or bytes waited ALIGN_WAIT.
                let due = ended || offset == 0 || tokio::time::Instant::now() >= flush_by;
                let end = offset + pending.len;
                let len = if due {
                    pending.len
                } else {
                    (end - end % ALIGN).saturating_sub(offset)
                };
                if len > 0 {
                    // What stays behind keeps `flush_by`: it was set when the oldest
                    // pending byte arrived.
                    let batch = pending.take_front(len);
                    let handle = self.spawn_write(writer, batch.chunks.clone(), offset);
                    writing = Some((batch, handle));
                }
            }
            if ended && writing.is_none() && pending.is_empty() {
                if !spilling {
                    self.check_whole(writer, offset).await?;
                }
                return Ok(());
            }
            tokio::select! {
                biased;
                () = writer.readers_gone() => self.stop_if_unread(writer)?,
                () = tokio::time::sleep_until(wake_by), if quiet > 0 => {
                    writer.wake();
                    quiet = 0;
                }
                // Pending bytes waited long enough for alignment: the loop writes them.
                () = tokio::time::sleep_until(flush_by), if writing.is_none() && !pending.is_empty() && !spilling => {}
                done = async { (&mut writing.as_mut()?.1).await.ok() }, if writing.is_some() => {
                    let Some((batch, _)) = writing.take() else { continue };
                    match done.unwrap_or_else(|| Err(io::Error::other("pack cache write task failed"))) {
                        Ok(()) => {
                            // Readers are woken for the first bytes, then once per
                            // WAKE_BYTES, and at most WAKE_DELAY after anything
                            // published: one wake-up per upstream chunk per reader would
                            // cost more than the bytes.
                            if quiet == 0 {
                                wake_by = tokio::time::Instant::now() + WAKE_DELAY;
                            }
                            let first = offset == 0;
                            quiet += batch.len;
                            let wake = first || quiet >= WAKE_BYTES;
                            let last = batch.chunks.len().saturating_sub(1);
                            for (i, chunk) in batch.chunks.into_iter().enumerate() {
                                let len = chunk.len() as u64;
                                writer.wrote(offset, chunk, wake && i == last);
                                offset += len;
                            }
                            if wake {
                                quiet = 0;
                            }
                            // The entry grew: older complete entries make room (the
                            // budget holds while entries are written, not only when
                            // they are made).
                            self.index.enforce_budget();
                        }
                        Err(err) if is_cut_short(&err) => {
                            tracing::warn!(key = %writer.entry().key(), path = %writer.entry().path().display(), offset, "pack cache entry file was cut short while being written; failing it");
                            return Err(FailReason::Damaged);
                        }
                        Err(err) => {
                            tracing::warn!(key = %writer.entry().key(), offset, error = %err, "pack cache write failed; serving attached readers from memory");
                            self.metrics.lookups.with_label_values(&["error"]).inc();
                            // I7: nobody joins any more, and the readers already attached
                            // get the rest through their channels, from the first byte
                            // not published.
                            writer.start_spilling();
                            self.index.remove(writer.entry(), "write_error");
                            spilling = true;
                            let unwritten = batch.chunks.into_iter().chain(std::mem::take(&mut pending).chunks);
                            for chunk in unwritten {
                                if !spill(writer, chunk).await {
                                    return Err(FailReason::Abandoned);
                                }
                            }
                        }
                    }
                }
                next = stream.next(), if !ended && pending.len < MAX_PENDING => {
                    let chunk = match next {
                        None => {
                            ended = true;
                            continue;
                        }
                        Some(Err(err)) => return Err(FailReason::Upstream(err)),
                        Some(Ok(chunk)) if chunk.is_empty() => continue,
                        Some(Ok(chunk)) => chunk,
                    };
                    if self.generates {
                        self.metrics.generated_bytes.inc_by(chunk.len() as u64);
                    }
                    if spilling {
                        if !spill(writer, chunk).await {
                            return Err(FailReason::Abandoned);
                        }
                    } else {
                        if pending.is_empty() {
                            flush_by = tokio::time::Instant::now() + ALIGN_WAIT;
                        }
                        pending.push(chunk);
                    }
                }
            }
        }
    }

    /// Before publishing the end: the file must still be as long as what was written
    /// (each write checks the length before it; this covers a truncation after the
    /// last). An entry cut short under the cache fails, so no reader ends it cleanly.
    /// A truncation between a write's check and the write itself is not seen here:
    /// the write extends the file again over zeros.
    async fn check_whole(&self, writer: &Writer, written: u64) -> Result<(), FailReason> {
        let file = writer.entry().file().clone();
        let whole = tokio::task::spawn_blocking(move || crate::store::holds(&file, written)).await;
        match whole {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => {
                tracing::warn!(key = %writer.entry().key(), path = %writer.entry().path().display(), written, "pack cache entry file was cut short while being written; failing it");
                Err(FailReason::Damaged)
            }
            Ok(Err(err)) => {
                tracing::warn!(key = %writer.entry().key(), error = %err, "cannot check the length of a pack cache entry file; failing it");
                Err(FailReason::Damaged)
            }
            Err(err) => {
                tracing::warn!(key = %writer.entry().key(), error = %err, "the length check of a pack cache entry file did not run; failing it");
                Err(FailReason::Damaged)
            }
        }
    }

    /// The last reader left: stop, unless someone joined since (I6).
    fn stop_if_unread(&self, writer: &Writer) -> Result<(), FailReason> {
        if self.index.remove_if_unread(writer.entry()) {
            return Err(FailReason::Abandoned);
        }
        Ok(())
    }

    /// Write `chunks`, one after another from `offset`, to the entry's file (not yet
    /// published), on the blocking pool.
    pub(crate) async fn write(
        &self,
        writer: &Writer,
        chunks: Vec<Bytes>,
        offset: u64,
    ) -> io::Result<()> {
        self.spawn_write(writer, chunks, offset)
            .await
            .map_err(io::Error::other)?
    }

    fn spawn_write(
        &self,
        writer: &Writer,
        chunks: Vec<Bytes>,
        offset: u64,
    ) -> tokio::task::JoinHandle<io::Result<()>> {
        let store = self.store.clone();
        let file = writer.entry().file().clone();
        tokio::task::spawn_blocking(move || {
            // Writes are sequential, so the file holds exactly `offset` bytes; fewer
            // means something truncated it, and this write would leave a hole of zeros.
            if !crate::store::holds(&file, offset)? {
                return Err(io::Error::other(CutShort));
            }
            store.write_at(&file, &chunks, offset)
        })
    }
}

/// The entry file holds fewer bytes than were written to it: changed under the cache.
#[derive(Debug, thiserror::Error)]
#[error("pack cache entry file is shorter than what was written to it")]
struct CutShort;

fn is_cut_short(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|e| e.is::<CutShort>())
}

/// Chunks in arrival order and their total length.
#[derive(Default)]
struct Batch {
    chunks: Vec<Bytes>,
    len: u64,
}

impl Batch {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len() as u64;
        self.chunks.push(chunk);
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The first `len` bytes (at most all of them) as a batch of their own; a chunk
    /// across the cut is split, without copying.
    fn take_front(&mut self, len: u64) -> Batch {
        if len >= self.len {
            return std::mem::take(self);
        }
        let mut front = Batch::default();
        let mut rest = std::mem::take(&mut self.chunks).into_iter();
        while front.len < len {
            let Some(mut chunk) = rest.next() else { break };
            let want = (len - front.len) as usize;
            if chunk.len() > want {
                let head = chunk.split_to(want);
                front.push(head);
                self.chunks.push(chunk);
                break;
            }
            front.push(chunk);
        }
        self.chunks.extend(rest);
        self.len -= front.len;
        front
    }
}

/// Hand `chunk` to every attached reader's channel, at the pace of the slowest (I7);
/// false when none is left.
async fn spill(writer: &Writer, chunk: Bytes) -> bool {
    for tx in writer.spill_targets() {
        if tx.send(chunk.clone()).await.is_err() {
            // Forgotten below.
            tracing::debug!(key = %writer.entry().key(), "a reader served from memory left");
        }
    }
    writer.keep_open_spill_targets()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(parts: &[&'static [u8]]) -> Batch {
        let mut b = Batch::default();
        for p in parts {
            b.push(Bytes::from_static(p));
        }
        b
    }

    fn bytes(b: &Batch) -> Vec<u8> {
        b.chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn take_front_splits_the_chunk_across_the_cut_and_keeps_the_order() {
        let mut b = batch(&[b"abc", b"defg", b"hi"]);
        let front = b.take_front(5);
        assert_eq!(bytes(&front), b"abcde");
        assert_eq!(front.len, 5);
        assert_eq!(bytes(&b), b"fghi");
        assert_eq!(b.len, 4);
        let front = b.take_front(2);
        assert_eq!(bytes(&front), b"fg");
        assert_eq!(bytes(&b), b"hi");
        let all = b.take_front(10);
        assert_eq!(bytes(&all), b"hi");
        assert!(b.is_empty());
        assert_eq!(b.len, 0);
    }

    #[test]
    fn take_front_on_a_chunk_boundary_splits_nothing() {
        let mut b = batch(&[b"abc", b"def"]);
        let front = b.take_front(3);
        assert_eq!(front.chunks.len(), 1);
        assert_eq!(bytes(&b), b"def");
        assert_eq!(b.chunks.len(), 1);
    }
}
