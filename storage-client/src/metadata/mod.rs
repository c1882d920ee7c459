//! Replica metadata: which nodes hold each repository, at which generation, which one is
//! the primary, which writes are in flight and which replication jobs are queued.
//!
//! One interface, [`MetadataStore`], with two implementations over the same schema and
//! statements ([`sql`]): [`embedded::EmbeddedStore`] (SQLite in a file, for a single
//! gateway; every change is on disk before the call returns) and
//! [`postgres::PostgresStore`] (shared by several gateways). The per-repository write
//! lock is part of the interface: in-process for the embedded store, a PostgreSQL
//! advisory lock for the shared one. A shared store also keeps the fleet's live
//! gateways ([`postgres::PostgresStore::heartbeat`], in `peers`).
//!
//! Generations only move forward: a replica's generation is raised, never lowered, and
//! a repository's generation is bumped once per recorded write.

mod advisory;
pub mod embedded;
mod lock;
mod peers;
mod pg_pool;
pub mod postgres;
pub mod sql;
mod sqlite_rows;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use gitgate_proto::RepoPath;

pub(crate) use lock::LocalLocks;
pub use lock::RepoLock;

/// A replica's generation before it holds any copy of the repository.
pub const NO_COPY: i64 = -1;

/// Everything recorded about one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRecord {
    /// The repository.
    pub repo: RepoPath,
    /// Its generation: bumped by every write that changed refs.
    pub generation: i64,
    /// The node writes go to, once elected.
    pub primary: Option<String>,
    /// The ref checksum the last recorded write left.
    pub checksum: Option<String>,
    /// A write that started and has not been recorded as finished.
    pub write: Option<WriteMarker>,
    /// The generation of the last state a client was told is written (a push
    /// acknowledged, or a repair that kept an acknowledged state). A replica older than
    /// this lacks an acknowledged write and must never serve.
    pub acked: i64,
    /// The replicas, in node-name order.
    pub replicas: Vec<ReplicaRecord>,
}

impl RepoRecord {
    /// Whether `node`'s replica holds the current generation.
    pub fn is_up_to_date(&self, node: &str) -> bool {
        self.replica(node)
            .is_some_and(|r| r.generation == self.generation)
    }

    /// The replica on `node`, if it is one.
    pub fn replica(&self, node: &str) -> Option<&ReplicaRecord> {
        self.replicas.iter().find(|r| r.node == node)
    }
}

/// One node's copy of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRecord {
    /// The node's configured name.
    pub node: String,
    /// The generation it holds ([`NO_COPY`] before its first replication).
    pub generation: i64,
    /// Its ref checksum when the generation was recorded.
    pub checksum: Option<String>,
}

/// A write in flight, recorded before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteMarker {
    /// The node the write went to.
    pub node: String,
    /// The gateway that started it.
    pub owner: String,
    /// When it started (milliseconds since the epoch).
    pub started_ms: i64,
}

/// What a replication job does to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Bring the target's copy up to date (creating it when missing).
    Update,
    /// Delete the target's copy.
    Delete,
}

impl JobKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "update" => Ok(Self::Update),
            "delete" => Ok(Self::Delete),
            other => Err(StoreError::Corrupt(format!("unknown job kind {other:?}"))),
        }
    }
}

/// What [`MetadataStore::enqueue`] does to a job that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueMode {
    /// Queue it, or note a new change on it: a running job then makes another pass
    /// instead of completing; its backoff and lease stay as they are.
    Rearm,
    /// Leave it alone (only queue a missing job).
    IfMissing,
}

impl QueueMode {
    fn statement(self) -> &'static str {
        match self {
            Self::Rearm => sql::ENQUEUE,
            Self::IfMissing => sql::ENSURE,
        }
    }
}

/// A replication job: one target node of one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The repository.
    pub repo: RepoPath,
    /// The node to bring up to date.
    pub target: String,
    /// What to do.
    pub kind: JobKind,
    /// Attempts so far, this one included once claimed.
    pub attempts: i32,
    /// When the oldest change it has not copied yet was queued (ms since the epoch).
    pub created_ms: i64,
    /// Changes noted on it; a job completes only if none came in while it ran.
    pub version: i64,
}

/// How many jobs are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Waiting for a worker, never tried.
    pub queued: i64,
    /// Leased by a worker.
    pub running: i64,
    /// Failed at least once, waiting for the next attempt.
    pub retrying: i64,
    /// When the oldest change not copied yet was queued (`now` when none): the
    /// replication lag is `now` minus this.
    pub oldest_ms: i64,
}

/// A repository to register, with the replicas it starts with.
#[derive(Debug, Clone)]
pub struct NewRepo {
    /// The repository.
    pub repo: RepoPath,
    /// Its starting generation.
    pub generation: i64,
    /// Its starting checksum.
    pub checksum: Option<String>,
    /// Its replicas.
    pub replicas: Vec<ReplicaRecord>,
}

