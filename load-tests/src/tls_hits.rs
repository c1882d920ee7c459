//! Cache hits over TLS: gitgate (rustls) against nginx serving the same bytes as a
//! static file over TLS (OpenSSL, no kernel TLS), both fetched by the same `curl`
//! processes, rounds alternating which server goes first. Over TLS gitgate cannot use
//! `sendfile`: every byte is read from the entry file into memory and encrypted, as
//! nginx does without kernel TLS, so this is the comparison that says what the
//! encrypted path costs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{ensure, Context};

use crate::measure::{self, Accounting};
use crate::servers::{self, Server, Setup, Tls};
use crate::stats::{HitMedians, HitRounds};

/// A self-signed certificate for 127.0.0.1 in `dir` (P-256, made with `openssl`).
fn certificate(dir: &Path) -> anyhow::Result<Tls> {
    std::fs::create_dir_all(dir)?;
    let tls = Tls {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&tls.key)
        .arg("-out")
        .arg(&tls.cert)
        .output()
        .context("running openssl (apt-get install openssl)")?;
    ensure!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(tls)
}

/// One `curl` fetching `url` (a POST of `body` when given) into nothing; prints the size.
fn curl(ca: &Path, url: &str, body: Option<&Path>) -> anyhow::Result<Child> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--fail",
        "--http1.1",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
    ])
    .arg("--cacert")
    .arg(ca);
    if let Some(body) = body {
        cmd.args([
            "-H",
            "Content-Type: application/x-git-upload-pack-request",
            "-H",
            "Git-Protocol: version=2",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()));
    }
    cmd.arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting curl (apt-get install curl)")
}

/// Run `clients` curls at once; total bytes and wall seconds.
fn fan_out(
    clients: usize,
    ca: &Path,
    url: &str,
    body: Option<&Path>,
) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let children = (0..clients)
        .map(|_| curl(ca, url, body))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut total = 0u64;
    for child in children {
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        total += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .context("curl's size_download")?;
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

/// Measure gitgate's TLS hits against nginx's static file over TLS: `static_file` (under `setup.static_dir`, `expected` bytes)
/// holds what gitgate answered to the POST of `request_body` in the plaintext rounds.
pub fn tls_hit_comparison(
    setup: &Setup,
    corpus_name: &str,
    request_body: &[u8],
    static_file: &str,
    expected: u64,
    clients: usize,
    rounds: usize,
) -> anyhow::Result<HitMedians> {
    let dir: PathBuf = setup.work.join("tls");
    let tls = certificate(&dir)?;
    let body = dir.join("request.bin");
    std::fs::write(&body, request_body)?;
    let gitgate = servers::gitgate_tls(setup, &tls)?;
    let nginx = servers::nginx_static_tls(setup, &tls)?;
    let hit_url = format!(
        "https://{}/{corpus_name}.git/git-upload-pack",
        gitgate.authority
    );
    let static_url = format!("https://{}/static/{static_file}", nginx.authority);
    // Twice: at the default `min_occurrences` (1) the second occurrence makes the entry.
    // Its length may differ from `expected` by a few KiB: git's progress messages are
    // part of the response, how many depends on timing, and this is another
    // production of it.
    let mut entry = 0;
    for _ in 0..2 {
        (entry, _) = fan_out(1, &tls.cert, &hit_url, Some(&body))?;
    }
    ensure!(
        entry.abs_diff(expected) < 64 * 1024,
        "TLS warm-up: {entry} bytes, expected about {expected}"
    );
    let mut rounds_seen = HitRounds::default();
    for round in 0..rounds.max(1) {
        for k in 0..2 {
            let gitgate_turn = (k + round) % 2 == 0;
            let (server, label, url, post, each): (&Server, _, _, _, _) = if gitgate_turn {
                (
                    &gitgate,
                    "tls-gitgate",
                    &hit_url,
                    Some(body.as_path()),
                    entry,
                )
            } else {
                (&nginx, "tls-nginx", &static_url, None, expected)
            };
            let acct = Accounting::attach(label, &server.pids);
            let machine = measure::machine_ticks();
            let before = acct.cpu_seconds();
            let (bytes, wall) = fan_out(clients, &tls.cert, url, post)?;
            let cpu = acct.cpu_seconds() - before;
            let busy = measure::busy_since(machine);
            acct.detach();
            ensure!(
                bytes == each * clients as u64,
                "{label}: {bytes} bytes, expected {each} per client"
            );
            rounds_seen.record(
                round,
                label,
                gitgate_turn,
                bytes,
                wall,
                cpu,
                &format!(", machine busy {busy} (curl clients included)"),
            );
        }
    }
    Ok(rounds_seen.medians())
}
