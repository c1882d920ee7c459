//! Shared-secret tokens between the gateway and nodes.
//!
//! A token is `v1.<unix seconds>.<hex MAC>`, where the MAC is blake3 keyed with a key
//! derived from the shared secret, over the timestamp. A node accepts a token whose MAC
//! matches and whose timestamp is within the skew window of its own clock. In
//! `transitioning` mode a node accepts every request but counts the ones whose token
//! would have been refused, so a secret can be rotated without failing traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Context string for deriving the MAC key from the configured secret.
const KEY_CONTEXT: &str = "gitgate 2026 internal node auth v1";

/// Default tolerated clock difference between gateway and node.
pub const DEFAULT_SKEW: Duration = Duration::from_secs(60);

/// A MAC key derived from a shared secret.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Derive the key from the configured secret text.
    pub fn new(secret: &str) -> Self {
        Self(blake3::derive_key(KEY_CONTEXT, secret.as_bytes()))
    }

    fn mac(&self, timestamp: u64) -> blake3::Hash {
        blake3::keyed_hash(&self.0, timestamp.to_string().as_bytes())
    }

    /// A token valid at `now`.
    pub fn token(&self, now: SystemTime) -> String {
        let ts = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("v1.{ts}.{}", self.mac(ts).to_hex())
    }
}

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
    /// The MAC does not match.
    #[error("node token signature mismatch")]
    BadSignature,
}

/// Whether failures are refused or only counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refuse requests with bad tokens.
    Enforced,
    /// Accept every request; count bad tokens.
    Transitioning,
}

/// Checks tokens on a node and counts outcomes.
#[derive(Debug)]
pub struct Verifier {
    secret: Secret,
    mode: Mode,
    skew: Duration,
    /// Requests whose token was valid.
    pub accepted: AtomicU64,
    /// Requests whose token was invalid (refused, or let through when transitioning).
    pub rejected: AtomicU64,
}

impl Verifier {
    /// A verifier for `secret`.
    pub fn new(secret: Secret, mode: Mode, skew: Duration) -> Self {
        Self {
            secret,
            mode,
            skew,
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// Check `token` (the value after `Bearer `). `Ok` means: let the request through.
    pub fn check(&self, token: Option<&str>, now: SystemTime) -> Result<(), AuthError> {
        match verify(&self.secret, token, now, self.skew) {
            Ok(()) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(err) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                match self.mode {
                    Mode::Enforced => Err(err),
                    Mode::Transitioning => {
                        tracing::warn!(error = %err, "accepting bad node token (transitioning mode)");
                        Ok(())
                    }
                }
            }
        }
    }
}

/// Verify `token` against `secret` at `now`.
pub fn verify(
    secret: &Secret,
    token: Option<&str>,
    now: SystemTime,
    skew: Duration,
) -> Result<(), AuthError> {
    let token = token.ok_or(AuthError::Missing)?;
    let mut parts = token.split('.');
    let (Some("v1"), Some(ts), Some(mac), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let ts: u64 = ts.parse().map_err(|_| AuthError::Malformed)?;
    let mac = blake3::Hash::from_hex(mac).map_err(|_| AuthError::Malformed)?;
    // blake3::Hash compares in constant time.
    if mac != secret.mac(ts) {
        return Err(AuthError::BadSignature);
    }
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now.abs_diff(ts) > skew.as_secs() {
        return Err(AuthError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_fresh_and_refuses_stale_forged_or_junk() {
        let s = Secret::new("hunter2");
        let now = SystemTime::now();
        let tok = s.token(now);
        assert_eq!(verify(&s, Some(&tok), now, DEFAULT_SKEW), Ok(()));
        let later = now + Duration::from_secs(600);
        assert_eq!(
            verify(&s, Some(&tok), later, DEFAULT_SKEW),
            Err(AuthError::Expired)
        );
        let other = Secret::new("other");
        assert_eq!(
            verify(&other, Some(&tok), now, DEFAULT_SKEW),
            Err(AuthError::BadSignature)
        );
        assert_eq!(verify(&s, None, now, DEFAULT_SKEW), Err(AuthError::Missing));
        for junk in ["", "v1", "v1.x.y", "v2.1.00", "v1.1.zz.extra"] {
            assert!(verify(&s, Some(junk), now, DEFAULT_SKEW).is_err(), "{junk}");
        }
    }

    #[test]
    fn transitioning_counts_but_accepts() {
        let v = Verifier::new(Secret::new("new"), Mode::Transitioning, DEFAULT_SKEW);
        let old = Secret::new("old").token(SystemTime::now());
        assert_eq!(v.check(Some(&old), SystemTime::now()), Ok(()));
        assert_eq!(v.rejected.load(Ordering::Relaxed), 1);
    }
}
