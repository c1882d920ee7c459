//! The producer task: drains the upstream stream into the entry's file.
//!
//! It is spawned detached from the request that created the entry (I6) and runs until
//! the upstream ends, fails, or every reader has gone. A panic inside it fails the entry
//! like any other error, since no request middleware protects it.

use std::os::unix::fs::FileExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};

use crate::cache::Inner;
use crate::entry::{Entry, FailReason, Status};
use crate::Upstream;

enum Outcome {
    Done,
    Failed(FailReason),
}

/// Run the producer for `entry` to its end.
pub(crate) async fn run(inner: Arc<Inner>, entry: Arc<Entry>, upstream: Upstream) {
    let outcome = match AssertUnwindSafe(drive(&inner, &entry, upstream))
        .catch_unwind()
        .await
    {
        Ok(outcome) => outcome,
        Err(_) => {
            tracing::error!(key = %entry.key, "pack cache producer panicked");
            Outcome::Failed(FailReason::Panicked)
        }
    };
    match outcome {
        Outcome::Done => {
            let mut state = entry.lock();
            state.status = Status::Done;
            // Spill readers see their channel close, then the Done status.
            state.spill.clear();
            drop(state);
            entry.notify();
        }
        Outcome::Failed(reason) => {
            let label = match reason {
                FailReason::Abandoned => "abandoned",
                _ => "failed",
            };
            // I3: out of the index before any reader wakes up to the failure.
            inner.remove(&entry, label);
            let mut state = entry.lock();
            state.status = Status::Failed(reason);
            state.spill.clear();
            drop(state);
            entry.notify();
        }
    }
}

async fn drive(inner: &Arc<Inner>, entry: &Arc<Entry>, upstream: Upstream) -> Outcome {
    let mut stream = tokio::select! {
        started = upstream => match started {
            Ok(stream) => stream,
            Err(err) => return Outcome::Failed(FailReason::Upstream(err)),
        },
        () = entry.abandoned.notified() => return Outcome::Failed(FailReason::Abandoned),
    };
    let mut offset = 0u64;
    loop {
        let next = tokio::select! {
            biased;
            () = entry.abandoned.notified() => return Outcome::Failed(FailReason::Abandoned),
            next = stream.next() => next,
        };
        let chunk = match next {
            None => return Outcome::Done,
            Some(Err(err)) => return Outcome::Failed(FailReason::Upstream(err)),
            Some(Ok(chunk)) if chunk.is_empty() => continue,
            Some(Ok(chunk)) => chunk,
        };
        let len = chunk.len() as u64;
        inner.metrics.generated_bytes.inc_by(len);
        let spilling = entry.lock().spill_at.is_some();
        if !spilling {
            match write_at(inner, entry, chunk.clone(), offset).await {
                // (`chunk` is reference-counted: the clone shares its bytes.)
                Ok(()) => {
                    let mut state = entry.lock();
                    state.push_tail(offset, chunk);
                    offset += len;
                    state.written = offset;
                    if state.in_index {
                        inner.add_usage(len);
                    }
                    drop(state);
                    entry.notify();
                    continue;
                }
                Err(err) => {
                    tracing::warn!(key = %entry.key, offset, error = %err, "pack cache write failed; serving attached readers from memory");
                    inner.metrics.lookups.with_label_values(&["error"]).inc();
                    entry.lock().spill_at = Some(offset);
                    inner.remove(entry, "write_error");
                    entry.notify();
                }
            }
        }
        if !spill(entry, chunk).await {
            return Outcome::Failed(FailReason::Abandoned);
        }
    }
}

async fn write_at(inner: &Inner, entry: &Entry, chunk: Bytes, offset: u64) -> std::io::Result<()> {
    if let Some(limit) = inner.fault_write_limit() {
        if offset + chunk.len() as u64 > limit {
            return Err(std::io::Error::other("injected write failure"));
        }
    }
    let file = entry.file.clone();
    tokio::task::spawn_blocking(move || file.write_all_at(&chunk, offset))
        .await
        .map_err(std::io::Error::other)?
}

/// Hand `chunk` to every attached reader's channel; false when none is left.
async fn spill(entry: &Entry, chunk: Bytes) -> bool {
    let senders = entry.lock().spill.clone();
    let mut gone = Vec::new();
    for (id, tx) in &senders {
        if tx.send(chunk.clone()).await.is_err() {
            gone.push(*id);
        }
    }
    let mut state = entry.lock();
    state.spill.retain(|(id, _)| !gone.contains(id));
    !state.spill.is_empty()
}
