//! The canonical form of a fetch request, from which pack cache keys are made.
//!
//! Two requests with the same canonical form must get byte-identical responses from the
//! same repository state; two requests whose responses could differ must have different
//! canonical forms. The table says, field by field, what is kept and why.
//!
//! | field | in the canonical form | why |
//! |---|---|---|
//! | pkt-line framing, gzip | no | transport only; the body is inflated and parsed first |
//! | `want` | yes, sorted, de-duplicated | the objects sent; order and repeats do not change them |
//! | `want-ref` (v2) | yes, sorted, de-duplicated | as `want` |
//! | `have` with `done` | yes, sorted, de-duplicated | decides what is left out; order does not |
//! | `have` without `done` | not cacheable | a negotiation round, answered with ACK/NAK |
//! | two or more `have`s in v0 without `multi_ack` / `multi_ack_detailed` | not cacheable | git sends a plain `ACK` for each have it already counts as common while it knows one common commit (a repeat of it, or its parent), so how many `ACK`s precede the pack depends on the history, and a client expecting one reads the next as the pack |
//! | `shallow` | yes, sorted, de-duplicated | decides the shallow boundary |
//! | `deepen`, `deepen-since`, `deepen-not` | yes, in order | decide the shallow boundary |
//! | `deepen-not <ref>`, `want-ref <ref>` while a write to the repository is in flight | not cached (the gateway's choice, from [`Normalized::names_refs`]) | git resolves the names against refs that the write may be changing, so the answer may belong to neither generation |
//! | `filter` | yes | decides which objects are sent |
//! | capabilities / flags (`side-band-64k`, `ofs-delta`, `thin-pack`, `no-progress`, `include-tag`, `multi_ack_detailed`, `object-format`, `server-option`, ...) | yes, sorted | change the framing or content of the response |
//! | `agent=` | no | identifies the client software only |
//! | `session-id=` | yes | git refuses it (`unknown capability`) unless the server advertises session IDs, which nodes do not; clients then never send it |
//! | `done` | yes | without it the request is not cacheable at all |
//! | a flush between the wants' flush and `done` (v0) | not cacheable | git stops at it and answers `NAK` without a pack |
//! | `deepen` / `deepen-since` numbers | yes, as sent | only canonical decimal is accepted (git parses `010` as octal) |
//! | `sideband-all`, `packfile-uris` (v2) | not cacheable | the response is not one self-contained pack |
//! | `object-format` other than `sha1` / `sha256` | not cacheable | the pack trailer could not be checked |
//!
//! "Same answer" means what a client can tell apart: the same objects in the pack and
//! the same shallow boundary. The `ACK` lines before the pack follow the order and
//! repeats of the haves, which clients read only up to the final `ACK` / `NAK`.
//!
//! User identity is never part of a request and so never part of the key.
//! Only a request that ends negotiation exactly as the protocol defines is cacheable:
//! v0 wants (with optional shallow, deepen and filter lines), one flush, haves and
//! `done`, with no other flush; or a v2 `fetch` with `done`. For those,
//! [`Normalized::expected`] says what git's complete answer looks like, and the cache
//! keeps an answer only if it has that shape ([`crate::response`]). Everything else
//! passes through.

use crate::request::upload_v0::Deepen;
use crate::request::{command_v2, upload_v0, ParseError};
use crate::response::{Expected, Framing, ObjectFormat};
use crate::service::ProtocolVersion;
use crate::ObjectId;

/// The canonical form of one upload-pack request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// For a request that ends negotiation (and so may be cached), what git's complete
    /// answer to it looks like; `None` for everything else.
    pub expected: Option<Expected>,
    /// The v2 command (`fetch`, `ls-refs`, ...); `None` for v0.
    pub command: Option<String>,
    /// Unambiguous (length-prefixed) encoding of every field that can change the response.
    pub canonical: Vec<u8>,
    /// Whether git resolves ref names of the request (`deepen-not <ref>`, v2
    /// `want-ref`) against the repository's refs: the answer then depends on them, not
    /// only on objects, so a replica in the middle of a write may answer differently
    /// from the state its generation names.
    pub names_refs: bool,
}

