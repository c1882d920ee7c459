//! The authorization middleware on the git routes.
//!
//! It runs before the handler (so before any cache lookup or node call) on every git
//! request: it takes the repository and the permission the request needs from its
//! [`GitRequest`], reads the credentials, and either lets the request through (recording
//! who it is in the request's span and as the request's principal) or answers 401/403.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use gitgate_proto::RepoPath;

use super::{Credentials, Decision, Permission};
use crate::error::AppError;
use crate::git::GitRequest;
use crate::state::AppState;

/// Authorize a git request (see the module docs).
pub async fn require(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    // Requests that name no valid repository are the handler's to refuse.
    let Some(git) = req.extensions().get::<GitRequest>() else {
        return next.run(req).await;
    };
    let Some((repo, need)) = git.needs() else {
        return next.run(req).await;
    };
    match authorize(&state, repo, need, req.headers()) {
        Ok(who) => {
            if let Some(git) = req.extensions_mut().get_mut::<GitRequest>() {
                git.principal = Some(who);
            }
            next.run(req).await
        }
        Err(refused) => refused.into_response(),
    }
}

/// Decide whether a request with `headers` may `need` on `repo`: counts the decision,
/// records who asked in the request's span, and gives who it is or the refusal to
/// answer with.
pub fn authorize(
    state: &AppState,
    repo: &RepoPath,
    need: Permission,
    headers: &HeaderMap,
) -> Result<String, AppError> {
    let auth = state.auth();
    let proxy_header = auth.proxy.as_ref().map(|p| p.header());
    let credentials = credentials(headers, proxy_header);
    let method = match credentials {
        Credentials::None => "anonymous",
        Credentials::Token(_) => "token",
        Credentials::Malformed => "malformed",
        Credentials::Proxy(_) => "proxy",
    };
    let decision = auth.decide(repo, need, credentials, SystemTime::now());
    let result = match &decision {
        Decision::Allow { .. } => "allowed",
        Decision::Unauthenticated { .. } => "unauthenticated",
        Decision::Forbidden { .. } => "forbidden",
    };
    state
        .metrics
        .client_auth
        .with_label_values(&[method, result])
        .inc();
    match decision {
        Decision::Allow { who } => {
            tracing::Span::current().record("user", who.as_str());
            Ok(who)
        }
        Decision::Unauthenticated { reason } => {
            tracing::debug!(reason, "unauthenticated request");
            Err(AppError::Unauthenticated)
        }
        Decision::Forbidden { who } => {
            tracing::Span::current().record("user", who.as_str());
            Err(AppError::Forbidden {
                permission: need.label(),
            })
        }
    }
}

/// Read the credentials of a request: the trusted proxy's header wins, then
/// `Authorization: Basic` (the password, or the user name when the password is empty)
/// or `Authorization: Bearer`.
fn credentials(headers: &HeaderMap, proxy_header: Option<&str>) -> Credentials {
    if let Some(name) = proxy_header {
        if let Some(value) = headers.get(name) {
            return value
                .to_str()
                .map_or(Credentials::Malformed, |v| Credentials::Proxy(v.to_owned()));
        }
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Credentials::None;
    };
    let Ok(value) = value.to_str() else {
        return Credentials::Malformed;
    };
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Credentials::Token(token.trim().to_owned());
    }
    if let Some(encoded) = value.strip_prefix("Basic ") {
        return basic_secret(encoded.trim()).map_or(Credentials::Malformed, Credentials::Token);
    }
    Credentials::Malformed
}

/// The secret in Basic credentials: the password, or the user name when the password
/// is empty (clients that put a token in the user field).
fn basic_secret(encoded: &str) -> Option<String> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    let secret = if password.is_empty() { user } else { password };
    (!secret.is_empty()).then(|| secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_basic_bearer_and_proxy_credentials() {
        let mut h = HeaderMap::new();
        assert!(matches!(credentials(&h, None), Credentials::None));
        h.insert(
            header::AUTHORIZATION,
            "Basic dXNlcjpzM2NyZXQ=".parse().expect("header"),
        );
        assert!(matches!(credentials(&h, None), Credentials::Token(t) if t == "s3cret"));
        h.insert(
            header::AUTHORIZATION,
            "Basic dG9rZW46".parse().expect("header"),
        );
        assert!(matches!(credentials(&h, None), Credentials::Token(t) if t == "token"));
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().expect("header"));
        assert!(matches!(credentials(&h, None), Credentials::Token(t) if t == "abc"));
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().expect("header"));
        assert!(matches!(credentials(&h, None), Credentials::Malformed));
        h.insert("gitgate-proxy-auth", "v1;x".parse().expect("header"));
        assert!(matches!(
            credentials(&h, Some("gitgate-proxy-auth")),
            Credentials::Proxy(_)
        ));
    }
}
