//! Percentiles and medians, and the per-round figures of the hit comparisons.

use std::time::Duration;

/// The `p`-th percentile (0–100) of `values`, by nearest rank; zero when empty.
pub fn percentile(values: &[Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `values` (the lower middle for an even count); zero when empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[(sorted.len() - 1) / 2]
}

/// gitgate's hits against nginx's static file, round by round: what each round moved,
/// and the medians of both sides.
#[derive(Debug, Default)]
pub struct HitRounds {
    /// (bytes per second, server CPU seconds per GiB) of each round.
    gitgate: Vec<(f64, f64)>,
    nginx: Vec<(f64, f64)>,
}

/// The medians of [`HitRounds`].
#[derive(Debug, Clone, Copy)]
pub struct HitMedians {
    /// Aggregate bytes per second: gitgate hits, nginx static.
    pub hit_tp: f64,
    pub static_tp: f64,
    /// Server CPU seconds per GiB served.
    pub hit_cpu_per_gib: f64,
    pub static_cpu_per_gib: f64,
}

impl HitMedians {
    /// gitgate against nginx in one line: throughput and CPU per GiB, ratios first.
    pub fn summary(&self) -> String {
        let mib = |b: f64| b / (1 << 20) as f64;
        format!(
            "throughput {:.3}× ({:.0} vs {:.0} MiB/s), CPU per GiB {:.3}× ({:.3} vs {:.3} s)",
            self.hit_tp / self.static_tp.max(1.0),
            mib(self.hit_tp),
            mib(self.static_tp),
            self.hit_cpu_per_gib / self.static_cpu_per_gib.max(1e-9),
            self.hit_cpu_per_gib,
            self.static_cpu_per_gib
        )
    }
}

impl HitRounds {
    /// One round of `label` (gitgate's when `gitgate`): `bytes` in `wall` seconds for
    /// `cpu` server seconds; printed with `note`.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        round: usize,
        label: &str,
        gitgate: bool,
        bytes: u64,
        wall: f64,
        cpu: f64,
        note: &str,
    ) {
        let figures = (
            bytes as f64 / wall,
            cpu / (bytes as f64 / (1u64 << 30) as f64),
        );
        println!(
            "round {round} {label:<14} {:>7.0} MiB/s {:>6.3} CPU s/GiB{note}",
            figures.0 / (1 << 20) as f64,
            figures.1
        );
        if gitgate {
            self.gitgate.push(figures);
        } else {
            self.nginx.push(figures);
        }
    }

    /// The medians so far.
    pub fn medians(&self) -> HitMedians {
        let med = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
            median(&v.iter().map(f).collect::<Vec<_>>())
        };
        HitMedians {
            hit_tp: med(&self.gitgate, |x| x.0),
            static_tp: med(&self.nginx, |x| x.0),
            hit_cpu_per_gib: med(&self.gitgate, |x| x.1),
            static_cpu_per_gib: med(&self.nginx, |x| x.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.0);
    }
}
