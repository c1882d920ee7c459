//! A deterministic synthetic repository with a realistic shape: a few thousand commits
//! over a few thousand text files (so the pack has long delta chains), some binary
//! assets (incompressible), tags, and a bitmap index as a served repository would have.
//!
//! Built with `git fast-import` from a seeded generator, so the same seed gives the same
//! history (and the same object ids) every time.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context};

/// Shape of a corpus.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Commits on main.
    pub commits: usize,
    /// Text files.
    pub files: usize,
    /// Files changed per commit.
    pub changes_per_commit: usize,
    /// Binary assets added over the history.
    pub assets: usize,
    /// Size of each asset.
    pub asset_bytes: usize,
}

impl Shape {
    /// About 52 MB (49 MiB) of pack: 3000 commits, 2000 files, 12 × 4 MiB assets.
    pub const FULL: Shape = Shape {
        commits: 3000,
        files: 2000,
        changes_per_commit: 6,
        assets: 12,
        asset_bytes: 4 << 20,
    };
    /// A small corpus for smoke runs.
    pub const TINY: Shape = Shape {
        commits: 120,
        files: 80,
        changes_per_commit: 4,
        assets: 1,
        asset_bytes: 256 << 10,
    };
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
        (self.next() % n.max(1) as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "fn",
    "let",
    "match",
    "impl",
    "struct",
    "return",
    "self",
    "async",
    "await",
    "pack",
    "object",
    "tree",
    "commit",
    "delta",
    "index",
    "cache",
    "stream",
    "reader",
    "writer",
    "error",
    "result",
    "config",
    "node",
    "replica",
    "generation",
    "want",
    "have",
    "done",
    "flush",
    "buffer",
    "offset",
    "length",
    "header",
];

fn line(rng: &mut Rng) -> String {
    let n = 4 + rng.below(8);
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len())]);
    }
    s.push('\n');
    s
}

/// Build a bare repository at `dest` with `shape`, from `seed`.
pub fn generate(git: &str, dest: &Path, shape: Shape, seed: u64) -> anyhow::Result<()> {
    ensure!(!dest.exists(), "{} already exists", dest.display());
    let status = Command::new(git)
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(dest)
        .status()?;
    ensure!(status.success(), "git init failed");
    let mut child = Command::new(git)
        .args(["fast-import", "--quiet", "--done"])
        .current_dir(dest)
        .stdin(Stdio::piped())
        .spawn()
        .context("starting git fast-import")?;
    let mut stdin = std::io::BufWriter::new(child.stdin.take().context("fast-import stdin")?);
    let mut rng = Rng(seed | 1);
    let mut contents: Vec<Vec<String>> = (0..shape.files)
        .map(|_| (0..10).map(|_| line(&mut rng)).collect())
        .collect();
    let asset_every = shape.commits / shape.assets.max(1) + 1;
    let base_time = 1_600_000_000u64;
    for c in 0..shape.commits {
        let mut ops = String::new();
        let touched = if c == 0 {
            shape.files
        } else {
            shape.changes_per_commit
        };
        for t in 0..touched {
            let f = if c == 0 { t } else { rng.below(shape.files) };
            let file = &mut contents[f];
            // Edit in place, append, or delete a line: small changes, good deltas.
            match rng.below(3) {
                0 if !file.is_empty() => {
                    let i = rng.below(file.len());
                    file[i] = line(&mut rng);
                }
                1 if file.len() > 3 => {
                    let i = rng.below(file.len());
                    file.remove(i);
                }
                _ => file.push(line(&mut rng)),
            }
            let data: String = file.concat();
            ops.push_str(&format!(
                "M 100644 inline src/mod{:02}/file{f:05}.rs\ndata {}\n{data}\n",
                f % 40,
                data.len()
            ));
        }
        let asset: Option<Vec<u8>> = (c % asset_every == asset_every - 1).then(|| {
            let mut bytes = Vec::with_capacity(shape.asset_bytes + 8);
            while bytes.len() < shape.asset_bytes {
                bytes.extend_from_slice(&rng.next().to_le_bytes());
            }
            bytes.truncate(shape.asset_bytes);
            bytes
        });
        let time = base_time + c as u64 * 3600;
        let message = format!("change {c}: {}", line(&mut rng).trim());
        write!(
            stdin,
            "commit refs/heads/main\nmark :{}\ncommitter Load Test <load@example.com> {time} +0000\ndata {}\n{message}\n",
            c + 1,
            message.len()
        )?;
        if c > 0 {
            writeln!(stdin, "from :{c}")?;
        }
        stdin.write_all(ops.as_bytes())?;
        if let Some(bytes) = asset {
            writeln!(
                stdin,
                "M 100644 inline assets/blob{c:05}.bin\ndata {}",
                bytes.len()
            )?;
            stdin.write_all(&bytes)?;
            stdin.write_all(b"\n")?;
        }
        stdin.write_all(b"\n")?;
        if c > 0 && c % (shape.commits / 10).max(1) == 0 {
            writeln!(
                stdin,
                "reset refs/tags/v{}\nfrom :{}\n",
                c / (shape.commits / 10).max(1),
                c + 1
            )?;
        }
    }
    writeln!(
        stdin,
        "reset refs/heads/release\nfrom :{}\n",
        shape.commits * 9 / 10
    )?;
    stdin.write_all(b"done\n")?;
    drop(stdin);
    ensure!(child.wait()?.success(), "git fast-import failed");
    // Repack like a served repository: one pack, deltas, a bitmap index.
    let status = Command::new(git)
        .args(["repack", "-a", "-d", "-f", "-q", "--write-bitmap-index"])
        .current_dir(dest)
        .status()?;
    ensure!(status.success(), "git repack failed");
    Ok(())
}
