//! A repository's ref state, read with gix: HEAD and a checksum over every ref.
//!
//! The checksum is blake3 over the sorted lines `<ref name> <target>\n` (a symbolic
//! ref's target is `ref: <name>`), so two replicas with the same refs have the same
//! checksum regardless of packing. The newest branch tip's commit time comes along, so
//! copies that disagree can be ordered. Reading happens on a blocking thread.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a node knows about one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoState {
    /// Whether the repository exists.
    pub exists: bool,
    /// What HEAD points to (a ref name), if it is symbolic.
    pub head: Option<String>,
    /// Hex blake3 over all refs; `None` when the repository does not exist.
    pub checksum: Option<String>,
    /// Number of refs (HEAD excluded).
    pub refs: usize,
    /// The newest committer time (seconds since the epoch) among the branch tips, used
    /// to tell which of two disagreeing copies is more recent.
    #[serde(default)]
    pub latest: Option<i64>,
}

impl RepoState {
    /// The state of a repository that does not exist.
    pub fn missing() -> Self {
        Self {
            exists: false,
            head: None,
            checksum: None,
            refs: 0,
            latest: None,
        }
    }
}

/// Reading refs failed.
#[derive(Debug, thiserror::Error)]
#[error("reading refs of {path}: {message}")]
pub struct RefStateError {
    /// The repository directory.
    pub path: PathBuf,
    /// What gix reported.
    pub message: String,
}

/// Read the state of the bare repository at `dir` (which must exist).
pub async fn read(dir: PathBuf) -> Result<RepoState, RefStateError> {
    let path = dir.clone();
    tokio::task::spawn_blocking(move || read_blocking(dir))
        .await
        .map_err(|join| RefStateError {
            path,
            message: join.to_string(),
        })?
}

fn read_blocking(dir: PathBuf) -> Result<RepoState, RefStateError> {
    let fail = |message: String| RefStateError {
        path: dir.clone(),
        message,
    };
    let repo =
        gix::open_opts(&dir, gix::open::Options::isolated()).map_err(|e| fail(e.to_string()))?;
    let head = repo
        .head_name()
        .map_err(|e| fail(e.to_string()))?
        .map(|name| name.as_bstr().to_string());
    let platform = repo.references().map_err(|e| fail(e.to_string()))?;
    let mut lines = Vec::new();
    let mut latest: Option<i64> = None;
    for reference in platform.all().map_err(|e| fail(e.to_string()))? {
        let mut reference = reference.map_err(|e| fail(e.to_string()))?;
        if reference.name().as_bstr().starts_with(b"refs/heads/") {
            // Best effort: a branch pointing at something odd just has no time.
            let time = reference
                .peel_to_commit()
                .ok()
                .and_then(|commit| commit.time().ok())
                .map(|time| time.seconds);
            latest = latest.max(time);
        }
        let target = match reference.target() {
            gix::refs::TargetRef::Object(oid) => oid.to_string(),
            gix::refs::TargetRef::Symbolic(name) => format!("ref: {}", name.as_bstr()),
        };
        lines.push(format!("{} {}\n", reference.name().as_bstr(), target));
    }
    lines.sort();
    let mut hasher = blake3::Hasher::new();
    for line in &lines {
        hasher.update(line.as_bytes());
    }
    Ok(RepoState {
        exists: true,
        head,
        checksum: Some(hasher.finalize().to_hex().to_string()),
        refs: lines.len(),
        latest,
    })
}
