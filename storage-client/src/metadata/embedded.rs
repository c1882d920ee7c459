//! The embedded metadata store: SQLite in one file, for a single gateway.
//!
//! WAL journal with `synchronous = FULL`, so every change is on disk when its call
//! returns (a push is acknowledged only after its generation is durable). Calls run on
//! tokio's blocking pool, one at a time. Write locks are in-process: one gateway owns
//! the file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gitgate_proto::RepoPath;
use rusqlite::{params, Connection, OptionalExtension};

use super::lock::LocalLocks;
use super::sqlite_rows::{int, job_from, jobs, opt_text, text};
use super::{
    millis, parse_repo, sql, Job, JobCounts, JobKind, MetadataStore, NewRepo, QueueMode,
    ReplicaRecord, RepoLock, RepoRecord, StoreError, StoreFuture, WriteMarker,
};

/// SQLite metadata in a file.
#[derive(Clone)]
pub struct EmbeddedStore {
    conn: Arc<Mutex<Connection>>,
    locks: LocalLocks,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

/// `$N` placeholders as SQLite's `?N`.
fn sqlite(statement: &str) -> String {
    statement.replace('$', "?")
}

impl EmbeddedStore {
    /// Open (creating when missing) the store at `path`; its directory is created too.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_owned();
        let opened = path.clone();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| StoreError::Open {
                    path: path.display().to_string(),
                    source,
                })?;
            }
            let conn = Connection::open(&path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            conn.busy_timeout(Duration::from_secs(5))?;
            for table in sql::SCHEMA {
                conn.execute(table, [])?;
            }
            for (table, column, definition) in sql::ADDED_COLUMNS {
                let present: i64 = conn.query_row(
                    &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                    [column],
                    |row| row.get(0),
                )?;
                if present == 0 {
                    conn.execute(
                        &format!("ALTER TABLE {table} ADD COLUMN {column} {definition}"),
                        [],
                    )?;
                }
            }
            // One gateway owns this file: leases from its previous life are void.
            conn.execute(sql::RELEASE_ALL, [])?;
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            locks: LocalLocks::default(),
            path: opened,
        })
    }

    /// Run `f` with the connection on the blocking pool.
    fn call<'a, T, F>(&'a self, f: F) -> StoreFuture<'a, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut conn)
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
        })
    }

    fn exec<'a>(
        &'a self,
        statement: &'static str,
        args: Vec<rusqlite::types::Value>,
    ) -> StoreFuture<'a, ()> {
        self.call(move |conn| {
            conn.execute(&sqlite(statement), rusqlite::params_from_iter(args))?;
            Ok(())
        })
    }
}

