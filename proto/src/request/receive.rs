//! The command section of a receive-pack request, up to where the pack data starts.
//!
//! ```text
//! shallow <oid>                         optional, from shallow clones
//! <old> <new> <ref>\0<capabilities>     first command carries capabilities
//! <old> <new> <ref>                     more commands
//! 0000
//! <push option>                         only with the push-options capability
//! 0000
//! PACK...                               absent when every command is a delete
//! ```
//!
//! [`parse_head`] works on a prefix of the body: it says [`Head::Incomplete`] until the
//! command section is all there, so a caller can stream the rest (the pack) without
//! holding it.

use super::{oid_arg, push_bounded, show, text, value, ParseError};
use crate::limits::{
    MAX_CAPABILITIES, MAX_COMMANDS, MAX_PUSH_OPTIONS, MAX_REF_NAME_LEN, MAX_SHALLOWS,
};
use crate::oid::ObjectId;
use crate::pktline::{self, Decoded, PacketLineRef};

/// One requested ref update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// The value the client believes the ref has (all zeros: must not exist).
    pub old: ObjectId,
    /// The new value (all zeros: delete the ref).
    pub new: ObjectId,
    /// The full ref name.
    pub name: String,
}

/// The parsed command section of a push.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiveRequest {
    /// Shallow boundaries sent by a shallow client.
    pub shallows: Vec<ObjectId>,
    /// Ref updates, in order.
    pub updates: Vec<RefUpdate>,
    /// Capabilities from the first command.
    pub capabilities: Vec<String>,
    /// Push options (`git push -o`), when the capability was sent.
    pub push_options: Vec<String>,
}

impl ReceiveRequest {
    /// Whether any update carries new objects, so a pack follows.
    pub fn expects_pack(&self) -> bool {
        self.updates.iter().any(|u| !u.new.is_null())
    }
}

/// The outcome of parsing a prefix of a receive-pack body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// The command section is complete; the pack (if any) starts at `consumed`.
    Complete {
        /// The commands.
        request: ReceiveRequest,
        /// Bytes used by the command section.
        consumed: usize,
    },
    /// More bytes are needed.
    Incomplete,
}

/// Parse the command section at the start of `body`.
pub fn parse_head(body: &[u8]) -> Result<Head, ParseError> {
    let mut req = ReceiveRequest::default();
    let mut offset = 0;
    let mut in_options = false;
    loop {
        let line = match pktline::decode(&body[offset..])? {
            Decoded::Incomplete { .. } => return Ok(Head::Incomplete),
            Decoded::Complete { line, consumed } => {
                offset += consumed;
                line
            }
        };
        let data = match line {
            PacketLineRef::Flush => {
                let wants_options = req.capabilities.iter().any(|c| c == "push-options");
                if !in_options && wants_options && !req.updates.is_empty() {
                    in_options = true;
                    continue;
                }
                return Ok(Head::Complete {
                    request: req,
                    consumed: offset,
                });
            }
            PacketLineRef::Data(d) => text(d),
            other => {
                return Err(ParseError::Unexpected {
                    found: format!("{other:?}"),
                    expected: "a ref update command or flush",
                })
            }
        };
        if in_options {
            let opt = value("push option", data, data)?;
            push_bounded(&mut req.push_options, opt, "push option", MAX_PUSH_OPTIONS)?;
            continue;
        }
        if let Some(rest) = data.strip_prefix(b"shallow ") {
            if !req.updates.is_empty() {
                return Err(ParseError::Unexpected {
                    found: show(data),
                    expected: "shallow lines before the commands",
                });
            }
            push_bounded(
                &mut req.shallows,
                oid_arg(data, rest)?,
                "shallow",
                MAX_SHALLOWS,
            )?;
            continue;
        }
        if data.starts_with(b"push-cert") {
            return Err(ParseError::Unsupported {
                what: "signed push (push-cert)",
            });
        }
        let (command, caps) = match data.iter().position(|&b| b == 0) {
            Some(i) => (&data[..i], Some(&data[i + 1..])),
            None => (data, None),
        };
        let update = parse_update(data, command)?;
        push_bounded(&mut req.updates, update, "command", MAX_COMMANDS)?;
        if let Some(caps) = caps {
            if req.updates.len() > 1 {
                return Err(ParseError::Unexpected {
                    found: show(data),
                    expected: "capabilities only on the first command",
                });
            }
            for cap in caps.split(|&b| b == b' ').filter(|c| !c.is_empty()) {
                let cap = value("capability", data, cap)?;
                push_bounded(&mut req.capabilities, cap, "capability", MAX_CAPABILITIES)?;
            }
        }
    }
}

