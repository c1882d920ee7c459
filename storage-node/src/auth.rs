//! The node's side of the shared-secret tokens: checking them and counting outcomes.
//!
//! The token scheme itself (what clients mint) is [`crate::api::Secret`]. A node accepts
//! a token whose MAC matches and whose timestamp is within the skew window of its own
//! clock. In `transitioning` mode a node accepts every request but counts the ones whose
//! token would have been refused, so a secret can be rotated without failing traffic.

use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounterVec, Opts, Registry};

pub use crate::api::{Secret, DEFAULT_SKEW};

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
}

impl AuthError {
    fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::BadSignature => "bad_signature",
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
        Ok(Self {
            current: RwLock::new((secret, mode)),
            skew,
            outcomes,
        })
    }

    /// Replace the secret and mode.
    pub fn reload(&self, secret: Secret, mode: Mode) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (secret, mode);
    }

    /// Check `token` (the value after `Bearer `). `Ok` means: let the request through.
    pub fn check(&self, token: Option<&str>, now: SystemTime) -> Result<(), AuthError> {
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
        match verify(&secret, token, now, self.skew) {
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
        let v = Verifier::new(
            Secret::new("new"),
            Mode::Transitioning,
            DEFAULT_SKEW,
            &Registry::new(),
        )
        .expect("verifier");
        let old = Secret::new("old").token(SystemTime::now());
        assert_eq!(v.check(Some(&old), SystemTime::now()), Ok(()));
        assert_eq!(v.count(false, "bad_signature"), 1);
        v.reload(Secret::new("old"), Mode::Enforced);
        assert_eq!(v.check(Some(&old), SystemTime::now()), Ok(()));
        assert_eq!(v.count(true, "ok"), 1);
        let new = Secret::new("new").token(SystemTime::now());
        assert_eq!(
            v.check(Some(&new), SystemTime::now()),
            Err(AuthError::BadSignature)
        );
    }
}
