//! A disk-backed streaming cache: one producer writes a byte stream once, any number of
//! readers stream it, each at its own pace, starting before the producer has finished.
//!
//! gitgate uses it for upload-pack responses, so that 50 identical clones cost one pack
//! generation, but this crate knows nothing of git or HTTP: a key is an opaque
//! [`CacheKey`], a producer is a future that yields a byte stream.
//!
//! # Parts
//!
//! - **index** ([`cache`]): key → live [`entry`], in memory, under one lock that is never
//!   held across an `.await`;
//! - **file store** ([`store`]): one fresh file per entry, in a directory private to this
//!   process life; leftovers of earlier lives are removed at start;
//! - **entry** ([`entry`]): the file, the published write offset, the terminal state
//!   (`Writing`, `Done`, `Failed`) and a change notification, plus the reader count;
//! - **producer** ([`producer`]): a task that drains the upstream stream into the file and
//!   publishes each offset;
//! - **reader** ([`reader`]): a stream over the file that follows the published offset;
//! - **admission** ([`admission`]): `min_occurrences`, counting keys over `max_age`;
//! - **bypass**: [`Fetch::Bypass`] tells the caller to stream straight from upstream.
//!
//! ```text
//!                 ┌────────── entry file (unique name, never reused) ──────────┐
//!   upstream ──▶ producer ──write──▶ [##########################.........]   │
//!                   │ publish offset (watch)        ▲        ▲         ▲     │
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

pub mod admission;
pub mod cache;
pub mod config;
pub mod entry;
pub mod key;
pub mod metrics;
pub mod producer;
pub mod reader;
pub mod store;

pub use cache::{BypassReason, Fetch, PackCache};
pub use config::CacheConfig;
pub use entry::UpstreamError;
pub use key::{CacheKey, KeyBuilder};
pub use metrics::CacheMetrics;
pub use reader::{ReadError, Reader};

use std::pin::Pin;

/// The byte stream a producer forwards.
pub type ByteStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, UpstreamError>> + Send>>;

/// The future that starts a producer's upstream.
pub type Upstream =
    Pin<Box<dyn std::future::Future<Output = Result<ByteStream, UpstreamError>> + Send>>;

#[cfg(test)]
mod tests;
