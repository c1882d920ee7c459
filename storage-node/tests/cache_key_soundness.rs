//! Cache-key soundness, as a property checked against the real `git upload-pack`.
//!
//! Requests captured from git 2.47 and 2.39 clients (`proto/tests/fixtures`) are the
//! templates. Each variant is a template with a few random edits: flushes inserted
//! (the cache-poisoning request is one), lines dropped, duplicated or swapped, object
//! ids changed, capabilities shuffled, dropped or added, shallow / deepen / filter /
//! `done` lines added. For every variant the gateway's view is computed
//! (`normalize::upload_pack`); every variant the cache would key is then run through
//! `git upload-pack --stateless-rpc`, exactly as a node runs it, on a real repository.
//!
//! The properties:
//! 1. git's answer to a cacheable request is either a failure (non-zero exit, never
//!    stored) or a complete final response as [`ResponseCheck`] defines it: a request
//!    the cache would key never gets an answer the cache would refuse, such as the bare
//!    `NAK` of a request with a flush before `done`.
//! 2. Variants that share a key get equivalent answers: the same pack objects, the same
//!    shallow boundary, the same wanted refs, the same common objects acknowledged.
//!
//! A run checks fixed seeds (ones that once found a bug), so it is reproducible; each
//! seed is printed. `KEY_SOUNDNESS_SEED=<n>` replays one seed, `KEY_SOUNDNESS_SEED=random`
//! explores a new one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use futures_util::StreamExt;
use gitgate_proto::normalize;
use gitgate_proto::pktline::{self, PacketLineRef};
use gitgate_proto::response::{Expected, Framing, ResponseCheck};
use gitgate_proto::{GitProtocol, ProtocolVersion, Service};
use gitgate_storage_node::git::GitBinary;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

/// Variants generated per run (both client versions, all fetch templates).
const VARIANTS: usize = 1600;

// === the repository ===

/// Run git with an isolated environment; panics with stderr on failure.
fn git(dir: &Path, args: &[&str], date: u64) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "A")
        .env("GIT_AUTHOR_EMAIL", "a@example.com")
        .env("GIT_COMMITTER_NAME", "A")
        .env("GIT_COMMITTER_EMAIL", "a@example.com")
        .env("GIT_AUTHOR_DATE", format!("{date} +0000"))
        .env("GIT_COMMITTER_DATE", format!("{date} +0000"))
        .stdin(Stdio::null())
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A bare repository with history worth negotiating over: 14 commits on `main` with
/// distinct dates and growing files, a `topic` branch of 3, an annotated tag and a
/// lightweight one. Returns the bare directory and a pool of object ids in it.
fn repository(root: &Path) -> (PathBuf, Vec<String>) {
    let work = root.join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    git(&work, &["init", "-q", "-b", "main"], 0);
    let mut date = 1_600_000_000u64;
    let commit = |n: usize, name: &str, date: &mut u64| {
        *date += 3600;
        let body: String = (0..n * 40).map(|i| format!("{name} line {i}\n")).collect();
        std::fs::write(work.join(format!("{name}.txt")), body).expect("write file");
        std::fs::write(work.join("shared.txt"), format!("{name} {n}\n")).expect("write file");
        git(&work, &["add", "-A"], *date);
        git(
            &work,
            &["commit", "-q", "-m", &format!("{name} {n}")],
            *date,
        );
        git(&work, &["rev-parse", "HEAD"], *date)
    };
    let mut main = Vec::new();
    for n in 0..14 {
        main.push(commit(n + 1, "main", &mut date));
        if n == 4 {
            git(&work, &["tag", "-a", "-m", "v1", "v1"], date);
            git(&work, &["tag", "light"], date);
        }
    }
    git(&work, &["checkout", "-q", "-b", "topic", &main[8]], date);
    let mut topic = Vec::new();
    for n in 0..3 {
        topic.push(commit(n + 1, "topic", &mut date));
    }
    git(&work, &["checkout", "-q", "main"], date);
    let bare = root.join("repo.git");
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().expect("utf-8 path"),
            "repo.git",
        ],
        date,
    );
    let tag = git(&bare, &["rev-parse", "refs/tags/v1"], date);
    let blob = git(&bare, &["rev-parse", "main:main.txt"], date);
    let mut pool = vec![
        main[13].clone(),
        tag,
        topic[2].clone(),
        main[10].clone(),
        main[3].clone(),
        topic[0].clone(),
        main[12].clone(),
        main[6].clone(),
        blob,
    ];
    pool.extend(main.iter().take(3).cloned());
    (bare, pool)
}

