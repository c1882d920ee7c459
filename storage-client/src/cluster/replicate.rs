//! Bringing replicas up to date: one replication ([`Cluster::replicate_one`]) and the
//! workers that run queued jobs with retries and backoff.
//!
//! A replication reads the record, picks the most advanced healthy replica as the
//! source ([`routing::sources`]), and has the target node fetch every ref from it
//! (prune, HEAD too). The target is then recorded at the source's generation read
//! before the fetch: never higher than what it was copied from, and never lowered.
//!
//! A copy into a target runs only under that target's job lease (claimed by a worker,
//! or taken with [`Cluster::replicate_now`] by a `sync` write), so two gateways never
//! copy into one target at once. A new change for a target whose job is queued or
//! running is noted on the job (its version), never resetting its backoff or its
//! lease: the running copy then makes one more pass, however many pushes came in.

use std::sync::Arc;
use std::time::Duration;

use gitgate_proto::RepoPath;
use tokio_util::task::AbortOnDropHandle;

use super::{Cluster, ClusterError};
use std::time::Instant;

use super::routing;
use crate::metadata::{Job, JobKind, QueueMode, NO_COPY};
use crate::nodes::NodeId;

/// How long a claimed job belongs to this gateway before others may take it over;
/// renewed every third of it while the job runs.
const LEASE: Duration = Duration::from_secs(60);
/// How soon workers look for due jobs again when nothing woke them (jobs queued by
/// another gateway, and retries coming due, are found this way).
const POLL: Duration = Duration::from_millis(200);
/// The longest pause between looks: each look that finds nothing doubles the pause up
/// to this, and any job or wake-up brings it back to [`POLL`]. An idle gateway asks the
/// metadata store about once a second instead of five times, which matters to a shared
/// PostgreSQL under a fleet.
const POLL_IDLE_MAX: Duration = Duration::from_secs(2);
/// How often the job counts and the replication lag are published.
const COUNT_EVERY: Duration = Duration::from_secs(1);
/// The first retry delay; doubled per attempt up to `max_retry_delay`.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// What replication keeps: the workers' wake-up and the copies running here.
#[derive(Default)]
pub(super) struct ReplicationState {
    /// Wakes the replication workers when jobs were queued.
    pub(super) jobs_queued: tokio::sync::Notify,
    /// One replication at a time per (repository, target) in this process.
    pub(super) replicating: crate::metadata::LocalLocks<(RepoPath, NodeId)>,
}

impl Cluster {
    /// Bring `target`'s replica of `repo` up to date from the most advanced healthy
    /// replica. Nothing happens when no replica is ahead of it. The caller holds the
    /// target's job lease.
    pub(crate) async fn replicate_one(
        &self,
        repo: &RepoPath,
        target: NodeId,
    ) -> Result<(), ClusterError> {
        let target_node = self.node(target);
        // One replication per replica at a time in this gateway.
        let key = (repo.clone(), target);
        let _one = self
            .replication
            .replicating
            .lock_for(&key, LEASE)
            .await
            .ok_or_else(|| ClusterError::Busy(repo.clone()))?;
        let record = self
            .store
            .get(repo)
            .await?
            .ok_or_else(|| ClusterError::NotFound(repo.clone()))?;
        let current = record
            .replica(target_node.name())
            .map_or(NO_COPY, |r| r.generation);
        let Some((generation, mut sources)) = routing::sources(
            &record,
            target,
            current,
            |name| self.index_of(name),
            |id| self.healthy(id),
        ) else {
            if current >= record.generation {
                return Ok(());
            }
            return Err(self.unavailable(&record, "be copied from"));
        };
        // Prefer the primary: it is the one that certainly has the last write.
        if let Some(primary) = record.primary.as_deref().and_then(|p| self.index_of(p)) {
            if let Some(at) = sources.iter().position(|&i| i == primary) {
                sources.swap(0, at);
            }
        }
        let mut last = None;
        for source in sources {
            let source_node = self.node(source);
            let state = match source_node.state(repo).await {
                Ok(state) if state.exists => state,
                Ok(_) => {
                    tracing::warn!(repo = %repo, node = source_node.name(), "up-to-date replica is missing on its node");
                    last = Some(ClusterError::Unavailable(format!(
                        "the up-to-date replica of {repo} on {} is missing",
                        source_node.name()
                    )));
                    continue;
                }
                Err(err) => {
                    if err.is_unavailable() {
                        self.health.report_failure(source);
                    }
                    last = Some(err.into());
                    continue;
                }
            };
            match target_node
                .replicate_from(repo, source_node, state.head.as_deref(), self.nodes.nodes())
                .await
            {
                Ok(copied) => {
                    self.record_copy(
                        repo,
                        target_node.name(),
                        generation,
                        copied.checksum.as_deref(),
                    )
                    .await?;
                    tracing::info!(
                        repo = %repo,
                        source = source_node.name(),
                        target = target_node.name(),
                        generation,
                        "replicated"
                    );
                    return Ok(());
                }
                Err(err) if err.is_unavailable() => {
                    self.health.report_failure(target);
                    return Err(err.into());
                }
                Err(err) => last = Some(err.into()),
            }
        }
        Err(last.unwrap_or_else(|| self.unavailable(&record, "be copied from")))
    }

