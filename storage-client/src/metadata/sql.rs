//! The schema and the statements both metadata stores run.
//!
//! Written in the SQL both SQLite and PostgreSQL accept, with `$N` placeholders (the
//! embedded store turns them into SQLite's `?N`). Only job claiming differs: PostgreSQL
//! needs `FOR UPDATE SKIP LOCKED` so gateways never lease the same job, and the
//! embedded store has a single writer.

/// The tables. Times are milliseconds since the epoch, set by the gateway.
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS repositories (
        repo TEXT PRIMARY KEY,
        generation BIGINT NOT NULL,
        primary_node TEXT,
        checksum TEXT,
        write_node TEXT,
        write_owner TEXT,
        write_started_ms BIGINT
    )",
    "CREATE TABLE IF NOT EXISTS replicas (
        repo TEXT NOT NULL REFERENCES repositories (repo) ON DELETE CASCADE,
        node TEXT NOT NULL,
        generation BIGINT NOT NULL,
        checksum TEXT,
        PRIMARY KEY (repo, node)
    )",
    "CREATE TABLE IF NOT EXISTS replication_jobs (
        repo TEXT NOT NULL,
        target TEXT NOT NULL,
        kind TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        created_ms BIGINT NOT NULL,
        not_before_ms BIGINT NOT NULL,
        lease_owner TEXT,
        lease_expires_ms BIGINT,
        last_error TEXT,
        PRIMARY KEY (repo, target)
    )",
];

/// `repo` → generation, primary, checksum, write marker.
pub const GET_REPO: &str =
    "SELECT generation, primary_node, checksum, write_node, write_owner, write_started_ms
     FROM repositories WHERE repo = $1";

/// `repo` → its replicas.
pub const GET_REPLICAS: &str =
    "SELECT node, generation, checksum FROM replicas WHERE repo = $1 ORDER BY node";

/// Every repository name.
pub const LIST_REPOS: &str = "SELECT repo FROM repositories ORDER BY repo";

/// Register (`repo`, generation, checksum) unless present.
pub const INSERT_REPO: &str =
    "INSERT INTO repositories (repo, generation, checksum) VALUES ($1, $2, $3)
     ON CONFLICT (repo) DO NOTHING";

/// Add or raise a replica: (`repo`, node, generation, checksum).
pub const UPSERT_REPLICA: &str =
    "INSERT INTO replicas (repo, node, generation, checksum) VALUES ($1, $2, $3, $4)
     ON CONFLICT (repo, node) DO UPDATE SET
        generation = CASE WHEN excluded.generation > replicas.generation
                          THEN excluded.generation ELSE replicas.generation END,
        checksum = CASE WHEN excluded.generation >= replicas.generation
                        THEN excluded.checksum ELSE replicas.checksum END";

/// Forget `repo` (replicas cascade).
pub const DELETE_REPO: &str = "DELETE FROM repositories WHERE repo = $1";

/// Set the primary: (`repo`, node).
pub const SET_PRIMARY: &str = "UPDATE repositories SET primary_node = $2 WHERE repo = $1";

/// Set the write marker: (`repo`, node, owner, started).
pub const BEGIN_WRITE: &str =
    "UPDATE repositories SET write_node = $2, write_owner = $3, write_started_ms = $4
     WHERE repo = $1";

/// Clear the write marker of `repo`.
pub const CLEAR_WRITE: &str =
    "UPDATE repositories SET write_node = NULL, write_owner = NULL, write_started_ms = NULL
     WHERE repo = $1";

/// Bump the generation, record the checksum, clear the marker: (`repo`, checksum) →
/// the new generation.
pub const BUMP_REPO: &str = "UPDATE repositories SET generation = generation + 1, checksum = $2,
        write_node = NULL, write_owner = NULL, write_started_ms = NULL
     WHERE repo = $1 RETURNING generation";

/// Give a holder the new generation: (`repo`, node, generation, checksum).
pub const SET_REPLICA: &str =
    "INSERT INTO replicas (repo, node, generation, checksum) VALUES ($1, $2, $3, $4)
     ON CONFLICT (repo, node) DO UPDATE SET generation = excluded.generation,
        checksum = excluded.checksum";

