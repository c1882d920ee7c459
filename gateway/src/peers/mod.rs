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
//!   the pack cache's completeness check applies to forwarded answers too.
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

pub use forward::{Fallback, Forward, OwnerAnswer, PeerStream};

/// The path prefix of the peer endpoint: `/-/peer/<repo>/git-upload-pack`.
pub const PEER_PREFIX: &str = "/-/peer/";

/// The header carrying the forwarded client's identity (for the owner's limits).
pub const CLIENT_HEADER: &str = "x-gitgate-client";

/// This gateway's view of its fleet.
pub struct Peers {
    settings: ClusterConfig,
    /// Live gateways' URLs (this one always included), as of the last heartbeat.
    live: RwLock<Arc<Vec<String>>>,
    /// Owners that could not be reached, skipped until the instant (P4).
    suspects: Mutex<HashMap<String, Instant>>,
    secret: Secret,
    verifier: Verifier,
    client: forward::PeerClient,
    store: PostgresStore,
    metrics: PeerMetrics,
}

/// `gitgate_peer_requests_total{role,result}` and `gitgate_peers{state}`.
#[derive(Clone)]
struct PeerMetrics {
    requests: IntCounterVec,
    peers: IntGaugeVec,
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
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(peers.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        Ok((Self { requests, peers }, tokens))
    }

    fn count(&self, role: &str, result: &str) {
        self.requests.with_label_values(&[role, result]).inc();
    }
}

impl Peers {
    /// Join the fleet: register this gateway and read the live set once, so the first
    /// request already sees it. Registration failing here fails the start.
    pub async fn join(
        settings: ClusterConfig,
        store: PostgresStore,
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
            store,
            metrics,
            settings,
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
}

impl Owner {
    /// The owner's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Ask the owner for `what`; `Err`: produce it here (P2).
    pub async fn ask(
        &self,
        git: &crate::git::GitRequest,
        repo: &gitgate_proto::RepoPath,
        what: Forward,
    ) -> Result<OwnerAnswer, Fallback> {
        self.peers.ask(&self.url, git, repo, what).await
    }
}

/// The owner of `key` when another gateway owns it; `None` when this gateway produces
/// it (it owns the key, the request was forwarded here already, or it serves alone).
/// Names the owner in the request's span (the access log's `peer`).
pub fn owner_of(
    peers: Option<&Arc<Peers>>,
    git: &crate::git::GitRequest,
    key: &CacheKey,
) -> Option<Owner> {
    let peers = peers.filter(|_| git.forwarded.is_none())?;
    let url = peers.owner(key)?;
    tracing::Span::current().record("peer", url.as_str());
    Some(Owner {
        peers: peers.clone(),
        url,
    })
}

/// What a peer token is bound to besides the owner's address: the endpoint path (with
/// the repository), the forwarded client's identity and its `Git-Protocol`.
fn scope_subject(path: &str, client: &str, protocol: &str) -> String {
    format!("{path} client={client} protocol={protocol}")
}

impl Peers {
    /// Check a peer request's token (P1): bound to this gateway's own address (not
    /// the `Host` the sender chose), `method`, `path` (with its query), `client` and
    /// `protocol`, and single-use.
    pub fn verify(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        client: &str,
        protocol: &str,
    ) -> Result<(), gitgate_storage_client::tokens::AuthError> {
        let subject = scope_subject(path, client, protocol);
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
