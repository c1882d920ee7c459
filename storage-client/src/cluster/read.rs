//! Reads end to end: where a read of a repository may go ([`Cluster::read_route`]) and
//! the node calls themselves ([`Cluster::upload_pack_advertisement`],
//! [`Cluster::upload_pack`]), which try the route's replicas in order, move on when one
//! fails before its first byte, report unreachable nodes to the health monitor and
//! count every call (`gitgate_backend_requests_total`, `gitgate_read_distribution_total`).
//!
//! The choice itself is [`super::routing`]'s; this module does the IO around it.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use gitgate_proto::RepoPath;

use super::{routing, Cluster, ClusterError};
use crate::call::GitCall;
use crate::error::ClientError;
use crate::metadata::RepoRecord;
use crate::nodes::NodeId;
use crate::{GitStream, RequestBody};

/// What reads keep: how they spread over replicas.
#[derive(Default)]
pub(super) struct ReadState {
    /// Counts reads, so consecutive ones start at different replicas.
    rotation: AtomicU64,
    /// Scrambles the rotation, so requests that come in fixed patterns (a clone is
    /// two or three reads) still spread.
    scramble: std::collections::hash_map::RandomState,
}

/// Where a read may go.
#[derive(Debug, Clone)]
pub struct ReadRoute {
    /// The generation the chosen replicas hold (part of the pack cache key): the
    /// repository's, or an older one while a newer unacknowledged write is not yet
    /// held by a majority.
    pub generation: i64,
    /// Whether a write to the repository is in flight: a replica may already show refs
    /// that `generation` does not cover yet (callers do not cache ref advertisements
    /// read meanwhile).
    pub write_in_flight: bool,
    /// Nodes to try, in order: healthy and up to date.
    candidates: Vec<NodeId>,
}

impl ReadRoute {
    /// The nodes a read tries, in order.
    pub fn candidates(&self) -> &[NodeId] {
        &self.candidates
    }
}

impl Cluster {
    /// Where a read of `repo` may go: healthy replicas holding the current generation,
    /// starting at a pseudo-random one so reads spread (see [`routing`]).
    pub async fn read_route(&self, repo: &RepoPath) -> Result<ReadRoute, ClusterError> {
        let record = self.record(repo).await?;
        let Some((generation, serving)) = self.serving_replicas(&record) else {
            return Err(self.unavailable(&record, "serve reads"));
        };
        let writing = record
            .write
            .as_ref()
            .and_then(|marker| self.nodes.find(&marker.node));
        let turn = self.reads.rotation.fetch_add(1, Ordering::Relaxed);
        let spread = std::hash::BuildHasher::hash_one(&self.reads.scramble, turn);
        Ok(ReadRoute {
            generation,
            write_in_flight: record.write.is_some(),
            candidates: routing::read_order(
                serving,
                writing,
                self.settings.mode == super::ReplicationMode::Async,
                spread,
            ),
        })
    }

    /// The upload-pack ref advertisement (`info/refs`) of `call.repo`, from the first
    /// of `route`'s replicas that answers.
    pub async fn upload_pack_advertisement(
        &self,
        route: &ReadRoute,
        call: GitCall<'_>,
    ) -> Result<GitStream, ClusterError> {
        let mut last = None;
        for &node in route.candidates() {
            let answer = self
                .first_answer(node, self.node(node).info_refs(call))
                .await;
            match self.observe_stream(node, answer) {
                Ok(stream) => return Ok(stream),
                Err(err) => last = Some(err),
            }
        }
        Err(no_answer(last))
    }

    /// Run upload-pack with `body` on the first of `route`'s replicas that answers: a
    /// node that fails before its first byte is reported and the next one is tried, and
    /// so is one that refuses a `want` as "not our ref" (a replica catching up may lack
    /// a tip that another one advertised to the same client moments before). git dying
    /// on the request itself before answering ([`ClientError::Refused`]) is tried on one
    /// more replica only (in case one copy is damaged): a bad request costs two short
    /// git runs, not one per replica. When the replicas tried all refuse, the error is
    /// that refusal, with git's message for the client.
    pub async fn upload_pack(
        &self,
        route: &ReadRoute,
        call: GitCall<'_>,
        body: &Bytes,
    ) -> Result<GitStream, ClusterError> {
        let mut last = None;
        // git's refusal wins over other replicas' failures: the request is at fault.
        let mut refused = None;
        let mut refusals = 0;
        for &node in route.candidates() {
            let client = self.node(node);
            let request: RequestBody = Box::pin(futures_util::stream::once({
                let body = body.clone();
                async move { Ok(body) }
            }));
            let answer = self.first_answer(node, client.rpc(call, request)).await;
            let mut unknown_want = false;
            let answer = match answer {
                Ok(stream) => match split_refusal(stream).await {
                    Ok(stream) => Ok(stream),
                    Err(message) => {
                        tracing::debug!(
                            node = client.name(),
                            "replica does not have a wanted object; trying another replica"
                        );
                        unknown_want = true;
                        Err(ClientError::Refused {
                            node: client.name().to_owned(),
                            message,
                        })
                    }
                },
                Err(err) => Err(err),
            };
            match self.observe_stream(node, answer) {
                Ok(stream) => {
                    self.metrics
                        .read_distribution
                        .with_label_values(&[client.name()])
                        .inc();
                    return Ok(stream);
                }
                Err(err) if err.refusal().is_some() => {
                    refused = Some(err);
                    if !unknown_want {
                        refusals += 1;
                        if refusals >= 2 {
                            break;
                        }
                    }
                }
                Err(err) => {
                    if route.candidates.len() > 1 {
                        tracing::info!(node = client.name(), error = %err, "fetch failed before its first byte; trying another replica");
                    }
                    last = Some(err);
                }
            }
        }
        Err(no_answer(refused.or(last)))
    }

