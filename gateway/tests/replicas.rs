//! Replicas end to end: three `gitgate-node` processes behind real `gitgate` processes,
//! driven by real git clients. Nodes and gateways are killed with SIGKILL.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::cluster::{
    clone, node_main, seed, seed_everywhere, wait_for, wait_replicated, Gateway, Nodes, FAST, NAMES,
};
use support::git::{default_client, Git};
use support::hooked_git::{HookedGit, Mode};
use support::{metric, path_str};
use tempfile::TempDir;

/// Make the next push to `name` on each node in `which` stall in its post-receive hook,
/// which runs once the refs are updated, after touching `reached`. Returns the hooks.
fn stall_pushes(
    nodes: &Nodes,
    which: &[usize],
    name: &str,
    reached: &Path,
) -> Vec<std::path::PathBuf> {
    which
        .iter()
        .map(|&i| {
            let hook = nodes.repo_dir(i, name).join("hooks/post-receive");
            std::fs::write(
                &hook,
                format!("#!/bin/sh\ntouch '{}'\nsleep 30\n", reached.display()),
            )
            .unwrap();
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
            hook
        })
        .collect()
}

/// Start pushing `main` from `work` to `url` and wait until a node has applied it (a
/// hook from [`stall_pushes`] touched `reached`); returns the still-running push.
fn push_until_stalled(git: &Git, work: &Path, url: &str, reached: &Path) -> std::process::Child {
    let push = git
        .cmd(Some(work))
        .args(["push", "-q", url, "main"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        Duration::from_secs(20),
        "refs updated on the primary",
        || reached.exists(),
    );
    push
}

/// Commit in `work` and push through `url`; returns the commit.
fn commit_and_push(git: &Git, work: &Path, url: &str, tag: &str) -> String {
    let head = git.commit_file(work, "change.txt", &format!("{tag}\n"), tag);
    git.ok(Some(work), &["push", "-q", url, "main"]);
    head
}

#[test]
fn reads_spread_and_skip_a_stale_replica_until_it_catches_up() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let mut nodes = Nodes::start();
    let gw = Gateway::start(&nodes, "replication_factor = 3\n", "");
    let (work, first) = seed_everywhere(&git, &gw, &nodes, tmp.path(), "spread");

    // All three are up to date once their jobs finished: reads spread over them.
    gw.wait_jobs_done();
    let before = gw.reads();
    // 24 clones are 48 reads, about 16 per node; fewer than 6 on one node would be
    // more than three standard deviations off an even random spread.
    for i in 0..24 {
        let head = clone(&git, &gw.url("spread"), &tmp.path().join(format!("a{i}"))).unwrap();
        assert_eq!(head, first);
    }
    let after = gw.reads();
    for n in 0..3 {
        assert!(
            after[n] - before[n] >= 6,
            "reads not spread: before {before:?} after {after:?}"
        );
    }

    // n3 misses a push while it is down.
    let stale = 2;
    nodes.kill(stale);
    gw.wait_health(NAMES[stale], false);
    let second = commit_and_push(&git, &work, &gw.url("spread"), "while n3 is down");
    wait_replicated(&git, &nodes, &[0, 1], "spread", &second);
    assert_eq!(
        node_main(&git, &nodes, stale, "spread").as_deref(),
        Some(first.as_str())
    );

    // Back up but stale: no read may go to it until it has caught up.
    nodes.restart(stale);
    let started = Instant::now();
    let mut i = 0;
    let mut caught_up = false;
    while started.elapsed() < Duration::from_secs(30) {
        let on_stale = node_main(&git, &nodes, stale, "spread");
        let reads_before = gw.reads()[stale];
        let head = clone(&git, &gw.url("spread"), &tmp.path().join(format!("b{i}"))).unwrap();
        i += 1;
        assert_eq!(head, second, "a read was served without the last push");
        if on_stale.as_deref() != Some(second.as_str()) {
            // It lacked the push when this read started: it must not have served it.
            let reads_after = gw.reads()[stale];
            let caught_meanwhile =
                node_main(&git, &nodes, stale, "spread").as_deref() == Some(second.as_str());
            assert!(
                reads_after == reads_before || caught_meanwhile,
                "a read went to the stale replica"
            );
        } else {
            caught_up = true;
            break;
        }
    }
    assert!(
        caught_up,
        "the restarted replica did not catch up by itself"
    );
    // Once caught up it serves reads again.
    wait_for(
        Duration::from_secs(10),
        "stale replica serving again",
        || {
            let before = gw.reads()[stale];
            for j in 0..3 {
                let dir = tmp.path().join(format!("c{i}-{j}"));
                assert_eq!(clone(&git, &gw.url("spread"), &dir).unwrap(), second);
            }
            i += 1;
            gw.reads()[stale] > before
        },
    );
}

