//! The protocol v2 command request: one command per stateless POST.
//!
//! ```text
//! command=<name>
//! <capability>[=<value>]     agent, object-format, session-id, server-option, ...
//! 0001
//! <argument>                 per command
//! 0000
//! ```
//!
//! Arguments are kept in order as text ([`CommandRequest::args`]), and typed views
//! ([`FetchArgs`], [`LsRefsArgs`], [`ObjectInfoArgs`]) are parsed from them so callers
//! can reason about a fetch without re-parsing lines.

use super::upload_v0::{check_deepen, parse_depth, parse_number, Deepen};
use super::{filter_spec, keyword, oid_arg, push_bounded, show, text, value, ParseError};
use crate::limits::{MAX_CAPABILITIES, MAX_HAVES, MAX_REPEATED_ARGS, MAX_SHALLOWS, MAX_WANTS};
use crate::oid::ObjectId;
use crate::pktline::{self, PacketLineRef};

/// A parsed v2 command request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRequest {
    /// The command name (`ls-refs`, `fetch`, `object-info`, or another that git decides on).
    pub command: String,
    /// Capability lines before the delimiter, in order.
    pub capabilities: Vec<String>,
    /// Argument lines after the delimiter, in order, without newlines.
    pub args: Vec<String>,
}

/// Typed arguments of `fetch`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchArgs {
    /// `want <oid>`.
    pub wants: Vec<ObjectId>,
    /// `want-ref <ref>`.
    pub want_refs: Vec<String>,
    /// `have <oid>`.
    pub haves: Vec<ObjectId>,
    /// `done` was sent: the server answers with a pack.
    pub done: bool,
    /// `shallow <oid>`.
    pub shallows: Vec<ObjectId>,
    /// `deepen`, `deepen-since`, `deepen-not`.
    pub deepen: Vec<Deepen>,
    /// `filter <spec>`.
    pub filter: Option<String>,
    /// Flag arguments (`thin-pack`, `ofs-delta`, `no-progress`, `include-tag`,
    /// `deepen-relative`, `sideband-all`, `wait-for-done`, ...), in order.
    pub flags: Vec<String>,
    /// `packfile-uris <protocols>`.
    pub packfile_uris: Option<String>,
}

/// Typed arguments of `ls-refs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LsRefsArgs {
    /// `symrefs`.
    pub symrefs: bool,
    /// `peel`.
    pub peel: bool,
    /// `unborn`.
    pub unborn: bool,
    /// `ref-prefix <prefix>`.
    pub ref_prefixes: Vec<String>,
}

/// Typed arguments of `object-info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectInfoArgs {
    /// Attributes asked for (`size`).
    pub attributes: Vec<String>,
    /// `oid <oid>`.
    pub oids: Vec<ObjectId>,
}

/// Parse a whole v2 command request body.
pub fn parse(body: &[u8]) -> Result<CommandRequest, ParseError> {
    let mut lines = pktline::lines(body);
    let first = match lines.next() {
        None => {
            return Err(ParseError::Truncated {
                expected: "a command= line",
            })
        }
        Some(line) => line?,
    };
    let command = match first {
        PacketLineRef::Data(d) => {
            let d = text(d);
            match d.strip_prefix(b"command=") {
                Some(name) if !name.is_empty() => value("command name", d, name)?,
                _ => {
                    return Err(ParseError::Unexpected {
                        found: show(d),
                        expected: "a command= line",
                    })
                }
            }
        }
        other => {
            return Err(ParseError::Unexpected {
                found: format!("{other:?}"),
                expected: "a command= line",
            })
        }
    };

    let mut capabilities = Vec::new();
    let mut args = Vec::new();
    let mut in_args = false;
    let mut ended = false;
    for line in lines.by_ref() {
        match line? {
            PacketLineRef::Delimiter if !in_args => in_args = true,
            PacketLineRef::Flush => {
                ended = true;
                break;
            }
            PacketLineRef::Data(d) => {
                let d = text(d);
                if in_args {
                    let arg = value("argument", d, d)?;
                    let limit = MAX_WANTS + MAX_HAVES + MAX_SHALLOWS + MAX_REPEATED_ARGS;
                    push_bounded(&mut args, arg, "argument", limit)?;
                } else {
                    let cap = value("capability", d, d)?;
                    push_bounded(&mut capabilities, cap, "capability", MAX_CAPABILITIES)?;
                }
            }
            other => {
                return Err(ParseError::Unexpected {
                    found: format!("{other:?}"),
                    expected: if in_args {
                        "an argument or flush"
                    } else {
                        "a capability, delimiter or flush"
                    },
                })
            }
        }
    }
    if !ended {
        return Err(ParseError::Truncated {
            expected: "the flush ending the command",
        });
    }
    let rest = lines.remaining();
    if !rest.is_empty() {
        return Err(ParseError::TrailingData { len: rest.len() });
    }
    let req = CommandRequest {
        command,
        capabilities,
        args,
    };
    // Validate the arguments of the commands we know, so malformed ones fail here.
    match req.command.as_str() {
        "fetch" => {
            req.fetch_args()?;
        }
        "ls-refs" => {
            req.ls_refs_args()?;
        }
        "object-info" => {
            req.object_info_args()?;
        }
        _ => {}
    }
    Ok(req)
}

