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
        write_started_ms BIGINT,
        acked_generation BIGINT
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
        version BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (repo, target)
    )",
    // The gateways of a fleet (see `peers`): each row lives until `expires_at`, by the
    // database's clock, unless its gateway renews it. Only a shared (PostgreSQL) store
    // has a fleet; the embedded one keeps the table empty.
    "CREATE TABLE IF NOT EXISTS gateways (
        url TEXT PRIMARY KEY,
        expires_at TIMESTAMPTZ NOT NULL
    )",
];

/// Columns added after the first schema, for stores created before them: (table,
/// column, definition). Each backend adds the ones its file or database lacks.
pub const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("repositories", "acked_generation", "BIGINT"),
    ("replication_jobs", "version", "BIGINT NOT NULL DEFAULT 0"),
];

/// `repo` → generation, primary, checksum, write marker, acknowledged generation.
pub const GET_REPO: &str =
    "SELECT generation, primary_node, checksum, write_node, write_owner, write_started_ms,
        COALESCE(acked_generation, generation)
     FROM repositories WHERE repo = $1";

/// `repo` → its replicas.
pub const GET_REPLICAS: &str =
    "SELECT node, generation, checksum FROM replicas WHERE repo = $1 ORDER BY node";

/// Every repository name.
pub const LIST_REPOS: &str = "SELECT repo FROM repositories ORDER BY repo";

/// Register (`repo`, generation, checksum) unless present; its state is acknowledged.
pub const INSERT_REPO: &str =
    "INSERT INTO repositories (repo, generation, checksum, acked_generation)
     VALUES ($1, $2, $3, $2)
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

/// Bump the generation, record the checksum, clear the marker, and when the new state
/// is acknowledged make it the acknowledged generation: (`repo`, checksum,
/// acknowledged) → the new generation.
pub const BUMP_REPO: &str = "UPDATE repositories SET generation = generation + 1, checksum = $2,
        acked_generation = CASE WHEN $3 THEN generation + 1
                                ELSE COALESCE(acked_generation, generation) END,
        write_node = NULL, write_owner = NULL, write_started_ms = NULL
     WHERE repo = $1 RETURNING generation";

/// Acknowledge a generation (never lowering the acknowledged one): (`repo`, generation).
pub const ACKNOWLEDGE: &str = "UPDATE repositories SET acked_generation = $2
     WHERE repo = $1 AND COALESCE(acked_generation, generation) < $2";

/// Give a holder the new generation: (`repo`, node, generation, checksum).
pub const SET_REPLICA: &str =
    "INSERT INTO replicas (repo, node, generation, checksum) VALUES ($1, $2, $3, $4)
     ON CONFLICT (repo, node) DO UPDATE SET generation = excluded.generation,
        checksum = excluded.checksum";

/// Queue a job, or note a new change on a queued or running one: (`repo`, target, kind,
/// now). A job that exists keeps its `not_before` (its backoff) and its lease (the
/// copy running now); its `version` goes up, so the worker running it makes another
/// pass instead of completing it ([`COMPLETE`]). Many pushes during one copy cost one
/// more copy.
pub const ENQUEUE: &str =
    "INSERT INTO replication_jobs (repo, target, kind, attempts, created_ms, not_before_ms, version)
     VALUES ($1, $2, $3, 0, $4, $4, 0)
     ON CONFLICT (repo, target) DO UPDATE SET kind = excluded.kind,
        version = replication_jobs.version + 1";

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
     RETURNING repo, target, kind, attempts, created_ms, version";

/// Lease due jobs (embedded, single writer): (owner, now, lease expiry, limit).
pub const CLAIM_EMBEDDED: &str =
    "UPDATE replication_jobs SET lease_owner = $1, lease_expires_ms = $3, attempts = attempts + 1
     WHERE (repo, target) IN (
        SELECT repo, target FROM replication_jobs
        WHERE not_before_ms <= $2 AND (lease_owner IS NULL OR lease_expires_ms < $2)
        ORDER BY not_before_ms LIMIT $4)
     RETURNING repo, target, kind, attempts, created_ms, version";

/// Take the lease of `repo`'s job for `target`, creating the job, unless another owner
/// holds it: (`repo`, target, now, owner, lease expiry). Returns the job when leased.
/// A synchronous copy takes it, so no two copies into one target ever overlap.
pub const LEASE_TARGET: &str =
    "INSERT INTO replication_jobs
        (repo, target, kind, attempts, created_ms, not_before_ms, version, lease_owner, lease_expires_ms)
     VALUES ($1, $2, 'update', 1, $3, $3, 0, $4, $5)
     ON CONFLICT (repo, target) DO UPDATE SET lease_owner = excluded.lease_owner,
        lease_expires_ms = excluded.lease_expires_ms
     WHERE replication_jobs.lease_owner IS NULL OR replication_jobs.lease_expires_ms < $3
     RETURNING repo, target, kind, attempts, created_ms, version";

/// Extend a running job's lease: (`repo`, target, owner, new expiry).
pub const RENEW: &str = "UPDATE replication_jobs SET lease_expires_ms = $4
     WHERE repo = $1 AND target = $2 AND lease_owner = $3";

/// Remove a finished job unless a change came in while it ran: (`repo`, target, owner,
/// version at claim).
pub const COMPLETE: &str = "DELETE FROM replication_jobs
     WHERE repo = $1 AND target = $2 AND lease_owner = $3 AND version = $4";

/// A finished job that a change came in for while it ran: due again now, as a new
/// change: (`repo`, target, owner, now).
pub const AGAIN: &str = "UPDATE replication_jobs SET lease_owner = NULL, lease_expires_ms = NULL,
        attempts = 0, created_ms = $4, not_before_ms = $4
     WHERE repo = $1 AND target = $2 AND lease_owner = $3";

/// Hand a failed job back: (`repo`, target, owner, error, not before).
pub const RETRY: &str = "UPDATE replication_jobs SET lease_owner = NULL, lease_expires_ms = NULL,
        last_error = $4, not_before_ms = $5
     WHERE repo = $1 AND target = $2 AND lease_owner = $3";

/// Make a target's waiting jobs due: (target, now).
pub const WAKE: &str = "UPDATE replication_jobs SET not_before_ms = $2
     WHERE target = $1 AND lease_owner IS NULL AND not_before_ms > $2";

/// The jobs of `repo`.
pub const JOBS_OF: &str =
    "SELECT repo, target, kind, attempts, created_ms, version FROM replication_jobs
     WHERE repo = $1 ORDER BY target";

/// Counts by state at `now`: queued, running, retrying; and when the oldest change not
/// yet copied was queued (`now` when none).
pub const JOB_COUNTS: &str = "SELECT
        COALESCE(SUM(CASE WHEN (lease_owner IS NULL OR lease_expires_ms < $1) AND attempts = 0 THEN 1 ELSE 0 END), 0),
        COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL AND lease_expires_ms >= $1 THEN 1 ELSE 0 END), 0),
        COALESCE(SUM(CASE WHEN (lease_owner IS NULL OR lease_expires_ms < $1) AND attempts > 0 THEN 1 ELSE 0 END), 0),
        COALESCE(MIN(CASE WHEN kind = 'update' THEN created_ms END), $1)
     FROM replication_jobs";