#[test]
fn a_node_killed_during_200_operations() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let mut nodes = Nodes::start();
    let gw = Gateway::start(&nodes, "replication_factor = 3\n", "");
    let (_, head) = seed_everywhere(&git, &gw, &nodes, tmp.path(), "busy");

    gw.wait_jobs_done();

    let fetcher = tmp.path().join("fetcher");
    clone(&git, &gw.url("busy"), &fetcher).unwrap();
    // Detection: 3 failed checks 100 ms apart, plus the check timeout.
    let window = Duration::from_millis(3 * 100 + 300 + 500);
    let mut killed_at = None;
    let mut failures_in_window = 0;
    for op in 0..200 {
        if op == 40 {
            nodes.kill(1);
            killed_at = Some(Instant::now());
        }
        let result = if op % 2 == 0 {
            let dir = tmp.path().join(format!("clone-{op}"));
            clone(&git, &gw.url("busy"), &dir).inspect(|_| git.fsck(&dir))
        } else {
            let out = git.output(
                None,
                &[
                    "--git-dir",
                    path_str(&fetcher),
                    "fetch",
                    "-q",
                    &gw.url("busy"),
                    "+refs/heads/*:refs/heads/*",
                ],
                &[],
            );
            if out.status.success() {
                git.fsck(&fetcher);
                Ok(head.clone())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        };
        let after_window = killed_at.is_some_and(|t| t.elapsed() > window);
        match result {
            Ok(got) => assert_eq!(got, head),
            Err(err) if !after_window && killed_at.is_some() => {
                failures_in_window += 1;
                eprintln!("op {op} failed inside the detection window: {err}");
            }
            Err(err) => panic!("op {op} failed: {err}"),
        }
    }
    assert!(
        !gw.healthy(NAMES[1]),
        "the killed node is still considered up"
    );
    // Failures before the first byte are retried on another replica, so even the
    // detection window should be clean.
    assert!(
        failures_in_window <= 2,
        "{failures_in_window} failures in the window"
    );

    // With every replica down, reads fail at once with a 503 that says why.
    nodes.kill(0);
    nodes.kill(2);
    gw.wait_health(NAMES[0], false);
    gw.wait_health(NAMES[2], false);
    let err = git.fails(None, &["ls-remote", &gw.url("busy")]);
    assert!(err.contains("503"), "{err}");
    assert!(err.contains("no up-to-date replica of busy"), "{err}");
}

#[test]
fn read_your_writes_over_200_push_clone_cycles() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let nodes = Nodes::start();
    let gw = Gateway::start(
        &nodes,
        "replication_factor = 3\nreplication = \"async\"\n",
        "",
    );
    let work = seed(&git, &gw, tmp.path(), "ryw");
    let url = gw.url("ryw");
    let mut last = String::new();
    for cycle in 0..200 {
        last = commit_and_push(&git, &work, &url, &format!("cycle {cycle}"));
        let dir = tmp.path().join(format!("c{cycle}"));
        let seen = clone(&git, &url, &dir).unwrap();
        assert_eq!(seen, last, "cycle {cycle}: the clone missed the push");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // The other replicas were only kept out while they lacked the push: once caught up,
    // reads go to them again.
    wait_replicated(&git, &nodes, &[0, 1, 2], "ryw", &last);
    gw.wait_jobs_done();
    let before = gw.reads();
    for i in 0..12 {
        let dir = tmp.path().join(format!("settled{i}"));
        assert_eq!(clone(&git, &url, &dir).unwrap(), last);
    }
    let after = gw.reads();
    let used = (0..3).filter(|&n| after[n] > before[n]).count();
    assert!(
        used >= 2,
        "reads never left one node: {before:?} -> {after:?}"
    );
}

#[test]
fn sync_mode_keeps_an_acknowledged_push_when_the_primary_dies() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let mut nodes = Nodes::start();
    let gw = Gateway::start(
        &nodes,
        "replication_factor = 3\nreplication = \"sync\"\n",
        "",
    );
    let (work, _) = seed_everywhere(&git, &gw, &nodes, tmp.path(), "durable");
    let url = gw.url("durable");

    let pushes: Vec<u64> = (0..3).map(|i| nodes.runs(i, "receive-pack")).collect();
    let pushed = commit_and_push(&git, &work, &url, "acknowledged");
    let primary = (0..3)
        .find(|&i| nodes.runs(i, "receive-pack") > pushes[i])
        .expect("some node took the push");
    // Acknowledged in sync mode: a majority holds it before the client heard back.
    let holding = (0..3)
        .filter(|&i| node_main(&git, &nodes, i, "durable").as_deref() == Some(pushed.as_str()))
        .count();
    assert!(
        holding >= 2,
        "only {holding} replicas held an acknowledged push"
    );
    nodes.kill(primary);

    // Served from the survivors at once (a refused connection is retried elsewhere)...
    for i in 0..5 {
        let dir = tmp.path().join(format!("after-{i}"));
        assert_eq!(clone(&git, &url, &dir).unwrap(), pushed);
        git.fsck(&dir);
    }
    // ...and a later push goes to a new primary.
    gw.wait_health(NAMES[primary], false);
    let later = commit_and_push(&git, &work, &url, "after failover");
    let survivors: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
    let holding = survivors
        .iter()
        .filter(|&&i| node_main(&git, &nodes, i, "durable").as_deref() == Some(later.as_str()))
        .count();
    assert_eq!(holding, 2, "sync push after failover not on both survivors");
    let dir = tmp.path().join("final");
    assert_eq!(clone(&git, &url, &dir).unwrap(), later);
}

