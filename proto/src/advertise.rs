//! Advertisements: the smart-HTTP service announcement gitgate prepends for v0, and
//! parsers for the v0 ref advertisement and the v2 capability advertisement that git
//! produces (used to inspect a node's answer; gitgate never writes refs itself).

use crate::oid::ObjectId;
use crate::pktline::{self, PacketLineRef};
use crate::request::ParseError;
use crate::service::Service;

/// The `# service=<name>` line and flush that smart HTTP puts before a v0
/// advertisement from `info/refs`. Not sent for v2, as git's own http-backend does.
pub fn service_announcement(service: Service) -> Vec<u8> {
    let mut out = Vec::new();
    let line = format!("# service={}", service.name());
    pktline::encode_text(&mut out, line.as_bytes()).expect("short line");
    pktline::encode_flush(&mut out);
    out
}

/// A parsed v0 ref advertisement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefAdvertisement {
    /// `(oid, ref name)` pairs in advertised order, peeled `^{}` entries included.
    pub refs: Vec<(ObjectId, String)>,
    /// Capabilities after the NUL of the first line.
    pub capabilities: Vec<String>,
}

/// Parse a v0 advertisement (with or without the smart-HTTP service announcement).
pub fn parse_v0(body: &[u8]) -> Result<RefAdvertisement, ParseError> {
    let mut adv = RefAdvertisement::default();
    let mut first = true;
    for line in pktline::lines(body) {
        let data = match line? {
            PacketLineRef::Flush => continue,
            PacketLineRef::Data(d) => pktline::trim_newline(d),
            other => {
                return Err(ParseError::Unexpected {
                    found: format!("{other:?}"),
                    expected: "a ref line or flush",
                })
            }
        };
        if data.starts_with(b"# service=") || data == b"version 1" {
            continue;
        }
        let (refpart, caps) = match data.iter().position(|&b| b == 0) {
            Some(i) if first => (&data[..i], Some(&data[i + 1..])),
            _ => (data, None),
        };
        first = false;
        if let Some(caps) = caps {
            adv.capabilities = caps
                .split(|&b| b == b' ')
                .filter(|c| !c.is_empty())
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
        }
        let (oid, name) = split_space(refpart);
        let oid = ObjectId::parse(oid).map_err(|_| ParseError::BadObjectId {
            line: String::from_utf8_lossy(refpart).into_owned(),
        })?;
        let name = String::from_utf8_lossy(name).into_owned();
        // An empty repository advertises only `capabilities^{}` with the null id.
        if name != "capabilities^{}" {
            adv.refs.push((oid, name));
        }
    }
    Ok(adv)
}

fn split_space(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[]),
    }
}

/// Parse a v2 capability advertisement: `version 2`, capability lines, flush.
pub fn parse_v2_capabilities(body: &[u8]) -> Result<Vec<String>, ParseError> {
    let mut caps = Vec::new();
    let mut saw_version = false;
    for line in pktline::lines(body) {
        match line? {
            PacketLineRef::Flush => {
                if saw_version {
                    return Ok(caps);
                }
            }
            PacketLineRef::Data(d) => {
                let d = pktline::trim_newline(d);
                if d == b"version 2" {
                    saw_version = true;
                } else if saw_version {
                    caps.push(String::from_utf8_lossy(d).into_owned());
                }
            }
            other => {
                return Err(ParseError::Unexpected {
                    found: format!("{other:?}"),
                    expected: "a capability line or flush",
                })
            }
        }
    }
    Err(ParseError::Truncated {
        expected: "\"version 2\" and the closing flush",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_matches_git() {
        assert_eq!(
            service_announcement(Service::UploadPack),
            b"001e# service=git-upload-pack\n0000"
        );
    }

    #[test]
    fn parses_empty_repository_advertisement() {
        let mut body = service_announcement(Service::ReceivePack);
        let mut line = format!("{} capabilities^{{}}", "0".repeat(40)).into_bytes();
        line.push(0);
        line.extend_from_slice(b"report-status delete-refs");
        pktline::encode_text(&mut body, &line).expect("fits");
        pktline::encode_flush(&mut body);
        let adv = parse_v0(&body).expect("valid");
        assert!(adv.refs.is_empty());
        assert_eq!(adv.capabilities, ["report-status", "delete-refs"]);
    }
}
