//! A fleet of gateways: one pack generation per key, however clients are spread.
//!
//! Gateways sharing a PostgreSQL store and a `[cluster]` section register themselves
//! there ([`membership`]) and see the live set. Every pack-cache key has one owner among
//! the live gateways, chosen by rendezvous hashing of the key with each gateway's URL,
//! so all gateways agree without talking to each other, and a gateway joining or
//! leaving moves only its own share of keys.
//!
//! A gateway that is not a key's owner has already authorized the client, parsed the
//! request and read the route. Its own pack and advertisement caches work as always,
//! but their upstream is the owner instead of a node ([`forward`]): identical requests
//! on this gateway share one forwarded answer, which this gateway then serves from its
//! own cache (with `sendfile`), so the fleet costs the nodes one generation and each
//! other gateway one copy of the answer. The owner ([`endpoint`]) checks the fleet
//! token, then serves the request as its own: its own route and generation, its own
//! limits (for the forwarded client), its own cache. It never forwards again.
//!
//! Invariants:
//! - P1. The peer endpoint serves nothing without a valid token: minted with the fleet
//!   secret for this gateway's address, this repository, this client and protocol,
//!   within the skew window, and used once.
//! - P2. The peer layer never fails a fetch that could have been served: an owner that
//!   cannot be reached, times out or answers anything but the answer (or a limit's
//!   429) before its first byte leaves the answer to be produced locally, counted and
//!   logged.
//! - P3. A forwarded answer that breaks after its first byte fails the local entry it
//!   feeds, and so every response reading it (never a clean end of a truncated pack);
//!   the pack cache's completeness check applies to forwarded answers too. The pack
//!   hash in that check runs once per generated answer: an owner marks an answer from
//!   its own pack cache, whose check covered the hash ([`PACK_CHECKED_HEADER`]; not
//!   for a key it lately went to another owner for: its entry may be that copy), and
//!   the forwarder checks such a copy's framing without recomputing it (a raw v0 pack,
//!   which has no framing to end it, is hashed again).
//! - P4. An owner that could not be reached is skipped for one expiry period, so a
//!   dead gateway costs each survivor one failed connection, not one per request.

pub mod endpoint;
mod forward;
mod membership;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use gitgate_packcache::CacheKey;
use gitgate_storage_client::metadata::postgres::PostgresStore;
use gitgate_storage_client::tokens::{Mode, Secret, Verifier, DEFAULT_SKEW};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::config::ClusterConfig;

pub use forward::{Fallback, Forward, OwnerAnswer, PeerStream, PeerStreamError};
pub use membership::Heartbeat;

/// The path prefix of the peer endpoint: `/-/peer/<repo>/git-upload-pack`.
pub const PEER_PREFIX: &str = "/-/peer/";

/// The header carrying the forwarded client's identity (for the owner's limits),
/// hex-encoded so any name is a valid header value.
pub const CLIENT_HEADER: &str = "x-gitgate-client";

/// The header carrying the generation the forwarding gateway keys the request under.
pub const GENERATION_HEADER: &str = "x-gitgate-generation";

/// The header on an owner's answer that comes from its pack cache, so its pack's hash
/// was checked as the node produced it; the forwarder checks the rest (P3).
pub const PACK_CHECKED_HEADER: &str = "x-gitgate-pack-checked";

/// The header on a 429 or 503 that a limit (not the storage tier) caused: `client` or
/// `repository`, so a forwarding gateway passes it on instead of producing locally.
pub const LIMIT_HEADER: &str = "x-gitgate-limit";

