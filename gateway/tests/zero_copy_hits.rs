//! Pack cache responses sent with `sendfile`, with real git clients and raw HTTP/1.1:
//! a hit on an entry still being written, `Content-Length` and keep-alive after a hit,
//! a producer failing under its readers, a client that stops reading or leaves (and one
//! that reads slowly but steadily, which must not be cut off), an
//! entry evicted while it is sent, a node whose output stalls mid-pack, and one that
//! never answers a fetch. (The TLS hit is in `operations.rs`, with the HTTPS setup.)
//!
//! The in-process node runs git through a wrapper that installs a pack-objects hook, so
//! a test can make pack generation slow, make it die halfway, stop upload-pack, or
//! make upload-pack hang before it answers.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use support::git::{default_client, Git};
use support::hooked_git::{HookedGit, Mode};
use support::{metric, path_str, GatewayOptions, TestGateway};
use tempfile::TempDir;

struct Setup {
    gw: TestGateway,
    hook: HookedGit,
    git: Git,
    head: String,
    tmp: TempDir,
}

/// A gateway whose node packs through the hook, caching every fetch, serving one
/// repository `big` of about `mib` MiB of incompressible data.
fn setup(mib: usize, extra: &str, limits: &str) -> Setup {
    setup_with_storage(mib, extra, limits, "")
}

/// [`setup`] with extra `[storage]` keys.
fn setup_with_storage(mib: usize, extra: &str, limits: &str, storage: &str) -> Setup {
    let tmp = TempDir::new().expect("tempdir");
    let hook = HookedGit::new(&tmp.path().join("hooked"));
    let mut options = GatewayOptions {
        create_on_push: true,
        extra: format!("[cache]\nmin_occurrences = 0\n{extra}\n"),
        node_git: Some(hook.program()),
        storage: storage.to_owned(),
        ..Default::default()
    };
    if !limits.is_empty() {
        options = options.with_limits(limits);
    }
    let gw = TestGateway::start(false, options);
    let git = default_client();
    let head = support::push_incompressible(&gw, &git, tmp.path(), "big", &[(mib << 20) / 2; 2], 5);
    Setup {
        gw,
        hook,
        git,
        head,
        tmp,
    }
}

fn clone_v0(git: &Git, url: &str, into: &Path) -> Child {
    git.cmd(None)
        .args(["-c", "protocol.version=0", "clone", "-q", "--mirror", url])
        .arg(into)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn git clone")
}

/// Start a clone, and once its fetch has started production (a miss), a second one
/// that joins it.
fn two_clones_of_one_production(s: &Setup) -> ((Child, PathBuf), (Child, PathBuf)) {
    let url = s.gw.repo_url("big");
    let first_dir = s.tmp.path().join("first");
    let first = clone_v0(&s.git, &url, &first_dir);
    wait_until(Duration::from_secs(20), "the first clone's miss", || {
        lookups(&s.gw, "miss") >= 1.0
    });
    let second_dir = s.tmp.path().join("second");
    let second = clone_v0(&s.git, &url, &second_dir);
    ((first, first_dir), (second, second_dir))
}

fn lookups(gw: &TestGateway, result: &str) -> f64 {
    metric(
        &gw.scrape(),
        "gitgate_pack_cache_lookups_total",
        &[&format!("result=\"{result}\"")],
    )
}

fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fetch request for `head`, as raw HTTP/1.1; `close` asks the server to close the
/// connection after it.
fn fetch_request(head: &str, close: bool) -> Vec<u8> {
    let body = support::fetch_everything(head);
    let mut req = format!(
        "POST /big.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-git-upload-pack-request\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

/// One response read off a kept-alive connection.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Read one HTTP/1.1 response (Content-Length or chunked) from `conn`.
fn read_answer(conn: &mut impl BufRead) -> Answer {
    let mut line = String::new();
    conn.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        conn.read_line(&mut line).expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("header");
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut answer = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = answer.header("content-length") {
        let len: usize = len.parse().expect("length");
        answer.body.resize(len, 0);
        conn.read_exact(&mut answer.body).expect("body");
    } else if answer
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            line.clear();
            conn.read_line(&mut line).expect("chunk size");
            let size = usize::from_str_radix(line.trim(), 16).expect("chunk size");
            let start = answer.body.len();
            answer.body.resize(start + size, 0);
            conn.read_exact(&mut answer.body[start..]).expect("chunk");
            line.clear();
            conn.read_line(&mut line).expect("chunk end");
            if size == 0 {
                break;
            }
        }
    }
    answer
}

