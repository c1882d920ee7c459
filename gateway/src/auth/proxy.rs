//! The trusted reverse proxy's signed header.
//!
//! A proxy in front of gitgate authenticates the user itself and then sends
//!
//! ```text
//! <header>: v1;repo=<repository>;perm=<read|write>;exp=<unix seconds>;sig=<hex>
//! ```
//!
//! where `sig` is HMAC-SHA256 with the shared secret over
//! `v1\n<repository>\n<perm>\n<exp>`. gitgate accepts it for that repository and
//! permission until `exp`. Any change to a field breaks the signature.

use std::time::{SystemTime, UNIX_EPOCH};

use gitgate_proto::RepoPath;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Permission;

/// Default header name.
pub const DEFAULT_HEADER: &str = "gitgate-proxy-auth";

/// A verified grant from the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The repository it is for.
    pub repo: RepoPath,
    /// What it allows.
    pub permission: Permission,
}

/// The shared secret with the proxy, and the header it sends.
#[derive(Clone)]
pub struct ProxySecret {
    secret: String,
    header: String,
}

impl std::fmt::Debug for ProxySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxySecret(..)")
    }
}

impl ProxySecret {
    /// Use `secret`, sent in the default header.
    pub fn new(secret: String) -> Self {
        Self {
            secret,
            header: DEFAULT_HEADER.into(),
        }
    }

    /// Expect the proxy's header under `name` (lowercase).
    pub fn with_header(mut self, name: String) -> Self {
        self.header = name.to_ascii_lowercase();
        self
    }

    /// The header name.
    pub fn header(&self) -> &str {
        &self.header
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(self.secret.as_bytes())
            .expect("HMAC takes keys of any length")
    }

    /// A header value granting `permission` on `repo` until `expires` (for proxies
    /// written in Rust, and for tests).
    pub fn sign(&self, repo: &RepoPath, permission: Permission, expires: SystemTime) -> String {
        let exp = expires
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut mac = self.mac();
        mac.update(format!("v1\n{repo}\n{}\n{exp}", permission.label()).as_bytes());
        let sig = mac.finalize().into_bytes();
        let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "v1;repo={repo};perm={};exp={exp};sig={hex}",
            permission.label()
        )
    }

    /// Check a header value at `now`.
    pub fn verify(&self, value: &str, now: SystemTime) -> Result<Grant, &'static str> {
        let mut fields = value.split(';');
        if fields.next() != Some("v1") {
            return Err("proxy header: unknown version");
        }
        let (mut repo, mut perm, mut exp, mut sig) = (None, None, None, None);
        for field in fields {
            match field.split_once('=') {
                Some(("repo", v)) => repo = Some(v),
                Some(("perm", v)) => perm = Some(v),
                Some(("exp", v)) => exp = Some(v),
                Some(("sig", v)) => sig = Some(v),
                _ => return Err("proxy header: unknown field"),
            }
        }
        let (Some(repo), Some(perm), Some(exp), Some(sig)) = (repo, perm, exp, sig) else {
            return Err("proxy header: missing field");
        };
        let sig = decode_hex(sig).ok_or("proxy header: malformed signature")?;
        let mut mac = self.mac();
        mac.update(format!("v1\n{repo}\n{perm}\n{exp}").as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| "proxy header: bad signature")?;
        let exp: u64 = exp.parse().map_err(|_| "proxy header: malformed expiry")?;
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(u64::MAX);
        if now >= exp {
            return Err("proxy header: expired");
        }
        let permission = match perm {
            "read" => Permission::Read,
            "write" => Permission::Write,
            _ => return Err("proxy header: unknown permission"),
        };
        let repo = RepoPath::parse(repo).map_err(|_| "proxy header: invalid repository")?;
        Ok(Grant { repo, permission })
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 || hex.len() > 128 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}
