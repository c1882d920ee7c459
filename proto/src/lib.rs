//! The git wire protocol as gitgate needs it, without IO.
//!
//! Everything here works on byte slices and owned values; nothing needs a runtime,
//! a socket or a file. The crate owns:
//!
//! - [`pktline`]: pkt-line framing (data, flush `0000`, delim `0001`, response-end `0002`,
//!   `ERR` lines, sideband channels), decoding through `gix-packetline`;
//! - [`repo_path`]: the validated relative repository path ([`RepoPath`]) that is the only
//!   way a repository name reaches a filesystem;
//! - [`service`]: the two smart services, the protocol version and the `Git-Protocol`
//!   header;
//! - [`advertise`]: the smart-HTTP service announcement and parsing of v0 ref
//!   advertisements and v2 capability advertisements;
//! - [`request`]: bounded parsers for v0 upload-pack requests, v2 command requests
//!   (`ls-refs`, `fetch`, `object-info`) and receive-pack commands;
//! - [`smart_http`]: the smart-HTTP URL layout (`info/refs`, `git-upload-pack`,
//!   `git-receive-pack`) as pure path parsing;
//! - [`normalize`]: the canonical form of a fetch request that cache keys are made from;
//! - [`response`]: whether an upload-pack response is a complete final response (the
//!   only kind the pack cache may keep).
//!
//! Hard limits (line counts, lengths) are the constants in [`limits`]; the parsers
//! enforce them, so callers never have to.
#![deny(missing_docs)]

pub mod advertise;
pub mod limits;
pub mod normalize;
pub mod oid;
pub mod pktline;
pub mod repo_path;
pub mod request;
pub mod response;
pub mod service;
pub mod smart_http;

pub use oid::ObjectId;
pub use repo_path::RepoPath;
pub use service::{GitProtocol, ProtocolVersion, Service};
