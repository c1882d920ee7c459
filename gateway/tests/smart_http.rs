//! End to end: real git clients against a real `gitgate`, with the repository served by
//! an in-process node and by a separate `gitgate-node` process.

mod support;

use support::{noise, path_str};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use support::git::{clients, default_client, make_source, seed_bare, Git};
use support::{http, procs, GatewayOptions, TestGateway};
use tempfile::TempDir;

/// Run each scenario against an in-process node and against a remote node.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod in_process {
            $( #[test] fn $name() { super::$name(false) } )*
        }
        mod remote_node {
            $( #[test] fn $name() { super::$name(true) } )*
        }
    };
}

both_backends!(
    clone_v0_and_v2,
    fetch_shallow_and_partial,
    push_operations,
    push_100mb_blob_streams,
    empty_missing_and_hostile_paths,
    large_gzipped_fetch_request,
    client_disconnect_kills_git,
);

fn clone_v0_and_v2(remote: bool) {
    let gw = TestGateway::start(remote, GatewayOptions::default());
    // A repository per client: each is seeded on the node's disk, behind the gateway's
    // back, where a rewrite would only be noticed by the reconciler.
    for (i, git) in clients().into_iter().enumerate() {
        let tmp = TempDir::new().expect("tempdir");
        let work = make_source(&git, tmp.path(), 12);
        let name = format!("group/proj{i}");
        let bare = gw.repo_dir(&name);
        seed_bare(&git, &work, &bare);
        for version in ["0", "2"] {
            let mirror = tmp.path().join(format!("mirror-v{version}"));
            let trace = tmp.path().join(format!("trace-v{version}"));
            git.ok_env(
                None,
                &[
                    "-c",
                    &format!("protocol.version={version}"),
                    "clone",
                    "-q",
                    "--mirror",
                    &gw.repo_url(&name),
                    path_str(&mirror),
                ],
                &[("GIT_TRACE_PACKET", path_str(&trace))],
            );
            let trace = std::fs::read_to_string(&trace).expect("trace");
            let spoke_v2 = trace.contains("< version 2");
            assert_eq!(
                spoke_v2,
                version == "2",
                "{}: protocol {version} not used:\n{trace}",
                git.version
            );
            assert_eq!(
                git.refs(&mirror),
                git.refs(&bare),
                "{} v{version}: refs differ",
                git.version
            );
            git.fsck(&mirror);
        }
        // A plain clone (no .git suffix in the URL) checks out the same tree.
        let plain = tmp.path().join("plain");
        git.ok(
            None,
            &[
                "clone",
                "-q",
                &format!("{}/{name}", gw.server.url),
                path_str(&plain),
            ],
        );
        let head = git.ok(Some(&plain), &["rev-parse", "HEAD^{tree}"]);
        assert_eq!(head, git.ok(Some(&work), &["rev-parse", "HEAD^{tree}"]));
    }
}

