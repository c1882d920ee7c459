//! Flights: fetches below `min_occurrences`, which write nothing to disk unless someone
//! joins them.
//!
//! A flight streams its upstream to the one request that started it, through a bounded
//! channel (so that request's client sets the pace, as without a cache), and keeps what
//! it has streamed in memory: at most [`FLIGHT_BYTES`] per flight, and at most
//! [`FLIGHTS_BUDGET`] over all live flights. An identical request that arrives while it
//! is in flight joins it, and the flight *lands*: it creates a regular entry, writes
//! what it kept, and goes on as that entry's producer. The joiners read the entry from
//! its start; the first request drains what its channel still holds, then follows the
//! entry from where it was (the entry holds the same bytes, so its stream stays whole).
//! A flight that has outgrown its memory can no longer be joined; its request is served
//! to the end as if uncached.
//!
//! A flight that ends with every byte still in memory leaves them among the *recent*
//! flights (bounded by [`recent::RECENT_BYTES`], for `max_age`), so the key's next occurrence,
//! which creates an entry, fills it from memory instead of a second generation.
//!
//! The flight task is detached from the request that started it, like a producer (I6):
//! it stops when its request has gone and nobody joined.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, Notify};

mod kept;
mod recent;

use crate::entry::{Entry, Follower, Writer};
use crate::index::{Index, Insert};
use crate::key::CacheKey;
use crate::metrics::CacheMetrics;
use crate::producer::Producer;
use crate::upstream::{ByteStream, Upstream, UpstreamError};
use kept::Kept;
use recent::Recent;
pub(crate) use recent::Recorded;

/// Most bytes one flight keeps in memory; past this it can no longer be joined.
pub(crate) const FLIGHT_BYTES: u64 = 32 << 20;

/// Most bytes all live flights keep in memory together.
pub(crate) const FLIGHTS_BUDGET: u64 = 64 << 20;

/// Chunks queued towards a flight's own request.
const CHANNEL_CHUNKS: usize = 8;

/// A new entry for a landing flight, made by the cache (budget, file, index): the
/// entry, its writer and the first follower, or `None` when no entry can be made now.
pub(crate) type MakeEntry = Box<
    dyn FnOnce() -> Pin<Box<dyn Future<Output = Option<(Arc<Entry>, Writer, Follower)>> + Send>>
        + Send,
>;

/// How a flight ends for the request that started it.
pub(crate) enum FlightEnd {
    /// Every byte went through the channel.
    Done,
    /// The upstream failed.
    Failed(UpstreamError),
    /// The flight landed: after the channel, read this entry from the same position.
    Follow(Arc<Entry>, Follower),
}

/// The request's side of its flight.
pub(crate) struct FlightReceiver {
    pub(crate) data: mpsc::Receiver<Bytes>,
    pub(crate) end: oneshot::Receiver<FlightEnd>,
}

/// What a joiner gets: the entry to read from the start, or `None` (the flight could
/// not take it; go on without it).
pub(crate) type Joined = Option<(Arc<Entry>, Follower)>;

/// A joiner's wait for [`Joined`].
pub(crate) type JoinAnswer = oneshot::Receiver<Joined>;

/// What [`Flights::start`] did.
pub(crate) enum Started {
    /// A flight; read it.
    Flight(FlightReceiver),
    /// An entry for the key appeared meanwhile: read it instead.
    Entry(Arc<Entry>, Follower),
    /// Another flight for the key started a moment ago and could not be joined.
    Busy,
}

/// Live and recent flights.
pub(crate) struct Flights {
    live: Mutex<HashMap<CacheKey, Arc<Flight>>>,
    /// Bytes kept by live flights, against [`FLIGHTS_BUDGET`].
    kept: Arc<AtomicU64>,
    recent: Recent,
}

/// One live flight, as joiners see it.
struct Flight {
    joins: Mutex<Joins>,
    notify: Notify,
}

struct Joins {
    /// False once the flight outgrew its memory, landed or ended.
    joinable: bool,
    waiting: Vec<oneshot::Sender<Joined>>,
}

impl Flight {
    fn lock(&self) -> MutexGuard<'_, Joins> {
        self.joins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Close to joiners; those waiting are returned.
    fn close(&self) -> Vec<oneshot::Sender<Joined>> {
        let mut joins = self.lock();
        joins.joinable = false;
        std::mem::take(&mut joins.waiting)
    }

    fn has_waiting(&self) -> bool {
        !self.lock().waiting.is_empty()
    }
}

impl Flights {
    /// Recent flights are kept for `max_age`.
    pub(crate) fn new(max_age: Duration) -> Self {
        Self {
            live: Mutex::new(HashMap::new()),
            kept: Arc::new(AtomicU64::new(0)),
            recent: Recent::new(max_age),
        }
    }