#[test]
fn a_gateway_killed_mid_push_leaves_nothing_lost_or_stale() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let nodes = Nodes::start();
    let mut gw = Gateway::start(&nodes, "replication_factor = 3\n", "");
    let (work, _) = seed_everywhere(&git, &gw, &nodes, tmp.path(), "crash");
    let url = gw.url("crash");

    // The node has updated the refs when post-receive runs; the hook then stalls the
    // push so the gateway can be killed before it records the write.
    let reached = tmp.path().join("refs-updated");
    let hooks = stall_pushes(&nodes, &[0, 1, 2], "crash", &reached);
    let pushed = git.commit_file(
        &work,
        "crash.txt",
        "lost?\n",
        "pushed while the gateway dies",
    );
    let mut push = push_until_stalled(&git, &work, &url, &reached);
    gw.kill_and_restart();
    let _ = push.kill();
    let _ = push.wait();
    for hook in hooks {
        std::fs::remove_file(hook).unwrap();
    }
    let holders: Vec<usize> = (0..3)
        .filter(|&i| node_main(&git, &nodes, i, "crash").as_deref() == Some(pushed.as_str()))
        .collect();
    assert_eq!(holders.len(), 1, "exactly the primary took the push");

    // Every read after the restart has the pushed commit: the replicas that lack it are
    // not served until they caught up.
    let url = gw.url("crash");
    for i in 0..15 {
        let dir = tmp.path().join(format!("after-{i}"));
        assert_eq!(
            clone(&git, &url, &dir).unwrap(),
            pushed,
            "read {i} lacks the push"
        );
    }
    wait_replicated(&git, &nodes, &[0, 1, 2], "crash", &pushed);
    assert!(metric(&gw.scrape(), "gitgate_repairs_total", &["kind=\"marker\""]) >= 1.0);
    // And the repository takes writes again.
    let next = commit_and_push(&git, &work, &url, "after the crash");
    assert_eq!(clone(&git, &url, &tmp.path().join("last")).unwrap(), next);
}