impl MetadataStore for EmbeddedStore {
    fn ping(&self) -> StoreFuture<'_, ()> {
        self.call(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, repo: &'a RepoPath) -> StoreFuture<'a, Option<RepoRecord>> {
        let repo = repo.clone();
        self.call(move |conn| {
            let name = repo.as_str();
            // One snapshot for the repository row and its replicas (see the
            // PostgreSQL store): a read transaction in WAL mode.
            let tx = conn.transaction()?;
            let head = tx
                .query_row(&sqlite(sql::GET_REPO), [name], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, Option<String>>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, Option<String>>(3)?,
                        row.get::<_, Option<String>>(4)?,
                        row.get::<_, Option<i64>>(5)?,
                        row.get::<_, i64>(6)?,
                    ))
                })
                .optional()?;
            let Some((generation, primary, checksum, write_node, write_owner, started, acked)) =
                head
            else {
                return Ok(None);
            };
            let replicas = {
                let mut stmt = tx.prepare_cached(&sqlite(sql::GET_REPLICAS))?;
                let rows = stmt.query_map([name], |row| {
                    Ok(ReplicaRecord {
                        node: row.get(0)?,
                        generation: row.get(1)?,
                        checksum: row.get(2)?,
                    })
                })?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            tx.commit()?;
            let write = match (write_node, write_owner, started) {
                (Some(node), Some(owner), Some(started_ms)) => Some(WriteMarker {
                    node,
                    owner,
                    started_ms,
                }),
                _ => None,
            };
            Ok(Some(RepoRecord {
                repo,
                generation,
                primary,
                checksum,
                write,
                acked,
                replicas,
            }))
        })
    }

    fn list(&self) -> StoreFuture<'_, Vec<RepoPath>> {
        self.call(|conn| {
            let mut stmt = conn.prepare_cached(sql::LIST_REPOS)?;
            let names = stmt
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            names.iter().map(|n| parse_repo(n)).collect()
        })
    }

    fn register<'a>(&'a self, new: &'a NewRepo) -> StoreFuture<'a, bool> {
        let new = new.clone();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let inserted = tx.execute(
                &sqlite(sql::INSERT_REPO),
                params![new.repo.as_str(), new.generation, new.checksum],
            )? == 1;
            if inserted {
                for replica in &new.replicas {
                    tx.execute(
                        &sqlite(sql::SET_REPLICA),
                        params![
                            new.repo.as_str(),
                            replica.node,
                            replica.generation,
                            replica.checksum
                        ],
                    )?;
                }
            }
            tx.commit()?;
            Ok(inserted)
        })
    }

    fn forget<'a>(&'a self, repo: &'a RepoPath) -> StoreFuture<'a, ()> {
        self.exec(sql::DELETE_REPO, vec![text(repo.as_str())])
    }

    fn set_primary<'a>(&'a self, repo: &'a RepoPath, node: &'a str) -> StoreFuture<'a, ()> {
        self.exec(sql::SET_PRIMARY, vec![text(repo.as_str()), text(node)])
    }

    fn begin_write<'a>(
        &'a self,
        repo: &'a RepoPath,
        marker: &'a WriteMarker,
    ) -> StoreFuture<'a, ()> {
        self.exec(
            sql::BEGIN_WRITE,
            vec![
                text(repo.as_str()),
                text(&marker.node),
                text(&marker.owner),
                int(marker.started_ms),
            ],
        )
    }

    fn finish_write<'a>(
        &'a self,
        repo: &'a RepoPath,
        holders: &'a [String],
        checksum: Option<&'a str>,
        acknowledged: bool,
    ) -> StoreFuture<'a, i64> {
        let repo = repo.clone();
        let holders = holders.to_vec();
        let checksum = checksum.map(str::to_owned);
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let generation: i64 = tx
                .query_row(
                    &sqlite(sql::BUMP_REPO),
                    params![repo.as_str(), checksum, acknowledged],
                    |row| row.get(0),
                )
                .optional()?
                .ok_or_else(|| StoreError::Corrupt(format!("{repo} is not registered")))?;
            for node in &holders {
                tx.execute(
                    &sqlite(sql::SET_REPLICA),
                    params![repo.as_str(), node, generation, checksum],
                )?;
            }
            tx.commit()?;
            Ok(generation)
        })
    }

    fn acknowledge<'a>(&'a self, repo: &'a RepoPath, generation: i64) -> StoreFuture<'a, ()> {
        self.exec(sql::ACKNOWLEDGE, vec![text(repo.as_str()), int(generation)])
    }

    fn clear_write<'a>(&'a self, repo: &'a RepoPath) -> StoreFuture<'a, ()> {
        self.exec(sql::CLEAR_WRITE, vec![text(repo.as_str())])
    }

    fn record_replica<'a>(
        &'a self,
        repo: &'a RepoPath,
        node: &'a str,
        generation: i64,
        checksum: Option<&'a str>,
    ) -> StoreFuture<'a, ()> {
        self.exec(
            sql::UPSERT_REPLICA,
            vec![
                text(repo.as_str()),
                text(node),
                int(generation),
                opt_text(checksum),
            ],
        )
    }

    fn enqueue<'a>(
        &'a self,
        repo: &'a RepoPath,
        target: &'a str,
        kind: JobKind,
        now_ms: i64,
        mode: QueueMode,
    ) -> StoreFuture<'a, ()> {
        self.exec(
            mode.statement(),
            vec![
                text(repo.as_str()),
                text(target),
                text(kind.as_str()),
                int(now_ms),
            ],
        )
    }

    fn claim<'a>(
        &'a self,
        owner: &'a str,
        now_ms: i64,
        lease: Duration,
        limit: i64,
    ) -> StoreFuture<'a, Vec<Job>> {
        let owner = owner.to_owned();
        let expires = now_ms.saturating_add(millis(lease));
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(&sqlite(sql::CLAIM_EMBEDDED))?;
            let rows = stmt
                .query_map(params![owner, now_ms, expires, limit], job_from)?
                .collect::<Result<Vec<_>, _>>()?;
            jobs(rows)
        })
    }

    fn renew<'a>(&'a self, job: &'a Job, owner: &'a str, expires_ms: i64) -> StoreFuture<'a, bool> {
        let args = vec![
            text(job.repo.as_str()),
            text(&job.target),
            text(owner),
            int(expires_ms),
        ];
        self.call(move |conn| {
            Ok(conn.execute(&sqlite(sql::RENEW), rusqlite::params_from_iter(args))? == 1)
        })
    }

    fn complete<'a>(&'a self, job: &'a Job, owner: &'a str, now_ms: i64) -> StoreFuture<'a, bool> {
        let (repo, target, owner, version) = (
            job.repo.as_str().to_owned(),
            job.target.clone(),
            owner.to_owned(),
            job.version,
        );
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let removed = tx.execute(
                &sqlite(sql::COMPLETE),
                params![repo, target, owner, version],
            )? == 1;
            if !removed {
                tx.execute(&sqlite(sql::AGAIN), params![repo, target, owner, now_ms])?;
            }
            tx.commit()?;
            Ok(removed)
        })
    }

    fn lease_target<'a>(
        &'a self,
        repo: &'a RepoPath,
        target: &'a str,
        owner: &'a str,
        now_ms: i64,
        lease: Duration,
    ) -> StoreFuture<'a, Option<Job>> {
        let (repo, target, owner) = (
            repo.as_str().to_owned(),
            target.to_owned(),
            owner.to_owned(),
        );
        let expires = now_ms.saturating_add(millis(lease));
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(&sqlite(sql::LEASE_TARGET))?;
            let rows = stmt
                .query_map(params![repo, target, now_ms, owner, expires], job_from)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(jobs(rows)?.into_iter().next())
        })
    }

    fn retry<'a>(
        &'a self,
        job: &'a Job,
        owner: &'a str,
        error: &'a str,
        not_before_ms: i64,
    ) -> StoreFuture<'a, ()> {
        self.exec(
            sql::RETRY,
            vec![
                text(job.repo.as_str()),
                text(&job.target),
                text(owner),
                text(error),
                int(not_before_ms),
            ],
        )
    }

    fn wake<'a>(&'a self, target: &'a str, now_ms: i64) -> StoreFuture<'a, ()> {
        self.exec(sql::WAKE, vec![text(target), int(now_ms)])
    }

    fn jobs_of<'a>(&'a self, repo: &'a RepoPath) -> StoreFuture<'a, Vec<Job>> {
        let name = repo.as_str().to_owned();
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(&sqlite(sql::JOBS_OF))?;
            let rows = stmt
                .query_map([name], job_from)?
                .collect::<Result<Vec<_>, _>>()?;
            jobs(rows)
        })
    }

    fn job_counts(&self, now_ms: i64) -> StoreFuture<'_, JobCounts> {
        self.call(move |conn| {
            Ok(conn.query_row(&sqlite(sql::JOB_COUNTS), [now_ms], |row| {
                Ok(JobCounts {
                    queued: row.get(0)?,
                    running: row.get(1)?,
                    retrying: row.get(2)?,
                    oldest_ms: row.get(3)?,
                })
            })?)
        })
    }

    fn lock<'a>(&'a self, repo: &'a RepoPath, wait: Duration) -> StoreFuture<'a, RepoLock> {
        Box::pin(self.locks.lock(repo, wait))
    }

    fn try_lock<'a>(&'a self, repo: &'a RepoPath) -> StoreFuture<'a, Option<RepoLock>> {
        let lock = self.locks.try_lock(repo);
        Box::pin(async move { Ok(lock) })
    }
}