fn fetch_shallow_and_partial(remote: bool) {
    let gw = TestGateway::start(remote, GatewayOptions::default());
    for (i, git) in clients().into_iter().enumerate() {
        let tmp = TempDir::new().expect("tempdir");
        let work = make_source(&git, tmp.path(), 10);
        let name = format!("proj{i}");
        let bare = gw.repo_dir(&name);
        seed_bare(&git, &work, &bare);
        let url = gw.repo_url(&name);

        // Incremental fetch after new commits.
        let clone = tmp.path().join("clone");
        git.ok(None, &["clone", "-q", &url, path_str(&clone)]);
        git.commit_file(&work, "new.txt", "new\n", "new commit");
        let new_head = git.commit_file(&work, "new.txt", "newer\n", "newer commit");
        git.ok(Some(&work), &["push", "-q", &url, "main"]);
        git.ok(Some(&clone), &["fetch", "-q", "origin"]);
        assert_eq!(
            git.ok(Some(&clone), &["rev-parse", "origin/main"]).trim(),
            new_head
        );
        git.fsck(&clone.join(".git"));

        // --depth 1, then --deepen.
        let shallow = tmp.path().join("shallow");
        git.ok(
            None,
            &["clone", "-q", "--depth", "1", &url, path_str(&shallow)],
        );
        assert_eq!(
            git.ok(Some(&shallow), &["rev-list", "--count", "HEAD"])
                .trim(),
            "1"
        );
        git.ok(Some(&shallow), &["fetch", "-q", "--deepen", "3"]);
        assert_eq!(
            git.ok(Some(&shallow), &["rev-list", "--count", "HEAD"])
                .trim(),
            "4"
        );

        // --shallow-since keeps exactly the commits from that date on.
        let since = tmp.path().join("since");
        git.ok(
            None,
            &[
                "clone",
                "-q",
                "--shallow-since=2020-01-06",
                "--single-branch",
                &url,
                path_str(&since),
            ],
        );
        let expected = git.ok(
            Some(&work),
            &["rev-list", "--count", "--since=2020-01-06", "main"],
        );
        let got = git.ok(Some(&since), &["rev-list", "--count", "HEAD"]);
        assert_eq!(got.trim(), expected.trim(), "{}", git.version);
        let total: u32 = git
            .ok(Some(&work), &["rev-list", "--count", "main"])
            .trim()
            .parse()
            .expect("count");
        assert!(got.trim().parse::<u32>().expect("count") < total);

        // Partial clone: blobs are missing until a checkout fetches them lazily.
        let partial = tmp.path().join("partial");
        git.ok(
            None,
            &[
                "clone",
                "-q",
                "--filter=blob:none",
                "--no-checkout",
                &url,
                path_str(&partial),
            ],
        );
        let missing = git.ok(
            Some(&partial),
            &["rev-list", "--objects", "--missing=print", "--all"],
        );
        assert!(
            missing.lines().any(|l| l.starts_with('?')),
            "{}: nothing was filtered out",
            git.version
        );
        git.ok(Some(&partial), &["checkout", "-q", "main"]);
        assert_eq!(
            std::fs::read_to_string(partial.join("new.txt")).expect("lazily fetched"),
            "newer\n"
        );
        git.ok(Some(&partial), &["checkout", "-q", "HEAD~5"]);
    }
}

fn push_operations(remote: bool) {
    let gw = TestGateway::start(remote, GatewayOptions::default());
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let work = make_source(&git, tmp.path(), 5);
    let bare = gw.repo_dir("team/app");
    seed_bare(&git, &work, &bare);
    let clone = tmp.path().join("clone");
    git.ok(
        None,
        &["clone", "-q", &gw.repo_url("team/app"), path_str(&clone)],
    );
    let server_ref = |name: &str| {
        let out = git.output(
            None,
            &[
                "--git-dir",
                path_str(&bare),
                "rev-parse",
                "--verify",
                "-q",
                name,
            ],
            &[],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };

    // New branch.
    let c1 = git.commit_file(&clone, "a.txt", "a\n", "on topic");
    git.ok(
        Some(&clone),
        &["push", "-q", "origin", "HEAD:refs/heads/topic"],
    );
    assert_eq!(server_ref("refs/heads/topic"), c1);

    // Fast-forward.
    git.ok(Some(&clone), &["push", "-q", "origin", "HEAD:main"]);
    assert_eq!(server_ref("refs/heads/main"), c1);

    // Non-fast-forward is rejected; the server keeps its value.
    git.ok(Some(&clone), &["reset", "-q", "--hard", "HEAD~1"]);
    let diverged = git.commit_file(&clone, "b.txt", "b\n", "diverged");
    let err = git.fails(Some(&clone), &["push", "origin", "HEAD:main"]);
    assert!(err.contains("rejected"), "{err}");
    assert_eq!(server_ref("refs/heads/main"), c1);

    // Forced update.
    git.ok(
        Some(&clone),
        &["push", "-q", "--force", "origin", "HEAD:main"],
    );
    assert_eq!(server_ref("refs/heads/main"), diverged);

    // Branch delete.
    git.ok(Some(&clone), &["push", "-q", "origin", ":refs/heads/topic"]);
    assert_eq!(server_ref("refs/heads/topic"), "");

    // Tags, lightweight and annotated.
    git.ok(Some(&clone), &["tag", "lw"]);
    git.ok(Some(&clone), &["tag", "-a", "-m", "release", "v2.0"]);
    git.ok(Some(&clone), &["push", "-q", "origin", "--tags"]);
    assert_eq!(server_ref("refs/tags/lw"), diverged);
    let tag_type = git.ok(
        None,
        &[
            "--git-dir",
            path_str(&bare),
            "cat-file",
            "-t",
            "refs/tags/v2.0",
        ],
    );
    assert_eq!(tag_type.trim(), "tag");

    // Push options reach the server's hooks.
    let hook = bare.join("hooks/pre-receive");
    std::fs::write(&hook, "#!/bin/sh\necho \"$GIT_PUSH_OPTION_COUNT $GIT_PUSH_OPTION_0 $GIT_PUSH_OPTION_1\" > \"$GIT_DIR/push-options.txt\"\n").expect("hook");
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&hook).expect("meta").permissions(),
        0o755,
    );
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    git.commit_file(&clone, "c.txt", "c\n", "with options");
    git.ok(
        Some(&clone),
        &[
            "push",
            "-q",
            "-o",
            "ci.skip",
            "-o",
            "reviewer=alice",
            "origin",
            "HEAD:main",
        ],
    );
    let recorded = std::fs::read_to_string(bare.join("push-options.txt")).expect("hook ran");
    assert_eq!(recorded.trim(), "2 ci.skip reviewer=alice");
    git.fsck(&bare);
}

