//! The owner's side: `POST /-/peer/<repo>/git-upload-pack` (a fetch or a v2 `ls-refs`)
//! and `GET /-/peer/<repo>/info/refs?service=git-upload-pack`, which another gateway of
//! the fleet authorized and forwarded. Outside client auth; the fleet token stands for
//! the forwarding gateway's authorization (P1 in [`super`]). The fetch is then served
//! as this gateway's own, with the forwarded client counted by its limits, and never
//! forwarded again.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use gitgate_storage_client::tokens::AuthError;

use super::{decode_client, CLIENT_HEADER, GENERATION_HEADER};
use crate::error::AppError;
use gitgate_proto::smart_http::Endpoint;
use gitgate_proto::Service;

use crate::git::{advertise, fetch, Forwarded, GitRequest, Route};
use crate::state::AppState;

/// Serve a forwarded fetch.
pub async fn serve(
    State(state): State<Arc<AppState>>,
    Extension(mut git): Extension<GitRequest>,
    req: Request,
) -> Result<Response, AppError> {
    // Not part of a fleet: no peer endpoint.
    let Some(peers) = state.peers.as_ref() else {
        return Err(AppError::NotGit);
    };
    let Route::Git { repo, endpoint, .. } = git.route.clone() else {
        return Err(AppError::NotGit);
    };
    let method = req.method().clone();
    match (&method, endpoint) {
        (&Method::POST, Endpoint::Rpc(_)) | (&Method::GET, Endpoint::InfoRefs) => {}
        (_, endpoint) => {
            return Err(AppError::MethodNotAllowed {
                allow: crate::git::allowed(endpoint),
            })
        }
    }
    // Checked before anything else; the header borrows end here (the body is not Sync).
    let forwarded = {
        let header_text = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        let token = header_text(header::AUTHORIZATION.as_str()).strip_prefix("Bearer ");
        let target = req
            .uri()
            .path_and_query()
            .map_or(req.uri().path(), |p| p.as_str());
        let client = header_text(CLIENT_HEADER);
        let generation = header_text(GENERATION_HEADER);
        let protocol = header_text("git-protocol");
        peers.verify(token, method.as_str(), target, client, protocol, generation)?;
        // Signed by a fleet member: malformed values are its bug, not an attack.
        let (Some(client), Ok(generation)) = (decode_client(client), generation.parse()) else {
            return Err(AppError::PeerRefused(AuthError::Malformed));
        };
        Forwarded { client, generation }
    };
    let span = tracing::Span::current();
    span.record("repo", repo.as_str());
    span.record("service", Service::UploadPack.name());
    span.record("protocol", git.version().label());
    span.record("user", forwarded.client.as_str());
    span.record("peer", "forwarded to this owner");
    git.forwarded = Some(forwarded);
    let raw = req
        .extensions()
        .get::<crate::fetch_body::RawBytes>()
        .cloned();
    let send_queue = req
        .extensions()
        .get::<Arc<crate::zero_copy::SendQueue>>()
        .cloned();
    let answer = match endpoint {
        Endpoint::InfoRefs => advertise::info_refs(&state, &git, &repo, Service::UploadPack).await,
        Endpoint::Rpc(_) => {
            fetch::upload_pack(&state, &git, &repo, req.into_body(), raw, send_queue).await
        }
    };
    let outcome = match &answer {
        Ok(_) => "ok",
        Err(AppError::Refused(_)) => "refused",
        Err(_) => "error",
    };
    peers.metrics.count("owner", outcome);
    if let Err(AppError::Refused(message)) = &answer {
        // Not an answer to keep: the forwarding gateway asks its own nodes, which
        // refuse the same way (it sees a status other than 200, see `forward`).
        return Ok((
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            format!("git refused the request: {message}\n"),
        )
            .into_response());
    }
    answer.map(|mut resp| {
        let checked = resp.extensions().get::<fetch::PackChecked>();
        if checked.is_some_and(|fetch::PackChecked(key)| peers.vouches_for(key)) {
            resp.headers_mut().insert(
                super::PACK_CHECKED_HEADER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    })
}