    /// `call` to `node`, given up as silent when it has not answered within
    /// `stream_idle_timeout`: a read that hangs before its first byte (a git process
    /// stuck before it says anything) then goes to the next replica instead of holding
    /// its client, and every reader of a pack cache entry, forever. The node is not
    /// reported to the health monitor for it (one stuck repository does not make a node
    /// down). Only reads: a push
    /// answers once its whole pack is uploaded, which may rightly take longer.
    async fn first_answer<T>(
        &self,
        node: NodeId,
        call: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let idle = self.settings.stream_idle_timeout;
        tokio::time::timeout(idle, call).await.unwrap_or_else(|_| {
            Err(ClientError::Silent {
                node: self.node(node).name().to_owned(),
                waited: idle,
            })
        })
    }

    /// [`Self::observe`] for a call that answers with git output, which is then cut off
    /// if it stalls (`stream_idle_timeout`).
    pub(crate) fn observe_stream(
        &self,
        node: NodeId,
        result: Result<GitStream, ClientError>,
    ) -> Result<GitStream, ClientError> {
        let stream = self.observe(node, result)?;
        Ok(crate::stall::cut_when_idle(
            stream,
            self.node(node).name(),
            self.settings.stream_idle_timeout,
        ))
    }

    /// Count a node call's outcome, report an unreachable node to the health monitor,
    /// and name the node in the current span.
    pub(crate) fn observe<T>(
        &self,
        node: NodeId,
        result: Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let name = self.node(node).name();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) if e.is_not_found() => "not_found",
            Err(e) if e.refusal().is_some() => "refused",
            Err(ClientError::RequestBody { .. }) => "request_body",
            Err(e) if e.is_unavailable() => {
                if e.is_unreachable() {
                    self.health.report_failure(node);
                }
                "unavailable"
            }
            Err(_) => "error",
        };
        self.metrics
            .backend
            .with_label_values(&[name, outcome])
            .inc();
        tracing::Span::current().record("node", name);
        result
    }

    /// The replicas of `record` that may serve, and their generation (see
    /// [`routing::serving`]).
    pub(crate) fn serving_replicas(&self, record: &RepoRecord) -> Option<(i64, Vec<NodeId>)> {
        routing::serving(
            record,
            self.settings.mode == super::ReplicationMode::Sync,
            |name| self.nodes.find(name),
            |id| self.healthy(id),
        )
    }

    /// Why nothing can serve `record`, for the 503 message.
    pub(crate) fn unavailable(&self, record: &RepoRecord, what: &str) -> ClusterError {
        let replicas: Vec<String> = record
            .replicas
            .iter()
            .map(|r| {
                let state = if r.generation < record.acked {
                    "out of date"
                } else if r.generation > record.acked && r.generation == record.generation {
                    "holds an unacknowledged write"
                } else if self.nodes.find(&r.node).is_some_and(|i| self.healthy(i)) {
                    "up"
                } else {
                    "down"
                };
                format!("{} {state}", r.node)
            })
            .collect();
        ClusterError::Unavailable(format!(
            "no up-to-date replica of {} can {what} right now (replicas: {})",
            record.repo,
            replicas.join(", ")
        ))
    }
}

/// `stream` with its first chunk looked at: `Err` with git's message when it is git
/// refusing a `want` as "not our ref" (the rest of that answer is dropped: git exits).
async fn split_refusal(mut stream: GitStream) -> Result<GitStream, String> {
    let Some(first) = stream.next().await else {
        return Ok(stream);
    };
    if let Some(message) = first
        .as_ref()
        .ok()
        .and_then(|bytes| gitgate_proto::response::unknown_want_refusal(bytes))
    {
        // git exits after it; nothing else of this answer is wanted.
        return Err(message);
    }
    Ok(Box::pin(
        futures_util::stream::once(async move { first }).chain(stream),
    ))
}

/// The error of a read that no replica answered.
fn no_answer(last: Option<ClientError>) -> ClusterError {
    match last {
        Some(err) => err.into(),
        None => ClusterError::Unavailable("no replica to try".into()),
    }
}