    /// Join the live flight for `key`, if it can still be joined.
    pub(crate) fn join(&self, key: &CacheKey) -> Option<JoinAnswer> {
        let live = self.lock();
        let flight = live.get(key)?;
        let mut joins = flight.lock();
        if !joins.joinable {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        joins.waiting.push(tx);
        drop(joins);
        flight.notify.notify_one();
        Some(rx)
    }

    /// Take the recent flight of `key`, if it is still kept.
    pub(crate) fn take_recent(&self, key: &CacheKey) -> Option<Arc<Recorded>> {
        self.recent.take(key)
    }

    /// The recent flight of `key`, if it is still kept (and it stays kept).
    pub(crate) fn recent(&self, key: &CacheKey) -> Option<Arc<Recorded>> {
        self.recent.get(key)
    }

    /// Start a flight for `key` unless one is live (then `None`: join it instead).
    pub(crate) fn start(
        self: &Arc<Self>,
        key: CacheKey,
        upstream: Upstream,
        make_entry: MakeEntry,
        producer: Producer,
        metrics: CacheMetrics,
        index: &Index,
    ) -> Started {
        let flight = Arc::new(Flight {
            joins: Mutex::new(Joins {
                joinable: true,
                waiting: Vec::new(),
            }),
            notify: Notify::new(),
        });
        {
            // Under the flights lock, which entry creation also takes (see
            // `insert_unless_flying`): a key never has a flight and a new entry at once.
            let mut live = self.lock();
            if let Some((entry, follower)) = index.join(&key) {
                return Started::Entry(entry, follower);
            }
            if live.contains_key(&key) {
                return Started::Busy;
            }
            live.insert(key, flight.clone());
        }
        let (data_tx, data) = mpsc::channel(CHANNEL_CHUNKS);
        let (end_tx, end) = oneshot::channel();
        let task = FlightTask {
            key,
            flight,
            flights: self.clone(),
            data: data_tx,
            end: end_tx,
            kept: Kept::new(self.kept.clone()),
            generates: producer.generates,
            metrics,
        };
        // I6: its own task, not part of the request that started it.
        tokio::spawn(task.run(upstream, make_entry, producer));
        Started::Flight(FlightReceiver { data, end })
    }

    /// Put `entry` in `index` unless a joinable flight for its key is live: then join
    /// that flight instead (`Err`). Under the flights lock, so that a flight and a new
    /// entry for one key never both call upstream.
    pub(crate) fn insert_unless_flying(
        &self,
        index: &Index,
        entry: Arc<Entry>,
    ) -> Result<Insert, JoinAnswer> {
        let live = self.lock();
        if let Some(flight) = live.get(&entry.key()) {
            let mut joins = flight.lock();
            if joins.joinable {
                let (tx, rx) = oneshot::channel();
                joins.waiting.push(tx);
                drop(joins);
                flight.notify.notify_one();
                return Err(rx);
            }
        }
        Ok(index.insert(entry))
    }

    fn remove(&self, key: &CacheKey, flight: &Arc<Flight>) {
        let mut live = self.lock();
        if live.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            live.remove(key);
        }
    }

    /// Remove the flight if nobody waits to join it; whether it was removed.
    fn remove_if_unjoined(&self, key: &CacheKey, flight: &Arc<Flight>) -> bool {
        let mut live = self.lock();
        let mut joins = flight.lock();
        if !joins.waiting.is_empty() {
            return false;
        }
        joins.joinable = false;
        drop(joins);
        if live.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            live.remove(key);
        }
        true
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<CacheKey, Arc<Flight>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct FlightTask {
    key: CacheKey,
    flight: Arc<Flight>,
    flights: Arc<Flights>,
    data: mpsc::Sender<Bytes>,
    end: oneshot::Sender<FlightEnd>,
    kept: Kept,
    /// Whether the upstream makes new bytes (false when replaying a recent flight).
    generates: bool,
    metrics: CacheMetrics,
}

/// What the flight loop ended with.
enum Outcome {
    /// The stream ended or failed; tell the request.
    End(FlightEnd),
    /// The request left and nobody joined.
    Abandoned,
    /// Someone joined: land in an entry with the rest of the stream. `pending` is a
    /// chunk already kept (so in the entry) but not yet sent to the request.
    Land {
        rest: ByteStream,
        pending: Option<Bytes>,
    },
}

impl FlightTask {
    async fn run(mut self, upstream: Upstream, make_entry: MakeEntry, producer: Producer) {
        let outcome = match upstream.await {
            Ok(stream) => self.stream(stream).await,
            Err(err) => Outcome::End(FlightEnd::Failed(err)),
        };
        match outcome {
            Outcome::End(end) => {
                // Kept before the flight leaves the live set, so no identical request
                // finds neither.
                if matches!(end, FlightEnd::Done) && self.kept.whole {
                    self.flights.recent.keep(self.key, self.kept.take());
                }
                for joiner in self.flight.close() {
                    let _ = joiner.send(None);
                }
                self.flights.remove(&self.key, &self.flight);
                let _ = self.end.send(end);
            }
            Outcome::Abandoned => {}
            Outcome::Land { rest, pending } => self.land(rest, pending, make_entry, producer).await,
        }
    }