fn parse_update(line: &[u8], command: &[u8]) -> Result<RefUpdate, ParseError> {
    let mut parts = command.splitn(3, |&b| b == b' ');
    let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ParseError::Unexpected {
            found: show(line),
            expected: "\"<old-oid> <new-oid> <ref>\"",
        });
    };
    if name.len() > MAX_REF_NAME_LEN {
        return Err(ParseError::TooLong {
            what: "ref name",
            len: name.len(),
            limit: MAX_REF_NAME_LEN,
        });
    }
    Ok(RefUpdate {
        old: oid_arg(line, old)?,
        new: oid_arg(line, new)?,
        name: value("ref name", line, name)?,
    })
}

impl ReceiveRequest {
    /// Encode the command section as git sends it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for s in &self.shallows {
            pktline::encode_text(&mut out, format!("shallow {s}").as_bytes()).expect("bounded");
        }
        for (i, u) in self.updates.iter().enumerate() {
            let mut line = format!("{} {} {}", u.old, u.new, u.name).into_bytes();
            if i == 0 {
                line.push(0);
                line.extend_from_slice(self.capabilities.join(" ").as_bytes());
            }
            pktline::encode_text(&mut out, &line).expect("bounded line");
        }
        pktline::encode_flush(&mut out);
        if self.capabilities.iter().any(|c| c == "push-options") && !self.updates.is_empty() {
            for o in &self.push_options {
                pktline::encode_text(&mut out, o.as_bytes()).expect("bounded line");
            }
            pktline::encode_flush(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn incomplete_until_flush() {
        let req = ReceiveRequest {
            updates: vec![RefUpdate {
                old: ObjectId::parse(&[b'0'; 40]).expect("valid"),
                new: ObjectId::parse(&[b'a'; 40]).expect("valid"),
                name: "refs/heads/main".into(),
            }],
            capabilities: vec!["report-status".into()],
            ..Default::default()
        };
        let body = req.encode();
        for cut in 0..body.len() {
            assert_eq!(
                parse_head(&body[..cut]),
                Ok(Head::Incomplete),
                "cut at {cut}"
            );
        }
        let mut full = body.clone();
        full.extend_from_slice(b"PACK\0\0\0\x02");
        assert_eq!(
            parse_head(&full),
            Ok(Head::Complete {
                request: req,
                consumed: body.len()
            })
        );
    }

    #[test]
    fn rejects_malformed_commands() {
        let mut body = Vec::new();
        pktline::encode_text(&mut body, b"only-two words").expect("fits");
        assert!(matches!(
            parse_head(&body),
            Err(ParseError::Unexpected { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(
            refs in proptest::collection::vec(("[0-9a-f]{40}", "[0-9a-f]{40}", "refs/(heads|tags)/[a-z0-9/_-]{1,30}"), 1..5),
            options in proptest::collection::vec("[a-z0-9=_ -]{1,20}", 0..3),
            with_options in any::<bool>(),
        ) {
            let mut caps = vec!["report-status".to_string(), "side-band-64k".to_string()];
            if with_options { caps.push("push-options".into()); }
            let req = ReceiveRequest {
                shallows: vec![],
                updates: refs.into_iter().map(|(o, n, name)| RefUpdate {
                    old: ObjectId::parse(o.as_bytes()).expect("valid"),
                    new: ObjectId::parse(n.as_bytes()).expect("valid"),
                    name,
                }).collect(),
                capabilities: caps,
                push_options: if with_options { options } else { vec![] },
            };
            let body = req.encode();
            prop_assert_eq!(parse_head(&body), Ok(Head::Complete { request: req, consumed: body.len() }));
        }
    }
}
