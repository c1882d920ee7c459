//! One test per failure mode: the producer failing or panicking mid-stream, a write error
//! (full disk) mid-stream, a full disk before an entry exists, a failed file creation,
//! the file unlinked under a reader, readers leaving early, an entry file cut short by
//! something else, one truncated while it is written, and a lowered disk budget.

use std::io;
use std::time::Duration;

use tempfile::TempDir;

use super::*;
use crate::BypassReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_producer_removes_the_entry_then_fails_every_reader() {
    let dir = TempDir::new().expect("tempdir");
    let h = Harness::new(config(&dir)).await;
    let (feed, upstream, _released) = feed();
    let first = h.cache.fetch(key("k"), || upstream).await;
    let second = h.cache.fetch(key("k"), || unreachable!("joins")).await;
    assert!(matches!(first, Fetch::Miss(_)) && matches!(second, Fetch::Hit(_)));
    feed.chunks(0..100, 4096).await;
    feed.fail().await;
    // Each reader looks at the index the moment it learns of the failure.
    let fail = |fetch| {
        let cache = h.cache.clone();
        async move {
            let (_, result) = drain(fetch).await;
            (result, cache.entries())
        }
    };
    let (a, b) = within("readers failing", async {
        tokio::join!(fail(first), fail(second))
    })
    .await;
    for (result, entries) in [a, b] {
        let err = result.expect_err("the upstream failed");
        assert!(err.contains("synthetic upstream failure"), "{err}");
        // I3: the entry was gone before the reader woke.
        assert_eq!(entries, 0);
    }
    assert_eq!(
        h.metric("gitgate_pack_cache_evictions_total", Some("failed")),
        1
    );
    assert_eq!(h.cache.usage(), 0);
    let (kind, result) = drain(h.cache.fetch(key("k"), || fixed(200, 4096)).await).await;
    assert_eq!(kind, "miss", "I3: nobody joins a failed entry");
    assert_eq!(result, Ok((expected_hash(200, 4096), 200 * 4096)));
}

