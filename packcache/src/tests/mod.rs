//! Tests of the cache with synthetic producers, a real temporary directory, and a store
//! that injects faults. Nothing here sleeps: upstreams are fed chunk by chunk by the test,
//! time is paused where it matters, and file removal is announced by the test store.
//!
//! - `sharing`: joiners, admission, the disk budget, restarts;
//! - `faults`: one test per failure mode;
//! - `flights`: fetches below `min_occurrences`.

mod faults;
mod flights;
mod sharing;

use std::future::Future;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use prometheus::Registry;
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot, watch};

use crate::store::{EntryStore, FileStore, StoreError};
use crate::{
    ByteStream, CacheConfig, CacheKey, Fetch, KeyBuilder, PackCache, Upstream, UpstreamError,
};

fn key(name: &str) -> CacheKey {
    KeyBuilder::new(1).field(name.as_bytes()).finish()
}

fn config(dir: &TempDir) -> CacheConfig {
    CacheConfig {
        dir: dir.path().join("cache"),
        max_age: Duration::from_secs(300),
        // Every fetch makes an entry; `flights` tests the default of 1.
        min_occurrences: 0,
        max_bytes: 10 << 30,
        min_free_bytes: 0,
    }
}

/// Deterministic chunk `i` of a synthetic stream.
fn chunk(i: u64, size: usize) -> Bytes {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    Bytes::from(out)
}

fn expected_hash(chunks: u64, size: usize) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    for i in 0..chunks {
        h.update(&chunk(i, size));
    }
    h.finalize()
}

#[derive(Debug, thiserror::Error)]
#[error("synthetic upstream failure")]
struct Boom;

/// An upstream of `chunks` chunks of `size` bytes, all available at once.
fn fixed(chunks: u64, size: usize) -> Upstream {
    Box::pin(async move {
        let stream = futures_util::stream::iter((0..chunks).map(move |i| Ok(chunk(i, size))));
        Ok(Box::pin(stream) as ByteStream)
    })
}

/// The test's end of an upstream built by [`feed`]: each send is one item; dropping it
/// ends the stream cleanly.
struct Feed(mpsc::Sender<Result<Bytes, UpstreamError>>);

impl Feed {
    /// Send chunks `range` of `size` bytes.
    async fn chunks(&self, range: Range<u64>, size: usize) {
        for i in range {
            self.0
                .send(Ok(chunk(i, size)))
                .await
                .expect("the producer still reads its upstream");
        }
    }

    /// Fail the stream.
    async fn fail(&self) {
        self.0
            .send(Err(UpstreamError::new(Boom)))
            .await
            .expect("the producer still reads its upstream");
    }
}

/// Resolves once the producer has let go of a [`feed`] upstream (ended or stopped).
struct Released(oneshot::Receiver<()>);

impl Released {
    async fn wait(self) {
        // Never sent: the sender is dropped with the upstream.
        let _released = self.0.await;
    }
}

/// An upstream the test drives chunk by chunk.
fn feed() -> (Feed, Upstream, Released) {
    let (tx, rx) = mpsc::channel(4);
    let (held, released) = oneshot::channel::<()>();
    let upstream: Upstream = Box::pin(async move {
        let stream = futures_util::stream::unfold((rx, held), |(mut rx, held)| async move {
            rx.recv().await.map(|item| (item, (rx, held)))
        });
        Ok(Box::pin(stream) as ByteStream)
    });
    (Feed(tx), upstream, Released(released))
}

/// A [`FileStore`] that can fail writes, report little free space, and announces every
/// removal it makes.
#[derive(Debug)]
struct TestStore {
    real: FileStore,
    /// Writes ending past this offset fail with this kind of error.
    fail_writes_past: Option<(u64, io::ErrorKind)>,
    /// Reported free bytes; `u64::MAX` asks the real filesystem.
    free_bytes: AtomicU64,
    /// Files removed so far.
    removed: watch::Sender<usize>,
}

