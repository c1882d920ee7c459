//! Bounded parsers for the requests git clients send.
//!
//! - [`upload_v0`]: a v0 upload-pack request (wants with capabilities, shallow and
//!   deepen lines, filter, haves, `done`);
//! - [`command_v2`]: a v2 command request (`command=`, capability lines, arguments),
//!   with typed views of `ls-refs`, `fetch` and `object-info` arguments;
//! - [`receive`]: the command section of a receive-pack request (ref updates,
//!   capabilities, push options), up to where the pack starts.
//!
//! Each parser takes a byte slice, enforces the limits in [`crate::limits`] itself and
//! returns a [`ParseError`] naming what it expected. None of them allocates more than a
//! bounded multiple of its input.

pub mod command_v2;
pub mod receive;
pub mod upload_v0;

use crate::limits::{MAX_CAPABILITY_LEN, MAX_FILTER_COMBINE, MAX_FILTER_TREE_DEPTH};
use crate::oid::ObjectId;
use crate::pktline::{trim_newline, PktLineError};

/// Errors from the request parsers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The pkt-line framing itself is broken.
    #[error(transparent)]
    PktLine(#[from] PktLineError),
    /// A line that does not belong where it was found.
    #[error("unexpected {found} where {expected} was expected")]
    Unexpected {
        /// What was found: the line (shortened, escaped) or a kind of packet.
        found: String,
        /// What the parser expected at that point.
        expected: &'static str,
    },
    /// A line that should carry an object id did not.
    #[error("expected an object id in {line}")]
    BadObjectId {
        /// The line (shortened, escaped).
        line: String,
    },
    /// A numeric argument was not a number in range.
    #[error("expected a number in {line}")]
    BadNumber {
        /// The line (shortened, escaped).
        line: String,
    },
    /// Too many lines of one kind.
    #[error("more than {limit} {what} lines")]
    TooMany {
        /// Which lines.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// One value is too long.
    #[error("{what} of {len} bytes exceeds the limit of {limit}")]
    TooLong {
        /// Which value.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The request ended before it was complete.
    #[error("request ends before {expected}")]
    Truncated {
        /// What was still missing.
        expected: &'static str,
    },
    /// Bytes follow the end of a request that must stand alone.
    #[error("{len} unexpected bytes after the end of the request")]
    TrailingData {
        /// How many bytes.
        len: usize,
    },
    /// Arguments git refuses to combine.
    #[error("{what} cannot be used together")]
    Conflicting {
        /// Which arguments.
        what: &'static str,
    },
    /// A valid request that gitgate does not handle.
    #[error("{what} is not supported")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
    },
}

impl ParseError {
    /// Whether the fault lies with the client (always, for a parse error; kept as a
    /// method so callers never match on messages).
    pub fn is_client_error(&self) -> bool {
        true
    }
}

/// A short, escaped rendering of a line for error messages.
pub(crate) fn show(line: &[u8]) -> String {
    let cut = &line[..line.len().min(80)];
    let mut s = String::from("\"");
    s.push_str(&cut.escape_ascii().to_string());
    if line.len() > cut.len() {
        s.push_str("...");
    }
    s.push('"');
    s
}

/// Parse the object id at the start of `rest` (which follows a keyword and a space).
pub(crate) fn oid_arg(line: &[u8], rest: &[u8]) -> Result<ObjectId, ParseError> {
    ObjectId::parse(rest).map_err(|_| ParseError::BadObjectId { line: show(line) })
}

/// Text payload of a data line, without its trailing newline.
pub(crate) fn text(data: &[u8]) -> &[u8] {
    trim_newline(data)
}

/// Convert a bounded argument to an owned UTF-8 string, rejecting overlong values and
/// control characters.
pub(crate) fn value(what: &'static str, line: &[u8], raw: &[u8]) -> Result<String, ParseError> {
    if raw.len() > MAX_CAPABILITY_LEN {
        return Err(ParseError::TooLong {
            what,
            len: raw.len(),
            limit: MAX_CAPABILITY_LEN,
        });
    }
    match std::str::from_utf8(raw) {
        Ok(s) if !s.chars().any(char::is_control) => Ok(s.to_owned()),
        _ => Err(ParseError::Unexpected {
            found: show(line),
            expected: what,
        }),
    }
}

/// A `filter <spec>` value, with the filters that cost a node more than they save
/// refused: `sparse:` filters (a sparse checkout computed from a blob for every
/// request), `tree:` deeper than [`MAX_FILTER_TREE_DEPTH`], and a `combine:` of more than
/// [`MAX_FILTER_COMBINE`] filters.
pub(crate) fn filter_spec(line: &[u8], raw: &[u8]) -> Result<String, ParseError> {
    let spec = value("filter spec", line, raw)?;
    let parts: Vec<String> = match spec.strip_prefix("combine:") {
        Some(parts) => parts.split('+').map(percent_decoded).collect(),
        None => vec![spec.clone()],
    };
    if parts.len() > MAX_FILTER_COMBINE {
        return Err(ParseError::TooMany {
            what: "combined filter",
            limit: MAX_FILTER_COMBINE,
        });
    }
    for part in &parts {
        if part.starts_with("sparse:") {
            return Err(ParseError::Unsupported {
                what: "the sparse: partial-clone filter",
            });
        }
        if let Some(depth) = part.strip_prefix("tree:") {
            if !depth
                .parse::<u64>()
                .is_ok_and(|d| d <= MAX_FILTER_TREE_DEPTH)
            {
                return Err(ParseError::Unexpected {
                    found: show(line),
                    expected: "a tree: filter depth of at most 4",
                });
            }
        }
    }
    Ok(spec)
}

/// `%XX` escapes decoded (git escapes the sub-filters of a `combine:` filter this way).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Push onto `list`, failing once it would exceed `limit`.
pub(crate) fn push_bounded<T>(
    list: &mut Vec<T>,
    item: T,
    what: &'static str,
    limit: usize,
) -> Result<(), ParseError> {
    if list.len() >= limit {
        return Err(ParseError::TooMany { what, limit });
    }
    list.push(item);
    Ok(())
}

/// Split `line` at the first space: `(keyword, rest)`.
pub(crate) fn keyword(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expensive_filters_are_refused() {
        for ok in [
            "blob:none",
            "blob:limit=1k",
            "tree:0",
            "tree:4",
            "combine:blob:none+tree:1",
        ] {
            assert!(filter_spec(b"filter", ok.as_bytes()).is_ok(), "{ok}");
        }
        for bad in [
            "sparse:oid=main:x",
            "tree:5",
            "tree:x",
            "combine:blob:none+sparse%3Aoid=main:x",
            "combine:tree%3A9+blob:none",
            "combine:blob:none+blob:none+blob:none+blob:none+blob:none+blob:none+blob:none+blob:none+blob:none",
        ] {
            assert!(filter_spec(b"filter", bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
