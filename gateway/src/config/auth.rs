//! `[auth]`: anonymous access, public repositories, client tokens and the trusted
//! proxy's secret, turned into the [`crate::auth::AuthConfig`] the middleware decides with.

use serde::Deserialize;

use super::ConfigError;

/// What anonymous clients may do (`auth.anonymous`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Anonymous {
    /// Nothing: every request needs credentials (the default).
    #[default]
    None,
    /// Fetch every repository.
    Read,
    /// Fetch and push every repository.
    Write,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    #[serde(default)]
    anonymous: Anonymous,
    #[serde(default)]
    public: Vec<String>,
    #[serde(default)]
    tokens: Vec<RawToken>,
    proxy: Option<RawProxy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    name: String,
    hash: String,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
    #[serde(default)]
    admin: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    secret: Option<String>,
    header: Option<String>,
}

impl RawAuth {
    /// Check the section; the proxy secret may come from `GITGATE_PROXY_SECRET`.
    pub(super) fn resolve(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<crate::auth::AuthConfig, ConfigError> {
        let raw = self;
        use crate::auth::{pattern::RepoPattern, proxy::ProxySecret, token, Permission};
        let anonymous = match raw.anonymous {
            Anonymous::None => None,
            Anonymous::Read => Some(Permission::Read),
            Anonymous::Write => Some(Permission::Write),
        };
        let patterns = |key: String, list: Vec<String>| -> Result<Vec<RepoPattern>, ConfigError> {
            list.iter()
                .map(|p| RepoPattern::parse(p).map_err(|e| ConfigError::invalid(key.clone(), e)))
                .collect()
        };
        let public = patterns("auth.public".into(), raw.public)?;
        let mut tokens = token::TokenTable::default();
        let mut names = std::collections::HashSet::new();
        for (i, t) in raw.tokens.into_iter().enumerate() {
            let key = format!("auth.tokens[{i}]");
            if t.name.is_empty() || !names.insert(t.name.clone()) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    "a unique, non-empty name is required",
                ));
            }
            if !token::valid_hash(&t.hash) {
                return Err(ConfigError::invalid(
                    format!("{key}.hash"),
                    "expected \"blake3:<64 hex digits>\" as printed by `gitgate hash-token`",
                ));
            }
            let read = patterns(format!("{key}.read"), t.read)?;
            let write = patterns(format!("{key}.write"), t.write)?;
            let admin = patterns(format!("{key}.admin"), t.admin)?;
            tokens.insert(token::TokenEntry::new(t.name, t.hash, read, write).with_admin(admin));
        }
        let proxy = match raw.proxy {
            None => None,
            Some(p) => {
                let secret = env("GITGATE_PROXY_SECRET").or(p.secret).unwrap_or_default();
                if secret.len() < 16 {
                    return Err(ConfigError::invalid("auth.proxy.secret", "a shared secret of at least 16 characters is required (or GITGATE_PROXY_SECRET)"));
                }
                let header = p
                    .header
                    .unwrap_or_else(|| crate::auth::proxy::DEFAULT_HEADER.into());
                if header.is_empty()
                    || !header
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    || header.eq_ignore_ascii_case("authorization")
                {
                    return Err(ConfigError::invalid(
                        "auth.proxy.header",
                        "a header name of [A-Za-z0-9-], not Authorization",
                    ));
                }
                Some(ProxySecret::new(secret).with_header(header))
            }
        };
        Ok(crate::auth::AuthConfig {
            anonymous,
            public,
            tokens,
            proxy,
        })
    }
}
