//! Operating gitgate: the auth matrix, per-repository limits, slow clients, TLS,
//! metrics and logs, secret rotation, and config checking — against real processes.

mod support;

use support::path_str;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use gitgate::auth::proxy::ProxySecret;
use gitgate::auth::token::hash_token;
use gitgate::auth::Permission;
use gitgate_proto::RepoPath;
use support::git::{default_client, make_source, seed_bare, Git};
use support::{http, metric, node_config, sighup, GatewayOptions, TestGateway};
use tempfile::TempDir;

const READ_TOKEN: &str = "read-token-aaaaaaaaaaaaaaaa";
const WRITE_TOKEN: &str = "write-token-bbbbbbbbbbbbbbbb";
const PROXY_SECRET: &str = "proxy-secret-cccccccccccccccc";

fn auth_section() -> String {
    format!(
        "[auth]\nanonymous = \"none\"\npublic = [\"oss/*\"]\n\
         [[auth.tokens]]\nname = \"reader\"\nhash = \"{}\"\nread = [\"**\"]\n\
         [[auth.tokens]]\nname = \"writer\"\nhash = \"{}\"\nwrite = [\"team/*\", \"oss/*\"]\n\
         [auth.proxy]\nsecret = \"{PROXY_SECRET}\"\n",
        hash_token(READ_TOKEN),
        hash_token(WRITE_TOKEN)
    )
}

#[derive(Clone, Copy, Debug)]
enum Who {
    Anonymous,
    Reader,
    Writer,
    WrongToken,
    ProxyValid,
    ProxyExpired,
    ProxyTampered,
}

fn header_for(who: Who, repo: &str) -> Option<String> {
    let secret = ProxySecret::new(PROXY_SECRET.into());
    let repo = RepoPath::parse(repo).expect("repo");
    let now = SystemTime::now();
    match who {
        Who::Anonymous => None,
        Who::Reader => Some(format!("Authorization: Bearer {READ_TOKEN}")),
        Who::Writer => Some(format!("Authorization: Bearer {WRITE_TOKEN}")),
        Who::WrongToken => Some("Authorization: Bearer not-a-known-token".into()),
        Who::ProxyValid => Some(format!(
            "gitgate-proxy-auth: {}",
            secret.sign(&repo, Permission::Write, now + Duration::from_secs(300))
        )),
        Who::ProxyExpired => Some(format!(
            "gitgate-proxy-auth: {}",
            secret.sign(&repo, Permission::Write, now - Duration::from_secs(5))
        )),
        Who::ProxyTampered => {
            let signed = secret.sign(&repo, Permission::Read, now + Duration::from_secs(300));
            Some(format!(
                "gitgate-proxy-auth: {}",
                signed.replace("perm=read", "perm=write")
            ))
        }
    }
}

fn git_as(
    git: &Git,
    who: Who,
    repo: &str,
    cwd: Option<&Path>,
    args: &[&str],
) -> std::process::Output {
    let mut full: Vec<String> = Vec::new();
    if let Some(h) = header_for(who, repo) {
        full.push("-c".into());
        full.push(format!("http.extraHeader={h}"));
    }
    full.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    git.output(cwd, &refs, &[])
}

