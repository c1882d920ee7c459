//! The smart-HTTP services, protocol versions and the `Git-Protocol` header.
//!
//! The header's value reaches git as `GIT_PROTOCOL`, so only values made of the
//! `key[=value]` pairs git defines, joined by `:`, and of a small safe alphabet are
//! accepted; anything else is dropped (git then speaks protocol v0).

use crate::limits::MAX_GIT_PROTOCOL_LEN;
use std::fmt;

/// One of the two smart-HTTP services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// `git-upload-pack`: fetch and clone.
    UploadPack,
    /// `git-receive-pack`: push.
    ReceivePack,
}

impl Service {
    /// Parse the `service=` query value or URL suffix (`git-upload-pack`, `git-receive-pack`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "git-upload-pack" => Some(Self::UploadPack),
            "git-receive-pack" => Some(Self::ReceivePack),
            _ => None,
        }
    }

    /// The service name with its `git-` prefix.
    pub fn name(self) -> &'static str {
        match self {
            Self::UploadPack => "git-upload-pack",
            Self::ReceivePack => "git-receive-pack",
        }
    }

    /// The git subcommand (`upload-pack`, `receive-pack`).
    pub fn subcommand(self) -> &'static str {
        match self {
            Self::UploadPack => "upload-pack",
            Self::ReceivePack => "receive-pack",
        }
    }

    /// Content type of the `info/refs` advertisement.
    pub fn advertisement_content_type(self) -> &'static str {
        match self {
            Self::UploadPack => "application/x-git-upload-pack-advertisement",
            Self::ReceivePack => "application/x-git-receive-pack-advertisement",
        }
    }

    /// Content type of the POST request body.
    pub fn request_content_type(self) -> &'static str {
        match self {
            Self::UploadPack => "application/x-git-upload-pack-request",
            Self::ReceivePack => "application/x-git-receive-pack-request",
        }
    }

    /// Content type of the POST response body.
    pub fn result_content_type(self) -> &'static str {
        match self {
            Self::UploadPack => "application/x-git-upload-pack-result",
            Self::ReceivePack => "application/x-git-receive-pack-result",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The wire protocol version a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// Version 0 (and 1, which differs only by a version line in the advertisement).
    V0,
    /// Version 2.
    V2,
}

impl ProtocolVersion {
    /// A short label for logs and metrics: `v0` or `v2`.
    pub fn label(self) -> &'static str {
        match self {
            Self::V0 => "v0",
            Self::V2 => "v2",
        }
    }
}

/// A sanitized `Git-Protocol` header value, safe to hand to git as `GIT_PROTOCOL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitProtocol(String);

impl GitProtocol {
    /// Accept `value` if it is a `:`-separated list of `key` or `key=value` items made of
    /// `[A-Za-z0-9._-]`; otherwise `None`.
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.is_empty() || value.len() > MAX_GIT_PROTOCOL_LEN {
            return None;
        }
        let text = std::str::from_utf8(value).ok()?;
        let safe = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        for item in text.split(':') {
            let ok = match item.split_once('=') {
                Some((k, v)) => safe(k) && safe(v),
                None => safe(item),
            };
            if !ok {
                return None;
            }
        }
        Some(Self(text.to_owned()))
    }

    /// The protocol version requested: the highest `version=N` git understands.
    pub fn version(&self) -> ProtocolVersion {
        let v2 = self.0.split(':').any(|item| item == "version=2");
        if v2 {
            ProtocolVersion::V2
        } else {
            ProtocolVersion::V0
        }
    }

    /// The value to pass on.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            GitProtocol::parse(b"version=2").map(|p| p.version()),
            Some(ProtocolVersion::V2)
        );
        assert_eq!(
            GitProtocol::parse(b"version=1").map(|p| p.version()),
            Some(ProtocolVersion::V0)
        );
        assert_eq!(
            GitProtocol::parse(b"foo:version=2").map(|p| p.version()),
            Some(ProtocolVersion::V2)
        );
    }

    #[test]
    fn drops_unsafe_values() {
        for bad in [
            &b""[..],
            b"version=2;rm",
            b"version=2\n",
            b"a==b",
            b"a=",
            b":",
        ] {
            assert_eq!(GitProtocol::parse(bad), None, "{bad:?}");
        }
        assert_eq!(GitProtocol::parse(&[b'a'; 300]), None);
    }

    #[test]
    fn service_names_round_trip() {
        for s in [Service::UploadPack, Service::ReceivePack] {
            assert_eq!(Service::from_name(s.name()), Some(s));
        }
        assert_eq!(Service::from_name("git-upload-archive"), None);
    }
}
