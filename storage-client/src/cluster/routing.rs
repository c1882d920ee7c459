//! Routing decisions as pure functions over one repository's record: which replicas may
//! serve, the order reads try them in, who the primary is, and what a quorum is.
//!
//! Nothing here does IO or reads a clock: node lookup and health come in as functions,
//! the read rotation as a number. [`super::Cluster`] feeds them the live state; the unit
//! tests feed them tables.
//!
//! Rules:
//! - a replica serves only if its node is configured, healthy, and it holds the
//!   repository's current generation (never a stale read);
//! - while a push runs, reads stay on its primary, so a fetch never asks a replica for a
//!   ref only the primary has yet;
//! - the primary stays while it serves; otherwise the first serving replica becomes it;
//! - a quorum is a majority of the configured replicas.

use crate::metadata::RepoRecord;
use crate::nodes::NodeId;

/// The replicas of `record` that can serve, in record order: configured (`locate`
/// finds their node), healthy, and at the current generation.
pub fn serving(
    record: &RepoRecord,
    locate: impl Fn(&str) -> Option<NodeId>,
    healthy: impl Fn(NodeId) -> bool,
) -> Vec<NodeId> {
    record
        .replicas
        .iter()
        .filter(|r| r.generation == record.generation)
        .filter_map(|r| locate(&r.node))
        .filter(|&id| healthy(id))
        .collect()
}

/// The order a read tries `serving` in: only `writing` while a push runs on it (and it
/// serves), otherwise all of them starting at `turn` (modulo their count), so reads
/// spread.
pub fn read_order(mut serving: Vec<NodeId>, writing: Option<NodeId>, turn: u64) -> Vec<NodeId> {
    if let Some(primary) = writing.filter(|w| serving.contains(w)) {
        return vec![primary];
    }
    if !serving.is_empty() {
        let start = usize::try_from(turn % serving.len() as u64).unwrap_or(0);
        serving.rotate_left(start);
    }
    serving
}

/// The outcome of choosing a primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Election {
    /// The recorded primary still serves.
    Keep(NodeId),
    /// A new primary: the recorded one is gone, down or behind.
    Elect(NodeId),
    /// Nothing serves: no write can be taken.
    Nobody,
}

/// Keep `current` if it serves, else elect the first of `serving`.
pub fn elect(current: Option<NodeId>, serving: &[NodeId]) -> Election {
    match (current.filter(|c| serving.contains(c)), serving.first()) {
        (Some(kept), _) => Election::Keep(kept),
        (None, Some(&first)) => Election::Elect(first),
        (None, None) => Election::Nobody,
    }
}

/// Replicas that must hold a write before `sync` mode acknowledges it, out of
/// `replicas` configured ones.
pub fn majority(replicas: usize) -> usize {
    replicas / 2 + 1
}

/// How many of `record`'s configured replicas hold its current generation, healthy or
/// not.
pub fn holding(record: &RepoRecord, locate: impl Fn(&str) -> Option<NodeId>) -> usize {
    record
        .replicas
        .iter()
        .filter(|r| locate(&r.node).is_some() && r.generation == record.generation)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{ReplicaRecord, NO_COPY};
    use gitgate_proto::RepoPath;

    fn id(i: usize) -> NodeId {
        NodeId::at(i)
    }

    /// A record at generation 10 with replicas `(node, generation)`.
    fn record(replicas: &[(&str, i64)]) -> RepoRecord {
        RepoRecord {
            repo: RepoPath::parse("g/r").expect("valid"),
            generation: 10,
            primary: None,
            checksum: None,
            write: None,
            replicas: replicas
                .iter()
                .map(|&(node, generation)| ReplicaRecord {
                    node: node.into(),
                    generation,
                    checksum: None,
                })
                .collect(),
        }
    }

    /// Nodes n0, n1, n2 are configured; `gone` is not.
    fn locate(name: &str) -> Option<NodeId> {
        name.strip_prefix('n')?.parse().ok().map(id)
    }

    #[test]
    fn only_configured_healthy_current_replicas_serve() {
        let r = record(&[("n0", 10), ("n1", 9), ("n2", 10), ("gone", 10), ("n3x", 10)]);
        assert_eq!(serving(&r, locate, |_| true), vec![id(0), id(2)]);
        assert_eq!(serving(&r, locate, |n| n != id(2)), vec![id(0)]);
        let stale = record(&[("n0", 9), ("n1", NO_COPY)]);
        assert!(serving(&stale, locate, |_| true).is_empty());
    }

    #[test]
    fn reads_rotate_and_stay_on_a_pushing_primary() {
        let all = vec![id(0), id(1), id(2)];
        assert_eq!(read_order(all.clone(), None, 0), all);
        assert_eq!(read_order(all.clone(), None, 4), vec![id(1), id(2), id(0)]);
        let firsts: std::collections::BTreeSet<NodeId> = (0..3)
            .map(|t| read_order(all.clone(), None, t)[0])
            .collect();
        assert_eq!(firsts.len(), 3, "every replica gets first place");
        assert_eq!(read_order(all.clone(), Some(id(2)), 7), vec![id(2)]);
        // A pushing primary that does not serve (down, behind) pins nothing.
        assert_eq!(read_order(vec![id(0)], Some(id(2)), 1), vec![id(0)]);
        assert!(read_order(Vec::new(), None, 3).is_empty());
    }

    #[test]
    fn election_keeps_a_serving_primary_and_replaces_others() {
        let serving = [id(1), id(2)];
        assert_eq!(elect(Some(id(2)), &serving), Election::Keep(id(2)));
        assert_eq!(elect(Some(id(0)), &serving), Election::Elect(id(1)));
        assert_eq!(elect(None, &serving), Election::Elect(id(1)));
        assert_eq!(elect(Some(id(0)), &[]), Election::Nobody);
    }

    #[test]
    fn quorum_is_a_majority_of_configured_replicas() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(5), 3);
        let r = record(&[("n0", 10), ("n1", 9), ("n2", 10), ("gone", 10)]);
        assert_eq!(holding(&r, locate), 2);
    }
}