/// The pack inside a side-band-64k upload-pack answer; panics on an error band or a
/// missing final flush.
fn demux_pack(answer: &[u8]) -> Vec<u8> {
    let mut pack = Vec::new();
    let mut rest = answer;
    loop {
        assert!(rest.len() >= 4, "answer ends without its final flush");
        let len = usize::from_str_radix(std::str::from_utf8(&rest[..4]).expect("hex"), 16)
            .expect("pkt length");
        if len == 0 {
            assert!(rest.len() == 4, "bytes after the final flush");
            return pack;
        }
        let payload = &rest[4..len];
        if payload.starts_with(b"NAK") || payload.starts_with(b"ACK") {
        } else {
            match payload[0] {
                1 => pack.extend_from_slice(&payload[1..]),
                2 => {}
                _ => panic!("error band: {}", String::from_utf8_lossy(&payload[1..])),
            }
        }
        rest = &rest[len..];
    }
}

/// Check that `answer` carries a complete, valid pack holding `head`.
fn assert_valid_pack(git: &Git, tmp: &Path, answer: &[u8], head: &str) {
    let pack = demux_pack(answer);
    let repo = tmp.join(format!("verify-{}", answer.len()));
    let _ = std::fs::remove_dir_all(&repo);
    git.ok(None, &["init", "-q", "--bare", path_str(&repo)]);
    let mut child = git
        .cmd(Some(&repo))
        .args(["index-pack", "--stdin", "--fix-thin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("index-pack");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&pack)
        .expect("write pack");
    assert!(child.wait().expect("wait").success(), "index-pack refused");
    git.ok(Some(&repo), &["cat-file", "-e", head]);
}

#[test]
fn a_clone_joins_an_entry_still_being_written() {
    let s = setup(8, "", "");
    s.hook.set(Mode::Slow);
    let runs = s.gw.upload_pack_runs();
    let ((mut first, first_dir), (mut second, second_dir)) = two_clones_of_one_production(&s);
    // The pack takes seconds to make: the second clone joined while it was written.
    assert!(
        first.try_wait().expect("try_wait").is_none(),
        "the first clone ended before the second started; the test proves nothing"
    );
    for (child, dir) in [(&mut first, &first_dir), (&mut second, &second_dir)] {
        assert!(child.wait().expect("wait").success(), "a clone failed");
        s.git.fsck(dir);
        assert_eq!(
            s.git
                .ok(None, &["--git-dir", path_str(dir), "rev-parse", "main"])
                .trim(),
            s.head
        );
    }
    assert_eq!(s.gw.upload_pack_runs(), runs + 1, "one pack generation");
    assert!(lookups(&s.gw, "hit") >= 1.0);
}

#[test]
fn a_hit_carries_its_length_and_keeps_the_connection() {
    let s = setup(4, "", "");
    let request = fetch_request(&s.head, false);
    let tcp = TcpStream::connect(s.gw.server.authority()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut writer = tcp.try_clone().expect("clone");
    let mut conn = BufReader::new(tcp);
    // The miss streams as it is produced: chunked.
    writer.write_all(&request).expect("send");
    let miss = read_answer(&mut conn);
    assert_eq!(miss.status, 200);
    assert!(miss.header("content-length").is_none());
    // The hit, on the same connection: the entry is complete, so its length is known.
    writer.write_all(&request).expect("send");
    let hit = read_answer(&mut conn);
    assert_eq!(hit.status, 200);
    assert_eq!(
        hit.header("content-length"),
        Some(hit.body.len().to_string().as_str())
    );
    assert!(hit.body == miss.body, "the hit differs from the miss");
    assert_valid_pack(&s.git, s.tmp.path(), &hit.body, &s.head);
    // Twice more and then something else, still on the same connection.
    for _ in 0..2 {
        writer.write_all(&request).expect("send");
        assert!(read_answer(&mut conn).body == miss.body);
    }
    writer
        .write_all(b"GET /-/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    assert_eq!(read_answer(&mut conn).status, 200);
    assert!(lookups(&s.gw, "hit") >= 3.0);
    let served = metric(&s.gw.scrape(), "gitgate_pack_cache_served_bytes_total", &[]);
    let answers = 4.0 * miss.body.len() as f64;
    assert_eq!(served, answers, "served bytes are exact");
    // The access log counts the same bytes.
    let log = s.gw.server.log_text();
    let logged = log
        .lines()
        .filter(|l| l.contains("request finished") && l.contains("git-upload-pack"))
        .filter(|l| l.contains(&format!("bytes_sent={}", miss.body.len())))
        .count();
    assert!(
        logged >= 4,
        "access log lines with the exact size: {logged}"
    );
    // And a real client over keep-alive (protocol v2: ls-refs then fetch).
    let dir = s.tmp.path().join("v2");
    s.git.ok(
        None,
        &[
            "-c",
            "protocol.version=2",
            "clone",
            "-q",
            "--mirror",
            &s.gw.repo_url("big"),
            path_str(&dir),
        ],
    );
    s.git.fsck(&dir);
}

#[test]
fn a_producer_failure_fails_every_reader_and_caches_nothing() {
    let s = setup(8, "", "");
    s.hook.set(Mode::Fail);
    let url = s.gw.repo_url("big");
    let runs = s.gw.upload_pack_runs();
    let ((mut first, _), (mut second, _)) = two_clones_of_one_production(&s);
    for child in [&mut first, &mut second] {
        let out = child.wait_with_output_ref();
        assert!(!out.0, "a clone of a failed pack succeeded");
        assert!(!out.1.is_empty(), "git said nothing about the failure");
    }
    assert!(
        lookups(&s.gw, "hit") >= 1.0,
        "the second clone did not join"
    );
    // Nothing of the failed pack is served: the next clone makes a new one.
    s.hook.set(Mode::Normal);
    let dir = s.tmp.path().join("after");
    let mut after = clone_v0(&s.git, &url, &dir);
    assert!(after.wait().expect("wait").success());
    s.git.fsck(&dir);
    assert_eq!(s.gw.upload_pack_runs(), runs + 2);
}

#[test]
fn a_node_whose_output_stalls_mid_pack_is_cut_off_and_the_gateway_goes_on() {
    let s = setup_with_storage(8, "", "", "stream_idle_timeout = \"2s\"");
    s.hook.set(Mode::Stall);
    let url = s.gw.repo_url("big");
    let ((mut first, _), (mut second, _)) = two_clones_of_one_production(&s);
    let started = Instant::now();
    for child in [&mut first, &mut second] {
        let (ok, stderr) = child.wait_with_output_ref();
        assert!(!ok, "a clone of a stalled pack succeeded");
        assert!(!stderr.is_empty(), "git said nothing about the failure");
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the stalled clones were not cut off promptly: {:?}",
        started.elapsed()
    );
    assert!(
        s.gw.server.log_text().contains("cut off as stalled"),
        "the log does not say why"
    );
    assert!(
        lookups(&s.gw, "hit") >= 1.0,
        "the second clone did not join the stalled production"
    );
    // Nothing of the stalled pack is served, and the gateway still serves.
    s.hook.set(Mode::Normal);
    let dir = s.tmp.path().join("after");
    let mut after = clone_v0(&s.git, &url, &dir);
    assert!(after.wait().expect("wait").success());
    s.git.fsck(&dir);
}

#[test]
fn a_node_that_never_answers_a_fetch_is_given_up_and_its_git_stopped() {
    let s = setup_with_storage(1, "", "", "stream_idle_timeout = \"2s\"");
    s.hook.set(Mode::Hang);
    let url = s.gw.repo_url("big");
    let started = Instant::now();
    let mut hung = clone_v0(&s.git, &url, &s.tmp.path().join("hung"));
    let seen = Instant::now() + Duration::from_secs(10);
    while hung_gits(&s.gw) == 0 {
        assert!(
            Instant::now() < seen,
            "the hung git process never showed up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, stderr) = hung.wait_with_output_ref();
    assert!(!ok, "a clone from a node that never answered succeeded");
    assert!(!stderr.is_empty(), "git said nothing about the failure");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the hung fetch was not given up promptly: {:?}",
        started.elapsed()
    );
    assert!(
        s.gw.server.log_text().contains("sent nothing for 2s"),
        "the log does not say why"
    );
    // The stand-in for the hung git is stopped, not left behind.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hung_gits(&s.gw) > 0 {
        assert!(
            Instant::now() < deadline,
            "the hung git process was left running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s.hook.set(Mode::Normal);
    let dir = s.tmp.path().join("after");
    let mut after = clone_v0(&s.git, &url, &dir);
    assert!(after.wait().expect("wait").success());
    s.git.fsck(&dir);
}

/// The gateway's children running the [`Mode::Hang`] stand-in (`sleep 613`; its
/// in-process node starts git), from `/proc`.
fn hung_gits(gw: &TestGateway) -> usize {
    let me = gw.server.pid().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter(|p| {
            let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
            // `pid (comm) state ppid ...`: the fields after the last ')'.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            parent == Some(me.as_str())
                && std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x00613\x00")
        })
        .count()
}

/// `wait_with_output` for a borrowed child: (success, stderr).
trait WaitRef {
    fn wait_with_output_ref(&mut self) -> (bool, String);
}

impl WaitRef for Child {
    /// A client still running after [`CLIENT_DEADLINE`] is killed and the test fails, so
    /// a regression (a hang) shows as a failure rather than a test that never ends.
    fn wait_with_output_ref(&mut self) -> (bool, String) {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.id()).expect("pid"));
        let finished = Arc::new(AtomicBool::new(false));
        let watchdog = std::thread::spawn({
            let finished = finished.clone();
            move || {
                let deadline = Instant::now() + CLIENT_DEADLINE;
                while Instant::now() < deadline {
                    if finished.load(Ordering::Acquire) {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                true
            }
        });
        let mut err = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        let status = self.wait().expect("wait");
        finished.store(true, Ordering::Release);
        let killed = watchdog.join().expect("watchdog");
        assert!(
            !killed,
            "git was still running after {CLIENT_DEADLINE:?}: {err}"
        );
        (status.success(), err)
    }
}

/// How long a git client in these tests may run.
const CLIENT_DEADLINE: Duration = Duration::from_secs(90);

/// Warm the entry for `head`; return the length of its answer.
fn warm(s: &Setup) -> usize {
    let tcp = TcpStream::connect(s.gw.server.authority()).expect("connect");
    let mut writer = tcp.try_clone().expect("clone");
    let mut conn = BufReader::new(tcp);
    writer
        .write_all(&fetch_request(&s.head, true))
        .expect("send");
    let answer = read_answer(&mut conn);
    assert_eq!(answer.status, 200);
    answer.body.len()
}

/// Send the fetch for `head` and read its first `n` bytes (headers included); the
/// connection and those bytes.
fn start_hit(s: &Setup, n: usize) -> (TcpStream, Vec<u8>) {
    let mut tcp = connect_small_window(s.gw.server.authority());
    tcp.write_all(&fetch_request(&s.head, true)).expect("send");
    let mut buf = vec![0u8; n];
    tcp.read_exact(&mut buf).expect("first bytes");
    (tcp, buf)
}

/// A connection whose receive buffer stays small (set before connecting, so the
/// kernel neither grows it nor advertises more): a client that stops reading leaves
/// the rest of a few-MiB answer on the gateway's side instead of in its own buffer.
fn connect_small_window(authority: &str) -> TcpStream {
    use nix::sys::socket::{
        connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let addr: std::net::SocketAddrV4 = authority.parse().expect("an IPv4 authority");
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .expect("socket");
    setsockopt(&fd, sockopt::RcvBuf, &4096).expect("SO_RCVBUF");
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(addr),
    )
    .expect("connect");
    TcpStream::from(fd)
}

/// Data bytes in a chunked body, which may be cut off anywhere.
fn chunked_data_len(mut body: &[u8]) -> u64 {
    let mut data = 0u64;
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return data;
        };
        let size = std::str::from_utf8(&body[..eol])
            .ok()
            .and_then(|line| u64::from_str_radix(line.split(';').next()?.trim(), 16).ok())
            .expect("a chunk size line");
        body = &body[eol + 2..];
        let taken = size.min(body.len() as u64);
        data += taken;
        if size == 0 || taken < size {
            return data;
        }
        body = &body[(size as usize).min(body.len())..];
        body = body.strip_prefix(b"\r\n").unwrap_or(body);
    }
}

/// `bytes_sent` of the last access-log line for a response that did not complete.
fn unfinished_bytes_sent(log: &str) -> Option<u64> {
    log.lines()
        .rev()
        .filter(|l| l.contains("request finished") && !l.contains("complete"))
        .filter_map(|l| {
            let rest = &l[l.find("bytes_sent=")? + "bytes_sent=".len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .next()
}

#[test]
fn a_client_that_stops_reading_a_hit_is_cut_off() {
    stops_reading_a_hit(24, 32 * 1024);
}

/// One file range (up to 4 MiB) is handed to hyper whole, so hyper is done with a
/// small hit's body before its bytes leave: the send timeout and the access log must
/// still see a client that stops reading it.
#[test]
fn a_client_that_stops_reading_a_small_hit_is_cut_off() {
    stops_reading_a_hit(3, 1024);
}

/// A client of a `mib` MiB hit that reads its first `read` bytes, then stops.
/// The same while the entry is still being written (the miss that writes it, chunked,
/// its body waiting on the producer between ranges): cut off, and logged exactly. (The
/// case where the body's very last poll waited on the producer before its end is the
/// `progress` unit test `a_body_that_last_waited_on_its_source_…`.)
#[test]
fn a_client_that_stops_reading_the_end_of_a_live_entry_is_cut_off() {
    stops_reading(3, 1024, true);
}

fn stops_reading_a_hit(mib: usize, read: usize) {
    stops_reading(mib, read, false);
}

/// A client of a `mib` MiB answer that reads its first `read` bytes, then stops; the
/// answer is a hit of a finished entry, or with `live` the miss that writes it (slowly).
fn stops_reading(mib: usize, read: usize, live: bool) {
    let s = setup(mib, "", "send_timeout = \"1s\"");
    let (kind, len) = if live {
        s.hook.set(Mode::Slow);
        ("miss", None)
    } else {
        ("hit", Some(warm(&s)))
    };
    let before = lookups(&s.gw, kind);
    let served = || metric(&s.gw.scrape(), "gitgate_pack_cache_served_bytes_total", &[]) as u64;
    let served_before = served();
    let (mut stalled, first) = start_hit(&s, read);
    assert_eq!(lookups(&s.gw, kind), before + 1.0);
    // Stop reading: the gateway must give up on this connection.
    wait_until(Duration::from_secs(30), "the send timeout", || {
        s.gw.server.log_text().contains("client stopped reading")
    });
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    // What the client got is what the gateway counts as served and logs as sent: the
    // socket's buffered bytes still arrive after the close; nothing more was sent.
    let head = first
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the headers fit in the first bytes")
        + 4;
    let mut all = first.clone();
    all.extend_from_slice(&rest);
    let headers = String::from_utf8_lossy(&all[..head]).to_ascii_lowercase();
    let body = if headers.contains("transfer-encoding: chunked") {
        chunked_data_len(&all[head..])
    } else {
        (all.len() - head) as u64
    };
    if !live {
        // (A miss's answer is not all cache reads: served bytes count hits.)
        assert_eq!(served() - served_before, body, "served bytes are exact");
    }
    wait_until(Duration::from_secs(5), "the access log line", || {
        unfinished_bytes_sent(&s.gw.server.log_text()).is_some()
    });
    assert_eq!(
        unfinished_bytes_sent(&s.gw.server.log_text()),
        Some(body),
        "logged bytes are exact"
    );
    let len = len.unwrap_or_else(|| warm(&s));
    assert!(
        read + rest.len() + 64 * 1024 < len,
        "the whole answer arrived ({} of {len}); the client never stalled",
        read + rest.len()
    );
    // Others are still served from the same entry.
    let dir = s.tmp.path().join("after");
    assert!(clone_v0(&s.git, &s.gw.repo_url("big"), &dir)
        .wait()
        .expect("wait")
        .success());
    s.git.fsck(&dir);
}

/// A client that keeps reading, only slowly (a few KiB every 20 ms through a 4 KiB
/// receive buffer, about 200 KB/s), is not taken for one that stopped: it takes the
/// 1 MiB that shows progress (half the unsent mark) in about 5 s, within
/// `send_timeout`, though the whole 3 MiB answer takes it 15 s.
#[test]
fn a_slow_but_steady_reader_of_a_hit_is_not_cut_off() {
    let s = setup(3, "", "send_timeout = \"8s\"");
    let len = warm(&s);
    let mut tcp = connect_small_window(s.gw.server.authority());
    tcp.write_all(&fetch_request(&s.head, true)).expect("send");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut all = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let started = Instant::now();
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(err) => panic!("reading the hit: {err}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("read {} bytes in {:?}", all.len(), started.elapsed());
    assert!(
        !s.gw.server.log_text().contains("client stopped reading"),
        "a reading client was cut off"
    );
    let body = read_answer(&mut BufReader::new(&all[..])).body;
    assert_eq!(body.len(), len, "the whole answer arrived");
    assert_valid_pack(&s.git, s.tmp.path(), &body, &s.head);
}

#[test]
fn a_client_that_leaves_mid_hit_is_logged_and_others_go_on() {
    let s = setup(24, "", "");
    let len = warm(&s);
    let (gone, _) = start_hit(&s, 1 << 20);
    drop(gone);
    wait_until(Duration::from_secs(15), "the access log line", || {
        s.gw.server.log_text().lines().any(|l| {
            l.contains("request finished")
                && l.contains("client_gone")
                && !l.contains(&format!("bytes_sent={len}"))
        })
    });
    assert_eq!(warm(&s), len);
    let dir = s.tmp.path().join("after");
    assert!(clone_v0(&s.git, &s.gw.repo_url("big"), &dir)
        .wait()
        .expect("wait")
        .success());
    s.git.fsck(&dir);
}

#[test]
fn an_entry_evicted_while_it_is_sent_still_arrives_whole() {
    let s = setup(16, "max_age = \"1s\"", "send_timeout = \"30s\"");
    s.hook.set(Mode::Slow);
    // Two readers of one entry: the one that started it, and a hit joining it.
    let mut first = TcpStream::connect(s.gw.server.authority()).expect("connect");
    first
        .write_all(&fetch_request(&s.head, true))
        .expect("send");
    wait_until(Duration::from_secs(20), "the miss", || {
        lookups(&s.gw, "miss") >= 1.0
    });
    let mut second = TcpStream::connect(s.gw.server.authority()).expect("connect");
    second
        .write_all(&fetch_request(&s.head, true))
        .expect("send");
    wait_until(Duration::from_secs(20), "the hit", || {
        lookups(&s.gw, "hit") >= 1.0
    });
    let mut readers = Vec::new();
    for conn in [&mut first, &mut second] {
        let mut head = vec![0u8; 4096];
        conn.read_exact(&mut head).expect("first bytes");
        readers.push(head);
    }
    // Both stop reading until the entry is complete and evicted.
    wait_until(Duration::from_secs(60), "the eviction", || {
        let scrape = s.gw.scrape();
        metric(&scrape, "gitgate_pack_cache_evictions_total", &[]) >= 1.0
            && metric(&scrape, "gitgate_pack_cache_entries", &[]) == 0.0
    });
    for (conn, head) in [first, second].into_iter().zip(readers) {
        let mut conn = BufReader::new(conn);
        let mut rest = Vec::new();
        conn.get_mut()
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let _ = conn.read_to_end(&mut rest);
        // Re-parse the whole response from what was read.
        let mut all = head;
        all.extend_from_slice(&rest);
        let mut reparsed = BufReader::new(&all[..]);
        let body = read_answer(&mut reparsed).body;
        assert_valid_pack(&s.git, s.tmp.path(), &body, &s.head);
    }
}
