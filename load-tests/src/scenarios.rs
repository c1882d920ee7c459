//! The load scenarios, each driven by real `git` clients or by the replay client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use crate::http;
use crate::replay::{self, Fetch};

/// A repository served under test, and what clients ask of it.
#[derive(Clone)]
pub struct Corpus {
    /// Name in URLs (`/<name>.git`).
    pub name: String,
    /// The bare repository.
    pub path: PathBuf,
    /// Every branch and tag tip (what a clone wants).
    pub tips: Vec<String>,
    /// main's first-parent history, newest first.
    pub history: Vec<String>,
}

fn git_out(git: &str, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(git)
        .arg("--git-dir")
        .arg(dir)
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

impl Corpus {
    /// Read `path` (served as `name`).
    pub fn load(git: &str, path: &Path, name: &str) -> anyhow::Result<Self> {
        let refs = git_out(
            git,
            path,
            &[
                "for-each-ref",
                "--format=%(objectname)",
                "refs/heads",
                "refs/tags",
            ],
        )?;
        let mut tips: Vec<String> = refs.lines().map(str::to_owned).collect();
        tips.sort();
        tips.dedup();
        let history = git_out(git, path, &["rev-list", "--first-parent", "main"])?
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        ensure!(
            !tips.is_empty() && history.len() > 25,
            "{} needs a main branch with some history",
            path.display()
        );
        Ok(Self {
            name: name.to_owned(),
            path: path.to_owned(),
            tips,
            history,
        })
    }

    /// main's tip.
    pub fn main(&self) -> &str {
        &self.history[0]
    }
}

/// What a scenario does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// N identical full clones at once.
    Fanout,
    /// N identical `--depth 1` clones at once.
    Shallow,
    /// N clones that cannot share (each wants a different commit).
    Unique,
    /// N identical fetches with haves (20 commits behind).
    Incremental,
    /// Pushes while N fetches run.
    Mixed,
}

/// How clients are driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Real `git clone` processes (client cost included).
    Git,
    /// Raw HTTP replay of the clone's fetch request (pack checked, not indexed).
    Replay,
}

/// One scenario.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// Label.
    pub name: &'static str,
    /// What it does.
    pub kind: Kind,
    /// How.
    pub mode: Mode,
    /// Concurrent clients.
    pub clients: usize,
    /// Check every replayed pack's checksum (off only to measure raw throughput, so
    /// the client's SHA-1 does not limit it).
    pub verify: bool,
}

/// What a run measured.
#[derive(Default, Clone, Debug)]
pub struct Outcome {
    /// From start to the last client's end.
    pub wall: Duration,
    /// Per-client time to first byte (replay only).
    pub ttfb: Vec<Duration>,
    /// Per-client duration.
    pub durations: Vec<Duration>,
    /// Bytes received.
    pub bytes: u64,
    /// Failed requests or clones.
    pub errors: usize,
    /// Responses that arrived but failed verification.
    pub verify_failures: usize,
    /// First error seen, for the report.
    pub first_error: Option<String>,
}

enum ClientResult {
    Ok {
        ttfb: Option<Duration>,
        duration: Duration,
        bytes: u64,
    },
    Failed(String),
    Unverified(String),
}

fn fetch_for(kind: Kind, corpus: &Corpus, client: usize, clients: usize) -> Fetch {
    match kind {
        Kind::Fanout | Kind::Mixed => Fetch {
            wants: corpus.tips.clone(),
            haves: vec![],
            deepen: None,
        },
        Kind::Shallow => Fetch {
            wants: vec![corpus.main().to_owned()],
            haves: vec![],
            deepen: Some(1),
        },
        Kind::Unique => {
            let step = (corpus.history.len() / clients.max(1)).max(1);
            let at = (client * step).min(corpus.history.len() - 1);
            Fetch {
                wants: vec![corpus.history[at].clone()],
                haves: vec![],
                deepen: None,
            }
        }
        Kind::Incremental => Fetch {
            wants: vec![corpus.main().to_owned()],
            haves: vec![corpus.history[20].clone()],
            deepen: None,
        },
    }
}

