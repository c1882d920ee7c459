//! `gitgate-load bench`: the three servers, the same scenarios, interleaved and
//! repeated in one invocation, medians, and a table of ratios to the nginx baseline.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context};

use crate::corpus::{self, Shape};
use crate::measure::{self, Accounting};
use crate::scenarios::{self, Corpus, Kind, Mode, Outcome, Scenario};
use crate::servers::{self, Setup};
use crate::stats::{median, percentile};

/// Options of a bench run.
pub struct BenchOptions {
    /// Scratch space (repositories, server state, clones).
    pub workdir: PathBuf,
    /// Use this bare repository instead of the synthetic corpus.
    pub repo: Option<PathBuf>,
    /// Small corpus, for smoke runs.
    pub tiny: bool,
    /// Concurrent clients.
    pub clients: usize,
    /// Repetitions of every (scenario, server) pair.
    pub repeat: usize,
    /// Corpus seed.
    pub seed: u64,
    /// The gitgate binary.
    pub gitgate: PathBuf,
    /// Where to write the Markdown report, if anywhere.
    pub results: Option<PathBuf>,
    /// The command line, for the report.
    pub command: String,
    /// Run only the hit comparisons.
    pub hits_only: bool,
    /// Run only the scenarios whose name contains this text.
    pub only: Option<String>,
    /// Rounds of each hit comparison.
    pub hit_rounds: usize,
}

struct Run {
    outcome: Outcome,
    cpu: f64,
    rss: u64,
}

const SERVERS: [servers::Kind; 3] = [
    servers::Kind::GitgateCache,
    servers::Kind::GitgateNoCache,
    servers::Kind::Nginx,
];

fn scenarios(n: usize) -> Vec<Scenario> {
    vec![
        Scenario {
            name: "fanout (replay)",
            kind: Kind::Fanout,
            mode: Mode::Replay,
            clients: n,
            verify: true,
        },
        Scenario {
            name: "fanout (git clone)",
            kind: Kind::Fanout,
            mode: Mode::Git,
            clients: n,
            verify: true,
        },
        Scenario {
            name: "shallow (replay)",
            kind: Kind::Shallow,
            mode: Mode::Replay,
            clients: n,
            verify: true,
        },
        Scenario {
            name: "shallow (git clone --depth 1)",
            kind: Kind::Shallow,
            mode: Mode::Git,
            clients: n,
            verify: true,
        },
        Scenario {
            name: "unique (replay)",
            kind: Kind::Unique,
            mode: Mode::Replay,
            clients: n,
            verify: true,
        },
        Scenario {
            name: "incremental (replay)",
            kind: Kind::Incremental,
            mode: Mode::Replay,
            clients: n,
            verify: true,
        },
        Scenario {
            name: "single clone (git)",
            kind: Kind::Fanout,
            mode: Mode::Git,
            clients: 1,
            verify: true,
        },
        Scenario {
            name: "mixed: pushes during fetches",
            kind: Kind::Mixed,
            mode: Mode::Replay,
            clients: n,
            verify: true,
        },
        // What one `--depth 1` pack generation costs, for the floor of the shallow
        // targets (see the report).
        Scenario {
            name: "single shallow clone (git)",
            kind: Kind::Shallow,
            mode: Mode::Git,
            clients: 1,
            verify: true,
        },
    ]
}

/// Indices into [`scenarios`], for the targets.
/// Samples of each single-clone scenario per repetition and server.
const SINGLE_CLONE_SAMPLES: usize = 3;

const FANOUT_REPLAY: usize = 0;
const FANOUT_GIT: usize = 1;
const SHALLOW_REPLAY: usize = 2;
const SHALLOW_GIT: usize = 3;
const SINGLE_CLONE: usize = 6;
const SINGLE_SHALLOW: usize = 8;

