//! The storage tier's metrics: calls to nodes by outcome, where reads went, the
//! replication job queue by state, how long replication takes, and how replications
//! and repairs end.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::metadata::JobCounts;

/// The storage tier's metric families.
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    /// `gitgate_backend_requests_total{node,result}`: calls to storage nodes.
    pub backend: IntCounterVec,
    /// `gitgate_read_distribution_total{node}`: fetches served by each node.
    pub read_distribution: IntCounterVec,
    /// `gitgate_replication_jobs{state}`: queued, running, retrying.
    pub jobs: IntGaugeVec,
    /// `gitgate_replication_latency_seconds`: from a replica falling behind (job queued,
    /// or the write in `sync` mode) until it holds the new generation.
    pub latency: Histogram,
    /// `gitgate_replications_total{result}`: ok or error.
    pub replications: IntCounterVec,
    /// `gitgate_repairs_total{kind}`: drift, marker, discovered, diverged.
    pub repairs: IntCounterVec,
    /// `gitgate_replication_lag_seconds`: how long ago the oldest change not yet
    /// copied to every replica was queued (0 when all replicas are up to date).
    pub lag: Gauge,
}

impl ClusterMetrics {
    /// Register the families with `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let backend = IntCounterVec::new(
            Opts::new(
                "gitgate_backend_requests_total",
                "Calls to storage nodes by outcome.",
            ),
            &["node", "result"],
        )?;
        let read_distribution = IntCounterVec::new(
            Opts::new(
                "gitgate_read_distribution_total",
                "Fetches sent to each storage node.",
            ),
            &["node"],
        )?;
        registry.register(Box::new(backend.clone()))?;
        registry.register(Box::new(read_distribution.clone()))?;
        let jobs = IntGaugeVec::new(
            Opts::new(
                "gitgate_replication_jobs",
                "Replication jobs in the metadata store, by state.",
            ),
            &["state"],
        )?;
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "gitgate_replication_latency_seconds",
                "Time from a replica falling behind until it holds the new generation.",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
            ]),
        )?;
        let replications = IntCounterVec::new(
            Opts::new(
                "gitgate_replications_total",
                "Replications of a repository to one node, by result.",
            ),
            &["result"],
        )?;
        let repairs = IntCounterVec::new(
            Opts::new(
                "gitgate_repairs_total",
                "Metadata repairs: drift found by checksum, write markers resolved, repositories discovered, disagreeing copies found.",
            ),
            &["kind"],
        )?;
        let lag = Gauge::new(
            "gitgate_replication_lag_seconds",
            "Age of the oldest change not yet copied to every replica.",
        )?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(replications.clone()))?;
        registry.register(Box::new(repairs.clone()))?;
        for state in ["queued", "running", "retrying"] {
            jobs.with_label_values(&[state]).set(0);
        }
        for result in ["ok", "error"] {
            replications.with_label_values(&[result]);
        }
        for kind in ["drift", "marker", "discovered", "diverged"] {
            repairs.with_label_values(&[kind]);
        }
        Ok(Self {
            backend,
            read_distribution,
            jobs,
            latency,
            replications,
            repairs,
            lag,
        })
    }

    pub(crate) fn set_jobs(&self, counts: JobCounts, now_ms: i64) {
        #[allow(clippy::cast_precision_loss)]
        self.lag
            .set(now_ms.saturating_sub(counts.oldest_ms).max(0) as f64 / 1000.0);
        self.jobs.with_label_values(&["queued"]).set(counts.queued);
        self.jobs
            .with_label_values(&["running"])
            .set(counts.running);
        self.jobs
            .with_label_values(&["retrying"])
            .set(counts.retrying);
    }
}
