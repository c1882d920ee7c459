//! The node's side of the shared-secret tokens: checking them and counting outcomes.
//!
//! The token scheme itself (what clients mint) is [`crate::api::Secret`]. A node accepts
//! a token whose MAC matches this request (this node as addressed, its method and path
//! for a request token, its repository and an upload-pack endpoint for a fetch token)
//! and whose timestamp is within the skew window of its own clock. A request token is
//! single-use: one seen before within the window is refused as replayed, and counted.
//! In `transitioning` mode a node accepts every request but counts (and logs) the ones
//! whose token would have been refused, so a secret can be rotated without failing
//! traffic.

use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounterVec, Opts, Registry};

pub use crate::api::{Secret, TokenScope, DEFAULT_SKEW};

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token was sent.
    #[error("missing node token")]
    Missing,
    /// The token is not of the form `v1.<ts>.<mac>`.
    #[error("malformed node token")]
    Malformed,
    /// The timestamp is outside the skew window.
    #[error("node token expired or from the future")]
    Expired,
    /// The MAC does not match (another secret, node, method, path or repository).
    #[error("node token signature mismatch")]
    BadSignature,
    /// A single-use token seen before.
    #[error("node token already used")]
    Replayed,
    /// A fetch token used for something other than reading its repository with git.
    #[error("node token not valid for this request")]
    OutOfScope,
}

/// What the node knows of the request a token comes with.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// The token (the value after `Bearer `).
    pub token: Option<&'a str>,
    /// The request method.
    pub method: &'a str,
    /// The request target (path and query).
    pub path_and_query: &'a str,
    /// The `Host` the client addressed.
    pub host: &'a str,
}

/// Whether failures are refused or only counted (`node.auth_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse requests with bad tokens.
    Enforced,
    /// Accept every request; count bad tokens.
    Transitioning,
}

/// Checks tokens on a node and counts outcomes in
/// `gitgate_authentications_total{enforced,status}`. The secret and mode can be replaced
/// while serving (SIGHUP), which is how a secret is rotated without failing requests.
#[derive(Debug)]
pub struct Verifier {
    current: RwLock<(Secret, Mode)>,
    skew: Duration,
    outcomes: IntCounterVec,
    /// Single-use nonces seen within the window, with when they expire.
    seen: std::sync::Mutex<Seen>,
}

/// Nonces of request tokens seen, each until its token could no longer be accepted.
#[derive(Debug, Default)]
struct Seen {
    expiry: std::collections::HashMap<String, u64>,
    inserts: u64,
}

impl Seen {
    /// Record `nonce` until `until`; `false` when it was already there.
    fn first_use(&mut self, nonce: &str, until: u64, now: u64) -> bool {
        self.inserts += 1;
        if self.inserts % 1024 == 0 {
            self.expiry.retain(|_, &mut e| e >= now);
        }
        match self.expiry.get(nonce) {
            Some(&e) if e >= now => false,
            _ => {
                self.expiry.insert(nonce.to_owned(), until);
                true
            }
        }
    }
}

impl AuthError {
    fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::BadSignature => "bad_signature",
            Self::Replayed => "replayed",
            Self::OutOfScope => "out_of_scope",
        }
    }
}

impl Verifier {
    /// A verifier for `secret`, registering its counter on `registry`.
    pub fn new(
        secret: Secret,
        mode: Mode,
        skew: Duration,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let outcomes = IntCounterVec::new(
            Opts::new(
                "gitgate_authentications_total",
                "Internal token checks by enforcement and outcome.",
            ),
            &["enforced", "status"],
        )?;
        registry.register(Box::new(outcomes.clone()))?;
        Ok(Self::counting_into(secret, mode, skew, outcomes))
    }

    /// A verifier for `secret` that counts outcomes in `outcomes` (labels `enforced`
    /// and `status`), for tokens other than the node's own.
    pub fn counting_into(
        secret: Secret,
        mode: Mode,
        skew: Duration,
        outcomes: IntCounterVec,
    ) -> Self {
        Self {
            current: RwLock::new((secret, mode)),
            skew,
            outcomes,
            seen: std::sync::Mutex::new(Seen::default()),
        }
    }

