//! Cache keys: blake3 over length-prefixed fields.
//!
//! Length prefixes make the encoding unambiguous: the fields `("ab", "c")` and
//! `("a", "bc")` give different keys. What goes into a key is the caller's business; the
//! rule is everything that can change the bytes produced, and nothing else.

use std::fmt;

/// A 32-byte cache key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as 64 hex digits, for logs.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from(self.0).to_hex().to_string()
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Builds a [`CacheKey`] from fields.
pub struct KeyBuilder(blake3::Hasher);

impl KeyBuilder {
    /// Start a key under a format version; bump the version whenever the meaning of
    /// fields changes, so old keys can never match new requests.
    pub fn new(format_version: u32) -> Self {
        let mut b = Self(blake3::Hasher::new());
        b.field(&format_version.to_be_bytes());
        b
    }

    /// Add one field.
    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(&(bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
        self
    }

    /// The key.
    pub fn finish(&self) -> CacheKey {
        CacheKey(*self.0.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_unambiguous() {
        let a = KeyBuilder::new(1).field(b"ab").field(b"c").finish();
        let b = KeyBuilder::new(1).field(b"a").field(b"bc").finish();
        let c = KeyBuilder::new(2).field(b"ab").field(b"c").finish();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, KeyBuilder::new(1).field(b"ab").field(b"c").finish());
    }
}
