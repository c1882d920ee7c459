//! The fleet scenario: the git-client fan-out spread round-robin over three gateways
//! that share one PostgreSQL store (`[cluster]`) and three `gitgate-node` processes,
//! against one gateway over the same kind of store and nodes. Every run starts from
//! scratch (a new PostgreSQL, new nodes holding a copy of the corpus each, new
//! gateways), so each fan-out pays for its pack generation and advertisements; the
//! two setups alternate which goes first.
//!
//! Reported per setup: the nodes' git processes (their own counter), the nodes' CPU
//! (git processes included) and the gateways' CPU.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use gitgate_storage_client::throwaway_postgres::ThrowawayPostgres;

use crate::measure::{self, Accounting};
use crate::scenarios::{self, Corpus, Kind, Mode, Outcome, Scenario};
use crate::servers::{self, Server, Setup};
use crate::stats::median;

const NODE_TOKEN: &str = "bench-node-token-0123456789";
const FLEET_SECRET: &str = "bench-fleet-secret-0123456789";
/// How long the gateways' idle CPU is measured before each fan-out.
const IDLE_WINDOW: Duration = Duration::from_secs(3);

/// One fan-out's figures.
pub struct FleetRun {
    /// Git processes the nodes started.
    pub git_processes: f64,
    /// The nodes' CPU seconds (their git processes included).
    pub node_cpu: f64,
    /// The gateways' CPU seconds.
    pub gateway_cpu: f64,
    /// Each gateway's CPU seconds (utime + stime of its process), in start order.
    pub per_gateway: Vec<f64>,
    /// The gateways' CPU seconds per second while idle, before the fan-out.
    pub idle_per_second: f64,
    /// The clients' view.
    pub outcome: Outcome,
}

/// The runs of both setups.
pub struct FleetFigures {
    /// One gateway.
    pub single: Vec<FleetRun>,
    /// Three gateways in a fleet.
    pub fleet: Vec<FleetRun>,
}

