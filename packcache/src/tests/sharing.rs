//! Sharing one entry, admission, the disk budget, `max_age` and restarts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tempfile::TempDir;
use tokio::time::Instant;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_readers_joining_a_200mb_stream_get_identical_bytes() {
    const CHUNKS: u64 = 3200;
    const SIZE: usize = 64 * 1024; // 200 MiB in all
    const READERS: usize = 64;
    let dir = TempDir::new().expect("tempdir");
    let h = Harness::new(config(&dir)).await;
    let produced = AtomicU64::new(0);
    let (feed, upstream, _released) = feed();
    let first = h
        .cache
        .fetch(key("big"), || {
            produced.fetch_add(1, Ordering::SeqCst);
            upstream
        })
        .await;
    assert!(matches!(first, Fetch::Miss(_)));
    let mut readers = vec![tokio::spawn(drain(first))];
    for i in 0..CHUNKS {
        feed.chunks(i..i + 1, SIZE).await;
        // Join every 50 chunks, while the producer is still writing (I1, I2).
        if i % 50 == 49 && readers.len() < READERS {
            let fetch = h
                .cache
                .fetch(key("big"), || unreachable!("I1: one producer per live key"))
                .await;
            assert!(matches!(fetch, Fetch::Hit(_)), "chunk {i}");
            readers.push(tokio::spawn(drain(fetch)));
        }
    }
    drop(feed);
    assert_eq!(readers.len(), READERS);
    let want = Ok((expected_hash(CHUNKS, SIZE), CHUNKS * SIZE as u64));
    for reader in readers {
        let (_, result) = within("a reader finishing", reader)
            .await
            .expect("reader task");
        assert_eq!(result, want);
    }
    assert_eq!(produced.load(Ordering::SeqCst), 1);
    assert_eq!(
        h.metric("gitgate_pack_cache_lookups_total", Some("hit")),
        63
    );
    assert_eq!(
        h.metric("gitgate_pack_cache_generated_bytes_total", None),
        CHUNKS * SIZE as u64
    );
    assert_eq!(
        h.metric("gitgate_pack_cache_served_bytes_total", None),
        READERS as u64 * CHUNKS * SIZE as u64
    );
    assert_eq!(h.cache.usage(), CHUNKS * SIZE as u64);
}

#[tokio::test]
async fn min_occurrences_gates_entry_creation_never_generation() {
    // Whatever the threshold, three identical fetches cost one upstream call; only the
    // number of entries on disk differs.
    for (min, entries_after) in [(0, [1, 1, 1]), (1, [0, 1, 1]), (3, [0, 0, 0])] {
        let dir = TempDir::new().expect("tempdir");
        let mut cfg = config(&dir);
        cfg.min_occurrences = min;
        let h = Harness::new(cfg).await;
        let calls = Arc::new(AtomicU64::new(0));
        for (i, want) in entries_after.into_iter().enumerate() {
            let counted = calls.clone();
            let fetch = h
                .cache
                .fetch(key("k"), move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    fixed(4, 10)
                })
                .await;
            let (kind, result) = drain(fetch).await;
            assert_eq!(
                result,
                Ok((expected_hash(4, 10), 40)),
                "min {min}, fetch {i}"
            );
            assert_eq!(
                kind,
                if i == 0 { "miss" } else { "hit" },
                "min {min}, fetch {i}"
            );
            assert_eq!(
                h.cache.entries(),
                want,
                "min {min}, entries after fetch {i}"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "min {min}: upstream calls");
    }
}

#[tokio::test(start_paused = true)]
async fn sightings_older_than_max_age_do_not_count() {
    let dir = TempDir::new().expect("tempdir");
    let mut cfg = config(&dir);
    cfg.min_occurrences = 2;
    cfg.max_age = Duration::from_secs(60);
    let h = Harness::new(cfg).await;
    let _ = drain(h.cache.fetch(key("k"), || fixed(1, 10)).await).await;
    tokio::time::advance(Duration::from_secs(60)).await;
    let _ = drain(h.cache.fetch(key("k"), || fixed(1, 10)).await).await;
    assert_eq!(h.cache.entries(), 0, "the first sighting has expired");
    tokio::time::advance(Duration::from_secs(59)).await;
    let _ = drain(h.cache.fetch(key("k"), || fixed(1, 10)).await).await;
    assert_eq!(h.cache.entries(), 0, "seen once before in the window");
    let (_, result) = drain(h.cache.fetch(key("k"), || fixed(1, 10)).await).await;
    assert_eq!(h.cache.entries(), 1, "seen twice before in the window");
    assert_eq!(result, Ok((expected_hash(1, 10), 10)));
}