impl TestStore {
    /// Wait until at least `n` files have been removed.
    async fn removed(&self, n: usize) {
        self.removed
            .subscribe()
            .wait_for(|removed| *removed >= n)
            .await
            .expect("the store is alive");
    }

    fn set_free_bytes(&self, free: u64) {
        self.free_bytes.store(free, Ordering::SeqCst);
    }
}

impl EntryStore for TestStore {
    fn life_dir(&self) -> &Path {
        self.real.life_dir()
    }

    fn create(&self) -> Result<(std::fs::File, PathBuf), StoreError> {
        self.real.create()
    }

    fn write_at(&self, file: &std::fs::File, chunks: &[Bytes], offset: u64) -> io::Result<()> {
        let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        match self.fail_writes_past {
            Some((limit, kind)) if offset + len > limit => {
                Err(io::Error::new(kind, "injected write failure"))
            }
            _ => self.real.write_at(file, chunks, offset),
        }
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let result = self.real.remove(path);
        self.removed.send_modify(|n| *n += 1);
        result
    }

    fn free_bytes(&self) -> Result<u64, StoreError> {
        match self.free_bytes.load(Ordering::SeqCst) {
            u64::MAX => self.real.free_bytes(),
            free => Ok(free),
        }
    }
}

/// A cache over a [`TestStore`], with its registry.
struct Harness {
    cache: PackCache,
    store: Arc<TestStore>,
    registry: Registry,
}

impl Harness {
    async fn new(cfg: CacheConfig) -> Self {
        Self::failing_writes(cfg, None).await
    }

    async fn failing_writes(
        cfg: CacheConfig,
        fail_writes_past: Option<(u64, io::ErrorKind)>,
    ) -> Self {
        let dir = cfg.dir.clone();
        let real = tokio::task::spawn_blocking(move || FileStore::open_blocking(&dir))
            .await
            .expect("open task")
            .expect("open store");
        let store = Arc::new(TestStore {
            real,
            fail_writes_past,
            free_bytes: AtomicU64::new(u64::MAX),
            removed: watch::Sender::new(0),
        });
        let registry = Registry::new();
        let metrics = crate::CacheMetrics::register(&registry).expect("register");
        let cache = PackCache::with_store(cfg, metrics, store.clone());
        Self {
            cache,
            store,
            registry,
        }
    }

    /// The sum of a counter or gauge family, optionally only series with `label`.
    fn metric(&self, name: &str, label: Option<&str>) -> u64 {
        metric(&self.registry, name, label)
    }
}

fn metric(registry: &Registry, name: &str, label: Option<&str>) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().to_vec())
        .filter(|m| label.is_none_or(|l| m.get_label().iter().any(|p| p.value() == l)))
        .map(|m| (m.get_counter().get_value() + m.get_gauge().get_value()) as u64)
        .sum()
}

/// What a fetch was, and what reading it to the end gave: the hash and length of the
/// bytes, or the error.
async fn drain(fetch: Fetch) -> (&'static str, Result<(blake3::Hash, u64), String>) {
    let (kind, reader) = match fetch {
        Fetch::Hit(r) => ("hit", r),
        Fetch::Miss(r) => ("miss", r),
        Fetch::Bypass(reason) => return ("bypass", Err(reason.label().to_owned())),
    };
    let mut stream = std::pin::pin!(reader.into_stream());
    let mut h = blake3::Hasher::new();
    let mut n = 0u64;
    while let Some(item) = stream.next().await {
        match item {
            Ok(bytes) => {
                n += bytes.len() as u64;
                h.update(&bytes);
            }
            Err(err) => return (kind, Err(err.to_string())),
        }
    }
    (kind, Ok((h.finalize(), n)))
}

/// Await `fut`, failing the test if it takes longer than a generous deadline (for tests
/// on real time only: paused time would reach the deadline at once when idle).
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within 30s"))
}
