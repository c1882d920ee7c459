//! [`GitRequest`]: the one parsed view of a request, made once by the [`parse`] layer
//! (see `app.rs`) and read from the request extensions by the access log, auth and the
//! handlers, so the path, `Git-Protocol` and `X-Request-Id` are each read in one place.
//!
//! Parsing never fails the request: a path that is not git, or a repository path that is
//! not acceptable, is recorded as such ([`Route::Invalid`]) and refused by the handler
//! with the right status; operational endpoints are [`Route::Ops`].

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Uri};
use axum::middleware::Next;
use axum::response::Response;
use gitgate_proto::smart_http::{self, Endpoint, RouteError};
use gitgate_proto::{GitProtocol, ProtocolVersion, RepoPath, Service};
use gitgate_storage_client::GitCall;

use crate::auth::Permission;
use crate::client_addr::TrustedProxies;

/// What a request is, as far as git is concerned.
#[derive(Debug, Clone)]
pub struct GitRequest {
    /// The request id (the client's `X-Request-Id`, or one made for it).
    pub request_id: String,
    /// The sanitized `Git-Protocol` header, if the client sent a valid one.
    pub protocol: Option<GitProtocol>,
    /// Where the request goes.
    pub route: Route,
    /// Who the request was authorized as, once auth has run (`anonymous` included).
    pub principal: Option<String>,
    /// The peer's address, when served by the gateway's server loop.
    pub peer: Option<std::net::IpAddr>,
    /// For a request another gateway of the fleet forwarded here (set by
    /// [`crate::peers::endpoint`] once the fleet token checks out). Such a request is
    /// served here and never forwarded again.
    pub forwarded: Option<Forwarded>,
}

/// What the forwarding gateway said about a forwarded request.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The client it authorized.
    pub client: String,
    /// The generation it keys the request under: answered only at that generation.
    pub generation: i64,
}

impl Forwarded {
    /// Refuse (409) when this gateway's route is not the state the forwarder keys the
    /// answer under: another generation, or, for answers that depend on refs (which a
    /// write in flight may already show: advertisements, fetches naming refs), a write
    /// in flight.
    pub fn check(
        &self,
        route: &gitgate_storage_client::cluster::ReadRoute,
        refs_matter: bool,
    ) -> Result<(), crate::error::AppError> {
        if route.generation != self.generation || (refs_matter && route.write_in_flight) {
            return Err(crate::error::AppError::PeerStale);
        }
        Ok(())
    }
}

/// The peer address of a connection, put in each request's extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Where a request goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// A smart-HTTP endpoint of a valid repository.
    Git {
        /// The repository.
        repo: RepoPath,
        /// `info/refs` or one of the two RPC endpoints.
        endpoint: Endpoint,
        /// The service: the endpoint's, or for `info/refs` the `service` query
        /// parameter (`None` for a dumb-HTTP `info/refs`).
        service: Option<Service>,
    },
    /// An operational endpoint under `/-/`.
    Ops,
    /// Not a git path, or a repository path that is not acceptable.
    Invalid(RouteError),
}

impl GitRequest {
    /// Parse a request's path, query and headers.
    pub fn of(uri: &Uri, headers: &HeaderMap) -> Self {
        let route = if let Some(rest) = uri.path().strip_prefix(crate::peers::PEER_PREFIX) {
            // The peer endpoint serves reads only: upload-pack and its advertisement.
            match smart_http::parse_path(&format!("/{rest}")) {
                Ok((repo, endpoint @ Endpoint::Rpc(Service::UploadPack))) => Route::Git {
                    repo,
                    endpoint,
                    service: Some(Service::UploadPack),
                },
                Ok((repo, Endpoint::InfoRefs))
                    if smart_http::service_from_query(uri.query()) == Some(Service::UploadPack) =>
                {
                    Route::Git {
                        repo,
                        endpoint: Endpoint::InfoRefs,
                        service: Some(Service::UploadPack),
                    }
                }
                Ok(_) => Route::Invalid(RouteError::NotGit),
                Err(err) => Route::Invalid(err),
            }
        } else if uri.path().starts_with("/-/") {
            Route::Ops
        } else {
            match smart_http::parse_path(uri.path()) {
                Ok((repo, endpoint)) => {
                    let service = match endpoint {
                        Endpoint::Rpc(service) => Some(service),
                        Endpoint::InfoRefs => smart_http::service_from_query(uri.query()),
                    };
                    Route::Git {
                        repo,
                        endpoint,
                        service,
                    }
                }
                Err(err) => Route::Invalid(err),
            }
        };
        Self {
            request_id: headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned(),
            protocol: headers
                .get("git-protocol")
                .and_then(|v| GitProtocol::parse(v.as_bytes())),
            route,
            principal: None,
            peer: None,
            forwarded: None,
        }
    }

