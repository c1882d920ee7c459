//! Fetches below `min_occurrences` (the default 1): nothing on disk for a unique fetch,
//! one upstream call for identical fetches in flight, and landing in an entry when one
//! joins.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tempfile::TempDir;

use super::*;
use crate::flight::FLIGHT_BYTES;

async fn default_harness(dir: &TempDir) -> Harness {
    let mut cfg = config(dir);
    cfg.min_occurrences = 1;
    Harness::new(cfg).await
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// An upstream factory that counts its calls.
fn counting(calls: &Arc<AtomicU64>, upstream: Upstream) -> impl FnOnce() -> Upstream {
    let calls = calls.clone();
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        upstream
    }
}

#[tokio::test]
async fn a_unique_fetch_writes_nothing_and_its_next_occurrence_needs_no_generation() {
    let dir = TempDir::new().expect("tempdir");
    let h = default_harness(&dir).await;
    let calls = Arc::new(AtomicU64::new(0));
    let (kind, result) = drain(
        h.cache
            .fetch(key("k"), counting(&calls, fixed(16, 1000)))
            .await,
    )
    .await;
    assert_eq!(kind, "miss");
    assert_eq!(result, Ok((expected_hash(16, 1000), 16_000)));
    assert_eq!(h.cache.entries(), 0);
    assert_eq!(
        files_in(h.cache.life_dir()),
        0,
        "a unique fetch wrote a file"
    );
    // The second occurrence creates the entry, from the first one's bytes.
    let (kind, result) = drain(
        h.cache
            .fetch(key("k"), counting(&calls, fixed(16, 1000)))
            .await,
    )
    .await;
    assert_eq!(kind, "hit");
    assert_eq!(result, Ok((expected_hash(16, 1000), 16_000)));
    assert_eq!(h.cache.entries(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one upstream call");
    assert_eq!(
        h.metric("gitgate_pack_cache_generated_bytes_total", None),
        16_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_fetches_in_flight_share_one_call_and_land_in_an_entry() {
    const CHUNKS: u64 = 64;
    const SIZE: usize = 64 * 1024;
    let dir = TempDir::new().expect("tempdir");
    let h = default_harness(&dir).await;
    let calls = Arc::new(AtomicU64::new(0));
    let (feed, upstream, released) = feed();
    let first = h.cache.fetch(key("k"), counting(&calls, upstream)).await;
    assert!(matches!(first, Fetch::Miss(_)));
    let first = tokio::spawn(drain(first));
    feed.chunks(0..10, SIZE).await;
    assert_eq!(
        files_in(h.cache.life_dir()),
        0,
        "nothing on disk before a join"
    );
    // Joiners while it is in flight: the flight lands in an entry for them.
    let mut joiners = Vec::new();
    for _ in 0..3 {
        let fetch = within(
            "a join",
            h.cache.fetch(key("k"), counting(&calls, fixed(1, 1))),
        )
        .await;
        assert!(matches!(fetch, Fetch::Hit(_)), "a joiner did not join");
        joiners.push(tokio::spawn(drain(fetch)));
    }
    assert_eq!(h.cache.entries(), 1);
    feed.chunks(10..CHUNKS, SIZE).await;
    drop(feed);
    let want = Ok((expected_hash(CHUNKS, SIZE), CHUNKS * SIZE as u64));
    assert_eq!(
        within("the first reader", first).await.expect("task").1,
        want
    );
    for joiner in joiners {
        assert_eq!(within("a joiner", joiner).await.expect("task").1, want);
    }
    within("the upstream's release", released.wait()).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        h.metric("gitgate_pack_cache_generated_bytes_total", None),
        CHUNKS * SIZE as u64
    );
    assert_eq!(h.cache.usage(), CHUNKS * SIZE as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flight_that_outgrew_its_memory_is_not_joined() {
    const SIZE: usize = 1 << 20;
    let chunks = FLIGHT_BYTES / SIZE as u64 + 4;
    let dir = TempDir::new().expect("tempdir");
    let h = default_harness(&dir).await;
    let calls = Arc::new(AtomicU64::new(0));
    let (feed, upstream, _released) = feed();
    let first = h.cache.fetch(key("k"), counting(&calls, upstream)).await;
    let first = tokio::spawn(drain(first));
    feed.chunks(0..chunks - 1, SIZE).await;
    // Past its memory: a second identical fetch is on its own (and, being the second
    // occurrence, makes an entry).
    let second = h
        .cache
        .fetch(key("k"), counting(&calls, fixed(chunks, SIZE)))
        .await;
    assert!(matches!(second, Fetch::Miss(_)));
    feed.chunks(chunks - 1..chunks, SIZE).await;
    drop(feed);
    let want = Ok((expected_hash(chunks, SIZE), chunks * SIZE as u64));
    assert_eq!(within("the first", first).await.expect("task").1, want);
    assert_eq!(drain(second).await.1, want);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_flight_whose_request_left_stops_its_upstream() {
    let dir = TempDir::new().expect("tempdir");
    let h = default_harness(&dir).await;
    let (feed, upstream, released) = feed();
    let first = h.cache.fetch(key("k"), || upstream).await;
    feed.chunks(0..2, 100).await;
    drop(first);
    // The flight notices on its next send.
    let _ = feed.0.send(Ok(chunk(2, 100))).await;
    let _ = feed.0.send(Ok(chunk(3, 100))).await;
    within("the upstream's release", released.wait()).await;
    assert_eq!(files_in(h.cache.life_dir()), 0);
}

#[tokio::test]
async fn a_failed_flight_fails_its_request_and_keeps_nothing() {
    let dir = TempDir::new().expect("tempdir");
    let h = default_harness(&dir).await;
    let (feed, upstream, _released) = feed();
    let first = h.cache.fetch(key("k"), || upstream).await;
    let first = tokio::spawn(drain(first));
    feed.chunks(0..2, 100).await;
    feed.fail().await;
    let (kind, result) = within("the failure", first).await.expect("task");
    assert_eq!(kind, "miss");
    assert!(result.is_err(), "a failed flight ended cleanly");
    // Nothing of it is reused: the next occurrence calls upstream again.
    let calls = Arc::new(AtomicU64::new(0));
    let (_, result) = drain(
        h.cache
            .fetch(key("k"), counting(&calls, fixed(2, 100)))
            .await,
    )
    .await;
    assert_eq!(result, Ok((expected_hash(2, 100), 200)));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flight_that_cannot_land_serves_its_request_whole() {
    let dir = TempDir::new().expect("tempdir");
    let mut cfg = config(&dir);
    cfg.min_occurrences = 1;
    cfg.min_free_bytes = 1 << 30;
    let h = Harness::new(cfg).await;
    // No room on disk: the flight cannot land when someone joins.
    h.store.set_free_bytes(0);
    let (feed, upstream, _released) = feed();
    let first = h.cache.fetch(key("k"), || upstream).await;
    assert!(matches!(first, Fetch::Miss(_)));
    // More than the request's channel holds, so a chunk waits to be sent when the
    // joiner comes.
    let feeding = tokio::spawn(async move {
        feed.chunks(0..40, 1000).await;
        feed
    });
    // Eight chunks fill the request's channel; the ninth waits.
    within("the flight to block on its request", async {
        while h.metric("gitgate_pack_cache_generated_bytes_total", None) < 9_000 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let second = within("the joiner", h.cache.fetch(key("k"), || fixed(40, 1000))).await;
    assert!(
        matches!(second, Fetch::Bypass(_)),
        "no room: the joiner goes alone"
    );
    let first = tokio::spawn(drain(first));
    let feed = within("feeding", feeding).await.expect("task");
    drop(feed);
    assert_eq!(
        within("the first reader", first).await.expect("task").1,
        Ok((expected_hash(40, 1000), 40_000)),
        "the request lost bytes when its flight could not land"
    );
    assert_eq!(files_in(h.cache.life_dir()), 0);
}
