//! `[cluster]`: how this gateway joins a fleet of gateways sharing one PostgreSQL store
//! (see [`crate::peers`]). Absent, the gateway serves alone.

use std::time::Duration;

use serde::Deserialize;

use super::metadata::MetadataConfig;
use super::ConfigError;

/// The environment variable that overrides `cluster.secret`.
pub const CLUSTER_SECRET_ENV: &str = "GITGATE_CLUSTER_SECRET";

/// `[cluster]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// How peers reach this gateway: `http://host:port`, no path.
    pub advertise_url: String,
    /// The `host:port` of `advertise_url` (what peer tokens are bound to).
    pub authority: String,
    /// The fleet's shared secret.
    pub secret: String,
    /// How often this gateway renews its registration and rereads the live set.
    pub heartbeat: Duration,
    /// How long a registration lasts without renewal: a gateway that died stops
    /// owning keys after at most this long.
    pub expiry: Duration,
    /// How long a forwarded fetch may wait for the owner's response headers (which
    /// come with the first bytes of the pack) before this gateway serves it itself.
    pub first_byte_timeout: Duration,
}

/// `[cluster]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    advertise_url: Option<String>,
    secret: Option<String>,
    #[serde(with = "humantime_serde", default = "default_heartbeat")]
    heartbeat: Duration,
    #[serde(with = "humantime_serde", default = "default_expiry")]
    expiry: Duration,
    #[serde(with = "humantime_serde", default = "default_first_byte_timeout")]
    first_byte_timeout: Duration,
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}

fn default_expiry() -> Duration {
    Duration::from_secs(5)
}

fn default_first_byte_timeout() -> Duration {
    Duration::from_secs(60)
}

impl RawCluster {
    /// Check the section against the metadata store it needs; the secret may come
    /// from [`CLUSTER_SECRET_ENV`].
    pub(super) fn resolve(
        self,
        metadata: Option<&MetadataConfig>,
        tls: bool,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Vec<ConfigError>,
    ) -> Option<ClusterConfig> {
        if tls {
            problems.push(ConfigError::invalid(
                "cluster",
                "peers speak plaintext HTTP to advertise_url, and a TLS listener serves only HTTPS: a fleet needs a plaintext listener (put TLS in front, at the load balancer)",
            ));
        }
        if let Some(MetadataConfig::Embedded(_)) = metadata {
            problems.push(ConfigError::invalid(
                "cluster",
                "a fleet needs a shared store: gateways find each other and agree on generations through PostgreSQL; set [metadata] postgres_url (or GITGATE_POSTGRES_URL), or remove [cluster] to serve alone",
            ));
        }
        let secret = env(CLUSTER_SECRET_ENV).or(self.secret).unwrap_or_default();
        if secret.len() < 16 {
            problems.push(ConfigError::invalid(
                "cluster.secret",
                format!("a secret shared by the fleet, at least 16 characters, is required (or {CLUSTER_SECRET_ENV})"),
            ));
        }
        let authority = match self.advertise_url.as_deref().map(authority_of) {
            Some(Ok(authority)) => Some(authority),
            Some(Err(reason)) => {
                problems.push(ConfigError::invalid("cluster.advertise_url", reason));
                None
            }
            None => {
                problems.push(ConfigError::invalid(
                    "cluster.advertise_url",
                    "required: how the other gateways reach this one, e.g. \"http://10.0.0.5:8080\"",
                ));
                None
            }
        };
        if self.heartbeat.is_zero() || self.expiry < self.heartbeat * 2 {
            problems.push(ConfigError::invalid(
                "cluster.expiry",
                "must be at least twice cluster.heartbeat (and the heartbeat longer than zero), so one late renewal does not drop a live gateway",
            ));
        }
        if self.first_byte_timeout.is_zero() {
            problems.push(ConfigError::invalid(
                "cluster.first_byte_timeout",
                "must be longer than zero",
            ));
        }
        let advertise_url = self.advertise_url?.trim_end_matches('/').to_owned();
        Some(ClusterConfig {
            advertise_url,
            authority: authority?,
            secret,
            heartbeat: self.heartbeat,
            expiry: self.expiry,
            first_byte_timeout: self.first_byte_timeout,
        })
    }
}

/// The `host:port` of a plain `http://host:port` URL. Peers speak plaintext HTTP to
/// each other (a fleet's internal network); the port is required so the URL names
/// exactly one listener.
fn authority_of(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("must be an http:// URL (peer traffic is plaintext HTTP on the fleet's network)")?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err("must be http://host:port with no path, query or user".into());
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(authority.to_owned())
        }
        _ => Err("must name the port: http://host:port".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str, metadata: &MetadataConfig) -> Result<ClusterConfig, String> {
        let raw: RawCluster = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut problems = Vec::new();
        let config = raw.resolve(Some(metadata), false, &|_| None, &mut problems);
        match (config, problems.first()) {
            (Some(c), None) => Ok(c),
            (_, Some(p)) => Err(p.to_string()),
            (None, None) => Err("no config and no problem".into()),
        }
    }

    #[test]
    fn needs_postgres_a_secret_and_a_reachable_url() {
        let pg = MetadataConfig::Postgres("postgres://db/g".into());
        let ok = "advertise_url = \"http://10.0.0.5:8080/\"\nsecret = \"0123456789abcdef\"\n";
        let c = resolve(ok, &pg).expect("valid");
        assert_eq!(c.advertise_url, "http://10.0.0.5:8080");
        assert_eq!(c.authority, "10.0.0.5:8080");
        assert_eq!(
            (c.heartbeat, c.expiry),
            (default_heartbeat(), default_expiry())
        );
        let raw: RawCluster = toml::from_str(ok).expect("toml");
        let mut problems = Vec::new();
        let _ = raw.resolve(Some(&pg), true, &|_| None, &mut problems);
        assert!(
            problems
                .iter()
                .any(|p| p.to_string().contains("plaintext listener")),
            "a TLS listener in a fleet was accepted"
        );
        let embedded = MetadataConfig::Embedded("/x.db".into());
        let err = resolve(ok, &embedded).expect_err("embedded store");
        assert!(err.contains("postgres_url"), "{err}");
        for (text, key) in [
            ("secret = \"0123456789abcdef\"\n", "cluster.advertise_url"),
            (
                "advertise_url = \"http://a:1\"\nsecret = \"short\"\n",
                "cluster.secret",
            ),
            (
                "advertise_url = \"https://a:1\"\nsecret = \"0123456789abcdef\"\n",
                "cluster.advertise_url",
            ),
            (
                "advertise_url = \"http://a\"\nsecret = \"0123456789abcdef\"\n",
                "cluster.advertise_url",
            ),
            (
                "advertise_url = \"http://a:1/x\"\nsecret = \"0123456789abcdef\"\n",
                "cluster.advertise_url",
            ),
            (
                "advertise_url = \"http://a:1\"\nsecret = \"0123456789abcdef\"\nexpiry = \"1s\"\n",
                "cluster.expiry",
            ),
        ] {
            let err = resolve(text, &pg).expect_err(key);
            assert!(err.starts_with(key), "{key}: {err}");
        }
    }
}
