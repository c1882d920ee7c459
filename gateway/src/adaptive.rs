//! The adaptive per-client limit (`[limits] adaptive = true`): additive increase,
//! multiplicative decrease, like TCP's congestion window and Gitaly's adaptive limiter.
//!
//! Every `adaptive_interval` the controller looks at two signs that the storage tier is
//! saturated: a healthy node reporting at least `adaptive_git_per_core` running git
//! processes per core (from its health checks), or a node-bound fetch of the last
//! interval that waited longer than `adaptive_max_ttfb` for its first byte. Saturated:
//! the per-client limit is halved (not below `adaptive_min`). Otherwise it grows by
//! one, up to `client_concurrency`. Fetches already running keep their slots; the
//! new limit applies to the next ones. `gitgate_client_concurrency_limit` is the limit
//! now, `gitgate_adaptive_adjustments_total{direction}` counts the changes.

use std::sync::Arc;
use std::time::Duration;

use gitgate_storage_client::health::HealthMonitor;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio_util::task::AbortOnDropHandle;

use crate::limits::FetchLimits;

/// The controller's settings.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveSettings {
    /// How often the limit is reconsidered.
    pub interval: Duration,
    /// The floor of the limit.
    pub min: usize,
    /// Running git processes per core at which a node counts as saturated.
    pub git_per_core: u64,
    /// A first byte slower than this means saturation.
    pub max_ttfb: Duration,
}

/// The per-client limit's metrics.
pub struct LimitGauges {
    limit: IntGauge,
    adjustments: IntCounterVec,
}

impl LimitGauges {
    /// Register the families; the gauge starts at `limits`' current per-client limit.
    pub fn register(registry: &Registry, limits: &FetchLimits) -> Result<Self, prometheus::Error> {
        let limit = IntGauge::new(
            "gitgate_client_concurrency_limit",
            "The per-client limit on node-bound fetches now (0: off); moves in adaptive mode.",
        )?;
        let adjustments = IntCounterVec::new(
            Opts::new(
                "gitgate_adaptive_adjustments_total",
                "Changes of the adaptive per-client limit, by direction (up, down).",
            ),
            &["direction"],
        )?;
        registry.register(Box::new(limit.clone()))?;
        registry.register(Box::new(adjustments.clone()))?;
        let current = if limits.client_limit_ceiling() == 0 {
            0
        } else {
            limits.client_limit()
        };
        limit.set(i64::try_from(current).unwrap_or(i64::MAX));
        Ok(Self { limit, adjustments })
    }
}

/// The next limit after `current`: halved when `saturated` (not below `min`), else one
/// more (not above `ceiling`).
pub fn next_limit(current: usize, saturated: bool, min: usize, ceiling: usize) -> usize {
    let min = min.clamp(1, ceiling.max(1));
    if saturated {
        (current / 2).max(min)
    } else {
        (current + 1).min(ceiling).max(min)
    }
}

/// Run the controller until the returned handle is dropped.
pub fn spawn(
    limits: Arc<FetchLimits>,
    health: Arc<HealthMonitor>,
    settings: AdaptiveSettings,
    gauges: LimitGauges,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut tick = tokio::time::interval(settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let loaded = health
                .loads()
                .iter()
                .any(|load| load.saturated(settings.git_per_core));
            let slow = limits
                .take_slowest_ttfb()
                .is_some_and(|t| t > settings.max_ttfb);
            let current = limits.client_limit();
            let next = next_limit(
                current,
                loaded || slow,
                settings.min,
                limits.client_limit_ceiling(),
            );
            if next != current {
                limits.set_client_limit(next);
                let direction = if next < current { "down" } else { "up" };
                gauges.adjustments.with_label_values(&[direction]).inc();
                if next < current {
                    tracing::info!(
                        from = current,
                        to = next,
                        nodes_saturated = loaded,
                        slow_first_byte = slow,
                        "storage tier saturated: per-client limit lowered"
                    );
                } else {
                    tracing::debug!(from = current, to = next, "per-client limit raised");
                }
            }
            gauges.limit.set(i64::try_from(next).unwrap_or(i64::MAX));
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::next_limit;

    #[test]
    fn halves_under_saturation_and_grows_by_one() {
        assert_eq!(next_limit(16, true, 1, 16), 8);
        assert_eq!(next_limit(1, true, 1, 16), 1);
        assert_eq!(next_limit(5, true, 4, 16), 4);
        assert_eq!(next_limit(8, false, 1, 16), 9);
        assert_eq!(next_limit(16, false, 1, 16), 16);
        // A floor above the ceiling is the ceiling.
        assert_eq!(next_limit(2, true, 10, 4), 4);
    }
}