impl CommandRequest {
    /// The typed arguments of a `fetch` command.
    pub fn fetch_args(&self) -> Result<FetchArgs, ParseError> {
        let mut f = FetchArgs::default();
        for arg in &self.args {
            let line = arg.as_bytes();
            let (kw, rest) = keyword(line);
            match kw {
                b"want" => push_bounded(&mut f.wants, oid_arg(line, rest)?, "want", MAX_WANTS)?,
                b"have" => push_bounded(&mut f.haves, oid_arg(line, rest)?, "have", MAX_HAVES)?,
                b"shallow" => push_bounded(
                    &mut f.shallows,
                    oid_arg(line, rest)?,
                    "shallow",
                    MAX_SHALLOWS,
                )?,
                b"want-ref" => push_bounded(
                    &mut f.want_refs,
                    value("want-ref", line, rest)?,
                    "want-ref",
                    MAX_WANTS,
                )?,
                b"deepen" => {
                    let n = parse_depth(line, rest)?;
                    push_bounded(&mut f.deepen, Deepen::Depth(n), "deepen", MAX_REPEATED_ARGS)?
                }
                b"deepen-since" => push_bounded(
                    &mut f.deepen,
                    Deepen::Since(parse_number(line, rest)?),
                    "deepen",
                    MAX_REPEATED_ARGS,
                )?,
                b"deepen-not" => push_bounded(
                    &mut f.deepen,
                    Deepen::Not(value("deepen-not", line, rest)?),
                    "deepen",
                    MAX_REPEATED_ARGS,
                )?,
                // git refuses a second filter; one value each keeps the key exact.
                b"filter" if f.filter.is_none() => f.filter = Some(filter_spec(line, rest)?),
                b"packfile-uris" if f.packfile_uris.is_none() => {
                    f.packfile_uris = Some(value("packfile-uris", line, rest)?)
                }
                b"filter" | b"packfile-uris" => {
                    return Err(ParseError::Unexpected {
                        found: show(line),
                        expected: "at most one filter and one packfile-uris argument",
                    })
                }
                b"done" if rest.is_empty() => f.done = true,
                _ if rest.is_empty() => {
                    push_bounded(&mut f.flags, arg.clone(), "flag", MAX_REPEATED_ARGS)?
                }
                _ => {
                    return Err(ParseError::Unexpected {
                        found: show(line),
                        expected: "a fetch argument",
                    })
                }
            }
        }
        check_deepen(&f.deepen)?;
        Ok(f)
    }

    /// The typed arguments of an `ls-refs` command.
    pub fn ls_refs_args(&self) -> Result<LsRefsArgs, ParseError> {
        let mut a = LsRefsArgs::default();
        for arg in &self.args {
            let line = arg.as_bytes();
            match keyword(line) {
                (b"symrefs", b"") => a.symrefs = true,
                (b"peel", b"") => a.peel = true,
                (b"unborn", b"") => a.unborn = true,
                (b"ref-prefix", rest) => push_bounded(
                    &mut a.ref_prefixes,
                    value("ref-prefix", line, rest)?,
                    "ref-prefix",
                    MAX_REPEATED_ARGS,
                )?,
                _ => {
                    return Err(ParseError::Unexpected {
                        found: show(line),
                        expected: "an ls-refs argument",
                    })
                }
            }
        }
        Ok(a)
    }

    /// The typed arguments of an `object-info` command.
    pub fn object_info_args(&self) -> Result<ObjectInfoArgs, ParseError> {
        let mut a = ObjectInfoArgs::default();
        for arg in &self.args {
            let line = arg.as_bytes();
            match keyword(line) {
                (b"oid", rest) => {
                    push_bounded(&mut a.oids, oid_arg(line, rest)?, "oid", MAX_WANTS)?
                }
                (attr, b"") => push_bounded(
                    &mut a.attributes,
                    value("attribute", line, attr)?,
                    "attribute",
                    MAX_REPEATED_ARGS,
                )?,
                _ => {
                    return Err(ParseError::Unexpected {
                        found: show(line),
                        expected: "an object-info argument",
                    })
                }
            }
        }
        Ok(a)
    }

    /// Encode this request as git sends it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let cmd = format!("command={}", self.command);
        pktline::encode_text(&mut out, cmd.as_bytes()).expect("bounded line");
        for c in &self.capabilities {
            pktline::encode_text(&mut out, c.as_bytes()).expect("bounded line");
        }
        pktline::encode_delim(&mut out);
        for a in &self.args {
            pktline::encode_text(&mut out, a.as_bytes()).expect("bounded line");
        }
        pktline::encode_flush(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requires_command_and_flush() {
        assert!(matches!(
            parse(b"0009hello0000"),
            Err(ParseError::Unexpected { .. })
        ));
        assert_eq!(
            parse(b"0012command=fetch\n0001"),
            Err(ParseError::Truncated {
                expected: "the flush ending the command"
            })
        );
    }

    #[test]
    fn rejects_bad_fetch_args() {
        let req = CommandRequest {
            command: "fetch".into(),
            capabilities: vec![],
            args: vec!["want nothex".into()],
        };
        assert!(matches!(
            parse(&req.encode()),
            Err(ParseError::BadObjectId { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(
            command in "(ls-refs|fetch|object-info)",
            caps in proptest::collection::vec("(agent=git/2\\.[0-9]{2}|object-format=sha1|session-id=[a-z0-9]{8})", 0..3),
            wants in proptest::collection::vec("[0-9a-f]{40}", 0..4),
        ) {
            let args: Vec<String> = match command.as_str() {
                "fetch" => wants.iter().map(|w| format!("want {w}")).chain(["ofs-delta".to_string(), "done".to_string()]).collect(),
                "ls-refs" => vec!["symrefs".into(), "peel".into(), "ref-prefix refs/heads/".into()],
                _ => std::iter::once("size".to_string()).chain(wants.iter().map(|w| format!("oid {w}"))).collect(),
            };
            let req = CommandRequest { command, capabilities: caps, args };
            prop_assert_eq!(parse(&req.encode()), Ok(req));
        }
    }
}
