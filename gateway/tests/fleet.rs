//! Several gateways sharing PostgreSQL and three `gitgate-node` processes: one pack
//! generation (and one advertisement) per change for the whole fleet, whichever
//! gateway each client reaches; no stale answer after a push through another gateway;
//! an owner killed mid-fan-out; and the peer endpoint's refusals.
//!
//! Repositories have one replica (`replication_factor = 1`), so node-side git process
//! counts are the clients' alone (replication would run upload-pack too).

mod support;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use gitgate_storage_client::throwaway_postgres::ThrowawayPostgres;
use support::cluster::{free_port, wait_for, Gateway, Nodes};
use support::git::{default_client, make_source, Git};
use support::hooked_git::{HookedGit, Mode};
use support::{http, metric};
use tempfile::TempDir;

const SECRET: &str = "fleet-secret-0123456789";

struct Fleet {
    gateways: Vec<Gateway>,
    nodes: Nodes,
    pg: ThrowawayPostgres,
}

impl Fleet {
    /// `n` gateways with the pack cache at default settings, over three nodes; a
    /// gateway that stops renewing drops out of the fleet after `expiry`.
    fn start(n: usize, node_git: Option<&str>, expiry: &str) -> Self {
        let pg = ThrowawayPostgres::start();
        let metadata = format!("[metadata]\npostgres_url = \"{}\"\n", pg.url("postgres"));
        let nodes = Nodes::start_with_git(node_git);
        let gateways: Vec<Gateway> = (0..n)
            .map(|_| {
                let port = free_port();
                let sections = format!(
                    "[cache]\ndir = \"pack-cache\"\n[cluster]\nadvertise_url = \"http://127.0.0.1:{port}\"\nsecret = \"{SECRET}\"\nheartbeat = \"250ms\"\nexpiry = \"{expiry}\"\n"
                );
                Gateway::start_full(
                    &nodes.storage_toml(),
                    "replication_factor = 1\n",
                    &metadata,
                    "",
                    &sections,
                    &format!("127.0.0.1:{port}"),
                )
            })
            .collect();
        let fleet = Self {
            gateways,
            nodes,
            pg,
        };
        fleet.wait_live(&(0..n).collect::<Vec<_>>(), n);
        fleet
    }

    /// Wait until each of `which` sees `n` live gateways.
    fn wait_live(&self, which: &[usize], n: usize) {
        for &i in which {
            wait_for(Duration::from_secs(10), "fleet membership", || {
                metric(
                    &self.gateways[i].scrape(),
                    "gitgate_peers",
                    &["state=\"live\""],
                ) == n as f64
            });
        }
    }

    /// The generation of `repo` in the shared store.
    fn generation(&self, repo: &str) -> i64 {
        let url = self.pg.url("postgres");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            client
                .query_one(
                    "SELECT generation FROM repositories WHERE repo = $1",
                    &[&repo],
                )
                .await
                .expect("repository row")
                .get(0)
        })
    }

    /// Node-side git processes of `service`, all nodes together.
    fn runs(&self, service: &str) -> u64 {
        (0..3).map(|i| self.nodes.runs(i, service)).sum()
    }

    fn metric_sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.gateways
            .iter()
            .map(|g| metric(&g.scrape(), name, labels))
            .sum()
    }
}

/// A work tree pushed through `gw` as `name`.
fn seed(git: &Git, gw: &Gateway, dir: &Path, name: &str) -> PathBuf {
    let work = make_source(git, &dir.join(format!("src-{}", name.replace('/', "-"))), 5);
    git.ok(Some(&work), &["push", "-q", &gw.url(name), "HEAD:main"]);
    work
}

/// Start `git clone --mirror` of `name` through each of `urls` in turn, `n` in all.
fn spawn_clones(
    git: &Git,
    dir: &Path,
    urls: &[String],
    n: usize,
    tag: &str,
) -> Vec<(PathBuf, Child)> {
    (0..n)
        .map(|i| {
            let into = dir.join(format!("clone-{tag}-{i}"));
            let child = git
                .cmd(None)
                .args(["clone", "-q", "--mirror", &urls[i % urls.len()]])
                .arg(&into)
                .spawn()
                .expect("spawn git clone");
            (into, child)
        })
        .collect()
}

