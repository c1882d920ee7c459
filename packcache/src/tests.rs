//! Tests of the cache with synthetic producers and a real temporary directory.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use prometheus::Registry;
use tempfile::TempDir;

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
        min_occurrences: 1,
        max_bytes: 10 << 30,
        min_free_bytes: 0,
    }
}

async fn open(cfg: CacheConfig) -> (PackCache, Registry) {
    let registry = Registry::new();
    let metrics = crate::CacheMetrics::register(&registry).expect("register");
    (PackCache::open(cfg, metrics).await.expect("open"), registry)
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

#[derive(Debug, thiserror::Error)]
#[error("synthetic upstream failure")]
struct Boom;

/// A producer of `chunks` chunks of `size` bytes, failing before chunk `fail_at` if set,
/// pausing `pause` every 16 chunks; `alive` is cleared when the stream is dropped.
fn producer(
    chunks: u64,
    size: usize,
    fail_at: Option<u64>,
    pause: Duration,
    alive: Arc<AtomicBool>,
) -> Upstream {
    struct Guard(Arc<AtomicBool>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }
    alive.store(true, Ordering::SeqCst);
    let guard = Guard(alive);
    Box::pin(async move {
        let stream = futures_util::stream::iter(0..chunks).then(move |i| {
            let _keep = &guard;
            async move {
                if i % 16 == 0 && !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                if Some(i) == fail_at {
                    return Err(UpstreamError::new(Boom));
                }
                Ok(chunk(i, size))
            }
        });
        Ok(Box::pin(stream) as ByteStream)
    })
}

fn expected_hash(chunks: u64, size: usize) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    for i in 0..chunks {
        h.update(&chunk(i, size));
    }
    h.finalize()
}

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

