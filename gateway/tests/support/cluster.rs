//! Several `gitgate-node` processes behind one or more `gitgate` processes: what the
//! replica tests run against. Nodes can be killed (SIGKILL) and restarted on the same
//! address and directory; gateways can be killed and restarted over the same metadata.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::git::Git;
use super::path_str;

use super::{http, metric, node_config, Server, TestNode, NODE_TOKEN};

/// Node names, in config order.
pub const NAMES: [&str; 3] = ["n1", "n2", "n3"];

/// Storage keys that make failures show quickly in tests.
pub const FAST: &str = "health_interval = \"100ms\"\nhealth_timeout = \"300ms\"\nhealth_failures = 3\nreconcile_interval = \"1s\"\nreplication_retry_max = \"1s\"\n";

/// Three nodes.
pub struct Nodes {
    pub nodes: Vec<TestNode>,
}

impl Nodes {
    pub fn start() -> Self {
        Self::start_with_git(None)
    }

    /// Three nodes running `git` (a program path) for their git processes, once
    /// restarted; `None`: the default.
    pub fn start_with_git(git: Option<&str>) -> Self {
        Self::start_with_gits([git; 3])
    }

    /// [`Self::start_with_git`] with a program per node.
    pub fn start_with_gits(gits: [Option<&str>; 3]) -> Self {
        let nodes = gits
            .into_iter()
            .map(|git| {
                let mut node = TestNode::start();
                // Pin the address, so a restart comes back where the gateway looks.
                let mut config = node_config(node.server.authority(), NODE_TOKEN, "enforced");
                if let Some(git) = git {
                    config.push_str(&format!("git = \"{git}\"\n"));
                }
                std::fs::write(&node.config, config).expect("pin node address");
                if git.is_some() {
                    node.server.kill();
                    node.server = Server::start(
                        &super::sibling_binary("gitgate-node"),
                        &node.config,
                        node.config.with_file_name("node-hooked.log"),
                        &[],
                    );
                }
                node
            })
            .collect();
        Self { nodes }
    }

    /// `[[storage.nodes]]` entries for all nodes.
    pub fn storage_toml(&self) -> String {
        self.nodes
            .iter()
            .zip(NAMES)
            .map(|(node, name)| {
                format!(
                    "[[storage.nodes]]\nname = \"{name}\"\nurl = \"{}\"\ntoken = \"{NODE_TOKEN}\"\n",
                    node.server.url
                )
            })
            .collect()
    }

    /// Index of node `name`.
    pub fn index(name: &str) -> usize {
        NAMES
            .iter()
            .position(|n| *n == name)
            .expect("known node name")
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].server.kill();
    }

    /// Start node `i` again on its address and directory.
    pub fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = node.config.with_file_name("node-restarted.log");
        node.server = Server::start(
            &super::sibling_binary("gitgate-node"),
            &node.config,
            log,
            &[],
        );
    }

    /// The bare repository `name` on node `i`.
    pub fn repo_dir(&self, i: usize, name: &str) -> PathBuf {
        self.nodes[i].root.join(format!("{name}.git"))
    }

    /// Node `i`'s count of git processes of `service`.
    pub fn runs(&self, i: usize, service: &str) -> u64 {
        let resp = http::get(self.nodes[i].server.authority(), "/-/metrics").expect("node scrape");
        let text = String::from_utf8(resp.body).expect("utf-8 metrics");
        metric(
            &text,
            "gitgate_node_git_processes_total",
            &[&format!("service=\"{service}\"")],
        ) as u64
    }
}

/// A `gitgate` process over [`Nodes`].
pub struct Gateway {
    pub server: Server,
    pub config: PathBuf,
    pub dir: TempDir,
}

impl Gateway {
    /// Start a gateway over `nodes`: `storage_extra` goes into `[storage]`, `metadata`
    /// is the `[metadata]` section (empty: the embedded store in the gateway's dir).
    pub fn start(nodes: &Nodes, storage_extra: &str, metadata: &str) -> Self {
        Self::start_with(&nodes.storage_toml(), storage_extra, metadata, "")
    }

    /// Start a gateway with `[[storage.nodes]]` entries `nodes_toml`; `auth_extra` is
    /// appended to `[auth]` (which lets anyone read and write).
    pub fn start_with(
        nodes_toml: &str,
        storage_extra: &str,
        metadata: &str,
        auth_extra: &str,
    ) -> Self {
        Self::start_full(
            nodes_toml,
            storage_extra,
            metadata,
            auth_extra,
            "[cache]\nenabled = false\n",
            "127.0.0.1:0",
        )
    }