#[tokio::test]
async fn max_bytes_evicts_oldest_first() {
    let dir = TempDir::new().expect("tempdir");
    let mut cfg = config(&dir);
    cfg.max_bytes = 25_000;
    let h = Harness::new(cfg).await;
    for name in ["a", "b", "c"] {
        let (kind, result) = drain(h.cache.fetch(key(name), || fixed(10, 1000)).await).await;
        assert_eq!(kind, "miss");
        assert!(result.is_ok());
    }
    // c took the total to 30 000 bytes against a 25 000 budget: as it grew, the oldest
    // complete entry (a, only) made room.
    assert_eq!(
        h.metric("gitgate_pack_cache_evictions_total", Some("max_bytes")),
        1
    );
    assert_eq!(h.cache.entries(), 2);
    assert_eq!(h.cache.usage(), 20_000);
    let (kind, _) = drain(h.cache.fetch(key("c"), || fixed(10, 1000)).await).await;
    assert_eq!(kind, "hit", "the newest entry survives");
    let (kind, _) = drain(h.cache.fetch(key("b"), || fixed(10, 1000)).await).await;
    assert_eq!(kind, "hit");
    let (kind, _) = drain(h.cache.fetch(key("a"), || fixed(10, 1000)).await).await;
    assert_eq!(kind, "miss", "the oldest entry was evicted");
    assert!(h.cache.usage() <= 25_000);
}

#[tokio::test]
async fn entries_made_at_once_keep_to_the_budget_once_they_end() {
    let dir = TempDir::new().expect("tempdir");
    let mut cfg = config(&dir);
    cfg.max_bytes = 25_000;
    let h = Harness::new(cfg).await;
    // Three entries made before any of them wrote a byte: each fits the budget when it
    // is made, and together they write 30 000 bytes.
    let mut feeds = Vec::new();
    let mut readers = Vec::new();
    for name in ["a", "b", "c"] {
        let (feed, upstream, _released) = super::feed();
        let fetch = h.cache.fetch(key(name), move || upstream).await;
        assert!(matches!(fetch, Fetch::Miss(_)), "{name} makes an entry");
        feeds.push(feed);
        readers.push(tokio::spawn(drain(fetch)));
    }
    for feed in &feeds {
        within("feeding", feed.chunks(0..10, 1000)).await;
    }
    drop(feeds);
    for reader in readers {
        let (kind, result) = within("a reader's end", reader).await.expect("reader task");
        assert_eq!(kind, "miss");
        // Entries being written are never cut: every reader got the whole stream.
        assert_eq!(result, Ok((expected_hash(10, 1000), 10_000)));
    }
    // As they completed, the excess went: back within the budget, one entry evicted.
    assert!(h.cache.usage() <= 25_000, "usage {}", h.cache.usage());
    assert_eq!(h.cache.entries(), 2);
    assert_eq!(
        h.metric("gitgate_pack_cache_evictions_total", Some("max_bytes")),
        1
    );
}

