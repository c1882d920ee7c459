//! [`RepoPath`]: the only form in which a repository name travels through gitgate.
//!
//! A repository is named by a relative path of one to [`MAX_REPO_PATH_DEPTH`] segments,
//! each made of `[A-Za-z0-9._-]`, none starting with `.` or `-`, none ending in `.git`
//! (except that the whole path may carry one optional `.git` suffix, which is dropped).
//! These rules exclude `..`, absolute paths, percent-encoding, NUL and every other byte
//! that could make a filesystem path escape its root, so code that holds a `RepoPath`
//! may join it to a directory without further checks. Validation never touches a disk.

use std::fmt;

use crate::limits::{MAX_REPO_PATH_DEPTH, MAX_REPO_PATH_LEN, MAX_REPO_SEGMENT_LEN};

/// A validated repository path such as `group/project` (stored without `.git`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoPath(String);

/// Why a repository path was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InvalidRepoPath {
    /// The path was empty (or only a `.git` suffix).
    #[error("repository path is empty")]
    Empty,
    /// The path is longer than allowed.
    #[error("repository path is {len} bytes; at most {MAX_REPO_PATH_LEN} are allowed")]
    TooLong {
        /// Length of the path.
        len: usize,
    },
    /// The path has too many segments.
    #[error("repository path has {depth} segments; at most {MAX_REPO_PATH_DEPTH} are allowed")]
    TooDeep {
        /// Number of segments.
        depth: usize,
    },
    /// A segment is empty, too long, starts with `.` or `-`, ends in `.git` or holds a
    /// byte outside `[A-Za-z0-9._-]`.
    #[error("repository path segment {index} is not allowed: segments are 1-{MAX_REPO_SEGMENT_LEN} bytes of [A-Za-z0-9._-], not starting with '.' or '-' and not ending in '.git'")]
    BadSegment {
        /// Zero-based index of the segment.
        index: usize,
    },
}

impl RepoPath {
    /// Validate `path` (no leading slash; an optional `.git` suffix is dropped).
    pub fn parse(path: &str) -> Result<Self, InvalidRepoPath> {
        if path.len() > MAX_REPO_PATH_LEN + 4 {
            return Err(InvalidRepoPath::TooLong { len: path.len() });
        }
        let name = path.strip_suffix(".git").unwrap_or(path);
        if name.is_empty() {
            return Err(InvalidRepoPath::Empty);
        }
        if name.len() > MAX_REPO_PATH_LEN {
            return Err(InvalidRepoPath::TooLong { len: name.len() });
        }
        let depth = name.split('/').count();
        if depth > MAX_REPO_PATH_DEPTH {
            return Err(InvalidRepoPath::TooDeep { depth });
        }
        for (index, segment) in name.split('/').enumerate() {
            if !segment_ok(segment) {
                return Err(InvalidRepoPath::BadSegment { index });
            }
        }
        Ok(Self(name.to_owned()))
    }

    /// The path without `.git`, e.g. `group/project`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The bare repository's directory relative to a node root, e.g. `group/project.git`.
    pub fn relative_dir(&self) -> String {
        format!("{}.git", self.0)
    }
}

fn segment_ok(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REPO_SEGMENT_LEN
        && bytes[0] != b'.'
        && bytes[0] != b'-'
        && !segment.ends_with(".git")
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl fmt::Debug for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoPath({})", self.0)
    }
}

impl fmt::Display for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for (input, name) in [
            ("a", "a"),
            ("a.git", "a"),
            ("group/sub/project.git", "group/sub/project"),
            ("x_y-z.1", "x_y-z.1"),
        ] {
            assert_eq!(RepoPath::parse(input).map(|p| p.0), Ok(name.to_owned()));
        }
        assert_eq!(
            RepoPath::parse("g/p").map(|p| p.relative_dir()),
            Ok("g/p.git".to_owned())
        );
    }

    #[test]
    fn refuses_hostile_names() {
        for input in [
            "",
            ".git",
            "..",
            "../etc",
            "a/../b",
            "/abs",
            "a//b",
            "a/",
            ".hidden",
            "-rf",
            "a%2e%2e",
            "a\0b",
            "a b",
            "a\\b",
            "inner.git/x",
            "x.git.git",
            "ünïcode",
        ] {
            assert!(RepoPath::parse(input).is_err(), "{input:?} was accepted");
        }
        assert!(RepoPath::parse(&"a".repeat(300)).is_err());
        assert!(RepoPath::parse(&["a"; 9].join("/")).is_err());
    }
}
