//! A remote `gitgate-node`, reached over HTTP with a shared-secret token: the calls the
//! cluster makes to it. How a request is sent and its answer read is `transport`.

mod transport;

use std::time::{Duration, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use gitgate_proto::RepoPath;
use gitgate_storage_node::api::{
    self, GitStream, ReplicateRequest, RepoState, RequestBody, Secret, TokenScope,
};
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::call::GitCall;
use crate::error::ClientError;

/// How long to wait for a TCP connection to a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long an idle connection to a node is kept for reuse: well under the node's
/// `header_timeout` (10 s by default; keep it above this if you lower it).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// How long admin calls (state, create, delete, health) may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a replication (a `git fetch` between nodes) may take.
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A remote node.
#[derive(Clone)]
pub struct RemoteNode {
    name: String,
    /// Base URL without a trailing slash, e.g. `http://10.0.0.2:9100`.
    base: String,
    /// Shared with clones of this client, so a reload (SIGHUP) reaches all of them.
    secret: std::sync::Arc<std::sync::RwLock<Secret>>,
    client: Client<HttpConnector, Body>,
}

impl std::fmt::Debug for RemoteNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteNode")
            .field("name", &self.name)
            .field("base", &self.base)
            .finish()
    }
}

/// The node URL is not a usable `http://host:port` URL.
#[derive(Debug, thiserror::Error)]
#[error("expected an http://host[:port] URL without path or query, got {0:?}")]
pub struct InvalidNodeUrl(pub String);