/// Failures of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database failed.
    #[error("embedded metadata store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed or could not be reached.
    #[error("postgres metadata store: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// Stored data does not make sense (e.g. a repository name that no longer parses).
    #[error("metadata store holds invalid data: {0}")]
    Corrupt(String),
    /// The repository's lock was not acquired in time.
    #[error("repository {0} is locked by another write")]
    LockTimeout(RepoPath),
    /// A blocking task failed.
    #[error("metadata store task failed: {0}")]
    Task(String),
    /// Opening the store failed.
    #[error("opening metadata store {path}: {source}")]
    Open {
        /// The file or URL.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A boxed future of a store operation.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The replica metadata interface. Every method is one atomic change (or read).
pub trait MetadataStore: Send + Sync + 'static {
    /// Whether the store answers (a trivial query), for readiness checks.
    fn ping(&self) -> StoreFuture<'_, ()>;

    /// The repository's record, if registered.
    fn get<'a>(&'a self, repo: &'a RepoPath) -> StoreFuture<'a, Option<RepoRecord>>;

    /// Every registered repository.
    fn list(&self) -> StoreFuture<'_, Vec<RepoPath>>;

    /// Register a repository unless it already is; `true` when this call registered it.
    fn register<'a>(&'a self, new: &'a NewRepo) -> StoreFuture<'a, bool>;

    /// Forget a repository and its replicas (its jobs stay, so deletions still run).
    fn forget<'a>(&'a self, repo: &'a RepoPath) -> StoreFuture<'a, ()>;

    /// Make `node` the primary.
    fn set_primary<'a>(&'a self, repo: &'a RepoPath, node: &'a str) -> StoreFuture<'a, ()>;

    /// Record that a write to `marker.node` is starting.
    fn begin_write<'a>(
        &'a self,
        repo: &'a RepoPath,
        marker: &'a WriteMarker,
    ) -> StoreFuture<'a, ()>;

    /// Record a finished write that changed refs: the repository's generation is bumped,
    /// the replicas on `holders` get the new generation and `checksum`, and the write
    /// marker is cleared. When `acknowledged`, the new generation also becomes the
    /// acknowledged one ([`RepoRecord::acked`]). Returns the new generation.
    fn finish_write<'a>(
        &'a self,
        repo: &'a RepoPath,
        holders: &'a [String],
        checksum: Option<&'a str>,
        acknowledged: bool,
    ) -> StoreFuture<'a, i64>;

    /// Make `generation` the acknowledged one, unless a later one already is.
    fn acknowledge<'a>(&'a self, repo: &'a RepoPath, generation: i64) -> StoreFuture<'a, ()>;

    /// Clear the write marker (the write changed nothing).
    fn clear_write<'a>(&'a self, repo: &'a RepoPath) -> StoreFuture<'a, ()>;

    /// Record that `node` holds at least `generation` with refs `checksum`. The
    /// generation is raised, never lowered; the replica is added if it is not one yet.
    fn record_replica<'a>(
        &'a self,
        repo: &'a RepoPath,
        node: &'a str,
        generation: i64,
        checksum: Option<&'a str>,
    ) -> StoreFuture<'a, ()>;

    /// Queue a job for `target`: one per repository and target. See [`QueueMode`] for
    /// what happens to an existing one.
    fn enqueue<'a>(
        &'a self,
        repo: &'a RepoPath,
        target: &'a str,
        kind: JobKind,
        now_ms: i64,
        mode: QueueMode,
    ) -> StoreFuture<'a, ()>;

    /// Lease up to `limit` due jobs to `owner` until `now_ms + lease`.
    fn claim<'a>(
        &'a self,
        owner: &'a str,
        now_ms: i64,
        lease: Duration,
        limit: i64,
    ) -> StoreFuture<'a, Vec<Job>>;

    /// Extend the lease `owner` holds on `job` until `expires_ms`; `false` when the
    /// lease is no longer `owner`'s (re-armed, or taken over after it expired).
    fn renew<'a>(&'a self, job: &'a Job, owner: &'a str, expires_ms: i64) -> StoreFuture<'a, bool>;

    /// `owner` finished `job`: remove it, unless a change was noted on it while it ran
    /// (its version moved); then it is due again at `now_ms`. `true` when removed.
    fn complete<'a>(&'a self, job: &'a Job, owner: &'a str, now_ms: i64) -> StoreFuture<'a, bool>;

    /// Take the lease of `repo`'s job for `target` (creating the job) for `owner` until
    /// `now_ms + lease`, unless another owner holds it. A copy into `target` runs only
    /// under this lease or a claimed one, so copies into one target never overlap.
    fn lease_target<'a>(
        &'a self,
        repo: &'a RepoPath,
        target: &'a str,
        owner: &'a str,
        now_ms: i64,
        lease: Duration,
    ) -> StoreFuture<'a, Option<Job>>;

    /// Give a failed job back, due again at `not_before_ms`.
    fn retry<'a>(
        &'a self,
        job: &'a Job,
        owner: &'a str,
        error: &'a str,
        not_before_ms: i64,
    ) -> StoreFuture<'a, ()>;

    /// Make every job for `target` due now (the node came back).
    fn wake<'a>(&'a self, target: &'a str, now_ms: i64) -> StoreFuture<'a, ()>;

    /// The queued jobs of `repo`.
    fn jobs_of<'a>(&'a self, repo: &'a RepoPath) -> StoreFuture<'a, Vec<Job>>;

    /// How many jobs are in each state.
    fn job_counts(&self, now_ms: i64) -> StoreFuture<'_, JobCounts>;

    /// Take the repository's write lock, waiting at most `wait`.
    fn lock<'a>(&'a self, repo: &'a RepoPath, wait: Duration) -> StoreFuture<'a, RepoLock>;

    /// Take the repository's write lock if nobody holds it.
    fn try_lock<'a>(&'a self, repo: &'a RepoPath) -> StoreFuture<'a, Option<RepoLock>>;
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn parse_repo(name: &str) -> Result<RepoPath, StoreError> {
    RepoPath::parse(name).map_err(|e| StoreError::Corrupt(format!("{name:?}: {e}")))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