fn push_100mb_blob_streams(remote: bool) {
    const SIZE: usize = 100 << 20;
    let gw = TestGateway::start(
        remote,
        GatewayOptions {
            create_on_push: true,
            ..Default::default()
        },
    );
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let work = tmp.path().join("work");
    git.ok(None, &["init", "-q", "-b", "main", path_str(&work)]);
    std::fs::write(work.join("big.bin"), noise(SIZE, 7)).expect("write blob");
    git.ok(Some(&work), &["add", "big.bin"]);
    git.ok(Some(&work), &["commit", "-q", "-m", "big"]);
    let before: Vec<u64> = gw.server_pids().into_iter().map(procs::peak_rss).collect();
    git.ok(Some(&work), &["push", "-q", &gw.repo_url("big"), "main"]);
    let bare = gw.repo_dir("big");
    let size = git.ok(
        None,
        &[
            "--git-dir",
            path_str(&bare),
            "cat-file",
            "-s",
            "main:big.bin",
        ],
    );
    assert_eq!(size.trim(), SIZE.to_string());
    // Measured: each process's peak grows by about 3 MiB during the push (README); a
    // buffered push would add its 100 MiB.
    for (pid, before) in gw.server_pids().into_iter().zip(before) {
        let peak = procs::peak_rss(pid);
        eprintln!(
            "pid {pid}: peak RSS {} MiB before push, {} MiB after",
            before >> 20,
            peak >> 20
        );
        assert!(
            peak.saturating_sub(before) < 12 << 20,
            "peak RSS grew from {} MiB to {} MiB: the push was buffered",
            before >> 20,
            peak >> 20
        );
    }
}