impl FleetFigures {
    /// Medians of (git processes, node CPU, gateway CPU, wall) of `runs`.
    pub fn medians(runs: &[FleetRun]) -> (f64, f64, f64, f64) {
        let m = |f: fn(&FleetRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        (
            m(|r| r.git_processes),
            m(|r| r.node_cpu),
            m(|r| r.gateway_cpu),
            m(|r| r.outcome.wall.as_secs_f64()),
        )
    }

    /// Median of the gateways' idle CPU seconds per second of `runs`.
    pub fn idle(runs: &[FleetRun]) -> f64 {
        median(&runs.iter().map(|r| r.idle_per_second).collect::<Vec<_>>())
    }
}

/// Run the fan-out of `clients` git clones `repeat` times through one gateway and
/// through a fleet of three.
pub fn fleet_comparison(
    setup: &Setup,
    corpus: &Corpus,
    clients: usize,
    repeat: usize,
) -> anyhow::Result<FleetFigures> {
    let scenario = Scenario {
        name: "fleet fan-out (git clone)",
        kind: Kind::Fanout,
        mode: Mode::Git,
        clients,
        verify: true,
    };
    let mut figures = FleetFigures {
        single: Vec::new(),
        fleet: Vec::new(),
    };
    for round in 0..repeat.max(1) {
        for k in 0..2 {
            let gateways = if (k + round) % 2 == 0 { 1 } else { 3 };
            let run = one_run(setup, corpus, &scenario, gateways)?;
            println!(
                "round {round} fleet of {gateways}: wall {:>6.2}s node git processes {:>3} node CPU {:>6.2}s gateway CPU {:>6.2}s (each {}) errors {} unverified {}{}",
                run.outcome.wall.as_secs_f64(),
                run.git_processes,
                run.node_cpu,
                run.gateway_cpu,
                run.per_gateway
                    .iter()
                    .map(|c| format!("{c:.2}"))
                    .collect::<Vec<_>>()
                    .join("/"),
                run.outcome.errors,
                run.outcome.verify_failures,
                run.outcome
                    .first_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
            if gateways == 1 {
                figures.single.push(run);
            } else {
                figures.fleet.push(run);
            }
        }
    }
    Ok(figures)
}

fn one_run(
    setup: &Setup,
    corpus: &Corpus,
    scenario: &Scenario,
    gateways: usize,
) -> anyhow::Result<FleetRun> {
    let dir = setup.work.join(format!("fleet-{gateways}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let pg = ThrowawayPostgres::start();
    let nodes = (1..=3)
        .map(|i| start_node(setup, &dir.join(format!("n{i}")), &corpus.path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let gws = (1..=gateways)
        .map(|i| {
            start_gateway(
                setup,
                &dir.join(format!("gw{i}")),
                &pg.url("postgres"),
                &nodes,
                gateways > 1,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let authorities: Vec<String> = gws.iter().map(|g| g.authority.clone()).collect();
    for gw in &gws {
        wait_until(gw, "/-/ready", |_| true)?;
        if gateways > 1 {
            wait_until(gw, "/-/metrics", |text| {
                metric(text, "gitgate_peers{state=\"live\"}") == gateways as f64
            })?;
        }
    }
    // Let start-up work (discovery of the copies on the nodes) settle.
    std::thread::sleep(Duration::from_secs(1));
    let node_pids: Vec<u32> = nodes.iter().flat_map(|n| n.pids.clone()).collect();
    let gw_pids: Vec<u32> = gws.iter().flat_map(|g| g.pids.clone()).collect();
    let node_acct = Accounting::attach(&format!("fleet{gateways}-nodes"), &node_pids);
    let gw_acct = Accounting::attach(&format!("fleet{gateways}-gateways"), &gw_pids);
    // What the gateways cost while idle (health checks, heartbeats, timers).
    let idle_before = gw_acct.cpu_seconds();
    std::thread::sleep(IDLE_WINDOW);
    let idle_per_second = (gw_acct.cpu_seconds() - idle_before) / IDLE_WINDOW.as_secs_f64();
    println!("  idle: {gateways} gateway(s) used {idle_per_second:.4}s of CPU per second");
    let git_before = node_git_processes(&nodes)?;
    let (node_before, gw_before) = (node_acct.cpu_seconds(), gw_acct.cpu_seconds());
    let each_before: Vec<f64> = gws.iter().map(|g| measure::own_cpu(g.main_pid)).collect();
    let outcome =
        scenarios::run_spread(scenario, &authorities, corpus, &dir.join("clients"), "git")?;
    let node_cpu = node_acct.cpu_seconds() - node_before;
    let gateway_cpu = gw_acct.cpu_seconds() - gw_before;
    let per_gateway = gws
        .iter()
        .zip(each_before)
        .map(|(g, before)| measure::own_cpu(g.main_pid) - before)
        .collect();
    node_acct.detach();
    gw_acct.detach();
    let git_processes = node_git_processes(&nodes)? - git_before;
    for (i, gw) in gws.iter().enumerate() {
        println!("  gateway {}: {}", i + 1, gateway_summary(gw)?);
    }
    drop(gws);
    drop(nodes);
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(FleetRun {
        git_processes,
        node_cpu,
        gateway_cpu,
        per_gateway,
        idle_per_second,
        outcome,
    })
}

/// A `gitgate-node` holding its own copy of `repo` (hard-linked objects).
fn start_node(setup: &Setup, dir: &Path, repo: &Path) -> anyhow::Result<Server> {
    let repos = dir.join("repos");
    std::fs::create_dir_all(&repos)?;
    let name = repo.file_name().context("corpus name")?;
    let out = std::process::Command::new("git")
        .args(["clone", "-q", "--mirror", "--local"])
        .arg(repo)
        .arg(repos.join(name))
        .output()?;
    ensure!(
        out.status.success(),
        "copying the corpus: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n[node]\npath = \"{}\"\ntoken = \"{NODE_TOKEN}\"\n",
            repos.display()
        ),
    )?;
    let program = setup.gitgate.with_file_name("gitgate-node");
    let (child, authority) = servers::spawn_listening(&program, &config, &dir.join("node.log"))?;
    Ok(Server::of(authority, vec![child]))
}

fn start_gateway(
    setup: &Setup,
    dir: &Path,
    postgres_url: &str,
    nodes: &[Server],
    cluster: bool,
) -> anyhow::Result<Server> {
    std::fs::create_dir_all(dir)?;
    let port = servers::free_port()?;
    let nodes_toml: String = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "[[storage.nodes]]\nname = \"n{}\"\nurl = \"http://{}\"\ntoken = \"{NODE_TOKEN}\"\n",
                i + 1,
                n.authority
            )
        })
        .collect();
    let cluster_toml = if cluster {
        format!(
            "[cluster]\nadvertise_url = \"http://127.0.0.1:{port}\"\nsecret = \"{FLEET_SECRET}\"\n"
        )
    } else {
        String::new()
    };
    let config = dir.join("gitgate.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddr = \"127.0.0.1:{port}\"\n[storage]\n{nodes_toml}[metadata]\npostgres_url = \"{postgres_url}\"\n\
             [cache]\ndir = \"{}\"\nmin_free_bytes = 0\n[limits]\nfetch_concurrency_per_repo = 0\n\
             [auth]\nanonymous = \"write\"\n[log]\nlevel = \"warn\"\n{cluster_toml}",
            dir.join("cache").display()
        ),
    )?;
    let (child, authority) =
        servers::spawn_listening(&setup.gitgate, &config, &dir.join("gitgate.log"))?;
    Ok(Server::of(authority, vec![child]))
}

/// Poll `GET path` on `server` until it answers 200 with a body `check` accepts.
fn wait_until(server: &Server, path: &str, check: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(resp) = crate::http::request(&server.authority, "GET", path, &[], &[]) {
            if resp.status == 200 && check(&String::from_utf8_lossy(&resp.body)) {
                return Ok(());
            }
        }
        ensure!(
            Instant::now() < deadline,
            "{} never answered {path} as expected",
            server.authority
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The nodes' `gitgate_node_git_processes_total`, all services together.
fn node_git_processes(nodes: &[Server]) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for node in nodes {
        let resp = crate::http::request(&node.authority, "GET", "/-/metrics", &[], &[])?;
        total += metric(
            &String::from_utf8_lossy(&resp.body),
            "gitgate_node_git_processes_total",
        );
    }
    Ok(total)
}

/// What one gateway did, from its metrics: pack-cache lookups by result, bytes it
/// generated (took from a node or an owner) and served, and its peer requests.
fn gateway_summary(gw: &Server) -> anyhow::Result<String> {
    let resp = crate::http::request(&gw.authority, "GET", "/-/metrics", &[], &[])?;
    let text = String::from_utf8_lossy(&resp.body);
    let lookups = ["hit", "miss", "bypass", "error"].map(|r| {
        let series = format!("gitgate_pack_cache_lookups_total{{result=\"{r}\"}}");
        format!("{r} {}", metric(&text, &series))
    });
    let peers = [
        ("forwarder", "ok"),
        ("forwarder", "fallback"),
        ("owner", "ok"),
    ]
    .map(|(role, result)| {
        let series = format!("gitgate_peer_requests_total{{result=\"{result}\",role=\"{role}\"}}");
        format!("{role} {result} {}", metric(&text, &series))
    });
    Ok(format!(
        "lookups {}; generated {:.1} MiB, served {:.1} MiB; peer requests {}",
        lookups.join(", "),
        metric(&text, "gitgate_pack_cache_generated_bytes_total") / (1 << 20) as f64,
        metric(&text, "gitgate_pack_cache_served_bytes_total") / (1 << 20) as f64,
        peers.join(", ")
    ))
}

/// The sum of the series whose name (with labels) starts with `series` in a scrape.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
