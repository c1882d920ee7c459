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

use crate::limits::MAX_CAPABILITY_LEN;
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
