//! The v0 upload-pack request, as sent in one stateless-RPC POST.
//!
//! ```text
//! want <oid> <capabilities...>     first want carries the capabilities
//! want <oid>                       more wants
//! shallow <oid> | deepen <n> | deepen-since <ts> | deepen-not <ref> | filter <spec>
//! 0000
//! have <oid>                       zero or more
//! 0000 | done
//! ```
//!
//! A request with `done` and no flush among its haves ends negotiation: git answers it
//! with the pack. `git upload-pack --stateless-rpc` stops at the first flush after the
//! wants' one (it answers that round with ACK/NAK and exits), so a request with such a
//! flush is a negotiation round whatever follows it; [`UploadRequest::flushes_in_haves`]
//! counts them so callers can tell.

use super::{filter_spec, keyword, oid_arg, push_bounded, show, text, value, ParseError};
use crate::limits::{MAX_CAPABILITIES, MAX_HAVES, MAX_REPEATED_ARGS, MAX_SHALLOWS, MAX_WANTS};
use crate::oid::ObjectId;
use crate::pktline::{self, PacketLineRef};

/// A shallow-clone limit, shared by v0 and v2 fetches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Deepen {
    /// `deepen <n>`: at most n commits deep.
    Depth(u32),
    /// `deepen-since <timestamp>`: commits newer than a Unix time.
    Since(i64),
    /// `deepen-not <ref>`: exclude history reachable from a ref.
    Not(String),
}

/// A parsed v0 upload-pack request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadRequest {
    /// Objects asked for, in request order.
    pub wants: Vec<ObjectId>,
    /// Capabilities from the first `want` line, in request order.
    pub capabilities: Vec<String>,
    /// Commits the client already has as shallow boundaries.
    pub shallows: Vec<ObjectId>,
    /// Depth limits, in request order.
    pub deepen: Vec<Deepen>,
    /// `filter <spec>` for partial clones.
    pub filter: Option<String>,
    /// Objects the client has, in request order.
    pub haves: Vec<ObjectId>,
    /// Flush packets after the want section's flush. git stops reading at the first of
    /// them, so anything after it (haves, `done`) never reaches git's negotiation.
    pub flushes_in_haves: u32,
    /// Whether the client sent `done`.
    pub done: bool,
}

impl UploadRequest {
    /// Whether git answers this request with a pack and nothing but a pack: it has
    /// wants, says `done`, and has no flush that would end the request before `done`.
    pub fn ends_negotiation(&self) -> bool {
        self.done && self.flushes_in_haves == 0 && !self.wants.is_empty()
    }

    /// Whether the number of `ACK` lines git sends before the pack depends on the
    /// repository's history, in a way a client reads. Without `multi_ack` or
    /// `multi_ack_detailed`, git sends a plain `ACK <oid>` for every have line it
    /// already counts as common while it knows exactly one common commit: a repeat of
    /// the first common have, and also a have of that commit's parent (git marks the
    /// parents of each have as known). Only the repository can tell which haves those
    /// are, so with two or more haves the answer's framing is not predictable from the
    /// request, and a client that expects one `ACK` would read the next as the pack.
    pub fn acks_depend_on_history(&self) -> bool {
        let multi_ack = self.has_feature("multi_ack") || self.has_feature("multi_ack_detailed");
        !multi_ack && self.haves.len() > 1
    }

    /// Whether git turns on feature `name` for this request: a capability that is the
    /// name, or the name with a value (`side-band-64k=x`), as git reads them.
    pub fn has_feature(&self, name: &str) -> bool {
        self.capabilities.iter().any(|c| {
            c.strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
        })
    }
}