/// `client` as it travels in [`CLIENT_HEADER`] and the token.
pub fn encode_client(client: &str) -> String {
    client.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The client named in [`CLIENT_HEADER`]; `None` when it is not hex of UTF-8.
pub fn decode_client(hex: &str) -> Option<String> {
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// This gateway's view of its fleet.
pub struct Peers {
    settings: ClusterConfig,
    /// Live gateways' URLs (this one always included), as of the last heartbeat.
    live: RwLock<Arc<Vec<String>>>,
    /// Owners that could not be reached, skipped until the instant (P4).
    suspects: Mutex<HashMap<String, Instant>>,
    /// Owners that refused this gateway's token (logged once each).
    refusing: Mutex<std::collections::HashSet<String>>,
    secret: Secret,
    verifier: Verifier,
    client: forward::PeerClient,
    store: PostgresStore,
    metrics: PeerMetrics,
    /// Pack cache keys this gateway lately went to an owner for, kept for the cache's
    /// `max_age`: its entries for them may be copies it did not hash, so it does not
    /// vouch for them ([`PACK_CHECKED_HEADER`]) when it owns them itself (after the
    /// live set changed). Bounded: past [`COPIED_KEYS`] keys copied within `max_age`, a
    /// key forgotten early may be vouched for while its entry is still a copy (whose
    /// bytes the generating gateway hashed).
    copied: moka::sync::Cache<CacheKey, ()>,
}

/// How many recently copied keys a gateway remembers (about 100 bytes each).
const COPIED_KEYS: u64 = 100_000;

/// `gitgate_peer_requests_total{role,result}`, `gitgate_peers{state}` and
/// `gitgate_peer_heartbeat_failures_total`.
#[derive(Clone)]
struct PeerMetrics {
    requests: IntCounterVec,
    peers: IntGaugeVec,
    heartbeat_failures: prometheus::IntCounter,
}

impl PeerMetrics {
    fn register(registry: &Registry) -> Result<(Self, IntCounterVec), prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "gitgate_peer_requests_total",
                "Fetches between gateways of a fleet: role forwarder (this gateway sent it to the key's owner) or owner (this gateway served a peer), by result.",
            ),
            &["role", "result"],
        )?;
        let peers = IntGaugeVec::new(
            Opts::new(
                "gitgate_peers",
                "Gateways of the fleet as this one sees them: live (registered and unexpired, this one included) and suspect (live but unreachable from here, skipped for now).",
            ),
            &["state"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "gitgate_peer_authentications_total",
                "Fleet token checks on the peer endpoint by enforcement and outcome.",
            ),
            &["enforced", "status"],
        )?;
        let heartbeat_failures = prometheus::IntCounter::new(
            "gitgate_peer_heartbeat_failures_total",
            "Fleet heartbeats that failed or took longer than the heartbeat interval (the last live set is kept).",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(peers.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(heartbeat_failures.clone()))?;
        Ok((
            Self {
                requests,
                peers,
                heartbeat_failures,
            },
            tokens,
        ))
    }

    fn count(&self, role: &str, result: &str) {
        self.requests.with_label_values(&[role, result]).inc();
    }
}

impl Peers {
    /// Join the fleet: register this gateway and read the live set once, so the first
    /// request already sees it. Registration failing here fails the start.
    /// `max_age` is the pack cache's: how long an entry made from an owner's copy lives.
    pub async fn join(
        settings: ClusterConfig,
        store: PostgresStore,
        max_age: std::time::Duration,
        registry: &Registry,
    ) -> Result<Arc<Self>, crate::ServeError> {
        let (metrics, tokens) = PeerMetrics::register(registry)?;
        let live = store
            .heartbeat(&settings.advertise_url, settings.expiry)
            .await?;
        let peers = Arc::new(Self {
            secret: Secret::for_peers(&settings.secret),
            verifier: Verifier::counting_into(
                Secret::for_peers(&settings.secret),
                Mode::Enforced,
                DEFAULT_SKEW,
                tokens,
            ),
            client: forward::PeerClient::new(),
            live: RwLock::new(Arc::new(Vec::new())),
            suspects: Mutex::new(HashMap::new()),
            refusing: Mutex::new(std::collections::HashSet::new()),
            store,
            metrics,
            settings,
            copied: moka::sync::Cache::builder()
                .max_capacity(COPIED_KEYS)
                .time_to_live(max_age.max(std::time::Duration::from_millis(1)))
                .build(),
        });
        peers.set_live(live);
        tracing::info!(url = %peers.settings.advertise_url, live = ?peers.live(), "joined the fleet");
        Ok(peers)
    }

    /// This gateway's advertised URL.
    pub fn me(&self) -> &str {
        &self.settings.advertise_url
    }

    fn live(&self) -> Arc<Vec<String>> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_live(&self, mut live: Vec<String>) {
        if !live.iter().any(|u| u == self.me()) {
            live.push(self.me().to_owned());
        }
        live.sort();
        let now = Instant::now();
        let suspects = {
            let mut suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
            suspects.retain(|url, until| *until > now && live.contains(url));
            suspects.len()
        };
        let m = &self.metrics.peers;
        m.with_label_values(&["live"])
            .set(i64::try_from(live.len()).unwrap_or(i64::MAX));
        m.with_label_values(&["suspect"])
            .set(i64::try_from(suspects).unwrap_or(i64::MAX));
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
    }

    /// The owner of `key` when it is another gateway; `None` when this one owns it.
    pub fn owner(&self, key: &CacheKey) -> Option<String> {
        let live = self.live();
        let now = Instant::now();
        let suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        let owner = rendezvous(
            key,
            live.iter()
                .map(String::as_str)
                .filter(|url| *url == self.me() || suspects.get(*url).is_none_or(|t| *t <= now)),
        )?;
        (owner != self.me()).then(|| owner.to_owned())
    }

