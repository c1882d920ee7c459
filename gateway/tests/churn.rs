//! Replicas under churn: continuous pushes and clones through two gateways sharing a
//! real PostgreSQL, while storage nodes are SIGKILLed and restarted one at a time
//! (primaries included, in the middle of pushes).
//!
//! Checked, per mode:
//! - no acknowledged push is lost: every acknowledged commit is in its branch on every
//!   node once they converged, and in clones through both gateways;
//! - no read is older than the last push acknowledged before it started;
//! - the copies converge and pass `git fsck`;
//! - failures happen only inside the detection window after a kill (`sync`), or, in
//!   `async` mode, also while no replica holds every acknowledged write (the primary
//!   died before replicating): those are counted and reported with the replication lag.
//!
//! `sync_mode_spread_reads_never_see_a_torn_record` makes 10,000 routing decisions while
//! pushes run and expects no 503. Replication to a node that is down is retried with
//! growing backoff, not once per push, and no two copies into one replica overlap
//! (nodes refuse and count an overlapping copy).
//!
//! These tests take the whole machine (`.config/nextest.toml`), so their timing is
//! not disturbed by other tests.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::cluster::{seed_everywhere, wait_for, Gateway, Nodes, NAMES};
use support::git::{default_client, Git};
use support::{http, metric, path_str};
use tempfile::TempDir;

/// How long after a kill failures are expected: the health checks mark a dead node
/// down after 3 failed checks 100 ms apart (a killed node refuses connections at once),
/// and operations that were running on it fail.
const WINDOW: Duration = Duration::from_secs(2);

/// Health settings a little more patient than the replica tests' (a loaded 2-core
/// machine must not mark a live node down).
const HEALTH: &str = "health_interval = \"100ms\"\nhealth_timeout = \"1s\"\nhealth_failures = 3\n";

/// One operation a client did.
#[derive(Debug, Clone)]
struct Op {
    /// What it was (shown when a test fails).
    #[allow(dead_code)]
    what: String,
    started: Instant,
    ended: Instant,
    error: Option<String>,
}

/// What the churn saw.
#[derive(Default)]
struct Log {
    ops: Vec<Op>,
    /// Kill and restart times of nodes.
    kills: Vec<(usize, Instant, Instant)>,
    /// Acknowledged pushes per branch: commit and when its push ended.
    acked: [Vec<(String, Instant)>; 2],
}

struct Cluster {
    _pg: gitgate_storage_client::throwaway_postgres::ThrowawayPostgres,
    nodes: Mutex<Nodes>,
    gws: [Gateway; 2],
    tmp: TempDir,
}

fn cluster(mode: &str) -> Cluster {
    let pg = gitgate_storage_client::throwaway_postgres::ThrowawayPostgres::start();
    let metadata = format!("[metadata]\npostgres_url = \"{}\"\n", pg.url("postgres"));
    let nodes = Nodes::start();
    let storage = format!("replication_factor = 3\nreplication = \"{mode}\"\n{HEALTH}");
    let gws = [
        Gateway::start(&nodes, &storage, &metadata),
        Gateway::start(&nodes, &storage, &metadata),
    ];
    Cluster {
        _pg: pg,
        nodes: Mutex::new(nodes),
        gws,
        tmp: TempDir::new().expect("tempdir"),
    }
}

