//! The node's contract with its clients: everything `storage-client` (the gateway's side)
//! may use, and nothing of the server's internals.
//!
//! - the token scheme: [`Secret`] derives the MAC key from the shared secret and mints
//!   tokens (`v2.<unix seconds>.<nonce>.<scope>.<hex MAC>`, blake3 keyed over the time,
//!   the nonce, the node as addressed (`host:port`) and the scope: one request's method
//!   and path, used once, or reading one repository with git for a replica copy); the
//!   node checks them in its own `auth` module;
//! - the bodies of the admin API ([`ReplicateRequest`]) and the repository state it
//!   returns ([`RepoState`]);
//! - the byte streams of git services ([`GitStream`], [`RequestBody`],
//!   [`GitStreamError`]) and [`peek`], which waits for a stream's first bytes so a
//!   failure before any output can still get a proper status ([`REFUSED`] when git
//!   refused the request).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Request header on a receive-pack `info/refs`: when the repository does not exist,
/// answer with an empty repository's advertisement (a push will create it) instead of
/// 404. Nothing is created.
pub const EMPTY_IF_MISSING: &str = "gitgate-empty-if-missing";

/// The status of an upload-pack call git refused before answering anything (it died on
/// the request: a `deepen-not` naming no ref, a filter it cannot apply). The body is
/// git's message ([`GitStreamError::refusal`]). The node did not fail.
pub const REFUSED: http::StatusCode = http::StatusCode::UNPROCESSABLE_ENTITY;

pub use crate::process::{peek, GitStream, GitStreamError, RequestBody};
pub use crate::refstate::RepoState;

/// Context string for deriving the MAC key from the configured secret.
const KEY_CONTEXT: &str = "gitgate 2026 internal node auth v1";

/// Context string for the key of tokens between the gateways of a fleet: a fleet
/// secret reused as a node secret still never makes one kind of token pass as the
/// other.
const PEER_KEY_CONTEXT: &str = "gitgate 2026 gateway peer auth v1";

/// Default tolerated clock difference between gateway and node.
pub const DEFAULT_SKEW: Duration = Duration::from_secs(60);

/// A MAC key derived from a shared secret.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What a token allows, beyond the node it was minted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScope<'a> {
    /// One request, once: this method and this path with its query.
    Request {
        /// `GET`, `POST`, ...
        method: &'a str,
        /// The request target, e.g. `/admin/state?repo=a`.
        path_and_query: &'a str,
    },
    /// Reading one repository with git (`info/refs` for upload-pack and
    /// `git-upload-pack`), as often as a `git fetch` needs within the window: what a
    /// replica copy from this node uses.
    Fetch {
        /// The repository, as a relative path (`group/name`).
        repo: &'a str,
    },
}

impl TokenScope<'_> {
    fn kind(self) -> &'static str {
        match self {
            Self::Request { .. } => "r",
            Self::Fetch { .. } => "f",
        }
    }

    fn subject(self) -> String {
        match self {
            Self::Request {
                method,
                path_and_query,
            } => format!("{method} {path_and_query}"),
            Self::Fetch { repo } => repo.to_owned(),
        }
    }
}

