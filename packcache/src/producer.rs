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
const WAKE_BYTES: u64 = 256 * 1024;

/// And at most this long after a byte was published.
const WAKE_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

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
                _ => "failed",
            };
            // I3: out of the index before any reader wakes up to the failure.
            self.index.remove(writer.entry(), label);
        }
        writer.finish(result);
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
        // Bytes published without waking the readers, and when they must be woken.
        let mut quiet = 0u64;
        let mut wake_by = tokio::time::Instant::now();
        loop {
            let next = tokio::select! {
                biased;
                () = writer.readers_gone() => {
                    self.stop_if_unread(writer)?;
                    continue;
                }
                () = tokio::time::sleep_until(wake_by), if quiet > 0 => {
                    writer.wake();
                    quiet = 0;
                    continue;
                }
                next = stream.next() => next,
            };
            let chunk = match next {
                None => return Ok(()),
                Some(Err(err)) => return Err(FailReason::Upstream(err)),
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => chunk,
            };
            let len = chunk.len() as u64;
            if self.generates {
                self.metrics.generated_bytes.inc_by(len);
            }
            if !spilling {
                // (`chunk` is reference-counted: the clone shares its bytes.)
                match self.write(writer, chunk.clone(), offset).await {
                    Ok(()) => {
                        // Readers are woken for the first bytes, then once per
                        // WAKE_BYTES, and at most WAKE_DELAY after anything published:
                        // one wake-up per upstream chunk per reader would cost more than
                        // the bytes.
                        if quiet == 0 {
                            wake_by = tokio::time::Instant::now() + WAKE_DELAY;
                        }
                        quiet += len;
                        let wake = offset == 0 || quiet >= WAKE_BYTES;
                        writer.wrote(offset, chunk, wake);
                        if wake {
                            quiet = 0;
                        }
                        offset += len;
                        continue;
                    }
                    Err(err) => {
                        tracing::warn!(key = %writer.entry().key(), offset, error = %err, "pack cache write failed; serving attached readers from memory");
                        self.metrics.lookups.with_label_values(&["error"]).inc();
                        // I7: nobody joins any more, and the readers already attached
                        // get the rest through their channels.
                        writer.start_spilling();
                        self.index.remove(writer.entry(), "write_error");
                        spilling = true;
                    }
                }
            }
            if !spill(writer, chunk).await {
                return Err(FailReason::Abandoned);
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

    /// Write `chunk` at `offset` of the entry's file (not yet published).
    pub(crate) async fn write(&self, writer: &Writer, chunk: Bytes, offset: u64) -> io::Result<()> {
        let store = self.store.clone();
        let file = writer.entry().file().clone();
        tokio::task::spawn_blocking(move || store.write_at(&file, &chunk, offset))
            .await
            .map_err(io::Error::other)?
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
