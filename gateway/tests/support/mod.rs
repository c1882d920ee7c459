//! Test harness: real `gitgate` and `gitgate-node` processes on loopback, real git
//! clients with an isolated environment, and helpers to build repositories.
#![allow(dead_code)]

pub mod cluster;
pub mod git;
pub mod hooked_git;
pub mod http;
pub mod procs;

use std::io::{BufRead, BufReader, Read};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A shared secret used between test gateways and test nodes.
pub const NODE_TOKEN: &str = "test-shared-secret-0123456789";

/// Path of a binary built next to the gateway.
pub fn sibling_binary(name: &str) -> PathBuf {
    let gateway = PathBuf::from(env!("CARGO_BIN_EXE_gitgate"));
    let path = gateway.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the whole workspace first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A child process that prints `listening on http://ADDR` on stdout once ready to accept,
/// and logs to a file that is printed if the test fails.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: PathBuf,
}

impl Server {
    fn start(program: &Path, config: &Path, log: PathBuf, extra_env: &[(&str, &str)]) -> Self {
        let log_file = std::fs::File::create(&log).expect("create log file");
        let mut cmd = Command::new(program);
        cmd.arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,gitgate=debug,gitgate_storage_node=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn server");
        let stdout = child.stdout.take().expect("piped stdout");
        // Read the address line on a thread so a silent child cannot hang the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining stdout so the child never blocks on it.
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        if line.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("{} did not report its address:\n{text}", program.display());
        }
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self {
            child: Some(child),
            url,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The `host:port` part of the URL.
    pub fn authority(&self) -> &str {
        self.url
            .strip_prefix("https://")
            .or_else(|| self.url.strip_prefix("http://"))
            .unwrap_or(&self.url)
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send SIGTERM and wait (bounded) for exit; returns whether it exited by itself.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Kill with SIGKILL at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.url, self.log_text());
        }
    }
}

/// A `gitgate-node` process over its own root directory.
pub struct TestNode {
    pub server: Server,
    pub root: PathBuf,
    /// Its config file (rewrite it and send SIGHUP to reload).
    pub config: PathBuf,
    _dir: TempDir,
}

/// The node config text for `token` and `mode`, listening on `addr`.
pub fn node_config(addr: &str, token: &str, mode: &str) -> String {
    format!(
        "[listen]\naddr = \"{addr}\"\n[node]\npath = \"repos\"\ntoken = \"{token}\"\nauth_mode = \"{mode}\"\n"
    )
}

impl TestNode {
    pub fn start() -> Self {
        Self::start_with(NODE_TOKEN, "enforced")
    }

    pub fn start_with(token: &str, mode: &str) -> Self {
        let dir = TempDir::new().expect("tempdir");
        let root = dir.path().join("repos");
        std::fs::create_dir_all(&root).expect("root");
        let config = dir.path().join("node.toml");
        std::fs::write(&config, node_config("127.0.0.1:0", token, mode)).expect("write config");
        let server = Server::start(
            &sibling_binary("gitgate-node"),
            &config,
            dir.path().join("node.log"),
            &[],
        );
        Self {
            server,
            root,
            config,
            _dir: dir,
        }
    }
}

/// Send SIGHUP to `pid`.
pub fn sighup(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
}

/// Where a test gateway's repositories live.
pub enum Backend {
    /// Served in-process from a local directory.
    InProcess,
    /// A separate `gitgate-node` process.
    Remote(TestNode),
}

/// A running `gitgate` and the node behind it.
pub struct TestGateway {
    pub server: Server,
    /// The node's root directory (repositories are `<root>/<name>.git`).
    pub root: PathBuf,
    pub backend: Backend,
    pub dir: TempDir,
}

/// Options for [`TestGateway::start`].
#[derive(Default, Clone)]
pub struct GatewayOptions {
    pub create_on_push: bool,
    /// Extra TOML appended to the config.
    pub extra: String,
    /// An `[auth]` section; by default anyone may read and write.
    pub auth: Option<String>,
    /// Extra keys for `[listen]`.
    pub listen: String,
    /// Extra keys for `[storage]`.
    pub storage: String,
    /// The node token the gateway uses for a remote node.
    pub node_token: Option<String>,
    /// The git program of the in-process node (`[[storage.nodes]] git`).
    pub node_git: Option<String>,
}