// === templates and variants ===

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pkt {
    Data(String),
    Flush,
    Delim,
}

struct Template {
    client: String,
    name: String,
    version: ProtocolVersion,
    pkts: Vec<Pkt>,
}

fn encode(pkts: &[Pkt]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pkts {
        match p {
            Pkt::Data(d) => pktline::encode_text(&mut out, d.as_bytes()).expect("bounded line"),
            Pkt::Flush => pktline::encode_flush(&mut out),
            Pkt::Delim => pktline::encode_delim(&mut out),
        }
    }
    out
}

/// The captured fetch requests (v0 upload-pack and v2 `fetch`), object ids mapped in
/// order of first appearance onto `pool`.
fn templates(pool: &[String]) -> Vec<Template> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto/tests/fixtures");
    let mut out = Vec::new();
    for client in ["git-2.47", "git-2.39"] {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join(client))
            .expect("fixtures dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains("upload-pack"))
            .collect();
        names.sort();
        for path in names {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            let version = if name.ends_with("-v2.req") {
                ProtocolVersion::V2
            } else {
                ProtocolVersion::V0
            };
            let body = std::fs::read(&path).expect("read fixture");
            let mut map: HashMap<String, String> = HashMap::new();
            let mut pkts = Vec::new();
            for line in pktline::lines(&body) {
                pkts.push(match line.expect("fixture pkt-line") {
                    PacketLineRef::Data(d) => {
                        let text = String::from_utf8_lossy(pktline::trim_newline(d));
                        let words: Vec<String> = text
                            .split(' ')
                            .map(|w| {
                                if w.len() == 40 && w.bytes().all(|b| b.is_ascii_hexdigit()) {
                                    let next = pool[map.len() % pool.len()].clone();
                                    map.entry(w.to_owned()).or_insert(next).clone()
                                } else {
                                    w.to_owned()
                                }
                            })
                            .collect();
                        Pkt::Data(words.join(" "))
                    }
                    PacketLineRef::Flush => Pkt::Flush,
                    PacketLineRef::Delimiter => Pkt::Delim,
                    PacketLineRef::ResponseEnd => panic!("response end in a request"),
                });
            }
            let is_fetch = version == ProtocolVersion::V0
                || pkts.first() == Some(&Pkt::Data("command=fetch".into()));
            if is_fetch {
                out.push(Template {
                    client: client.into(),
                    name,
                    version,
                    pkts,
                });
            }
        }
    }
    out
}

/// xorshift64*: small, seedable, good enough to pick edits.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const V0_CAPS: &[&str] = &[
    "multi_ack_detailed",
    "multi_ack",
    "no-done",
    "side-band-64k",
    "side-band",
    "thin-pack",
    "no-progress",
    "include-tag",
    "ofs-delta",
    "deepen-since",
    "deepen-not",
    "deepen-relative",
    "agent=git/2.47.3",
    "agent=git/2.39.5",
    "agent=other/1.0",
];

