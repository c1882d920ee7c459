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
//! | `shallow` | yes, sorted, de-duplicated | decides the shallow boundary |
//! | `deepen`, `deepen-since`, `deepen-not` | yes, in order | decide the shallow boundary |
//! | `filter` | yes | decides which objects are sent |
//! | capabilities / flags (`side-band-64k`, `ofs-delta`, `thin-pack`, `no-progress`, `include-tag`, `multi_ack_detailed`, `object-format`, `server-option`, ...) | yes, sorted | change the framing or content of the response |
//! | `agent=` | no | identifies the client software only |
//! | `session-id=` | no | differs for every client; never changes the response |
//! | `done` | yes | without it the request is not cacheable at all |
//!
//! User identity is never part of a request and so never part of the key.
//! Only a request that ends negotiation is cacheable: a v0 request with `done`, or a v2
//! `fetch` with `done`. Everything else ([`Normalized::cacheable`] is false) passes
//! through.

use crate::request::upload_v0::Deepen;
use crate::request::{command_v2, upload_v0, ParseError};
use crate::service::ProtocolVersion;
use crate::ObjectId;

/// The canonical form of one upload-pack request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// Whether the request ends negotiation and its response may be cached.
    pub cacheable: bool,
    /// The v2 command (`fetch`, `ls-refs`, ...); `None` for v0.
    pub command: Option<String>,
    /// Unambiguous (length-prefixed) encoding of every field that can change the response.
    pub canonical: Vec<u8>,
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
            enc.field(if req.done { b"done" } else { b"open" });
            Ok(Normalized {
                cacheable: req.done && !req.wants.is_empty(),
                command: None,
                canonical: enc.out,
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
                    cacheable: false,
                    command: Some(req.command),
                    canonical: enc.out,
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
            Ok(Normalized {
                cacheable: f.done && wants_something,
                command: Some(req.command),
                canonical: enc.out,
            })
        }
    }
}

/// Whether a capability stays in the key: everything but client identification.
fn keep_capability(cap: &str) -> bool {
    !(cap.starts_with("agent=") || cap.starts_with("session-id="))
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
        assert!(a.cacheable);
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
        assert!(
            !upload_pack(ProtocolVersion::V0, &round.encode())
                .expect("valid")
                .cacheable
        );
        let ls = CommandRequest {
            command: "ls-refs".into(),
            capabilities: vec![],
            args: vec!["peel".into()],
        };
        assert!(
            !upload_pack(ProtocolVersion::V2, &ls.encode())
                .expect("valid")
                .cacheable
        );
    }

    #[test]
    fn v2_ignores_session_id_and_agent() {
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
            &mk("agent=git/2.39.5", "session-id=2").encode(),
        )
        .expect("valid");
        assert!(a.cacheable);
        assert_eq!(a, b);
    }
}
