//! [`Node`]: everything a storage node does, as async methods.
//!
//! The HTTP API in [`crate::http`] and the gateway's in-process nodes both call these,
//! so a local node and a remote one behave the same.

use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use bytes::Bytes;
use gitgate_proto::{advertise, GitProtocol, ProtocolVersion, RepoPath, Service};

use crate::git::GitBinary;
use crate::metrics::NodeMetrics;
use crate::process::{self, GitStream, GitStreamError, RequestBody};
use crate::refstate::{self, RefStateError, RepoState};
use crate::repos::{RepoStore, RepoStoreError};

/// What a node needs to run.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Directory holding the bare repositories.
    pub root: PathBuf,
    /// The git program (absolute, or looked up in `PATH` once at start).
    pub git: PathBuf,
    /// Where to count git processes.
    pub metrics: NodeMetrics,
}

/// Errors from node operations.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The repository does not exist on this node.
    #[error("repository {0} not found")]
    NotFound(RepoPath),
    /// Managing the repository on disk failed (or it already exists).
    #[error(transparent)]
    Store(#[from] RepoStoreError),
    /// A replication request was malformed.
    #[error(transparent)]
    BadReplication(#[from] BadReplication),
    /// git failed to start or failed before answering.
    #[error(transparent)]
    Git(#[from] GitStreamError),
    /// Reading refs failed.
    #[error(transparent)]
    RefState(#[from] RefStateError),
    /// The git program could not be found.
    #[error("git program: {0}")]
    GitMissing(#[source] std::io::Error),
    /// Another copy into this repository is running; two never run at once.
    #[error("a replication into {0} is already running")]
    ReplicationRunning(RepoPath),
}

impl NodeError {
    /// Whether the error means "no such repository".
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::NotFound(_) | Self::Store(RepoStoreError::NotFound(_))
        )
    }

    /// Whether the error means "it already exists".
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Self::Store(RepoStoreError::AlreadyExists(_)))
    }
}

/// Where a replica's refs and objects are copied from.
#[derive(Debug, Clone)]
pub enum ReplicaSource {
    /// The repository's directory on another node in this process.
    Path(PathBuf),
    /// The repository's smart-HTTP URL on a remote node (`http://` or `https://`), and
    /// the `Authorization` header value that node accepts.
    Http {
        /// The URL.
        url: String,
        /// The header value, e.g. `Bearer v1....`.
        authorization: String,
    },
}

/// A replication request that cannot be carried out as asked.
#[derive(Debug, thiserror::Error)]
pub enum BadReplication {
    /// Only http(s) sources are fetched from over the network.
    #[error("replication source must be an http:// or https:// URL")]
    Scheme,
    /// HEAD must name a ref under `refs/`.
    #[error("invalid HEAD target {0:?}")]
    Head(String),
    /// The source is not a repository on one of the nodes the gateway named.
    #[error("replication source {0:?} is not on one of the gateway's nodes")]
    Source(String),
    /// The request body does not match the digest its token covers.
    #[error("request body does not match the digest in its query")]
    Digest,
    /// The request body is not a replication request.
    #[error("malformed replication request: {0}")]
    Body(String),
}

/// A storage node over one root directory.
#[derive(Debug)]
pub struct Node {
    store: RepoStore,
    git: GitBinary,
    metrics: NodeMetrics,
    /// Running git processes per kind: advertise-refs, upload-pack, receive-pack, fetch.
    running: [Arc<AtomicI64>; 4],
    /// Repositories a replication is copying into right now: a second one is refused
    /// (and counted), never run on top of the first.
    replicating: std::sync::Mutex<std::collections::HashSet<RepoPath>>,
    /// An empty bare repository under the root (hidden from discovery by its leading
    /// dot), whose receive-pack advertisement answers for a repository a push will
    /// create: asking to push creates nothing.
    empty: PathBuf,
}

/// The empty template's directory name under the root.
const EMPTY_TEMPLATE: &str = ".gitgate-empty.git";

/// Holds a repository in [`Node::replicating`] until dropped.
struct Replicating<'a> {
    node: &'a Node,
    repo: RepoPath,
}