    /// Forward the stream to the request until it ends, fails, or someone joins.
    async fn stream(&mut self, mut stream: ByteStream) -> Outcome {
        loop {
            if self.kept.whole && self.flight.has_waiting() {
                return Outcome::Land {
                    rest: stream,
                    pending: None,
                };
            }
            let next = tokio::select! {
                biased;
                () = self.flight.notify.notified() => continue,
                next = stream.next() => next,
            };
            let chunk = match next {
                None => return Outcome::End(FlightEnd::Done),
                Some(Err(err)) => return Outcome::End(FlightEnd::Failed(err)),
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => chunk,
            };
            if self.generates {
                self.metrics.generated_bytes.inc_by(chunk.len() as u64);
            }
            if !self.kept.keep(&chunk) {
                // Too big to keep: nobody can join from here on.
                for joiner in self.flight.close() {
                    let _ = joiner.send(None);
                }
            }
            // Kept first, so a landing while the request is slow still has this chunk
            // (the request will read it from the entry).
            let sent = tokio::select! {
                biased;
                () = self.flight.notify.notified(), if self.kept.whole => {
                    if self.flight.has_waiting() {
                        return Outcome::Land {
                            rest: stream,
                            pending: Some(chunk),
                        };
                    }
                    self.data.send(chunk).await
                }
                sent = self.data.send(chunk.clone()) => sent,
            };
            if sent.is_err() && self.flights.remove_if_unjoined(&self.key, &self.flight) {
                return Outcome::Abandoned;
            }
        }
    }

    /// Make an entry of what was kept and go on as its producer; the joiners read it
    /// from the start and the request follows it. Without an entry (no room), the
    /// joiners go their own way and the request is served on as before.
    async fn land(
        mut self,
        rest: ByteStream,
        pending: Option<Bytes>,
        make_entry: MakeEntry,
        producer: Producer,
    ) {
        // Still joinable while the entry is made: whoever comes meanwhile waits for it
        // too, instead of making an entry (and a generation) of its own.
        let made = make_entry().await;
        let mut joiners = self.flight.close();
        let Some((entry, writer, first)) = made else {
            for joiner in joiners {
                let _ = joiner.send(None);
            }
            self.kept.release();
            self.flights.remove(&self.key, &self.flight);
            return self.finish_alone(pending, rest).await;
        };
        let kept = self.kept.take();
        // One write for everything held, then published chunk by chunk.
        if let Err(err) = producer.write(&writer, kept.chunks.clone(), 0).await {
            tracing::warn!(key = %self.key, error = %err, "pack cache write failed while landing a flight; serving it uncached");
            for joiner in joiners {
                let _ = joiner.send(None);
            }
            producer.abandon(writer, "write_error");
            self.flights.remove(&self.key, &self.flight);
            // The request still needs the rest; it has not seen the entry.
            return self.finish_alone(pending, rest).await;
        }
        let mut offset = 0u64;
        for chunk in kept.chunks {
            let len = chunk.len() as u64;
            writer.wrote(offset, chunk, true);
            offset += len;
        }
        // The entry is in the index now, so nobody can miss both it and the flight.
        joiners.extend(self.flight.close());
        for joiner in joiners {
            let _ = joiner.send(Some((entry.clone(), entry.attach())));
        }
        // The request drains its channel, then follows the entry (it holds the same
        // bytes). Dropping the sender closes the channel after what is queued.
        let _ = self.end.send(FlightEnd::Follow(entry, first));
        drop(self.data);
        self.flights.remove(&self.key, &self.flight);
        producer.drain(writer, rest, offset).await;
    }

    /// Forward `pending` and the rest of the stream to the request alone, as an uncached
    /// fetch.
    async fn finish_alone(self, pending: Option<Bytes>, mut rest: ByteStream) {
        if let Some(chunk) = pending {
            if self.data.send(chunk).await.is_err() {
                return;
            }
        }
        let end = loop {
            match rest.next().await {
                None => break FlightEnd::Done,
                Some(Err(err)) => break FlightEnd::Failed(err),
                Some(Ok(chunk)) => {
                    if self.generates {
                        self.metrics.generated_bytes.inc_by(chunk.len() as u64);
                    }
                    if self.data.send(chunk).await.is_err() {
                        return;
                    }
                }
            }
        };
        let _ = self.end.send(end);
    }
}
