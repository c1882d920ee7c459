//! Client tokens: stored as blake3 hashes in the config, presented as the HTTP Basic
//! password or a Bearer token.
//!
//! Tokens are random secrets, so an unsalted fast hash is enough to keep them out of
//! config files and backups; `gitgate hash-token` prints the value to put in the config.

use std::collections::HashMap;

use gitgate_proto::RepoPath;

use super::pattern::RepoPattern;

/// Prefix of stored hashes, naming the algorithm.
pub const HASH_PREFIX: &str = "blake3:";

/// The config form of a token's hash.
pub fn hash_token(token: &str) -> String {
    format!("{HASH_PREFIX}{}", blake3::hash(token.as_bytes()).to_hex())
}

/// One known token and its scopes.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    /// Name for logs (never the token).
    pub name: String,
    hash: String,
    read: Vec<RepoPattern>,
    write: Vec<RepoPattern>,
    admin: Vec<RepoPattern>,
}

impl TokenEntry {
    /// A token `name` with stored `hash` and its read and write patterns.
    pub fn new(
        name: String,
        hash: String,
        read: Vec<RepoPattern>,
        write: Vec<RepoPattern>,
    ) -> Self {
        Self {
            name,
            hash,
            read,
            write,
            admin: Vec::new(),
        }
    }

    /// Also allow administration (deletion) of repositories matching `admin`.
    pub fn with_admin(mut self, admin: Vec<RepoPattern>) -> Self {
        self.admin = admin;
        self
    }

    /// May delete `repo`.
    pub fn can_admin(&self, repo: &RepoPath) -> bool {
        self.admin.iter().any(|p| p.matches(repo))
    }

    /// May read `repo` (write scopes imply read).
    pub fn can_read(&self, repo: &RepoPath) -> bool {
        self.read.iter().chain(&self.write).any(|p| p.matches(repo))
    }

    /// May push to `repo`.
    pub fn can_write(&self, repo: &RepoPath) -> bool {
        self.write.iter().any(|p| p.matches(repo))
    }
}

/// Tokens by hash.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    by_hash: HashMap<String, TokenEntry>,
}

impl TokenTable {
    /// Add a token; a second token with the same hash replaces the first.
    pub fn insert(&mut self, entry: TokenEntry) {
        self.by_hash.insert(entry.hash.clone(), entry);
    }

    /// The entry for a presented token.
    pub fn find(&self, token: &str) -> Option<&TokenEntry> {
        self.by_hash.get(&hash_token(token))
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// No tokens configured.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// Whether `hash` is a well-formed stored hash.
pub fn valid_hash(hash: &str) -> bool {
    hash.strip_prefix(HASH_PREFIX)
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}