/// Normalize an inflated upload-pack request body spoken in `version`.
pub fn upload_pack(version: ProtocolVersion, body: &[u8]) -> Result<Normalized, ParseError> {
    let mut enc = Encoder::default();
    match version {
        ProtocolVersion::V0 => {
            let req = upload_v0::parse(body)?;
            enc.field(b"v0");
            enc.list(
                b"caps",
                sorted(
                    req.capabilities
                        .iter()
                        .filter(|c| keep_capability(c))
                        .cloned(),
                ),
            );
            enc.list(b"want", sorted_oids(&req.wants));
            enc.list(b"shallow", sorted_oids(&req.shallows));
            enc.list(b"deepen", req.deepen.iter().map(deepen_text));
            enc.list(b"filter", req.filter.iter().cloned());
            enc.list(b"have", sorted_oids(&req.haves));
            enc.field(&req.flushes_in_haves.to_be_bytes());
            enc.field(if req.done { b"done" } else { b"open" });
            let sideband = req.has_feature("side-band") || req.has_feature("side-band-64k");
            let expected = object_format(&req.capabilities)
                .filter(|_| req.ends_negotiation() && !req.acks_depend_on_history())
                .map(|format| Expected {
                    framing: Framing::V0 { sideband },
                    format,
                });
            Ok(Normalized {
                expected,
                command: None,
                canonical: enc.out,
                names_refs: req.deepen.iter().any(|d| matches!(d, Deepen::Not(_))),
            })
        }
        ProtocolVersion::V2 => {
            let req = command_v2::parse(body)?;
            enc.field(b"v2");
            enc.field(req.command.as_bytes());
            enc.list(
                b"caps",
                sorted(
                    req.capabilities
                        .iter()
                        .filter(|c| keep_capability(c))
                        .cloned(),
                ),
            );
            if req.command != "fetch" {
                enc.list(b"args", req.args.iter().cloned());
                return Ok(Normalized {
                    expected: None,
                    command: Some(req.command),
                    canonical: enc.out,
                    names_refs: false,
                });
            }
            let f = req.fetch_args()?;
            enc.list(b"want", sorted_oids(&f.wants));
            enc.list(b"want-ref", sorted(f.want_refs.iter().cloned()));
            enc.list(b"shallow", sorted_oids(&f.shallows));
            enc.list(b"deepen", f.deepen.iter().map(deepen_text));
            enc.list(b"filter", f.filter.iter().cloned());
            enc.list(b"flags", sorted(f.flags.iter().cloned()));
            enc.list(b"packfile-uris", f.packfile_uris.iter().cloned());
            enc.list(b"have", sorted_oids(&f.haves));
            enc.field(if f.done { b"done" } else { b"open" });
            let wants_something = !f.wants.is_empty() || !f.want_refs.is_empty();
            let one_pack =
                f.packfile_uris.is_none() && !f.flags.iter().any(|f| f == "sideband-all");
            let expected = object_format(&req.capabilities)
                .filter(|_| f.done && wants_something && one_pack)
                .map(|format| Expected {
                    framing: Framing::V2,
                    format,
                });
            Ok(Normalized {
                expected,
                command: Some(req.command),
                canonical: enc.out,
                names_refs: !f.want_refs.is_empty()
                    || f.deepen.iter().any(|d| matches!(d, Deepen::Not(_))),
            })
        }
    }
}

impl Normalized {
    /// Whether the response may be cached: the request ends negotiation.
    pub fn cacheable(&self) -> bool {
        self.expected.is_some()
    }
}

/// The object format a request names (SHA-1 when it names none); `None` for a format
/// whose pack trailer cannot be checked.
fn object_format(capabilities: &[String]) -> Option<ObjectFormat> {
    let mut format = ObjectFormat::Sha1;
    for cap in capabilities {
        if let Some(named) = ObjectFormat::from_capability(cap) {
            format = named?;
        }
    }
    Some(format)
}

/// Whether a capability stays in the key: everything but the client's software name,
/// which git accepts from anyone and never answers differently.
fn keep_capability(cap: &str) -> bool {
    !cap.starts_with("agent=")
}

fn sorted(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = items.collect();
    v.sort();
    v.dedup();
    v
}

fn sorted_oids(oids: &[ObjectId]) -> Vec<String> {
    sorted(oids.iter().map(|o| o.as_str().to_owned()))
}

fn deepen_text(d: &Deepen) -> String {
    match d {
        Deepen::Depth(n) => format!("deepen {n}"),
        Deepen::Since(t) => format!("deepen-since {t}"),
        Deepen::Not(r) => format!("deepen-not {r}"),
    }
}