    /// Replace the secret and mode.
    pub fn reload(&self, secret: Secret, mode: Mode) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (secret, mode);
    }

    /// Check the token `presented` with a request. `Ok` means: let the request through.
    pub fn check(&self, presented: Presented<'_>, now: SystemTime) -> Result<(), AuthError> {
        let (secret, mode) = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let enforced = if mode == Mode::Enforced {
            "true"
        } else {
            "false"
        };
        let checked = verify(&secret, presented, now, self.skew).and_then(|single_use| {
            let Some((nonce, until, now)) = single_use else {
                return Ok(());
            };
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.first_use(&nonce, until, now) {
                Ok(())
            } else {
                Err(AuthError::Replayed)
            }
        });
        match checked {
            Ok(()) => {
                self.outcomes.with_label_values(&[enforced, "ok"]).inc();
                Ok(())
            }
            Err(err) => {
                self.outcomes
                    .with_label_values(&[enforced, err.label()])
                    .inc();
                match mode {
                    Mode::Enforced => Err(err),
                    Mode::Transitioning => {
                        tracing::warn!(error = %err, "accepting bad node token (transitioning mode)");
                        Ok(())
                    }
                }
            }
        }
    }

    /// How many checks had `status` (`ok`, `missing`, `malformed`, `expired`,
    /// `bad_signature`) under `enforced`.
    pub fn count(&self, enforced: bool, status: &str) -> u64 {
        self.outcomes
            .with_label_values(&[if enforced { "true" } else { "false" }, status])
            .get()
    }
}

/// Verify a presented token against `secret` at `now`. For a single-use token, returns
/// its nonce and until when (unix seconds) it must not be seen again, with `now`.
pub fn verify(
    secret: &Secret,
    presented: Presented<'_>,
    now: SystemTime,
    skew: Duration,
) -> Result<Option<(String, u64, u64)>, AuthError> {
    let token = presented.token.ok_or(AuthError::Missing)?;
    let mut parts = token.split('.');
    let (Some("v2"), Some(ts), Some(nonce), Some(kind), Some(mac), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(AuthError::Malformed);
    };
    let ts: u64 = ts.parse().map_err(|_| AuthError::Malformed)?;
    let mac = blake3::Hash::from_hex(mac).map_err(|_| AuthError::Malformed)?;
    let (scope, single_use) = match kind {
        "r" => (
            TokenScope::Request {
                method: presented.method,
                path_and_query: presented.path_and_query,
            },
            true,
        ),
        "f" => {
            // Only reading a repository with git: its info/refs for upload-pack, or
            // upload-pack itself.
            let path = presented
                .path_and_query
                .split('?')
                .next()
                .unwrap_or_default();
            let reads = match gitgate_proto::smart_http::parse_path(path) {
                Ok((repo, gitgate_proto::smart_http::Endpoint::InfoRefs)) => {
                    let query = presented.path_and_query.split_once('?').map(|(_, q)| q);
                    (presented.method == "GET"
                        && gitgate_proto::smart_http::service_from_query(query)
                            == Some(gitgate_proto::Service::UploadPack))
                    .then_some(repo)
                }
                Ok((
                    repo,
                    gitgate_proto::smart_http::Endpoint::Rpc(gitgate_proto::Service::UploadPack),
                )) => (presented.method == "POST").then_some(repo),
                _ => None,
            };
            let Some(repo) = reads else {
                return Err(AuthError::OutOfScope);
            };
            let repo = repo.as_str().to_owned();
            // The MAC is checked below against this repository.
            return check_mac(
                secret,
                ts,
                nonce,
                presented.host,
                TokenScope::Fetch { repo: &repo },
                &mac,
                now,
                skew,
            )
            .map(|_| None);
        }
        _ => return Err(AuthError::Malformed),
    };
    let now_s = check_mac(secret, ts, nonce, presented.host, scope, &mac, now, skew)?;
    Ok(single_use.then(|| (nonce.to_owned(), ts + skew.as_secs(), now_s)))
}

