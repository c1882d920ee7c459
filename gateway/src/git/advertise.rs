//! `GET info/refs`: the ref advertisement. Upload-pack's comes from an up-to-date
//! replica (with failover); receive-pack's from the node that will take the push, which
//! may create the repository (`storage.create_on_push`).

use axum::response::Response;
use gitgate_proto::{RepoPath, Service};

use super::response::{boxed, git_response};
use super::GitRequest;
use crate::error::AppError;
use crate::state::AppState;

/// Answer `info/refs?service=…` for `repo`.
pub async fn info_refs(
    state: &AppState,
    git: &GitRequest,
    repo: &RepoPath,
    service: Service,
) -> Result<Response, AppError> {
    let call = git.call(repo, service);
    let stream = match service {
        Service::ReceivePack => {
            state
                .cluster
                .receive_pack_advertisement(call, state.create_on_push)
                .await?
        }
        Service::UploadPack => state.cluster.upload_pack_advertisement(call).await?,
    };
    Ok(git_response(
        boxed(stream),
        service.advertisement_content_type(),
        false,
    ))
}