#[tokio::test]
async fn panicking_producer_fails_its_readers_and_removes_the_entry() {
    let dir = TempDir::new().expect("tempdir");
    let h = Harness::new(config(&dir)).await;
    let upstream = || -> Upstream {
        Box::pin(async {
            let stream = futures_util::stream::iter(0..2u64).map(|i| {
                assert!(i == 0, "synthetic producer panic");
                Ok(chunk(i, 100))
            });
            Ok(Box::pin(stream) as ByteStream)
        })
    };
    let (kind, result) = drain(h.cache.fetch(key("k"), upstream).await).await;
    assert_eq!(kind, "miss");
    assert_eq!(
        result,
        Err("pack cache producer stopped before the end".to_owned())
    );
    // I3
    assert_eq!(h.cache.entries(), 0);
    assert_eq!(
        h.metric("gitgate_pack_cache_evictions_total", Some("failed")),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_mid_stream_still_serves_attached_readers() {
    let dir = TempDir::new().expect("tempdir");
    let full_at = Some((50_000, io::ErrorKind::StorageFull));
    let h = Harness::failing_writes(config(&dir), full_at).await;
    let (feed, upstream, _released) = feed();
    let a = h.cache.fetch(key("k"), || upstream).await;
    let b = h.cache.fetch(key("k"), || unreachable!("joins")).await;
    let feeding = tokio::spawn(async move { feed.chunks(0..100, 4096).await });
    let (ra, rb) = within("readers finishing", async {
        tokio::join!(drain(a), drain(b))
    })
    .await;
    feeding.await.expect("feed task");
    let want = Ok((expected_hash(100, 4096), 100 * 4096));
    // I7: both get every byte, past the failed write through their channels.
    assert_eq!(ra.1, want);
    assert_eq!(rb.1, want);
    assert_eq!(
        h.metric("gitgate_pack_cache_lookups_total", Some("error")),
        1
    );
    assert_eq!(
        h.metric("gitgate_pack_cache_evictions_total", Some("write_error")),
        1
    );
    assert_eq!(
        h.cache.entries(),
        0,
        "an entry with a write error is not kept"
    );
    assert_eq!(h.cache.usage(), 0);
    let (kind, _) = drain(h.cache.fetch(key("k"), || fixed(1, 10)).await).await;
    assert_eq!(kind, "miss");
}

#[tokio::test]
async fn low_disk_space_evicts_complete_entries_then_bypasses() {
    let dir = TempDir::new().expect("tempdir");
    let mut cfg = config(&dir);
    cfg.min_free_bytes = 1 << 20;
    let h = Harness::new(cfg).await;
    h.store.set_free_bytes(1 << 30);
    let (kind, _) = drain(h.cache.fetch(key("a"), || fixed(10, 1000)).await).await;
    assert_eq!(kind, "miss");
    h.store.set_free_bytes(1000);
    let fetch = h
        .cache
        .fetch(key("b"), || unreachable!("no entry is made"))
        .await;
    // I7: a full disk before the entry exists is a bypass.
    assert!(matches!(fetch, Fetch::Bypass(BypassReason::LowDiskSpace)));
    assert_eq!(
        h.metric("gitgate_pack_cache_evictions_total", Some("low_disk")),
        1
    );
    assert_eq!(
        h.metric("gitgate_pack_cache_lookups_total", Some("bypass")),
        1
    );
    h.store.removed(1).await;
    assert_eq!(h.cache.entries(), 0);
}

#[tokio::test]
async fn failed_file_creation_is_a_bypass() {
    let dir = TempDir::new().expect("tempdir");
    let registry = Registry::new();
    let metrics = crate::CacheMetrics::register(&registry).expect("register");
    let cache = PackCache::open(config(&dir), metrics).await.expect("open");
    // A file where the life's directory was: creating an entry fails (a removed
    // directory would be made again).
    tokio::fs::remove_dir_all(cache.life_dir())
        .await
        .expect("remove life dir");
    tokio::fs::write(cache.life_dir(), b"")
        .await
        .expect("a file in its place");
    let fetch = cache
        .fetch(key("k"), || unreachable!("no entry is made"))
        .await;
    // I7
    assert!(matches!(fetch, Fetch::Bypass(BypassReason::StoreError)));
    assert_eq!(
        metric(&registry, "gitgate_pack_cache_lookups_total", Some("error")),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn eviction_unlinks_the_file_while_a_reader_finishes() {
    let dir = TempDir::new().expect("tempdir");
    let mut cfg = config(&dir);
    cfg.max_age = Duration::from_millis(100);
    let h = Harness::new(cfg).await;
    let (feed, upstream, _released) = feed();
    let Fetch::Miss(mut reader) = h.cache.fetch(key("k"), || upstream).await else {
        panic!("expected a miss")
    };
    feed.chunks(0..10, 8192).await;
    let mut hasher = blake3::Hasher::new();
    let mut read = 0u64;
    let first = reader.next_chunk().await.expect("a chunk").expect("bytes");
    hasher.update(&first);
    read += first.len() as u64;
    let mut files = tokio::fs::read_dir(h.cache.life_dir())
        .await
        .expect("life dir");
    let file = files
        .next_entry()
        .await
        .expect("read life dir")
        .expect("entry file")
        .path();

    tokio::time::advance(Duration::from_millis(100)).await;
    h.cache.evict_expired(); // I5
    assert_eq!(h.cache.entries(), 0);
    h.store.removed(1).await;
    assert!(
        !tokio::fs::try_exists(&file).await.expect("stat"),
        "evicted file still linked"
    );

    // I5: the reader holding the file finishes it, however much more is written.
    let feeding = tokio::spawn(async move { feed.chunks(10..400, 8192).await });
    let mut stream = std::pin::pin!(reader.into_stream());
    while let Some(bytes) = stream.next().await {
        let bytes = bytes.expect("reading an unlinked file");
        hasher.update(&bytes);
        read += bytes.len() as u64;
    }
    feeding.await.expect("feed task");
    assert_eq!(
        (hasher.finalize(), read),
        (expected_hash(400, 8192), 400 * 8192)
    );
    let (kind, _) = drain(h.cache.fetch(key("k"), || fixed(1, 10)).await).await;
    assert_eq!(kind, "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reader_leaving_early_does_not_stop_the_producer() {
    let dir = TempDir::new().expect("tempdir");
    let h = Harness::new(config(&dir)).await;
    let (feed, upstream, _released) = feed();
    let creator = h.cache.fetch(key("k"), || upstream).await;
    let other = h.cache.fetch(key("k"), || unreachable!("joins")).await;
    let Fetch::Miss(mut creator) = creator else {
        panic!("miss expected")
    };
    feed.chunks(0..1, 4096).await;
    assert!(creator.next_chunk().await.is_some());
    drop(creator);
    // I6: the producer does not belong to the request that started it.
    let feeding = tokio::spawn(async move { feed.chunks(1..500, 4096).await });
    let (_, result) = within("the other reader finishing", drain(other)).await;
    assert_eq!(result, Ok((expected_hash(500, 4096), 500 * 4096)));
    feeding.await.expect("the producer kept reading");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_reader_leaving_stops_the_producer_and_removes_the_entry() {
    let dir = TempDir::new().expect("tempdir");
    let h = Harness::new(config(&dir)).await;
    let (feed, upstream, released) = feed();
    let Fetch::Miss(mut only) = h.cache.fetch(key("k"), || upstream).await else {
        panic!("miss expected")
    };
    feed.chunks(0..1, 4096).await;
    assert!(only.next_chunk().await.is_some());
    drop(only);
    // I6: with nobody left to write for, the producer lets go of its upstream...
    within("the producer stopping", released.wait()).await;
    // ...having first taken the entry out of the index.
    assert_eq!(h.cache.entries(), 0);
    assert_eq!(
        h.metric("gitgate_pack_cache_evictions_total", Some("abandoned")),
        1
    );
    let next = h.cache.fetch(key("k"), || fixed(1, 1)).await;
    assert!(
        matches!(next, Fetch::Miss(_)),
        "an abandoned entry was joinable"
    );
}

#[tokio::test]
async fn an_entry_file_cut_short_by_something_else_is_evicted_not_served() {
    let dir = TempDir::new().expect("tempdir");
    let h = Harness::new(config(&dir)).await;
    let (kind, _) = drain(h.cache.fetch(key("k"), || fixed(10, 1000)).await).await;
    assert_eq!(kind, "miss");
    let files: Vec<_> = std::fs::read_dir(h.cache.life_dir())
        .expect("life dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    assert_eq!(files.len(), 1, "one entry file: {files:?}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&files[0])
        .and_then(|f| f.set_len(4000))
        .expect("truncate the entry file");
    let (kind, result) = drain(h.cache.fetch(key("k"), || fixed(10, 1000)).await).await;
    assert_eq!(kind, "miss", "a damaged entry is not a hit");
    assert_eq!(result, Ok((expected_hash(10, 1000), 10_000)));
    assert_eq!(
        h.metric("gitgate_pack_cache_evictions_total", Some("damaged")),
        1
    );
    let (kind, result) = drain(h.cache.fetch(key("k"), || unreachable!("a hit")).await).await;
    assert_eq!(kind, "hit", "the regenerated entry serves");
    assert_eq!(result, Ok((expected_hash(10, 1000), 10_000)));
}

#[tokio::test]
async fn a_lowered_disk_budget_evicts_at_once() {
    let dir = TempDir::new().expect("tempdir");
    let h = Harness::new(config(&dir)).await;
    for name in ["a", "b", "c"] {
        let (kind, _) = drain(h.cache.fetch(key(name), || fixed(10, 1000)).await).await;
        assert_eq!(kind, "miss");
    }
    assert_eq!(h.cache.usage(), 30_000);
    h.cache.reconfigure(Duration::from_secs(300), 0, 15_000, 0);
    assert_eq!(h.cache.entries(), 1, "evicted down to the new budget");
    assert_eq!(h.cache.usage(), 10_000);
    assert_eq!(
        h.metric("gitgate_pack_cache_evictions_total", Some("max_bytes")),
        2
    );
    h.store.removed(2).await;
    // The newest entry is the one kept.
    let (kind, _) = drain(h.cache.fetch(key("c"), || unreachable!("a hit")).await).await;
    assert_eq!(kind, "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_file_truncated_while_written_fails_instead_of_serving_zeros() {
    let dir = TempDir::new().expect("tempdir");
    let h = Harness::new(config(&dir)).await;
    let (feed, upstream, released) = feed();
    let fetch = h.cache.fetch(key("k"), || upstream).await;
    let reader = tokio::spawn(drain(fetch));
    feed.chunks(0..4, 1000).await;
    let life = h.cache.life_dir().to_owned();
    let file = within("the first bytes on disk", async {
        loop {
            let found = std::fs::read_dir(&life)
                .expect("life dir")
                .flatten()
                .map(|e| e.path())
                .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() >= 4000));
            if let Some(path) = found {
                break path;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // Something else cuts the file short; the producer's next writes leave a hole.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(1000))
        .expect("truncate the entry file");
    feed.chunks(4..8, 1000).await;
    drop(feed);
    released.wait().await;
    let (kind, result) = within("the first reader's end", reader)
        .await
        .expect("reader task");
    assert_eq!(kind, "miss");
    assert!(
        result.is_err(),
        "a reader ended an entry with a hole cleanly"
    );
    assert_eq!(
        h.metric("gitgate_pack_cache_evictions_total", Some("damaged")),
        1
    );
    let (kind, result) = drain(h.cache.fetch(key("k"), || fixed(8, 1000)).await).await;
    assert_eq!(kind, "miss", "the entry with a hole was served");
    assert_eq!(result, Ok((expected_hash(8, 1000), 8000)));
}
