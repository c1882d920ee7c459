//! The smart-HTTP handlers: `info/refs`, `git-upload-pack`, `git-receive-pack`.
//!
//! Follow one upload-pack request: the [`request::parse`] layer (in `app.rs`) makes the
//! [`GitRequest`]; auth checks it; [`handle`] dispatches on its route to
//! [`fetch::upload_pack`], which reads and parses the body, asks the cluster for a read
//! route (one call into `storage-client`), builds the cache key ([`cache_key`]) and
//! either reads the pack cache (one call into `packcache`) or streams from the route's
//! replicas.
//!
//! - [`request`]: the one parsed view of a request;
//! - [`advertise`]: `info/refs` for both services;
//! - [`fetch`]: upload-pack, through the pack cache when the request ends negotiation;
//! - [`push`]: receive-pack, streamed to the primary and acknowledged only once
//!   recorded;
//! - [`cache_key`]: everything that can change an upload-pack response, and nothing
//!   else;
//! - [`response`]: the response shape every git answer shares.
//!
//! Responses are streamed; a stream that breaks after its first byte aborts the
//! connection (see [`crate::body`]).

pub mod advertise;
pub mod cache_key;
pub mod fetch;
pub mod push;
pub mod request;
pub mod response;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::Response;
use axum::Extension;
use gitgate_proto::smart_http::{Endpoint, RouteError};
use gitgate_proto::Service;

use crate::error::AppError;
use crate::state::AppState;
pub use request::{Forwarded, GitRequest, Route};

/// Entry point for every path that is not an operational endpoint.
pub async fn handle(
    State(state): State<Arc<AppState>>,
    Extension(git): Extension<GitRequest>,
    req: Request,
) -> Result<Response, AppError> {
    let (repo, endpoint, service) = match &git.route {
        Route::Git {
            repo,
            endpoint,
            service,
        } => (repo, *endpoint, *service),
        Route::Invalid(RouteError::BadRepo(bad)) => return Err(AppError::BadRepoPath(bad.clone())),
        Route::Invalid(RouteError::NotGit) | Route::Ops => return Err(AppError::NotGit),
    };
    let span = tracing::Span::current();
    span.record("repo", repo.as_str());
    span.record("protocol", git.version().label());
    match (req.method().clone(), endpoint) {
        (Method::GET, Endpoint::InfoRefs) => {
            let service = service.ok_or(AppError::DumbHttp)?;
            span.record("service", service.name());
            advertise::info_refs(&state, &git, repo, service).await
        }
        (Method::POST, Endpoint::Rpc(service)) => {
            span.record("service", service.name());
            match service {
                Service::UploadPack => {
                    let raw = req
                        .extensions()
                        .get::<crate::fetch_body::RawBytes>()
                        .cloned();
                    let send_queue = req
                        .extensions()
                        .get::<Arc<crate::zero_copy::SendQueue>>()
                        .cloned();
                    fetch::upload_pack(&state, &git, repo, req.into_body(), raw, send_queue).await
                }
                Service::ReceivePack => {
                    let (parts, body) = req.into_parts();
                    push::receive_pack(&state, &git, repo, body, &parts.headers).await
                }
            }
        }
        (_, endpoint) => Err(AppError::MethodNotAllowed {
            allow: allowed(endpoint),
        }),
    }
}

/// The one method `endpoint` takes.
pub(crate) fn allowed(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::InfoRefs => "GET",
        Endpoint::Rpc(_) => "POST",
    }
}
