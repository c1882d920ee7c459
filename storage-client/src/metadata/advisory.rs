//! Repository write locks in PostgreSQL: a session advisory lock, held on a pooled
//! connection for as long as the [`RepoLock`] lives. If the gateway dies, PostgreSQL
//! ends the session and the lock goes with it; a session whose unlock failed is never
//! returned to the pool.

use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use gitgate_proto::RepoPath;

use super::{RepoLock, StoreError};

/// The advisory-lock key of a repository: 64 bits of its name's blake3 hash.
fn lock_key(repo: &RepoPath) -> i64 {
    let hash = blake3::hash(repo.as_str().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    i64::from_be_bytes(first)
}

/// A held advisory lock; unlocks (and returns the connection) when dropped.
struct AdvisoryLock {
    conn: Option<Object>,
    key: i64,
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let key = self.key;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let unlocked = conn
                        .query_one("SELECT pg_advisory_unlock($1)", &[&key])
                        .await
                        .map(|row| row.get::<_, bool>(0));
                    if !matches!(unlocked, Ok(true)) {
                        // Do not reuse a session that may still hold the lock.
                        drop(Object::take(conn));
                    }
                });
            }
            Err(_) => {
                // No runtime: closing the session releases the lock.
                drop(Object::take(conn));
            }
        }
    }
}

/// Take `repo`'s lock if it is free.
pub(super) async fn try_lock(pool: &Pool, repo: &RepoPath) -> Result<Option<RepoLock>, StoreError> {
    let conn = pool.get().await?;
    let key = lock_key(repo);
    let row = conn
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await?;
    if row.try_get::<_, bool>(0)? {
        Ok(Some(RepoLock::new(AdvisoryLock {
            conn: Some(conn),
            key,
        })))
    } else {
        Ok(None)
    }
}

/// Take `repo`'s lock, polling with backoff for at most `wait`.
pub(super) async fn lock(
    pool: &Pool,
    repo: &RepoPath,
    wait: Duration,
) -> Result<RepoLock, StoreError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(lock) = try_lock(pool, repo).await? {
            return Ok(lock);
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Err(StoreError::LockTimeout(repo.clone()));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
