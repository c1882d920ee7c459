//! The only place where a `git` command is built.
//!
//! Every invocation uses the program path fixed at start, arguments as separate values
//! (never a shell), a cleared environment with a short allowlist, settings as explicit
//! `-c` options, its own process group (so the whole tree can be killed) and
//! `kill_on_drop`. Its inputs are a repository directory that came from a validated
//! `RepoPath` and, optionally, a sanitized `Git-Protocol` value.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use gitgate_proto::{GitProtocol, Service};
use tokio::process::Command;

/// The PATH git children see: git finds its helpers through its exec path, and hooks
/// get a conventional search path.
const CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How to run git on this node.
#[derive(Debug, Clone)]
pub struct GitBinary {
    program: PathBuf,
}

impl GitBinary {
    /// Use `program` (an absolute path, or a name looked up in `PATH` now, once).
    pub fn locate(program: &Path) -> Result<Self, std::io::Error> {
        if program.is_absolute() {
            return Ok(Self {
                program: program.to_owned(),
            });
        }
        let search = std::env::var_os("PATH").unwrap_or_else(|| CHILD_PATH.into());
        std::env::split_paths(&search)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
            .map(|program| Self { program })
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} not found in PATH", program.display()),
                )
            })
    }

    /// The program path in use.
    pub fn program(&self) -> &Path {
        &self.program
    }

    fn base(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.env_clear()
            .env("PATH", CHILD_PATH)
            .env("LANG", "C")
            .env("GIT_TERMINAL_PROMPT", "0")
            // No user-level configuration: only the system's and the repository's.
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .kill_on_drop(true)
            .process_group(0);
        cmd
    }

    /// `git upload-pack|receive-pack --stateless-rpc [--advertise-refs] <dir>`, with
    /// stdin, stdout and stderr piped (stdin null when advertising).
    pub fn service(
        &self,
        service: Service,
        repo_dir: &Path,
        protocol: Option<&GitProtocol>,
        advertise: bool,
    ) -> Command {
        let mut cmd = self.base();
        match service {
            Service::UploadPack => {
                // Partial clone (`--filter`) and the lazy fetches it makes later.
                cmd.args(["-c", "uploadpack.allowFilter=true"]);
                cmd.args(["-c", "uploadpack.allowAnySHA1InWant=true"]);
                // Filters that cost the node more than the clone they save: a sparse
                // checkout computed from a blob (`sparse:oid`) is refused, and `tree:`
                // depth is bounded (the gateway bounds `combine:` too).
                cmd.args(["-c", "uploadpackfilter.sparse:oid.allow=false"]);
                cmd.args(["-c", "uploadpackfilter.tree.maxDepth=4"]);
            }
            Service::ReceivePack => {
                cmd.args(["-c", "receive.advertisePushOptions=true"]);
            }
        }
        cmd.arg(service.subcommand()).arg("--stateless-rpc");
        if advertise {
            cmd.arg("--advertise-refs");
        }
        cmd.arg(repo_dir);
        if let Some(protocol) = protocol {
            cmd.env("GIT_PROTOCOL", protocol.as_str());
        }
        cmd.stdin(if advertise {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        cmd
    }

    /// `git fetch --prune <source> +refs/*:refs/*` into the bare repository at
    /// `repo_dir`: afterwards its refs are exactly the source's. `auth_header`, when
    /// given, is sent with every HTTP request; it travels in the environment so it never
    /// shows in a process listing.
    pub fn mirror_fetch(
        &self,
        repo_dir: &Path,
        source: &str,
        auth_header: Option<&str>,
    ) -> Command {
        let mut cmd = self.base();
        cmd.args([
            "-c",
            "protocol.version=2",
            "-c",
            "http.followRedirects=false",
        ])
        .arg("-C")
        .arg(repo_dir)
        .args([
            "fetch",
            "--quiet",
            "--prune",
            "--no-write-fetch-head",
            "--no-auto-gc",
            "--update-head-ok",
            "--",
        ])
        .arg(source)
        .arg("+refs/*:refs/*");
        if let Some(header) = auth_header {
            cmd.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env("GIT_CONFIG_VALUE_0", header);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// `git symbolic-ref HEAD <target>` in the bare repository at `repo_dir`.
    pub fn set_head(&self, repo_dir: &Path, target: &str) -> Command {
        let mut cmd = self.base();
        cmd.arg("-C")
            .arg(repo_dir)
            .args(["symbolic-ref", "HEAD", target])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// `git init --bare --quiet <dir>`.
    pub fn init_bare(&self, repo_dir: &Path) -> Command {
        let mut cmd = self.base();
        cmd.args(["-c", "init.defaultBranch=main", "init", "--bare", "--quiet"])
            .arg(repo_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }
}