/// One random edit of `pkts`, as a client (or someone impersonating one) could send.
fn edit(rng: &mut Rng, version: ProtocolVersion, pkts: &mut Vec<Pkt>, pool: &[String]) {
    let oid = |rng: &mut Rng| rng.pick(pool).clone();
    let len = pkts.len();
    match rng.below(15) {
        // A flush anywhere after the first line: the poisoning shape and its cousins.
        0 | 1 => {
            let at = 1 + rng.below(len);
            pkts.insert(at.min(len), Pkt::Flush);
        }
        // Drop a line (a want, the flush, `done`, a capability line...).
        2 => {
            if len > 1 {
                pkts.remove(1 + rng.below(len - 1));
            }
        }
        // Duplicate a data line next to itself or elsewhere.
        3 | 4 => {
            let at = rng.below(len);
            if let Pkt::Data(d) = &pkts[at] {
                if !d.starts_with("command=") {
                    let d = Pkt::Data(d.split(' ').take(2).collect::<Vec<_>>().join(" "));
                    let to = 1 + rng.below(len);
                    pkts.insert(to.min(len), d);
                }
            }
        }
        // Swap two neighbouring lines.
        5..=7 => {
            if len > 2 {
                let at = 1 + rng.below(len - 2);
                pkts.swap(at, at + 1);
            }
        }
        // Point a line's object id elsewhere.
        8 => {
            let at = rng.below(len);
            let replacement = oid(rng);
            if let Pkt::Data(d) = &mut pkts[at] {
                let words: Vec<String> = d
                    .split(' ')
                    .map(|w| {
                        if w.len() == 40 {
                            replacement.clone()
                        } else {
                            w.to_owned()
                        }
                    })
                    .collect();
                *d = words.join(" ");
            }
        }
        // Insert an argument line somewhere after the first line.
        9 | 10 => {
            let line = match rng.below(13) {
                0 | 1 => format!("have {}", oid(rng)),
                2 => format!("want {}", oid(rng)),
                3 => format!("shallow {}", oid(rng)),
                4 => format!("deepen {}", 1 + rng.below(4)),
                5 => format!("deepen-since {}", 1_600_000_000 + 3600 * rng.below(20)),
                6 => "deepen-not refs/heads/topic".into(),
                7 => rng
                    .pick(&["filter blob:none", "filter blob:limit=200", "filter tree:0"])
                    .to_string(),
                8 => "done".into(),
                9 => rng
                    .pick(&[
                        "thin-pack",
                        "include-tag",
                        "no-progress",
                        "ofs-delta",
                        "deepen-relative",
                    ])
                    .to_string(),
                10 => "deepen 010".into(),
                11 => format!(
                    "want-ref {}",
                    rng.pick(&["refs/heads/main", "refs/heads/topic", "refs/tags/v1"])
                ),
                _ => "sideband-all".into(),
            };
            let at = 1 + rng.below(len);
            pkts.insert(at.min(len), Pkt::Data(line));
        }
        // Capabilities: v0 edits the first want's list; v2 the capability lines.
        _ => match version {
            ProtocolVersion::V0 => {
                if let Some(Pkt::Data(first)) = pkts.first_mut() {
                    let mut words: Vec<String> = first.split(' ').map(str::to_owned).collect();
                    if words.len() < 2 {
                        return;
                    }
                    let mut caps = words.split_off(2);
                    match rng.below(4) {
                        0 => {
                            // Rotate: order must not matter.
                            let k = rng.below(caps.len().max(1)).min(caps.len());
                            caps.rotate_left(k);
                        }
                        1 => {
                            if !caps.is_empty() {
                                caps.remove(rng.below(caps.len()));
                            }
                        }
                        2 => caps.push(rng.pick(V0_CAPS).to_string()),
                        _ => {
                            if let Some(c) = caps.first().cloned() {
                                caps.push(c);
                            }
                        }
                    }
                    words.extend(caps);
                    *first = words.join(" ");
                }
            }
            ProtocolVersion::V2 => {
                let cap = rng
                    .pick(&[
                        "agent=git/2.39.5",
                        "agent=other/1.0",
                        "session-id=abc123",
                        "session-id=zzz",
                        "object-format=sha1",
                    ])
                    .to_string();
                let delim = pkts.iter().position(|p| *p == Pkt::Delim).unwrap_or(1);
                let at = 1 + rng.below(delim.max(1));
                pkts.insert(at.min(delim), Pkt::Data(cap));
            }
        },
    }
}

// === answers ===

