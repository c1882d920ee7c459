//! Repository patterns in auth scopes: `team/*`, `oss/**`, `infra/tool-*`.
//!
//! A pattern is matched segment by segment: `*` within a segment matches any run of
//! characters in that segment, and a segment that is exactly `**` matches any number of
//! segments (zero included). Patterns are validated when the config is loaded.

use gitgate_proto::RepoPath;

/// A validated repository pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPattern {
    segments: Vec<String>,
}

impl RepoPattern {
    /// Parse `pattern`; segments are `**` or made of `[A-Za-z0-9._*-]`.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let pattern = pattern.strip_suffix(".git").unwrap_or(pattern);
        if pattern.is_empty() {
            return Err("empty repository pattern".into());
        }
        let mut segments = Vec::new();
        for segment in pattern.split('/') {
            let ok = segment == "**"
                || (!segment.is_empty()
                    && !segment.contains("**")
                    && !segment.starts_with('.')
                    && segment.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'*')
                    }));
            if !ok {
                return Err(format!(
                    "invalid segment {segment:?} in repository pattern {pattern:?}"
                ));
            }
            segments.push(segment.to_owned());
        }
        Ok(Self { segments })
    }

    /// Whether `repo` matches.
    pub fn matches(&self, repo: &RepoPath) -> bool {
        let parts: Vec<&str> = repo.as_str().split('/').collect();
        match_segments(&self.segments, &parts)
    }
}

fn match_segments(pattern: &[String], parts: &[&str]) -> bool {
    match pattern.split_first() {
        None => parts.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=parts.len()).any(|skip| match_segments(rest, &parts[skip..]))
        }
        Some((first, rest)) => match parts.split_first() {
            Some((part, more)) => {
                glob(first.as_bytes(), part.as_bytes()) && match_segments(rest, more)
            }
            None => false,
        },
    }
}

/// `*` matches any run of bytes within one segment.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob(rest, &text[skip..])),
        Some((c, rest)) => text
            .split_first()
            .is_some_and(|(t, more)| t == c && glob(rest, more)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, repo: &str) -> bool {
        RepoPattern::parse(pattern)
            .expect("pattern")
            .matches(&RepoPath::parse(repo).expect("repo"))
    }

    #[test]
    fn matches_segments_globs_and_double_stars() {
        assert!(m("team/*", "team/app"));
        assert!(!m("team/*", "team/sub/app"));
        assert!(!m("team/*", "teams/app"));
        assert!(m("team/**", "team/sub/app"));
        assert!(m("**", "anything/at/all"));
        assert!(m("infra/tool-*", "infra/tool-x"));
        assert!(!m("infra/tool-*", "infra/other"));
        assert!(m("a/**/z", "a/z"));
        assert!(m("a/**/z", "a/b/c/z"));
        assert!(m("exact.git", "exact"));
        assert!(!m("exact", "exact2"));
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in ["", "a//b", "a/***", "a/b c", "../x"] {
            assert!(RepoPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
