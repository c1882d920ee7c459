//! Which nodes hold a new repository: rendezvous hashing over the node names, so every
//! gateway picks the same nodes and repositories spread evenly across them.

/// The `factor` node indexes (of `names`) that should hold `repo`, best first.
pub fn nodes_for(repo: &str, names: &[&str], factor: usize) -> Vec<usize> {
    let mut scored: Vec<(blake3::Hash, usize)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut hasher = blake3::Hasher::new();
            hasher.update(repo.as_bytes());
            hasher.update(&[0]);
            hasher.update(name.as_bytes());
            (hasher.finalize(), i)
        })
        .collect();
    scored.sort_by(|a, b| b.0.as_bytes().cmp(a.0.as_bytes()));
    scored
        .into_iter()
        .take(factor.max(1))
        .map(|(_, i)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_distinct_and_spread() {
        let names = ["a", "b", "c", "d"];
        let picked = nodes_for("x.git", &names, 3);
        assert_eq!(picked, nodes_for("x.git", &names, 3));
        let mut unique = picked.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 3);
        assert_eq!(
            nodes_for("x.git", &names, 9).len(),
            4,
            "capped by node count"
        );
        let mut firsts = [0usize; 4];
        for i in 0..400 {
            firsts[nodes_for(&format!("r{i}.git"), &names, 1)[0]] += 1;
        }
        assert!(firsts.iter().all(|&n| n > 50), "uneven spread: {firsts:?}");
    }
}