#[test]
fn two_gateways_sharing_postgres_lose_no_acknowledged_push() {
    let pg = gitgate_storage_client::throwaway_postgres::ThrowawayPostgres::start();
    let metadata = format!("[metadata]\npostgres_url = \"{}\"\n", pg.url("postgres"));
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let nodes = Nodes::start();
    let gws = [
        Gateway::start(&nodes, "replication_factor = 3\n", &metadata),
        Gateway::start(&nodes, "replication_factor = 3\n", &metadata),
    ];
    let work = seed(&git, &gws[0], tmp.path(), "shared");
    let seeded = git
        .ok(Some(&work), &["rev-parse", "HEAD"])
        .trim()
        .to_owned();

    // Each worker pushes to main through its gateway, rebasing when the other got in
    // first, and checks every acknowledged push through the *other* gateway at once.
    let acknowledged: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|w| {
                let git = &git;
                let gws = &gws;
                let dir = tmp.path().join(format!("worker{w}"));
                scope.spawn(move || {
                    git.ok(None, &["clone", "-q", &gws[w].url("shared"), path_str(&dir)]);
                    let mut acked = Vec::new();
                    for i in 0..15 {
                        git.commit_file(&dir, &format!("w{w}/{i}.txt"), "x\n", &format!("w{w} {i}"));
                        let mut attempts = 0;
                        loop {
                            attempts += 1;
                            assert!(attempts < 30, "worker {w} could not push");
                            let out = git.output(Some(&dir), &["push", "-q", &gws[w].url("shared"), "main"], &[]);
                            if out.status.success() {
                                break;
                            }
                            // Rejected (the other worker pushed first) or busy: catch up.
                            let pulled = git.output(
                                Some(&dir),
                                &["pull", "-q", "--rebase", &gws[w].url("shared"), "main"],
                                &[],
                            );
                            assert!(pulled.status.success(), "pull failed: {}", String::from_utf8_lossy(&pulled.stderr));
                        }
                        let head = git.ok(Some(&dir), &["rev-parse", "HEAD"]).trim().to_owned();
                        // Read-your-writes through the other gateway.
                        let other = &gws[1 - w];
                        let seen = git.ok(None, &["ls-remote", &other.url("shared"), "refs/heads/main"]);
                        let seen = seen.split_whitespace().next().unwrap_or_default().to_owned();
                        let check = dir.with_extension(format!("check{i}"));
                        git.ok(None, &["clone", "-q", "--bare", &other.url("shared"), path_str(&check)]);
                        let contains = git.output(
                            None,
                            &["--git-dir", path_str(&check), "merge-base", "--is-ancestor", &head, "refs/heads/main"],
                            &[],
                        );
                        assert!(
                            contains.status.success(),
                            "gateway {} served a copy without the push acknowledged by gateway {w} (ls-remote saw {seen})",
                            1 - w
                        );
                        acked.push(head);
                    }
                    acked
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // Nothing acknowledged was lost, as seen through both gateways.
    for gw in &gws {
        let dir = tmp.path().join(format!("final-{}", gw.server.pid()));
        let head = clone(&git, &gw.url("shared"), &dir).unwrap();
        assert_ne!(head, seeded);
        for commit in acknowledged.iter().flatten() {
            let out = git.output(
                None,
                &[
                    "--git-dir",
                    path_str(&dir),
                    "merge-base",
                    "--is-ancestor",
                    commit,
                    "refs/heads/main",
                ],
                &[],
            );
            assert!(out.status.success(), "acknowledged {commit} is missing");
        }
    }
    // The replicas converge on the same history.
    let final_head = clone(&git, &gws[0].url("shared"), &tmp.path().join("converged")).unwrap();
    wait_replicated(&git, &nodes, &[0, 1, 2], "shared", &final_head);
}

/// Put a bare copy of `work` as repository `name` on node `i`'s disk.
fn place(git: &Git, nodes: &Nodes, i: usize, work: &Path, name: &str) {
    let dir = nodes.repo_dir(i, name);
    git.ok(
        None,
        &["clone", "-q", "--bare", path_str(work), path_str(&dir)],
    );
}

#[test]
fn disagreeing_copies_found_on_the_nodes_keep_the_newest() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let nodes = Nodes::start();
    // n1 has three commits, n2 one more; n3 has nothing.
    let work = tmp.path().join("work");
    git.ok(None, &["init", "-q", "-b", "main", path_str(&work)]);
    for i in 0..3 {
        git.commit_file(&work, "f.txt", &format!("{i}\n"), &format!("c{i}"));
    }
    place(&git, &nodes, 0, &work, "found");
    // Recency is judged by commit time: make the newer copy's tip clearly later.
    std::fs::write(work.join("f.txt"), "newest\n").unwrap();
    git.ok(Some(&work), &["add", "f.txt"]);
    let later = format!("@{} +0000", 4_000_000_000i64);
    git.ok_env(
        Some(&work),
        &["commit", "-q", "-m", "newest"],
        &[("GIT_COMMITTER_DATE", &later), ("GIT_AUTHOR_DATE", &later)],
    );
    let newest = git
        .ok(Some(&work), &["rev-parse", "HEAD"])
        .trim()
        .to_owned();
    place(&git, &nodes, 1, &work, "found");

    let gw = Gateway::start(&nodes, "replication_factor = 3\n", "");
    for i in 0..6 {
        let dir = tmp.path().join(format!("c{i}"));
        assert_eq!(clone(&git, &gw.url("found"), &dir).unwrap(), newest);
    }
    wait_replicated(&git, &nodes, &[0, 1, 2], "found", &newest);
    let scrape = gw.scrape();
    assert!(metric(&scrape, "gitgate_repairs_total", &["kind=\"diverged\""]) >= 1.0);
    assert!(metric(&scrape, "gitgate_repairs_total", &["kind=\"discovered\""]) >= 1.0);
}

#[test]
fn drift_on_an_up_to_date_replica_is_found_and_repaired() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let nodes = Nodes::start();
    let gw = Gateway::start(&nodes, "replication_factor = 3\n", "");
    let (_, head) = seed_everywhere(&git, &gw, &nodes, tmp.path(), "drift");
    // The copies are on disk; let their jobs finish recording them too (a job that
    // recorded n2 behind would otherwise repair it before the reconciler looks).
    gw.wait_jobs_done();

    // Someone rewinds main by hand on n2: the metadata still calls it up to date.
    let n2 = nodes.repo_dir(1, "drift");
    git.ok(
        None,
        &[
            "--git-dir",
            path_str(&n2),
            "update-ref",
            "refs/heads/main",
            "HEAD~1",
        ],
    );
    assert_ne!(
        node_main(&git, &nodes, 1, "drift").as_deref(),
        Some(head.as_str())
    );
    // The reconciler (every second here) notices and copies the recorded state back.
    wait_replicated(&git, &nodes, &[1], "drift", &head);
    assert!(metric(&gw.scrape(), "gitgate_repairs_total", &["kind=\"drift\""]) >= 1.0);
    for i in 0..6 {
        let dir = tmp.path().join(format!("c{i}"));
        assert_eq!(clone(&git, &gw.url("drift"), &dir).unwrap(), head);
    }
}

#[test]
fn deleting_a_repository_reaches_every_replica() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let nodes = Nodes::start();
    let admin = format!(
        "[[auth.tokens]]\nname = \"ops\"\nhash = \"{}\"\nadmin = [\"**\"]\n",
        gitgate::auth::token::hash_token("ops-secret")
    );
    let gw = Gateway::start_with(
        &nodes.storage_toml(),
        "replication_factor = 3\n",
        "",
        &admin,
    );
    seed_everywhere(&git, &gw, &nodes, tmp.path(), "doomed");

    let delete = |auth: &str| {
        support::http::raw(
            gw.server.authority(),
            format!(
                "DELETE /-/admin/repos?repo=doomed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n"
            )
            .as_bytes(),
        )
        .unwrap()
        .status
    };
    // Write access (anonymous here) is not enough; a wrong token is refused.
    assert_eq!(delete(""), 401);
    assert_eq!(delete("Authorization: Bearer nope\r\n"), 401);
    assert_eq!(delete("Authorization: Bearer ops-secret\r\n"), 204);
    for i in 0..3 {
        assert!(
            !nodes.repo_dir(i, "doomed").exists(),
            "copy left on node {i}"
        );
    }
    assert_eq!(delete("Authorization: Bearer ops-secret\r\n"), 404);
    assert!(clone(&git, &gw.url("doomed"), &tmp.path().join("gone")).is_err());
    // The name can be used again, with new history.
    let fresh = tmp.path().join("fresh");
    git.ok(None, &["init", "-q", "-b", "main", path_str(&fresh)]);
    let new_head = git.commit_file(&fresh, "new.txt", "new\n", "new life");
    git.ok(Some(&fresh), &["push", "-q", &gw.url("doomed"), "main"]);
    assert_eq!(
        clone(&git, &gw.url("doomed"), &tmp.path().join("again")).unwrap(),
        new_head
    );
    wait_replicated(&git, &nodes, &[0, 1, 2], "doomed", &new_head);
}

