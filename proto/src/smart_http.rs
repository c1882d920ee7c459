//! The URL layout of git's smart HTTP protocol, as pure string parsing.
//!
//! `/{repo}[.git]/info/refs`, `/{repo}[.git]/git-upload-pack` and
//! `/{repo}[.git]/git-receive-pack`. Anything else (dumb-HTTP object paths included)
//! is not a smart-HTTP endpoint.

use crate::repo_path::{InvalidRepoPath, RepoPath};
use crate::service::Service;

/// Which smart-HTTP endpoint a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET .../info/refs?service=...`: the ref advertisement.
    InfoRefs,
    /// `POST .../git-upload-pack` or `.../git-receive-pack`.
    Rpc(Service),
}

/// Why a path is not a smart-HTTP request for a valid repository.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// The path does not end in a smart-HTTP endpoint.
    #[error("not a smart-HTTP git path")]
    NotGit,
    /// The repository part is not a valid repository path.
    #[error(transparent)]
    BadRepo(#[from] InvalidRepoPath),
}

/// Split a request path (with its leading `/`, without the query) into repository and
/// endpoint.
pub fn parse_path(path: &str) -> Result<(RepoPath, Endpoint), RouteError> {
    let path = path.strip_prefix('/').ok_or(RouteError::NotGit)?;
    let (repo, endpoint) = if let Some(repo) = path.strip_suffix("/info/refs") {
        (repo, Endpoint::InfoRefs)
    } else if let Some(repo) = path.strip_suffix("/git-upload-pack") {
        (repo, Endpoint::Rpc(Service::UploadPack))
    } else if let Some(repo) = path.strip_suffix("/git-receive-pack") {
        (repo, Endpoint::Rpc(Service::ReceivePack))
    } else {
        return Err(RouteError::NotGit);
    };
    Ok((RepoPath::parse(repo)?, endpoint))
}

/// The `service` parameter of an `info/refs` query string, if it names a smart service.
pub fn service_from_query(query: Option<&str>) -> Option<Service> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("service="))
        .and_then(Service::from_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        let (repo, ep) = parse_path("/g/p.git/info/refs").expect("valid");
        assert_eq!((repo.as_str(), ep), ("g/p", Endpoint::InfoRefs));
        let (repo, ep) = parse_path("/p/git-receive-pack").expect("valid");
        assert_eq!(
            (repo.as_str(), ep),
            ("p", Endpoint::Rpc(Service::ReceivePack))
        );
        assert_eq!(parse_path("/p.git/HEAD"), Err(RouteError::NotGit));
        assert!(matches!(
            parse_path("/../x.git/info/refs"),
            Err(RouteError::BadRepo(_))
        ));
        assert_eq!(
            service_from_query(Some("x=1&service=git-upload-pack")),
            Some(Service::UploadPack)
        );
        assert_eq!(service_from_query(Some("service=git-upload-archive")), None);
    }
}
