//! `POST git-receive-pack`: a push, streamed to the repository's primary as it arrives
//! (never held whole), under the repository's write lock, and acknowledged only once the
//! cluster has recorded it (and in `sync` mode replicated it to a majority).

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
    // killed before it can apply anything, and the connection is aborted.
    let mut seen = 0u64;
    let counted = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len() as u64;
        if seen > limit {
            return Err(std::io::Error::other(format!(
                "push larger than limits.max_push_bytes ({limit} bytes)"
            )));
        }
        Ok(chunk)
    });
    let request: RequestBody = Box::pin(counted);
    // Holds the repository's lock and its write marker until the outcome is recorded.
    let push = state.cluster.begin_push(repo).await?;
    let stream = push
        .send(git.call(repo, Service::ReceivePack), request)
        .await?;
    Ok(git_response(
        acknowledged_after(boxed(stream), push),
        Service::ReceivePack.result_content_type(),
        true,
    ))
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