fn empty_missing_and_hostile_paths(remote: bool) {
    let gw = TestGateway::start(
        remote,
        GatewayOptions {
            create_on_push: true,
            ..Default::default()
        },
    );
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");

    // Empty repository.
    git.ok(
        None,
        &["init", "-q", "--bare", path_str(&gw.repo_dir("empty"))],
    );
    let out = git.output(
        None,
        &[
            "clone",
            &gw.repo_url("empty"),
            path_str(&tmp.path().join("e")),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty repository"));

    // Missing repository: a clear message.
    let err = git.fails(
        None,
        &[
            "clone",
            &gw.repo_url("no/such/repo"),
            path_str(&tmp.path().join("m")),
        ],
    );
    assert!(err.contains("not found"), "{err}");

    // Hostile paths are refused and touch nothing on disk, even with create_on_push.
    let watch = gw.root.parent().expect("root has a parent").to_owned();
    let snapshot = || {
        let mut names: Vec<String> = walk(&watch);
        names.sort();
        names
    };
    let before = snapshot();
    let long = "a".repeat(400);
    let hostile = [
        "/../evil.git/info/refs?service=git-receive-pack".to_owned(),
        "/a/../../evil.git/info/refs?service=git-receive-pack".to_owned(),
        "/%2e%2e/evil.git/info/refs?service=git-receive-pack".to_owned(),
        "/..%2fevil.git/info/refs?service=git-receive-pack".to_owned(),
        "//etc/evil.git/info/refs?service=git-receive-pack".to_owned(),
        "/evil%00.git/info/refs?service=git-receive-pack".to_owned(),
        "/.hidden.git/info/refs?service=git-receive-pack".to_owned(),
        "/-rf.git/info/refs?service=git-receive-pack".to_owned(),
        "/empty.git/objects.git/info/refs?service=git-receive-pack".to_owned(),
        format!("/{long}.git/info/refs?service=git-receive-pack"),
        "/a/b/c/d/e/f/g/h/i.git/info/refs?service=git-receive-pack".to_owned(),
        "/../evil.git/git-receive-pack".to_owned(),
        "/empty.git/HEAD".to_owned(),
        "/empty.git/objects/info/packs".to_owned(),
    ];
    for path in &hostile {
        let resp = http::get(gw.server.authority(), path).expect("response");
        assert!(
            matches!(resp.status, 400 | 404),
            "{path}: got {}",
            resp.status
        );
    }
    let nul = http::raw(gw.server.authority(), b"GET /a\0b.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if let Ok(resp) = nul {
        assert!(
            matches!(resp.status, 400 | 404),
            "NUL path got {}",
            resp.status
        );
    }
    assert_eq!(snapshot(), before, "a hostile request changed the disk");
    // Malformed and unsupported requests are refused before any node sees them.
    let unknown = b"0017command=rm-rf-repo\n00010000";
    let resp = http::post(
        gw.server.authority(),
        "/empty.git/git-upload-pack",
        &["Git-Protocol: version=2"],
        unknown,
    )
    .expect("response");
    assert_eq!(resp.status, 400, "{}", String::from_utf8_lossy(&resp.body));
    let resp = http::post(
        gw.server.authority(),
        "/empty.git/git-upload-pack",
        &[],
        b"00zzgarbage",
    )
    .expect("response");
    assert_eq!(resp.status, 400);
    // A depth git refuses is the client's error too, not the node's.
    let want = format!("want {} side-band-64k\n", "1".repeat(40));
    let deepen_zero = format!("{:04x}{want}000ddeepen 0\n00000009done\n", want.len() + 4);
    let resp = http::post(
        gw.server.authority(),
        "/empty.git/git-upload-pack",
        &[],
        deepen_zero.as_bytes(),
    )
    .expect("response");
    assert_eq!(resp.status, 400, "{}", String::from_utf8_lossy(&resp.body));
    // So is a depth with deepen-since, which git refuses to combine.
    let both = format!(
        "{:04x}{want}000ddeepen 1\n001cdeepen-since 1600000000\n00000009done\n",
        want.len() + 4
    );
    let resp = http::post(
        gw.server.authority(),
        "/empty.git/git-upload-pack",
        &[],
        both.as_bytes(),
    )
    .expect("response");
    assert_eq!(resp.status, 400, "{}", String::from_utf8_lossy(&resp.body));
    // Dumb HTTP is refused clearly.
    let resp = http::get(gw.server.authority(), "/empty.git/info/refs").expect("response");
    assert_eq!(resp.status, 403);
    // The gateway still serves.
    git.ok(None, &["ls-remote", &gw.repo_url("empty")]);
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                continue;
            }
            out.push(p.display().to_string());
            if p.is_dir() {
                out.extend(walk(&p));
            }
        }
    }
    out
}

