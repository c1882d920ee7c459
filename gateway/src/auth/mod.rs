//! Client authentication and authorization.
//!
//! Who may do what is decided per request, before any cache lookup or node call (cache
//! hits included), from one of:
//!
//! - a trusted reverse proxy's signed header ([`proxy`]): the proxy authenticated the
//!   user and names the repository, the permission and an expiry;
//! - a token ([`token`]), as the HTTP Basic password (any user name) or a Bearer token,
//!   checked against hashes in the config and its read/write repository patterns;
//! - nobody: anonymous access as `auth.anonymous` allows, plus read access to
//!   repositories matching `auth.public`.
//!
//! Outcomes: allowed; 401 with `WWW-Authenticate: Basic` (no or unknown credentials, so
//! git's credential helpers ask); 403 (known client without the scope).

pub mod layer;
pub mod pattern;
pub mod proxy;
pub mod token;

use std::time::SystemTime;

use gitgate_proto::RepoPath;

use pattern::RepoPattern;
use proxy::ProxySecret;
use token::TokenTable;

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    /// Clone and fetch.
    Read,
    /// Push (implies read).
    Write,
    /// Delete the repository (only tokens with an `admin` scope; implies nothing else).
    Admin,
}

impl Permission {
    /// `read` or `write`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

/// The validated `[auth]` section.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// What anyone may do without credentials.
    pub anonymous: Option<Permission>,
    /// Repositories anyone may read.
    pub public: Vec<RepoPattern>,
    /// Known tokens.
    pub tokens: TokenTable,
    /// The trusted proxy's secret and header name, if a proxy is trusted.
    pub proxy: Option<ProxySecret>,
}

/// Credentials found on a request.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// None at all.
    None,
    /// A token (Basic password or Bearer).
    Token(String),
    /// An `Authorization` header that is neither.
    Malformed,
    /// The trusted proxy's header.
    Proxy(String),
}

/// The verdict on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead; `who` names the client for logs.
    Allow {
        /// `anonymous`, `token:<name>` or `proxy`.
        who: String,
    },
    /// 401: no or unknown credentials.
    Unauthenticated {
        /// Why, for logs.
        reason: &'static str,
    },
    /// 403: a known client without the scope.
    Forbidden {
        /// Who asked.
        who: String,
    },
}

impl AuthConfig {
    /// Decide whether `credentials` may `need` on `repo` at `now`.
    pub fn decide(
        &self,
        repo: &RepoPath,
        need: Permission,
        credentials: Credentials,
        now: SystemTime,
    ) -> Decision {
        match credentials {
            Credentials::Proxy(value) => match &self.proxy {
                None => Decision::Unauthenticated {
                    reason: "proxy header sent but no proxy is trusted",
                },
                Some(secret) => match secret.verify(&value, now) {
                    Err(reason) => Decision::Unauthenticated { reason },
                    Ok(grant) if grant.repo == *repo && grant.permission >= need => {
                        Decision::Allow {
                            who: "proxy".into(),
                        }
                    }
                    Ok(_) => Decision::Forbidden {
                        who: "proxy".into(),
                    },
                },
            },
            Credentials::Token(token) => match self.tokens.find(&token) {
                None => Decision::Unauthenticated {
                    reason: "unknown token",
                },
                Some(entry) => {
                    let who = format!("token:{}", entry.name);
                    let allowed = match need {
                        Permission::Read => {
                            entry.can_read(repo) || self.public.iter().any(|p| p.matches(repo))
                        }
                        Permission::Write => entry.can_write(repo),
                        Permission::Admin => entry.can_admin(repo),
                    };
                    if allowed {
                        Decision::Allow { who }
                    } else {
                        Decision::Forbidden { who }
                    }
                }
            },
            Credentials::Malformed => Decision::Unauthenticated {
                reason: "malformed Authorization header",
            },
            Credentials::None => {
                let by_default = self.anonymous.is_some_and(|p| p >= need);
                let public =
                    need == Permission::Read && self.public.iter().any(|p| p.matches(repo));
                if by_default || public {
                    Decision::Allow {
                        who: "anonymous".into(),
                    }
                } else {
                    Decision::Unauthenticated {
                        reason: "credentials required",
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use token::TokenEntry;

    fn repo(r: &str) -> RepoPath {
        RepoPath::parse(r).expect("repo")
    }

    fn config() -> AuthConfig {
        let mut tokens = TokenTable::default();
        tokens.insert(TokenEntry::new(
            "reader".into(),
            token::hash_token("read-secret"),
            vec![RepoPattern::parse("**").expect("p")],
            vec![],
        ));
        tokens.insert(TokenEntry::new(
            "writer".into(),
            token::hash_token("write-secret"),
            vec![],
            vec![RepoPattern::parse("team/*").expect("p")],
        ));
        AuthConfig {
            anonymous: None,
            public: vec![RepoPattern::parse("oss/**").expect("p")],
            tokens,
            proxy: Some(ProxySecret::new("proxy-secret-0123456789".into())),
        }
    }

    #[test]
    fn the_matrix() {
        let c = config();
        let now = SystemTime::now();
        let d = |r: &str, need, cred: Credentials| c.decide(&repo(r), need, cred, now);
        #[allow(non_snake_case)]
        let Token = |t: &str| Credentials::Token(t.to_owned());
        #[allow(non_snake_case)]
        let Proxy = |t: &str| Credentials::Proxy(t.to_owned());
        use Credentials::{Malformed, None};
        use Permission::*;
        assert!(matches!(d("oss/lib", Read, None), Decision::Allow { .. }));
        assert!(matches!(
            d("oss/lib", Write, None),
            Decision::Unauthenticated { .. }
        ));
        assert!(matches!(
            d("team/app", Read, None),
            Decision::Unauthenticated { .. }
        ));
        assert!(matches!(
            d("team/app", Read, Token("read-secret")),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            d("team/app", Write, Token("read-secret")),
            Decision::Forbidden { .. }
        ));
        assert!(matches!(
            d("team/app", Write, Token("write-secret")),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            d("team/app", Read, Token("write-secret")),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            d("other/app", Read, Token("write-secret")),
            Decision::Forbidden { .. }
        ));
        assert!(matches!(
            d("oss/lib", Read, Token("write-secret")),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            d("team/app", Read, Token("wrong")),
            Decision::Unauthenticated { .. }
        ));
        assert!(matches!(
            d("team/app", Read, Malformed),
            Decision::Unauthenticated { .. }
        ));
        let secret = ProxySecret::new("proxy-secret-0123456789".into());
        let grant = secret.sign(
            &repo("team/app"),
            Write,
            now + std::time::Duration::from_secs(60),
        );
        assert!(matches!(
            d("team/app", Write, Proxy(&grant)),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            d("team/other", Read, Proxy(&grant)),
            Decision::Forbidden { .. }
        ));
        let expired = secret.sign(
            &repo("team/app"),
            Write,
            now - std::time::Duration::from_secs(1),
        );
        assert!(matches!(
            d("team/app", Read, Proxy(&expired)),
            Decision::Unauthenticated { .. }
        ));
        let tampered = grant.replace("perm=write", "perm=read");
        assert!(matches!(
            d("team/app", Read, Proxy(&tampered)),
            Decision::Unauthenticated { .. }
        ));
    }
}