/// Push `branch` from `work` through `url` in a loop until `stop`; every push is one
/// new commit.
fn pusher(git: &Git, c: &Cluster, w: usize, work: &Path, stop: &AtomicBool, log: &Mutex<Log>) {
    let url = c.gws[w].url("churn");
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let head = git.commit_file(
            work,
            &format!("w{w}.txt"),
            &format!("{i}\n"),
            &format!("w{w} {i}"),
        );
        let started = Instant::now();
        let out = git.output(
            Some(work),
            &["push", "-q", &url, &format!("HEAD:refs/heads/w{w}")],
            &[],
        );
        let ended = Instant::now();
        let error =
            (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned());
        let mut log = log.lock().expect("log");
        if error.is_none() {
            log.acked[w].push((head, ended));
        }
        log.ops.push(Op {
            what: format!("push w{w} via gw{w}"),
            started,
            ended,
            error,
        });
        drop(log);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Clone through gateway `r` in a loop until `stop`; every clone must hold the last
/// push of each branch acknowledged before it started.
fn reader(git: &Git, c: &Cluster, r: usize, stop: &AtomicBool, log: &Mutex<Log>) {
    let url = c.gws[r].url("churn");
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let expected: Vec<Option<String>> = {
            let log = log.lock().expect("log");
            log.acked
                .iter()
                .map(|a| a.last().map(|(sha, _)| sha.clone()))
                .collect()
        };
        let dir = c.tmp.path().join(format!("read-{r}-{n}"));
        let started = Instant::now();
        let out = git.output(None, &["clone", "-q", "--bare", &url, path_str(&dir)], &[]);
        let ended = Instant::now();
        let mut error = (!out.status.success())
            .then(|| format!("clone failed: {}", String::from_utf8_lossy(&out.stderr)));
        if error.is_none() {
            for (w, sha) in expected.iter().enumerate() {
                let Some(sha) = sha else { continue };
                let contains = git.output(
                    None,
                    &[
                        "--git-dir",
                        path_str(&dir),
                        "merge-base",
                        "--is-ancestor",
                        sha,
                        &format!("refs/heads/w{w}"),
                    ],
                    &[],
                );
                if !contains.status.success() {
                    error = Some(format!("STALE: w{w} lacks acknowledged {sha}"));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        log.lock().expect("log").ops.push(Op {
            what: format!("clone via gw{r}"),
            started,
            ended,
            error,
        });
    }
}

/// Kill node after node (round robin, so the primary is among them) every `every`,
/// each down for `down`.
fn chaos(c: &Cluster, stop: &AtomicBool, log: &Mutex<Log>, every: Duration, down: Duration) {
    let mut victim = 0;
    let sleep_unless_stopped = |d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    sleep_unless_stopped(Duration::from_secs(2));
    while !stop.load(Ordering::SeqCst) {
        let killed = Instant::now();
        c.nodes.lock().expect("nodes").kill(victim);
        std::thread::sleep(down);
        c.nodes.lock().expect("nodes").restart(victim);
        log.lock()
            .expect("log")
            .kills
            .push((victim, killed, Instant::now()));
        victim = (victim + 1) % NAMES.len();
        sleep_unless_stopped(every.saturating_sub(down));
    }
}

/// Whether `op` overlapped the detection window of a kill.
fn near_a_kill(op: &Op, kills: &[(usize, Instant, Instant)]) -> bool {
    kills.iter().any(|&(_, killed, _)| {
        op.started < killed + WINDOW && op.ended + Duration::from_millis(200) > killed
    })
}

/// The refs of `name` on node `i`.
fn node_refs(git: &Git, nodes: &Nodes, i: usize, name: &str) -> String {
    git.ok(
        None,
        &[
            "--git-dir",
            path_str(&nodes.repo_dir(i, name)),
            "for-each-ref",
        ],
    )
}

/// A cluster in `mode` with repository `churn` on every node, and a clone of it for
/// each of the two pushers.
fn seeded(git: &Git, mode: &str) -> (Cluster, Vec<PathBuf>) {
    let c = cluster(mode);
    {
        let nodes = c.nodes.lock().expect("nodes");
        seed_everywhere(git, &c.gws[0], &nodes, c.tmp.path(), "churn");
    }
    let works = (0..2)
        .map(|w| {
            let dir = c.tmp.path().join(format!("pusher{w}"));
            git.ok(
                None,
                &["clone", "-q", &c.gws[w].url("churn"), path_str(&dir)],
            );
            dir
        })
        .collect();
    (c, works)
}

/// Run the churn for `duration` in `mode`; returns the log.
fn run(mode: &str, duration: Duration) -> (Cluster, Log) {
    let git = default_client();
    let (c, works) = seeded(&git, mode);
    let stop = AtomicBool::new(false);
    let log = Mutex::new(Log::default());
    std::thread::scope(|scope| {
        for (w, work) in works.iter().enumerate() {
            let (git, c, stop, log) = (&git, &c, &stop, &log);
            scope.spawn(move || pusher(git, c, w, work, stop, log));
        }
        for r in 0..2 {
            let (git, c, stop, log) = (&git, &c, &stop, &log);
            scope.spawn(move || reader(git, c, r, stop, log));
        }
        let (c, stop, log) = (&c, &stop, &log);
        scope.spawn(move || chaos(c, stop, log, Duration::from_secs(7), Duration::from_secs(3)));
        std::thread::sleep(duration);
        stop.store(true, Ordering::SeqCst);
    });
    (c, log.into_inner().expect("log"))
}

/// After the churn: every node up, the copies converge, nothing acknowledged is lost,
/// and everything is fsck-clean.
fn converge_and_check(c: &Cluster, log: &Log) {
    let git = default_client();
    for gw in &c.gws {
        for name in NAMES {
            gw.wait_health(name, true);
        }
    }
    let nodes = c.nodes.lock().expect("nodes");
    wait_for(
        Duration::from_secs(60),
        "the three copies to converge",
        || {
            let refs: Vec<String> = (0..3)
                .map(|i| node_refs(&git, &nodes, i, "churn"))
                .collect();
            refs.iter().all(|r| *r == refs[0])
        },
    );
    for (i, name) in NAMES.iter().enumerate() {
        let dir = nodes.repo_dir(i, "churn");
        git.fsck(&dir);
        for (w, acked) in log.acked.iter().enumerate() {
            for (sha, _) in acked {
                let out = git.output(
                    None,
                    &[
                        "--git-dir",
                        path_str(&dir),
                        "merge-base",
                        "--is-ancestor",
                        sha,
                        &format!("refs/heads/w{w}"),
                    ],
                    &[],
                );
                assert!(
                    out.status.success(),
                    "node {name} lost acknowledged push {sha} of w{w}"
                );
            }
        }
    }
    for gw in &c.gws {
        let dir = c.tmp.path().join(format!("final-{}", gw.server.pid()));
        git.ok(
            None,
            &["clone", "-q", "--bare", &gw.url("churn"), path_str(&dir)],
        );
        git.fsck(&dir);
        for (w, acked) in log.acked.iter().enumerate() {
            if let Some((sha, _)) = acked.last() {
                let out = git.output(
                    None,
                    &[
                        "--git-dir",
                        path_str(&dir),
                        "merge-base",
                        "--is-ancestor",
                        sha,
                        &format!("refs/heads/w{w}"),
                    ],
                    &[],
                );
                assert!(out.status.success(), "final clone lacks {sha}");
            }
        }
        // No two copies into one replica ever overlapped.
        for (node, name) in nodes.nodes.iter().zip(NAMES) {
            let scrape = http::get(node.server.authority(), "/-/metrics").expect("scrape");
            let text = String::from_utf8_lossy(&scrape.body).into_owned();
            assert!(text.contains("gitgate_node_replication_overlaps_total"));
            assert_eq!(
                metric(&text, "gitgate_node_replication_overlaps_total", &[]),
                0.0,
                "overlapping copies into {name}"
            );
        }
    }
}

/// The failures of `log` outside the detection window of a kill, after checking that
/// no read was stale; and how many failures anywhere were the gateway refusing because
/// no replica held every acknowledged write.
fn failures(log: &Log) -> (Vec<Op>, usize) {
    let stale: Vec<&Op> = log
        .ops
        .iter()
        .filter(|op| op.error.as_deref().is_some_and(|e| e.starts_with("STALE")))
        .collect();
    assert!(stale.is_empty(), "stale reads: {stale:#?}");
    let outside: Vec<Op> = log
        .ops
        .iter()
        .filter(|op| op.error.is_some() && !near_a_kill(op, &log.kills))
        .cloned()
        .collect();
    let refused = log
        .ops
        .iter()
        .filter(|op| op.error.as_deref().is_some_and(unavailable))
        .count();
    (outside, refused)
}

/// Whether `error` is the gateway refusing because no replica holds every acknowledged
/// write (a 503 before any body: git shows its text on the ref advertisement, only the
/// status on an RPC).
fn unavailable(error: &str) -> bool {
    error.contains("no up-to-date replica") || error.contains("503")
}

fn report(mode: &str, c: &Cluster, log: &Log) {
    let total = log.ops.len();
    let failed = log.ops.iter().filter(|op| op.error.is_some()).count();
    let pushes = log.acked.iter().map(Vec::len).sum::<usize>();
    let lag = c
        .gws
        .iter()
        .map(|gw| {
            metric(&gw.scrape(), "gitgate_replication_latency_seconds_sum", &[])
                / metric(
                    &gw.scrape(),
                    "gitgate_replication_latency_seconds_count",
                    &[],
                )
                .max(1.0)
        })
        .fold(0.0f64, f64::max);
    for &(victim, killed, restarted) in &log.kills {
        let after: Vec<&Op> = log
            .ops
            .iter()
            .filter(|op| {
                op.error.is_some()
                    && op.ended > killed
                    && op.started < killed + Duration::from_secs(7)
            })
            .collect();
        let last = after
            .iter()
            .map(|op| op.ended.saturating_duration_since(killed))
            .max()
            .unwrap_or_default();
        eprintln!(
            "  kill of {} (down {:?}): {} failed operations, the last {last:?} after the kill",
            NAMES[victim],
            restarted.saturating_duration_since(killed),
            after.len()
        );
    }
    let (outside, refused) = failures(log);
    eprintln!(
        "churn ({mode}): {total} operations, {pushes} acknowledged pushes, {} kills; {failed} failed: {} inside a {WINDOW:?} detection window after a kill, {} outside; {refused} of all failures were refusals because no replica held every acknowledged write; mean replication latency {lag:.3} s",
        log.kills.len(),
        failed - outside.len(),
        outside.len(),
    );
}

#[test]
fn sync_mode_under_churn_loses_nothing_and_stays_available() {
    let (c, log) = run("sync", Duration::from_secs(30));
    report("sync", &c, &log);
    let (outside, _) = failures(&log);
    if !outside.is_empty() {
        let nodes = c.nodes.lock().expect("nodes");
        for (node, name) in nodes.nodes.iter().zip(NAMES) {
            let text = node.server.log_text();
            let problems: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect();
            eprintln!(
                "{name}: {} warnings and errors, the last ones:\n{}",
                problems.len(),
                problems[problems.len().saturating_sub(8)..].join("\n")
            );
        }
    }
    assert!(
        outside.is_empty(),
        "{} failures outside the detection window: {:#?}",
        outside.len(),
        &outside[..outside.len().min(5)]
    );
    assert!(log.kills.len() >= 3, "every node is killed at least once");
    assert!(log.acked.iter().all(|a| a.len() >= 20), "too few pushes");
    converge_and_check(&c, &log);
}

#[test]
fn async_mode_under_churn_loses_nothing() {
    let (c, log) = run("async", Duration::from_secs(30));
    report("async", &c, &log);
    let (outside, _) = failures(&log);
    let other: Vec<&Op> = outside
        .iter()
        .filter(|op| !op.error.as_deref().is_some_and(unavailable))
        .collect();
    assert!(other.is_empty(), "unexpected failures: {other:#?}");
    assert!(log.kills.len() >= 3, "every node is killed at least once");
    converge_and_check(&c, &log);
}

/// 10,000 routing decisions (ref advertisements through both gateways) while two
/// clients push: none may find every replica "out of date".
#[test]
fn sync_mode_spread_reads_never_see_a_torn_record() {
    let git = default_client();
    let (c, works) = seeded(&git, "sync");
    let stop = AtomicBool::new(false);
    let log = Mutex::new(Log::default());
    let refused = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (w, work) in works.iter().enumerate() {
            let (git, c, stop, log) = (&git, &c, &stop, &log);
            scope.spawn(move || pusher(git, c, w, work, stop, log));
        }
        let readers: Vec<_> = (0..4)
            .map(|r| {
                let (c, refused) = (&c, &refused);
                scope.spawn(move || {
                    let gw = &c.gws[r % 2];
                    for _ in 0..2_500 {
                        let resp = http::get(
                            gw.server.authority(),
                            "/churn.git/info/refs?service=git-upload-pack",
                        )
                        .expect("advertisement");
                        if resp.status != 200 {
                            refused.lock().expect("refused").push(format!(
                                "{}: {}",
                                resp.status,
                                String::from_utf8_lossy(&resp.body)
                            ));
                        }
                    }
                })
            })
            .collect();
        for r in readers {
            r.join().expect("reader");
        }
        stop.store(true, Ordering::SeqCst);
    });
    let refused = refused.into_inner().expect("refused");
    let log = log.into_inner().expect("log");
    let pushes = log.acked.iter().map(Vec::len).sum::<usize>();
    eprintln!(
        "10000 routing decisions during {pushes} pushes: {} refused",
        refused.len()
    );
    assert!(pushes >= 10, "the pushes did not run alongside: {pushes}");
    assert!(
        refused.is_empty(),
        "{:#?}",
        &refused[..refused.len().min(5)]
    );
    assert!(
        log.ops.iter().all(|op| op.error.is_none()),
        "a push failed with every node up"
    );
}

/// A node down under pushes: replication to it is retried with growing backoff by each
/// gateway, not once per push, and it catches up once back.
#[test]
fn replication_to_a_dead_node_backs_off_under_pushes() {
    let git = default_client();
    let pg = gitgate_storage_client::throwaway_postgres::ThrowawayPostgres::start();
    let metadata = format!("[metadata]\npostgres_url = \"{}\"\n", pg.url("postgres"));
    let mut nodes = Nodes::start();
    let storage = format!("replication_factor = 3\nreplication_retry_max = \"16s\"\n{HEALTH}");
    let gws = [
        Gateway::start(&nodes, &storage, &metadata),
        Gateway::start(&nodes, &storage, &metadata),
    ];
    let tmp = TempDir::new().expect("tempdir");
    let (work, _) = seed_everywhere(&git, &gws[0], &nodes, tmp.path(), "down");
    nodes.kill(2);
    for gw in &gws {
        gw.wait_health(NAMES[2], false);
    }
    let started = Instant::now();
    let mut pushes = 0;
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(60) {
        pushes += 1;
        last = git.commit_file(
            &work,
            "down.txt",
            &format!("{pushes}\n"),
            "while n3 is down",
        );
        git.ok(
            Some(&work),
            &[
                "push",
                "-q",
                &gws[pushes % 2].url("down"),
                "HEAD:refs/heads/main",
            ],
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let attempts: Vec<usize> = gws
        .iter()
        .map(|gw| {
            gw.server
                .log_text()
                .lines()
                .filter(|l| l.contains("replication failed") && l.contains("n3"))
                .count()
        })
        .collect();
    eprintln!("{pushes} pushes in 60 s with n3 down; attempts to replicate to it per gateway: {attempts:?}");
    assert!(pushes >= 100, "too few pushes: {pushes}");
    // 0.5 s doubling to 16 s is at most 10 attempts in 60 s for the one job, whichever
    // gateway runs it; once per push would be over 100.
    assert!(
        attempts.iter().sum::<usize>() <= 12,
        "replication retried too often: {attempts:?}"
    );
    nodes.restart(2);
    support::cluster::wait_replicated(&git, &nodes, &[0, 1, 2], "down", &last);
    let scrape = http::get(nodes.nodes[2].server.authority(), "/-/metrics").expect("scrape");
    assert!(
        String::from_utf8_lossy(&scrape.body).contains("gitgate_node_replication_overlaps_total")
    );
    assert_eq!(
        metric(
            &String::from_utf8_lossy(&scrape.body),
            "gitgate_node_replication_overlaps_total",
            &[]
        ),
        0.0
    );
}
