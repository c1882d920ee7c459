//! Unit tests of an entry's tail and its writer's end.

use std::sync::Arc;

use bytes::Bytes;

use super::{DiskUsage, Entry, FailReason, Phase, Tail, Writer, TAIL_BYTES};

/// A new entry on a file in its own temporary directory (kept alive by the caller).
fn new_entry() -> (tempfile::TempDir, Arc<Entry>, Writer) {
    let dir = tempfile::TempDir::new().expect("tempdir");
    let path = dir.path().join("e");
    let file = std::fs::File::create(&path).expect("create");
    let gauge = prometheus::IntGauge::new("usage", "usage").expect("gauge");
    let usage = Arc::new(DiskUsage::new(gauge));
    let key = crate::KeyBuilder::new(1).finish();
    let (entry, writer) = Entry::new(key, file, path, usage);
    (dir, entry, writer)
}

#[test]
fn tail_serves_from_any_offset_it_holds_and_never_past_the_limit() {
    let mut tail = Tail::default();
    tail.push(0, Bytes::from_static(b"abcd"));
    tail.push(4, Bytes::from_static(b"efgh"));
    assert_eq!(tail.get(2, 8).as_deref(), Some(&b"cd"[..]));
    assert_eq!(tail.get(5, 8).as_deref(), Some(&b"fgh"[..]));
    // I2: a reader's snapshot of the offset bounds what it gets.
    assert_eq!(tail.get(5, 6).as_deref(), Some(&b"f"[..]));
    assert_eq!(tail.get(8, 8), None);
}

#[test]
fn a_finished_entry_keeps_no_tail_in_memory() {
    let (_dir, entry, writer) = new_entry();
    writer.wrote(0, Bytes::from_static(b"abcd"), true);
    assert!(entry.tail(0, 4).is_some(), "the head is served from memory");
    writer.finish(Ok(()));
    assert!(
        entry.tail(0, 4).is_none(),
        "a finished entry still holds its tail"
    );
}

#[tokio::test]
async fn a_writer_dropped_before_the_end_fails_its_readers() {
    let (_dir, entry, writer) = new_entry();
    let mut follower = entry.attach();
    writer.wrote(0, Bytes::from_static(b"abcd"), true);
    let task = tokio::spawn(async move {
        let _writer = writer;
        std::future::pending::<()>().await;
    });
    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    let ended = follower
        .progress
        .wait_for(|p| !matches!(p.phase, Phase::Writing));
    let phase = tokio::time::timeout(std::time::Duration::from_secs(5), ended)
        .await
        .expect("a reader would wait forever")
        .expect("the entry outlives its writer")
        .phase
        .clone();
    assert!(
        matches!(phase, Phase::Failed(FailReason::Dropped)),
        "a reader would wait forever: {phase:?}"
    );
    assert!(!entry.joinable(), "a dropped entry is joinable");
}

#[test]
fn tail_drops_the_oldest_chunks_beyond_its_cap() {
    let mut tail = Tail::default();
    let big = Bytes::from(vec![0u8; TAIL_BYTES / 2 + 1]);
    tail.push(0, big.clone());
    tail.push(big.len() as u64, big.clone());
    assert_eq!(tail.get(0, u64::MAX), None);
    assert!(tail.get(big.len() as u64, u64::MAX).is_some());
}