/// What a client can tell apart in an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// git exited non-zero: the producer fails and nothing is stored.
    Failed,
    /// A complete final response.
    Pack {
        objects: u32,
        /// The ids of the objects in the pack (with a thin pack's bases added, which
        /// depend only on the haves). The order of objects in the pack is not compared:
        /// git orders them by its walk, which follows the order of the wants, and a
        /// client indexes the pack whatever its order.
        object_ids: BTreeSet<String>,
        shallow: BTreeSet<String>,
        wanted_refs: BTreeSet<String>,
        common: BTreeSet<String>,
        ended_with_nak: bool,
    },
}

/// Split a complete response (already checked) into what [`Answer`] compares.
fn summarize(
    expected: Expected,
    response: &[u8],
    objects: u32,
    index: impl FnOnce(&[u8]) -> BTreeSet<String>,
) -> Answer {
    let mut shallow = BTreeSet::new();
    let mut wanted_refs = BTreeSet::new();
    let mut common = BTreeSet::new();
    let mut ended_with_nak = false;
    let mut pack = Vec::new();
    let mut section = String::new();
    let mut in_pack = false;
    let mut at = 0;
    while at < response.len() {
        if in_pack && expected.framing == (Framing::V0 { sideband: false }) {
            pack.extend_from_slice(&response[at..]);
            break;
        }
        let Ok(pktline::Decoded::Complete { line, consumed }) = pktline::decode(&response[at..])
        else {
            panic!("checked response does not decode at {at}");
        };
        at += consumed;
        let PacketLineRef::Data(d) = line else {
            if line == PacketLineRef::Delimiter {
                section.clear();
            }
            continue;
        };
        if in_pack || section == "packfile" {
            if d.first() == Some(&1) {
                pack.extend_from_slice(&d[1..]);
            }
            continue;
        }
        let text = String::from_utf8_lossy(pktline::trim_newline(d)).into_owned();
        if expected.framing == Framing::V2 && section.is_empty() {
            section = text;
            continue;
        }
        if text.starts_with("shallow ") || text.starts_with("unshallow ") {
            shallow.insert(text);
        } else if section == "wanted-refs" {
            wanted_refs.insert(text);
        } else if let Some(rest) = text.strip_prefix("ACK ") {
            match rest.split_once(' ') {
                Some((oid, "common")) => {
                    common.insert(oid.to_owned());
                }
                Some(_) => {}
                None => in_pack = expected.framing != Framing::V2,
            }
        } else if text == "NAK" {
            ended_with_nak = true;
            in_pack = expected.framing != Framing::V2;
        }
    }
    Answer::Pack {
        objects,
        object_ids: index(&pack),
        shallow,
        wanted_refs,
        common,
        ended_with_nak,
    }
}

/// Run the node's upload-pack on `body`; the answer, or a description of a response
/// the cache would have refused although git exited 0.
async fn answer(
    git: &GitBinary,
    repo: &Path,
    version: ProtocolVersion,
    expected: Expected,
    body: Vec<u8>,
) -> Result<Answer, String> {
    let protocol = match version {
        ProtocolVersion::V2 => GitProtocol::parse(b"version=2"),
        ProtocolVersion::V0 => None,
    };
    let mut child = git
        .service(Service::UploadPack, repo, protocol.as_ref(), false)
        .spawn()
        .expect("spawn git upload-pack");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = tokio::spawn(async move {
        // git may stop reading early (that is what a stray flush does).
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.expect("git upload-pack");
    writer.await.expect("writer task");
    if !out.status.success() {
        return Ok(Answer::Failed);
    }
    let mut check = ResponseCheck::new(expected);
    let result = check.feed(&out.stdout).and_then(|()| check.finish());
    match result {
        Ok(done) => {
            // Indexing the pack runs git and waits: off the runtime's threads.
            let repo = repo.to_owned();
            Ok(tokio::task::spawn_blocking(move || {
                summarize(expected, &out.stdout, done.objects, |pack| {
                    object_ids(&repo, pack)
                })
            })
            .await
            .expect("summarize task"))
        }
        Err(err) => Err(format!(
            "git exited 0 with an answer the cache must refuse ({err}): {:?}",
            String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(200)])
        )),
    }
}