#[test]
fn in_process_nodes_replicate_by_path() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let roots: Vec<_> = (0..2)
        .map(|i| tmp.path().join(format!("root{i}")))
        .collect();
    let nodes_toml: String = roots
        .iter()
        .enumerate()
        .map(|(i, root)| {
            format!(
                "[[storage.nodes]]\nname = \"local{i}\"\npath = \"{}\"\n",
                root.display()
            )
        })
        .collect();
    let gw = Gateway::start_with(&nodes_toml, "replication_factor = 2\n", "", "");
    let work = seed(&git, &gw, tmp.path(), "local");
    let head = git
        .ok(Some(&work), &["rev-parse", "HEAD"])
        .trim()
        .to_owned();
    wait_for(Duration::from_secs(20), "both local copies", || {
        roots.iter().all(|root| {
            let out = git.output(
                None,
                &[
                    "--git-dir",
                    path_str(&root.join("local.git")),
                    "rev-parse",
                    "-q",
                    "--verify",
                    "refs/heads/main",
                ],
                &[],
            );
            String::from_utf8_lossy(&out.stdout).trim() == head
        })
    });
    let dir = tmp.path().join("clone");
    assert_eq!(clone(&git, &gw.url("local"), &dir).unwrap(), head);
    git.fsck(&dir);
}

#[test]
fn a_primary_killed_mid_push_is_replaced_and_repaired() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let mut nodes = Nodes::start();
    let gw = Gateway::start(&nodes, "replication_factor = 3\n", "");
    let pushes: Vec<u64> = (0..3).map(|i| nodes.runs(i, "receive-pack")).collect();
    let work = seed(&git, &gw, tmp.path(), "dies");
    let url = gw.url("dies");
    let seeded = git
        .ok(Some(&work), &["rev-parse", "HEAD"])
        .trim()
        .to_owned();
    let primary = (0..3)
        .find(|&i| nodes.runs(i, "receive-pack") > pushes[i])
        .expect("some node took the push");
    wait_replicated(&git, &nodes, &[0, 1, 2], "dies", &seeded);

    // The primary applies the next push, then dies before answering.
    let reached = tmp.path().join("applied");
    let hooks = stall_pushes(&nodes, &[primary], "dies", &reached);
    git.commit_file(&work, "x.txt", "x\n", "never acknowledged");
    let mut push = push_until_stalled(&git, &work, &url, &reached);
    nodes.kill(primary);
    let status = push.wait().unwrap();
    assert!(
        !status.success(),
        "a push whose primary died was acknowledged"
    );
    for hook in hooks {
        std::fs::remove_file(hook).unwrap();
    }

    // The next push goes to a new primary, without waiting for the dead one.
    gw.wait_health(NAMES[primary], false);
    let next = commit_and_push(&git, &work, &url, "after the primary died");
    assert!(metric(&gw.scrape(), "gitgate_repairs_total", &["kind=\"marker\""]) >= 1.0);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
    for i in 0..6 {
        let dir = tmp.path().join(format!("c{i}"));
        assert_eq!(clone(&git, &url, &dir).unwrap(), next);
    }
    wait_replicated(&git, &nodes, &survivors, "dies", &next);

    // Back, it is repaired from the others and never read from before that.
    nodes.restart(primary);
    for i in 0..10 {
        let dir = tmp.path().join(format!("back{i}"));
        assert_eq!(
            clone(&git, &url, &dir).unwrap(),
            next,
            "read {i} missed the last push"
        );
    }
    wait_replicated(&git, &nodes, &[primary], "dies", &next);
}

