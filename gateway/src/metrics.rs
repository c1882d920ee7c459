//! The gateway's own metric families, registered once on the gateway's registry.
//!
//! Labels stay bounded: service, protocol, status code, node name, outcome; never a
//! repository or a user. The pack cache, the storage tier (node calls, read
//! distribution, replication) and in-process nodes register their own families on the
//! same registry.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Metric families of the request path.
#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    /// `gitgate_http_requests_total{service,protocol,code}`.
    pub requests: IntCounterVec,
    /// `gitgate_http_request_duration_seconds{service}`: until the response body ended.
    pub duration: HistogramVec,
    /// `gitgate_client_authentications_total{method,result}`.
    pub client_auth: IntCounterVec,
    /// `gitgate_concurrency_in_progress`: node-bound fetches holding a slot.
    pub in_progress: IntGauge,
    /// `gitgate_concurrency_queued`: fetches waiting for a slot.
    pub queued: IntGauge,
    /// `gitgate_connections_refused_total{reason=total|per_client}`.
    pub connections_refused: IntCounterVec,
    /// `gitgate_concurrency_rejected_total{reason=queue_full|queue_timeout}`.
    pub rejected: IntCounterVec,
}

impl GatewayMetrics {
    /// Create and register the families.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "gitgate_http_requests_total",
                    "HTTP requests by git service, protocol and status code.",
                ),
                &["service", "protocol", "code"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "gitgate_http_request_duration_seconds",
                    "Time from request to the end of the response body.",
                )
                .buckets(vec![
                    0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0, 120.0, 600.0,
                ]),
                &["service"],
            )?,
            client_auth: IntCounterVec::new(
                Opts::new(
                    "gitgate_client_authentications_total",
                    "Client authorization decisions by credential kind.",
                ),
                &["method", "result"],
            )?,
            connections_refused: IntCounterVec::new(
                Opts::new(
                    "gitgate_connections_refused_total",
                    "Connections refused at accept for being over a connection limit.",
                ),
                &["reason"],
            )?,
            in_progress: IntGauge::new(
                "gitgate_concurrency_in_progress",
                "Node-bound fetches holding a concurrency slot.",
            )?,
            queued: IntGauge::new(
                "gitgate_concurrency_queued",
                "Fetches waiting for a concurrency slot.",
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "gitgate_concurrency_rejected_total",
                    "Fetches refused by the per-repository limit.",
                ),
                &["reason"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.client_auth.clone()))?;
        registry.register(Box::new(m.connections_refused.clone()))?;
        for reason in ["total", "per_client"] {
            m.connections_refused.with_label_values(&[reason]);
        }
        registry.register(Box::new(m.in_progress.clone()))?;
        registry.register(Box::new(m.queued.clone()))?;
        registry.register(Box::new(m.rejected.clone()))?;
        for reason in ["queue_full", "queue_timeout"] {
            m.rejected.with_label_values(&[reason]);
        }
        Ok(m)
    }
}