/// The ids of the objects in `pack`, as `git index-pack --fix-thin` finds them in a
/// scratch repository that borrows `repo`'s objects for a thin pack's bases.
fn object_ids(repo: &Path, pack: &[u8]) -> BTreeSet<String> {
    let scratch = TempDir::new().expect("tempdir");
    let dir = scratch.path();
    git(dir, &["init", "-q", "--bare", "--template=", "."], 0);
    std::fs::write(
        dir.join("objects/info/alternates"),
        format!("{}\n", repo.join("objects").display()),
    )
    .expect("write alternates");
    let mut child = Command::new("git")
        .current_dir(dir)
        .args(["index-pack", "--stdin", "--fix-thin"])
        .env("GIT_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn git index-pack");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = pack.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let out = child.wait_with_output().expect("git index-pack");
    let _ = writer.join();
    assert!(
        out.status.success(),
        "git index-pack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let name = stdout
        .split_whitespace()
        .last()
        .expect("index-pack names the pack");
    let idx = std::fs::File::open(dir.join(format!("objects/pack/pack-{name}.idx"))).expect("idx");
    let listed = Command::new("git")
        .args(["show-index"])
        .stdin(idx)
        .output()
        .expect("git show-index");
    assert!(listed.status.success(), "git show-index failed");
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

/// A cacheable variant: its template, its body and what its answer must look like.
type Keyed = (usize, Vec<u8>, Expected);

#[test]
fn requests_that_share_a_key_get_the_same_answer_from_git() {
    // Fixed seeds by default (each found a bug once), so that a run is reproducible;
    // `KEY_SOUNDNESS_SEED=<n>` replays one run, `=random` explores a new one.
    let seeds: Vec<u64> = match std::env::var("KEY_SOUNDNESS_SEED").ok().as_deref() {
        Some("random") => vec![std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)],
        Some(n) => vec![n.parse().expect("KEY_SOUNDNESS_SEED: a number or `random`")],
        None => vec![1796238532074817299, 1796247067729607389],
    };
    let root = TempDir::new().expect("tempdir");
    let (repo, pool) = repository(root.path());
    let templates = templates(&pool);
    assert!(
        templates.len() >= 12,
        "expected fetch templates from both git versions, found {}",
        templates.len()
    );
    for seed in seeds {
        let seed = seed | 1;
        println!("KEY_SOUNDNESS_SEED={seed}");
        let mut rng = Rng(seed);

        // Generate: the templates themselves, then edited variants.
        let mut variants: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, t) in templates.iter().enumerate() {
            variants.push((i, encode(&t.pkts)));
        }
        while variants.len() < VARIANTS {
            let i = rng.below(templates.len());
            let mut pkts = templates[i].pkts.clone();
            for _ in 0..1 + rng.below(3) {
                edit(&mut rng, templates[i].version, &mut pkts, &pool);
            }
            variants.push((i, encode(&pkts)));
        }

        // The gateway's view: refused (400), passed through, or keyed.
        let (mut refused, mut passed) = (0usize, 0usize);
        let mut keyed: BTreeMap<(ProtocolVersion, Vec<u8>), Vec<Keyed>> = BTreeMap::new();
        for (i, body) in variants {
            let version = templates[i].version;
            match normalize::upload_pack(version, &body) {
                Err(_) => refused += 1,
                Ok(n) => match n.expected {
                    None => passed += 1,
                    Some(expected) => keyed
                        .entry((version, n.canonical))
                        .or_default()
                        .push((i, body, expected)),
                },
            }
        }
        let cacheable: usize = keyed.values().map(Vec::len).sum();
        let shared = keyed.values().filter(|g| g.len() > 1).count();
        println!(
            "{VARIANTS} variants: {refused} refused, {passed} passed through, {cacheable} keyed \
             into {} keys ({shared} keys shared by several variants)",
            keyed.len()
        );
        assert!(cacheable >= 300, "too few cacheable variants: {cacheable}");
        assert!(shared >= 40, "too few keys shared by variants: {shared}");
        assert!(
            refused > 0 && passed > 0,
            "the edits should reach every outcome"
        );

        // Ask git, a few at a time, once per distinct body.
        let git = GitBinary::locate(Path::new("git")).expect("git on PATH");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let mut jobs = Vec::new();
        for ((version, _), group) in &keyed {
            let mut seen = BTreeSet::new();
            for (i, body, expected) in group {
                if seen.insert(body.clone()) {
                    jobs.push((*version, *i, body.clone(), *expected));
                }
            }
        }
        let answers: HashMap<Vec<u8>, Result<Answer, String>> = runtime.block_on(async {
            futures_util::stream::iter(jobs)
                .map(|(version, _, body, expected)| {
                    let git = git.clone();
                    let repo = repo.clone();
                    async move {
                        let a = answer(&git, &repo, version, expected, body.clone()).await;
                        (body, a)
                    }
                })
                .buffer_unordered(4)
                .collect()
                .await
        });

        let mut failures = Vec::new();
        let mut packs = 0usize;
        for ((version, _), group) in &keyed {
            let mut first: Option<(&str, &Answer, &[u8])> = None;
            for (i, body, _) in group {
                let t = &templates[*i];
                let who = format!("{} {}", t.client, t.name);
                match &answers[body] {
                    Err(refusal) => failures.push(format!(
                        "{who} {version:?}: cacheable, but {refusal}\nrequest: {:?}",
                        String::from_utf8_lossy(body)
                    )),
                    Ok(a) => {
                        if matches!(a, Answer::Pack { .. }) {
                            packs += 1;
                        }
                        match first {
                            None => first = Some((t.name.as_str(), a, body)),
                            Some((_, fa, fb)) if fa != a => failures.push(format!(
                                "{who} {version:?}: same key, different answers\n  {:?}\n  -> {fa:?}\n  {:?}\n  -> {a:?}",
                                String::from_utf8_lossy(fb),
                                String::from_utf8_lossy(body)
                            )),
                            Some(_) => {}
                        }
                    }
                }
            }
        }
        println!("{packs} cacheable variants answered with a complete pack");
        assert!(packs >= 200, "too few variants got a pack: {packs}");
        assert!(
            failures.is_empty(),
            "seed {seed}: {} violations, first ones:\n{}",
            failures.len(),
            failures
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n\n")
        );
    }
}