#[test]
fn sync_mode_refuses_to_acknowledge_without_a_majority() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let mut nodes = Nodes::start();
    let gw = Gateway::start(
        &nodes,
        "replication_factor = 3\nreplication = \"sync\"\n",
        "",
    );
    let pushes: Vec<u64> = (0..3).map(|i| nodes.runs(i, "receive-pack")).collect();
    let (work, _) = seed_everywhere(&git, &gw, &nodes, tmp.path(), "quorum");
    let url = gw.url("quorum");
    let primary = (0..3)
        .find(|&i| nodes.runs(i, "receive-pack") > pushes[i])
        .expect("some node took the push");
    let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
    for &i in &others {
        nodes.kill(i);
        gw.wait_health(NAMES[i], false);
    }
    // Only the primary is left: the push lands there but is not acknowledged...
    let lonely = git.commit_file(&work, "q.txt", "q\n", "one copy only");
    let err = git.fails(Some(&work), &["push", "-q", &url, "main"]);
    assert!(!err.is_empty());
    assert_eq!(
        node_main(&git, &nodes, primary, "quorum").as_deref(),
        Some(lonely.as_str())
    );
    // ...and pushing again does not turn it into an "Everything up-to-date" success.
    let again = git.fails(Some(&work), &["push", &url, "main"]);
    assert!(
        again.contains("503") || again.contains("majority") || again.contains("replicas"),
        "{again}"
    );
    // With one more node back, a majority holds it, and the retry succeeds.
    nodes.restart(others[0]);
    gw.wait_health(NAMES[others[0]], true);
    git.ok(Some(&work), &["push", "-q", &url, "main"]);
    assert_eq!(
        node_main(&git, &nodes, others[0], "quorum").as_deref(),
        Some(lonely.as_str())
    );
    let dir = tmp.path().join("clone");
    assert_eq!(clone(&git, &url, &dir).unwrap(), lonely);
}

/// `sync` mode, the primary SIGKILLed after it applied a push and before any other
/// replica has it: the push fails for its client, the survivors serve and take writes
/// within the detection window, and once the primary is back the copies converge on a
/// state with every acknowledged push (the unacknowledged one is dropped).
#[test]
fn sync_primary_killed_mid_push_leaves_the_survivors_serving() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let mut nodes = Nodes::start();
    let gw = Gateway::start(
        &nodes,
        "replication_factor = 3\nreplication = \"sync\"\n",
        "",
    );
    let (work, acked) = seed_everywhere(&git, &gw, &nodes, tmp.path(), "midpush");
    let url = gw.url("midpush");

    let reached = tmp.path().join("refs-updated");
    let hooks = stall_pushes(&nodes, &[0, 1, 2], "midpush", &reached);
    let lost = git.commit_file(&work, "lost.txt", "x\n", "never acknowledged");
    let mut push = push_until_stalled(&git, &work, &url, &reached);
    let primary = (0..3)
        .find(|&i| node_main(&git, &nodes, i, "midpush").as_deref() == Some(lost.as_str()))
        .expect("the primary applied the push");
    let killed = Instant::now();
    nodes.kill(primary);
    let status = push.wait().unwrap();
    assert!(
        !status.success(),
        "a push its primary died under was reported as done"
    );
    for hook in hooks {
        let _ = std::fs::remove_file(hook);
    }

    // Readable and writable from the survivors within the detection window.
    gw.wait_health(NAMES[primary], false);
    let dir = tmp.path().join("read");
    assert_eq!(
        clone(&git, &url, &dir).unwrap(),
        acked,
        "the survivors serve the acknowledged state"
    );
    git.ok(Some(&work), &["reset", "-q", "--hard", &acked]);
    let next = commit_and_push(&git, &work, &url, "after the primary died");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "failover took {:?}",
        killed.elapsed()
    );
    // The primary comes back: the copies converge on the acknowledged state.
    nodes.restart(primary);
    wait_replicated(&git, &nodes, &[0, 1, 2], "midpush", &next);
    for i in 0..3 {
        git.fsck(&nodes.repo_dir(i, "midpush"));
    }
    assert_eq!(clone(&git, &url, &tmp.path().join("last")).unwrap(), next);
}

/// `/-/ready` answers 503 once the shared metadata store is gone, and 200 before.
#[test]
fn ready_follows_the_metadata_store() {
    let pg = gitgate_storage_client::throwaway_postgres::ThrowawayPostgres::start();
    let metadata = format!("[metadata]\npostgres_url = \"{}\"\n", pg.url("postgres"));
    let nodes = Nodes::start();
    let gw = Gateway::start(&nodes, "replication_factor = 3\n", &metadata);
    let ready = || support::http::get(gw.server.authority(), "/-/ready").expect("ready");
    assert_eq!(ready().status, 200);
    drop(pg);
    wait_for(
        Duration::from_secs(15),
        "ready to fail without PostgreSQL",
        || {
            let r = ready();
            r.status == 503 && String::from_utf8_lossy(&r.body).contains("metadata store")
        },
    );
    // The process keeps serving its operational endpoints.
    assert_eq!(
        support::http::get(gw.server.authority(), "/-/health")
            .expect("health")
            .status,
        200
    );
}

