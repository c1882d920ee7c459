//! One conformance suite, run against both metadata stores: the embedded SQLite file
//! and a real PostgreSQL server started for the test. Each run uses two store handles
//! over the same data (two opens of the same file or URL), as two gateways would.

use std::time::Duration;

use gitgate_proto::RepoPath;
use gitgate_storage_client::metadata::embedded::EmbeddedStore;
use gitgate_storage_client::metadata::postgres::PostgresStore;
use gitgate_storage_client::metadata::{
    JobCounts, JobKind, MetadataStore, NewRepo, QueueMode, ReplicaRecord, StoreError, WriteMarker,
    NO_COPY,
};
use gitgate_storage_client::throwaway_postgres::ThrowawayPostgres;

fn repo(name: &str) -> RepoPath {
    RepoPath::parse(name).expect("valid repo")
}

fn replica(node: &str, generation: i64) -> ReplicaRecord {
    ReplicaRecord {
        node: node.into(),
        generation,
        checksum: None,
    }
}

fn new_repo(name: &str) -> NewRepo {
    NewRepo {
        repo: repo(name),
        generation: 0,
        checksum: Some("c0".into()),
        replicas: vec![replica("b", NO_COPY), replica("a", 0), replica("c", 0)],
    }
}

async fn registration(s: &dyn MetadataStore) {
    let r = repo("group/one.git");
    assert_eq!(s.get(&r).await.unwrap(), None);
    assert!(s.register(&new_repo("group/one.git")).await.unwrap());
    // A second registration changes nothing.
    let mut again = new_repo("group/one.git");
    again.generation = 7;
    assert!(!s.register(&again).await.unwrap());
    let record = s.get(&r).await.unwrap().expect("registered");
    assert_eq!(record.generation, 0);
    assert_eq!(record.checksum.as_deref(), Some("c0"));
    assert_eq!(record.primary, None);
    assert_eq!(record.write, None);
    let nodes: Vec<_> = record.replicas.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(nodes, ["a", "b", "c"], "replicas in node order");
    assert!(record.is_up_to_date("a"));
    assert!(!record.is_up_to_date("b"));
    assert!(!record.is_up_to_date("zzz"));
    assert!(s.list().await.unwrap().contains(&r));
}

async fn generations(s: &dyn MetadataStore, other: &dyn MetadataStore) {
    let r = repo("gens.git");
    s.register(&new_repo("gens.git")).await.unwrap();
    s.set_primary(&r, "a").await.unwrap();
    let marker = WriteMarker {
        node: "a".into(),
        owner: "gw-1".into(),
        started_ms: 1234,
    };
    s.begin_write(&r, &marker).await.unwrap();
    // The other handle sees the marker: that is what crash repair relies on.
    let seen = other.get(&r).await.unwrap().unwrap();
    assert_eq!(seen.write.as_ref(), Some(&marker));
    assert_eq!(seen.primary.as_deref(), Some("a"));

    assert_eq!(
        other.get(&r).await.unwrap().unwrap().acked,
        0,
        "registered: acknowledged"
    );
    let generation = s
        .finish_write(&r, &["a".to_owned()], Some("c1"), true)
        .await
        .unwrap();
    assert_eq!(generation, 1);
    let record = other.get(&r).await.unwrap().unwrap();
    assert_eq!(record.generation, 1);
    assert_eq!(record.acked, 1, "an acknowledged write moves acked along");
    assert_eq!(record.checksum.as_deref(), Some("c1"));
    assert_eq!(record.write, None, "finishing clears the marker");
    assert!(record.is_up_to_date("a"));
    assert!(!record.is_up_to_date("c"), "non-holders fall behind");
    assert_eq!(record.replica("a").unwrap().checksum.as_deref(), Some("c1"));

    // Replication raises a generation...
    s.record_replica(&r, "c", 1, Some("c1")).await.unwrap();
    assert!(other.get(&r).await.unwrap().unwrap().is_up_to_date("c"));
    // ...and never lowers it.
    s.record_replica(&r, "c", 0, Some("old")).await.unwrap();
    let record = other.get(&r).await.unwrap().unwrap();
    assert_eq!(record.replica("c").unwrap().generation, 1);
    assert_eq!(record.replica("c").unwrap().checksum.as_deref(), Some("c1"));
    // A node that was not a replica becomes one.
    s.record_replica(&r, "d", 1, Some("c1")).await.unwrap();
    assert!(other.get(&r).await.unwrap().unwrap().is_up_to_date("d"));

    // A write that changed nothing only clears its marker.
    s.begin_write(&r, &marker).await.unwrap();
    s.clear_write(&r).await.unwrap();
    let record = other.get(&r).await.unwrap().unwrap();
    assert_eq!((record.generation, record.write), (1, None));

    // A write not acknowledged yet leaves acked where it was...
    let unacked = s
        .finish_write(&r, &["a".to_owned()], Some("c2"), false)
        .await
        .unwrap();
    let record = other.get(&r).await.unwrap().unwrap();
    assert_eq!((record.generation, record.acked), (unacked, 1));
    // ...until it is acknowledged; acknowledging never goes back.
    s.acknowledge(&r, unacked).await.unwrap();
    s.acknowledge(&r, 1).await.unwrap();
    assert_eq!(other.get(&r).await.unwrap().unwrap().acked, unacked);

    // Finishing an unregistered repository is an error, not a silent no-op.
    assert!(s
        .finish_write(&repo("ghost.git"), &["a".to_owned()], None, true)
        .await
        .is_err());

    s.forget(&r).await.unwrap();
    assert_eq!(other.get(&r).await.unwrap(), None);
    assert!(!other.list().await.unwrap().contains(&r));
}

