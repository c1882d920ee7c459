//! Hard limits on hostile input, enforced by the parsers in this crate.
//!
//! They are generous for real clients (git itself sends at most a few hundred thousand
//! haves in a very long negotiation) and small enough that a parser never allocates
//! without bound.

/// Largest payload of one pkt-line (git's `LARGE_PACKET_DATA_MAX`).
pub const MAX_PKT_DATA_LEN: usize = 65516;
/// Most `want` / `want-ref` lines in one request.
pub const MAX_WANTS: usize = 100_000;
/// Most `have` lines in one request.
pub const MAX_HAVES: usize = 1_000_000;
/// Most `shallow` lines in one request.
pub const MAX_SHALLOWS: usize = 100_000;
/// Most capability or capability-like lines in one request.
pub const MAX_CAPABILITIES: usize = 256;
/// Longest single capability (or argument value such as a filter spec).
pub const MAX_CAPABILITY_LEN: usize = 4096;
/// Most ref update commands in one push.
pub const MAX_COMMANDS: usize = 100_000;
/// Most push options in one push.
pub const MAX_PUSH_OPTIONS: usize = 1024;
/// Most `ref-prefix` / `deepen-not` / other repeated arguments of one kind.
pub const MAX_REPEATED_ARGS: usize = 10_000;
/// Longest ref name accepted.
pub const MAX_REF_NAME_LEN: usize = 4096;
/// Longest repository path, in bytes.
pub const MAX_REPO_PATH_LEN: usize = 255;
/// Most segments in a repository path.
pub const MAX_REPO_PATH_DEPTH: usize = 8;
/// Longest segment of a repository path.
pub const MAX_REPO_SEGMENT_LEN: usize = 100;
/// Longest `Git-Protocol` header value.
pub const MAX_GIT_PROTOCOL_LEN: usize = 256;

/// Most filters one `combine:` filter may join. git evaluates each for every object;
/// a client has no need for more than a few.
pub const MAX_FILTER_COMBINE: usize = 8;

/// Deepest `tree:<depth>` filter accepted: deeper ones make the node walk trees for
/// little saving (the nodes enforce it too, with `uploadpackfilter.tree.maxDepth`).
pub const MAX_FILTER_TREE_DEPTH: u64 = 4;
