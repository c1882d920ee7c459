//! The node's internal HTTP API, against a real `gitgate-node` process: token checks,
//! admin calls, repository path validation and discovery of existing repositories.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use gitgate_storage_node::api::{Secret, TokenScope};
use tempfile::TempDir;

const TOKEN: &str = "node-api-test-secret-123";

struct NodeProc {
    child: Child,
    authority: String,
    _dir: TempDir,
}

impl NodeProc {
    /// The node's repository root.
    fn root_dir(&self) -> std::path::PathBuf {
        self._dir.path().join("repos")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(mode: &str, seed: impl FnOnce(&Path)) -> NodeProc {
    start_with(mode, "", seed)
}

fn start_with(mode: &str, extra: &str, seed: impl FnOnce(&Path)) -> NodeProc {
    let dir = TempDir::new().expect("tempdir");
    let root = dir.path().join("repos");
    std::fs::create_dir_all(&root).expect("root");
    seed(&root);
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!("[listen]\naddr = \"127.0.0.1:0\"\n[node]\npath = \"repos\"\ntoken = \"{TOKEN}\"\nauth_mode = \"{mode}\"\n{extra}"),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gitgate-node"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gitgate-node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address line");
    let authority = line
        .trim()
        .trim_start_matches("listening on http://")
        .to_owned();
    NodeProc {
        child,
        authority,
        _dir: dir,
    }
}

/// Stands for "a fresh, valid token for this very request" in the helpers below.
const GOOD: &str = "<good>";

/// `token`, or a fresh one for `method` and `path` on the node at `authority` when it
/// is [`GOOD`] (request tokens are single-use and bound to their request).
fn token_for(authority: &str, method: &str, path: &str, token: &str) -> String {
    if token == GOOD {
        Secret::new(TOKEN).token(
            authority,
            TokenScope::Request {
                method,
                path_and_query: path,
            },
            SystemTime::now(),
        )
    } else {
        token.to_owned()
    }
}

fn request(authority: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| {
            format!(
                "Authorization: Bearer {}\r\n",
                token_for(authority, method, path, t)
            )
        })
        .unwrap_or_default();
    send(
        authority,
        &format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n"),
    )
}