/// Nonces unique to this process: a counter over a random start.
static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Secret {
    /// Derive the key from the configured secret text.
    pub fn new(secret: &str) -> Self {
        Self(blake3::derive_key(KEY_CONTEXT, secret.as_bytes()))
    }

    /// Derive the key of tokens between the gateways of a fleet from its secret.
    pub fn for_peers(secret: &str) -> Self {
        Self(blake3::derive_key(PEER_KEY_CONTEXT, secret.as_bytes()))
    }

    /// The MAC of a token: over its time, nonce, the node (the `host:port` the client
    /// addresses), its scope kind and subject. Length-prefixed fields, so no two
    /// different inputs hash alike.
    pub(crate) fn mac(
        &self,
        timestamp: u64,
        nonce: &str,
        node: &str,
        scope: TokenScope<'_>,
    ) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        for field in [
            timestamp.to_string().as_str(),
            nonce,
            node,
            scope.kind(),
            scope.subject().as_str(),
        ] {
            h.update(&(field.len() as u64).to_be_bytes());
            h.update(field.as_bytes());
        }
        h.finalize()
    }

    /// A token for `scope` on the node addressed as `node` (`host:port`), valid at
    /// `now`: `v2.<unix seconds>.<nonce>.<r|f>.<hex MAC>`.
    pub fn token(&self, node: &str, scope: TokenScope<'_>, now: SystemTime) -> String {
        let ts = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let nonce = fresh_nonce(now);
        format!(
            "v2.{ts}.{nonce}.{}.{}",
            scope.kind(),
            self.mac(ts, &nonce, node, scope).to_hex()
        )
    }
}

/// A nonce no other token of this process (or, with overwhelming likelihood, of
/// another) carries.
fn fresh_nonce(now: SystemTime) -> String {
    use std::hash::{BuildHasher, Hasher};
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            now.duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        h.finish()
    });
    let n = NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{seed:016x}{n:x}")
}

/// The body of `POST /admin/replicate`: copy the repository from another node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicateRequest {
    /// The repository's smart-HTTP URL on the source node.
    pub source_url: String,
    /// The `Authorization` header value the source node accepts.
    pub authorization: String,
    /// What HEAD should point to afterwards (the source's HEAD).
    pub head: Option<String>,
    /// The base URLs (`http://host:port`) of the nodes the gateway knows: the source
    /// must be on one of them.
    pub nodes: Vec<String>,
}

impl ReplicateRequest {
    /// Whether the source is a repository on one of `nodes`.
    pub fn source_is_a_node(&self) -> bool {
        self.nodes.iter().any(|base| {
            self.source_url
                .strip_prefix(base.trim_end_matches('/'))
                .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

/// A node's load, as its `/-/health` answer reports it after the `ok` line:
/// `git_processes_running N` and `cores N`, one per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLoad {
    /// Git processes running on the node now.
    pub git_processes: u64,
    /// CPU cores the node may use.
    pub cores: u64,
}

impl NodeLoad {
    /// The health answer carrying this load.
    pub fn health_text(&self) -> String {
        format!(
            "ok\ngit_processes_running {}\ncores {}\n",
            self.git_processes, self.cores
        )
    }

    /// The load in a health answer; `None` when it carries none (an older node).
    pub fn parse(text: &str) -> Option<Self> {
        let mut git_processes = None;
        let mut cores = None;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("git_processes_running", n)) => git_processes = n.trim().parse().ok(),
                Some(("cores", n)) => cores = n.trim().parse().ok(),
                _ => {}
            }
        }
        Some(Self {
            git_processes: git_processes?,
            cores: cores?,
        })
    }

    /// Whether at least `per_core` git processes run per core: the node is saturated.
    pub fn saturated(&self, per_core: u64) -> bool {
        self.git_processes >= self.cores.max(1).saturating_mul(per_core.max(1))
    }
}

/// The query parameter of an admin request that carries the blake3 digest of its body:
/// request tokens bind the path and query, so the digest binds the body to the token.
pub const BODY_DIGEST_PARAM: &str = "digest";

/// The digest [`BODY_DIGEST_PARAM`] carries for `body`.
pub fn body_digest(body: &[u8]) -> String {
    blake3::hash(body).to_hex().to_string()
}

#[cfg(test)]
mod load_tests {
    use super::NodeLoad;

    #[test]
    fn load_round_trips_through_the_health_answer() {
        let load = NodeLoad {
            git_processes: 5,
            cores: 2,
        };
        assert_eq!(NodeLoad::parse(&load.health_text()), Some(load));
        assert_eq!(NodeLoad::parse("ok\n"), None);
        assert!(load.saturated(2));
        assert!(!load.saturated(3));
    }
}