/// One replica's upload-pack hangs before it answers: reads that reach it are given up
/// after `stream_idle_timeout` and served by another replica, so every clone succeeds.
#[test]
fn reads_skip_a_replica_whose_git_never_answers() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let hook = HookedGit::new(&tmp.path().join("hooked"));
    let program = hook.program();
    let nodes = Nodes::start_with_gits([Some(program.as_str()), None, None]);
    let gw = Gateway::start(
        &nodes,
        "replication_factor = 3\nstream_idle_timeout = \"2s\"\n",
        "",
    );
    let (_, head) = seed_everywhere(&git, &gw, &nodes, tmp.path(), "hang");
    hook.set(Mode::Hang);
    let url = gw.url("hang");
    let mut gave_up = false;
    for i in 0..8 {
        let dir = tmp.path().join(format!("clone-{i}"));
        assert_eq!(clone(&git, &url, &dir).expect("clone"), head);
        if gw.server.log_text().contains("node n1 sent nothing for 2s") {
            gave_up = true;
            break;
        }
    }
    assert!(gave_up, "no read reached the hung replica in 8 clones");
    assert!(gw.healthy("n1"), "a hung git made its node count as down");
}

/// While a write is in flight, a fetch that names a ref (`deepen-not`) is not cached:
/// git resolves the name against refs the write is changing, so the answer may belong
/// to neither generation. The same fetch is cached once the write is over.
#[test]
fn a_fetch_naming_a_ref_is_not_cached_while_a_write_is_in_flight() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let nodes = Nodes::start();
    let gw = Gateway::start_full(
        &nodes.storage_toml(),
        "replication_factor = 3\n",
        "",
        "",
        "[cache]\ndir = \"pack-cache\"\nmin_occurrences = 0\n",
        "127.0.0.1:0",
    );
    let (work, acked) = seed_everywhere(&git, &gw, &nodes, tmp.path(), "naming");
    let url = gw.url("naming");
    let first = git
        .ok(Some(&work), &["rev-list", "--max-parents=0", "HEAD"])
        .trim()
        .to_owned();
    // deepen-not names the first commit's tag: history up to it is left out.
    git.ok(Some(&work), &["tag", "base", &first]);
    git.ok(Some(&work), &["push", "-q", &url, "base"]);
    let mut body = Vec::new();
    for line in [
        format!("want {acked} side-band-64k ofs-delta shallow deepen-not agent=x\n"),
        "deepen-not refs/tags/base\n".to_owned(),
    ] {
        body.extend_from_slice(format!("{:04x}{line}", line.len() + 4).as_bytes());
    }
    body.extend_from_slice(b"00000009done\n");
    let lookups = || metric(&gw.scrape(), "gitgate_pack_cache_lookups_total", &[]);
    let fetch = || {
        let answer = support::http::post(
            gw.server.authority(),
            "/naming.git/git-upload-pack",
            &["Content-Type: application/x-git-upload-pack-request"],
            &body,
        )
        .expect("post");
        assert_eq!(answer.status, 200);
        assert!(
            answer.body.windows(4).any(|w| w == b"PACK"),
            "a pack: {:?}",
            String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)])
        );
    };

    // A push whose refs are updated on the nodes but not yet acknowledged.
    let hold = tmp.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    let reached = tmp.path().join("refs-updated");
    for i in 0..3 {
        let hook = nodes.repo_dir(i, "naming").join("hooks/post-receive");
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\ntouch '{}'\nwhile [ -e '{}' ]; do sleep 0.05; done\n",
                reached.display(),
                hold.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    git.commit_file(&work, "next.txt", "x\n", "in flight");
    let mut push = push_until_stalled(&git, &work, &url, &reached);
    let before = lookups();
    fetch();
    fetch();
    assert_eq!(
        lookups(),
        before,
        "a fetch naming a ref used the cache mid-write"
    );

    std::fs::remove_file(&hold).unwrap();
    assert!(push.wait().unwrap().success(), "the push failed");
    // Now it is cached like any other.
    let before = lookups();
    fetch();
    assert_eq!(lookups(), before + 1.0, "the same fetch after the write");
}

