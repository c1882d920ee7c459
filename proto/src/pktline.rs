//! Pkt-line framing: decoding (through `gix-packetline`) and encoding.
//!
//! A pkt-line is four hex digits giving the total length, then the payload; `0000` is a
//! flush, `0001` a delimiter and `0002` a response end. Decoding is a pure function over a
//! byte slice that reports either a complete line with the bytes it used or how many
//! more bytes it needs ([`Decoded::Incomplete`]), so a caller reading from a socket knows
//! to read again rather than fail.

use gix_packetline::blocking_io::encode;
pub use gix_packetline::{Channel, PacketLineRef};

use crate::limits::MAX_PKT_DATA_LEN;

/// Errors decoding or encoding pkt-lines.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PktLineError {
    /// The length prefix or payload violates pkt-line framing.
    #[error("malformed pkt-line at byte {offset}: {reason}")]
    Malformed {
        /// Offset of the line in the buffer that was decoded.
        offset: usize,
        /// What was wrong, as the decoder saw it.
        reason: String,
    },
    /// The input ended in the middle of a line.
    #[error("input ends inside a pkt-line at byte {offset}; {needed} more bytes were expected")]
    Truncated {
        /// Offset of the unfinished line.
        offset: usize,
        /// Bytes missing to complete it.
        needed: usize,
    },
    /// A payload too large for one pkt-line was given to an encoder.
    #[error("pkt-line payload of {len} bytes exceeds the maximum of {MAX_PKT_DATA_LEN}")]
    TooLong {
        /// Length of the payload.
        len: usize,
    },
}

/// The result of decoding the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole line, and how many bytes of input it used.
    Complete {
        /// The line.
        line: PacketLineRef<'a>,
        /// Bytes of input consumed.
        consumed: usize,
    },
    /// More input is needed before a line can be decoded.
    Incomplete {
        /// How many more bytes are needed at least.
        needed: usize,
    },
}

/// Decode one pkt-line from the start of `data`.
pub fn decode(data: &[u8]) -> Result<Decoded<'_>, PktLineError> {
    match gix_packetline::decode::streaming(data) {
        Ok(gix_packetline::decode::Stream::Complete {
            line,
            bytes_consumed,
        }) => Ok(Decoded::Complete {
            line,
            consumed: bytes_consumed,
        }),
        Ok(gix_packetline::decode::Stream::Incomplete { bytes_needed }) => {
            Ok(Decoded::Incomplete {
                needed: bytes_needed,
            })
        }
        Err(err) => Err(PktLineError::Malformed {
            offset: 0,
            reason: err.to_string(),
        }),
    }
}

/// Iterate over the pkt-lines of a buffer that must hold only whole lines.
pub fn lines(data: &[u8]) -> Lines<'_> {
    Lines {
        data,
        offset: 0,
        failed: false,
    }
}

/// Iterator returned by [`lines`]; stops after the first error.
#[derive(Debug)]
pub struct Lines<'a> {
    data: &'a [u8],
    offset: usize,
    failed: bool,
}

impl<'a> Lines<'a> {
    /// Bytes consumed so far.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The bytes not consumed yet.
    pub fn remaining(&self) -> &'a [u8] {
        &self.data[self.offset..]
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<PacketLineRef<'a>, PktLineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.data.len() {
            return None;
        }
        let offset = self.offset;
        let result = match decode(&self.data[offset..]) {
            Ok(Decoded::Complete { line, consumed }) => {
                self.offset += consumed;
                Ok(line)
            }
            Ok(Decoded::Incomplete { needed }) => Err(PktLineError::Truncated { offset, needed }),
            Err(PktLineError::Malformed { reason, .. }) => {
                Err(PktLineError::Malformed { offset, reason })
            }
            Err(other) => Err(other),
        };
        self.failed = result.is_err();
        Some(result)
    }
}

/// Strip one trailing `\n` from a text line's payload, as git does.
pub fn trim_newline(data: &[u8]) -> &[u8] {
    data.strip_suffix(b"\n").unwrap_or(data)
}

/// Append a data line carrying `data`.
pub fn encode_data(out: &mut Vec<u8>, data: &[u8]) -> Result<(), PktLineError> {
    if data.len() > MAX_PKT_DATA_LEN {
        return Err(PktLineError::TooLong { len: data.len() });
    }
    encode::data_to_write(data, out).expect("writing to a Vec cannot fail");
    Ok(())
}

