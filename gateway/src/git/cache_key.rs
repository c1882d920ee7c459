//! The pack cache key of an upload-pack request (and the advertisement cache's key):
//! everything that can change git's response, and nothing else. The request's own part is proto's normalized form
//! (`gitgate_proto::normalize`, with its field table); this adds where and when.

use gitgate_packcache::{CacheKey, KeyBuilder};
use gitgate_proto::{ProtocolVersion, RepoPath, Service};

/// Version of the cache key format; bump when the key's fields change meaning.
const CACHE_KEY_FORMAT: u32 = 2;

/// The key of `canonical` (a normalized request in `version`) for `service` on `repo`
/// at `generation`.
pub fn cache_key(
    repo: &RepoPath,
    service: Service,
    version: ProtocolVersion,
    generation: i64,
    canonical: &[u8],
) -> CacheKey {
    KeyBuilder::new(CACHE_KEY_FORMAT)
        .field(repo.as_str().as_bytes())
        .field(&generation.to_be_bytes())
        .field(service.name().as_bytes())
        .field(version.label().as_bytes())
        .field(canonical)
        .finish()
}

/// Version of the advertisement key format.
const ADVERT_KEY_FORMAT: u32 = 1;

/// The advertisement cache key of a `kind` answer for `repo` at `generation`, asked
/// with `protocol` (the client's sanitized `Git-Protocol`, `None` for v0) and the
/// normalized request `canonical` (empty for `info/refs`).
pub fn advert_key(
    kind: crate::advert_cache::Kind,
    repo: &RepoPath,
    generation: i64,
    protocol: Option<&gitgate_proto::GitProtocol>,
    canonical: &[u8],
) -> CacheKey {
    KeyBuilder::new(ADVERT_KEY_FORMAT)
        .field(kind.label().as_bytes())
        .field(repo.as_str().as_bytes())
        .field(&generation.to_be_bytes())
        .field(protocol.map_or("", |p| p.as_str()).as_bytes())
        .field(canonical)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_separates_keys() {
        let repo = RepoPath::parse("a/b").expect("valid");
        let other = RepoPath::parse("a/c").expect("valid");
        let base = cache_key(&repo, Service::UploadPack, ProtocolVersion::V0, 1, b"x");
        assert_eq!(
            base,
            cache_key(&repo, Service::UploadPack, ProtocolVersion::V0, 1, b"x")
        );
        for different in [
            cache_key(&other, Service::UploadPack, ProtocolVersion::V0, 1, b"x"),
            cache_key(&repo, Service::ReceivePack, ProtocolVersion::V0, 1, b"x"),
            cache_key(&repo, Service::UploadPack, ProtocolVersion::V2, 1, b"x"),
            cache_key(&repo, Service::UploadPack, ProtocolVersion::V0, 2, b"x"),
            cache_key(&repo, Service::UploadPack, ProtocolVersion::V0, 1, b"y"),
        ] {
            assert_ne!(base, different);
        }
    }
}