impl Drop for Replicating<'_> {
    fn drop(&mut self) {
        self.node
            .replicating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.repo);
    }
}

impl Node {
    /// Open the node: locate git, create the root if needed, clean leftovers.
    pub async fn open(settings: NodeSettings) -> Result<Self, NodeError> {
        let git = GitBinary::locate(&settings.git).map_err(NodeError::GitMissing)?;
        let store = RepoStore::open(settings.root).await?;
        let empty = store.root().join(EMPTY_TEMPLATE);
        if tokio::fs::metadata(empty.join("HEAD")).await.is_err() {
            process::run_to_end("init", git.init_bare(&empty)).await?;
        }
        Ok(Self {
            store,
            git,
            metrics: settings.metrics,
            running: Default::default(),
            replicating: Default::default(),
            empty,
        })
    }

    fn guard(&self, service: &'static str) -> Box<dyn Send + Sync> {
        let slot = match service {
            "advertise-refs" => 0,
            "upload-pack" => 1,
            "fetch" => 3,
            _ => 2,
        };
        Box::new(self.metrics.running(service, self.running[slot].clone()))
    }

    /// Its load now: git processes running and cores.
    pub fn load(&self) -> crate::api::NodeLoad {
        let running: i64 = self
            .running
            .iter()
            .map(|r| r.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        crate::api::NodeLoad {
            git_processes: u64::try_from(running).unwrap_or(0),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        }
    }

    /// The directory holding the repositories.
    pub fn root(&self) -> &std::path::Path {
        self.store.root()
    }

    async fn existing_dir(&self, repo: &RepoPath) -> Result<PathBuf, NodeError> {
        if self.store.exists(repo).await {
            Ok(self.store.dir(repo))
        } else {
            Err(NodeError::NotFound(repo.clone()))
        }
    }

    /// The smart-HTTP `info/refs` body: the service announcement (v0 only) followed by
    /// git's advertisement.
    pub async fn info_refs(
        &self,
        repo: &RepoPath,
        service: Service,
        protocol: Option<&GitProtocol>,
    ) -> Result<GitStream, NodeError> {
        let dir = self.existing_dir(repo).await?;
        self.advertise(&dir, service, protocol)
    }

    /// The receive-pack advertisement of `repo`, or, when it does not exist, that of an
    /// empty repository (for a push that will create it). Creates nothing.
    pub async fn push_advertisement_or_empty(
        &self,
        repo: &RepoPath,
        protocol: Option<&GitProtocol>,
    ) -> Result<GitStream, NodeError> {
        let dir = match self.existing_dir(repo).await {
            Ok(dir) => dir,
            Err(NodeError::NotFound(_)) => self.empty.clone(),
            Err(err) => return Err(err),
        };
        self.advertise(&dir, Service::ReceivePack, protocol)
    }

    fn advertise(
        &self,
        dir: &std::path::Path,
        service: Service,
        protocol: Option<&GitProtocol>,
    ) -> Result<GitStream, NodeError> {
        let cmd = self.git.service(service, dir, protocol, true);
        let guard = self.guard("advertise-refs");
        let advertisement = process::run("advertise-refs", cmd, None, Some(guard))?;
        self.metrics
            .git_processes
            .with_label_values(&["advertise-refs"])
            .inc();
        let v2 = service == Service::UploadPack
            && protocol.map(GitProtocol::version) == Some(ProtocolVersion::V2);
        if v2 {
            return Ok(advertisement);
        }
        let announcement = Bytes::from(advertise::service_announcement(service));
        let head = futures_util::stream::once(async move { Ok(announcement) });
        Ok(Box::pin(futures_util::StreamExt::chain(
            head,
            advertisement,
        )))
    }

    /// Run `service` with `--stateless-rpc`, feeding it `body`.
    pub async fn rpc(
        &self,
        repo: &RepoPath,
        service: Service,
        protocol: Option<&GitProtocol>,
        body: RequestBody,
    ) -> Result<GitStream, NodeError> {
        let dir = self.existing_dir(repo).await?;
        let cmd = self.git.service(service, &dir, protocol, false);
        let guard = self.guard(service.subcommand());
        let stream = process::run(service.subcommand(), cmd, Some(body), Some(guard))?;
        self.metrics
            .git_processes
            .with_label_values(&[service.subcommand()])
            .inc();
        Ok(stream)
    }

    /// The directory of `repo` under this node's root (which may not exist).
    pub fn repo_dir(&self, repo: &RepoPath) -> PathBuf {
        self.store.dir(repo)
    }

    /// Make this node's copy of `repo` an exact copy of `source`'s refs (creating the
    /// repository when missing): `git fetch --prune` of every ref, then HEAD set to
    /// `head` when given. Returns the resulting state.
    pub async fn replicate(
        &self,
        repo: &RepoPath,
        source: &ReplicaSource,
        head: Option<&str>,
    ) -> Result<RepoState, NodeError> {
        if let Some(head) = head {
            let valid = head.starts_with("refs/") && gix::refs::FullName::try_from(head).is_ok();
            if !valid {
                return Err(BadReplication::Head(head.to_owned()).into());
            }
        }
        let (from, authorization) = match source {
            ReplicaSource::Path(path) => (path.to_string_lossy().into_owned(), None),
            ReplicaSource::Http { url, authorization } => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(BadReplication::Scheme.into());
                }
                (url.clone(), Some(format!("Authorization: {authorization}")))
            }
        };
        let newly = self
            .replicating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(repo.clone());
        if !newly {
            self.metrics.replication_overlaps.inc();
            tracing::warn!(repo = %repo, "refused a replication overlapping a running one");
            return Err(NodeError::ReplicationRunning(repo.clone()));
        }
        let _replicating = Replicating {
            node: self,
            repo: repo.clone(),
        };
        let created = match self.store.create(&self.git, repo).await {
            Ok(()) => {
                tracing::info!(repo = %repo, "created repository for replication");
                true
            }
            Err(RepoStoreError::AlreadyExists(_)) => false,
            Err(err) => return Err(err.into()),
        };
        let copied = self
            .copy_into(repo, &from, authorization.as_deref(), head)
            .await;
        if copied.is_err() && created {
            // A failed copy into a repository made for it leaves nothing behind.
            if let Err(err) = self.store.delete(repo).await {
                tracing::warn!(repo = %repo, error = %err, "could not remove the repository a failed replication created");
            }
        }
        copied
    }

    /// The copy itself: fetch every ref from `from`, set HEAD, read the new state.
    async fn copy_into(
        &self,
        repo: &RepoPath,
        from: &str,
        authorization: Option<&str>,
        head: Option<&str>,
    ) -> Result<RepoState, NodeError> {
        let dir = self.store.dir(repo);
        let _running = self.guard("fetch");
        self.metrics
            .git_processes
            .with_label_values(&["fetch"])
            .inc();
        process::run_to_end("fetch", self.git.mirror_fetch(&dir, from, authorization)).await?;
        if let Some(head) = head {
            process::run_to_end("symbolic-ref", self.git.set_head(&dir, head)).await?;
        }
        self.state(repo).await
    }

    /// Whether the repository exists, its HEAD and ref checksum.
    pub async fn state(&self, repo: &RepoPath) -> Result<RepoState, NodeError> {
        if !self.store.exists(repo).await {
            return Ok(RepoState::missing());
        }
        Ok(refstate::read(self.store.dir(repo)).await?)
    }

    /// Create an empty bare repository.
    pub async fn create(&self, repo: &RepoPath) -> Result<(), NodeError> {
        self.store.create(&self.git, repo).await?;
        tracing::info!(repo = %repo, "created repository");
        Ok(())
    }

    /// Delete a repository.
    pub async fn delete(&self, repo: &RepoPath) -> Result<(), NodeError> {
        self.store.delete(repo).await?;
        tracing::info!(repo = %repo, "deleted repository");
        Ok(())
    }

    /// Every repository under the root.
    pub async fn list(&self) -> Result<Vec<RepoPath>, NodeError> {
        Ok(self.store.discover().await?)
    }
}