async fn jobs(s: &dyn MetadataStore, other: &dyn MetadataStore) {
    let r = repo("jobs.git");
    let lease = Duration::from_secs(10);
    let now = 1_000_000;
    s.enqueue(&r, "b", JobKind::Update, now, QueueMode::Rearm)
        .await
        .unwrap();
    s.enqueue(&r, "b", JobKind::Update, now + 5, QueueMode::Rearm)
        .await
        .unwrap();
    s.enqueue(&r, "c", JobKind::Delete, now, QueueMode::Rearm)
        .await
        .unwrap();
    let queued = other.jobs_of(&r).await.unwrap();
    assert_eq!(queued.len(), 2, "one job per repository and target");
    assert_eq!(
        s.job_counts(now).await.unwrap(),
        JobCounts {
            queued: 2,
            running: 0,
            retrying: 0,
            oldest_ms: now,
        }
    );

    let first = s.claim("gw-1", now, lease, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    let second = other.claim("gw-2", now, lease, 10).await.unwrap();
    assert_eq!(second.len(), 1, "a leased job is not handed out twice");
    assert_ne!(first[0].target, second[0].target);
    assert!(other
        .claim("gw-2", now, lease, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(first[0].attempts, 1);
    let delete = [&first[0], &second[0]]
        .into_iter()
        .find(|j| j.target == "c")
        .unwrap();
    assert_eq!(delete.kind, JobKind::Delete);
    assert_eq!(s.job_counts(now).await.unwrap().running, 2);

    // Only the lease holder can renew its lease.
    assert!(s.renew(&first[0], "gw-1", now + 20_000).await.unwrap());
    assert!(!other.renew(&first[0], "gw-2", now + 20_000).await.unwrap());
    // A renewed lease outlives the original expiry.
    assert_eq!(s.job_counts(now + 15_000).await.unwrap().running, 1);
    // Only the lease holder can complete or hand back a job.
    assert!(!other.complete(&first[0], "gw-2", now).await.unwrap());
    assert_eq!(s.jobs_of(&r).await.unwrap().len(), 2);
    assert!(s.complete(&first[0], "gw-1", now).await.unwrap());
    assert_eq!(s.jobs_of(&r).await.unwrap().len(), 1);

    // A failed job waits for its retry time.
    other
        .retry(&second[0], "gw-2", "node down", now + 60_000)
        .await
        .unwrap();
    assert!(s
        .claim("gw-1", now + 1, lease, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.job_counts(now + 1).await.unwrap().retrying, 1);
    // Waking its target makes it due at once.
    s.wake(&second[0].target, now + 2).await.unwrap();
    let again = s.claim("gw-1", now + 2, lease, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 2);
    // An expired lease is taken over.
    let later = now + 2 + 10_001;
    let taken = other.claim("gw-2", later, lease, 10).await.unwrap();
    assert_eq!(taken.len(), 1, "expired lease is reclaimed");
    assert!(!s.complete(&again[0], "gw-1", later).await.unwrap());
    assert_eq!(
        other.jobs_of(&r).await.unwrap().len(),
        1,
        "old holder lost it"
    );
    // A change queued while a worker runs the job is noted on it: the job keeps its
    // lease (no second copy into the target starts) and its worker makes another pass
    // instead of completing it.
    for _ in 0..3 {
        s.enqueue(
            &r,
            &taken[0].target,
            JobKind::Update,
            later,
            QueueMode::Rearm,
        )
        .await
        .unwrap();
    }
    assert!(
        s.claim("gw-1", later, lease, 10).await.unwrap().is_empty(),
        "a running job keeps its lease"
    );
    assert!(
        s.lease_target(&r, &taken[0].target, "gw-1", later, lease)
            .await
            .unwrap()
            .is_none(),
        "nor can a synchronous copy take it"
    );
    assert!(!other.complete(&taken[0], "gw-2", later + 7).await.unwrap());
    let rerun = s.claim("gw-1", later + 7, lease, 10).await.unwrap();
    assert_eq!(rerun.len(), 1, "one more pass for three changes");
    assert_eq!(rerun[0].attempts, 1, "a new change, not a retry");
    // IfMissing leaves an existing job (and its lease) alone.
    other
        .enqueue(
            &r,
            &rerun[0].target,
            JobKind::Update,
            later,
            QueueMode::IfMissing,
        )
        .await
        .unwrap();
    assert!(s.complete(&rerun[0], "gw-1", later).await.unwrap());
    assert!(s.jobs_of(&r).await.unwrap().is_empty());
    other
        .enqueue(&r, "z", JobKind::Update, later, QueueMode::IfMissing)
        .await
        .unwrap();
    assert_eq!(
        s.jobs_of(&r).await.unwrap().len(),
        1,
        "IfMissing queues a missing job"
    );
    let last = s.claim("gw-1", later, lease, 10).await.unwrap();
    assert!(s.complete(&last[0], "gw-1", later).await.unwrap());
    assert_eq!(
        s.job_counts(later).await.unwrap(),
        JobCounts {
            oldest_ms: later,
            ..JobCounts::default()
        }
    );

    // Backoff survives new changes: a failed job stays put when a push comes in.
    s.enqueue(&r, "y", JobKind::Update, later, QueueMode::Rearm)
        .await
        .unwrap();
    let y = s.claim("gw-1", later, lease, 10).await.unwrap();
    s.retry(&y[0], "gw-1", "down", later + 30_000)
        .await
        .unwrap();
    other
        .enqueue(&r, "y", JobKind::Update, later + 1, QueueMode::Rearm)
        .await
        .unwrap();
    assert!(s
        .claim("gw-1", later + 2, lease, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.job_counts(later + 10).await.unwrap().oldest_ms,
        later,
        "the lag counts from the oldest change"
    );
    // A synchronous copy takes a free job's lease (creating a job if none), once.
    let copy = s
        .lease_target(&r, "y", "gw-2", later + 3, lease)
        .await
        .unwrap();
    assert!(copy.is_some(), "a waiting job's lease is free");
    assert!(other
        .lease_target(&r, "y", "gw-1", later + 3, lease)
        .await
        .unwrap()
        .is_none());
    assert!(s.complete(&copy.unwrap(), "gw-2", later + 4).await.unwrap());
    let fresh = s.lease_target(&r, "x", "gw-2", later, lease).await.unwrap();
    assert!(fresh.is_some());
    assert!(s.complete(&fresh.unwrap(), "gw-2", later).await.unwrap());
    assert!(s.jobs_of(&r).await.unwrap().is_empty());
}

async fn locks(s: &dyn MetadataStore, other: &dyn MetadataStore) {
    let r = repo("locked.git");
    let held = s.lock(&r, Duration::from_secs(1)).await.unwrap();
    assert!(s.try_lock(&r).await.unwrap().is_none());
    assert!(other.try_lock(&r).await.unwrap().is_none());
    match other.lock(&r, Duration::from_millis(200)).await {
        Err(StoreError::LockTimeout(locked)) => assert_eq!(locked, r),
        other => panic!("expected a lock timeout, got {other:?}"),
    }
    // Other repositories are independent.
    let unrelated = other.try_lock(&repo("free.git")).await.unwrap();
    assert!(unrelated.is_some());
    // A waiter gets the lock once it is released.
    let waiter = {
        let r = r.clone();
        async move { other.lock(&r, Duration::from_secs(5)).await }
    };
    let release = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(held);
    };
    let (got, ()) = tokio::join!(waiter, release);
    let got = got.expect("lock after release");
    assert!(s.try_lock(&r).await.unwrap().is_none());
    drop(got);
}

/// A record is one snapshot: while one handle records writes that every replica holds,
/// the other never reads a repository generation paired with older replica rows (which
/// routing would see as "every replica out of date").
async fn snapshots(writer: &dyn MetadataStore, reader: &dyn MetadataStore) {
    const WRITES: usize = 300;
    let r = repo("snapshot.git");
    writer.register(&new_repo("snapshot.git")).await.unwrap();
    let holders = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
    writer
        .finish_write(&r, &holders, Some("c1"), true)
        .await
        .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let write = async {
        for i in 0..WRITES {
            writer
                .finish_write(&r, &holders, Some(&format!("c{i}")), true)
                .await
                .unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let read = async {
        let (mut reads, mut torn) = (0usize, Vec::new());
        while !done.load(std::sync::atomic::Ordering::SeqCst) || reads < 100 {
            let record = reader.get(&r).await.unwrap().unwrap();
            reads += 1;
            if record
                .replicas
                .iter()
                .any(|x| x.generation != record.generation)
            {
                torn.push(format!("{record:?}"));
            }
        }
        (reads, torn)
    };
    let ((), (reads, torn)) = tokio::join!(write, read);
    assert!(reads >= 100, "too few reads overlapped the writes: {reads}");
    assert!(
        torn.is_empty(),
        "{} of {reads} reads were torn, e.g. {}",
        torn.len(),
        torn[0]
    );
}

async fn suite(a: &dyn MetadataStore, b: &dyn MetadataStore) {
    registration(a).await;
    generations(a, b).await;
    jobs(a, b).await;
    locks(a, b).await;
}

#[tokio::test]
async fn embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/gitgate.db");
    let store = EmbeddedStore::open(&path).await.unwrap();
    // Locks of the embedded store are this process's (one gateway): the suite shares
    // one handle; the snapshot check needs a second connection to the file.
    suite(&store, &store.clone()).await;
    let second = EmbeddedStore::open(&path).await.unwrap();
    snapshots(&store, &second).await;
    drop(second);
    // Durable: a reopened file has everything.
    let r = repo("durable.git");
    store.register(&new_repo("durable.git")).await.unwrap();
    store
        .finish_write(&r, &["a".into()], Some("x"), true)
        .await
        .unwrap();
    drop(store);
    let reopened = EmbeddedStore::open(&path).await.unwrap();
    let record = reopened.get(&r).await.unwrap().unwrap();
    assert_eq!(record.generation, 1);
    assert!(record.is_up_to_date("a"));
}

#[tokio::test]
async fn postgres_store() {
    let server = ThrowawayPostgres::start();
    server.create_database("conformance").await;
    let url = server.url("conformance");
    let (a, b) = tokio::join!(PostgresStore::open(&url), PostgresStore::open(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    suite(&a, &b).await;
    snapshots(&a, &b).await;
}

/// The fleet registry: members are live until their expiry passes without renewal,
/// and one that leaves is gone at once.
#[tokio::test]
async fn postgres_fleet_membership_expires_and_leaves() {
    let server = ThrowawayPostgres::start();
    server.create_database("fleet").await;
    let url = server.url("fleet");
    let (a, b) = tokio::join!(PostgresStore::open(&url), PostgresStore::open(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    let long = std::time::Duration::from_secs(60);
    let short = std::time::Duration::from_millis(300);
    assert_eq!(
        a.heartbeat("http://a:1", long).await.unwrap(),
        ["http://a:1"]
    );
    assert_eq!(
        b.heartbeat("http://b:1", short).await.unwrap(),
        ["http://a:1", "http://b:1"]
    );
    // b stops renewing: it drops out once its expiry passed.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        a.heartbeat("http://a:1", long).await.unwrap(),
        ["http://a:1"]
    );
    // b comes back, then leaves: gone at once.
    b.heartbeat("http://b:1", long).await.unwrap();
    b.leave("http://b:1").await.unwrap();
    assert_eq!(
        a.heartbeat("http://a:1", long).await.unwrap(),
        ["http://a:1"]
    );
}

#[tokio::test]
async fn postgres_unreachable_is_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://gitgate@127.0.0.1:{port}/none");
    assert!(matches!(
        PostgresStore::open(&url).await,
        Err(StoreError::Postgres(_))
    ));
}
