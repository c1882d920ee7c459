//! `gitgate-load`: load generator and benchmark driver for gitgate.
//!
//! - `corpus`: build the deterministic synthetic repository;
//! - `run`: one scenario against any smart-HTTP server;
//! - `bench`: gitgate with and without the cache against nginx + git http-backend,
//!   interleaved and repeated, with a table of ratios (see `load-tests/bench.sh`).

mod bench;
mod corpus;
mod fleet;
mod http;
mod measure;
mod replay;
mod scenarios;
mod servers;
mod stats;
mod tls_hits;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

/// Load generator and benchmark driver for gitgate.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScenarioArg {
    Fanout,
    Shallow,
    Unique,
    Incremental,
    Mixed,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the synthetic corpus (a bare repository).
    Corpus {
        /// Where to create it.
        #[arg(long)]
        out: PathBuf,
        /// The small shape used by smoke runs.
        #[arg(long)]
        tiny: bool,
        /// Generator seed.
        #[arg(long, default_value_t = 20261121)]
        seed: u64,
    },
    /// Run one scenario against a server.
    Run {
        /// Server address, `host:port`.
        #[arg(long)]
        authority: String,
        /// The bare repository the server serves (read locally for wants and haves).
        #[arg(long)]
        repo: PathBuf,
        /// Its name in URLs.
        #[arg(long, default_value = "corpus")]
        name: String,
        /// Scenario.
        #[arg(long, value_enum)]
        scenario: ScenarioArg,
        /// Drive real `git clone` processes instead of replaying requests.
        #[arg(long)]
        git: bool,
        /// Concurrent clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
    },
    /// `clients` identical requests at once against any server, `rounds` times, with the
    /// bench's counting client: aggregate throughput per round.
    Burst {
        /// Server address, `host:port`.
        #[arg(long)]
        authority: String,
        /// Request path.
        #[arg(long)]
        path: String,
        /// POST this file as a Git protocol v2 upload-pack request (else GET).
        #[arg(long)]
        body: Option<PathBuf>,
        /// Concurrent clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Rounds.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Compare gitgate (cache on and off) with nginx + git http-backend.
    Bench {
        /// Scratch directory.
        #[arg(long, default_value = "target/load-bench")]
        workdir: PathBuf,
        /// Use this bare repository instead of the synthetic corpus.
        #[arg(long)]
        repo: Option<PathBuf>,
        /// Tiny corpus, N=4, one repetition, no report file: the CI smoke run.
        #[arg(long)]
        smoke: bool,
        /// Concurrent clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Repetitions.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Corpus seed.
        #[arg(long, default_value_t = 20261121)]
        seed: u64,
        /// The gitgate binary.
        #[arg(long, default_value = "target/release/gitgate")]
        gitgate: PathBuf,
        /// Write the Markdown report here.
        #[arg(long)]
        results: Option<PathBuf>,
        /// Only the cache-hit comparisons against nginx's static file (plaintext and
        /// TLS), `--rounds` of each, printed; for work on the hit path.
        #[arg(long)]
        hits_only: bool,
        /// Rounds of each hit comparison (default: five per repetition, at least 5).
        #[arg(long)]
        rounds: Option<usize>,
        /// Run only the scenarios whose name contains this text (e.g. `shallow`), print
        /// their medians and stop: no hit or fleet comparison, no report file.
        /// `--only fleet` runs only the fleet comparison.
        #[arg(long, conflicts_with = "hits_only")]
        only: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Cmd::Corpus { out, tiny, seed } => {
            let shape = if tiny {
                corpus::Shape::TINY
            } else {
                corpus::Shape::FULL
            };
            println!("seed {seed}, shape {shape:?}");
            corpus::generate("git", &out, shape, seed)
        }
        Cmd::Run {
            authority,
            repo,
            name,
            scenario,
            git,
            clients,
        } => {
            let corpus = scenarios::Corpus::load("git", &repo, &name)?;
            let kind = match scenario {
                ScenarioArg::Fanout => scenarios::Kind::Fanout,
                ScenarioArg::Shallow => scenarios::Kind::Shallow,
                ScenarioArg::Unique => scenarios::Kind::Unique,
                ScenarioArg::Incremental => scenarios::Kind::Incremental,
                ScenarioArg::Mixed => scenarios::Kind::Mixed,
            };
            let mode = if git {
                scenarios::Mode::Git
            } else {
                scenarios::Mode::Replay
            };
            let s = scenarios::Scenario {
                name: "run",
                kind,
                mode,
                clients,
                verify: true,
            };
            let scratch = std::env::temp_dir().join(format!("gitgate-load-{}", std::process::id()));
            let o = scenarios::run(&s, &authority, &corpus, &scratch, "git")?;
            let _ = std::fs::remove_dir_all(&scratch);
            println!(
                "wall {:.3}s, ttfb p50 {:.3}s p99 {:.3}s, duration p50 {:.3}s p99 {:.3}s, {} MiB, {} errors, {} unverified{}",
                o.wall.as_secs_f64(),
                stats::percentile(&o.ttfb, 50.0).as_secs_f64(),
                stats::percentile(&o.ttfb, 99.0).as_secs_f64(),
                stats::percentile(&o.durations, 50.0).as_secs_f64(),
                stats::percentile(&o.durations, 99.0).as_secs_f64(),
                o.bytes >> 20,
                o.errors,
                o.verify_failures,
                o.first_error.map(|e| format!(" (first: {e})")).unwrap_or_default()
            );
            Ok(())
        }
        Cmd::Burst {
            authority,
            path,
            body,
            clients,
            rounds,
        } => {
            let (method, headers, body) = match body {
                Some(file) => (
                    "POST",
                    vec![
                        ("Content-Type", "application/x-git-upload-pack-request"),
                        ("Git-Protocol", "version=2"),
                    ],
                    std::fs::read(&file).with_context(|| file.display().to_string())?,
                ),
                None => ("GET", vec![], vec![]),
            };
            for round in 0..rounds {
                let (bytes, wall) = scenarios::parallel_requests(
                    &authority, method, &path, &headers, &body, clients,
                )?;
                println!(
                    "round {round}: {} bytes in {:.3} s, {:.0} MiB/s",
                    bytes,
                    wall.as_secs_f64(),
                    bytes as f64 / wall.as_secs_f64() / (1 << 20) as f64
                );
            }
            Ok(())
        }
        Cmd::Bench {
            workdir,
            repo,
            smoke,
            clients,
            repeat,
            seed,
            gitgate,
            results,
            hits_only,
            rounds,
            only,
        } => {
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            let repeat = if smoke { 1 } else { repeat };
            let gitgate = std::fs::canonicalize(&gitgate).with_context(|| {
                format!(
                    "{} (build it with cargo build --release)",
                    gitgate.display()
                )
            })?;
            std::fs::create_dir_all(&workdir)?;
            let workdir = std::fs::canonicalize(&workdir)?;
            let opts = bench::BenchOptions {
                workdir,
                repo,
                tiny: smoke,
                clients: if smoke { 4 } else { clients },
                repeat,
                seed,
                gitgate,
                results: if smoke { None } else { results },
                command,
                hits_only,
                only,
                hit_rounds: rounds.unwrap_or((repeat * 5).max(5)),
            };
            bench::bench(&opts)
        }
    }
}