#[tokio::test]
async fn the_evictor_keeps_min_free_bytes_after_entries_are_made() {
    let dir = TempDir::new().expect("tempdir");
    let mut cfg = config(&dir);
    cfg.min_free_bytes = 1 << 20;
    let h = Harness::new(cfg).await;
    h.store.set_free_bytes(1 << 30);
    for name in ["a", "b"] {
        let (kind, _) = drain(h.cache.fetch(key(name), || fixed(10, 1000)).await).await;
        assert_eq!(kind, "miss");
    }
    // Something else fills the disk after the entries were made.
    h.store.set_free_bytes(1000);
    let _evictor = h.cache.spawn_evictor(Duration::from_millis(10));
    within("eviction for free space", h.store.removed(2)).await;
    assert_eq!(h.cache.entries(), 0);
    assert_eq!(
        h.metric("gitgate_pack_cache_evictions_total", Some("low_disk")),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn the_evictor_removes_entries_past_max_age_until_dropped() {
    let dir = TempDir::new().expect("tempdir");
    let mut cfg = config(&dir);
    cfg.max_age = Duration::from_secs(10);
    let h = Harness::new(cfg).await;
    let evictor = h.cache.spawn_evictor(Duration::from_secs(1));
    // (Paused time may auto-advance to the evictor's next tick while the test waits on
    // other tasks, so deadlines are taken from the clock rather than counted.)
    let before = Instant::now();
    let (kind, _) = drain(h.cache.fetch(key("a"), || fixed(4, 100)).await).await;
    assert_eq!(kind, "miss");
    let after = Instant::now();
    tokio::time::advance((before + Duration::from_secs(9)).saturating_duration_since(after)).await;
    tokio::task::yield_now().await;
    assert_eq!(h.cache.entries(), 1, "younger than max_age");
    let expired = after + Duration::from_secs(11);
    tokio::time::advance(expired.saturating_duration_since(Instant::now())).await;
    // I5: the evictor's tick removes the entry and unlinks its file.
    h.store.removed(1).await;
    assert_eq!(h.cache.entries(), 0);
    assert_eq!(h.cache.usage(), 0);
    assert_eq!(
        h.metric("gitgate_pack_cache_evictions_total", Some("max_age")),
        1
    );

    drop(evictor);
    let (kind, _) = drain(h.cache.fetch(key("b"), || fixed(4, 100)).await).await;
    assert_eq!(kind, "miss");
    tokio::time::advance(Duration::from_secs(60)).await;
    tokio::task::yield_now().await;
    assert_eq!(h.cache.entries(), 1, "a dropped evictor still ran");
}

#[tokio::test]
async fn leftovers_of_dead_processes_are_removed_at_start() {
    let dir = TempDir::new().expect("tempdir");
    let cache_dir = dir.path().join("cache");
    let dead = cache_dir.join("gitgate-4000000000-1");
    std::fs::create_dir_all(&dead).expect("mkdir");
    std::fs::write(dead.join("00000000.entry"), b"half written").expect("write");
    // Without a lock file (an older version's), judged by the pid: pid 1 is alive.
    let live = cache_dir.join("gitgate-1-1");
    std::fs::create_dir_all(&live).expect("mkdir");
    // With a free lock: its life is over, though pid 1 now runs something.
    let reused = cache_dir.join("gitgate-1-2");
    std::fs::create_dir_all(&reused).expect("mkdir");
    std::fs::write(cache_dir.join("gitgate-1-2.lock"), b"").expect("write");
    // With a held lock: alive (another gateway sharing the directory, maybe in
    // another pid namespace), whatever its pid says.
    let held = cache_dir.join("gitgate-4000000001-3");
    std::fs::create_dir_all(&held).expect("mkdir");
    let held_lock =
        std::fs::File::create(cache_dir.join("gitgate-4000000001-3.lock")).expect("create lock");
    held_lock.try_lock().expect("lock");
    // A free lock whose directory is gone.
    let orphan = cache_dir.join("gitgate-4000000002-4.lock");
    std::fs::write(&orphan, b"").expect("write");
    // Lock files under their making name: an old free one is a start cut short; a
    // fresh one may be a start under way; an old held one is a start still running.
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(600);
    let making = |name: &str, modified| {
        let path = cache_dir.join(name);
        let file = std::fs::File::create(&path).expect("create making lock");
        file.set_modified(modified).expect("set mtime");
        (path, file)
    };
    let (abandoned, _) = making(".gitgate-4000000003-5.lock", long_ago);
    let (starting, _) = making(".gitgate-4000000004-6.lock", std::time::SystemTime::now());
    let (slow_start, slow_start_lock) = making(".gitgate-4000000005-7.lock", long_ago);
    slow_start_lock.try_lock().expect("lock");
    let unrelated = cache_dir.join("operator-notes.txt");
    std::fs::write(&unrelated, b"keep").expect("write");
    let registry = Registry::new();
    let metrics = crate::CacheMetrics::register(&registry).expect("register");
    // The production constructor, over the real file store.
    let cache = PackCache::open(config(&dir), metrics).await.expect("open");
    assert!(!dead.exists(), "leftovers of a dead process were kept");
    assert!(!reused.exists(), "leftovers behind a free lock were kept");
    assert!(!cache_dir.join("gitgate-1-2.lock").exists());
    assert!(
        !orphan.exists(),
        "a free lock without its directory was kept"
    );
    assert!(held.exists(), "a directory whose lock is held was removed");
    assert!(
        !abandoned.exists(),
        "an old free lock under its making name was kept"
    );
    assert!(
        starting.exists(),
        "a fresh lock under its making name was removed"
    );
    assert!(
        slow_start.exists(),
        "a held lock under its making name was removed"
    );
    assert!(live.exists() && unrelated.exists());
    // This life holds its own lock.
    let mut own_lock = cache.life_dir().as_os_str().to_owned();
    own_lock.push(".lock");
    let own_lock = std::fs::File::open(&own_lock).expect("this life's lock file");
    assert!(
        matches!(
            Flock::lock(own_lock, FlockArg::LockExclusiveNonblock),
            Err((_, nix::errno::Errno::EWOULDBLOCK))
        ),
        "this life's lock is not held"
    );
    // I4: this life's directory is new.
    assert!(cache.life_dir().starts_with(&cache_dir));
    assert_ne!(cache.life_dir(), dead);
    assert_eq!(
        std::fs::read_dir(cache.life_dir())
            .expect("life dir")
            .count(),
        0
    );
}

#[tokio::test]
async fn a_cache_directory_removed_while_running_is_made_again() {
    let dir = TempDir::new().expect("tempdir");
    let registry = Registry::new();
    let metrics = crate::CacheMetrics::register(&registry).expect("register");
    let mut cfg = config(&dir);
    // The free-space check runs before an entry is made: it must cope too.
    cfg.min_free_bytes = 1;
    let cache = PackCache::open(cfg, metrics).await.expect("open");
    let (kind, first) = drain(cache.fetch(key("a"), || fixed(4, 100)).await).await;
    assert_eq!(kind, "miss");
    // An operator clears the cache: every life's directory and lock go.
    let cache_dir = dir.path().join("cache");
    std::fs::remove_dir_all(&cache_dir).expect("rm -rf");
    // The entry made before still serves from its open file.
    let (kind, again) = drain(cache.fetch(key("a"), || fixed(4, 100)).await).await;
    assert_eq!((kind, again.clone()), ("hit", first));
    // A new key makes its entry in a directory made again, under a held lock.
    let (kind, made) = drain(cache.fetch(key("b"), || fixed(3, 100)).await).await;
    assert_eq!(kind, "miss", "the cache was bypassed: {made:?}");
    assert!(made.is_ok());
    assert!(
        cache.life_dir().is_dir(),
        "the directory was not made again"
    );
    assert_eq!(
        std::fs::read_dir(cache.life_dir())
            .expect("life dir")
            .count(),
        1
    );
    let (kind, hit) = drain(cache.fetch(key("b"), || fixed(3, 100)).await).await;
    assert_eq!((kind, hit), ("hit", made));
    let mut own_lock = cache.life_dir().as_os_str().to_owned();
    own_lock.push(".lock");
    let own_lock = std::fs::File::open(&own_lock).expect("the lock file made again");
    assert!(
        matches!(
            Flock::lock(own_lock, FlockArg::LockExclusiveNonblock),
            Err((_, nix::errno::Errno::EWOULDBLOCK))
        ),
        "the lock made again is not held"
    );
}

/// Read `n` bytes from `stream` (failing on an error or an early end).
async fn read_n(
    stream: &mut (impl futures_util::Stream<Item = Result<Bytes, crate::ReadError>> + Unpin),
    n: u64,
) -> Vec<u8> {
    let mut got = Vec::new();
    while (got.len() as u64) < n {
        match stream.next().await {
            Some(Ok(bytes)) => got.extend_from_slice(&bytes),
            Some(Err(err)) => panic!("read failed: {err}"),
            None => panic!("stream ended after {} bytes", got.len()),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_short_of_an_aligned_write_reach_readers_while_the_upstream_waits() {
    // The producer holds bytes back to end its writes on aligned offsets; a stalled
    // upstream must not keep them from the readers, in memory or in the file.
    let dir = TempDir::new().expect("tempdir");
    let h = Harness::new(config(&dir)).await;
    let (feed, upstream, released) = feed();
    let first = h.cache.fetch(key("slow"), || upstream).await;
    let Fetch::Miss(reader) = first else {
        panic!("the first fetch produces")
    };
    let mut stream = std::pin::pin!(reader.into_stream());
    // The first write goes at once; the next two are far from any aligned offset.
    feed.chunks(0..1, 1000).await;
    assert_eq!(
        within("first bytes", read_n(&mut stream, 1000)).await,
        chunk(0, 1000)
    );
    feed.chunks(1..3, 1000).await;
    let rest = within("bytes held for alignment", read_n(&mut stream, 2000)).await;
    assert_eq!(rest, [chunk(1, 1000), chunk(2, 1000)].concat());
    // A reader joining now reads all of it, the file included.
    let joined = h
        .cache
        .fetch(key("slow"), || unreachable!("one producer"))
        .await;
    let Fetch::Hit(joined) = joined else {
        panic!("the second fetch joins")
    };
    let mut joined = std::pin::pin!(joined.into_stream());
    let all = within("a joining reader", read_n(&mut joined, 3000)).await;
    assert_eq!(
        all,
        [chunk(0, 1000), chunk(1, 1000), chunk(2, 1000)].concat()
    );
    drop(feed);
    released.wait().await;
}