/// Append a text line: `text` followed by a newline.
pub fn encode_text(out: &mut Vec<u8>, text: &[u8]) -> Result<(), PktLineError> {
    if text.len() + 1 > MAX_PKT_DATA_LEN {
        return Err(PktLineError::TooLong {
            len: text.len() + 1,
        });
    }
    encode::text_to_write(text, out).expect("writing to a Vec cannot fail");
    Ok(())
}

/// Append a flush packet (`0000`).
pub fn encode_flush(out: &mut Vec<u8>) {
    encode::flush_to_write(out).expect("writing to a Vec cannot fail");
}

/// Append a delimiter packet (`0001`).
pub fn encode_delim(out: &mut Vec<u8>) {
    encode::delim_to_write(out).expect("writing to a Vec cannot fail");
}

/// Append a response-end packet (`0002`). gitgate never sends it over HTTP; it exists for
/// tests and for completeness of the framing.
pub fn encode_response_end(out: &mut Vec<u8>) {
    encode::response_end_to_write(out).expect("writing to a Vec cannot fail");
}

/// Append an `ERR <message>` line, which git shows to the user and then stops.
/// Overlong messages are cut to fit one line.
pub fn encode_error(out: &mut Vec<u8>, message: &str) {
    let limit = MAX_PKT_DATA_LEN - b"ERR \n".len();
    let mut cut = message.len().min(limit);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    encode::error_to_write(&message.as_bytes()[..cut], out).expect("writing to a Vec cannot fail");
}

/// Append a sideband line on `channel`.
pub fn encode_band(out: &mut Vec<u8>, channel: Channel, data: &[u8]) -> Result<(), PktLineError> {
    if data.len() + 1 > MAX_PKT_DATA_LEN {
        return Err(PktLineError::TooLong {
            len: data.len() + 1,
        });
    }
    encode::band_to_write(channel, data, out).expect("writing to a Vec cannot fail");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_special_lines() {
        for (bytes, want) in [
            (&b"0000"[..], PacketLineRef::Flush),
            (b"0001", PacketLineRef::Delimiter),
            (b"0002", PacketLineRef::ResponseEnd),
        ] {
            assert_eq!(
                decode(bytes),
                Ok(Decoded::Complete {
                    line: want,
                    consumed: 4
                })
            );
        }
    }

    #[test]
    fn reports_bytes_needed() {
        assert_eq!(decode(b"00"), Ok(Decoded::Incomplete { needed: 2 }));
        assert_eq!(decode(b"000ahel"), Ok(Decoded::Incomplete { needed: 3 }));
    }

    #[test]
    fn rejects_bad_prefixes() {
        assert!(decode(b"zzzz").is_err());
        assert!(decode(b"0003").is_err());
        assert!(decode(b"0004").is_err());
        assert!(decode(b"fff1").is_err());
    }

    #[test]
    fn iterator_reports_truncation_with_offset() {
        let mut it = lines(b"0009hello0000000ahel");
        assert_eq!(it.next(), Some(Ok(PacketLineRef::Data(b"hello"))));
        assert_eq!(it.next(), Some(Ok(PacketLineRef::Flush)));
        assert_eq!(
            it.next(),
            Some(Err(PktLineError::Truncated {
                offset: 13,
                needed: 3
            }))
        );
        assert_eq!(it.next(), None);
    }

    #[test]
    fn error_and_band_encoding() {
        let mut out = Vec::new();
        encode_error(&mut out, "no such repository");
        assert_eq!(out, b"001aERR no such repository");
        out.clear();
        encode_band(&mut out, Channel::Progress, b"hi").expect("fits");
        assert_eq!(out, b"0007\x02hi");
        assert!(encode_data(&mut out, &vec![0; MAX_PKT_DATA_LEN + 1]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..20)) {
            let mut buf = Vec::new();
            for p in &payloads {
                encode_data(&mut buf, p).expect("fits");
            }
            encode_flush(&mut buf);
            let decoded: Vec<_> = lines(&buf).collect::<Result<_, _>>().expect("valid");
            prop_assert_eq!(decoded.len(), payloads.len() + 1);
            for (line, p) in decoded.iter().zip(&payloads) {
                prop_assert_eq!(line.as_slice(), Some(&p[..]));
            }
            prop_assert_eq!(decoded.last(), Some(&PacketLineRef::Flush));
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = lines(&data).count();
        }
    }
}