/// Wait for every clone; each must succeed with `refs` and pass fsck.
fn all_succeed(git: &Git, clones: Vec<(PathBuf, Child)>, refs: &str) {
    for (dir, mut child) in clones {
        assert!(
            child.wait().expect("wait").success(),
            "clone {} failed",
            dir.display()
        );
        assert_eq!(git.refs(&dir), refs, "{} has other refs", dir.display());
        git.fsck(&dir);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn a_fan_out_over_three_gateways_costs_one_generation_and_one_advertisement() {
    let fleet = Fleet::start(3, None, "10s");
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let work = seed(&git, &fleet.gateways[0], tmp.path(), "ci/app");
    let urls: Vec<String> = fleet.gateways.iter().map(|g| g.url("ci/app")).collect();
    for version in ["2", "0"] {
        // A new commit per round, so each round starts cold.
        let head = git.commit_file(&work, "round.txt", version, "next round");
        git.ok(Some(&work), &["push", "-q", &urls[0], "HEAD:main"]);
        let (upload, advertise) = (fleet.runs("upload-pack"), fleet.runs("advertise-refs"));
        let config = format!("protocol.version={version}");
        let clones: Vec<_> = (0..30)
            .map(|i| {
                let into = tmp.path().join(format!("v{version}-{i}"));
                let child = git
                    .cmd(None)
                    .args(["-c", &config, "clone", "-q", "--mirror", &urls[i % 3]])
                    .arg(&into)
                    .spawn()
                    .expect("spawn git clone");
                (into, child)
            })
            .collect();
        all_succeed(&git, clones, &format!("{head} refs/heads/main\n"));
        let upload = fleet.runs("upload-pack") - upload;
        let advertise = fleet.runs("advertise-refs") - advertise;
        // One pack; with v2, one ls-refs too (an upload-pack process of its own).
        let want = if version == "2" { 2 } else { 1 };
        assert_eq!(
            upload, want,
            "v{version}: {upload} upload-pack runs on the nodes for 30 clones over 3 gateways"
        );
        assert_eq!(
            advertise, 1,
            "v{version}: {advertise} advertisements for 30 clones over 3 gateways"
        );
    }
    // Each other gateway asked each key's owner once and served its clients from its
    // own cache: a handful of forwarded requests, not one per clone.
    let forwarded = fleet.metric_sum(
        "gitgate_peer_requests_total",
        &["role=\"forwarder\"", "result=\"ok\""],
    );
    let served = fleet.metric_sum(
        "gitgate_peer_requests_total",
        &["role=\"owner\"", "result=\"ok\""],
    );
    assert!(
        (4.0..=30.0).contains(&forwarded),
        "{forwarded} forwarded requests for two rounds of three keys"
    );
    assert_eq!(
        forwarded, served,
        "every forwarded request served by its owner"
    );
    let fallbacks = fleet.metric_sum(
        "gitgate_peer_requests_total",
        &["role=\"forwarder\"", "result=\"fallback_unreachable\""],
    );
    assert_eq!(fallbacks, 0.0);
    // The access logs name the owner behind a request, and the owner's say it served
    // a peer.
    let logs: String = fleet.gateways.iter().map(|g| g.server.log_text()).collect();
    assert!(
        logs.contains("peer=\"http://127.0.0.1:"),
        "no access log line names an owner"
    );
    assert!(
        logs.contains("forwarded to this owner"),
        "no access log line of an owner serving a peer"
    );
}

#[test]
fn a_push_through_one_gateway_is_seen_by_every_fan_out_through_the_others() {
    let fleet = Fleet::start(3, None, "10s");
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let work = seed(&git, &fleet.gateways[0], tmp.path(), "team/svc");
    let push_url = fleet.gateways[0].url("team/svc");
    let urls: Vec<String> = fleet.gateways[1..]
        .iter()
        .map(|g| g.url("team/svc"))
        .collect();
    for cycle in 0..50 {
        let head = git.commit_file(&work, "cycle.txt", &cycle.to_string(), "cycle");
        git.ok(Some(&work), &["push", "-q", &push_url, "HEAD:main"]);
        let upload = fleet.runs("upload-pack");
        let clones = spawn_clones(&git, tmp.path(), &urls, 4, &cycle.to_string());
        all_succeed(&git, clones, &format!("{head} refs/heads/main\n"));
        // ls-refs and one pack, for four clones through two gateways.
        let runs = fleet.runs("upload-pack") - upload;
        assert_eq!(runs, 2, "cycle {cycle}: {runs} upload-pack runs");
    }
}

#[test]
fn killing_the_owner_mid_fan_out_fails_its_readers_cleanly_and_the_rest_go_on() {
    let tmp = TempDir::new().expect("tempdir");
    let hook = HookedGit::new(&tmp.path().join("hooked"));
    let mut fleet = Fleet::start(3, Some(&hook.program()), "3s");
    let git = default_client();
    let work = seed(&git, &fleet.gateways[0], tmp.path(), "big/repo");
    // A pack of a few MiB, produced slowly, so the fan-out is mid-stream when the
    // owner dies.
    std::fs::write(work.join("blob.bin"), support::noise(6 << 20, 7)).expect("write blob");
    git.ok(Some(&work), &["add", "blob.bin"]);
    git.ok(Some(&work), &["commit", "-q", "-m", "big"]);
    let head = git
        .ok(Some(&work), &["rev-parse", "HEAD"])
        .trim()
        .to_owned();
    git.ok(
        Some(&work),
        &[
            "push",
            "-q",
            &fleet.gateways[0].url("big/repo"),
            "HEAD:main",
        ],
    );
    let refs = format!("{head} refs/heads/main\n");
    hook.set(Mode::Slow);
    let urls: Vec<String> = fleet.gateways.iter().map(|g| g.url("big/repo")).collect();
    let producing = |fleet: &Fleet| -> Vec<bool> {
        fleet
            .gateways
            .iter()
            .map(|g| metric(&g.scrape(), "gitgate_concurrency_in_progress", &[]) >= 1.0)
            .collect()
    };
    let clones = spawn_clones(&git, tmp.path(), &urls, 9, "during");
    // The owner is the one gateway whose node call runs: the others ask it and hold
    // no node slot. (Advertisements take a slot for a moment; the slow pack for
    // seconds, so the owner is the one seen producing twice in a row.)
    let mut owner = None;
    wait_for(
        Duration::from_secs(20),
        "the owner producing the pack",
        || {
            let first = producing(&fleet);
            std::thread::sleep(Duration::from_millis(200));
            let second = producing(&fleet);
            owner = (0..3).find(|&i| first[i] && second[i]);
            owner.is_some()
        },
    );
    let owner = owner.expect("an owner");
    std::thread::sleep(Duration::from_millis(300));
    fleet.gateways[owner].server.kill();
    // Every clone ends: those that read through the dead owner fail (git reports the
    // broken stream), the rest succeed; none is accepted truncated.
    let mut failed = 0;
    for (dir, mut child) in clones {
        if child.wait().expect("wait").success() {
            assert_eq!(git.refs(&dir), refs, "{} has other refs", dir.display());
            git.fsck(&dir);
        } else {
            failed += 1;
        }
    }
    assert!(failed >= 1, "no clone was reading through the killed owner");
    // Some of them were forwarded by a survivor, whose stream broke mid-pack (P3).
    let broken: f64 = (0..3)
        .filter(|&i| i != owner)
        .map(|i| {
            metric(
                &fleet.gateways[i].scrape(),
                "gitgate_peer_requests_total",
                &["role=\"forwarder\"", "result=\"broken\""],
            )
        })
        .sum();
    assert!(broken >= 1.0, "no forwarded stream broke with its owner");
    hook.set(Mode::Normal);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != owner).collect();
    // Every clone started after the kill succeeds, at once (the dead owner is skipped
    // after one failed connection)...
    let urls: Vec<String> = survivors.iter().map(|&i| urls[i].clone()).collect();
    all_succeed(
        &git,
        spawn_clones(&git, tmp.path(), &urls, 6, "after"),
        &refs,
    );
    // ...and the survivors drop it from the live set within the expiry.
    fleet.wait_live(&survivors, 2);
}

#[test]
fn the_peer_endpoint_serves_only_what_a_fleet_token_names() {
    let fleet = Fleet::start(2, None, "10s");
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    seed(&git, &fleet.gateways[0], tmp.path(), "open/a");
    let work_b = seed(&git, &fleet.gateways[0], tmp.path(), "open/b");
    let gw = &fleet.gateways[1];
    let authority = gw.server.authority().to_owned();
    let advert = |repo: &str| format!("/-/peer/{repo}/info/refs?service=git-upload-pack");
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    // A token as a fleet member mints it: bound to the owner's address, the method, the
    // path, the client, the protocol and the generation.
    let signed_for =
        |authority: &str, method: &str, path: &str, client: &str, generation: i64, secret: &str| {
            gitgate_storage_client::tokens::Secret::for_peers(secret).token(
                authority,
                gitgate_storage_client::tokens::TokenScope::Request {
                    method,
                    path_and_query: &format!("{path}\n{}\n\n{generation}", hex(client)),
                },
                std::time::SystemTime::now(),
            )
        };
    let signed = |method: &str, path: &str, client: &str, generation: i64, secret: &str| {
        signed_for(&authority, method, path, client, generation, secret)
    };
    let token = |path: &str, client: &str, generation: i64, secret: &str| {
        signed("GET", path, client, generation, secret)
    };
    let get = |path: &str, client: &str, generation: i64, token: Option<&str>| {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        http::raw(
            &authority,
            format!(
                "GET {path} HTTP/1.1\r\nHost: {authority}\r\nX-Gitgate-Client: {}\r\nX-Gitgate-Generation: {generation}\r\n{auth}Connection: close\r\n\r\n",
                hex(client)
            )
            .as_bytes(),
        )
        .expect("request")
        .status
    };
    let (a, b) = (advert("open/a"), advert("open/b"));
    let me = "ip:10.0.0.1";
    // No token, a token of another secret, a token for another repository, another
    // client or another generation than presented.
    assert_eq!(get(&a, me, 1, None), 401);
    assert_eq!(
        get(&a, me, 1, Some(&token(&a, me, 1, "not-the-fleet-secret"))),
        401
    );
    assert_eq!(get(&a, me, 1, Some(&token(&b, me, 1, SECRET))), 401);
    assert_eq!(
        get(&a, "ip:10.0.0.2", 1, Some(&token(&a, me, 1, SECRET))),
        401
    );
    assert_eq!(get(&a, me, 2, Some(&token(&a, me, 1, SECRET))), 401);
    // A valid token for a generation the owner does not see: 409 (the forwarder then
    // produces the answer itself). At the repository's generation: served, once; the
    // same token again is refused.
    let generation = fleet.generation("open/b");
    let stale = generation - 1;
    assert_eq!(get(&b, me, stale, Some(&token(&b, me, stale, SECRET))), 409);
    let used = token(&b, me, generation, SECRET);
    assert_eq!(get(&b, me, generation, Some(&used)), 200);
    assert_eq!(
        get(&b, me, generation, Some(&used)),
        401,
        "a replayed token was accepted"
    );
    // Pushes are never served there, token or not.
    let push = "/-/peer/open/a/info/refs?service=git-receive-pack";
    assert_eq!(
        get(
            push,
            me,
            generation,
            Some(&token(push, me, generation, SECRET))
        ),
        404
    );
    let refused = metric(
        &gw.scrape(),
        "gitgate_peer_requests_total",
        &["role=\"owner\"", "result=\"refused\""],
    );
    assert!(refused >= 6.0, "{refused} refusals counted");
    // A fetch answered from the owner's pack cache says its pack hash was checked
    // there, so a forwarder need not hash its copy again; the answer is whole.
    let head = git.ok(Some(&work_b), &["rev-parse", "HEAD"]);
    let want = format!("want {} side-band-64k\n", head.trim());
    let body = format!("{:04x}{want}00000009done\n", want.len() + 4);
    let fetch = "/-/peer/open/b/git-upload-pack";
    let auth = format!(
        "Authorization: Bearer {}",
        signed("POST", fetch, me, generation, SECRET)
    );
    let resp = http::post(
        &authority,
        fetch,
        &[
            &format!("X-Gitgate-Client: {}", hex(me)),
            &format!("X-Gitgate-Generation: {generation}"),
            &auth,
            "Content-Type: application/x-git-upload-pack-request",
        ],
        body.as_bytes(),
    )
    .expect("fetch");
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert!(
        resp.head
            .to_ascii_lowercase()
            .contains("x-gitgate-pack-checked: 1"),
        "a cached answer is not marked checked: {}",
        resp.head
    );
    assert!(resp.body.ends_with(b"0000"), "the answer is cut short");
    // A gateway that went to another owner for a key does not vouch for its own entry
    // for it (that entry is the owner's copy, unhashed here) should it be asked as the
    // owner later; for a key it produced itself, it does. Sixteen keys, so both kinds
    // come up however the two gateways share them.
    let first = &fleet.gateways[0];
    let (mut copied, mut produced) = (0, 0);
    for variant in 0..16u32 {
        let caps: Vec<&str> = ["no-progress", "ofs-delta", "thin-pack", "include-tag"]
            .iter()
            .enumerate()
            .filter(|(bit, _)| variant & (1 << bit) != 0)
            .map(|(_, cap)| *cap)
            .collect();
        let want = format!("want {} side-band-64k {}\n", head.trim(), caps.join(" "));
        let body = format!("{:04x}{want}00000009done\n", want.len() + 4);
        let forwarded = || {
            metric(
                &first.scrape(),
                "gitgate_peer_requests_total",
                &["role=\"forwarder\"", "result=\"ok\""],
            )
        };
        let before = forwarded();
        let resp = http::post(
            first.server.authority(),
            "/open/b.git/git-upload-pack",
            &["Content-Type: application/x-git-upload-pack-request"],
            body.as_bytes(),
        )
        .expect("client fetch");
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        let went_to_owner = forwarded() > before;
        let token = signed_for(
            first.server.authority(),
            "POST",
            fetch,
            me,
            generation,
            SECRET,
        );
        let resp = http::post(
            first.server.authority(),
            fetch,
            &[
                &format!("X-Gitgate-Client: {}", hex(me)),
                &format!("X-Gitgate-Generation: {generation}"),
                &format!("Authorization: Bearer {token}"),
                "Content-Type: application/x-git-upload-pack-request",
            ],
            body.as_bytes(),
        )
        .expect("peer fetch");
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        let marked = resp
            .head
            .to_ascii_lowercase()
            .contains("x-gitgate-pack-checked");
        assert_eq!(
            marked, !went_to_owner,
            "variant {variant}: forwarded {went_to_owner}, marked {marked}"
        );
        if went_to_owner {
            copied += 1;
        } else {
            produced += 1;
        }
    }
    assert!(
        copied > 0 && produced > 0,
        "{copied} copied, {produced} produced"
    );
}

/// A fetch git refuses gets git's own message through every gateway of a fleet, in v0
/// and v2, whether its key's owner answers it or the gateway asked: an owner's refusal
/// is not taken for an answer to copy (the asking gateway's nodes refuse it the same
/// way).
#[test]
fn a_fetch_git_refuses_gets_its_message_through_every_gateway() {
    let fleet = Fleet::start(3, None, "10s");
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    seed(&git, &fleet.gateways[0], tmp.path(), "team/refuse");
    for (g, gw) in fleet.gateways.iter().enumerate() {
        for version in ["0", "2"] {
            let into = tmp.path().join(format!("refused-{g}-v{version}"));
            git.assert_refused_clone(&gw.url("team/refuse"), version, &into);
        }
    }
    let urls: Vec<String> = fleet
        .gateways
        .iter()
        .map(|g| g.url("team/refuse"))
        .collect();
    let clones = spawn_clones(&git, tmp.path(), &urls, 3, "after");
    for (dir, mut child) in clones {
        assert!(
            child.wait().expect("wait").success(),
            "{} failed",
            dir.display()
        );
        git.fsck(&dir);
    }
}