#[test]
fn auth_matrix_holds_for_clone_and_push_including_cache_hits() {
    let gw = TestGateway::start(
        false,
        GatewayOptions {
            auth: Some(auth_section()),
            extra: "[cache]\nmin_occurrences = 0\n".into(),
            ..Default::default()
        },
    );
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let work = make_source(&git, tmp.path(), 5);
    for repo in ["oss/pub", "team/priv"] {
        seed_bare(&git, &work, &gw.repo_dir(repo));
    }
    let private_head = git
        .ok(Some(&work), &["rev-parse", "main"])
        .trim()
        .to_owned();
    // Warm the cache with an authorized clone, so the refusals below are refusals of
    // cache hits too.
    let warm = tmp.path().join("warm");
    let out = git_as(
        &git,
        Who::Writer,
        "team/priv",
        None,
        &[
            "-c",
            "protocol.version=0",
            "clone",
            "-q",
            &gw.repo_url("team/priv"),
            path_str(&warm),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    use Who::*;
    // (who, repo, may clone, may push)
    let cases = [
        (Anonymous, "oss/pub", true, false),
        (Anonymous, "team/priv", false, false),
        (Reader, "oss/pub", true, false),
        (Reader, "team/priv", true, false),
        (Writer, "oss/pub", true, true),
        (Writer, "team/priv", true, true),
        (WrongToken, "oss/pub", false, false),
        (WrongToken, "team/priv", false, false),
        (ProxyValid, "team/priv", true, true),
        (ProxyExpired, "team/priv", false, false),
        (ProxyTampered, "team/priv", false, false),
    ];
    for (i, (who, repo, may_clone, may_push)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(format!("case-{i}"));
        let out = git_as(
            &git,
            who,
            repo,
            None,
            &[
                "-c",
                "protocol.version=0",
                "clone",
                "-q",
                &gw.repo_url(repo),
                path_str(&dir),
            ],
        );
        assert_eq!(
            out.status.success(),
            may_clone,
            "{who:?} clone {repo}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !may_clone {
            assert!(
                !dir.join(".git/objects/pack").exists()
                    || std::fs::read_dir(dir.join(".git/objects/pack"))
                        .map(|d| d.count())
                        .unwrap_or(0)
                        == 0,
                "{who:?} got objects of {repo}"
            );
            // And a raw fetch request for the private head gets no pack either.
            let mut body = Vec::new();
            let want = format!("want {private_head} multi_ack_detailed no-done side-band-64k thin-pack no-progress ofs-delta deepen-since deepen-not agent=git/2.47.3\n");
            body.extend_from_slice(format!("{:04x}{want}", want.len() + 4).as_bytes());
            body.extend_from_slice(b"00000009done\n");
            let mut headers =
                vec!["Content-Type: application/x-git-upload-pack-request".to_owned()];
            headers.extend(header_for(who, repo));
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            let resp = http::post(
                gw.server.authority(),
                &format!("/{repo}.git/git-upload-pack"),
                &headers,
                &body,
            )
            .expect("post");
            assert!(
                matches!(resp.status, 401 | 403),
                "{who:?} {repo}: {}",
                resp.status
            );
            assert!(
                !resp.body.windows(4).any(|w| w == b"PACK"),
                "{who:?} leaked a pack of {repo}"
            );
            if resp.status == 401 {
                assert!(
                    resp.head
                        .to_ascii_lowercase()
                        .contains("www-authenticate: basic"),
                    "{}",
                    resp.head
                );
            }
            continue;
        }
        git.commit_file(&dir, &format!("f{i}.txt"), "x\n", "change");
        let out = git_as(
            &git,
            who,
            repo,
            Some(&dir),
            &["push", "-q", "origin", &format!("HEAD:refs/heads/case-{i}")],
        );
        assert_eq!(
            out.status.success(),
            may_push,
            "{who:?} push {repo}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let landed = git.output(
            None,
            &[
                "--git-dir",
                path_str(&gw.repo_dir(repo)),
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/heads/case-{i}"),
            ],
            &[],
        );
        assert_eq!(
            landed.status.success(),
            may_push,
            "{who:?} push {repo} landed = {}",
            landed.status.success()
        );
    }
    let scrape = gw.scrape();
    assert!(
        metric(
            &scrape,
            "gitgate_client_authentications_total",
            &["result=\"forbidden\""]
        ) >= 1.0
    );
    assert!(
        metric(
            &scrape,
            "gitgate_client_authentications_total",
            &["result=\"unauthenticated\""]
        ) >= 1.0
    );
    assert!(
        metric(
            &scrape,
            "gitgate_pack_cache_lookups_total",
            &["result=\"hit\""]
        ) >= 1.0,
        "no cache hit was exercised"
    );
}

#[test]
fn per_repository_limit_caps_node_work_and_refuses_past_the_queue() {
    let gw = TestGateway::start(
        false,
        GatewayOptions {
            create_on_push: true,
            extra: "[cache]\nenabled = false\n".into(),
            ..Default::default()
        }
        .with_limits("fetch_concurrency_per_repo = 4\nfetch_queue_per_repo = 4\nfetch_queue_timeout = \"120s\"\n"),
    );
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let head = support::push_incompressible(&gw, &git, tmp.path(), "hot", &[3 << 20], 5);
    let body = support::fetch_everything(&head);

    // 32 cache-missing fetches at once; each client reads slowly, so slots stay taken.
    let barrier = Arc::new(std::sync::Barrier::new(32));
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (barrier, body, authority) = (barrier.clone(), body.clone(), gw.server.authority().to_owned());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&authority).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
                let head = format!(
                    "POST /hot.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-git-upload-pack-request\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                barrier.wait();
                let started = Instant::now();
                s.write_all(head.as_bytes()).expect("send");
                s.write_all(&body).expect("send");
                let mut response = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                let mut first_byte = None;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            first_byte.get_or_insert(started.elapsed());
                            response.extend_from_slice(&buf[..n]);
                            std::thread::sleep(Duration::from_millis(15));
                        }
                    }
                }
                let text = String::from_utf8_lossy(&response[..response.len().min(200)]).into_owned();
                let status: u16 = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                let complete = response.windows(5).any(|w| w == b"0\r\n\r\n") && response.windows(4).any(|w| w == b"PACK");
                (status, complete, first_byte.unwrap_or_default(), text)
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for c in clients {
        let (status, complete, first_byte, text) = c.join().expect("client");
        match status {
            200 => {
                assert!(complete, "an accepted fetch did not complete");
                ok += 1;
            }
            429 => {
                assert!(text.to_ascii_lowercase().contains("retry-after"), "{text}");
                assert!(
                    first_byte < Duration::from_secs(2),
                    "a refusal took {first_byte:?}"
                );
                refused += 1;
            }
            other => panic!("unexpected status {other}: {text}"),
        }
    }
    let scrape = gw.scrape();
    let max = metric(
        &scrape,
        "gitgate_node_git_processes_running_max",
        &["service=\"upload-pack\""],
    );
    assert!(
        max <= 4.0,
        "{max} upload-packs ran at once with a limit of 4"
    );
    assert!(max >= 1.0);
    assert!(
        ok > 4,
        "only {ok} fetches finished: the queue did not serve anyone"
    );
    assert!(refused >= 1, "nobody was refused past the queue bound");
    assert_eq!(ok + refused, 32);
    assert_eq!(
        metric(&scrape, "gitgate_concurrency_rejected_total", &[]) as usize,
        refused
    );
    eprintln!("{ok} fetches finished, {refused} refused, at most {max} upload-packs at once");
}