fn counter(registry: &Registry, name: &str, label: Option<&str>) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().to_vec())
        .filter(|m| label.is_none_or(|l| m.get_label().iter().any(|p| p.value() == l)))
        .map(|m| (m.get_counter().get_value() + m.get_gauge().get_value()) as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_readers_joining_a_slow_200mb_producer_get_identical_bytes() {
    const CHUNKS: u64 = 3200;
    const SIZE: usize = 64 * 1024; // 200 MiB in all
    let dir = TempDir::new().expect("tempdir");
    let (cache, registry) = open(config(&dir)).await;
    let produced = Arc::new(AtomicU64::new(0));
    let alive = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let cache = cache.clone();
        let produced = produced.clone();
        let alive = alive.clone();
        tasks.push(tokio::spawn(async move {
            // Join at scattered moments while the producer runs (I1, I2).
            tokio::time::sleep(Duration::from_millis((i * 37) % 400)).await;
            let fetch = cache
                .fetch(key("big"), || {
                    produced.fetch_add(1, Ordering::SeqCst);
                    producer(CHUNKS, SIZE, None, Duration::from_millis(2), alive)
                })
                .await;
            drain(fetch).await
        }));
    }
    let want = expected_hash(CHUNKS, SIZE);
    let mut kinds = Vec::new();
    for t in tasks {
        let (kind, result) = t.await.expect("task");
        assert_eq!(result, Ok((want, CHUNKS * SIZE as u64)));
        kinds.push(kind);
    }
    assert_eq!(
        produced.load(Ordering::SeqCst),
        1,
        "more than one producer ran"
    );
    assert_eq!(kinds.iter().filter(|k| **k == "miss").count(), 1);
    assert_eq!(
        counter(&registry, "gitgate_pack_cache_lookups_total", Some("hit")),
        63
    );
    assert_eq!(
        counter(&registry, "gitgate_pack_cache_generated_bytes_total", None),
        CHUNKS * SIZE as u64
    );
    assert_eq!(
        counter(&registry, "gitgate_pack_cache_served_bytes_total", None),
        64 * CHUNKS * SIZE as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_producer_aborts_every_reader_and_the_next_request_starts_afresh() {
    let dir = TempDir::new().expect("tempdir");
    let (cache, _registry) = open(config(&dir)).await;
    let alive = Arc::new(AtomicBool::new(false));
    let first = cache
        .fetch(key("k"), || {
            producer(
                200,
                4096,
                Some(100),
                Duration::from_millis(5),
                alive.clone(),
            )
        })
        .await;
    let second = cache
        .fetch(key("k"), || unreachable!("joins the first"))
        .await;
    assert!(matches!(second, Fetch::Hit(_)));
    let (a, b) = tokio::join!(drain(first), drain(second));
    // I3: both fail, and the failed entry is already gone.
    assert!(a.1.is_err() && b.1.is_err(), "{a:?} {b:?}");
    assert!(a.1.unwrap_err().contains("synthetic upstream failure"));
    assert_eq!(cache.entries(), 0);
    let again = cache
        .fetch(key("k"), || {
            producer(200, 4096, None, Duration::ZERO, alive.clone())
        })
        .await;
    let (kind, result) = drain(again).await;
    assert_eq!(kind, "miss");
    assert_eq!(result, Ok((expected_hash(200, 4096), 200 * 4096)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_unlinks_while_readers_finish() {
    let dir = TempDir::new().expect("tempdir");
    let mut cfg = config(&dir);
    cfg.max_age = Duration::from_millis(100);
    let (cache, _registry) = open(cfg).await;
    let alive = Arc::new(AtomicBool::new(false));
    let fetch = cache
        .fetch(key("k"), || {
            producer(400, 8192, None, Duration::from_millis(10), alive.clone())
        })
        .await;
    let Fetch::Miss(reader) = fetch else {
        panic!("expected a miss")
    };
    let file = std::fs::read_dir(cache.life_dir())
        .expect("life dir")
        .flatten()
        .next()
        .expect("entry file")
        .path();
    let reading = tokio::spawn(drain(Fetch::Hit(reader)));
    tokio::time::sleep(Duration::from_millis(150)).await;
    cache.evict_expired(); // I5
    assert_eq!(cache.entries(), 0);
    for _ in 0..100 {
        if !file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!file.exists(), "evicted file still linked");
    let (_, result) = reading.await.expect("task");
    assert_eq!(result, Ok((expected_hash(400, 8192), 400 * 8192)));
    let next = cache
        .fetch(key("k"), || {
            producer(1, 10, None, Duration::ZERO, alive.clone())
        })
        .await;
    assert!(matches!(next, Fetch::Miss(_)));
}

#[tokio::test]
async fn min_occurrences_gates_entry_creation() {
    for (min, expected) in [
        (0, ["miss", "hit", "hit"]),
        (1, ["miss", "hit", "hit"]),
        (3, ["bypass", "bypass", "miss"]),
    ] {
        let dir = TempDir::new().expect("tempdir");
        let mut cfg = config(&dir);
        cfg.min_occurrences = min;
        let (cache, _registry) = open(cfg).await;
        let mut kinds = Vec::new();
        let mut keep = Vec::new();
        for _ in 0..3 {
            let alive = Arc::new(AtomicBool::new(false));
            match cache
                .fetch(key("k"), || producer(4, 10, None, Duration::ZERO, alive))
                .await
            {
                Fetch::Hit(r) => {
                    kinds.push("hit");
                    keep.push(r);
                }
                Fetch::Miss(r) => {
                    kinds.push("miss");
                    keep.push(r);
                }
                Fetch::Bypass(_) => kinds.push("bypass"),
            }
        }
        assert_eq!(kinds, expected, "min_occurrences = {min}");
    }
}

#[tokio::test]
async fn max_bytes_evicts_oldest_first() {
    let dir = TempDir::new().expect("tempdir");
    let mut cfg = config(&dir);
    cfg.max_bytes = 25_000;
    let (cache, registry) = open(cfg).await;
    let alive = Arc::new(AtomicBool::new(false));
    for name in ["a", "b", "c"] {
        let (kind, result) = drain(
            cache
                .fetch(key(name), || {
                    producer(10, 1000, None, Duration::ZERO, alive.clone())
                })
                .await,
        )
        .await;
        assert_eq!(kind, "miss");
        assert!(result.is_ok());
    }
    // 30 000 bytes were written against a 25 000 budget: making room for d evicts a (only).
    let (kind, _) = drain(
        cache
            .fetch(key("d"), || {
                producer(10, 1000, None, Duration::ZERO, alive.clone())
            })
            .await,
    )
    .await;
    assert_eq!(kind, "miss");
    assert_eq!(
        counter(
            &registry,
            "gitgate_pack_cache_evictions_total",
            Some("max_bytes")
        ),
        1
    );
    let (b_kind, _) = drain(
        cache
            .fetch(key("c"), || {
                producer(10, 1000, None, Duration::ZERO, alive.clone())
            })
            .await,
    )
    .await;
    assert_eq!(b_kind, "hit", "the newest entry survives");
    let (a_kind, _) = drain(
        cache
            .fetch(key("a"), || {
                producer(10, 1000, None, Duration::ZERO, alive.clone())
            })
            .await,
    )
    .await;
    assert_eq!(a_kind, "miss", "the oldest entry was evicted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_error_mid_stream_still_serves_attached_readers() {
    let dir = TempDir::new().expect("tempdir");
    let registry = Registry::new();
    let metrics = crate::CacheMetrics::register(&registry).expect("register");
    let cache = PackCache::open_with_fault(config(&dir), metrics, Some(50_000))
        .await
        .expect("open");
    let alive = Arc::new(AtomicBool::new(false));
    let a = cache
        .fetch(key("k"), || {
            producer(100, 4096, None, Duration::from_millis(5), alive.clone())
        })
        .await;
    let b = cache.fetch(key("k"), || unreachable!("joins")).await;
    let (ra, rb) = tokio::join!(drain(a), drain(b));
    let want = Ok((expected_hash(100, 4096), 100 * 4096));
    assert_eq!(ra.1, want); // I7
    assert_eq!(rb.1, want);
    assert_eq!(
        counter(&registry, "gitgate_pack_cache_lookups_total", Some("error")),
        1
    );
    assert_eq!(
        cache.entries(),
        0,
        "an entry with a write error is not kept"
    );
}

#[tokio::test]
async fn failed_file_creation_is_a_bypass() {
    let dir = TempDir::new().expect("tempdir");
    let (cache, registry) = open(config(&dir)).await;
    std::fs::remove_dir_all(cache.life_dir()).expect("remove life dir");
    let alive = Arc::new(AtomicBool::new(false));
    let fetch = cache
        .fetch(key("k"), || producer(1, 1, None, Duration::ZERO, alive))
        .await;
    assert!(matches!(
        fetch,
        Fetch::Bypass(crate::BypassReason::StoreError)
    ));
    assert_eq!(
        counter(&registry, "gitgate_pack_cache_lookups_total", Some("error")),
        1
    );
}

#[tokio::test]
async fn leftovers_of_dead_processes_are_removed_at_start() {
    let dir = TempDir::new().expect("tempdir");
    let cache_dir = dir.path().join("cache");
    let dead = cache_dir.join("gitgate-4000000000-1");
    std::fs::create_dir_all(&dead).expect("mkdir");
    std::fs::write(dead.join("00000000.entry"), b"half written").expect("write");
    let live = cache_dir.join("gitgate-1-1"); // pid 1 is alive
    std::fs::create_dir_all(&live).expect("mkdir");
    let unrelated = cache_dir.join("operator-notes.txt");
    std::fs::write(&unrelated, b"keep").expect("write");
    let (cache, _registry) = open(config(&dir)).await;
    assert!(!dead.exists(), "leftovers of a dead process were kept");
    assert!(live.exists() && unrelated.exists());
    assert!(cache.life_dir().starts_with(&cache_dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_reader_leaving_stops_the_producer_but_one_leaving_does_not() {
    let dir = TempDir::new().expect("tempdir");
    let (cache, _registry) = open(config(&dir)).await;
    // The creator leaves early; another reader keeps production going (I6).
    let alive = Arc::new(AtomicBool::new(false));
    let creator = cache
        .fetch(key("k"), || {
            producer(500, 4096, None, Duration::from_millis(2), alive.clone())
        })
        .await;
    let other = cache.fetch(key("k"), || unreachable!("joins")).await;
    let Fetch::Miss(mut creator) = creator else {
        panic!("miss expected")
    };
    assert!(creator.next_chunk().await.is_some());
    drop(creator);
    let (_, result) = drain(other).await;
    assert_eq!(result, Ok((expected_hash(500, 4096), 500 * 4096)));

    // When every reader has gone, production stops and the entry is dropped.
    let alive = Arc::new(AtomicBool::new(false));
    let only = cache
        .fetch(key("endless"), || {
            producer(
                u64::MAX,
                4096,
                None,
                Duration::from_millis(1),
                alive.clone(),
            )
        })
        .await;
    let Fetch::Miss(mut only) = only else {
        panic!("miss expected")
    };
    assert!(only.next_chunk().await.is_some());
    drop(only);
    for _ in 0..200 {
        if !alive.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !alive.load(Ordering::SeqCst),
        "producer kept running with no readers"
    );
    let next = cache
        .fetch(key("endless"), || {
            producer(1, 1, None, Duration::ZERO, alive.clone())
        })
        .await;
    assert!(
        matches!(next, Fetch::Miss(_)),
        "an abandoned entry was joinable"
    );
}