fn large_gzipped_fetch_request(remote: bool) {
    let gw = TestGateway::start(remote, GatewayOptions::default());
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let work = make_source(&git, tmp.path(), 3);
    let bare = gw.repo_dir("proj");
    seed_bare(&git, &work, &bare);

    // A clone with thousands of local commits the server has never seen: the fetch
    // negotiation sends them as haves, and git gzips the large request bodies.
    let clone = tmp.path().join("clone");
    git.ok(
        None,
        &["clone", "-q", &gw.repo_url("proj"), path_str(&clone)],
    );
    let mut script = String::new();
    for i in 0..3000 {
        script.push_str(&format!(
            "commit refs/heads/local\ncommitter T <t@example.com> {} +0000\ndata 3\nc{}\n{}\n",
            1_600_000_000 + i,
            i % 10,
            if i == 0 {
                "from refs/heads/main\n".to_owned()
            } else {
                String::new()
            }
        ));
    }
    let mut child = git
        .cmd(Some(&clone))
        .args(["fast-import", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("fast-import");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("feed");
    assert!(child.wait().expect("wait").success());
    let new_head = git.commit_file(&work, "later.txt", "later\n", "later");
    git.ok(Some(&work), &["push", "-q", path_str(&bare), "main"]);
    let trace = tmp.path().join("curl-trace");
    git.ok_env(
        Some(&clone),
        &["-c", "protocol.version=0", "fetch", "-q", "origin"],
        &[
            ("GIT_TRACE_CURL", path_str(&trace)),
            ("GIT_TRACE_CURL_NO_DATA", "1"),
        ],
    );
    assert_eq!(
        git.ok(Some(&clone), &["rev-parse", "origin/main"]).trim(),
        new_head
    );
    let trace = std::fs::read_to_string(&trace).expect("trace");
    assert!(
        trace.contains("Content-Encoding: gzip"),
        "git did not gzip any request"
    );

    // A hand-made gzipped request with 5000 unknown haves still gets a pack.
    let mut body = Vec::new();
    let want = format!("want {new_head} ofs-delta\n");
    push_pkt(&mut body, want.as_bytes());
    body.extend_from_slice(b"0000");
    for i in 0..5000u32 {
        let have = format!("have {:040x}\n", u128::from(i) * 7919 + 1);
        push_pkt(&mut body, have.as_bytes());
    }
    push_pkt(&mut body, b"done\n");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let resp = http::post(
        gw.server.authority(),
        "/proj.git/git-upload-pack",
        &[
            "Content-Type: application/x-git-upload-pack-request",
            "Content-Encoding: gzip",
        ],
        &gz,
    )
    .expect("response");
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert!(
        resp.body.windows(4).any(|w| w == b"PACK"),
        "no pack in the response"
    );
}

fn push_pkt(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:04x}", data.len() + 4).as_bytes());
    out.extend_from_slice(data);
}

fn client_disconnect_kills_git(remote: bool) {
    let gw = TestGateway::start(
        remote,
        GatewayOptions {
            create_on_push: true,
            ..Default::default()
        },
    );
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let head = support::push_incompressible(&gw, &git, tmp.path(), "large", &[12 << 20; 4], 1);

    // Ask for everything, read a little, then hang up.
    let body = support::fetch_everything(&head);
    let mut stream = TcpStream::connect(gw.server.authority()).expect("connect");
    let req = format!(
        "POST /large.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-git-upload-pack-request\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(req.as_bytes()).expect("send");
    stream.write_all(&body).expect("send");
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < buf.len() {
        let n = stream.read(&mut buf[got..]).expect("read");
        assert!(n > 0, "response ended early");
        got += n;
    }
    let running = procs::processes_under(&gw.root);
    assert!(
        !running.is_empty(),
        "no git process was serving the clone (the test would prove nothing)"
    );
    drop(stream);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = procs::processes_under(&gw.root);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "git processes left behind: {left:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And the gateway still serves.
    git.ok(None, &["ls-remote", &gw.repo_url("large")]);
}

#[allow(dead_code)]
fn _uses(_: &Git) {}

#[test]
fn unreachable_node_is_503_and_the_gateway_keeps_serving() {
    // Without caches: with them, refs cached before the kill are still served (they are
    // current); this is about calls that reach the node.
    let mut gw = TestGateway::start(
        true,
        GatewayOptions {
            extra: "[cache]\nenabled = false\n".into(),
            ..Default::default()
        },
    );
    let git = default_client();
    git.ok(None, &["init", "-q", "--bare", path_str(&gw.repo_dir("r"))]);
    git.ok(None, &["ls-remote", &gw.repo_url("r")]);
    if let support::Backend::Remote(node) = &mut gw.backend {
        node.server.kill();
    }
    let resp = http::get(
        gw.server.authority(),
        "/r.git/info/refs?service=git-upload-pack",
    )
    .expect("response");
    assert_eq!(resp.status, 503);
    assert!(
        resp.head.to_ascii_lowercase().contains("retry-after"),
        "{}",
        resp.head
    );
    let err = git.fails(None, &["ls-remote", &gw.repo_url("r")]);
    assert!(err.contains("503"), "{err}");
    // Health checks mark the node down within the detection window (3 × 1s).
    let deadline = Instant::now() + Duration::from_secs(10);
    while http::get(gw.server.authority(), "/-/ready")
        .expect("ready")
        .status
        != 503
    {
        assert!(
            Instant::now() < deadline,
            "/-/ready never reported the dead node"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let scrape = gw.scrape();
    assert_eq!(
        support::metric(&scrape, "gitgate_node_healthy", &["node=\"remote1\""]),
        0.0
    );
    let started = Instant::now();
    let resp = http::get(
        gw.server.authority(),
        "/r.git/info/refs?service=git-upload-pack",
    )
    .expect("response");
    assert_eq!(resp.status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "a known-down node was still tried"
    );
    assert_eq!(
        http::get(gw.server.authority(), "/-/health")
            .expect("health")
            .status,
        200
    );
}

#[test]
fn shutdown_lets_inflight_clones_finish_within_the_grace_period() {
    let gw = TestGateway::start(
        false,
        GatewayOptions {
            create_on_push: true,
            ..Default::default()
        },
    );
    let git = default_client();
    let tmp = TempDir::new().expect("tempdir");
    let head = support::push_incompressible(&gw, &git, tmp.path(), "r", &[24 << 20], 3);

    let body = support::fetch_everything(&head);
    let open = || {
        let mut s = TcpStream::connect(gw.server.authority()).expect("connect");
        let req = format!(
            "POST /r.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(req.as_bytes()).expect("send");
        s.write_all(&body).expect("send");
        let mut first = vec![0u8; 32 * 1024];
        s.read_exact(&mut first).expect("first bytes");
        (s, first)
    };
    let (mut finishing, mut received) = open();
    let (_stalled, _) = open();

    let pid = nix::unistd::Pid::from_raw(gw.server.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let started = Instant::now();
    finishing
        .read_to_end(&mut received)
        .expect("the in-flight clone completes");
    assert!(
        received.ends_with(b"0\r\n\r\n"),
        "the response did not end cleanly"
    );
    assert!(received.windows(4).any(|w| w == b"PACK"));
    // The stalled client is cut off when the grace period (5s) is over, and the
    // process exits.
    let deadline = Instant::now() + Duration::from_secs(15);
    while procs::is_running(gw.server.pid()) {
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after its grace period"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "exited before the grace period with a client still connected"
    );
}

/// Partial-clone filters that cost the node more than they save are refused with a
/// clear error; the usual ones work.
#[test]
fn expensive_filters_are_refused() {
    let gw = TestGateway::start(false, GatewayOptions::default());
    let git = support::git::default_client();
    let tmp = TempDir::new().expect("tempdir");
    let work = make_source(&git, tmp.path(), 5);
    seed_bare(&git, &work, &gw.repo_dir("filters"));
    let url = gw.repo_url("filters");
    for (n, filter) in ["blob:none", "tree:0", "combine:blob:none+tree:1"]
        .into_iter()
        .enumerate()
    {
        let dir = tmp.path().join(format!("ok{n}"));
        git.ok(
            None,
            &[
                "-c",
                "protocol.version=2",
                "clone",
                "-q",
                "--no-checkout",
                &format!("--filter={filter}"),
                &url,
                path_str(&dir),
            ],
        );
    }
    let nine = (0..9).map(|_| "blob:none").collect::<Vec<_>>().join("+");
    // Refused by the gateway before any node sees them: a 400 (git shows the status).
    for filter in [
        "sparse:oid=main:dir0/file0.txt".to_owned(),
        "tree:5".to_owned(),
        format!("combine:{nine}"),
    ] {
        let dir = tmp.path().join(format!("refused-{}", filter.len()));
        let err = git.fails(
            None,
            &[
                "-c",
                "protocol.version=2",
                "clone",
                "-q",
                "--no-checkout",
                &format!("--filter={filter}"),
                &url,
                path_str(&dir),
            ],
        );
        assert!(err.contains("400"), "{filter}: {err}");
    }
}

/// With `create_on_push`, asking to push (the receive-pack advertisement) creates
/// nothing, anonymous crawlers included; the push itself creates the repository.
#[test]
fn asking_to_push_creates_nothing() {
    for remote in [false, true] {
        let gw = TestGateway::start(
            remote,
            GatewayOptions {
                create_on_push: true,
                ..Default::default()
            },
        );
        let authority = gw.server.authority().to_owned();
        let ask = http::get(
            &authority,
            "/crawl/me.git/info/refs?service=git-receive-pack",
        )
        .expect("advertisement");
        assert_eq!(ask.status, 200, "a push to a new repository may start");
        assert!(
            String::from_utf8_lossy(&ask.body).contains("capabilities^{}"),
            "an empty repository's advertisement"
        );
        assert!(
            !gw.repo_dir("crawl/me").exists(),
            "remote={remote}: created on GET"
        );
        let read = http::get(
            &authority,
            "/crawl/me.git/info/refs?service=git-upload-pack",
        )
        .expect("read");
        assert_eq!(read.status, 404, "remote={remote}: registered on GET");
        // A real push creates it.
        let git = support::git::default_client();
        let tmp = TempDir::new().expect("tempdir");
        let work = make_source(&git, tmp.path(), 4);
        git.ok(
            Some(&work),
            &["push", "-q", &gw.repo_url("crawl/me"), "main"],
        );
        assert!(gw.repo_dir("crawl/me").exists());
    }
}
