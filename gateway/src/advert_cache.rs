//! The advertisement cache: upload-pack ref advertisements (`info/refs`, protocol v0 and
//! v2) and protocol v2 `ls-refs` answers, in memory.
//!
//! - **Keys** hold the repository, the generation the read route serves, the protocol
//!   and the normalized request ([`crate::git::cache_key::advert_key`]), so a push, which
//!   moves the generation through any gateway, invalidates exactly what it changed.
//! - **Single flight**: the first request for a key (the leader) calls the node; identical
//!   requests that arrive meanwhile wait for its answer and share it. If the leader
//!   fails or goes away, each of them makes its own call.
//! - **Only complete answers are kept**: a node error, a stream that breaks, or an answer
//!   that does not end with a flush packet is never stored.
//! - **Bounded**: at most [`MAX_ENTRY_BYTES`] per answer (larger ones stream through
//!   uncached) and [`MAX_BYTES`] in all; entries also expire after the pack cache's
//!   `max_age`.
//!
//! Receive-pack advertisements never come here: a push must see the refs as they are.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::{BoxFuture, Shared};
use futures_util::{FutureExt, StreamExt};
use gitgate_packcache::CacheKey;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::oneshot;

use crate::body::BodyStream;
use crate::error::AppError;

/// Largest answer kept.
pub const MAX_ENTRY_BYTES: usize = 8 << 20;

/// Most bytes kept in all.
pub const MAX_BYTES: u64 = 64 << 20;

/// What is cached.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// `GET info/refs?service=git-upload-pack`.
    InfoRefs,
    /// A protocol v2 `ls-refs` command.
    LsRefs,
}

impl Kind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::InfoRefs => "info_refs",
            Self::LsRefs => "ls_refs",
        }
    }
}

/// An answer: complete bytes (from the cache or just fetched whole), or a stream too
/// large to keep.
pub enum Answer {
    /// The whole answer.
    Whole(Bytes),
    /// Streams through uncached.
    Stream(BodyStream),
}

type InFlight = Shared<BoxFuture<'static, Option<Bytes>>>;

/// See the module docs.
pub struct AdvertCache {
    done: moka::sync::Cache<CacheKey, Bytes>,
    in_flight: Mutex<HashMap<CacheKey, InFlight>>,
    /// `gitgate_advertisement_cache_lookups_total{kind,result}`.
    lookups: IntCounterVec,
}

impl AdvertCache {
    /// An empty cache whose entries live at most `max_age`; its metric family goes on
    /// `registry`.
    pub fn new(max_age: Duration, registry: &Registry) -> Result<Self, prometheus::Error> {
        let lookups = IntCounterVec::new(
            Opts::new(
                "gitgate_advertisement_cache_lookups_total",
                "Advertisement cache lookups by kind (info_refs, ls_refs) and result \
                 (hit, shared: joined a call in flight, miss: called the node and kept \
                 the answer, uncached: called the node without keeping the answer).",
            ),
            &["kind", "result"],
        )?;
        registry.register(Box::new(lookups.clone()))?;
        for kind in [Kind::InfoRefs, Kind::LsRefs] {
            for result in ["hit", "shared", "miss", "uncached"] {
                lookups.with_label_values(&[kind.label(), result]);
            }
        }
        Ok(Self {
            done: moka::sync::Cache::builder()
                .max_capacity(MAX_BYTES)
                .weigher(|_, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
                .time_to_live(max_age.max(Duration::from_millis(1)))
                .build(),
            in_flight: Mutex::new(HashMap::new()),
            lookups,
        })
    }

    /// The answer for `key`: kept, shared with a call in flight, or from `fetch` (the
    /// node call; it runs only when needed). With `cacheable` false (a write to the
    /// repository is in flight, so the refs may be ahead of the key's generation), the
    /// answer is fetched and neither looked up nor kept.
    pub async fn answer(
        &self,
        kind: Kind,
        key: CacheKey,
        cacheable: bool,
        fetch: impl Future<Output = Result<BodyStream, AppError>>,
    ) -> Result<Answer, AppError> {
        if !cacheable {
            self.count(kind, "uncached");
            return fetch.await.map(Answer::Stream);
        }
        if let Some(bytes) = self.done.get(&key) {
            self.count(kind, "hit");
            return Ok(Answer::Whole(bytes));
        }
        let leader = {
            let mut in_flight = self.lock();
            match in_flight.get(&key) {
                Some(shared) => Err(shared.clone()),
                None => {
                    let (tx, rx) = oneshot::channel::<Bytes>();
                    in_flight.insert(key, rx.map(Result::ok).boxed().shared());
                    Ok(tx)
                }
            }
        };
        let tx = match leader {
            Ok(tx) => tx,
            Err(shared) => {
                if let Some(bytes) = shared.await {
                    self.count(kind, "shared");
                    return Ok(Answer::Whole(bytes));
                }
                // The leader failed or left: on our own.
                self.count(kind, "uncached");
                return fetch.await.map(Answer::Stream);
            }
        };
        // Whatever happens below, the key stops being in flight; dropping `tx` without
        // sending tells the followers to call the node themselves.
        let _leading = Leading { cache: self, key };
        let mut stream = fetch.await?;
        let mut whole = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            // Nothing was sent yet, so a failure still gets a proper status.
            let chunk = chunk.map_err(AppError::NodeFailed)?;
            if whole.len() + chunk.len() > MAX_ENTRY_BYTES {
                self.count(kind, "uncached");
                let head = futures_util::stream::iter([Ok(whole.freeze()), Ok(chunk)]);
                return Ok(Answer::Stream(Box::pin(head.chain(stream))));
            }
            whole.extend_from_slice(&chunk);
        }
        let whole = whole.freeze();
        if whole.ends_with(b"0000") {
            self.count(kind, "miss");
            self.done.insert(key, whole.clone());
            let _ = tx.send(whole.clone());
        } else {
            tracing::warn!(
                kind = kind.label(),
                bytes = whole.len(),
                "advertisement does not end with a flush; not cached"
            );
            self.count(kind, "uncached");
        }
        Ok(Answer::Whole(whole))
    }

    fn count(&self, kind: Kind, result: &str) {
        self.lookups
            .with_label_values(&[kind.label(), result])
            .inc();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, InFlight>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Takes a key out of the in-flight map when its leader is done (or dropped).
struct Leading<'a> {
    cache: &'a AdvertCache,
    key: CacheKey,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.cache.lock().remove(&self.key);
    }
}