    /// Copy into `target` now (a `sync` write or the push advertisement's quorum), under
    /// the target's job lease: waits up to `lock_timeout` for a copy another gateway
    /// runs into it. Afterwards the job is complete, or due again if a change came in.
    pub(crate) async fn replicate_now(
        &self,
        repo: &RepoPath,
        target: NodeId,
    ) -> Result<(), ClusterError> {
        let owner = &self.settings.owner;
        let name = self.node_name(target);
        let deadline = tokio::time::Instant::now() + self.settings.lock_timeout;
        let mut pause = Duration::from_millis(5);
        let job = loop {
            if let Some(job) = self
                .store
                .lease_target(repo, name, owner, Self::now_ms(), LEASE)
                .await?
            {
                break job;
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(ClusterError::Busy(repo.clone()));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        };
        let started = Instant::now();
        let result = tokio::select! {
            result = self.replicate_one(repo, target) => result,
            never = self.keep_lease(&job, owner) => match never {},
        };
        match &result {
            Ok(()) => {
                self.metrics.replications.with_label_values(&["ok"]).inc();
                self.metrics
                    .latency
                    .observe(started.elapsed().as_secs_f64());
                self.finish_job(&job, owner).await;
            }
            Err(err) => {
                self.metrics
                    .replications
                    .with_label_values(&["error"])
                    .inc();
                let due = Self::now_ms()
                    .saturating_add(i64::try_from(FIRST_RETRY.as_millis()).unwrap_or(i64::MAX));
                if let Err(err) = self.store.retry(&job, owner, &err.to_string(), due).await {
                    tracing::warn!(error = %err, "could not hand a failed copy back to the workers");
                }
                // Looking again soon finds it when it comes due.
                self.replication.jobs_queued.notify_one();
            }
        }
        result
    }

    /// Queue `kind` jobs for `targets` of `repo` and wake the workers.
    pub(crate) async fn queue(
        &self,
        repo: &RepoPath,
        targets: &[&str],
        kind: JobKind,
    ) -> Result<(), ClusterError> {
        let now = Self::now_ms();
        for target in targets {
            self.store
                .enqueue(repo, target, kind, now, QueueMode::Rearm)
                .await?;
        }
        self.replication.jobs_queued.notify_one();
        Ok(())
    }

    /// Run replication jobs until the handle is dropped: up to `settings.workers` at
    /// once, woken by new jobs, by nodes coming back, or by a poll (every 200 ms, backing
    /// off to every 2 s while there is nothing to do).
    pub fn spawn_workers(self: &Arc<Self>) -> AbortOnDropHandle<()> {
        let cluster = self.clone();
        AbortOnDropHandle::new(tokio::spawn(async move { cluster.work().await }))
    }

    async fn work(self: Arc<Self>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.settings.workers.max(1)));
        // The running jobs: owned here, so stopping the workers stops them too.
        let mut running = tokio::task::JoinSet::new();
        let mut health = self.health.subscribe();
        let mut was_healthy: Vec<bool> = self.nodes.ids().map(|i| self.healthy(i)).collect();
        let mut counted = tokio::time::Instant::now() - COUNT_EVERY;
        let mut pause = POLL;
        loop {
            let now = Self::now_ms();
            if counted.elapsed() >= COUNT_EVERY {
                counted = tokio::time::Instant::now();
                self.publish_counts().await;
            }
            let free = slots.available_permits();
            let claimed = if free == 0 {
                Vec::new()
            } else {
                let limit = i64::try_from(free).unwrap_or(i64::MAX);
                match self
                    .store
                    .claim(&self.settings.owner, now, LEASE, limit)
                    .await
                {
                    Ok(jobs) => jobs,
                    Err(err) => {
                        tracing::warn!(error = %err, "could not claim replication jobs");
                        Vec::new()
                    }
                }
            };
            let idle = claimed.is_empty();
            for job in claimed {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    break;
                };
                let cluster = self.clone();
                running.spawn(async move {
                    cluster.run_job(job).await;
                    drop(permit);
                    cluster.replication.jobs_queued.notify_one();
                });
            }
            if !idle && slots.available_permits() > 0 {
                continue;
            }
            // Reap finished jobs (a panicked one is logged, never silent).
            while let Some(done) = running.try_join_next() {
                if let Err(err) = done {
                    tracing::error!(error = %err, "replication job task failed");
                }
            }
            // Wait for a reason to look again, publishing the counts every
            // COUNT_EVERY meanwhile, however long the pause.
            let look = tokio::time::Instant::now() + pause;
            loop {
                tokio::select! {
                    () = self.replication.jobs_queued.notified() => {
                        pause = POLL;
                        break;
                    }
                    () = tokio::time::sleep_until(look) => {
                        pause = if idle { (pause * 2).min(POLL_IDLE_MAX) } else { POLL };
                        break;
                    }
                    () = tokio::time::sleep_until(counted + COUNT_EVERY) => {
                        counted = tokio::time::Instant::now();
                        self.publish_counts().await;
                    }
                    changed = health.changed() => {
                        pause = POLL;
                        if changed.is_ok() {
                            self.wake_recovered(&mut was_healthy).await;
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Publish the job counts and the replication lag.
    async fn publish_counts(&self) {
        let now = Self::now_ms();
        match self.store.job_counts(now).await {
            Ok(counts) => self.metrics.set_jobs(counts, now),
            Err(err) => tracing::warn!(error = %err, "could not count replication jobs"),
        }
    }

    /// Make the jobs of nodes that just came back due now.
    async fn wake_recovered(&self, was_healthy: &mut [bool]) {
        for (i, was) in self.nodes.ids().zip(was_healthy.iter_mut()) {
            let now_healthy = self.healthy(i);
            if now_healthy && !*was {
                let name = self.node(i).name();
                if let Err(err) = self.store.wake(name, Self::now_ms()).await {
                    tracing::warn!(node = name, error = %err, "could not wake replication jobs");
                }
            }
            *was = now_healthy;
        }
    }

    fn retry_delay(&self, attempts: i32) -> Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        FIRST_RETRY
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.settings.max_retry_delay)
    }

    async fn run_job(&self, job: Job) {
        let owner = self.settings.owner.clone();
        let Some(target) = self.index_of(&job.target) else {
            tracing::warn!(repo = %job.repo, node = %job.target, "dropping job for a node that is no longer configured");
            self.finish_job(&job, &owner).await;
            return;
        };
        let result = if !self.healthy(target) {
            Err(ClusterError::Unavailable(format!(
                "node {} is down",
                job.target
            )))
        } else {
            let work = async {
                match job.kind {
                    JobKind::Update => self.replicate_one(&job.repo, target).await,
                    JobKind::Delete => match self.node(target).delete(&job.repo).await {
                        Err(err) if !err.is_not_found() => Err(err.into()),
                        _ => Ok(()),
                    },
                }
            };
            tokio::select! {
                result = work => result,
                never = self.keep_lease(&job, &owner) => match never {},
            }
        };
        match result {
            Ok(()) | Err(ClusterError::NotFound(_)) => {
                if job.kind == JobKind::Update {
                    self.metrics.replications.with_label_values(&["ok"]).inc();
                    let waited = Self::now_ms().saturating_sub(job.created_ms);
                    #[allow(clippy::cast_precision_loss)]
                    self.metrics.latency.observe(waited as f64 / 1000.0);
                }
                self.finish_job(&job, &owner).await;
            }
            Err(err) => {
                self.metrics
                    .replications
                    .with_label_values(&["error"])
                    .inc();
                let delay = self.retry_delay(job.attempts);
                tracing::warn!(
                    repo = %job.repo,
                    node = %job.target,
                    attempts = job.attempts,
                    retry_in = ?delay,
                    error = %err,
                    "replication failed"
                );
                let due = Self::now_ms()
                    .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                if let Err(err) = self.store.retry(&job, &owner, &err.to_string(), due).await {
                    tracing::warn!(error = %err, "could not reschedule replication job");
                }
            }
        }
    }

    /// Renew `owner`'s lease on `job` while it runs, so a long copy keeps its job and
    /// a gateway that died gives its jobs up within one lease.
    async fn keep_lease(&self, job: &Job, owner: &str) -> std::convert::Infallible {
        let mut tick = tokio::time::interval(LEASE / 3);
        tick.tick().await;
        loop {
            tick.tick().await;
            let expires =
                Self::now_ms().saturating_add(i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX));
            match self.store.renew(job, owner, expires).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(repo = %job.repo, node = %job.target, "job re-armed or taken over while running")
                }
                Err(err) => {
                    tracing::warn!(repo = %job.repo, error = %err, "could not renew a replication lease")
                }
            }
        }
    }

    async fn finish_job(&self, job: &Job, owner: &str) {
        match self.store.complete(job, owner, Self::now_ms()).await {
            Ok(true) => {}
            Ok(false) => {
                // A change came in while it ran: one more pass, at once.
                self.replication.jobs_queued.notify_one();
            }
            Err(err) => tracing::warn!(error = %err, "could not complete replication job"),
        }
    }
}
