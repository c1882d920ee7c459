//! The shared metadata store: PostgreSQL, so several gateways see the same generations,
//! primaries, markers and jobs.
//!
//! Connections come from two deadpool pools: at most 32 running queries and at most 64
//! holding locks at once (callers beyond that wait), so a write holding a lock still
//! gets connections for its queries. A broken connection is recycled by the pool. A
//! repository's write lock is a session advisory lock held on a pooled connection for
//! as long as the lock lives: if the gateway dies, PostgreSQL ends the session and the
//! lock is released with it.

use std::time::Duration;

use deadpool_postgres::Pool;
use gitgate_proto::RepoPath;

use super::advisory;
use super::pg_pool::pool;
use super::{
    millis, parse_repo, sql, Job, JobCounts, JobKind, MetadataStore, NewRepo, QueueMode,
    ReplicaRecord, RepoLock, RepoRecord, StoreError, StoreFuture, WriteMarker,
};

/// Connections running queries at once (each call takes one for its duration).
const MAX_QUERYING: usize = 32;
/// Connections holding repository locks at once (one per write in progress).
const MAX_LOCKING: usize = 64;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// PostgreSQL metadata.
#[derive(Clone)]
pub struct PostgresStore {
    /// Connections for queries.
    queries: Pool,
    /// Connections that hold a repository's advisory lock.
    locks: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgresStore")
    }
}

impl PostgresStore {
    /// Connect to `url` and create the tables if needed.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("gitgate");
        let store = Self {
            queries: pool(&config, MAX_QUERYING)?,
            locks: pool(&config, MAX_LOCKING)?,
        };
        let conn = store.queries.get().await?;
        // Gateways starting together must not race on CREATE TABLE.
        conn.execute("SELECT pg_advisory_lock(7150254127)", &[])
            .await?;
        let created = async {
            for table in sql::SCHEMA {
                conn.batch_execute(table).await?;
            }
            for (table, column, definition) in sql::ADDED_COLUMNS {
                conn.batch_execute(&format!(
                    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {definition}"
                ))
                .await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        }
        .await;
        conn.execute("SELECT pg_advisory_unlock(7150254127)", &[])
            .await?;
        created?;
        drop(conn);
        Ok(store)
    }

    /// A pooled connection for queries (the fleet registry's, in `peers`).
    pub(super) async fn query_connection(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.queries.get().await?)
    }

    async fn exec(
        &self,
        statement: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let conn = self.queries.get().await?;
        Ok(conn.execute(statement, args).await?)
    }
}

fn job_from(row: &tokio_postgres::Row) -> Result<Job, StoreError> {
    let repo: String = row.try_get(0)?;
    let kind: String = row.try_get(2)?;
    Ok(Job {
        repo: parse_repo(&repo)?,
        target: row.try_get(1)?,
        kind: JobKind::parse(&kind)?,
        attempts: row.try_get(3)?,
        created_ms: row.try_get(4)?,
        version: row.try_get(5)?,
    })
}

impl MetadataStore for PostgresStore {
    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let conn = self.queries.get().await?;
            conn.query_one("SELECT 1", &[]).await?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, repo: &'a RepoPath) -> StoreFuture<'a, Option<RepoRecord>> {
        Box::pin(async move {
            let mut conn = self.queries.get().await?;
            let name = repo.as_str();
            // One snapshot for the repository row and its replicas: a write committed
            // between two plain statements would otherwise pair the new generation with
            // the old replica rows (every replica "out of date").
            let tx = conn
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let Some(row) = tx.query_opt(sql::GET_REPO, &[&name]).await? else {
                return Ok(None);
            };
            let replicas = tx
                .query(sql::GET_REPLICAS, &[&name])
                .await?
                .iter()
                .map(|r| {
                    Ok(ReplicaRecord {
                        node: r.try_get(0)?,
                        generation: r.try_get(1)?,
                        checksum: r.try_get(2)?,
                    })
                })
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
            let write = match (
                row.try_get::<_, Option<String>>(3)?,
                row.try_get::<_, Option<String>>(4)?,
                row.try_get::<_, Option<i64>>(5)?,
            ) {
                (Some(node), Some(owner), Some(started_ms)) => Some(WriteMarker {
                    node,
                    owner,
                    started_ms,
                }),
                _ => None,
            };
            tx.commit().await?;
            Ok(Some(RepoRecord {
                acked: row.try_get(6)?,
                repo: repo.clone(),
                generation: row.try_get(0)?,
                primary: row.try_get(1)?,
                checksum: row.try_get(2)?,
                write,
                replicas,
            }))
        })
    }