#[test]
fn slow_clients_are_cut_off_while_clones_keep_working() {
    let gw = TestGateway::start(
        false,
        GatewayOptions::default()
            .with_limits("header_timeout = \"1s\"\nbody_idle_timeout = \"1s\"\n"),
    );
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let work = make_source(&git, tmp.path(), 4);
    seed_bare(&git, &work, &gw.repo_dir("r"));

    // Headers trickled one byte at a time.
    let trickle = {
        let authority = gw.server.authority().to_owned();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&authority).expect("connect");
            let started = Instant::now();
            for b in b"GET /-/health HTTP/1.1\r\nHost: x\r\nX-Slow: "
                .iter()
                .chain(std::iter::repeat_n(&b'a', 100))
            {
                if s.write_all(&[*b]).is_err() {
                    return started.elapsed();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            started.elapsed()
        })
    };
    // A body that stalls after a few bytes.
    let stall = {
        let authority = gw.server.authority().to_owned();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&authority).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(b"POST /r.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-git-upload-pack-request\r\nContent-Length: 1000\r\n\r\n0032want ").expect("send");
            let started = Instant::now();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            (
                started.elapsed(),
                String::from_utf8_lossy(&buf).into_owned(),
            )
        })
    };
    // Meanwhile, ordinary clones work.
    for i in 0..3 {
        git.ok(
            None,
            &[
                "clone",
                "-q",
                &gw.repo_url("r"),
                path_str(&tmp.path().join(format!("ok{i}"))),
            ],
        );
    }
    let trickled = trickle.join().expect("thread");
    assert!(
        trickled < Duration::from_secs(5),
        "a trickling client held its connection for {trickled:?}"
    );
    let (stalled, answer) = stall.join().expect("thread");
    assert!(
        stalled < Duration::from_secs(5),
        "a stalled body held its request for {stalled:?}"
    );
    assert!(
        answer.is_empty()
            || answer.starts_with("HTTP/1.1 400")
            || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

fn openssl(args: &[&str], cwd: &Path) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("openssl");
    assert!(
        ok.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn https_clone_with_a_test_ca_and_no_plain_http() {
    let tmp = TempDir::new().expect("tempdir");
    let d = tmp.path();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=gitgate test CA",
        ],
        d,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
        d,
    );
    std::fs::write(
        d.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
        d,
    );
    let gw = TestGateway::start(
        false,
        GatewayOptions {
            listen: format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"",
                d.join("server.pem").display(),
                d.join("server.key").display()
            ),
            ..Default::default()
        },
    );
    assert!(gw.server.url.starts_with("https://"), "{}", gw.server.url);
    let git = default_client();
    let work = make_source(&git, d, 3);
    seed_bare(&git, &work, &gw.repo_dir("secure"));
    let url = format!("{}/secure.git", gw.server.url);
    let ca = d.join("ca.pem");
    let env = [("GIT_SSL_CAINFO", path_str(&ca))];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !git
        .output(None, &["ls-remote", &url], &env)
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "HTTPS never became ready:\n{}",
            gw.server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let clone = d.join("clone");
    git.ok_env(None, &["clone", "-q", &url, path_str(&clone)], &env);
    git.fsck(&clone.join(".git"));
    // The same clone again is a pack cache hit, sent through TLS (no sendfile there).
    let again = d.join("again");
    git.ok_env(None, &["clone", "-q", &url, path_str(&again)], &env);
    git.fsck(&again.join(".git"));
    let log = gw.server.log_text();
    assert!(
        log.lines().any(|l| l.contains("request finished")
            && (l.contains("cache=\"hit\"") || l.contains("cache=hit"))),
        "no cache hit over TLS:\n{log}"
    );
    // The handshake itself: the chain verifies against the test CA, for the name.
    let handshake = Command::new("openssl")
        .args(["s_client", "-connect", gw.server.authority()])
        .args([
            "-servername",
            "localhost",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(&ca)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let transcript = String::from_utf8_lossy(&handshake.stdout);
    assert!(
        handshake.status.success() && transcript.contains("Verify return code: 0 (ok)"),
        "TLS handshake failed: {transcript}{}",
        String::from_utf8_lossy(&handshake.stderr)
    );
    assert!(
        transcript.contains("TLSv1.3") || transcript.contains("TLSv1.2"),
        "{transcript}"
    );
    // Without the CA, git refuses the certificate; over plain HTTP nothing is served.
    assert!(!git.output(None, &["ls-remote", &url], &[]).status.success());
    let plain = url.replace("https://", "http://");
    assert!(!git
        .output(None, &["ls-remote", &plain], &[])
        .status
        .success());
    let answer = plain_exchange(
        gw.server.authority(),
        b"GET /-/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// Send `request` over plain TCP; whatever comes back before the connection ends (a
/// TLS server sends an alert or nothing).
fn plain_exchange(authority: &str, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(authority).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut answer = Vec::new();
    // A reset or timeout after the alert is fine: what matters is what was sent.
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[test]
fn metrics_pass_promtool_and_json_logs_carry_the_fields() {
    let gw = TestGateway::start(
        false,
        GatewayOptions {
            extra: "[log]\nformat = \"json\"\n".into(),
            ..Default::default()
        },
    );
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let work = make_source(&git, tmp.path(), 3);
    seed_bare(&git, &work, &gw.repo_dir("m"));
    git.ok(
        None,
        &[
            "-c",
            "protocol.version=2",
            "clone",
            "-q",
            &gw.repo_url("m"),
            path_str(&tmp.path().join("c")),
        ],
    );
    let scrape = gw.scrape();
    for family in [
        "gitgate_pack_cache_lookups_total",
        "gitgate_pack_cache_generated_bytes_total",
        "gitgate_pack_cache_served_bytes_total",
        "gitgate_pack_cache_disk_usage_bytes",
        "gitgate_pack_cache_entries",
        "gitgate_pack_cache_evictions_total",
        "gitgate_pack_cache_enabled",
        "gitgate_http_requests_total",
        "gitgate_http_request_duration_seconds",
        "gitgate_backend_requests_total",
        "gitgate_read_distribution_total",
        "gitgate_client_authentications_total",
        "gitgate_concurrency_in_progress",
        "gitgate_concurrency_queued",
        "gitgate_node_healthy",
    ] {
        assert!(
            scrape.contains(&format!("# TYPE {family} ")),
            "{family} missing from the scrape"
        );
    }
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let promtool =
        promtool.expect("promtool is needed (Debian package prometheus; .ci/run installs it)");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("feed");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every metric the shipped dashboard queries exists.
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json"),
    )
    .expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("gitgate_"))
            {
                let family = name.trim_end_matches("_bucket");
                assert!(
                    scrape.contains(&format!("# TYPE {family} ")),
                    "dashboard queries {family}, which is not exported"
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 14);

    let log = gw.server.log_text();
    let finished: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "request finished")
        .collect();
    assert!(!finished.is_empty(), "no JSON request lines:\n{log}");
    let fetch = finished
        .iter()
        .find(|v| {
            v["span"]["service"] == "git-upload-pack"
                && v["span"]["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("/git-upload-pack"))
                && v["span"]["cache"] == "miss"
        })
        .unwrap_or_else(|| panic!("no fetch line in {finished:#?}"));
    for field in [
        "request_id",
        "repo",
        "service",
        "protocol",
        "cache",
        "key",
        "node",
        "user",
    ] {
        assert!(
            fetch["span"][field].is_string(),
            "span field {field} missing: {fetch}"
        );
    }
    for field in ["status", "duration_ms", "bytes_sent"] {
        assert!(
            fetch["fields"][field].is_number(),
            "field {field} missing: {fetch}"
        );
    }
    assert_eq!(fetch["span"]["protocol"], "v2");
}

#[test]
fn rotating_the_internal_secret_fails_no_request() {
    const OLD: &str = "old-internal-secret-11111111";
    const NEW: &str = "new-internal-secret-22222222";
    // No caches: every clone of the loop below must reach the node.
    let gw = TestGateway::start(
        true,
        GatewayOptions {
            node_token: Some(OLD.into()),
            extra: "[cache]\nenabled = false\n".into(),
            ..Default::default()
        },
    );
    let support::Backend::Remote(node) = &gw.backend else {
        panic!("remote node expected")
    };
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let work = make_source(&git, tmp.path(), 3);
    seed_bare(&git, &work, &gw.repo_dir("rot"));

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let worker = {
        let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
        let url = gw.repo_url("rot");
        let dir = tmp.path().to_owned();
        std::thread::spawn(move || {
            let git = default_client();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let target = dir.join(format!("loop-{i}"));
                let out = git.output(
                    None,
                    &["clone", "-q", "--bare", &url, path_str(&target)],
                    &[],
                );
                if !out.status.success() {
                    failures
                        .lock()
                        .expect("lock")
                        .push(String::from_utf8_lossy(&out.stderr).into_owned());
                }
                let _ = std::fs::remove_dir_all(&target);
                done.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        })
    };
    let wait_for_progress = || {
        let start = done.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while done.load(Ordering::SeqCst) < start + 2 {
            assert!(Instant::now() < deadline, "the clone loop stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let wait_for_log = |text: &dyn Fn() -> String, needle: &str, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while text().matches(needle).count() < count {
            assert!(Instant::now() < deadline, "no {needle:?} in the log");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let node_addr = node.server.authority().to_owned();
    wait_for_progress();
    // 1. The node accepts both while it moves to the new secret.
    std::fs::write(&node.config, node_config(&node_addr, NEW, "transitioning"))
        .expect("node config");
    sighup(node.server.pid());
    wait_for_log(&|| node.server.log_text(), "reloaded node token", 1);
    wait_for_progress();
    // 2. The gateway switches to the new secret.
    let config = std::fs::read_to_string(gw.config_path())
        .expect("config")
        .replace(OLD, NEW);
    std::fs::write(gw.config_path(), config).expect("gateway config");
    sighup(gw.server.pid());
    wait_for_log(&|| gw.server.log_text(), "configuration reloaded", 1);
    wait_for_progress();
    // 3. The node enforces the new secret only.
    std::fs::write(&node.config, node_config(&node_addr, NEW, "enforced")).expect("node config");
    sighup(node.server.pid());
    wait_for_log(&|| node.server.log_text(), "reloaded node token", 2);
    wait_for_progress();
    stop.store(true, Ordering::SeqCst);
    worker.join().expect("worker");
    let failures = failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "{} requests failed during rotation: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let node_scrape = String::from_utf8(http::get(&node_addr, "/-/metrics").expect("scrape").body)
        .expect("utf-8");
    assert!(
        metric(
            &node_scrape,
            "gitgate_authentications_total",
            &["enforced=\"false\"", "status=\"bad_signature\""]
        ) >= 1.0,
        "the transition window saw no old-secret request:\n{node_scrape}"
    );
    assert!(
        metric(
            &node_scrape,
            "gitgate_authentications_total",
            &["enforced=\"true\"", "status=\"bad_signature\""]
        ) == 0.0
    );
}

#[test]
fn check_config_names_the_key_of_every_problem() {
    let tmp = TempDir::new().expect("tempdir");
    let base = "[listen]\naddr = \"127.0.0.1:0\"\n[storage]\n[[storage.nodes]]\nname = \"local\"\npath = \"repos\"\n";
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("{base}[cache]\nmax_age = \"soon\"\n"),
            vec!["max_age"],
        ),
        (format!("{base}[cache]\nbogus = 1\n"), vec!["bogus"]),
        (
            base.replace("path = \"repos\"", "path = \"repos\"\nurl = \"http://x:1\""),
            vec!["storage.nodes[0]"],
        ),
        (
            format!("{base}[auth]\nanonymous = \"everyone\"\n"),
            vec!["auth.anonymous"],
        ),
        (
            format!("{base}[[auth.tokens]]\nname = \"t\"\nhash = \"plain\"\n"),
            vec!["auth.tokens[0].hash"],
        ),
        (
            format!("{base}[auth]\npublic = [\"a//b\"]\n"),
            vec!["auth.public"],
        ),
        (
            base.replace("[listen]\n", "[listen]\ntls_cert = \"c.pem\"\n"),
            vec!["listen.tls_cert"],
        ),
        (
            format!("{base}[log]\nformat = \"xml\"\n"),
            vec!["log.format"],
        ),
        (
            format!("{base}[cache]\nmax_bytes = \"lots\"\n"),
            vec!["cache.max_bytes"],
        ),
        // Every value that parses but is not acceptable is reported in one run.
        (
            base.replace("[listen]\n", "[listen]\ntls_cert = \"c.pem\"\n")
                + "[limits]\nheader_timeout = \"0s\"\n",
            vec!["listen.tls_cert", "limits.header_timeout"],
        ),
    ];
    for (i, (text, keys)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_gitgate"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        assert!(!out.status.success(), "case {i} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        for key in keys {
            assert!(err.contains(key), "case {i}: {key} not named in: {err}");
        }
    }
    let good = tmp.path().join("good.toml");
    std::fs::write(&good, base).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_gitgate"))
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The shipped example is valid.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.example.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_gitgate"))
        .args(["check-config", "--config"])
        .arg(&example)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_client_that_stops_reading_is_disconnected_and_git_stopped() {
    let gw = TestGateway::start(
        false,
        GatewayOptions {
            create_on_push: true,
            extra: "[cache]\nenabled = false\n".into(),
            ..Default::default()
        }
        .with_limits("send_timeout = \"1s\"\n"),
    );
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let head = support::push_incompressible(&gw, &git, tmp.path(), "big", &[24 << 20], 9);
    let body = support::fetch_everything(&head);

    let mut s = TcpStream::connect(gw.server.authority()).expect("connect");
    let req = format!(
        "POST /big.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-git-upload-pack-request\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    s.write_all(&body).expect("send");
    let mut first = vec![0u8; 32 * 1024];
    s.read_exact(&mut first).expect("first bytes");
    assert!(
        !support::procs::processes_under(&gw.root).is_empty(),
        "no git process was serving (the test would prove nothing)"
    );
    // Stop reading. The server must give up on us and stop git.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !support::procs::processes_under(&gw.root).is_empty() {
        assert!(
            Instant::now() < deadline,
            "git still runs for a client that stopped reading"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // What the client can still read ends without a clean end of the response.
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        !rest.ends_with(b"0\r\n\r\n"),
        "a cut-off response ended cleanly"
    );
    assert!(
        gw.server.log_text().contains("client stopped reading"),
        "{}",
        gw.server.log_text()
    );
    // Others are still served.
    git.ok(None, &["ls-remote", &gw.repo_url("big")]);
}

/// A gzipped fetch body with `haves` have lines: all the same id (compresses about
/// 1000x) or distinct pseudo-random ones (about 2x).
fn gzip_fetch_body(wants: &str, haves: usize, same: bool) -> Vec<u8> {
    let mut body = Vec::new();
    let want = format!("want {wants} side-band-64k ofs-delta\n");
    body.extend_from_slice(format!("{:04x}{want}", want.len() + 4).as_bytes());
    body.extend_from_slice(b"0000");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..haves {
        let id = if same {
            "0".repeat(40)
        } else {
            let mut s = String::with_capacity(40);
            while s.len() < 40 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push_str(&format!("{x:016x}"));
            }
            s.truncate(40);
            s
        };
        body.extend_from_slice(format!("0032have {id}\n").as_bytes());
    }
    body.extend_from_slice(b"0009done\n");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&body).expect("gzip");
    gz.finish().expect("gzip")
}

fn post_gzip(authority: &str, path: &str, body: &[u8]) -> u16 {
    http::post(
        authority,
        path,
        &[
            "Content-Type: application/x-git-upload-pack-request",
            "Content-Encoding: gzip",
        ],
        body,
    )
    .map_or(0, |r| r.status)
}

/// 12 concurrent gzip bodies that inflate to 63 MiB each (a "zip bomb" of identical have
/// lines) are refused by the ratio limit; 12 bodies that do not compress are held within
/// the shared budget (the rest get 503). Peak RSS stays under 256 MiB, and a clone
/// during them succeeds.
#[test]
fn fetch_bodies_cannot_exhaust_memory() {
    let gw = TestGateway::start(
        false,
        GatewayOptions::default()
            .with_limits("fetch_body_budget = \"64MiB\"\nmax_fetch_request_bytes = \"64MiB\""),
    );
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let work = make_source(&git, tmp.path(), 5);
    seed_bare(&git, &work, &gw.repo_dir("pub"));
    let head = git
        .ok(Some(&work), &["rev-parse", "main"])
        .trim()
        .to_owned();
    let authority = gw.server.authority().to_owned();
    let pid = gw.server.pid();
    let before = support::procs::peak_rss(pid);

    // 63 MiB of identical have lines: about 1,300,000 lines.
    let bomb = gzip_fetch_body(&head, 63 * (1 << 20) / 50, true);
    assert!(
        bomb.len() < 1 << 20,
        "the bomb compresses: {} bytes",
        bomb.len()
    );
    // 20 MiB of distinct have lines: compresses about 2x.
    let plain = gzip_fetch_body(&head, 20 * (1 << 20) / 50, false);

    for (body, what) in [(&bomb, "bomb"), (&plain, "incompressible")] {
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let posts: Vec<_> = (0..12)
                .map(|_| {
                    let authority = authority.clone();
                    scope.spawn(move || post_gzip(&authority, "/pub.git/git-upload-pack", body))
                })
                .collect();
            // A normal clone while they run.
            let dir = tmp.path().join(format!("clone-{what}"));
            git.ok(None, &["clone", "-q", &gw.repo_url("pub"), path_str(&dir)]);
            posts.into_iter().map(|p| p.join().expect("post")).collect()
        });
        eprintln!(
            "{what}: statuses {statuses:?}, peak RSS so far {} MiB",
            support::procs::peak_rss(pid) >> 20
        );
        match what {
            "bomb" => assert!(statuses.iter().all(|&s| s == 400), "{statuses:?}"),
            _ => {
                // Refused early: a 503, or (0) the connection closed while the client
                // was still sending the body the gateway would not hold.
                assert!(
                    statuses.iter().any(|&s| s == 503 || s == 0),
                    "the budget never ran out: {statuses:?}"
                );
                assert!(statuses.contains(&200), "nothing fitted: {statuses:?}");
                assert!(
                    statuses.iter().all(|&s| s == 503 || s == 200 || s == 0),
                    "{statuses:?}"
                );
            }
        }
    }
    let peak = support::procs::peak_rss(pid);
    eprintln!("peak RSS {} MiB (before {} MiB)", peak >> 20, before >> 20);
    assert!(peak < 256 << 20, "peak RSS {} MiB", peak >> 20);
}

/// A push body trickled one byte at a time (well inside the idle timeout) is cut once
/// its average rate falls under `body_min_rate`, releasing the repository's write lock:
/// another push gets through within the grace period, not after `lock_timeout`.
#[test]
fn a_trickled_push_does_not_hold_the_repository() {
    let gw = TestGateway::start(
        false,
        GatewayOptions {
            create_on_push: true,
            ..Default::default()
        }
        .with_limits("body_min_rate = \"1KiB\"\nbody_rate_grace = \"2s\"\n"),
    );
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let work = make_source(&git, tmp.path(), 3);
    let url = gw.repo_url("slow");
    git.ok(Some(&work), &["push", "-q", &url, "main"]);
    let head = git
        .ok(Some(&work), &["rev-parse", "main"])
        .trim()
        .to_owned();

    // A receive-pack request whose body comes one byte every 200 ms.
    let mut stream = TcpStream::connect(gw.server.authority()).expect("connect");
    let command = format!("{head} {} refs/heads/slow\0report-status\n", "1".repeat(40));
    let line = format!("{:04x}{command}", command.len() + 4);
    stream
        .write_all(
            format!(
                "POST /slow.git/git-receive-pack HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-git-receive-pack-request\r\nContent-Length: {}\r\n\r\n",
                line.len() + 4
            )
            .as_bytes(),
        )
        .expect("headers");
    let started = Instant::now();
    let trickle = std::thread::spawn(move || {
        for byte in line.bytes() {
            if stream.write_all(&[byte]).is_err() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        started.elapsed()
    });
    std::thread::sleep(Duration::from_millis(500));

    // Another push to the same repository: waits for the lock, then goes through.
    git.commit_file(&work, "next.txt", "next\n", "next");
    let pushed = Instant::now();
    git.ok(Some(&work), &["push", "-q", &url, "main"]);
    let waited = pushed.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "the trickled push held the repository for {waited:?}"
    );
    let cut = trickle.join().expect("trickle");
    assert!(
        cut < Duration::from_secs(15),
        "the trickled body was never cut ({cut:?})"
    );
}

/// One client address holding `max_connections_per_client` idle connections gets a 503
/// for the next one; another address is still served; closing them frees the places.
#[test]
fn per_client_connection_limit() {
    let gw = TestGateway::start(
        false,
        GatewayOptions::default()
            .with_limits("max_connections_per_client = 8\nheader_timeout = \"30s\"\n"),
    );
    let authority = gw.server.authority().to_owned();
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(&authority).expect("connect"))
        .collect();
    // Give the accept loop time to count them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let answer = http::get(&authority, "/-/health");
        match answer {
            Ok(r) if r.status == 503 => break r,
            _ if Instant::now() > deadline => panic!("the ninth connection was served"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert!(String::from_utf8_lossy(&refused.body).contains("too many connections"));
    assert!(refused.head.to_ascii_lowercase().contains("retry-after"));
    // Another client address is served.
    let other = std::net::SocketAddr::from(([127, 0, 0, 2], 0));
    let mut socket = socket2_connect(other, &authority);
    socket
        .write_all(b"GET /-/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    socket.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(idle);
    wait_ok(&authority);
    let scrape = gw.scrape();
    assert!(
        metric(
            &scrape,
            "gitgate_connections_refused_total",
            &["reason=\"per_client\""]
        ) >= 1.0
    );
}

/// A TCP connection to `to` from the local address `from`.
fn socket2_connect(from: std::net::SocketAddr, to: &str) -> TcpStream {
    let to: std::net::SocketAddr = to.parse().expect("authority");
    // std has no bind-before-connect; tokio's TcpSocket does.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(from).expect("bind 127.0.0.2");
        socket
            .connect(to)
            .await
            .expect("connect")
            .into_std()
            .and_then(|s| {
                s.set_nonblocking(false)?;
                Ok(s)
            })
            .expect("std stream")
    })
}

/// Wait until `/-/health` answers 200 from this address again.
fn wait_ok(authority: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(http::get(authority, "/-/health"), Ok(r) if r.status == 200) {
        assert!(Instant::now() < deadline, "places were not given back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// In adaptive mode the per-client limit halves while a node runs more git processes
/// per core than allowed, and grows back once the load is gone; the fetches that
/// caused it all succeed meanwhile.
#[test]
fn the_adaptive_limit_follows_node_load() {
    let tmp = TempDir::new().expect("tempdir");
    let hook = support::hooked_git::HookedGit::new(&tmp.path().join("hooked"));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let ceiling = 2 * cores;
    let gw = TestGateway::start(
        false,
        GatewayOptions {
            create_on_push: true,
            extra: "[cache]\nenabled = false\n".into(),
            node_git: Some(hook.program()),
            ..Default::default()
        }
        .with_limits(&format!(
            "client_concurrency = {ceiling}\nclient_queue = 256\nclient_queue_timeout = \"120s\"\n\
             adaptive = true\nadaptive_interval = \"200ms\"\nadaptive_git_per_core = 1\n"
        )),
    );
    let git = default_client();
    let head = support::push_incompressible(&gw, &git, tmp.path(), "busy", &[3 << 20], 5);
    let limit = || metric(&gw.scrape(), "gitgate_client_concurrency_limit", &[]);
    assert_eq!(limit(), ceiling as f64);
    // One client (this host), many slow clones at once: the node runs more git
    // processes than it has cores.
    hook.set(support::hooked_git::Mode::Slow);
    let clones: Vec<_> = (0..3 * cores)
        .map(|i| {
            let dir = tmp.path().join(format!("clone-{i}"));
            let child = git
                .cmd(None)
                .args(["clone", "-q", "--bare", &gw.repo_url("busy")])
                .arg(&dir)
                .spawn()
                .expect("spawn clone");
            (dir, child)
        })
        .collect();
    support::cluster::wait_for(Duration::from_secs(20), "the limit to go down", || {
        limit() < ceiling as f64
    });
    for (dir, mut child) in clones {
        assert!(child.wait().expect("wait").success(), "a clone failed");
        let main = git.ok(None, &["--git-dir", path_str(&dir), "rev-parse", "main"]);
        assert_eq!(main.trim(), head);
    }
    hook.set(support::hooked_git::Mode::Normal);
    support::cluster::wait_for(Duration::from_secs(20), "the limit to grow back", || {
        limit() == ceiling as f64
    });
    let scrape = gw.scrape();
    assert!(
        metric(
            &scrape,
            "gitgate_adaptive_adjustments_total",
            &["direction=\"down\""]
        ) >= 1.0
    );
    assert!(
        metric(
            &scrape,
            "gitgate_adaptive_adjustments_total",
            &["direction=\"up\""]
        ) >= 1.0
    );
}

/// Behind a trusted proxy, clients are told apart by the address the proxy forwarded;
/// what a client writes into `X-Forwarded-For` itself is not believed.
#[test]
fn clients_behind_a_trusted_proxy_get_their_own_share() {
    let gw = TestGateway::start(
        false,
        GatewayOptions {
            create_on_push: true,
            extra: "[cache]\nenabled = false\n".into(),
            ..Default::default()
        }
        .with_limits(
            "client_concurrency = 1\nclient_queue = 0\nclient_queue_timeout = \"60s\"\n\
             trusted_proxies = [\"127.0.0.1/32\", \"::1/128\"]\n",
        ),
    );
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let head = support::push_incompressible(&gw, &git, tmp.path(), "hot", &[16 << 20], 11);
    let body = support::fetch_everything(&head);
    let authority = gw.server.authority().to_owned();
    // A fetch "through the proxy" for `xff`, leaving its response unread for 2 s so it
    // holds its client's slot; answers the status line.
    let send = |xff: &str| {
        let (body, authority, xff) = (body.clone(), authority.clone(), xff.to_owned());
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&authority).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(60)))
                .expect("timeout");
            let head = format!(
                "POST /hot.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Forwarded-For: {xff}\r\nContent-Type: application/x-git-upload-pack-request\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).expect("send");
            s.write_all(&body).expect("send");
            std::thread::sleep(Duration::from_secs(2));
            let mut response = Vec::new();
            let _ = s.read_to_end(&mut response);
            String::from_utf8_lossy(&response[..response.len().min(12)]).into_owned()
        })
    };
    let first = send("198.51.100.1");
    std::thread::sleep(Duration::from_millis(500));
    // The same client again, with a forged entry to the left: refused (its one slot is
    // taken and it may not queue)...
    let forged = send("203.0.113.5, 198.51.100.1");
    // ...while another client behind the same proxy is served.
    let other = send("198.51.100.2");
    assert_eq!(forged.join().expect("forged"), "HTTP/1.1 429");
    assert_eq!(other.join().expect("other"), "HTTP/1.1 200");
    assert_eq!(first.join().expect("first"), "HTTP/1.1 200");
}

/// One client (a runaway pipeline) holding many slow cache-missing fetches gets its own
/// share of node work and 429s past it; another client's clones still get through.
#[test]
fn one_client_cannot_starve_another() {
    const A: &str = "client-a-token-aaaaaaaaaaaa";
    const B: &str = "client-b-token-bbbbbbbbbbbb";
    let gw = TestGateway::start(
        false,
        GatewayOptions {
            create_on_push: true,
            extra: "[cache]\nenabled = false\n".into(),
            auth: Some(format!(
                "[auth]\nanonymous = \"write\"\n\
                 [[auth.tokens]]\nname = \"a\"\nhash = \"{}\"\nread = [\"**\"]\n\
                 [[auth.tokens]]\nname = \"b\"\nhash = \"{}\"\nread = [\"**\"]\n",
                hash_token(A),
                hash_token(B)
            )),
            ..Default::default()
        }
        .with_limits(
            "fetch_concurrency_per_repo = 4\nfetch_queue_per_repo = 4\nfetch_queue_timeout = \"120s\"\n\
             client_concurrency = 2\nclient_queue = 2\nclient_queue_timeout = \"120s\"\n",
        ),
    );
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let head = support::push_incompressible(&gw, &git, tmp.path(), "hot", &[3 << 20], 7);
    let body = support::fetch_everything(&head);
    let authority = gw.server.authority().to_owned();

    // Client A: 30 fetches at once, each leaving its response unread for 4 s.
    let a: Vec<_> = (0..30)
        .map(|_| {
            let (body, authority) = (body.clone(), authority.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&authority).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(120)))
                    .expect("timeout");
                let head = format!(
                    "POST /hot.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {A}\r\nContent-Type: application/x-git-upload-pack-request\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                s.write_all(head.as_bytes()).expect("send");
                s.write_all(&body).expect("send");
                std::thread::sleep(Duration::from_secs(4));
                let mut response = Vec::new();
                let _ = s.read_to_end(&mut response);
                String::from_utf8_lossy(&response[..response.len().min(300)]).into_owned()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // Client B: three clones while A holds its share.
    let started = Instant::now();
    for i in 0..3 {
        let dir = tmp.path().join(format!("b-{i}"));
        let out = git.output(
            None,
            &[
                "-c",
                &format!("http.extraHeader=Authorization: Bearer {B}"),
                "clone",
                "-q",
                "--bare",
                &gw.repo_url("hot"),
                path_str(&dir),
            ],
            &[],
        );
        assert!(
            out.status.success(),
            "B's clone {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "B waited for A: {:?}",
        started.elapsed()
    );
    let answers: Vec<String> = a.into_iter().map(|t| t.join().expect("a")).collect();
    let refused = answers
        .iter()
        .filter(|r| r.starts_with("HTTP/1.1 429"))
        .count();
    let served = answers
        .iter()
        .filter(|r| r.starts_with("HTTP/1.1 200"))
        .count();
    eprintln!("client A: {served} served, {refused} refused");
    assert!(
        answers
            .iter()
            .filter(|r| r.starts_with("HTTP/1.1 429"))
            .all(|r| r.to_ascii_lowercase().contains("retry-after")),
        "429 without Retry-After"
    );
    assert!(
        refused >= 26,
        "A got more than its share: {refused} refused"
    );
    assert_eq!(served + refused, 30, "{answers:#?}");
    assert!(
        metric(
            &gw.scrape(),
            "gitgate_concurrency_rejected_total",
            &["reason=\"client_queue_full\""]
        ) >= 26.0
    );
}

/// A push over `limits.max_push_bytes` is a 413 whether git declares its length or
/// streams it chunked (past `http.postBuffer`), nothing of it is applied, and a remote
/// node it was streaming to is not taken for down (the body failing is the client's
/// doing): pushes within the limit and clones go on.
#[test]
fn a_push_over_max_push_bytes_is_a_413_chunked_or_not_and_no_node_failure() {
    let gw = TestGateway::start(
        true,
        GatewayOptions {
            storage: "health_failures = 2\n".into(),
            ..GatewayOptions::default().with_limits("max_push_bytes = \"1MiB\"\n")
        },
    );
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let work = make_source(&git, tmp.path(), 3);
    seed_bare(&git, &work, &gw.repo_dir("r"));
    let url = gw.repo_url("r");
    std::fs::write(work.join("big.bin"), support::noise(3 << 20, 7)).expect("big file");
    git.ok(Some(&work), &["add", "big.bin"]);
    git.ok(Some(&work), &["commit", "-q", "-m", "too big"]);
    for (i, post_buffer) in ["1048576", "1048576", "1048576", "16777216"]
        .iter()
        .enumerate()
    {
        let out = git.output(
            Some(&work),
            &[
                "-c",
                &format!("http.postBuffer={post_buffer}"),
                "push",
                "-q",
                &url,
                &format!("HEAD:refs/heads/big{i}"),
            ],
            &[],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "push {i} over the limit failed");
        assert!(
            stderr.contains("413"),
            "push {i} (postBuffer {post_buffer}): {stderr}"
        );
    }
    assert!(
        !git.refs(&gw.repo_dir("r")).contains("big"),
        "nothing of a refused push was applied"
    );
    let scrape = gw.scrape();
    assert_eq!(
        metric(&scrape, "gitgate_node_healthy", &[]),
        1.0,
        "three chunked pushes cut at the limit did not take the node down:\n{scrape}"
    );
    git.ok(Some(&work), &["reset", "-q", "--hard", "HEAD~1"]);
    git.commit_file(&work, "small.txt", "small\n", "small");
    git.ok(Some(&work), &["push", "-q", &url, "HEAD:refs/heads/small"]);
    let clone = tmp.path().join("clone");
    git.ok(None, &["clone", "-q", "--bare", &url, path_str(&clone)]);
    assert!(git.refs(&clone).contains("refs/heads/small"));
}
