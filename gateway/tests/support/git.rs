//! Real git clients with an isolated environment.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

/// A git binary and a private HOME and config for it.
pub struct Git {
    pub program: PathBuf,
    pub version: String,
    home: TempDir,
}

/// Every distinct git client on this machine: git 2.47 at /usr/local/bin and Debian's.
pub fn clients() -> Vec<Git> {
    let mut found: Vec<Git> = Vec::new();
    for program in ["/usr/local/bin/git", "/usr/bin/git"] {
        if !Path::new(program).exists() {
            continue;
        }
        let git = Git::new(program);
        if !found.iter().any(|g| g.version == git.version) {
            found.push(git);
        }
    }
    assert!(!found.is_empty(), "no git client found");
    found
}

/// The newest client.
pub fn default_client() -> Git {
    clients().remove(0)
}

impl Git {
    pub fn new(program: &str) -> Self {
        let home = TempDir::new().expect("tempdir");
        std::fs::write(home.path().join("gitconfig"), "").expect("empty config");
        let mut git = Self {
            program: program.into(),
            version: String::new(),
            home,
        };
        let out = git
            .cmd(None)
            .arg("--version")
            .output()
            .expect("git --version");
        git.version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        git
    }

    /// A command with the isolated environment.
    pub fn cmd(&self, cwd: Option<&Path>) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", self.home.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", self.home.path().join("gitconfig"))
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "Test Author")
            .env("GIT_AUTHOR_EMAIL", "author@example.com")
            .env("GIT_COMMITTER_NAME", "Test Committer")
            .env("GIT_COMMITTER_EMAIL", "committer@example.com")
            .env("LANG", "C")
            .stdin(Stdio::null());
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        cmd
    }

    /// Run and return the output, whatever the exit status.
    pub fn output(&self, cwd: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.cmd(cwd);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run git")
    }

    /// Run, assert success, return stdout.
    pub fn ok(&self, cwd: Option<&Path>, args: &[&str]) -> String {
        self.ok_env(cwd, args, &[])
    }

    /// Run with extra environment, assert success, return stdout.
    pub fn ok_env(&self, cwd: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.output(cwd, args, env);
        assert!(
            out.status.success(),
            "{} {:?} failed ({}):\nstdout: {}\nstderr: {}",
            self.version,
            args,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run, assert failure, return stderr.
    pub fn fails(&self, cwd: Option<&Path>, args: &[&str]) -> String {
        let out = self.output(cwd, args, &[]);
        assert!(
            !out.status.success(),
            "{} {:?} unexpectedly succeeded",
            self.version,
            args
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A clone of `url` in protocol `version` that git's upload-pack refuses (its
    /// `--shallow-exclude` names no ref): assert it fails with git's own message, as
    /// the client shows a remote `ERR`.
    pub fn assert_refused_clone(&self, url: &str, version: &str, into: &Path) {
        let stderr = self.fails(
            None,
            &[
                "-c",
                &format!("protocol.version={version}"),
                "clone",
                "-q",
                "--shallow-exclude=no-such-ref",
                url,
                into.to_str().expect("utf-8"),
            ],
        );
        assert!(
            stderr.contains("remote error: git upload-pack: ambiguous deepen-not"),
            "v{version} {url}: git's message reaches the client: {stderr}"
        );
    }

    /// Commit a file with `content` in the work tree `dir`; returns the commit id.
    pub fn commit_file(&self, dir: &Path, file: &str, content: &str, message: &str) -> String {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, content).expect("write file");
        self.ok(Some(dir), &["add", file]);
        self.ok(Some(dir), &["commit", "-q", "-m", message]);
        self.ok(Some(dir), &["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// All refs of a repository as `<oid> <name>` lines, sorted.
    pub fn refs(&self, git_dir: &Path) -> String {
        self.ok(
            None,
            &[
                "--git-dir",
                git_dir.to_str().expect("utf-8 path"),
                "for-each-ref",
                "--format=%(objectname) %(refname)",
            ],
        )
    }

    /// `git fsck --full --strict` must pass.
    pub fn fsck(&self, git_dir: &Path) {
        self.ok(
            None,
            &[
                "--git-dir",
                git_dir.to_str().expect("utf-8 path"),
                "fsck",
                "--full",
                "--strict",
                "--no-progress",
            ],
        );
    }
}

/// A source work tree with history: `commits` commits on main (spread over a few
/// directories), a feature branch, and a lightweight and an annotated tag. Timestamps
/// are fixed, one day apart, starting 2020-01-01.
pub fn make_source(git: &Git, dir: &Path, commits: usize) -> PathBuf {
    let work = dir.join("src");
    git.ok(
        None,
        &["init", "-q", "-b", "main", work.to_str().expect("utf-8")],
    );
    let base = 1_577_836_800i64; // 2020-01-01
    for i in 0..commits {
        let date = format!("@{} +0000", base + i as i64 * 86_400);
        let file = format!("dir{}/file{}.txt", i % 4, i % 7);
        std::fs::create_dir_all(work.join(format!("dir{}", i % 4))).expect("mkdir");
        std::fs::write(work.join(&file), format!("line {i}\n").repeat(i + 1)).expect("write");
        git.ok(Some(&work), &["add", "-A"]);
        git.ok_env(
            Some(&work),
            &["commit", "-q", "-m", &format!("commit {i}")],
            &[("GIT_AUTHOR_DATE", &date), ("GIT_COMMITTER_DATE", &date)],
        );
    }
    git.ok(Some(&work), &["branch", "feature", "HEAD~1"]);
    git.ok(Some(&work), &["tag", "light", "HEAD~2"]);
    git.ok(
        Some(&work),
        &["tag", "-a", "-m", "annotated", "v1.0", "HEAD"],
    );
    work
}

/// Put a bare copy of `work` on a node as repository `name`.
pub fn seed_bare(git: &Git, work: &Path, bare: &Path) {
    git.ok(
        None,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().expect("utf-8"),
            bare.to_str().expect("utf-8"),
        ],
    );
}