/// Parse a whole v0 upload-pack request body.
pub fn parse(body: &[u8]) -> Result<UploadRequest, ParseError> {
    let mut req = UploadRequest::default();
    let mut lines = pktline::lines(body);

    // Want section, up to the first flush.
    loop {
        let line = match lines.next() {
            None => {
                return Err(ParseError::Truncated {
                    expected: "the flush after the wants",
                })
            }
            Some(line) => line?,
        };
        let data = match line {
            PacketLineRef::Flush => break,
            PacketLineRef::Data(d) => text(d),
            other => {
                return Err(ParseError::Unexpected {
                    found: format!("{other:?}"),
                    expected: "a want, shallow, deepen or filter line",
                })
            }
        };
        let (kw, rest) = keyword(data);
        match kw {
            b"want" => {
                let (oid, caps) = match rest.iter().position(|&b| b == b' ') {
                    Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                    None => (rest, None),
                };
                let oid = oid_arg(data, oid)?;
                push_bounded(&mut req.wants, oid, "want", MAX_WANTS)?;
                if let Some(caps) = caps {
                    if req.wants.len() > 1 {
                        return Err(ParseError::Unexpected {
                            found: show(data),
                            expected: "capabilities only on the first want",
                        });
                    }
                    for cap in caps.split(|&b| b == b' ').filter(|c| !c.is_empty()) {
                        let cap = value("capability", data, cap)?;
                        push_bounded(&mut req.capabilities, cap, "capability", MAX_CAPABILITIES)?;
                    }
                }
            }
            b"shallow" => {
                let oid = oid_arg(data, rest)?;
                push_bounded(&mut req.shallows, oid, "shallow", MAX_SHALLOWS)?;
            }
            b"deepen" => {
                let n = parse_depth(data, rest)?;
                push_bounded(
                    &mut req.deepen,
                    Deepen::Depth(n),
                    "deepen",
                    MAX_REPEATED_ARGS,
                )?;
            }
            b"deepen-since" => {
                let ts = parse_number(data, rest)?;
                push_bounded(
                    &mut req.deepen,
                    Deepen::Since(ts),
                    "deepen",
                    MAX_REPEATED_ARGS,
                )?;
            }
            b"deepen-not" => {
                let r = value("deepen-not ref", data, rest)?;
                push_bounded(&mut req.deepen, Deepen::Not(r), "deepen", MAX_REPEATED_ARGS)?;
            }
            b"filter" => {
                if req.filter.is_some() {
                    return Err(ParseError::Unexpected {
                        found: show(data),
                        expected: "at most one filter line",
                    });
                }
                req.filter = Some(filter_spec(data, rest)?);
            }
            _ => {
                return Err(ParseError::Unexpected {
                    found: show(data),
                    expected: "a want, shallow, deepen or filter line",
                })
            }
        }
    }

    // Have section: haves, ending with `done`, a flush (the end of a negotiation round)
    // or the end of input. Flushes are counted, never skipped: they change git's answer.
    for line in lines.by_ref() {
        let data = match line? {
            PacketLineRef::Flush => {
                req.flushes_in_haves = req.flushes_in_haves.saturating_add(1);
                continue;
            }
            PacketLineRef::Data(d) => text(d),
            other => {
                return Err(ParseError::Unexpected {
                    found: format!("{other:?}"),
                    expected: "a have line, a flush or done",
                })
            }
        };
        if data == b"done" {
            req.done = true;
            break;
        }
        match keyword(data) {
            (b"have", rest) => {
                let oid = oid_arg(data, rest)?;
                push_bounded(&mut req.haves, oid, "have", MAX_HAVES)?;
            }
            _ => {
                return Err(ParseError::Unexpected {
                    found: show(data),
                    expected: "a have line, a flush or done",
                })
            }
        }
    }
    let rest = lines.remaining();
    if !rest.is_empty() {
        return Err(ParseError::TrailingData { len: rest.len() });
    }
    check_deepen(&req.deepen)?;
    Ok(req)
}

/// A number argument in canonical decimal: digits only, no sign, no leading zero.
///
/// git reads `deepen` and `deepen-since` with `strtol(…, 0)`, so `010` is eight and
/// `0x10` sixteen to git; accepting only the form git's own clients send keeps the
/// text in the cache key and the value git uses in agreement.
pub(crate) fn parse_number(line: &[u8], raw: &[u8]) -> Result<i64, ParseError> {
    let canonical =
        !raw.is_empty() && raw.iter().all(u8::is_ascii_digit) && (raw == b"0" || raw[0] != b'0');
    std::str::from_utf8(raw)
        .ok()
        .filter(|_| canonical)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ParseError::BadNumber { line: show(line) })
}

/// A `deepen` depth: git refuses anything outside 1 to `i32::MAX` (what `--unshallow`
/// sends), so such a request is the client's error, not the node's.
pub(crate) fn parse_depth(line: &[u8], raw: &[u8]) -> Result<u32, ParseError> {
    let n = parse_number(line, raw)?;
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=i32::MAX as u32).contains(n))
        .ok_or_else(|| ParseError::BadNumber { line: show(line) })
}

/// git's upload-pack dies on a `deepen` depth together with `deepen-since` or
/// `deepen-not`: the client's error, refused before any node sees it.
pub(crate) fn check_deepen(deepen: &[Deepen]) -> Result<(), ParseError> {
    let depth = deepen.iter().any(|d| matches!(d, Deepen::Depth(_)));
    let rev_list = deepen.iter().any(|d| !matches!(d, Deepen::Depth(_)));
    if depth && rev_list {
        return Err(ParseError::Conflicting {
            what: "deepen and deepen-since (or deepen-not)",
        });
    }
    Ok(())
}