/// Send a raw request; the status and the body of the answer.
fn send(authority: &str, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(authority).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn good_token() -> String {
    GOOD.to_owned()
}

/// A request token minted with `secret` at `at` for `method` `path` on `authority`.
fn minted(secret: &str, authority: &str, method: &str, path: &str, at: SystemTime) -> String {
    Secret::new(secret).token(
        authority,
        TokenScope::Request {
            method,
            path_and_query: path,
        },
        at,
    )
}

#[test]
fn tokens_are_enforced() {
    let node = start("enforced", |_| {});
    assert_eq!(request(&node.authority, "GET", "/-/health", None).0, 200);
    assert_eq!(request(&node.authority, "GET", "/admin/repos", None).0, 401);
    let forged = minted(
        "some-other-secret-xyz",
        &node.authority,
        "GET",
        "/admin/repos",
        SystemTime::now(),
    );
    assert_eq!(
        request(&node.authority, "GET", "/admin/repos", Some(&forged)).0,
        401
    );
    let stale = minted(
        TOKEN,
        &node.authority,
        "GET",
        "/admin/repos",
        SystemTime::now() - Duration::from_secs(3600),
    );
    assert_eq!(
        request(&node.authority, "GET", "/admin/repos", Some(&stale)).0,
        401
    );
    assert_eq!(
        request(
            &node.authority,
            "GET",
            "/x.git/info/refs?service=git-upload-pack",
            None
        )
        .0,
        401
    );
    assert_eq!(
        request(&node.authority, "GET", "/admin/repos", Some(&good_token())).0,
        200
    );
}

#[test]
fn transitioning_mode_lets_bad_tokens_through() {
    let node = start("transitioning", |_| {});
    let old = minted(
        "the-previous-secret-abc",
        &node.authority,
        "GET",
        "/admin/repos",
        SystemTime::now(),
    );
    assert_eq!(
        request(&node.authority, "GET", "/admin/repos", Some(&old)).0,
        200
    );
}

#[test]
fn admin_create_state_delete() {
    let node = start("enforced", |_| {});
    let t = good_token();
    let (status, body) = request(&node.authority, "GET", "/admin/state?repo=g/new", Some(&t));
    assert_eq!(status, 200);
    assert!(body.contains("\"exists\":false"), "{body}");
    assert_eq!(
        request(
            &node.authority,
            "POST",
            "/admin/create?repo=g/new",
            Some(&t)
        )
        .0,
        201
    );
    assert_eq!(
        request(
            &node.authority,
            "POST",
            "/admin/create?repo=g/new",
            Some(&t)
        )
        .0,
        409
    );
    let (status, body) = request(&node.authority, "GET", "/admin/state?repo=g/new", Some(&t));
    assert_eq!(status, 200);
    assert!(
        body.contains("\"exists\":true") && body.contains("\"head\":\"refs/heads/main\""),
        "{body}"
    );
    assert_eq!(
        request(&node.authority, "GET", "/admin/repos", Some(&t)).1,
        "[\"g/new\"]"
    );
    assert_eq!(
        request(
            &node.authority,
            "POST",
            "/admin/delete?repo=g/new",
            Some(&t)
        )
        .0,
        204
    );
    assert_eq!(
        request(
            &node.authority,
            "POST",
            "/admin/delete?repo=g/new",
            Some(&t)
        )
        .0,
        404
    );
    for bad in ["../x", "/abs", "a/../b", ".hidden", "a%2f..%2fb"] {
        let (status, _) = request(
            &node.authority,
            "POST",
            &format!("/admin/create?repo={bad}"),
            Some(&t),
        );
        assert_eq!(status, 400, "{bad}");
    }
}

#[test]
fn existing_repositories_are_discovered_and_checksummed() {
    let node = start("enforced", |root| {
        for name in ["a.git", "group/b.git", "group/sub/c.git"] {
            let ok = Command::new("git")
                .args(["init", "-q", "--bare"])
                .arg(root.join(name))
                .status()
                .expect("git init");
            assert!(ok.success());
        }
        std::fs::create_dir_all(root.join("not-a-repo")).expect("mkdir");
    });
    let t = good_token();
    let (_, body) = request(&node.authority, "GET", "/admin/repos", Some(&t));
    assert_eq!(body, "[\"a\",\"group/b\",\"group/sub/c\"]");
    let (_, one) = request(&node.authority, "GET", "/admin/state?repo=a", Some(&t));
    let (_, two) = request(
        &node.authority,
        "GET",
        "/admin/state?repo=group/b",
        Some(&t),
    );
    // Two empty repositories have the same (empty) ref checksum.
    let checksum = |s: &str| s.split("\"checksum\":").nth(1).map(|x| x[..66].to_owned());
    assert!(checksum(&one).is_some());
    assert_eq!(checksum(&one), checksum(&two));
}

fn post_json(authority: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    let token = token_for(authority, "POST", path, token);
    send(
        authority,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn git(args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .status()
        .expect("git");
    assert!(ok.success(), "git {args:?}");
}

#[test]
fn replicate_copies_every_ref_and_head_from_another_node() {
    let work = TempDir::new().expect("tempdir");
    let w = work.path().to_str().expect("utf-8");
    git(&["init", "-q", "-b", "trunk", w]);
    git(&["-C", w, "commit", "-q", "--allow-empty", "-m", "one"]);
    git(&["-C", w, "branch", "side"]);
    git(&["-C", w, "tag", "v1"]);
    let source = start("enforced", |root| {
        git(&[
            "clone",
            "-q",
            "--bare",
            w,
            root.join("r.git").to_str().expect("utf-8"),
        ]);
    });
    let target = start("enforced", |_| {});
    let t = good_token();
    let url = format!("http://{}/r.git", source.authority);
    // What the target's git fetch shows the source: a token for reading r there.
    let read_r = Secret::new(TOKEN).token(
        &source.authority,
        TokenScope::Fetch { repo: "r" },
        SystemTime::now(),
    );
    // The gateway names its nodes; the source must be on one of them.
    let nodes = format!("[\"http://{}\",\"http://127.0.0.1:9\"]", source.authority);
    let body = |url: &str, head: &str| {
        format!("{{\"source_url\":\"{url}\",\"authorization\":\"Bearer {read_r}\",\"head\":\"{head}\",\"nodes\":{nodes}}}")
    };
    // The query carries the body's digest, so the token covers the body too.
    let at = |repo: &str, body: &str| {
        format!(
            "/admin/replicate?repo={repo}&digest={}",
            gitgate_storage_node::api::body_digest(body.as_bytes())
        )
    };
    let replicate =
        |repo: &str, body: &str| post_json(&target.authority, &at(repo, body), &t, body);
    // Refused before anything runs: no token, a non-HTTP source, a HEAD that is no ref.
    let (status, _) = request(&target.authority, "POST", "/admin/replicate?repo=r", None);
    assert_eq!(status, 401);
    let (status, text) = replicate("r", &body("file:///etc", "refs/heads/trunk"));
    assert_eq!(status, 400, "{text}");
    let (status, text) = replicate("r", &body(&url, "--upload-pack=x"));
    assert_eq!(status, 400, "{text}");
    let (status, _) = replicate("../x", &body(&url, "refs/heads/trunk"));
    assert_eq!(status, 400);

    // A source outside the node set, a body changed after its token was minted, a
    // body without its digest: refused, and nothing is created.
    let elsewhere = "http://127.0.0.1:10/r.git";
    let (status, text) = replicate("new", &body(elsewhere, "refs/heads/trunk"));
    assert_eq!(status, 400, "{text}");
    let signed = body(&url, "refs/heads/trunk");
    let swapped = body(elsewhere, "refs/heads/trunk");
    let (status, text) = post_json(&target.authority, &at("new", &signed), &t, &swapped);
    assert_eq!(status, 400, "{text}");
    let (status, text) = post_json(&target.authority, "/admin/replicate?repo=new", &t, &signed);
    assert_eq!(status, 400, "{text}");
    assert!(!target.root_dir().join("new.git").exists());

    let (status, copied) = replicate("r", &body(&url, "refs/heads/trunk"));
    assert_eq!(status, 200, "{copied}");
    let (_, original) = request(&source.authority, "GET", "/admin/state?repo=r", Some(&t));
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).expect("json");
    let (copied, original) = (parse(&copied), parse(&original));
    assert_eq!(copied["checksum"], original["checksum"]);
    assert_eq!(copied["refs"], 3);
    assert_eq!(copied["head"], "refs/heads/trunk");

    // A ref deleted on the source is pruned on the next replication.
    git(&[
        "--git-dir",
        source
            ._dir
            .path()
            .join("repos/r.git")
            .to_str()
            .expect("utf-8"),
        "update-ref",
        "-d",
        "refs/heads/side",
    ]);
    let (status, again) = replicate("r", &body(&url, "refs/heads/trunk"));
    assert_eq!(status, 200);
    assert_eq!(parse(&again)["refs"], 2);

    // A source that is not there is an error, not an empty success.
    let dead = "http://127.0.0.1:9/r.git";
    let (status, _) = replicate("other", &body(dead, "refs/heads/trunk"));
    assert_eq!(status, 500);
    // ...and leaves no empty repository behind.
    assert!(
        !target.root_dir().join("other.git").exists(),
        "a failed replication left a repository behind"
    );
}

/// Anyone who can reach a node gets no more than the header timeout out of a socket,
/// and no more than their share of connections.
#[test]
fn slow_headers_are_cut_and_connections_limited() {
    let node = start_with(
        "enforced",
        "[limits]\nheader_timeout = \"2s\"\nmax_connections_per_client = 4\n",
        |_| {},
    );
    // One header byte every 300 ms: cut within the header timeout.
    let mut slow = TcpStream::connect(&node.authority).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = std::time::Instant::now();
    let request = b"GET /-/health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = None;
    for byte in request {
        if slow.write_all(&[*byte]).is_err() {
            cut = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    let cut = cut.unwrap_or_else(|| {
        // The write may still succeed after the close; the read says it is closed.
        let mut buf = [0u8; 64];
        let n = slow.read(&mut buf).unwrap_or(0);
        assert!(
            n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
            "the slow client was served"
        );
        started.elapsed()
    });
    assert!(cut < Duration::from_secs(6), "cut after {cut:?}");
    drop(slow);

    // Four idle connections from this address; the fifth is refused.
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(&node.authority).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut fifth = TcpStream::connect(&node.authority).expect("connect");
    fifth
        .write_all(b"GET /-/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    let _ = fifth.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(idle);
}

/// A request token works once, for its request, on its node: replayed on the same or
/// another endpoint, or on another node sharing the secret, it is refused and counted.
#[test]
fn replayed_tokens_are_refused() {
    let a = start("enforced", |_| {});
    let b = start("enforced", |_| {});
    let token = minted(
        TOKEN,
        &a.authority,
        "GET",
        "/admin/repos",
        SystemTime::now(),
    );
    assert_eq!(
        request(&a.authority, "GET", "/admin/repos", Some(&token)).0,
        200
    );
    assert_eq!(
        request(&a.authority, "GET", "/admin/repos", Some(&token)).0,
        401,
        "same endpoint"
    );
    assert_eq!(
        request(&a.authority, "GET", "/admin/state?repo=x", Some(&token)).0,
        401,
        "other endpoint"
    );
    let fresh = minted(
        TOKEN,
        &a.authority,
        "GET",
        "/admin/repos",
        SystemTime::now(),
    );
    assert_eq!(
        request(&b.authority, "GET", "/admin/repos", Some(&fresh)).0,
        401,
        "other node"
    );
    let (_, metrics) = request(&a.authority, "GET", "/-/metrics", None);
    assert!(
        metrics.contains("gitgate_authentications_total{enforced=\"true\",status=\"replayed\"} 1"),
        "{metrics}"
    );
}
