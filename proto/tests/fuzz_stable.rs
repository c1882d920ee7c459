//! A mutation fuzzer that runs on the stable toolchain, as part of the normal test run.
//!
//! Seeds are the captured requests in `tests/fixtures`; each round mutates one (bit
//! flips, inserted/deleted/duplicated ranges, splices with another seed, broken length
//! prefixes, truncation) and feeds the result to every public parser. A parser may
//! reject input, but must never panic, and results must respect their own invariants.
//! `GITGATE_FUZZ_ITERATIONS` raises the round count for a long run (default 20000);
//! `GITGATE_FUZZ_SEED` picks another seed. The coverage-guided targets for cargo-fuzz
//! (nightly) live in `proto/fuzz/`.

use std::path::PathBuf;

use gitgate_proto::request::receive::{self, Head};
use gitgate_proto::request::{command_v2, upload_v0};
use gitgate_proto::response::{Expected, Framing, ObjectFormat, ResponseCheck};
use gitgate_proto::{advertise, normalize, pktline, GitProtocol, ProtocolVersion, RepoPath};

/// Every public entry point that takes untrusted bytes.
pub fn exercise(data: &[u8]) {
    let total = pktline::lines(data).take_while(Result::is_ok).count();
    assert!(total <= data.len() / 4 + 1);
    let _ = upload_v0::parse(data);
    if let Ok(req) = command_v2::parse(data) {
        let _ = req.fetch_args();
        let _ = req.ls_refs_args();
        let _ = req.object_info_args();
    }
    if let Ok(Head::Complete { consumed, .. }) = receive::parse_head(data) {
        assert!(consumed <= data.len());
    }
    for v in [ProtocolVersion::V0, ProtocolVersion::V2] {
        let _ = normalize::upload_pack(v, data);
    }
    let _ = advertise::parse_v0(data);
    let _ = advertise::parse_v2_capabilities(data);
    // The response checker takes a node's bytes: whole, and split at every 7th byte.
    for framing in [
        Framing::V0 { sideband: true },
        Framing::V0 { sideband: false },
        Framing::V2,
    ] {
        let expected = Expected {
            framing,
            format: ObjectFormat::Sha1,
        };
        let mut whole = ResponseCheck::new(expected);
        let whole = whole.feed(data).and_then(|()| whole.finish());
        let mut split = ResponseCheck::new(expected);
        let split = data
            .chunks(7)
            .try_for_each(|c| split.feed(c))
            .and_then(|()| split.finish());
        assert_eq!(whole.is_ok(), split.is_ok(), "chunking changed the verdict");
    }
    let _ = GitProtocol::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(repo) = RepoPath::parse(text) {
            assert!(repo
                .relative_dir()
                .split('/')
                .all(|seg| !seg.is_empty() && !seg.starts_with('.')));
            assert!(!repo.as_str().starts_with('/'));
        }
        let _ = gitgate_proto::smart_http::parse_path(text);
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], mut data: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(4) {
        let len = data.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                let junk: Vec<u8> = (0..rng.below(16) + 1).map(|_| rng.next() as u8).collect();
                data.splice(i..i, junk);
            }
            2 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.below(64) + 1).min(len);
                data.drain(a..b);
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.below(256) + 1).min(len);
                let copy = data[a..b].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, copy);
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            5 if len >= 4 => {
                // Rewrite a length prefix at a pkt-line-ish boundary.
                let i = rng.below(len - 3);
                let tricky = [
                    b"0000", b"0001", b"0002", b"0003", b"0004", b"ffff", b"fff0", b"000a",
                ];
                data[i..i + 4].copy_from_slice(tricky[rng.below(tricky.len())]);
            }
            6 => data.truncate(rng.below(len + 1)),
            _ => data.extend_from_slice(b"0000"),
        }
    }
    data
}

#[test]
fn parsers_survive_mutated_real_requests() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut seeds = Vec::new();
    for client in std::fs::read_dir(&dir).expect("fixtures").flatten() {
        if let Ok(files) = std::fs::read_dir(client.path()) {
            seeds.extend(files.flatten().filter_map(|f| std::fs::read(f.path()).ok()));
        }
    }
    assert!(!seeds.is_empty());
    let iterations: usize = std::env::var("GITGATE_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("GITGATE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1234_abcd);
    eprintln!("fuzzing {iterations} rounds from seed {seed}");
    let mut rng = Rng(seed | 1);
    for seed_bytes in &seeds {
        exercise(seed_bytes);
    }
    for _ in 0..iterations {
        let base = seeds[rng.below(seeds.len())].clone();
        let input = mutate(&mut rng, &seeds, base);
        exercise(&input);
    }
}
