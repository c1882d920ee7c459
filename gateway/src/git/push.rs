//! `POST git-receive-pack`: a push, streamed to the repository's primary as it arrives
//! (never held whole), under the repository's write lock, and acknowledged only once the
//! cluster has recorded it (and in `sync` mode replicated it to a majority).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use gitgate_proto::{RepoPath, Service};
use gitgate_storage_client::cluster::PushGuard;
use gitgate_storage_client::RequestBody;

use super::response::{boxed, git_response};
use super::GitRequest;
use crate::body::BodyStream;
use crate::error::{AppError, BoxError};
use crate::state::AppState;

/// Answer a push to `repo`.
pub async fn receive_pack(
    state: &AppState,
    git: &GitRequest,
    repo: &RepoPath,
    body: Body,
    headers: &HeaderMap,
) -> Result<Response, AppError> {
    let limit = state.max_push_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(AppError::BodyTooLarge { limit });
    }
    // Chunked pushes are counted as they stream; past the limit the body fails, git is
    // killed before it can apply anything, and the client gets a 413 (git answers
    // nothing before it has read the whole pack, so no response has started).
    let over = Arc::new(AtomicBool::new(false));
    let request = limited(body, limit, over.clone());
    // Holds the repository's lock and its write marker until the outcome is recorded.
    let push = state.cluster.begin_push(repo).await?;
    let stream = match push
        .send(git.call(repo, Service::ReceivePack), request)
        .await
    {
        Ok(stream) => stream,
        Err(_) if over.load(Ordering::Relaxed) => return Err(AppError::BodyTooLarge { limit }),
        Err(err) => return Err(err.into()),
    };
    Ok(git_response(
        acknowledged_after(boxed(stream), push),
        Service::ReceivePack.result_content_type(),
        true,
    ))
}

/// What a client over the push limit may still send, and for how long, while it is
/// read and dropped before the 413 goes out (a "lingering" read, as web servers do): a
/// client cut off mid-upload sees a broken pipe instead of the status.
const LINGER_BYTES: u64 = 64 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// `body`, counted: past `limit` bytes it sets `over`, reads and drops what the client
/// still sends (up to [`LINGER_BYTES`] / [`LINGER_TIME`]), then fails.
fn limited(body: Body, limit: u64, over: Arc<AtomicBool>) -> RequestBody {
    struct Counting {
        body: axum::body::BodyDataStream,
        seen: u64,
        failed: bool,
    }
    let state = Counting {
        body: body.into_data_stream(),
        seen: 0,
        failed: false,
    };
    Box::pin(futures_util::stream::unfold(state, move |mut s| {
        let over = over.clone();
        async move {
            if s.failed {
                return None;
            }
            let chunk = match s.body.next().await? {
                Ok(chunk) => chunk,
                Err(err) => {
                    s.failed = true;
                    return Some((Err(std::io::Error::other(err)), s));
                }
            };
            s.seen += chunk.len() as u64;
            if s.seen <= limit {
                return Some((Ok(chunk), s));
            }
            over.store(true, Ordering::Relaxed);
            let body = &mut s.body;
            let _ = tokio::time::timeout(LINGER_TIME, async {
                let mut dropped = 0u64;
                while let Some(Ok(more)) = body.next().await {
                    dropped += more.len() as u64;
                    if dropped > LINGER_BYTES {
                        break;
                    }
                }
            })
            .await;
            s.failed = true;
            Some((
                Err(std::io::Error::other(format!(
                    "push larger than limits.max_push_bytes ({limit} bytes)"
                ))),
                s,
            ))
        }
    }))
}

/// The push response, with its last chunk held back until the push is recorded (and,
/// in `sync` mode, replicated): git cannot finish a push before the response's final
/// flush, so nothing is acknowledged before it is durable. If recording fails the
/// response is aborted instead.
fn acknowledged_after(stream: BodyStream, push: PushGuard) -> BodyStream {
    struct Pending {
        stream: BodyStream,
        held: Option<Bytes>,
        push: Option<PushGuard>,
        done: bool,
    }
    let pending = Pending {
        stream,
        held: None,
        push: Some(push),
        done: false,
    };
    Box::pin(futures_util::stream::unfold(pending, |mut p| async move {
        if p.done {
            return None;
        }
        loop {
            match p.stream.next().await {
                Some(Ok(chunk)) => {
                    if let Some(previous) = p.held.replace(chunk) {
                        return Some((Ok(previous), p));
                    }
                }
                Some(Err(err)) => {
                    // The push guard records whatever happened when it is dropped.
                    p.done = true;
                    return Some((Err(err), p));
                }
                None => {
                    p.done = true;
                    if let Some(push) = p.push.take() {
                        if let Err(err) = push.finish().await {
                            tracing::error!(error = %err, "push not acknowledged");
                            return Some((Err(Box::new(err) as BoxError), p));
                        }
                    }
                    let last = p.held.take()?;
                    return Some((Ok(last), p));
                }
            }
        }
    }))
}