fn replay_one(authority: &str, corpus: &Corpus, fetch: &Fetch, verify: bool) -> ClientResult {
    let path = format!("/{}.git/git-upload-pack", corpus.name);
    let headers = [
        ("Content-Type", "application/x-git-upload-pack-request"),
        ("Git-Protocol", "version=2"),
    ];
    match http::request(authority, "POST", &path, &headers, &fetch.body()) {
        Err(err) => ClientResult::Failed(format!("{err:#}")),
        Ok(ex) if ex.status != 200 => ClientResult::Failed(format!("HTTP {}", ex.status)),
        Ok(ex) if !verify => ClientResult::Ok {
            ttfb: Some(ex.ttfb),
            duration: ex.total,
            bytes: ex.body.len() as u64,
        },
        Ok(ex) => match replay::verify(&ex.body) {
            Ok(_) => ClientResult::Ok {
                ttfb: Some(ex.ttfb),
                duration: ex.total,
                bytes: ex.body.len() as u64,
            },
            Err(err) => ClientResult::Unverified(format!("{err:#}")),
        },
    }
}

fn clone_one(git: &str, url: &str, dir: &Path, shallow: bool, expect_main: &str) -> ClientResult {
    let started = Instant::now();
    let mut cmd = Command::new(git);
    cmd.args(["-c", "protocol.version=2", "clone", "-q", "--bare"]);
    if shallow {
        cmd.args(["--depth", "1"]);
    }
    let out = match cmd
        .arg(url)
        .arg(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
    {
        Ok(out) => out,
        Err(err) => return ClientResult::Failed(err.to_string()),
    };
    let duration = started.elapsed();
    if !out.status.success() {
        return ClientResult::Failed(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    // git clone already checked every object and the connectivity; check the result.
    let result = match git_out(git, dir, &["rev-parse", "main"]) {
        Ok(head) if head.trim() == expect_main => {
            let bytes = dir_size(&dir.join("objects"));
            ClientResult::Ok {
                ttfb: None,
                duration,
                bytes,
            }
        }
        Ok(head) => ClientResult::Unverified(format!("main is {} not {expect_main}", head.trim())),
        Err(err) => ClientResult::Unverified(format!("{err:#}")),
    };
    let _ = std::fs::remove_dir_all(dir);
    result
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Run `scenario` against the server at `authority`. `scratch` holds clones.
pub fn run(
    scenario: &Scenario,
    authority: &str,
    corpus: &Corpus,
    scratch: &Path,
    git: &str,
) -> anyhow::Result<Outcome> {
    run_spread(scenario, &[authority.to_owned()], corpus, scratch, git)
}

/// Run `scenario` with its clients spread round-robin over the servers at
/// `authorities` (pushers use the first).
pub fn run_spread(
    scenario: &Scenario,
    authorities: &[String],
    corpus: &Corpus,
    scratch: &Path,
    git: &str,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!authorities.is_empty(), "no server to run against");
    std::fs::create_dir_all(scratch)?;
    let n = scenario.clients;
    let pushers = if scenario.kind == Kind::Mixed {
        (n / 4).max(1)
    } else {
        0
    };
    let barrier = Arc::new(Barrier::new(n + pushers + 1));
    let mut handles = Vec::new();
    for i in 0..n {
        let (barrier, corpus, authority, git) = (
            barrier.clone(),
            corpus.clone(),
            authorities[i % authorities.len()].clone(),
            git.to_owned(),
        );
        let (kind, mode, verify) = (scenario.kind, scenario.mode, scenario.verify);
        let dir = scratch.join(format!("client-{i}"));
        handles.push(std::thread::spawn(move || {
            let fetch = fetch_for(kind, &corpus, i, n);
            barrier.wait();
            match (mode, kind) {
                (Mode::Git, Kind::Fanout | Kind::Shallow) => {
                    let url = format!("http://{authority}/{}.git", corpus.name);
                    clone_one(&git, &url, &dir, kind == Kind::Shallow, corpus.main())
                }
                _ => replay_one(&authority, &corpus, &fetch, verify),
            }
        }));
    }
    for p in 0..pushers {
        let (barrier, corpus, authority, git) = (
            barrier.clone(),
            corpus.clone(),
            authorities[0].clone(),
            git.to_owned(),
        );
        let work = scratch.join(format!("pusher-{p}"));
        handles.push(std::thread::spawn(move || {
            let ready = prepare_pusher(&git, &corpus, &work);
            barrier.wait();
            match ready {
                Ok(()) => push_rounds(&git, &authority, &corpus, &work, p),
                Err(err) => ClientResult::Failed(format!("{err:#}")),
            }
        }));
    }
    barrier.wait();
    let started = Instant::now();
    let mut outcome = Outcome::default();
    for h in handles {
        match h.join() {
            Ok(ClientResult::Ok {
                ttfb,
                duration,
                bytes,
            }) => {
                outcome.ttfb.extend(ttfb);
                outcome.durations.push(duration);
                outcome.bytes += bytes;
            }
            Ok(ClientResult::Failed(e)) => {
                outcome.errors += 1;
                outcome.first_error.get_or_insert(e);
            }
            Ok(ClientResult::Unverified(e)) => {
                outcome.verify_failures += 1;
                outcome.first_error.get_or_insert(e);
            }
            Err(_) => outcome.errors += 1,
        }
    }
    outcome.wall = started.elapsed();
    Ok(outcome)
}

fn prepare_pusher(git: &str, corpus: &Corpus, work: &Path) -> anyhow::Result<()> {
    if work.exists() {
        return Ok(());
    }
    let out = Command::new(git)
        .args(["clone", "-q", "--no-checkout", "--single-branch"])
        .arg(&corpus.path)
        .arg(work)
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Three pushes of new commits to a branch of this pusher's own.
fn push_rounds(git: &str, authority: &str, corpus: &Corpus, work: &Path, p: usize) -> ClientResult {
    let started = Instant::now();
    let url = format!("http://{authority}/{}.git", corpus.name);
    let run = std::process::id();
    for round in 0..3 {
        let msg = format!("load push {run} {p} {round}");
        let steps: [&[&str]; 2] = [
            &[
                "-c",
                "user.name=load",
                "-c",
                "user.email=load@example.com",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                &msg,
            ],
            &[
                "push",
                "-q",
                &url,
                &format!("HEAD:refs/heads/load/{run}/{p}/{round}"),
            ],
        ];
        for args in steps {
            let out = Command::new(git)
                .arg("-C")
                .arg(work)
                .args(args)
                .env("GIT_TERMINAL_PROMPT", "0")
                .output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => {
                    return ClientResult::Failed(
                        String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                    )
                }
                Err(e) => return ClientResult::Failed(e.to_string()),
            }
        }
    }
    ClientResult::Ok {
        ttfb: None,
        duration: started.elapsed(),
        bytes: 0,
    }
}

/// Aggregate throughput of raw TCP over loopback, in bytes per second.
pub fn loopback_ceiling(bytes: u64) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sender = std::thread::spawn(move || -> anyhow::Result<()> {
        let (mut s, _) = listener.accept()?;
        let chunk = vec![0x5au8; 1 << 20];
        let mut sent = 0;
        while sent < bytes {
            s.write_all(&chunk)?;
            sent += chunk.len() as u64;
        }
        Ok(())
    });
    let mut s = std::net::TcpStream::connect(addr)?;
    let started = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let elapsed = started.elapsed();
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    Ok(got as f64 / elapsed.as_secs_f64())
}

/// `clients` identical requests at once, each on its own connection, reading the whole
/// answer and counting its bytes without keeping them: (total body bytes, wall time from
/// the common start).
pub fn parallel_requests(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    clients: usize,
) -> anyhow::Result<(u64, Duration)> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let owned: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (barrier, authority, method, path, headers, body) = (
                barrier.clone(),
                authority.to_owned(),
                method.to_owned(),
                path.to_owned(),
                owned.clone(),
                body.to_vec(),
            );
            std::thread::spawn(move || {
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                barrier.wait();
                http::request_counted(&authority, &method, &path, &headers, &body).map(|e| e.len)
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut total = 0;
    for h in handles {
        total += h
            .join()
            .map_err(|_| anyhow::anyhow!("client panicked"))?
            .with_context(|| format!("{method} {path}"))?;
    }
    Ok((total, started.elapsed()))
}