/// Queue or re-arm a job: (`repo`, target, kind, now). Re-arming drops a running
/// job's lease, so its worker cannot complete it: the new change must be copied too.
pub const ENQUEUE: &str =
    "INSERT INTO replication_jobs (repo, target, kind, attempts, created_ms, not_before_ms)
     VALUES ($1, $2, $3, 0, $4, $4)
     ON CONFLICT (repo, target) DO UPDATE SET kind = excluded.kind,
        lease_owner = NULL, lease_expires_ms = NULL,
        not_before_ms = CASE WHEN replication_jobs.not_before_ms < excluded.not_before_ms
                             THEN replication_jobs.not_before_ms ELSE excluded.not_before_ms END";

/// Queue a job unless one exists: (`repo`, target, kind, now).
pub const ENSURE: &str =
    "INSERT INTO replication_jobs (repo, target, kind, attempts, created_ms, not_before_ms)
     VALUES ($1, $2, $3, 0, $4, $4)
     ON CONFLICT (repo, target) DO NOTHING";

/// Drop every lease (the embedded store's single gateway restarted).
pub const RELEASE_ALL: &str =
    "UPDATE replication_jobs SET lease_owner = NULL, lease_expires_ms = NULL WHERE lease_owner IS NOT NULL";

/// Lease due jobs (PostgreSQL): (owner, now, lease expiry, limit).
pub const CLAIM_POSTGRES: &str =
    "UPDATE replication_jobs SET lease_owner = $1, lease_expires_ms = $3, attempts = attempts + 1
     WHERE (repo, target) IN (
        SELECT repo, target FROM replication_jobs
        WHERE not_before_ms <= $2 AND (lease_owner IS NULL OR lease_expires_ms < $2)
        ORDER BY not_before_ms LIMIT $4
        FOR UPDATE SKIP LOCKED)
     RETURNING repo, target, kind, attempts, created_ms";

/// Lease due jobs (embedded, single writer): (owner, now, lease expiry, limit).
pub const CLAIM_EMBEDDED: &str =
    "UPDATE replication_jobs SET lease_owner = $1, lease_expires_ms = $3, attempts = attempts + 1
     WHERE (repo, target) IN (
        SELECT repo, target FROM replication_jobs
        WHERE not_before_ms <= $2 AND (lease_owner IS NULL OR lease_expires_ms < $2)
        ORDER BY not_before_ms LIMIT $4)
     RETURNING repo, target, kind, attempts, created_ms";

/// Extend a running job's lease: (`repo`, target, owner, new expiry).
pub const RENEW: &str = "UPDATE replication_jobs SET lease_expires_ms = $4
     WHERE repo = $1 AND target = $2 AND lease_owner = $3";

/// Remove a finished job: (`repo`, target, owner).
pub const COMPLETE: &str =
    "DELETE FROM replication_jobs WHERE repo = $1 AND target = $2 AND lease_owner = $3";

/// Hand a failed job back: (`repo`, target, owner, error, not before).
pub const RETRY: &str = "UPDATE replication_jobs SET lease_owner = NULL, lease_expires_ms = NULL,
        last_error = $4, not_before_ms = $5
     WHERE repo = $1 AND target = $2 AND lease_owner = $3";

/// Make a target's waiting jobs due: (target, now).
pub const WAKE: &str = "UPDATE replication_jobs SET not_before_ms = $2
     WHERE target = $1 AND lease_owner IS NULL AND not_before_ms > $2";

/// The jobs of `repo`.
pub const JOBS_OF: &str = "SELECT repo, target, kind, attempts, created_ms FROM replication_jobs
     WHERE repo = $1 ORDER BY target";

/// Counts by state at `now`: queued, running, retrying.
pub const JOB_COUNTS: &str = "SELECT
        COALESCE(SUM(CASE WHEN (lease_owner IS NULL OR lease_expires_ms < $1) AND attempts = 0 THEN 1 ELSE 0 END), 0),
        COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL AND lease_expires_ms >= $1 THEN 1 ELSE 0 END), 0),
        COALESCE(SUM(CASE WHEN (lease_owner IS NULL OR lease_expires_ms < $1) AND attempts > 0 THEN 1 ELSE 0 END), 0)
     FROM replication_jobs";