impl TestGateway {
    pub fn start(remote: bool, options: GatewayOptions) -> Self {
        let dir = TempDir::new().expect("tempdir");
        let (backend, root, node_toml) = if remote {
            let token = options
                .node_token
                .clone()
                .unwrap_or_else(|| NODE_TOKEN.to_owned());
            let node = TestNode::start_with(&token, "enforced");
            let root = node.root.clone();
            let toml = format!(
                "[[storage.nodes]]\nname = \"remote1\"\nurl = \"{}\"\ntoken = \"{token}\"\n",
                node.server.url
            );
            (Backend::Remote(node), root, toml)
        } else {
            let root = dir.path().join("repos");
            std::fs::create_dir_all(&root).expect("root");
            (
                Backend::InProcess,
                root,
                format!(
                    "[[storage.nodes]]\nname = \"local\"\npath = \"repos\"\n{}",
                    options
                        .node_git
                        .as_ref()
                        .map_or(String::new(), |git| format!("git = \"{git}\"\n"))
                ),
            )
        };
        let config = dir.path().join("gitgate.toml");
        std::fs::write(
            &config,
            format!(
                "[listen]\naddr = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n{}\n[storage]\ncreate_on_push = {}\n{}\n{node_toml}{}\n{}\n",
                options.listen,
                options.create_on_push,
                options.storage,
                options.extra,
                options.auth.clone().unwrap_or_else(|| "[auth]\nanonymous = \"write\"".into())
            ),
        )
        .expect("write config");
        let server = Server::start(
            &PathBuf::from(env!("CARGO_BIN_EXE_gitgate")),
            &config,
            dir.path().join("gitgate.log"),
            &[],
        );
        let gw = Self {
            server,
            root,
            backend,
            dir,
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&self) {
        if self.server.url.starts_with("https://") {
            // Plain HTTP cannot probe it; the TLS test waits with its own client.
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(resp) = http::get(self.server.authority(), "/-/ready") {
                if resp.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready:\n{}",
                self.server.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The gateway's config file (rewrite it and send SIGHUP to reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gitgate.toml")
    }

    /// Clone URL of `name`.
    pub fn repo_url(&self, name: &str) -> String {
        format!("{}/{name}.git", self.server.url)
    }

    /// The bare repository directory of `name` on the node.
    pub fn repo_dir(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.git"))
    }

    /// Process ids to watch for memory: the gateway, and the node when remote.
    pub fn server_pids(&self) -> Vec<u32> {
        let mut pids = vec![self.server.pid()];
        if let Backend::Remote(node) = &self.backend {
            pids.push(node.server.pid());
        }
        pids
    }
}

/// Sum of the samples of metric `name` whose labels contain every `key="value"` in
/// `labels`, from a Prometheus text scrape.
pub fn metric(scrape: &str, name: &str, labels: &[&str]) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric_name, rest) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            (metric_name == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

impl TestGateway {
    /// The gateway's `/-/metrics` text.
    pub fn scrape(&self) -> String {
        let resp = http::get(self.server.authority(), "/-/metrics").expect("scrape");
        assert_eq!(resp.status, 200);
        String::from_utf8(resp.body).expect("utf-8 metrics")
    }

    /// How many `git upload-pack` processes the storage node has started.
    pub fn upload_pack_runs(&self) -> u64 {
        let text = match &self.backend {
            Backend::InProcess => self.scrape(),
            Backend::Remote(node) => {
                let resp = http::get(node.server.authority(), "/-/metrics").expect("node scrape");
                String::from_utf8(resp.body).expect("utf-8 metrics")
            }
        };
        metric(
            &text,
            "gitgate_node_git_processes_total",
            &["service=\"upload-pack\""],
        ) as u64
    }
}

impl GatewayOptions {
    /// Add a `[limits]` section with `keys`.
    pub fn with_limits(mut self, keys: &str) -> Self {
        self.extra.push_str(&format!("\n[limits]\n{keys}\n"));
        self
    }
}

/// A path as `&str` for git's argument lists (test paths are UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Deterministic incompressible bytes (xorshift64).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A v0 upload-pack request body wanting `head` (and everything behind it), with
/// `done`: what a clone asks once negotiation is over.
pub fn fetch_everything(head: &str) -> Vec<u8> {
    let want = format!("want {head} side-band-64k ofs-delta\n");
    let mut body = format!("{:04x}{want}", want.len() + 4).into_bytes();
    body.extend_from_slice(b"00000009done\n");
    body
}

/// Create repository `name` through the gateway (it needs `create_on_push`) with one
/// commit holding incompressible files of `sizes` bytes (seeded `seed`, `seed + 1`, ...);
/// returns the commit id.
pub fn push_incompressible(
    gw: &TestGateway,
    git: &git::Git,
    dir: &Path,
    name: &str,
    sizes: &[usize],
    seed: u64,
) -> String {
    let work = dir.join(format!("work-{}", name.replace('/', "-")));
    git.ok(None, &["init", "-q", "-b", "main", path_str(&work)]);
    for (i, size) in sizes.iter().enumerate() {
        std::fs::write(
            work.join(format!("blob{i}.bin")),
            noise(*size, seed + i as u64),
        )
        .expect("write blob");
    }
    git.ok(Some(&work), &["add", "-A"]);
    git.ok(Some(&work), &["commit", "-q", "-m", "incompressible"]);
    git.ok(Some(&work), &["push", "-q", &gw.repo_url(name), "main"]);
    git.ok(Some(&work), &["rev-parse", "HEAD"])
        .trim()
        .to_owned()
}