impl UploadRequest {
    /// Encode this request: the want section, its flush, the haves, then
    /// `flushes_in_haves` flushes and `done` if set.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, want) in self.wants.iter().enumerate() {
            let mut line = format!("want {want}");
            if i == 0 && !self.capabilities.is_empty() {
                line.push(' ');
                line.push_str(&self.capabilities.join(" "));
            }
            pktline::encode_text(&mut out, line.as_bytes()).expect("bounded line");
        }
        for s in &self.shallows {
            pktline::encode_text(&mut out, format!("shallow {s}").as_bytes()).expect("bounded");
        }
        for d in &self.deepen {
            let line = match d {
                Deepen::Depth(n) => format!("deepen {n}"),
                Deepen::Since(t) => format!("deepen-since {t}"),
                Deepen::Not(r) => format!("deepen-not {r}"),
            };
            pktline::encode_text(&mut out, line.as_bytes()).expect("bounded line");
        }
        if let Some(f) = &self.filter {
            pktline::encode_text(&mut out, format!("filter {f}").as_bytes()).expect("bounded");
        }
        pktline::encode_flush(&mut out);
        for h in &self.haves {
            pktline::encode_text(&mut out, format!("have {h}").as_bytes()).expect("bounded");
        }
        for _ in 0..self.flushes_in_haves {
            pktline::encode_flush(&mut out);
        }
        if self.done {
            pktline::encode_text(&mut out, b"done").expect("bounded line");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn oid(c: char) -> ObjectId {
        ObjectId::parse(c.to_string().repeat(40).as_bytes()).expect("valid")
    }

    #[test]
    fn rejects_junk_in_want_section() {
        let mut body = Vec::new();
        pktline::encode_text(&mut body, b"wnat aaaa").expect("fits");
        pktline::encode_flush(&mut body);
        assert!(matches!(parse(&body), Err(ParseError::Unexpected { .. })));
        assert_eq!(
            parse(b""),
            Err(ParseError::Truncated {
                expected: "the flush after the wants"
            })
        );
    }

    #[test]
    fn rejects_trailing_data_after_done() {
        let req = UploadRequest {
            wants: vec![oid('a')],
            done: true,
            ..Default::default()
        };
        let mut body = req.encode();
        body.extend_from_slice(b"0000");
        assert_eq!(parse(&body), Err(ParseError::TrailingData { len: 4 }));
    }

    #[test]
    fn a_flush_before_done_is_counted_and_ends_nothing() {
        let clone = UploadRequest {
            wants: vec![oid('a')],
            done: true,
            ..Default::default()
        };
        let poisoned = UploadRequest {
            flushes_in_haves: 1,
            ..clone.clone()
        };
        assert!(clone.ends_negotiation());
        let parsed = parse(&poisoned.encode()).expect("valid");
        assert_eq!(parsed.flushes_in_haves, 1);
        assert!(parsed.done);
        assert!(!parsed.ends_negotiation());
    }

    #[test]
    fn numbers_must_be_canonical_decimal() {
        for bad in ["010", "0x10", "-1", "+1", "", "1 ", "1e3"] {
            assert!(
                parse_number(b"deepen", bad.as_bytes()).is_err(),
                "{bad:?} accepted"
            );
        }
        assert_eq!(parse_number(b"deepen", b"0"), Ok(0));
        assert_eq!(parse_number(b"deepen", b"105"), Ok(105));
    }

    #[test]
    fn a_depth_with_deepen_since_or_not_is_refused_as_git_refuses_it() {
        let oid = "1".repeat(40);
        let v0 = |lines: &[&str]| {
            let mut body = Vec::new();
            for line in [format!("want {oid}\n")]
                .into_iter()
                .chain(lines.iter().map(|l| format!("{l}\n")))
            {
                body.extend_from_slice(format!("{:04x}{line}", line.len() + 4).as_bytes());
            }
            body.extend_from_slice(b"00000009done\n");
            parse(&body)
        };
        assert!(matches!(
            v0(&["deepen 1", "deepen-since 1600000000"]),
            Err(ParseError::Conflicting { .. })
        ));
        assert!(matches!(
            v0(&["deepen-not refs/heads/x", "deepen 2"]),
            Err(ParseError::Conflicting { .. })
        ));
        assert!(v0(&["deepen-since 1600000000", "deepen-not refs/heads/x"]).is_ok());
        assert!(v0(&["deepen 3"]).is_ok());
    }

    #[test]
    fn depths_are_those_git_accepts() {
        for bad in ["0", "2147483648", "4294967297"] {
            assert!(
                parse_depth(b"deepen", bad.as_bytes()).is_err(),
                "{bad:?} accepted"
            );
        }
        assert_eq!(parse_depth(b"deepen", b"1"), Ok(1));
        assert_eq!(parse_depth(b"deepen", b"2147483647"), Ok(2147483647));
    }

    fn arb_oid() -> impl Strategy<Value = ObjectId> {
        "[0-9a-f]{40}".prop_map(|s| ObjectId::parse(s.as_bytes()).expect("valid"))
    }

    proptest! {
        #[test]
        fn round_trip(
            wants in proptest::collection::vec(arb_oid(), 1..5),
            caps in proptest::collection::vec("[a-z][a-z0-9=/._-]{0,20}", 0..5),
            shallows in proptest::collection::vec(arb_oid(), 0..3),
            depth in proptest::option::of(1u32..1000),
            filter in proptest::option::of("blob:(none|limit=[0-9]{1,5})"),
            haves in proptest::collection::vec(arb_oid(), 0..5),
            flushes_in_haves in 0u32..3,
            done in any::<bool>(),
        ) {
            let req = UploadRequest {
                wants,
                capabilities: caps,
                shallows,
                deepen: depth.map(Deepen::Depth).into_iter().collect(),
                filter,
                haves,
                flushes_in_haves,
                done,
            };
            prop_assert_eq!(parse(&req.encode()), Ok(req));
        }
    }
}
