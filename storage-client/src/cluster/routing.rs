//! Routing decisions as pure functions over one repository's record: which replicas may
//! serve, the order reads try them in, who the primary is, and what a quorum is.
//!
//! Nothing here does IO or reads a clock: node lookup and health come in as functions,
//! the read rotation as a number. [`super::Cluster`] feeds them the live state; the unit
//! tests feed them tables.
//!
//! Rules:
//! - a replica serves only if its node is configured and healthy and its state holds
//!   every acknowledged write (generation at least [`RepoRecord::acked`]); of those, the
//!   most advanced group serves, so a read is never older than the last acknowledged
//!   push;
//! - in `sync` mode, a generation beyond the acknowledged one (a push never
//!   acknowledged: its gateway died, or it missed its quorum) serves only once a
//!   majority of the replicas hold it: a lone holder's refs are never served. In
//!   `async` mode it serves like any other (the primary alone holds every new write
//!   there until replication);
//! - a copy takes the most advanced state any healthy replica has, acknowledged or
//!   not, so an unacknowledged push spreads when nothing newer was acknowledged, and is
//!   replaced when something was;
//! - while a push runs, its primary's refs change before anything is recorded. In
//!   `async` mode the push is served from the primary alone once recorded, so reads
//!   stay on the primary meanwhile; in `sync` mode it is served only once a majority
//!   holds it, so reads keep off the primary meanwhile (unless nothing else serves).
//!   Either way a read of one request never mixes states. A client's advertisement and
//!   its fetch are two requests, though, and may still reach replicas a copy has not
//!   yet made equal (a replica copied to ahead of its record, one catching up): a fetch
//!   a replica refuses as "not our ref" goes on to the next one (`read.rs`);
//! - the primary stays while it serves; otherwise the first serving replica becomes it;
//! - a quorum is a majority of the configured replicas.

use crate::metadata::{RepoRecord, NO_COPY};
use crate::nodes::NodeId;

/// The replicas of `record` that may serve reads and take writes, in record order, and
/// the generation they hold; `None` when none may (see the module rules).
/// `quorum_for_unacknowledged` is the `sync` mode rule.
pub fn serving(
    record: &RepoRecord,
    quorum_for_unacknowledged: bool,
    locate: impl Fn(&str) -> Option<NodeId>,
    healthy: impl Fn(NodeId) -> bool,
) -> Option<(i64, Vec<NodeId>)> {
    let configured: Vec<(i64, NodeId)> = record
        .replicas
        .iter()
        .filter_map(|r| locate(&r.node).map(|id| (r.generation, id)))
        .collect();
    let needed = majority(configured.len());
    let mut generations: Vec<i64> = configured
        .iter()
        .map(|&(g, _)| g)
        .filter(|&g| g >= record.acked && g != NO_COPY)
        .collect();
    generations.sort_unstable_by(|a, b| b.cmp(a));
    generations.dedup();
    for generation in generations {
        let at = || configured.iter().filter(move |&&(g, _)| g == generation);
        if quorum_for_unacknowledged && generation > record.acked && at().count() < needed {
            continue;
        }
        let up: Vec<NodeId> = at().map(|&(_, id)| id).filter(|&id| healthy(id)).collect();
        if !up.is_empty() {
            return Some((generation, up));
        }
    }
    None
}

/// Where a copy into `target` comes from: the healthy replicas (other than `target`)
/// holding the most advanced generation any of them has, and that generation; `None`
/// when none is ahead of `target_generation`.
pub fn sources(
    record: &RepoRecord,
    target: NodeId,
    target_generation: i64,
    locate: impl Fn(&str) -> Option<NodeId>,
    healthy: impl Fn(NodeId) -> bool,
) -> Option<(i64, Vec<NodeId>)> {
    let up: Vec<(i64, NodeId)> = record
        .replicas
        .iter()
        .filter_map(|r| locate(&r.node).map(|id| (r.generation, id)))
        .filter(|&(_, id)| id != target && healthy(id))
        .collect();
    let best = up.iter().map(|&(g, _)| g).max()?;
    (best > target_generation && best != NO_COPY).then(|| {
        (
            best,
            up.iter()
                .filter(|&&(g, _)| g == best)
                .map(|&(_, id)| id)
                .collect(),
        )
    })
}