    /// Skip `owner` for one expiry period (P4).
    fn suspect(&self, owner: &str) {
        let until = Instant::now() + self.settings.expiry;
        let count = {
            let mut suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
            suspects.insert(owner.to_owned(), until);
            suspects.len()
        };
        self.metrics
            .peers
            .with_label_values(&["suspect"])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

/// A key's owner, when it is another gateway: where this gateway's cache gets the
/// answer from instead of a node.
#[derive(Clone)]
pub struct Owner {
    peers: Arc<Peers>,
    url: String,
    /// The span of the request that looked the owner up (its access log line says
    /// whether the owner answered).
    span: tracing::Span,
}

impl Peers {
    /// Whether this gateway, as `key`'s owner, vouches that its cached answer's pack
    /// hash was checked: not when it went to another owner for the key within the
    /// cache's `max_age` (its entry may be that owner's copy).
    pub fn vouches_for(&self, key: &CacheKey) -> bool {
        !self.copied.contains_key(key)
    }
}

impl Owner {
    /// The owner's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Ask the owner for `what`; `Err`: produce it here (P2). Records in the asking
    /// request's span (`peer`) who answered.
    pub async fn ask(
        &self,
        git: &crate::git::GitRequest,
        repo: &gitgate_proto::RepoPath,
        what: Forward,
    ) -> Result<OwnerAnswer, Fallback> {
        let answer = self.peers.ask(&self.url, git, repo, what).await;
        match &answer {
            Ok(_) => self.span.record("peer", self.url.as_str()),
            Err(fallback) => self.span.record(
                "peer",
                format!("{} ({fallback}): produced here", self.url).as_str(),
            ),
        };
        answer
    }
}

/// The owner of `key` when another gateway owns it; `None` when this gateway produces
/// it (it owns the key, the request was forwarded here already, or it serves alone).
/// Remembers the key as one this gateway's cache may hold a copy of.
pub fn owner_of(
    peers: Option<&Arc<Peers>>,
    git: &crate::git::GitRequest,
    key: &CacheKey,
) -> Option<Owner> {
    let peers = peers.filter(|_| git.forwarded.is_none())?;
    let url = peers.owner(key)?;
    peers.copied.insert(*key, ());
    Some(Owner {
        peers: peers.clone(),
        url,
        span: tracing::Span::current(),
    })
}

/// What a peer token is bound to besides the owner's address and the method: the
/// endpoint path with its query (and so the repository), the forwarded client (hex),
/// its `Git-Protocol` and the generation. One field per line; none can hold a newline.
fn scope_subject(path: &str, client_hex: &str, protocol: &str, generation: &str) -> String {
    format!("{path}\n{client_hex}\n{protocol}\n{generation}")
}

impl Peers {
    /// Check a peer request's token (P1): a single-use request token, bound to this
    /// gateway's own address (not the `Host` the sender chose), `method`, `path` (with
    /// its query), `client_hex`, `protocol` and `generation`.
    pub fn verify(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        client_hex: &str,
        protocol: &str,
        generation: &str,
    ) -> Result<(), gitgate_storage_client::tokens::AuthError> {
        // Only single-use request tokens: never a node's repository-read token kind.
        if token.is_some_and(|t| t.split('.').nth(3) != Some("r")) {
            self.metrics.count("owner", "refused");
            return Err(gitgate_storage_client::tokens::AuthError::Malformed);
        }
        let subject = scope_subject(path, client_hex, protocol, generation);
        let checked = self.verifier.check(
            gitgate_storage_client::tokens::Presented {
                token,
                method,
                path_and_query: &subject,
                host: &self.settings.authority,
            },
            std::time::SystemTime::now(),
        );
        if checked.is_err() {
            self.metrics.count("owner", "refused");
        }
        checked
    }

    /// Note that `owner` refused this gateway's token; `true` the first time.
    fn note_refusal(&self, owner: &str) -> bool {
        self.refusing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(owner.to_owned())
    }
}

/// The member with the highest score for `key`: each key's owner is the same for
/// every gateway that sees the same members, and removing a member moves only the keys
/// it owned.
fn rendezvous<'a>(key: &CacheKey, members: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    members.max_by_key(|url| {
        let mut h = blake3::Hasher::new();
        h.update(key.as_bytes());
        h.update(url.as_bytes());
        *h.finalize().as_bytes()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitgate_packcache::KeyBuilder;

    fn key(i: u32) -> CacheKey {
        KeyBuilder::new(1).field(&i.to_be_bytes()).finish()
    }

    #[test]
    fn owners_spread_and_only_the_leavers_keys_move() {
        let three = ["http://a:1", "http://b:1", "http://c:1"];
        let mut counts = HashMap::new();
        for i in 0..3000 {
            let owner = rendezvous(&key(i), three.iter().copied()).expect("members");
            *counts.entry(owner).or_insert(0) += 1;
            // Order does not matter.
            assert_eq!(
                rendezvous(&key(i), three.iter().rev().copied()),
                Some(owner)
            );
            let without_c = rendezvous(&key(i), three[..2].iter().copied());
            if owner != "http://c:1" {
                assert_eq!(
                    without_c,
                    Some(owner),
                    "a key moved off a gateway that stayed"
                );
            }
        }
        for url in three {
            let n = counts.get(url).copied().unwrap_or(0);
            assert!((800..1200).contains(&n), "{url} owns {n} of 3000 keys");
        }
        assert_eq!(rendezvous(&key(0), std::iter::empty()), None);
    }
}
