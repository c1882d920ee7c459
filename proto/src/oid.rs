//! Object ids as they appear on the wire: lowercase hex, SHA-1 (40) or SHA-256 (64).
//!
//! This module only validates the text form; it never looks objects up.

use std::fmt;

/// A validated hexadecimal object id.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId(String);

/// The text given was not an object id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expected a 40 or 64 digit lowercase hex object id, got {len} bytes")]
pub struct InvalidObjectId {
    /// Length of the rejected input.
    pub len: usize,
}

impl ObjectId {
    /// Parse `hex`, which must be 40 or 64 lowercase hex digits.
    pub fn parse(hex: &[u8]) -> Result<Self, InvalidObjectId> {
        let ok = matches!(hex.len(), 40 | 64)
            && hex
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        if !ok {
            return Err(InvalidObjectId { len: hex.len() });
        }
        // Only ASCII hex digits remain, so this is valid UTF-8.
        Ok(Self(hex.iter().map(|&b| b as char).collect()))
    }

    /// The all-zero id git uses for "no object" (ref creation and deletion).
    pub fn is_null(&self) -> bool {
        self.0.bytes().all(|b| b == b'0')
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_sha1_and_sha256() {
        assert!(ObjectId::parse(&[b'a'; 40]).is_ok());
        assert!(ObjectId::parse(&[b'0'; 64]).is_ok_and(|o| o.is_null()));
    }

    #[test]
    fn rejects_uppercase_short_and_junk() {
        assert!(ObjectId::parse(&[b'A'; 40]).is_err());
        assert!(ObjectId::parse(&[b'a'; 39]).is_err());
        assert!(ObjectId::parse(b"../../../etc/passwd\0aaaaaaaaaaaaaaaaaaaa").is_err());
    }
}