/// The order a read tries `serving` in while a push runs on `writing` (if any): only
/// the primary when the push will be served from it first (`async`), everything but
/// the primary when it will be served only from a majority (`sync`, unless the primary
/// is all there is). Otherwise all of them, starting at `turn` (modulo their count), so
/// reads spread.
pub fn read_order(
    mut serving: Vec<NodeId>,
    writing: Option<NodeId>,
    write_served_from_primary: bool,
    turn: u64,
) -> Vec<NodeId> {
    if let Some(primary) = writing.filter(|w| serving.contains(w)) {
        if write_served_from_primary {
            return vec![primary];
        }
        if serving.len() > 1 {
            serving.retain(|&n| n != primary);
        }
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
    use crate::metadata::ReplicaRecord;
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
            acked: 10,
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
        assert_eq!(
            serving(&r, true, locate, |_| true),
            Some((10, vec![id(0), id(2)]))
        );
        assert_eq!(
            serving(&r, true, locate, |n| n != id(2)),
            Some((10, vec![id(0)]))
        );
        let stale = record(&[("n0", 9), ("n1", NO_COPY)]);
        assert_eq!(serving(&stale, true, locate, |_| true), None);
        // Older than the acknowledged generation: never, even with the others down.
        assert_eq!(serving(&r, true, locate, |n| n == id(1)), None);
    }

    #[test]
    fn an_unacknowledged_generation_serves_only_from_a_majority() {
        // A push reached n0 alone and was not acknowledged: generation 11, acked 10.
        let mut r = record(&[("n0", 11), ("n1", 10), ("n2", 10)]);
        r.generation = 11;
        assert_eq!(
            serving(&r, true, locate, |_| true),
            Some((10, vec![id(1), id(2)]))
        );
        // Its holder dead, the others still serve.
        assert_eq!(
            serving(&r, true, locate, |n| n != id(0)),
            Some((10, vec![id(1), id(2)]))
        );
        // Copied to a second replica, a majority holds it: it serves.
        let mut spread = record(&[("n0", 11), ("n1", 11), ("n2", 10)]);
        spread.generation = 11;
        assert_eq!(
            serving(&spread, true, locate, |_| true),
            Some((11, vec![id(0), id(1)]))
        );
        // Acknowledged (async mode), the primary alone holds it: only it serves, and
        // with it down nothing does rather than lose the acknowledged push.
        let mut acked = r.clone();
        acked.acked = 11;
        assert_eq!(
            serving(&acked, true, locate, |_| true),
            Some((11, vec![id(0)]))
        );
        assert_eq!(serving(&acked, true, locate, |n| n != id(0)), None);
        // In async mode the unacknowledged write serves from its holder, and with it
        // down the others (which hold every acknowledged write) take over.
        assert_eq!(
            serving(&r, false, locate, |_| true),
            Some((11, vec![id(0)]))
        );
        assert_eq!(
            serving(&r, false, locate, |n| n != id(0)),
            Some((10, vec![id(1), id(2)]))
        );
    }

    #[test]
    fn copies_come_from_the_most_advanced_healthy_replica() {
        let mut r = record(&[("n0", 11), ("n1", 10), ("n2", 9)]);
        r.generation = 11;
        assert_eq!(
            sources(&r, id(2), 9, locate, |_| true),
            Some((11, vec![id(0)]))
        );
        assert_eq!(
            sources(&r, id(2), 9, locate, |n| n != id(0)),
            Some((10, vec![id(1)]))
        );
        assert_eq!(sources(&r, id(1), 10, locate, |n| n != id(0)), None);
        assert_eq!(sources(&r, id(0), 11, locate, |_| true), None);
    }

    #[test]
    fn reads_rotate_and_stay_on_a_pushing_primary() {
        let all = vec![id(0), id(1), id(2)];
        assert_eq!(read_order(all.clone(), None, true, 0), all);
        assert_eq!(
            read_order(all.clone(), None, true, 4),
            vec![id(1), id(2), id(0)]
        );
        let firsts: std::collections::BTreeSet<NodeId> = (0..3)
            .map(|t| read_order(all.clone(), None, false, t)[0])
            .collect();
        assert_eq!(firsts.len(), 3, "every replica gets first place");
        // async: on the pushing primary; sync: off it, unless it is alone.
        assert_eq!(read_order(all.clone(), Some(id(2)), true, 7), vec![id(2)]);
        assert_eq!(
            read_order(all.clone(), Some(id(2)), false, 0),
            vec![id(0), id(1)]
        );
        assert_eq!(read_order(vec![id(2)], Some(id(2)), false, 0), vec![id(2)]);
        // A pushing primary that does not serve (down, behind) changes nothing.
        assert_eq!(read_order(vec![id(0)], Some(id(2)), true, 1), vec![id(0)]);
        assert!(read_order(Vec::new(), None, true, 3).is_empty());
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