/// Without `multi_ack`, git acknowledges a have of the first common commit's parent
/// with a second plain `ACK`: the answer's framing depends on the history, so the
/// gateway must not key such a request (and git's answer shows why).
#[test]
fn a_have_of_the_first_common_commits_parent_gets_a_second_plain_ack() {
    let root = TempDir::new().expect("tempdir");
    let (repo, _) = repository(root.path());
    let ids = git(&repo, &["rev-parse", "main", "main~1", "main~2"], 0);
    let [tip, child, parent]: [&str; 3] = ids
        .lines()
        .collect::<Vec<_>>()
        .try_into()
        .expect("three commits");
    let body = encode(&[
        Pkt::Data(format!(
            "want {tip} side-band-64k ofs-delta agent=other/1.0"
        )),
        Pkt::Flush,
        Pkt::Data(format!("have {child}")),
        Pkt::Data(format!("have {parent}")),
        Pkt::Data("done".into()),
    ]);
    let normalized = normalize::upload_pack(ProtocolVersion::V0, &body).expect("valid");
    assert_eq!(normalized.expected, None, "must pass through, not be keyed");

    // git's own answer: two plain ACKs, then the pack.
    let git = GitBinary::locate(Path::new("git")).expect("git on PATH");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let expected = Expected {
        framing: Framing::V0 { sideband: true },
        format: gitgate_proto::response::ObjectFormat::Sha1,
    };
    let answer = runtime.block_on(answer(&git, &repo, ProtocolVersion::V0, expected, body));
    let refusal = answer.expect_err("one plain ACK is what a keyed answer may hold");
    assert!(
        refusal.contains(&format!("ACK {child}")) && refusal.contains(&format!("ACK {parent}")),
        "git should acknowledge both haves: {refusal}"
    );
}
