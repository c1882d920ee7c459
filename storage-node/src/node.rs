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
    /// git failed to start or failed before answering.
    #[error(transparent)]
    Git(#[from] GitStreamError),
    /// Reading refs failed.
    #[error(transparent)]
    RefState(#[from] RefStateError),
    /// The git program could not be found.
    #[error("git program: {0}")]
    GitMissing(#[source] std::io::Error),
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

/// A storage node over one root directory.
#[derive(Debug)]
pub struct Node {
    store: RepoStore,
    git: GitBinary,
    metrics: NodeMetrics,
    /// Running git processes per kind: advertise-refs, upload-pack, receive-pack.
    running: [Arc<AtomicI64>; 3],
}

impl Node {
    /// Open the node: locate git, create the root if needed, clean leftovers.
    pub async fn open(settings: NodeSettings) -> Result<Self, NodeError> {
        let git = GitBinary::locate(&settings.git).map_err(NodeError::GitMissing)?;
        let store = RepoStore::open(settings.root).await?;
        Ok(Self {
            store,
            git,
            metrics: settings.metrics,
            running: Default::default(),
        })
    }

    fn guard(&self, service: &'static str) -> Box<dyn Send + Sync> {
        let slot = match service {
            "advertise-refs" => 0,
            "upload-pack" => 1,
            _ => 2,
        };
        Box::new(self.metrics.running(service, self.running[slot].clone()))
    }

    /// The root directory.
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
        let cmd = self.git.service(service, &dir, protocol, true);
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
