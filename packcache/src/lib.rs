//! A disk-backed streaming cache: one producer writes a byte stream once, any number of
//! readers stream it, each at its own pace, starting before the producer has finished.
//!
//! gitgate uses it for upload-pack responses, so that 50 identical clones cost one pack
//! generation, but this crate knows nothing of git or HTTP: a key is an opaque
//! [`CacheKey`], a producer is a future that yields a byte stream.
//!
//! # Parts
//!
//! - **index** (`index.rs`): key → live entry, in memory, under one lock that is never
//!   held across an `.await`; removing an entry unlinks its file;
//! - **file store** (`store.rs`): one fresh file per entry, in a directory private to
//!   this process life; leftovers of earlier lives are removed at start. Behind the
//!   `EntryStore` trait, so tests inject failing writes, a full disk and removal
//!   notifications;
//! - **entry** (`entry.rs`): the file and one published state, `Progress` (bytes
//!   written and a `Phase`: `Writing`, `Spilling`, `Done`, `Failed`), in one
//!   `tokio::sync::watch` channel. Only the producer's `Writer` changes it, under the
//!   entry's one lock; readers only observe it, and their number is the channel's
//!   receiver count;
//! - **producer** (`producer.rs`): a task that drains the upstream stream into the file
//!   and publishes each offset;
//! - **reader** (`reader.rs`): a stream over the file that follows the published offset,
//!   as chunks of bytes or as file regions for callers that send them with `sendfile(2)`;
//!   it copies bytes out of the file with `entry_read.rs` (page-cache reads on the
//!   runtime's threads, blocking reads on the pool);
//! - **admission** (`admission.rs`): `min_occurrences`, counting keys over `max_age`;
//! - **flight** (`flight/`, its memory in `flight/kept.rs`): a fetch below
//!   `min_occurrences`, streamed to its request through memory; it lands in an entry when an identical request joins it, and a
//!   finished one's bytes are kept (bounded) for the key's next occurrence;
//! - **cache** (`cache.rs`): [`PackCache`], which wires these together, owns the
//!   settings and the disk budget, and decides when to evict;
//! - **bypass**: [`Fetch::Bypass`] tells the caller to stream straight from upstream.
//!
//! Modules depend one way: `cache` on all the others, `producer` on `index` and
//! `entry`, `index` and `reader` on `entry`, `reader` also on `entry_read`, and `entry`
//! and `entry_read` on none of them. Time is tokio time (`max_age`, admission windows),
//! so tests pause and advance it instead of sleeping.
//!
//! ```text
//!                 ┌────────── entry file (unique name, never reused) ──────────┐
//!   upstream ──▶ producer ──write──▶ [##########################.........]   │
//!                   │ publish Progress (watch)      ▲        ▲         ▲     │
//!                   └──────────────────────────── reader  reader    reader  ┘
//! ```
//!
//! # Invariants
//!
//! - **I1** one producer per live key: entries are created and joined under the index
//!   lock.
//! - **I2** a reader never reads past the published write offset.
//! - **I3** a failed producer fails every reader, and the entry is removed from the index
//!   before anyone is woken, so nobody can join a failed entry.
//! - **I4** file names are unique to this process life and never reused.
//! - **I5** eviction removes the entry and unlinks its file; readers that hold it finish.
//! - **I6** the producer does not depend on the request that started it: it runs until
//!   the stream ends or every reader has gone.
//! - **I7** a cache fault never fails a fetch the bypass could serve: a full disk or a
//!   failed file creation before the entry exists is a bypass; a write error mid-stream
//!   removes the entry and hands the rest of the stream to the readers already attached
//!   through bounded in-memory channels (the slowest of them sets the pace).
#![deny(missing_docs)]

mod admission;
mod cache;
mod config;
mod entry;
mod entry_read;
mod flight;
mod index;
mod key;
mod metrics;
mod producer;
mod reader;
pub mod store;
mod upstream;

pub use cache::{BypassReason, EvictorHandle, Fetch, PackCache};
pub use config::CacheConfig;
pub use key::{CacheKey, KeyBuilder};
pub use metrics::CacheMetrics;
pub use reader::{FileRegion, ReadError, Reader, Region};
pub use upstream::{ByteStream, Upstream, UpstreamError};

#[cfg(test)]
mod tests;