    fn list(&self) -> StoreFuture<'_, Vec<RepoPath>> {
        Box::pin(async move {
            let conn = self.queries.get().await?;
            conn.query(sql::LIST_REPOS, &[])
                .await?
                .iter()
                .map(|row| parse_repo(&row.try_get::<_, String>(0)?))
                .collect()
        })
    }

    fn register<'a>(&'a self, new: &'a NewRepo) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.queries.get().await?;
            let tx = conn.transaction().await?;
            let name = new.repo.as_str();
            let inserted = tx
                .execute(sql::INSERT_REPO, &[&name, &new.generation, &new.checksum])
                .await?
                == 1;
            if inserted {
                for replica in &new.replicas {
                    tx.execute(
                        sql::SET_REPLICA,
                        &[&name, &replica.node, &replica.generation, &replica.checksum],
                    )
                    .await?;
                }
            }
            tx.commit().await?;
            Ok(inserted)
        })
    }

    fn forget<'a>(&'a self, repo: &'a RepoPath) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.exec(sql::DELETE_REPO, &[&repo.as_str()]).await?;
            Ok(())
        })
    }

    fn set_primary<'a>(&'a self, repo: &'a RepoPath, node: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.exec(sql::SET_PRIMARY, &[&repo.as_str(), &node])
                .await?;
            Ok(())
        })
    }

    fn begin_write<'a>(
        &'a self,
        repo: &'a RepoPath,
        marker: &'a WriteMarker,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.exec(
                sql::BEGIN_WRITE,
                &[
                    &repo.as_str(),
                    &marker.node,
                    &marker.owner,
                    &marker.started_ms,
                ],
            )
            .await?;
            Ok(())
        })
    }

    fn finish_write<'a>(
        &'a self,
        repo: &'a RepoPath,
        holders: &'a [String],
        checksum: Option<&'a str>,
        acknowledged: bool,
    ) -> StoreFuture<'a, i64> {
        Box::pin(async move {
            let mut conn = self.queries.get().await?;
            let tx = conn.transaction().await?;
            let name = repo.as_str();
            let row = tx
                .query_opt(sql::BUMP_REPO, &[&name, &checksum, &acknowledged])
                .await?
                .ok_or_else(|| StoreError::Corrupt(format!("{repo} is not registered")))?;
            let generation: i64 = row.try_get(0)?;
            for node in holders {
                tx.execute(sql::SET_REPLICA, &[&name, node, &generation, &checksum])
                    .await?;
            }
            tx.commit().await?;
            Ok(generation)
        })
    }

    fn acknowledge<'a>(&'a self, repo: &'a RepoPath, generation: i64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.exec(sql::ACKNOWLEDGE, &[&repo.as_str(), &generation])
                .await?;
            Ok(())
        })
    }

    fn clear_write<'a>(&'a self, repo: &'a RepoPath) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.exec(sql::CLEAR_WRITE, &[&repo.as_str()]).await?;
            Ok(())
        })
    }

    fn record_replica<'a>(
        &'a self,
        repo: &'a RepoPath,
        node: &'a str,
        generation: i64,
        checksum: Option<&'a str>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.exec(
                sql::UPSERT_REPLICA,
                &[&repo.as_str(), &node, &generation, &checksum],
            )
            .await?;
            Ok(())
        })
    }

    fn enqueue<'a>(
        &'a self,
        repo: &'a RepoPath,
        target: &'a str,
        kind: JobKind,
        now_ms: i64,
        mode: QueueMode,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.exec(
                mode.statement(),
                &[&repo.as_str(), &target, &kind.as_str(), &now_ms],
            )
            .await?;
            Ok(())
        })
    }

    fn claim<'a>(
        &'a self,
        owner: &'a str,
        now_ms: i64,
        lease: Duration,
        limit: i64,
    ) -> StoreFuture<'a, Vec<Job>> {
        Box::pin(async move {
            let conn = self.queries.get().await?;
            let expires = now_ms.saturating_add(millis(lease));
            conn.query(sql::CLAIM_POSTGRES, &[&owner, &now_ms, &expires, &limit])
                .await?
                .iter()
                .map(job_from)
                .collect()
        })
    }

    fn renew<'a>(&'a self, job: &'a Job, owner: &'a str, expires_ms: i64) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let updated = self
                .exec(
                    sql::RENEW,
                    &[&job.repo.as_str(), &job.target, &owner, &expires_ms],
                )
                .await?;
            Ok(updated == 1)
        })
    }

    fn complete<'a>(&'a self, job: &'a Job, owner: &'a str, now_ms: i64) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.queries.get().await?;
            let tx = conn.transaction().await?;
            let repo = job.repo.as_str();
            let removed = tx
                .execute(sql::COMPLETE, &[&repo, &job.target, &owner, &job.version])
                .await?
                == 1;
            if !removed {
                tx.execute(sql::AGAIN, &[&repo, &job.target, &owner, &now_ms])
                    .await?;
            }
            tx.commit().await?;
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
        Box::pin(async move {
            let conn = self.queries.get().await?;
            let expires = now_ms.saturating_add(millis(lease));
            conn.query_opt(
                sql::LEASE_TARGET,
                &[&repo.as_str(), &target, &now_ms, &owner, &expires],
            )
            .await?
            .as_ref()
            .map(job_from)
            .transpose()
        })
    }

    fn retry<'a>(
        &'a self,
        job: &'a Job,
        owner: &'a str,
        error: &'a str,
        not_before_ms: i64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.exec(
                sql::RETRY,
                &[
                    &job.repo.as_str(),
                    &job.target,
                    &owner,
                    &error,
                    &not_before_ms,
                ],
            )
            .await?;
            Ok(())
        })
    }

    fn wake<'a>(&'a self, target: &'a str, now_ms: i64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.exec(sql::WAKE, &[&target, &now_ms]).await?;
            Ok(())
        })
    }

    fn jobs_of<'a>(&'a self, repo: &'a RepoPath) -> StoreFuture<'a, Vec<Job>> {
        Box::pin(async move {
            let conn = self.queries.get().await?;
            conn.query(sql::JOBS_OF, &[&repo.as_str()])
                .await?
                .iter()
                .map(job_from)
                .collect()
        })
    }

    fn job_counts(&self, now_ms: i64) -> StoreFuture<'_, JobCounts> {
        Box::pin(async move {
            let conn = self.queries.get().await?;
            let row = conn.query_one(sql::JOB_COUNTS, &[&now_ms]).await?;
            Ok(JobCounts {
                queued: row.try_get(0)?,
                running: row.try_get(1)?,
                retrying: row.try_get(2)?,
                oldest_ms: row.try_get(3)?,
            })
        })
    }

    fn lock<'a>(&'a self, repo: &'a RepoPath, wait: Duration) -> StoreFuture<'a, RepoLock> {
        Box::pin(advisory::lock(&self.locks, repo, wait))
    }

    fn try_lock<'a>(&'a self, repo: &'a RepoPath) -> StoreFuture<'a, Option<RepoLock>> {
        Box::pin(advisory::try_lock(&self.locks, repo))
    }
}
