//! A running git child seen as a stream of response bytes.
//!
//! ```text
//!   request body ──stdin task──▶ git ──stdout──▶ GitStream (the response)
//!                                  └──stderr──▶ drain task (bounded, logged at exit)
//! ```
//!
//! Invariants:
//! - stdout, stdin and stderr are serviced at the same time, so a full pipe never
//!   deadlocks git;
//! - the stream ends cleanly only after git exited 0; any other exit, a failed read, or
//!   a request body that broke off yields an error item, so callers abort the response
//!   instead of finishing a truncated one;
//! - dropping the stream before it ended kills git's whole process group (upload-pack
//!   and the pack-objects it started) and tokio reaps the child.

use std::io;
use std::pin::Pin;
use std::process::ExitStatus;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;
use tokio_util::io::ReaderStream;

/// A request body on its way into git.
pub type RequestBody = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A response body coming out of git (or out of a remote node).
pub type GitStream = Pin<Box<dyn Stream<Item = Result<Bytes, GitStreamError>> + Send>>;

/// How much of git's stderr is kept for the log.
const STDERR_KEEP: usize = 16 * 1024;

/// Why a git response stream did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum GitStreamError {
    /// git could not be started.
    #[error("could not start git: {0}")]
    Spawn(#[source] io::Error),
    /// git exited unsuccessfully.
    #[error("git {what} exited with {status}: {stderr}")]
    Exit {
        /// Which git command.
        what: &'static str,
        /// The exit status.
        status: ExitStatus,
        /// The start of what git wrote to stderr.
        stderr: String,
    },
    /// Reading git's output failed.
    #[error("reading git output: {0}")]
    Read(#[source] io::Error),
    /// The request body broke off before its end; git was killed.
    #[error("request body failed: {0}")]
    RequestBody(#[source] io::Error),
    /// The remote node's response broke off or could not be read.
    #[error("node response failed: {0}")]
    Remote(String),
    /// The output sent nothing for this long and was cut off.
    #[error("{node} sent nothing for {idle:?}; cut off as stalled")]
    Stalled {
        /// The node's name.
        node: String,
        /// How long it was silent.
        idle: std::time::Duration,
    },
}

/// Start `cmd` and stream its stdout. `body`, if any, is copied to its stdin. `guard`
/// is kept until git has been waited for or killed (the node counts running processes
/// with it).
pub fn run(
    what: &'static str,
    mut cmd: Command,
    body: Option<RequestBody>,
    guard: Option<Box<dyn Send + Sync>>,
) -> Result<GitStream, GitStreamError> {
    let mut child = cmd.spawn().map_err(GitStreamError::Spawn)?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let stdout = child.stdout.take().ok_or_else(|| missing_pipe("stdout"))?;
    let stderr = child.stderr.take().ok_or_else(|| missing_pipe("stderr"))?;
    let stdin_task = match (body, child.stdin.take()) {
        (Some(body), Some(stdin)) => Some(tokio::spawn(feed_stdin(body, stdin))),
        _ => None,
    };
    let run = GitRun {
        what,
        child,
        pgid,
        stdout: ReaderStream::with_capacity(stdout, 64 * 1024),
        stdin_task,
        stderr_task: Some(tokio::spawn(drain(stderr))),
        finished: false,
        answered: false,
        guard,
    };
    Ok(Box::pin(futures_util::stream::unfold(
        run,
        |mut run| async move { run.next_chunk().await.map(|item| (item, run)) },
    )))
}

fn missing_pipe(name: &str) -> GitStreamError {
    GitStreamError::Spawn(io::Error::other(format!("git {name} was not piped")))
}

/// Why feeding stdin stopped early.
enum FeedError {
    /// The request body failed: the client went away or sent garbage.
    Body(io::Error),
    /// git stopped reading; its exit status will tell why.
    Write,
}

async fn feed_stdin(mut body: RequestBody, mut stdin: ChildStdin) -> Result<(), FeedError> {
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(FeedError::Body)?;
        stdin
            .write_all(&chunk)
            .await
            .map_err(|_| FeedError::Write)?;
    }
    stdin.shutdown().await.map_err(|_| FeedError::Write)?;
    Ok(())
}

async fn drain(mut stderr: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = STDERR_KEEP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// State of one git child; see the module docs for its invariants.
struct GitRun {
    what: &'static str,
    child: Child,
    /// The child's process group (it is the group leader), killed on early drop.
    pgid: Option<Pid>,
    stdout: ReaderStream<ChildStdout>,
    stdin_task: Option<JoinHandle<Result<(), FeedError>>>,
    stderr_task: Option<JoinHandle<Vec<u8>>>,
    /// Set once git has been waited for; after that nothing is killed on drop.
    finished: bool,
    /// git wrote something to stdout.
    answered: bool,
    /// Released when git is done (waited for, or killed on drop).
    guard: Option<Box<dyn Send + Sync>>,
}

impl GitRun {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, GitStreamError>> {
        if self.finished {
            return None;
        }
        loop {
            let stdin_task = &mut self.stdin_task;
            tokio::select! {
                biased;
                fed = async { stdin_task.as_mut().expect("guarded by the branch condition").await }, if stdin_task.is_some() => {
                    *stdin_task = None;
                    match fed {
                        Ok(Ok(())) | Ok(Err(FeedError::Write)) => continue,
                        Ok(Err(FeedError::Body(err))) => return Some(Err(self.abort(GitStreamError::RequestBody(err)))),
                        Err(join) => return Some(Err(self.abort(GitStreamError::RequestBody(io::Error::other(join))))),
                    }
                }
                chunk = self.stdout.next() => {
                    return match chunk {
                        Some(Ok(bytes)) => {
                            self.answered = true;
                            Some(Ok(bytes))
                        }
                        Some(Err(err)) => Some(Err(self.abort(GitStreamError::Read(err)))),
                        None => self.finish().await,
                    };
                }
            }
        }
    }

    /// stdout reached EOF: wait for git and turn its exit status into the stream's end.
    async fn finish(&mut self) -> Option<Result<Bytes, GitStreamError>> {
        let status = self.child.wait().await;
        self.finished = true;
        self.guard = None;
        let stderr = match self.stderr_task.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => Vec::new(),
        };
        let stderr = String::from_utf8_lossy(&stderr).trim().to_owned();
        match status {
            Ok(status) if status.success() => {
                if !stderr.is_empty() {
                    tracing::debug!(git = self.what, %stderr, "git stderr");
                }
                None
            }
            Ok(status) => {
                if !self.answered && status.code() == Some(128) {
                    // git died before answering: most often on the request itself
                    // (callers tell, see `GitStreamError::refusal`, and log it).
                    tracing::debug!(git = self.what, %status, %stderr, "git failed before answering");
                } else {
                    tracing::warn!(git = self.what, %status, %stderr, "git failed");
                }
                Some(Err(GitStreamError::Exit {
                    what: self.what,
                    status,
                    stderr,
                }))
            }
            Err(err) => Some(Err(GitStreamError::Read(err))),
        }
    }

    fn abort(&mut self, err: GitStreamError) -> GitStreamError {
        self.kill_group();
        self.finished = true;
        tracing::debug!(git = self.what, error = %err, "git stream aborted");
        err
    }

    fn kill_group(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // ESRCH (already gone) is the only expected failure and needs nothing.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        // Also kill and reap the leader itself through tokio.
        let _ = self.child.start_kill();
    }
}

impl Drop for GitRun {
    fn drop(&mut self) {
        if !self.finished {
            tracing::debug!(
                git = self.what,
                "response dropped before git finished; killing it"
            );
            self.kill_group();
        }
        if let Some(task) = self.stdin_task.take() {
            task.abort();
        }
    }
}

/// How the messages start that upload-pack dies with when the request is at fault
/// (its request parsing and checks in git's `upload-pack.c`, `serve.c` and the filter
/// parser); node-side failures (`not a git repository`, `bad object`, `unable to`, out
/// of memory) start otherwise.
pub const REQUEST_REFUSALS: &[&str] = &[
    "git upload-pack: ",
    "upload-pack: ",
    "invalid filter-spec",
    "invalid command",
    "unknown capability",
    "unexpected line",
    "expected flush",
    "expected shallow",
    "expected packfile",
    "protocol error",
    "filtering not recognized",
];

impl GitStreamError {
    /// When git ran and died (exit 128, git's `die()`) before writing anything, with a
    /// message of [`REQUEST_REFUSALS`]: that message, for the client (`fatal: `
    /// dropped, one line, at most 512 bytes, no control characters). For upload-pack
    /// this is git refusing the request (a `deepen-not` naming no ref, a filter or
    /// command it does not take), not the node failing. Any other death (a damaged
    /// repository, a bad config, memory) is not a refusal: its text stays in the node's
    /// logs.
    pub fn refusal(&self) -> Option<String> {
        let Self::Exit { status, stderr, .. } = self else {
            return None;
        };
        if status.code() != Some(128) {
            return None;
        }
        let line = stderr
            .lines()
            .find_map(|l| l.strip_prefix("fatal: "))
            .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))?;
        let mut message: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if message.len() > 512 {
            let mut end = 512;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let message = message.trim();
        REQUEST_REFUSALS
            .iter()
            .any(|prefix| message.starts_with(prefix))
            .then(|| message.to_owned())
    }
}

/// Run a short git command to completion, returning its stderr on failure.
pub async fn run_to_end(what: &'static str, mut cmd: Command) -> Result<(), GitStreamError> {
    let out = cmd.output().await.map_err(GitStreamError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(GitStreamError::Exit {
            what,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Wait for the first item of `stream`, so that a failure before any output can still be
/// answered with a proper status. Returns the stream with that item put back.
pub async fn peek(mut stream: GitStream) -> Result<GitStream, GitStreamError> {
    match stream.next().await {
        None => Ok(Box::pin(futures_util::stream::empty())),
        Some(Err(err)) => Err(err),
        Some(Ok(first)) => {
            let head = futures_util::stream::once(async move { Ok(first) });
            Ok(Box::pin(head.chain(stream)))
        }
    }
}
