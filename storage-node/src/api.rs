//! The node's contract with its clients: everything `storage-client` (the gateway's side)
//! may use, and nothing of the server's internals.
//!
//! - the token scheme: [`Secret`] derives the MAC key from the shared secret and mints
//!   tokens (`v1.<unix seconds>.<hex MAC>`, blake3 keyed over the timestamp); the node
//!   checks them in its own `auth` module;
//! - the bodies of the admin API ([`ReplicateRequest`]) and the repository state it
//!   returns ([`RepoState`]);
//! - the byte streams of git services ([`GitStream`], [`RequestBody`],
//!   [`GitStreamError`]) and [`peek`], which waits for a stream's first bytes so a
//!   failure before any output can still get a proper status.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Request header on a receive-pack `info/refs`: when the repository does not exist,
/// answer with an empty repository's advertisement (a push will create it) instead of
/// 404. Nothing is created.
pub const EMPTY_IF_MISSING: &str = "gitgate-empty-if-missing";

pub use crate::process::{peek, GitStream, GitStreamError, RequestBody};
pub use crate::refstate::RepoState;

/// Context string for deriving the MAC key from the configured secret.
const KEY_CONTEXT: &str = "gitgate 2026 internal node auth v1";

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

impl Secret {
    /// Derive the key from the configured secret text.
    pub fn new(secret: &str) -> Self {
        Self(blake3::derive_key(KEY_CONTEXT, secret.as_bytes()))
    }

    pub(crate) fn mac(&self, timestamp: u64) -> blake3::Hash {
        blake3::keyed_hash(&self.0, timestamp.to_string().as_bytes())
    }

    /// A token valid at `now`.
    pub fn token(&self, now: SystemTime) -> String {
        let ts = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("v1.{ts}.{}", self.mac(ts).to_hex())
    }
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
}