impl RemoteNode {
    /// A client for the node at `url` sharing `token` with it.
    pub fn new(name: String, url: &str, token: &str) -> Result<Self, InvalidNodeUrl> {
        let uri: Uri = url.parse().map_err(|_| InvalidNodeUrl(url.to_owned()))?;
        let path_ok = matches!(uri.path(), "" | "/") && uri.query().is_none();
        if uri.scheme_str() != Some("http") || uri.authority().is_none() || !path_ok {
            return Err(InvalidNodeUrl(url.to_owned()));
        }
        let base = format!(
            "http://{}",
            uri.authority().map(|a| a.as_str()).unwrap_or_default()
        );
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            // Drop idle connections before the node does (its `header_timeout`, 10 s by
            // default, also closes kept-alive connections that send nothing): a request
            // sent on a connection the node is closing fails with nothing to retry.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Ok(Self {
            name,
            base,
            secret: std::sync::Arc::new(std::sync::RwLock::new(Secret::new(token))),
            client,
        })
    }

    /// Use `token` for requests from now on.
    pub fn set_token(&self, token: &str) {
        *self.secret.write().unwrap_or_else(|p| p.into_inner()) = Secret::new(token);
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node as addressed: the `host:port` its tokens are bound to.
    fn authority(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// A request with a token for exactly this method and target, used once.
    fn request(
        &self,
        method: Method,
        path_and_query: &str,
        request_id: &str,
    ) -> http::request::Builder {
        let token = self.secret.read().unwrap_or_else(|p| p.into_inner()).token(
            self.authority(),
            TokenScope::Request {
                method: method.as_str(),
                path_and_query,
            },
            SystemTime::now(),
        );
        Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path_and_query))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header("x-request-id", request_id)
    }

    pub(crate) async fn info_refs(&self, call: GitCall<'_>) -> Result<GitStream, ClientError> {
        self.advertisement(call, false).await
    }

    /// The receive-pack advertisement, or an empty repository's when `call.repo` does
    /// not exist (see [`api::EMPTY_IF_MISSING`]).
    pub(crate) async fn push_advertisement_or_empty(
        &self,
        call: GitCall<'_>,
    ) -> Result<GitStream, ClientError> {
        self.advertisement(call, true).await
    }

    async fn advertisement(
        &self,
        call: GitCall<'_>,
        empty_if_missing: bool,
    ) -> Result<GitStream, ClientError> {
        let path = format!(
            "/{}/info/refs?service={}",
            call.repo.relative_dir(),
            call.service.name()
        );
        let build = || {
            let mut req = self.request(Method::GET, &path, call.request_id);
            if let Some(p) = call.protocol {
                req = req.header("git-protocol", p.as_str());
            }
            if empty_if_missing {
                req = req.header(api::EMPTY_IF_MISSING, "1");
            }
            req.body(Body::empty()).map_err(|e| self.build_error(e))
        };
        let resp = self.send_repeatable(build).await?;
        let resp = self.check(resp, call.repo).await?;
        self.peeked(resp).await
    }

    pub(crate) async fn rpc(
        &self,
        call: GitCall<'_>,
        body: RequestBody,
    ) -> Result<GitStream, ClientError> {
        let path = format!("/{}/{}", call.repo.relative_dir(), call.service.name());
        let mut req = self
            .request(Method::POST, &path, call.request_id)
            .header(header::CONTENT_TYPE, call.service.request_content_type());
        if let Some(p) = call.protocol {
            req = req.header("git-protocol", p.as_str());
        }
        let req = req
            .body(Body::from_stream(body))
            .map_err(|e| self.build_error(e))?;
        let resp = self.send(req).await?;
        let resp = self.check(resp, call.repo).await?;
        self.peeked(resp).await
    }

    async fn admin(
        &self,
        method: Method,
        what: &str,
        repo: &RepoPath,
    ) -> Result<Bytes, ClientError> {
        self.admin_with(method, what, repo, None, ADMIN_TIMEOUT)
            .await
    }

    async fn admin_with(
        &self,
        method: Method,
        what: &str,
        repo: &RepoPath,
        json: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<Bytes, ClientError> {
        let mut path = format!("/admin/{what}?repo={}", repo.as_str());
        if let Some(json) = &json {
            // The token covers the query, and so, through its digest, the body.
            path.push_str(&format!(
                "&{}={}",
                api::BODY_DIGEST_PARAM,
                api::body_digest(json)
            ));
        }
        let resp = match json {
            Some(json) => {
                let req = self
                    .request(method, &path, "-")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(json))
                    .map_err(|e| self.build_error(e))?;
                self.send_with_timeout(req, limit).await?
            }
            None if method == Method::GET => {
                let build = || {
                    self.request(Method::GET, &path, "-")
                        .body(Body::empty())
                        .map_err(|e| self.build_error(e))
                };
                self.send_repeatable_within(build, limit).await?
            }
            None => {
                let req = self
                    .request(method, &path, "-")
                    .body(Body::empty())
                    .map_err(|e| self.build_error(e))?;
                self.send_with_timeout(req, limit).await?
            }
        };
        let resp = self.check(resp, repo).await?;
        self.admin_body(resp, 1 << 20, "admin answer").await
    }

    pub(crate) async fn state(&self, repo: &RepoPath) -> Result<RepoState, ClientError> {
        let body = self.admin(Method::GET, "state", repo).await?;
        self.decode(&body)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|e| ClientError::Decode {
            node: self.name.clone(),
            reason: e.to_string(),
        })
    }

    /// The repository's smart-HTTP URL on this node and a fresh `Authorization` value
    /// for it: what another node needs to fetch from here.
    /// The URL of `repo` on this node and the `Authorization` value another node's
    /// `git fetch` uses to copy from it: a token for reading that repository only.
    /// The node's base URL, `http://host:port`.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn fetch_source(&self, repo: &RepoPath) -> (String, String) {
        let token = self.secret.read().unwrap_or_else(|p| p.into_inner()).token(
            self.authority(),
            TokenScope::Fetch {
                repo: repo.as_str(),
            },
            SystemTime::now(),
        );
        (
            format!("{}/{}", self.base, repo.relative_dir()),
            format!("Bearer {token}"),
        )
    }

    pub(crate) async fn replicate(
        &self,
        repo: &RepoPath,
        request: &ReplicateRequest,
    ) -> Result<RepoState, ClientError> {
        let json = serde_json::to_vec(request).map_err(|e| ClientError::Decode {
            node: self.name.clone(),
            reason: e.to_string(),
        })?;
        let body = self
            .admin_with(
                Method::POST,
                "replicate",
                repo,
                Some(json),
                REPLICATE_TIMEOUT,
            )
            .await?;
        self.decode(&body)
    }

    pub(crate) async fn list(&self) -> Result<Vec<String>, ClientError> {
        let build = || {
            self.request(Method::GET, "/admin/repos", "-")
                .body(Body::empty())
                .map_err(|e| self.build_error(e))
        };
        let resp = self.send_repeatable_within(build, ADMIN_TIMEOUT).await?;
        if !resp.status().is_success() {
            return Err(ClientError::Status {
                node: self.name.clone(),
                status: resp.status().as_u16(),
                message: "listing repositories failed".into(),
            });
        }
        let body = self.admin_body(resp, 64 << 20, "listing").await?;
        self.decode(&body)
    }

    pub(crate) async fn create(&self, repo: &RepoPath) -> Result<(), ClientError> {
        self.admin(Method::POST, "create", repo).await.map(drop)
    }

    pub(crate) async fn delete(&self, repo: &RepoPath) -> Result<(), ClientError> {
        self.admin(Method::POST, "delete", repo).await.map(drop)
    }

    pub(crate) async fn check_health(&self) -> Result<Option<api::NodeLoad>, ClientError> {
        let build = || {
            Request::get(format!("{}/-/health", self.base))
                .body(Body::empty())
                .map_err(|e| self.build_error(e))
        };
        let resp = self.send_repeatable_within(build, HEALTH_TIMEOUT).await?;
        if !resp.status().is_success() {
            return Err(ClientError::Unavailable {
                node: self.name.clone(),
                reason: format!("health answered {}", resp.status()),
            });
        }
        let body = Limited::new(resp.into_body(), 4 << 10);
        match tokio::time::timeout(HEALTH_TIMEOUT, body.collect()).await {
            Ok(Ok(collected)) => Ok(api::NodeLoad::parse(&String::from_utf8_lossy(
                &collected.to_bytes(),
            ))),
            Ok(Err(err)) => Err(ClientError::Unavailable {
                node: self.name.clone(),
                reason: format!("reading the health answer: {err}"),
            }),
            Err(_) => Err(ClientError::Unavailable {
                node: self.name.clone(),
                reason: "health answer timed out".into(),
            }),
        }
    }
}
