//! Where repositories live on a node, and their creation, deletion and discovery.
//!
//! Repository `group/name` is the bare repository `<root>/group/name.git`. Because a
//! [`RepoPath`] cannot contain `..`, absolute parts or odd bytes, joining it to the root
//! never leaves the root. Creation and deletion are atomic as seen by readers: a new
//! repository is initialised in a hidden temporary directory and renamed into place; a
//! deleted one is renamed away before it is removed. Hidden directories (leading `.`)
//! can never be repository names, so they never collide with one.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use gitgate_proto::RepoPath;

use crate::git::GitBinary;
use crate::process::{run_to_end, GitStreamError};

/// Prefix of in-progress creations under the root.
const TMP_PREFIX: &str = ".gitgate-tmp-";
/// Prefix of in-progress deletions under the root.
const TRASH_PREFIX: &str = ".gitgate-trash-";

/// Errors managing repositories on disk.
#[derive(Debug, thiserror::Error)]
pub enum RepoStoreError {
    /// The repository already exists.
    #[error("repository {0} already exists")]
    AlreadyExists(RepoPath),
    /// The repository does not exist.
    #[error("repository {0} not found")]
    NotFound(RepoPath),
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `git init` failed.
    #[error("initialising repository: {0}")]
    Init(#[source] GitStreamError),
}

/// The repositories under one root directory.
#[derive(Debug)]
pub struct RepoStore {
    root: PathBuf,
    /// Makes temporary names unique within this process.
    counter: AtomicU64,
}

impl RepoStore {
    /// Use `root`, creating it if needed and removing leftovers of interrupted
    /// creations and deletions.
    pub async fn open(root: PathBuf) -> Result<Self, RepoStoreError> {
        tokio::fs::create_dir_all(&root)
            .await
            .map_err(|source| RepoStoreError::Io {
                op: "creating root",
                path: root.clone(),
                source,
            })?;
        let mut entries =
            tokio::fs::read_dir(&root)
                .await
                .map_err(|source| RepoStoreError::Io {
                    op: "reading root",
                    path: root.clone(),
                    source,
                })?;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TMP_PREFIX) || name.starts_with(TRASH_PREFIX) {
                let path = entry.path();
                tracing::info!(path = %path.display(), "removing leftover from an interrupted operation");
                if let Err(err) = tokio::fs::remove_dir_all(&path).await {
                    tracing::warn!(path = %path.display(), error = %err, "could not remove leftover");
                }
            }
        }
        Ok(Self {
            root,
            counter: AtomicU64::new(0),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of `repo` (which may not exist).
    pub fn dir(&self, repo: &RepoPath) -> PathBuf {
        self.root.join(repo.relative_dir())
    }

    /// Whether `repo` exists as a bare repository.
    pub async fn exists(&self, repo: &RepoPath) -> bool {
        let dir = self.dir(repo);
        let objects = tokio::fs::metadata(dir.join("objects")).await;
        let head = tokio::fs::metadata(dir.join("HEAD")).await;
        matches!((objects, head), (Ok(o), Ok(h)) if o.is_dir() && h.is_file())
    }

    fn unique(&self, prefix: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(format!("{prefix}{}-{n}", std::process::id()))
    }

    /// Create `repo` as an empty bare repository.
    pub async fn create(&self, git: &GitBinary, repo: &RepoPath) -> Result<(), RepoStoreError> {
        let target = self.dir(repo);
        if self.exists(repo).await {
            return Err(RepoStoreError::AlreadyExists(repo.clone()));
        }
        let tmp = self.unique(TMP_PREFIX);
        let result = async {
            run_to_end("init", git.init_bare(&tmp))
                .await
                .map_err(RepoStoreError::Init)?;
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|source| RepoStoreError::Io {
                        op: "creating parent of",
                        path: target.clone(),
                        source,
                    })?;
            }
            // rename(2) onto an existing non-empty directory fails, so a concurrent
            // creation of the same repository cannot be overwritten.
            tokio::fs::rename(&tmp, &target)
                .await
                .map_err(|source| match source.kind() {
                    io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty => {
                        RepoStoreError::AlreadyExists(repo.clone())
                    }
                    _ => RepoStoreError::Io {
                        op: "moving new repository into",
                        path: target.clone(),
                        source,
                    },
                })
        }
        .await;
        if result.is_err() && tokio::fs::metadata(&tmp).await.is_ok() {
            if let Err(err) = tokio::fs::remove_dir_all(&tmp).await {
                tracing::warn!(path = %tmp.display(), error = %err, "could not clean up failed creation");
            }
        }
        result
    }

    /// Delete `repo`: it disappears at once, its files are removed after.
    pub async fn delete(&self, repo: &RepoPath) -> Result<(), RepoStoreError> {
        if !self.exists(repo).await {
            return Err(RepoStoreError::NotFound(repo.clone()));
        }
        let dir = self.dir(repo);
        let trash = self.unique(TRASH_PREFIX);
        tokio::fs::rename(&dir, &trash)
            .await
            .map_err(|source| RepoStoreError::Io {
                op: "moving away",
                path: dir.clone(),
                source,
            })?;
        tokio::fs::remove_dir_all(&trash)
            .await
            .map_err(|source| RepoStoreError::Io {
                op: "removing",
                path: trash,
                source,
            })
    }

    /// All repositories under the root, found by walking it (on a blocking thread).
    pub async fn discover(&self) -> Result<Vec<RepoPath>, RepoStoreError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || walk(&root))
            .await
            .map_err(|join| RepoStoreError::Io {
                op: "walking",
                path: PathBuf::new(),
                source: io::Error::other(join),
            })?
    }
}

fn walk(root: &Path) -> Result<Vec<RepoPath>, RepoStoreError> {
    let mut found = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| RepoStoreError::Io {
            op: "reading",
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !kind.is_dir() || name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            if name.ends_with(".git") {
                let rel = path.strip_prefix(root).ok().and_then(|p| p.to_str());
                match rel.map(RepoPath::parse) {
                    Some(Ok(repo)) if path.join("objects").is_dir() => found.push(repo),
                    _ => {
                        tracing::warn!(path = %path.display(), "ignoring directory that is not a servable repository")
                    }
                }
            } else if depth + 1 < gitgate_proto::limits::MAX_REPO_PATH_DEPTH {
                stack.push((path, depth + 1));
            }
        }
    }
    found.sort();
    Ok(found)
}