    /// Who counts as one client for the per-client limits: the authenticated name, else
    /// the peer address (anonymous clients are told apart by address); for a forwarded
    /// fetch, the client the forwarding gateway named.
    pub fn client(&self) -> String {
        if let Some(forwarded) = &self.forwarded {
            return forwarded.client.clone();
        }
        match (&self.principal, self.peer) {
            (Some(who), _) if who != "anonymous" => format!("user:{who}"),
            (_, Some(ip)) => format!("ip:{ip}"),
            _ => "anonymous".to_owned(),
        }
    }

    /// The protocol version the client speaks (v0 unless it asked for v2).
    pub fn version(&self) -> ProtocolVersion {
        self.protocol
            .as_ref()
            .map_or(ProtocolVersion::V0, GitProtocol::version)
    }

    /// The service label of metrics and logs: the git service, `ops` or `other`.
    pub fn service_label(&self) -> &'static str {
        match &self.route {
            Route::Git {
                service: Some(service),
                ..
            } => service.name(),
            Route::Ops => "ops",
            Route::Git { service: None, .. } | Route::Invalid(_) => "other",
        }
    }

    /// The repository and the permission the request needs on it; `None` when the
    /// request names no valid repository (the handler refuses it).
    pub fn needs(&self) -> Option<(&RepoPath, Permission)> {
        match &self.route {
            Route::Git { repo, service, .. } => Some((
                repo,
                match service {
                    Some(Service::ReceivePack) => Permission::Write,
                    _ => Permission::Read,
                },
            )),
            Route::Ops | Route::Invalid(_) => None,
        }
    }

    /// The node call for `service` on `repo`, carrying this request's protocol and id.
    pub fn call<'a>(&'a self, repo: &'a RepoPath, service: Service) -> GitCall<'a> {
        GitCall {
            repo,
            service,
            protocol: self.protocol.as_ref(),
            request_id: &self.request_id,
        }
    }
}

/// The layer function: parse the request once and put the [`GitRequest`] in its
/// extensions for everything below. The client's address is the connection's peer, or
/// the one a trusted proxy forwarded ([`crate::client_addr`]).
pub async fn parse(
    State(proxies): State<Arc<TrustedProxies>>,
    mut req: Request,
    next: Next,
) -> Response {
    let mut git = GitRequest::of(req.uri(), req.headers());
    git.peer = req
        .extensions()
        .get::<PeerAddr>()
        .map(|p| proxies.client(p.0.ip(), req.headers()));
    req.extensions_mut().insert(git);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(uri: &str, protocol: Option<&str>) -> GitRequest {
        let mut headers = HeaderMap::new();
        if let Some(p) = protocol {
            headers.insert("git-protocol", p.parse().expect("header"));
        }
        headers.insert("x-request-id", "abc".parse().expect("header"));
        GitRequest::of(&uri.parse().expect("uri"), &headers)
    }

    #[test]
    fn routes_services_and_permissions() {
        let r = of("/g/r.git/info/refs?service=git-receive-pack", None);
        assert_eq!(r.service_label(), "git-receive-pack");
        assert!(matches!(r.needs(), Some((repo, Permission::Write)) if repo.as_str() == "g/r"));
        assert_eq!(r.request_id, "abc");
        let r = of("/g/r/git-upload-pack", Some("version=2"));
        assert_eq!(r.version(), ProtocolVersion::V2);
        assert!(matches!(r.needs(), Some((_, Permission::Read))));
        let dumb = of("/g/r.git/info/refs", None);
        assert_eq!(dumb.service_label(), "other");
        assert!(matches!(dumb.needs(), Some((_, Permission::Read))));
        assert!(matches!(of("/-/metrics", None).route, Route::Ops));
        assert!(matches!(
            of("/../etc/git-upload-pack", None).route,
            Route::Invalid(_)
        ));
        assert!(of("/x/y", None).needs().is_none());
    }
}
