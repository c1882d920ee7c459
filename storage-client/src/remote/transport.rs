//! Sending a request to a remote node and reading its answer: timeouts, the retry of a
//! request that is safe to repeat when a pooled connection turns out closed, status
//! checks, and the answer as a stream of git output.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::TryStreamExt;
use gitgate_proto::RepoPath;
use gitgate_storage_node::api::{self, GitStream, GitStreamError};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyDataStream, BodyExt, Limited};
use hyper::body::Incoming;

use super::{RemoteNode, ADMIN_TIMEOUT};
use crate::error::ClientError;

/// How much of an error body is kept.
const ERROR_BODY_LIMIT: usize = 4096;
/// How many more times a request that is safe to repeat is sent when a pooled
/// connection turns out to be closed before any answer (see [`closed_before_answer`]).
const STALE_CONNECTION_RETRIES: usize = 2;

impl RemoteNode {
    pub(super) async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, ClientError> {
        self.client.request(req).await.map_err(|err| {
            if request_body_failed(&err) {
                // Our side's fault (the client went away, or sent more than allowed):
                // not a sign that the node is down.
                ClientError::RequestBody {
                    node: self.name.clone(),
                    reason: error_chain(&err),
                }
            } else if closed_before_answer(&err) {
                // A connection the node closed as the request went out (often a pooled
                // one it closed after aborting an answer): the request fails and the
                // next replica is tried, but it does not count toward the node being
                // down; a node that is gone fails its next connect and health check.
                ClientError::Decode {
                    node: self.name.clone(),
                    reason: format!("connection closed before an answer: {}", error_chain(&err)),
                }
            } else {
                self.unavailable(&err)
            }
        })
    }

    /// Send a request that is safe to repeat (a GET: no body, no side effects), built
    /// afresh by `build` for each attempt (a token is used once). A pooled connection
    /// the node closed before answering — it was restarted, or closed the connection as
    /// the request went out — is retried on another connection instead of failing the
    /// caller; a node that cannot be reached at all is not.
    pub(super) async fn send_repeatable(
        &self,
        build: impl Fn() -> Result<Request<Body>, ClientError>,
    ) -> Result<Response<Incoming>, ClientError> {
        let mut retries = STALE_CONNECTION_RETRIES;
        loop {
            match self.client.request(build()?).await {
                Ok(resp) => return Ok(resp),
                Err(err) if retries > 0 && closed_before_answer(&err) => {
                    retries -= 1;
                    tracing::debug!(
                        node = %self.name,
                        error = %error_chain(&err),
                        "connection closed before an answer; sending the request again"
                    );
                }
                Err(err) => return Err(self.unavailable(&err)),
            }
        }
    }

    pub(super) fn unavailable(&self, err: &dyn std::error::Error) -> ClientError {
        ClientError::Unavailable {
            node: self.name.clone(),
            reason: error_chain(err),
        }
    }

    /// [`Self::send_repeatable`] within `limit`.
    pub(super) async fn send_repeatable_within(
        &self,
        build: impl Fn() -> Result<Request<Body>, ClientError>,
        limit: Duration,
    ) -> Result<Response<Incoming>, ClientError> {
        tokio::time::timeout(limit, self.send_repeatable(build))
            .await
            .map_err(|_| self.timed_out(limit))?
    }

    pub(super) fn timed_out(&self, limit: Duration) -> ClientError {
        ClientError::Unavailable {
            node: self.name.clone(),
            reason: format!("no answer within {limit:?}"),
        }
    }

    pub(super) async fn send_with_timeout(
        &self,
        req: Request<Body>,
        limit: Duration,
    ) -> Result<Response<Incoming>, ClientError> {
        tokio::time::timeout(limit, self.send(req))
            .await
            .map_err(|_| self.timed_out(limit))?
    }

    /// Turn a non-success status into the matching error.
    pub(super) async fn check(
        &self,
        resp: Response<Incoming>,
        repo: &RepoPath,
    ) -> Result<Response<Incoming>, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        match status {
            StatusCode::NOT_FOUND => return Err(ClientError::NotFound(repo.clone())),
            StatusCode::CONFLICT => return Err(ClientError::AlreadyExists(repo.clone())),
            _ => {}
        }
        let body = Limited::new(resp.into_body(), ERROR_BODY_LIMIT);
        let message = match tokio::time::timeout(ADMIN_TIMEOUT, body.collect()).await {
            Ok(Ok(collected)) => String::from_utf8_lossy(&collected.to_bytes())
                .trim()
                .to_owned(),
            _ => String::from("(no readable body)"),
        };
        if status == api::REFUSED {
            return Err(ClientError::Refused {
                node: self.name.clone(),
                message,
            });
        }
        Err(ClientError::Status {
            node: self.name.clone(),
            status: status.as_u16(),
            message,
        })
    }

    pub(super) fn stream(&self, resp: Response<Incoming>) -> GitStream {
        let node = self.name.clone();
        Box::pin(
            BodyDataStream::new(resp.into_body()).map_err(move |err| {
                GitStreamError::Remote(format!("{node}: {}", error_chain(&err)))
            }),
        )
    }

    pub(super) async fn peeked(&self, resp: Response<Incoming>) -> Result<GitStream, ClientError> {
        // The node answered: a body that breaks off before its first byte is a failed
        // answer (git dying on the request mid-way does this too), not a node that
        // cannot be reached; a dead node shows at the next request and health check.
        api::peek(self.stream(resp))
            .await
            .map_err(|err| ClientError::Decode {
                node: self.name.clone(),
                reason: format!("the answer broke off before its first byte: {err}"),
            })
    }

    /// The body of an admin answer, at most `limit` bytes, read within
    /// [`ADMIN_TIMEOUT`]; `what` names it in the timeout error.
    pub(super) async fn admin_body(
        &self,
        resp: Response<Incoming>,
        limit: usize,
        what: &str,
    ) -> Result<Bytes, ClientError> {
        let body = Limited::new(resp.into_body(), limit);
        match tokio::time::timeout(ADMIN_TIMEOUT, body.collect()).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(err)) => Err(ClientError::Decode {
                node: self.name.clone(),
                reason: err.to_string(),
            }),
            Err(_) => Err(ClientError::Unavailable {
                node: self.name.clone(),
                reason: format!("{what} timed out"),
            }),
        }
    }

    pub(super) fn build_error(&self, err: http::Error) -> ClientError {
        ClientError::Decode {
            node: self.name.clone(),
            reason: format!("building request: {err}"),
        }
    }
}

/// Whether `err` says the connection was closed (or reset) after the request went out
/// and before any answer came back: what a pooled connection to a node that has just
/// been restarted, or that is closing the connection, gives. Connect errors are not
/// this: the node is not reachable, and asking again would only wait again.
fn closed_before_answer(err: &hyper_util::client::legacy::Error) -> bool {
    if err.is_connect() {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(h) = cause.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe) {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

/// An error and its causes on one line.
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether a request failed because its own body stream did (hyper's "user" body error),
/// rather than because of the node or the network.
fn request_body_failed(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_user())
        {
            return true;
        }
        next = e.source();
    }
    false
}