/// Length-prefixed field encoding: no two different field sequences encode alike.
#[derive(Default)]
struct Encoder {
    out: Vec<u8>,
}

impl Encoder {
    fn field(&mut self, bytes: &[u8]) {
        self.out
            .extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        self.out.extend_from_slice(bytes);
    }

    fn list<I: IntoIterator<Item = String>>(&mut self, name: &[u8], items: I) {
        let items: Vec<String> = items.into_iter().collect();
        self.field(name);
        self.out
            .extend_from_slice(&(items.len() as u64).to_be_bytes());
        for i in &items {
            self.field(i.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::command_v2::CommandRequest;
    use crate::request::upload_v0::UploadRequest;

    fn oid(c: char) -> ObjectId {
        ObjectId::parse(c.to_string().repeat(40).as_bytes()).expect("valid")
    }

    fn v0(wants: Vec<ObjectId>, caps: &[&str], done: bool) -> Vec<u8> {
        UploadRequest {
            wants,
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            done,
            ..Default::default()
        }
        .encode()
    }

    #[test]
    fn v0_ignores_agent_order_and_duplicates() {
        let a = upload_pack(
            ProtocolVersion::V0,
            &v0(
                vec![oid('a'), oid('b')],
                &["ofs-delta", "agent=git/2.47.3"],
                true,
            ),
        )
        .expect("valid");
        let b = upload_pack(
            ProtocolVersion::V0,
            &v0(
                vec![oid('b'), oid('a'), oid('b')],
                &["agent=git/2.39.5", "ofs-delta"],
                true,
            ),
        )
        .expect("valid");
        assert!(a.cacheable());
        assert_eq!(a, b);
    }

    #[test]
    fn v0_keeps_fields_that_change_output() {
        let base = upload_pack(
            ProtocolVersion::V0,
            &v0(vec![oid('a')], &["side-band-64k"], true),
        )
        .expect("valid");
        let other_cap = upload_pack(
            ProtocolVersion::V0,
            &v0(vec![oid('a')], &["side-band"], true),
        )
        .expect("valid");
        let other_want = upload_pack(
            ProtocolVersion::V0,
            &v0(vec![oid('c')], &["side-band-64k"], true),
        )
        .expect("valid");
        let filtered = UploadRequest {
            wants: vec![oid('a')],
            capabilities: vec!["side-band-64k".into()],
            filter: Some("blob:none".into()),
            done: true,
            ..Default::default()
        };
        let filtered = upload_pack(ProtocolVersion::V0, &filtered.encode()).expect("valid");
        assert_ne!(base, other_cap);
        assert_ne!(base, other_want);
        assert_ne!(base, filtered);
    }

    #[test]
    fn negotiation_rounds_are_not_cacheable() {
        let round = UploadRequest {
            wants: vec![oid('a')],
            haves: vec![oid('b')],
            ..Default::default()
        };
        assert!(!upload_pack(ProtocolVersion::V0, &round.encode())
            .expect("valid")
            .cacheable());
        let ls = CommandRequest {
            command: "ls-refs".into(),
            capabilities: vec![],
            args: vec!["peel".into()],
        };
        assert!(!upload_pack(ProtocolVersion::V2, &ls.encode())
            .expect("valid")
            .cacheable());
    }

    /// A v0 request for one object that ends with `done`, normalized.
    fn v0_done(caps: &[&str], haves: Vec<ObjectId>, deepen: Vec<Deepen>) -> Normalized {
        let req = UploadRequest {
            wants: vec![oid('a')],
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            haves,
            deepen,
            done: true,
            ..Default::default()
        };
        upload_pack(ProtocolVersion::V0, &req.encode()).expect("valid")
    }

    #[test]
    fn several_haves_are_cacheable_only_with_multi_ack() {
        let request = |caps: &[&str], haves| v0_done(caps, haves, vec![]);
        let plain = &["side-band-64k"];
        assert!(request(plain, vec![]).cacheable());
        assert!(request(plain, vec![oid('b')]).cacheable());
        // Whether `c` is `b`'s parent (two ACKs) or not (one) only the repository knows.
        assert!(!request(plain, vec![oid('b'), oid('c')]).cacheable());
        assert!(!request(plain, vec![oid('b'), oid('b')]).cacheable());
        for multi in ["multi_ack", "multi_ack_detailed"] {
            let caps = &["side-band-64k", multi];
            assert!(request(caps, vec![oid('b'), oid('b')]).cacheable());
            assert!(request(caps, vec![oid('b'), oid('c')]).cacheable());
        }
    }

    #[test]
    fn deepen_not_names_a_ref_and_other_deepening_does_not() {
        let request = |deepen| v0_done(&["side-band-64k"], vec![], deepen);
        assert!(!request(vec![]).names_refs);
        assert!(!request(vec![Deepen::Depth(1)]).names_refs);
        assert!(!request(vec![Deepen::Since(1_600_000_000)]).names_refs);
        let naming = request(vec![Deepen::Not("refs/heads/main".into())]);
        assert!(naming.names_refs && naming.cacheable());
    }

    #[test]
    fn a_feature_with_a_value_is_the_feature_as_git_reads_it() {
        let request = |caps: &[&str], haves| v0_done(caps, haves, vec![]);
        for caps in [&["side-band-64k=x"][..], &["side-band=1", "ofs-delta"]] {
            let n = request(caps, vec![]);
            assert_eq!(
                n.expected.map(|e| e.framing),
                Some(Framing::V0 { sideband: true })
            );
        }
        // Not a prefix match: git needs `=` or the end after the name.
        let n = request(&["side-band-64kx"], vec![]);
        assert_eq!(
            n.expected.map(|e| e.framing),
            Some(Framing::V0 { sideband: false })
        );
        assert!(request(&["multi_ack=1"], vec![oid('b'), oid('c')]).cacheable());
        assert!(!request(&["multi_ackx"], vec![oid('b'), oid('c')]).cacheable());
    }

    #[test]
    fn a_flush_before_done_is_never_the_key_of_a_clone() {
        let clone = UploadRequest {
            wants: vec![oid('a')],
            capabilities: vec!["side-band-64k".into(), "ofs-delta".into()],
            done: true,
            ..Default::default()
        };
        let poisoned = UploadRequest {
            flushes_in_haves: 1,
            ..clone.clone()
        };
        let clone = upload_pack(ProtocolVersion::V0, &clone.encode()).expect("valid");
        let poisoned = upload_pack(ProtocolVersion::V0, &poisoned.encode()).expect("valid");
        assert_eq!(
            clone.expected,
            Some(Expected {
                framing: Framing::V0 { sideband: true },
                format: ObjectFormat::Sha1
            })
        );
        assert!(!poisoned.cacheable());
        assert_ne!(clone.canonical, poisoned.canonical);
    }

    #[test]
    fn v2_requests_without_one_self_contained_pack_are_not_cacheable() {
        let mk = |extra: &str| CommandRequest {
            command: "fetch".into(),
            capabilities: vec!["object-format=sha1".into()],
            args: vec![format!("want {}", oid('a')), extra.into(), "done".into()],
        };
        for extra in ["sideband-all", "packfile-uris https"] {
            let n = upload_pack(ProtocolVersion::V2, &mk(extra).encode()).expect("valid");
            assert!(!n.cacheable(), "{extra}");
        }
        let plain = upload_pack(ProtocolVersion::V2, &mk("ofs-delta").encode()).expect("valid");
        assert!(plain.cacheable());
    }

    #[test]
    fn v2_ignores_agent_but_keeps_session_id() {
        let mk = |agent: &str, sid: &str| CommandRequest {
            command: "fetch".into(),
            capabilities: vec![agent.into(), "object-format=sha1".into(), sid.into()],
            args: vec![
                format!("want {}", oid('a')),
                "ofs-delta".into(),
                "done".into(),
            ],
        };
        let a = upload_pack(
            ProtocolVersion::V2,
            &mk("agent=git/2.47.3", "session-id=1").encode(),
        )
        .expect("valid");
        let b = upload_pack(
            ProtocolVersion::V2,
            &mk("agent=git/2.39.5", "session-id=1").encode(),
        )
        .expect("valid");
        let c = upload_pack(
            ProtocolVersion::V2,
            &mk("agent=git/2.39.5", "session-id=2").encode(),
        )
        .expect("valid");
        assert!(a.cacheable());
        assert_eq!(a, b);
        // git refuses a session id the server did not advertise: not the same answer.
        assert_ne!(a, c);
    }
}