/// A fetch git refuses (a `deepen-not` naming no ref: upload-pack dies on it before
/// answering) reaches the client as git's own message, in v0 and v2, costs at most two
/// replicas' git runs (one more in case a copy is damaged, not one per replica), and
/// counts as `refused`, not as a node error; the nodes stay up and serve.
#[test]
fn a_fetch_git_refuses_gets_its_message_and_tries_two_replicas_at_most() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let nodes = Nodes::start();
    let gw = Gateway::start(&nodes, "replication_factor = 3\n", "");
    let (_, head) = seed_everywhere(&git, &gw, &nodes, tmp.path(), "refuse");
    // All three replicas up to date in the gateway's view: three to try.
    gw.wait_jobs_done();
    let url = gw.url("refuse");
    for version in ["0", "2"] {
        let dir = tmp.path().join(format!("refused-v{version}"));
        git.assert_refused_clone(&url, version, &dir);
    }
    let scrape = gw.scrape();
    let refused = metric(
        &scrape,
        "gitgate_backend_requests_total",
        &["result=\"refused\""],
    );
    assert_eq!(refused, 4.0, "two replicas per refused clone:\n{scrape}");
    assert_eq!(
        metric(
            &scrape,
            "gitgate_backend_requests_total",
            &["result=\"error\""]
        ),
        0.0
    );
    assert!(NAMES.iter().all(|n| gw.healthy(n)));
    let dir = tmp.path().join("after");
    assert_eq!(clone(&git, &url, &dir).expect("clone"), head);
}

/// git dying before it answers for a reason of the node's (here `bad object`, as on a
/// damaged copy) is not the request's fault: reads go on to the next replica until one
/// serves, so two failing copies of three still leave the repository readable, and
/// nothing counts as refused.
#[test]
fn reads_get_past_two_failing_copies_to_the_third() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let real = std::process::Command::new("sh")
        .args(["-c", "command -v git"])
        .output()
        .expect("sh");
    let real = String::from_utf8(real.stdout).expect("utf-8");
    let wrapper = tmp.path().join("damaged-git");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \" $* \" in\n  *\" --advertise-refs \"*) ;;\n  *\" upload-pack \"*) cat >/dev/null; echo 'fatal: bad object 0123456789012345678901234567890123456789' >&2; exit 128 ;;\nesac\nexec {} \"$@\"\n",
            real.trim()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut nodes = Nodes::start();
    let gw = Gateway::start(&nodes, "replication_factor = 3\n", "");
    let (_, head) = seed_everywhere(&git, &gw, &nodes, tmp.path(), "damaged");
    gw.wait_jobs_done();
    // n1 and n2 come back running the failing git.
    for i in [0, 1] {
        let config = nodes.nodes[i].config.clone();
        let mut text = std::fs::read_to_string(&config).expect("node config");
        text.push_str(&format!("git = \"{}\"\n", path_str(&wrapper)));
        std::fs::write(&config, text).expect("node config");
        nodes.kill(i);
        nodes.restart(i);
    }
    for name in NAMES {
        gw.wait_health(name, true);
    }
    let url = gw.url("damaged");
    // Each clone its own request (depth), so none is answered from the pack cache.
    for depth in 1..=12 {
        let dir = tmp.path().join(format!("clone-{depth}"));
        let depth = depth.to_string();
        git.ok(
            None,
            &[
                "clone",
                "-q",
                "--bare",
                "--depth",
                &depth,
                &url,
                path_str(&dir),
            ],
        );
        let got = git.ok(
            None,
            &["--git-dir", path_str(&dir), "rev-parse", "refs/heads/main"],
        );
        assert_eq!(got.trim(), head, "clone at depth {depth}");
    }
    let scrape = gw.scrape();
    assert_eq!(
        metric(
            &scrape,
            "gitgate_backend_requests_total",
            &["result=\"refused\""]
        ),
        0.0,
        "a failing copy is not the request's fault:\n{scrape}"
    );
}

/// git dying on a request after it started answering (a `deepen-not` that excludes
/// every commit: upload-pack sends `shallow-info`, then dies) fails that clone as git
/// itself does, but never counts as a node that cannot be reached: however often a
/// client sends it, every node stays up and serves.
#[test]
fn a_request_git_dies_on_mid_answer_never_counts_as_a_node_down() {
    let git = default_client();
    let tmp = TempDir::new().unwrap();
    let nodes = Nodes::start();
    let gw = Gateway::start(&nodes, &format!("replication_factor = 3\n{FAST}"), "");
    let (work, head) = seed_everywhere(&git, &gw, &nodes, tmp.path(), "excl");
    git.ok(
        Some(&work),
        &["push", "-q", &gw.url("excl"), "main:refs/heads/same"],
    );
    gw.wait_jobs_done();
    let url = gw.url("excl");
    for i in 0..12 {
        let dir = tmp.path().join(format!("excluded-{i}"));
        git.fails(
            None,
            &[
                "clone",
                "-q",
                "--shallow-exclude=same",
                &url,
                path_str(&dir),
            ],
        );
    }
    let scrape = gw.scrape();
    assert_eq!(
        metric(
            &scrape,
            "gitgate_backend_requests_total",
            &["result=\"unavailable\""]
        ),
        0.0,
        "git dying mid-answer is not a node out of reach:\n{scrape}"
    );
    assert!(NAMES.iter().all(|n| gw.healthy(n)));
    let dir = tmp.path().join("after");
    assert_eq!(clone(&git, &url, &dir).expect("clone"), head);
}
