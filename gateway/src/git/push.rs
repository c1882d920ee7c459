//! `POST git-receive-pack`: a push, streamed to the repository's primary as it arrives
//! (never held whole), under the repository's write lock, and acknowledged only once the
//! cluster has recorded it (and in `sync` mode replicated it to a majority).

use std::sync::{Arc, Mutex};

use axum::body::{Body, BodyDataStream};
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
    let over = Over::default();
    let request = limited(body, limit, over.clone());
    // Holds the repository's lock and its write marker until the outcome is recorded.
    let push = state.cluster.begin_push(repo).await?;
    let stream = match push
        .send(git.call(repo, Service::ReceivePack), request)
        .await
    {
        Ok(stream) => stream,
        Err(err) => {
            let rest = over.0.lock().unwrap_or_else(|p| p.into_inner()).take();
            let Some(rest) = rest else {
                return Err(err.into());
            };
            // The repository is let go first; then what the client still sends is read
            // and dropped, so that it sees the 413 rather than a broken pipe.
            drop(push);
            linger(rest).await;
            return Err(AppError::BodyTooLarge { limit });
        }
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

/// Set when a push went over the limit: the rest of its body, not read yet.
#[derive(Clone, Default)]
struct Over(Arc<Mutex<Option<BodyDataStream>>>);

/// Read and drop `rest`, up to [`LINGER_BYTES`] and [`LINGER_TIME`].
async fn linger(mut rest: BodyDataStream) {
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let mut dropped = 0u64;
        while let Some(Ok(more)) = rest.next().await {
            dropped += more.len() as u64;
            if dropped > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
}

/// `body`, counted: past `limit` bytes it fails at once, leaving the rest of the body
/// in `over` for the handler.
fn limited(body: Body, limit: u64, over: Over) -> RequestBody {
    struct Counting {
        body: Option<BodyDataStream>,
        seen: u64,
    }
    let state = Counting {
        body: Some(body.into_data_stream()),
        seen: 0,
    };
    Box::pin(futures_util::stream::unfold(state, move |mut s| {
        let over = over.clone();
        async move {
            let chunk = match s.body.as_mut()?.next().await? {
                Ok(chunk) => chunk,
                Err(err) => {
                    s.body = None;
                    return Some((Err(std::io::Error::other(err)), s));
                }
            };
            s.seen += chunk.len() as u64;
            if s.seen <= limit {
                return Some((Ok(chunk), s));
            }
            *over.0.lock().unwrap_or_else(|p| p.into_inner()) = s.body.take();
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
