//! `GET info/refs`: the ref advertisement. Upload-pack's comes from the advertisement
//! cache or an up-to-date replica (with failover); receive-pack's, never cached, from
//! the node that will take the push.

use axum::response::Response;
use gitgate_proto::{RepoPath, Service};

use super::cache_key::advert_key;
use super::response::{boxed, git_response, git_response_of_len};
use super::GitRequest;
use crate::advert_cache::{Answer, Kind};
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
        Service::UploadPack => {
            let route = state.cluster.read_route(repo).await?;
            if let Some(forwarded) = &git.forwarded {
                forwarded.check(&route, true)?;
            }
            let Some(adverts) = &state.adverts else {
                let stream = state
                    .cluster
                    .upload_pack_advertisement(&route, call)
                    .await?;
                return Ok(git_response(
                    boxed(stream),
                    service.advertisement_content_type(),
                    false,
                ));
            };
            let key = advert_key(
                Kind::InfoRefs,
                repo,
                route.generation,
                git.protocol.as_ref(),
                b"",
            );
            // In a fleet, the key's owner asks the node, and this cache takes its answer.
            let owner = crate::peers::owner_of(state.peers.as_ref(), git, &key);
            let fetch = async {
                if let Some(owner) = &owner {
                    let what = crate::peers::Forward::Advertisement {
                        generation: route.generation,
                    };
                    if let Some(stream) = super::fetch::from_owner(owner, git, repo, what).await? {
                        return Ok(stream);
                    }
                }
                let stream = state
                    .cluster
                    .upload_pack_advertisement(&route, call)
                    .await?;
                Ok(boxed(stream))
            };
            let answer = adverts
                .answer(Kind::InfoRefs, key, !route.write_in_flight, fetch)
                .await?;
            return Ok(advert_response(
                answer,
                service.advertisement_content_type(),
            ));
        }
    };
    Ok(git_response(
        boxed(stream),
        service.advertisement_content_type(),
        false,
    ))
}

/// The response for an advertisement cache answer: with its length when whole.
pub fn advert_response(answer: Answer, content_type: &'static str) -> Response {
    match answer {
        Answer::Whole(bytes) => {
            let len = bytes.len() as u64;
            git_response_of_len(
                Box::pin(futures_util::stream::once(async move { Ok(bytes) })),
                content_type,
                false,
                Some(len),
            )
        }
        Answer::Stream(stream) => git_response(stream, content_type, false),
    }
}