fn git(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("git").args(args).output()?;
    ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn prepare(opts: &BenchOptions) -> anyhow::Result<(Setup, Corpus, Corpus)> {
    let repos = opts.workdir.join("repos");
    std::fs::create_dir_all(&repos)?;
    let corpus_path = repos.join("corpus.git");
    let shape = if opts.tiny { Shape::TINY } else { Shape::FULL };
    let marker = format!("seed={} shape={shape:?} repo={:?}", opts.seed, opts.repo);
    let marker_file = opts.workdir.join("corpus.marker");
    if std::fs::read_to_string(&marker_file).ok().as_deref() != Some(marker.as_str()) {
        let _ = std::fs::remove_dir_all(&corpus_path);
        match &opts.repo {
            Some(src) => git(&[
                "clone",
                "-q",
                "--mirror",
                &src.display().to_string(),
                &corpus_path.display().to_string(),
            ])?,
            None => {
                println!("generating corpus {shape:?} from seed {}", opts.seed);
                corpus::generate("git", &corpus_path, shape, opts.seed)?;
            }
        }
        std::fs::write(&marker_file, &marker)?;
    }
    let mixed_path = repos.join("mixed.git");
    let _ = std::fs::remove_dir_all(&mixed_path);
    git(&[
        "clone",
        "-q",
        "--mirror",
        &corpus_path.display().to_string(),
        &mixed_path.display().to_string(),
    ])?;
    let static_dir = opts.workdir.join("static");
    std::fs::create_dir_all(&static_dir)?;
    let setup = Setup {
        gitgate: opts.gitgate.clone(),
        repos,
        work: opts.workdir.join("servers"),
        static_dir,
    };
    Ok((
        setup,
        Corpus::load("git", &corpus_path, "corpus")?,
        Corpus::load("git", &mixed_path, "mixed")?,
    ))
}

fn pack_bytes(repo: &Path) -> u64 {
    std::fs::read_dir(repo.join("objects/pack"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Run the benchmark.
pub fn bench(opts: &BenchOptions) -> anyhow::Result<()> {
    for tool in ["nginx", "fcgiwrap", "git"] {
        ensure!(
            servers::installed(tool),
            "{tool} is not installed (load-tests/bench.sh installs it)"
        );
    }
    let (setup, corpus, mixed) = prepare(opts)?;
    let pack = pack_bytes(&corpus.path);
    println!(
        "corpus: {} ({} MiB of pack, {} commits on main, {} ref tips), seed {}",
        corpus.path.display(),
        pack >> 20,
        corpus.history.len(),
        corpus.tips.len(),
        opts.seed
    );
    let ceiling = scenarios::loopback_ceiling(if opts.tiny { 256 << 20 } else { 4 << 30 })?;
    println!("loopback ceiling: {:.0} MiB/s", ceiling / (1 << 20) as f64);
    if opts.hits_only {
        return print_hits(opts, &setup, &corpus);
    }
    if opts.only.as_deref() == Some("fleet") {
        let fleet = crate::fleet::fleet_comparison(&setup, &corpus, opts.clients, opts.repeat)?;
        for (label, runs) in [("one gateway", &fleet.single), ("fleet of 3", &fleet.fleet)] {
            let (procs, node, gateways, wall) = crate::fleet::FleetFigures::medians(runs);
            println!(
                "median {label}: node git processes {procs} node CPU {node:.2}s gateways CPU {gateways:.2}s wall {wall:.2}s"
            );
        }
        return Ok(());
    }
    let mut runs: BTreeMap<(usize, usize), Vec<Run>> = BTreeMap::new();
    let mut method = String::new();
    let mut list = scenarios(opts.clients);
    if let Some(only) = &opts.only {
        list.retain(|s| s.name.contains(only.as_str()));
        ensure!(!list.is_empty(), "no scenario name contains {only:?}");
    }
    for rep in 0..opts.repeat {
        for (si, scenario) in list.iter().enumerate() {
            let target = if scenario.kind == Kind::Mixed {
                &mixed
            } else {
                &corpus
            };
            // One clone varies by ±15% from run to run: single-clone scenarios take
            // several samples per repetition (each on a fresh server), interleaved.
            let samples = if scenario.clients == 1 {
                SINGLE_CLONE_SAMPLES
            } else {
                1
            };
            // Interleave: a different server goes first in each repetition.
            for k in (0..SERVERS.len()).cycle().take(samples * SERVERS.len()) {
                let vi = (k + rep + si) % SERVERS.len();
                let server = servers::start(SERVERS[vi], &setup)?;
                let acct = Accounting::attach(SERVERS[vi].label(), &server.pids);
                method = acct.method().to_owned();
                let before = acct.cpu_seconds();
                let outcome = scenarios::run(
                    scenario,
                    &server.authority,
                    target,
                    &opts.workdir.join("clients"),
                    "git",
                )?;
                let cpu = acct.cpu_seconds() - before;
                let rss = measure::peak_rss(server.main_pid);
                acct.detach();
                drop(server);
                println!(
                    "rep {rep} {:<32} {:<18} wall {:>7.2}s cpu {:>7.2}s errors {} unverified {}{}",
                    scenario.name,
                    SERVERS[vi].label(),
                    outcome.wall.as_secs_f64(),
                    cpu,
                    outcome.errors,
                    outcome.verify_failures,
                    outcome
                        .first_error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                );
                runs.entry((si, vi))
                    .or_default()
                    .push(Run { outcome, cpu, rss });
            }
        }
    }
    if opts.only.is_some() {
        print_medians(&list, &runs);
        return ensure_no_failures(runs.values().flatten());
    }
    let (hits, tls) = both_hit_comparisons(opts, &setup, &corpus)?;
    let fleet = crate::fleet::fleet_comparison(&setup, &corpus, opts.clients, opts.repeat)?;
    let fleet_failures: usize = [&fleet.single, &fleet.fleet]
        .iter()
        .flat_map(|runs| runs.iter())
        .map(|r| r.outcome.errors + r.outcome.verify_failures)
        .sum();
    let report = report(
        opts, &list, &runs, &method, ceiling, hits, tls, &fleet, pack,
    );
    println!("\n{report}");
    if let Some(path) = &opts.results {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
        println!("written to {}", path.display());
    }
    ensure!(
        fleet_failures == 0,
        "{fleet_failures} fleet requests failed or did not verify"
    );
    ensure_no_failures(runs.values().flatten())
}

fn ensure_no_failures<'a>(runs: impl Iterator<Item = &'a Run>) -> anyhow::Result<()> {
    let failures: usize = runs
        .map(|r| r.outcome.errors + r.outcome.verify_failures)
        .sum();
    ensure!(
        failures == 0,
        "{failures} requests failed or did not verify"
    );
    Ok(())
}

/// Median wall and server CPU of each (scenario, server), and CPU against nginx's.
fn print_medians(list: &[Scenario], runs: &BTreeMap<(usize, usize), Vec<Run>>) {
    let nginx = SERVERS
        .iter()
        .position(|k| *k == servers::Kind::Nginx)
        .unwrap_or(SERVERS.len() - 1);
    for (si, scenario) in list.iter().enumerate() {
        let cpu_of = |vi: usize| {
            median(
                &runs
                    .get(&(si, vi))
                    .map(|r| r.iter().map(|r| r.cpu).collect::<Vec<_>>())
                    .unwrap_or_default(),
            )
        };
        let base = cpu_of(nginx);
        for (vi, server) in SERVERS.iter().enumerate() {
            let Some(rs) = runs.get(&(si, vi)) else {
                continue;
            };
            let wall = median(
                &rs.iter()
                    .map(|r| r.outcome.wall.as_secs_f64())
                    .collect::<Vec<_>>(),
            );
            let cpu = cpu_of(vi);
            println!(
                "median {:<32} {:<18} wall {wall:>7.2}s cpu {cpu:>7.2}s ({:.3}× nginx)",
                scenario.name,
                server.label(),
                cpu / base
            );
        }
    }
}

/// Cache hits against nginx serving the same bytes as a static file (with `sendfile`),
/// medians of interleaved rounds. A round moves 1.5 GiB in under half a second, so one
/// round is at the mercy of whatever else the machine does (rounds of one server vary
/// by ±20%): the bench runs five per repetition, at least five.
#[derive(Debug, Clone, Copy)]
struct HitFigures {
    /// Aggregate MiB/s-able bytes per second: gitgate hits, nginx static.
    hit_tp: f64,
    static_tp: f64,
    /// Server CPU seconds per GiB served.
    hit_cpu_per_gib: f64,
    static_cpu_per_gib: f64,
    /// gitgate's peak RSS over the rounds (VmHWM, warm-up included).
    hit_rss: u64,
    /// Bytes of one hit (the entry's response body).
    entry_bytes: u64,
}

/// Cache hits against nginx's static file, in plaintext and then over TLS.
fn both_hit_comparisons(
    opts: &BenchOptions,
    setup: &Setup,
    corpus: &Corpus,
) -> anyhow::Result<(HitFigures, crate::stats::HitMedians)> {
    let hits = hit_comparison(setup, corpus, opts.clients, opts.hit_rounds)?;
    // `clone-response.bin` is what `hit_comparison` left for nginx.
    let tls = crate::tls_hits::tls_hit_comparison(
        setup,
        &corpus.name,
        &clone_request(corpus),
        "clone-response.bin",
        hits.entry_bytes,
        opts.clients,
        opts.hit_rounds,
    )?;
    Ok((hits, tls))
}

/// `--hits-only`: the two hit comparisons, printed.
fn print_hits(opts: &BenchOptions, setup: &Setup, corpus: &Corpus) -> anyhow::Result<()> {
    let (hits, tls) = both_hit_comparisons(opts, setup, corpus)?;
    let plaintext = crate::stats::HitMedians {
        hit_tp: hits.hit_tp,
        static_tp: hits.static_tp,
        hit_cpu_per_gib: hits.hit_cpu_per_gib,
        static_cpu_per_gib: hits.static_cpu_per_gib,
    };
    println!(
        "plaintext: {}, peak RSS {:.1} MiB",
        plaintext.summary(),
        hits.hit_rss as f64 / (1 << 20) as f64
    );
    println!("TLS: {}", tls.summary());
    Ok(())
}

/// The protocol v2 request body of a full clone of `corpus`.
fn clone_request(corpus: &Corpus) -> Vec<u8> {
    crate::replay::Fetch {
        wants: corpus.tips.clone(),
        haves: vec![],
        deepen: None,
    }
    .body()
}

/// Measure [`HitFigures`]: both servers run side by side, the same `clients` fetch the
/// same bytes with the same HTTP client, and the order alternates per round.
fn hit_comparison(
    setup: &Setup,
    corpus: &Corpus,
    clients: usize,
    rounds: usize,
) -> anyhow::Result<HitFigures> {
    let gitgate = servers::start(servers::Kind::GitgateCache, setup)?;
    // Warm the entry, keep the bytes for nginx to serve statically.
    let body = clone_request(corpus);
    let headers = [
        ("Content-Type", "application/x-git-upload-pack-request"),
        ("Git-Protocol", "version=2"),
    ];
    let path = format!("/{}.git/git-upload-pack", corpus.name);
    // Twice: at the default `min_occurrences` (1) the second occurrence makes the entry.
    crate::http::request(&gitgate.authority, "POST", &path, &headers, &body)?;
    let warm = crate::http::request(&gitgate.authority, "POST", &path, &headers, &body)?;
    std::fs::write(setup.static_dir.join("clone-response.bin"), &warm.body)?;
    let nginx = servers::start(servers::Kind::Nginx, setup)?;
    let mut rounds_seen = crate::stats::HitRounds::default();
    for round in 0..rounds.max(1) {
        for k in 0..2 {
            let gitgate_turn = (k + round) % 2 == 0;
            let (server, label) = if gitgate_turn {
                (&gitgate, "hits-gitgate")
            } else {
                (&nginx, "hits-nginx")
            };
            let acct = Accounting::attach(label, &server.pids);
            let machine = measure::machine_ticks();
            let before = acct.cpu_seconds();
            let (bytes, wall) = if gitgate_turn {
                scenarios::parallel_requests(
                    &server.authority,
                    "POST",
                    &path,
                    &headers,
                    &body,
                    clients,
                )?
            } else {
                scenarios::parallel_requests(
                    &server.authority,
                    "GET",
                    "/static/clone-response.bin",
                    &[],
                    &[],
                    clients,
                )?
            };
            let cpu = acct.cpu_seconds() - before;
            let busy = measure::busy_since(machine);
            acct.detach();
            ensure!(
                bytes == warm.body.len() as u64 * clients as u64,
                "{label}: {bytes} bytes, expected {} per client",
                warm.body.len()
            );
            rounds_seen.record(
                round,
                label,
                gitgate_turn,
                bytes,
                wall.as_secs_f64(),
                cpu,
                &format!(", machine busy {busy}"),
            );
        }
    }
    let medians = rounds_seen.medians();
    Ok(HitFigures {
        hit_tp: medians.hit_tp,
        static_tp: medians.static_tp,
        hit_cpu_per_gib: medians.hit_cpu_per_gib,
        static_cpu_per_gib: medians.static_cpu_per_gib,
        hit_rss: measure::peak_rss(gitgate.main_pid),
        entry_bytes: warm.body.len() as u64,
    })
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

#[allow(clippy::too_many_arguments)]
fn report(
    opts: &BenchOptions,
    list: &[Scenario],
    runs: &BTreeMap<(usize, usize), Vec<Run>>,
    method: &str,
    ceiling: f64,
    hits: HitFigures,
    tls: crate::stats::HitMedians,
    fleet: &crate::fleet::FleetFigures,
    pack: u64,
) -> String {
    let mib = |b: f64| b / (1 << 20) as f64;
    let mut out = String::new();
    let _ = writeln!(out, "# gitgate load test results\n");
    let _ = writeln!(out, "Command: `{}`  ", opts.command);
    let _ = writeln!(out, "Corpus: {} MiB of pack (seed {}{}); {} clients; {} repetitions, interleaved (single clones: {SINGLE_CLONE_SAMPLES} per repetition, each on a fresh server); medians shown.  ", pack >> 20, opts.seed, opts.repo.as_ref().map(|r| format!(", from {}", r.display())).unwrap_or_default(), opts.clients, opts.repeat);
    let _ = writeln!(
        out,
        "Server CPU measured with {method}; gitgate peak RSS is VmHWM of the gitgate process.  "
    );
    let _ = writeln!(
        out,
        "Machine: {} cores. Loopback ceiling (one TCP stream): {:.0} MiB/s.\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        mib(ceiling)
    );
    let _ = writeln!(out, "| scenario | server | wall s | server CPU s | CPU vs nginx | wall vs nginx | TTFB p50/p95/p99 s | duration p50/p95/p99 s | MiB | errors | unverified |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    let mut medians: BTreeMap<(usize, usize), (f64, f64)> = BTreeMap::new();
    for (si, _) in list.iter().enumerate() {
        for vi in 0..SERVERS.len() {
            if let Some(rs) = runs.get(&(si, vi)) {
                let wall = median(
                    &rs.iter()
                        .map(|r| r.outcome.wall.as_secs_f64())
                        .collect::<Vec<_>>(),
                );
                let cpu = median(&rs.iter().map(|r| r.cpu).collect::<Vec<_>>());
                medians.insert((si, vi), (wall, cpu));
            }
        }
    }
    for (si, s) in list.iter().enumerate() {
        let base = medians.get(&(si, 2)).copied();
        for (vi, server) in SERVERS.iter().enumerate() {
            let Some(rs) = runs.get(&(si, vi)) else {
                continue;
            };
            let (wall, cpu) = medians[&(si, vi)];
            let ttfb: Vec<Duration> = rs.iter().flat_map(|r| r.outcome.ttfb.clone()).collect();
            let dur: Vec<Duration> = rs
                .iter()
                .flat_map(|r| r.outcome.durations.clone())
                .collect();
            let bytes = median(
                &rs.iter()
                    .map(|r| r.outcome.bytes as f64)
                    .collect::<Vec<_>>(),
            );
            let errors: usize = rs.iter().map(|r| r.outcome.errors).sum();
            let unverified: usize = rs.iter().map(|r| r.outcome.verify_failures).sum();
            let ratio = |a: f64, b: Option<f64>| {
                b.filter(|b| *b > 0.0)
                    .map_or("-".into(), |b| format!("{:.3}×", a / b))
            };
            let ttfb_text = if ttfb.is_empty() {
                "-".into()
            } else {
                format!(
                    "{}/{}/{}",
                    secs(percentile(&ttfb, 50.0)),
                    secs(percentile(&ttfb, 95.0)),
                    secs(percentile(&ttfb, 99.0))
                )
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {:.2} | {} | {} | {} | {}/{}/{} | {:.1} | {} | {} |",
                if vi == 0 { s.name } else { "" },
                server.label(),
                wall,
                cpu,
                ratio(cpu, base.map(|b| b.1)),
                ratio(wall, base.map(|b| b.0)),
                ttfb_text,
                secs(percentile(&dur, 50.0)),
                secs(percentile(&dur, 95.0)),
                secs(percentile(&dur, 99.0)),
                mib(bytes),
                errors,
                unverified
            );
        }
    }
    let rss = runs
        .iter()
        .filter(|((si, vi), _)| {
            *vi == 0 && list[*si].kind == Kind::Fanout && list[*si].clients == opts.clients
        })
        .flat_map(|(_, rs)| rs.iter().map(|r| r.rss))
        .max()
        .unwrap_or(0);
    let cpu_ratio = |si: usize| {
        medians
            .get(&(si, 0))
            .zip(medians.get(&(si, 2)))
            .map(|(g, n)| g.1 / n.1.max(1e-9))
    };
    let wall_ratio = |si: usize| {
        medians
            .get(&(si, 0))
            .zip(medians.get(&(si, 2)))
            .map(|(g, n)| g.0 / n.0.max(1e-9))
    };
    let verdict = |v: Option<f64>, target: f64, below: bool| match v {
        None => "not measured".to_owned(),
        Some(v) if (below && v <= target) || (!below && v >= target) => format!("{v:.3} — met"),
        Some(v) => format!("{v:.3} — **missed**"),
    };
    let _ = writeln!(
        out,
        "\n## Fleet: {} git clones spread round-robin over gateways sharing PostgreSQL and three `gitgate-node`s\n",
        opts.clients
    );
    let _ = writeln!(out, "Each run starts from scratch (new PostgreSQL, nodes holding a copy of the corpus each, new gateways), so each fan-out pays for its pack generation and advertisements. Medians of {} runs per setup, interleaved. Node CPU includes the nodes' git processes; server CPU is nodes + gateways. Idle is the gateways' own CPU per second, measured for a few seconds before the fan-out (health checks, heartbeats, timers); it is part of the gateways' CPU over the fan-out's wall time.\n", fleet.single.len());
    let _ = writeln!(out, "| setup | node git processes | node CPU s | gateways CPU s | gateways idle CPU s/s | server CPU s | server CPU vs nginx + http-backend | wall s |\n|---|---|---|---|---|---|---|---|");
    for (label, runs) in [
        ("one gateway", &fleet.single),
        ("fleet of 3 gateways", &fleet.fleet),
    ] {
        let (procs, node, gw, wall) = crate::fleet::FleetFigures::medians(runs);
        let idle = crate::fleet::FleetFigures::idle(runs);
        let vs_nginx = medians.get(&(FANOUT_GIT, 2)).map_or("-".to_owned(), |n| {
            format!("{:.3}×", (node + gw) / n.1.max(1e-9))
        });
        let _ = writeln!(
            out,
            "| {label} | {procs:.0} | {node:.2} | {gw:.2} | {idle:.3} | {:.2} | {vs_nginx} | {wall:.2} |",
            node + gw
        );
    }
    let _ = writeln!(
        out,
        "\n## Targets (gitgate with the cache vs nginx + git http-backend)\n"
    );
    let _ = writeln!(out, "| target | goal | measured |\n|---|---|---|");
    let _ = writeln!(
        out,
        "| `--depth 1` fan-out N={}, server CPU (git clients) | ≤ 0.03× | {} |",
        opts.clients,
        verdict(cpu_ratio(SHALLOW_GIT), 0.03, true)
    );
    let _ = writeln!(
        out,
        "| `--depth 1` fan-out N={}, server CPU (replay) | ≤ 0.03× | {} |",
        opts.clients,
        verdict(cpu_ratio(SHALLOW_REPLAY), 0.03, true)
    );
    // The least a shallow fan-out can cost: one generation (the single shallow clone
    // through gitgate without its cache: git's own work plus one relayed copy) and every
    // client's bytes at the cheaper of nginx's static file and gitgate's hits per GiB.
    // An estimate: the hit comparison's client is not git, and on loopback part of the
    // client's receive work is billed to the sender.
    let generation = medians.get(&(SINGLE_SHALLOW, 1)).map(|m| m.1);
    for (si, label) in [(SHALLOW_GIT, "git clients"), (SHALLOW_REPLAY, "replay")] {
        let bytes = runs.get(&(si, 0)).map(|rs| {
            median(
                &rs.iter()
                    .map(|r| r.outcome.bytes as f64)
                    .collect::<Vec<_>>(),
            )
        });
        let nginx = medians.get(&(si, 2)).map(|m| m.1);
        if let (Some(generation), Some(bytes), Some(nginx)) = (generation, bytes, nginx) {
            let per_gib = hits.static_cpu_per_gib.min(hits.hit_cpu_per_gib);
            let serving = per_gib * bytes / (1u64 << 30) as f64;
            let _ = writeln!(
                out,
                "| `--depth 1` fan-out ({label}): floor = one generation ({generation:.2} s) + serving every byte at the cheapest static-file CPU per GiB measured below ({serving:.2} s) | (for reading the line above) | {:.3}× of nginx + http-backend ({:.3}× for the generation alone) |",
                (generation + serving) / nginx.max(1e-9),
                generation / nginx.max(1e-9)
            );
        }
    }
    let _ = writeln!(
        out,
        "| full fan-out N={}, server CPU (git clients) | ≤ 0.07× | {} |",
        opts.clients,
        verdict(cpu_ratio(FANOUT_GIT), 0.07, true)
    );
    let _ = writeln!(
        out,
        "| full fan-out N={}, server CPU (replay) | ≤ 0.07× | {} |",
        opts.clients,
        verdict(cpu_ratio(FANOUT_REPLAY), 0.07, true)
    );
    let _ = writeln!(
        out,
        "| full fan-out N={}, wall time (git clients) | ≤ 0.20× | {} |",
        opts.clients,
        verdict(wall_ratio(FANOUT_GIT), 0.20, true)
    );
    let _ = writeln!(
        out,
        "| full fan-out N={}, wall time (replay) | ≤ 0.20× | {} |",
        opts.clients,
        verdict(wall_ratio(FANOUT_REPLAY), 0.20, true)
    );
    let _ = writeln!(
        out,
        "| cache-hit aggregate throughput vs nginx static file, N={} | ≥ 0.90× | {} ({:.0} vs {:.0} MiB/s) |",
        opts.clients,
        verdict(Some(hits.hit_tp / hits.static_tp.max(1.0)), 0.90, false),
        mib(hits.hit_tp),
        mib(hits.static_tp)
    );
    let _ = writeln!(
        out,
        "| server CPU per GiB of cache hits vs nginx static file | ≤ 1.30× | {} ({:.3} vs {:.3} s/GiB) |",
        verdict(
            Some(hits.hit_cpu_per_gib / hits.static_cpu_per_gib.max(1e-9)),
            1.30,
            true
        ),
        hits.hit_cpu_per_gib,
        hits.static_cpu_per_gib
    );
    let _ = writeln!(
        out,
        "| gitgate peak RSS, {} concurrent cache hits | ≤ 64 MiB | {:.1} MiB — {} |",
        opts.clients,
        mib(hits.hit_rss as f64),
        if hits.hit_rss <= 64 << 20 {
            "met"
        } else {
            "**missed**"
        }
    );
    // TLS: no target; the issue asks where the cost goes (see the reading below).
    let _ = writeln!(
        out,
        "| TLS cache hits (rustls) vs nginx static file over TLS (OpenSSL, no kTLS), N={}: throughput | (measured) | {:.2}× ({:.0} vs {:.0} MiB/s; {:.2}× of plaintext hits) |",
        opts.clients,
        tls.hit_tp / tls.static_tp.max(1.0),
        mib(tls.hit_tp),
        mib(tls.static_tp),
        tls.hit_tp / hits.hit_tp.max(1.0)
    );
    let _ = writeln!(
        out,
        "| TLS cache hits: server CPU per GiB vs nginx static over TLS | (measured) | {:.2}× ({:.3} vs {:.3} s/GiB; {:.1}× of plaintext hits) |",
        tls.hit_cpu_per_gib / tls.static_cpu_per_gib.max(1e-9),
        tls.hit_cpu_per_gib,
        tls.static_cpu_per_gib,
        tls.hit_cpu_per_gib / hits.hit_cpu_per_gib.max(1e-9)
    );
    let (single, three) = (
        crate::fleet::FleetFigures::medians(&fleet.single),
        crate::fleet::FleetFigures::medians(&fleet.fleet),
    );
    let nginx_git_fanout = medians.get(&(FANOUT_GIT, 2)).map(|m| m.1);
    let _ = writeln!(
        out,
        "| fleet: node CPU, 3 gateways vs 1, git fan-out N={} | ≤ 1.20× | {} ({:.2} vs {:.2} s) |",
        opts.clients,
        verdict(Some(three.1 / single.1.max(1e-9)), 1.20, true),
        three.1,
        single.1
    );
    let _ = writeln!(
        out,
        "| git-client full fan-out N={}, server CPU, one gateway (the table above) | < 0.08× | {} |",
        opts.clients,
        verdict(cpu_ratio(FANOUT_GIT), 0.08, true)
    );
    let _ = writeln!(
        out,
        "| git-client full fan-out N={}, server CPU, fleet of 3 (gateways + nodes) | < 0.08× | {} |",
        opts.clients,
        verdict(
            nginx_git_fanout.map(|n| (three.1 + three.2) / n.max(1e-9)),
            0.08,
            true
        )
    );
    let _ = writeln!(
        out,
        "| single unique clone, wall time | ≤ 1.05× | {} |",
        verdict(wall_ratio(SINGLE_CLONE), 1.05, true)
    );
    let _ = writeln!(
        out,
        "| gitgate peak RSS, {} concurrent full clones | ≤ 64 MiB | {:.1} MiB — {} |",
        opts.clients,
        mib(rss as f64),
        if rss <= 64 << 20 { "met" } else { "**missed**" }
    );
    out
}