    /// [`Self::start_with`] with `sections` (a `[cache]` section and any others) and
    /// the listen address `addr`.
    pub fn start_full(
        nodes_toml: &str,
        storage_extra: &str,
        metadata: &str,
        auth_extra: &str,
        sections: &str,
        addr: &str,
    ) -> Self {
        let dir = TempDir::new().expect("tempdir");
        let config = dir.path().join("gitgate.toml");
        // Keys in `storage_extra` override the FAST ones.
        let fast: String = FAST
            .lines()
            .filter(|line| {
                let key = line.split('=').next().unwrap_or_default().trim();
                !storage_extra
                    .lines()
                    .any(|l| l.split('=').next().unwrap_or_default().trim() == key)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        std::fs::write(
            &config,
            format!(
                "[listen]\naddr = \"{addr}\"\nshutdown_grace = \"5s\"\n[storage]\ncreate_on_push = true\n{fast}{storage_extra}\n{nodes_toml}\n{metadata}\n{sections}\n[auth]\nanonymous = \"write\"\n{auth_extra}\n"
            ),
        )
        .expect("write config");
        let server = Self::spawn(&config, dir.path());
        let gateway = Self {
            server,
            config,
            dir,
        };
        gateway.wait_ready();
        gateway
    }

    fn spawn(config: &Path, dir: &Path) -> Server {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        Server::start(
            &PathBuf::from(env!("CARGO_BIN_EXE_gitgate")),
            config,
            dir.join(format!("gitgate-{n}.log")),
            &[],
        )
    }

    /// SIGKILL the gateway and start it again with the same config and metadata.
    pub fn kill_and_restart(&mut self) {
        self.server.kill();
        self.server = Self::spawn(&self.config, self.dir.path());
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(http::get(self.server.authority(), "/-/ready"), Ok(r) if r.status == 200) {
            assert!(
                Instant::now() < deadline,
                "gateway not ready:\n{}",
                self.server.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}.git", self.server.url)
    }

    pub fn scrape(&self) -> String {
        let resp = http::get(self.server.authority(), "/-/metrics").expect("scrape");
        String::from_utf8(resp.body).expect("utf-8 metrics")
    }

    /// `gitgate_read_distribution_total{node}` for each node.
    pub fn reads(&self) -> [u64; 3] {
        let text = self.scrape();
        NAMES.map(|name| {
            metric(
                &text,
                "gitgate_read_distribution_total",
                &[&format!("node=\"{name}\"")],
            ) as u64
        })
    }

    /// Wait until no replication job is queued, running or waiting for a retry. The
    /// job gauges are refreshed once a second, so the queue must read empty twice, more
    /// than a refresh apart.
    pub fn wait_jobs_done(&self) {
        let empty = || {
            let scrape = self.scrape();
            metric(&scrape, "gitgate_replication_jobs", &[]) == 0.0
                && metric(&scrape, "gitgate_replication_lag_seconds", &[]) == 0.0
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            wait_for(Duration::from_secs(20), "replication queue empty", empty);
            std::thread::sleep(Duration::from_millis(1200));
            if empty() {
                return;
            }
            assert!(Instant::now() < deadline, "replication queue never settled");
        }
    }

    /// Whether the gateway considers node `name` healthy.
    pub fn healthy(&self, name: &str) -> bool {
        metric(
            &self.scrape(),
            "gitgate_node_healthy",
            &[&format!("node=\"{name}\"")],
        ) > 0.0
    }

    /// Wait until node `name`'s health is `up`.
    pub fn wait_health(&self, name: &str, up: bool) {
        wait_for(
            Duration::from_secs(15),
            &format!("{name} healthy={up}"),
            || self.healthy(name) == up,
        );
    }
}

/// A loopback port nothing listens on right now (for a config that must name its
/// own address before the process starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Poll `check` every 50 ms until it holds, failing after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A work tree with a few commits, pushed through `gw` as `name` (created on push).
pub fn seed(git: &Git, gw: &Gateway, dir: &Path, name: &str) -> std::path::PathBuf {
    let work = dir.join(format!("work-{name}"));
    git.ok(None, &["init", "-q", "-b", "main", path_str(&work)]);
    for i in 0..3 {
        git.commit_file(
            &work,
            &format!("f{i}.txt"),
            &format!("{i}\n"),
            &format!("c{i}"),
        );
    }
    git.ok(Some(&work), &["push", "-q", &gw.url(name), "main"]);
    work
}

/// [`seed`], then wait until every node holds it; returns the work tree and its head.
pub fn seed_everywhere(
    git: &Git,
    gw: &Gateway,
    nodes: &Nodes,
    dir: &Path,
    name: &str,
) -> (std::path::PathBuf, String) {
    let work = seed(git, gw, dir, name);
    let head = git
        .ok(Some(&work), &["rev-parse", "HEAD"])
        .trim()
        .to_owned();
    wait_replicated(git, nodes, &[0, 1, 2], name, &head);
    (work, head)
}

/// The commit `refs/heads/main` names on node `i`, if any.
pub fn node_main(git: &Git, nodes: &Nodes, i: usize, name: &str) -> Option<String> {
    let dir = nodes.repo_dir(i, name);
    let out = git.output(
        None,
        &[
            "--git-dir",
            path_str(&dir),
            "rev-parse",
            "--verify",
            "-q",
            "refs/heads/main",
        ],
        &[],
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Wait until every node in `which` has `main` at `head`.
pub fn wait_replicated(git: &Git, nodes: &Nodes, which: &[usize], name: &str, head: &str) {
    wait_for(
        Duration::from_secs(30),
        &format!("{name} at {head} on {which:?}"),
        || {
            which
                .iter()
                .all(|&i| node_main(git, nodes, i, name).as_deref() == Some(head))
        },
    );
}

/// Clone `url` into a fresh directory; returns the directory and its `main`.
pub fn clone(git: &Git, url: &str, into: &Path) -> Result<String, String> {
    let out = git.output(None, &["clone", "-q", "--bare", url, path_str(into)], &[]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let head = git.ok(
        None,
        &["--git-dir", path_str(into), "rev-parse", "refs/heads/main"],
    );
    Ok(head.trim().to_owned())
}