/// The MAC and the time of a token; returns `now` in unix seconds.
#[allow(clippy::too_many_arguments)]
fn check_mac(
    secret: &Secret,
    ts: u64,
    nonce: &str,
    host: &str,
    scope: crate::api::TokenScope<'_>,
    mac: &blake3::Hash,
    now: SystemTime,
    skew: Duration,
) -> Result<u64, AuthError> {
    // blake3::Hash compares in constant time.
    if *mac != secret.mac(ts, nonce, host, scope) {
        return Err(AuthError::BadSignature);
    }
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now.abs_diff(ts) > skew.as_secs() {
        return Err(AuthError::Expired);
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presented<'a>(
        token: &'a str,
        method: &'a str,
        path: &'a str,
        host: &'a str,
    ) -> Presented<'a> {
        Presented {
            token: Some(token),
            method,
            path_and_query: path,
            host,
        }
    }

    const HOST: &str = "10.0.0.1:9100";

    fn request_token(s: &Secret, method: &str, path: &str, now: SystemTime) -> String {
        s.token(
            HOST,
            TokenScope::Request {
                method,
                path_and_query: path,
            },
            now,
        )
    }

    #[test]
    fn bound_to_node_method_path_and_time() {
        let s = Secret::new("hunter2");
        let now = SystemTime::now();
        let tok = request_token(&s, "GET", "/admin/state?repo=a", now);
        let ok = verify(
            &s,
            presented(&tok, "GET", "/admin/state?repo=a", HOST),
            now,
            DEFAULT_SKEW,
        );
        assert!(matches!(ok, Ok(Some(_))), "{ok:?}");
        for (method, path, host) in [
            ("POST", "/admin/state?repo=a", HOST),
            ("GET", "/admin/state?repo=b", HOST),
            ("GET", "/admin/repos", HOST),
            ("GET", "/admin/state?repo=a", "10.0.0.2:9100"),
        ] {
            assert_eq!(
                verify(&s, presented(&tok, method, path, host), now, DEFAULT_SKEW),
                Err(AuthError::BadSignature),
                "{method} {path} {host}"
            );
        }
        let later = now + Duration::from_secs(600);
        assert_eq!(
            verify(
                &s,
                presented(&tok, "GET", "/admin/state?repo=a", HOST),
                later,
                DEFAULT_SKEW
            ),
            Err(AuthError::Expired)
        );
        assert_eq!(
            verify(
                &Secret::new("other"),
                presented(&tok, "GET", "/admin/state?repo=a", HOST),
                now,
                DEFAULT_SKEW
            ),
            Err(AuthError::BadSignature)
        );
        for junk in [
            "",
            "v1",
            "v1.1.00",
            "v2.x.n.r.00",
            "v2.1.n.z.00",
            "v2.1.n.r.zz.extra",
        ] {
            assert!(
                verify(&s, presented(junk, "GET", "/", HOST), now, DEFAULT_SKEW).is_err(),
                "{junk}"
            );
        }
    }

    #[test]
    fn fetch_tokens_read_one_repository_only() {
        let s = Secret::new("hunter2");
        let now = SystemTime::now();
        let tok = s.token(HOST, TokenScope::Fetch { repo: "g/r" }, now);
        let check =
            |method, path| verify(&s, presented(&tok, method, path, HOST), now, DEFAULT_SKEW);
        assert_eq!(
            check("GET", "/g/r.git/info/refs?service=git-upload-pack"),
            Ok(None)
        );
        assert_eq!(check("POST", "/g/r.git/git-upload-pack"), Ok(None));
        assert_eq!(
            check("POST", "/g/r.git/git-upload-pack"),
            Ok(None),
            "multi-use"
        );
        assert_eq!(
            check("POST", "/g/other.git/git-upload-pack"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            check("POST", "/g/r.git/git-receive-pack"),
            Err(AuthError::OutOfScope)
        );
        assert_eq!(
            check("GET", "/g/r.git/info/refs?service=git-receive-pack"),
            Err(AuthError::OutOfScope)
        );
        assert_eq!(
            check("DELETE", "/admin/repos?repo=g/r"),
            Err(AuthError::OutOfScope)
        );
    }

    #[test]
    fn request_tokens_are_single_use_and_transitioning_counts_but_accepts() {
        let v = Verifier::new(
            Secret::new("new"),
            Mode::Enforced,
            DEFAULT_SKEW,
            &Registry::new(),
        )
        .expect("verifier");
        let now = SystemTime::now();
        let tok = request_token(&Secret::new("new"), "GET", "/admin/repos", now);
        let p = presented(&tok, "GET", "/admin/repos", HOST);
        assert_eq!(v.check(p, now), Ok(()));
        assert_eq!(v.check(p, now), Err(AuthError::Replayed));
        assert_eq!(v.count(true, "replayed"), 1);
        v.reload(Secret::new("new"), Mode::Transitioning);
        let old = request_token(&Secret::new("old"), "GET", "/admin/repos", now);
        assert_eq!(
            v.check(presented(&old, "GET", "/admin/repos", HOST), now),
            Ok(())
        );
        assert_eq!(v.count(false, "bad_signature"), 1);
        let missing = Presented {
            token: None,
            method: "GET",
            path_and_query: "/admin/repos",
            host: HOST,
        };
        assert_eq!(v.check(missing, now), Ok(()));
        assert_eq!(v.count(false, "missing"), 1);
    }
}
