//! Checking that an upload-pack response is a complete final response, so the pack
//! cache never lets anyone read an answer that is not.
//!
//! A cacheable request (see [`crate::normalize`]) ends negotiation, so git's answer to
//! it always carries a pack. The checker is fed the response as it streams
//! ([`ResponseCheck::feed`]) and says at the end ([`ResponseCheck::finish`]) whether
//! the whole of it had the shape a final response has:
//!
//! | protocol | a complete final response |
//! |---|---|
//! | v0 with `side-band` / `side-band-64k` | optional `shallow` / `unshallow` lines and a flush; `ACK` lines ending with `NAK` or a plain `ACK <oid>`; band-1 packets carrying one pack (band 2 is progress); a flush; nothing after it |
//! | v0 without sideband | the same lines, then the raw pack to the end of the stream |
//! | v2 `fetch` | text sections (`acknowledgments`, `shallow-info`, `wanted-refs`, ...) separated by delimiters; a `packfile` section of band-1 / band-2 packets carrying one pack; a flush; nothing after it |
//!
//! The pack itself must be whole: a `PACK` header of version 2 or 3 and a trailer equal
//! to the hash (SHA-1 or SHA-256, per the request's `object-format`) of every byte
//! before it. Anything else is [`ResponseError`]: an answer that stops after `NAK` (what
//! `git upload-pack --stateless-rpc` sends when a request has a flush where `done`
//! should be), an `ERR` line or band-3 message, a pack cut short, bytes after the end.
//!
//! Memory is bounded: at most one pkt-line (64 KiB) is buffered, plus the pack's
//! trailer. The hash runs incrementally over the bytes as they pass, once per
//! generated response: a copy of an answer that another gateway of the fleet already
//! checked is checked without it ([`ResponseCheck::without_hash`]).

use sha1::Digest;

use crate::pktline::{self, Decoded, PacketLineRef};

/// How a final response is framed; decided by the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Protocol v0: ACK/NAK lines, then the pack, multiplexed on bands when the
    /// request asked for `side-band` or `side-band-64k`.
    V0 {
        /// Whether the pack comes in band-1 packets (else as raw bytes).
        sideband: bool,
    },
    /// Protocol v2 `fetch`: sections, the last of them `packfile`.
    V2,
}

/// The object hash of the repository, which sizes the pack trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectFormat {
    /// 20-byte SHA-1 (the default).
    Sha1,
    /// 32-byte SHA-256.
    Sha256,
}

impl ObjectFormat {
    /// The format a request names with `object-format=…`, if it names one gitgate knows.
    pub fn from_capability(cap: &str) -> Option<Option<Self>> {
        match cap.strip_prefix("object-format=")? {
            "sha1" => Some(Some(Self::Sha1)),
            "sha256" => Some(Some(Self::Sha256)),
            _ => Some(None),
        }
    }

    fn trailer_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }
}

/// What a final response to one request must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The framing.
    pub framing: Framing,
    /// The hash of the pack trailer.
    pub format: ObjectFormat,
}

/// Why a response is not a complete final response.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    /// The pkt-line framing is broken.
    #[error("malformed pkt-line in the response: {reason}")]
    Malformed {
        /// What the decoder saw.
        reason: String,
    },
    /// A line or packet that does not belong where it was found.
    #[error("unexpected {found} in the response where {expected} was expected")]
    Unexpected {
        /// What was found (shortened, escaped).
        found: String,
        /// What a final response has at that point.
        expected: &'static str,
    },
    /// git reported an error (`ERR` line or band 3).
    #[error("git reported an error: {message}")]
    Remote {
        /// The message (shortened, escaped).
        message: String,
    },
    /// The response ended before it was complete.
    #[error("the response ends before {expected}")]
    Truncated {
        /// What was still missing.
        expected: &'static str,
    },
    /// The pack is not a whole pack.
    #[error("the pack is not whole: {reason}")]
    BadPack {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Bytes after the end of the response.
    #[error("{len} bytes after the end of the response")]
    TrailingData {
        /// How many (in the first chunk that had them).
        len: usize,
    },
}

/// What a complete response held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Complete {
    /// Bytes of the pack, header and trailer included.
    pub pack_bytes: u64,
    /// The object count from the pack header.
    pub objects: u32,
}

/// Where the checker is in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// v0 before the terminal ACK/NAK; `flushed` once the shallow section's flush passed.
    V0Lines { acked: bool, flushed: bool },
    /// v2 at the start of a section (after the start or a delimiter).
    V2SectionHeader,
    /// v2 inside a text section.
    V2Section,
    /// Band packets of the pack, up to the final flush.
    Bands,
    /// Raw pack bytes up to the end of the stream (v0 without sideband).
    RawPack,
    /// After the final flush: nothing more may come.
    Ended,
}

/// A push-style checker: feed it the response, then ask whether it was complete.
pub struct ResponseCheck {
    /// Bytes of an unfinished pkt-line (at most one line).
    pending: Vec<u8>,
    machine: Machine,
}

/// The state the lines drive, apart from the buffer they are read from.
struct Machine {
    expected: Expected,
    phase: Phase,
    pack: PackCheck,
}

impl ResponseCheck {
    /// A checker for the response to a request that expects `expected`.
    pub fn new(expected: Expected) -> Self {
        Self::with_pack_check(expected, PackCheck::new(expected.format))
    }

    /// A checker of everything but the trailer's hash, for a copy of an answer whose
    /// hash was checked where it was generated (a fleet owner's cache entry). The
    /// framing, the pack header and the trailer's presence are still checked, and a
    /// copy cut short still fails: the owner ends its answer cleanly only when its own
    /// check passed.
    pub fn without_hash(expected: Expected) -> Self {
        let mut pack = PackCheck::new(expected.format);
        pack.hasher = Hasher::Skipped;
        Self::with_pack_check(expected, pack)
    }

    fn with_pack_check(expected: Expected, pack: PackCheck) -> Self {
        let phase = match expected.framing {
            Framing::V0 { .. } => Phase::V0Lines {
                acked: false,
                flushed: false,
            },
            Framing::V2 => Phase::V2SectionHeader,
        };
        Self {
            pending: Vec::new(),
            machine: Machine {
                expected,
                phase,
                pack,
            },
        }
    }

    /// Feed the next bytes of the response.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), ResponseError> {
        let machine = &mut self.machine;
        match machine.phase {
            Phase::RawPack => {
                machine.pack.push(data);
                return Ok(());
            }
            Phase::Ended if !data.is_empty() => {
                return Err(ResponseError::TrailingData { len: data.len() })
            }
            _ => {}
        }
        self.pending.extend_from_slice(data);
        let mut at = 0;
        while at < self.pending.len() {
            if machine.phase == Phase::RawPack {
                break;
            }
            if machine.phase == Phase::Ended {
                return Err(ResponseError::TrailingData {
                    len: self.pending.len() - at,
                });
            }
            let (line, consumed) = match pktline::decode(&self.pending[at..]) {
                Ok(Decoded::Complete { line, consumed }) => (line, consumed),
                Ok(Decoded::Incomplete { .. }) => break,
                Err(err) => {
                    return Err(ResponseError::Malformed {
                        reason: err.to_string(),
                    })
                }
            };
            at += consumed;
            machine.step(line)?;
        }
        if machine.phase == Phase::RawPack {
            // Everything after the terminal ACK/NAK line is the pack.
            machine.pack.push(&self.pending[at..]);
            self.pending = Vec::new();
        } else {
            self.pending.drain(..at);
        }
        Ok(())
    }

    /// The response ended: was it a complete final response?
    pub fn finish(self) -> Result<Complete, ResponseError> {
        if !self.pending.is_empty() {
            return Err(ResponseError::Truncated {
                expected: "the end of a pkt-line",
            });
        }
        match self.machine.phase {
            Phase::Ended | Phase::RawPack => self.machine.pack.finish(),
            Phase::Bands if self.machine.pack.total > 0 => Err(ResponseError::Truncated {
                expected: "the flush after the pack",
            }),
            Phase::Bands => Err(ResponseError::Truncated {
                expected: "the pack",
            }),
            Phase::V0Lines { .. } | Phase::V2SectionHeader | Phase::V2Section => {
                Err(ResponseError::Truncated {
                    expected: "the pack",
                })
            }
        }
    }
}

// === impl Machine ===

impl Machine {
    fn step(&mut self, line: PacketLineRef<'_>) -> Result<(), ResponseError> {
        let sideband = matches!(self.expected.framing, Framing::V0 { sideband: true });
        match (self.phase, line) {
            (_, PacketLineRef::Data(d)) if d.starts_with(b"ERR ") => Err(ResponseError::Remote {
                message: show(&d[4..]),
            }),
            (Phase::V0Lines { acked, flushed }, PacketLineRef::Flush) if !acked && !flushed => {
                self.phase = Phase::V0Lines {
                    acked,
                    flushed: true,
                };
                Ok(())
            }
            (Phase::V0Lines { acked, flushed }, PacketLineRef::Data(d)) => {
                let line = pktline::trim_newline(d);
                let shallow = line.starts_with(b"shallow ") || line.starts_with(b"unshallow ");
                if shallow && !acked && !flushed {
                    return Ok(());
                }
                if line == b"NAK" {
                    self.end_of_acks(sideband);
                    return Ok(());
                }
                if let Some(rest) = line.strip_prefix(b"ACK ") {
                    if rest.contains(&b' ') {
                        // `ACK <oid> common|ready|continue`: more lines follow.
                        self.phase = Phase::V0Lines {
                            acked: true,
                            flushed,
                        };
                    } else {
                        self.end_of_acks(sideband);
                    }
                    return Ok(());
                }
                Err(ResponseError::Unexpected {
                    found: show(line),
                    expected: "shallow, ACK or NAK lines",
                })
            }
            (Phase::V2SectionHeader, PacketLineRef::Data(d)) => {
                let header = pktline::trim_newline(d);
                self.phase = if header == b"packfile" {
                    Phase::Bands
                } else if matches!(
                    header,
                    b"acknowledgments" | b"shallow-info" | b"wanted-refs" | b"packfile-uris"
                ) {
                    Phase::V2Section
                } else {
                    return Err(ResponseError::Unexpected {
                        found: show(header),
                        expected: "a section header",
                    });
                };
                Ok(())
            }
            (Phase::V2Section, PacketLineRef::Data(_)) => Ok(()),
            (Phase::V2Section, PacketLineRef::Delimiter) => {
                self.phase = Phase::V2SectionHeader;
                Ok(())
            }
            (Phase::Bands, PacketLineRef::Data(d)) => match d.first() {
                Some(1) => {
                    self.pack.push(&d[1..]);
                    Ok(())
                }
                Some(2) => Ok(()),
                Some(3) => Err(ResponseError::Remote {
                    message: show(&d[1..]),
                }),
                _ => Err(ResponseError::Unexpected {
                    found: show(d),
                    expected: "a sideband packet of the pack",
                }),
            },
            (Phase::Bands, PacketLineRef::Flush) => {
                self.phase = Phase::Ended;
                Ok(())
            }
            (_, other) => Err(ResponseError::Unexpected {
                found: describe(other),
                expected: match self.phase {
                    Phase::V0Lines { .. } => "shallow, ACK or NAK lines",
                    Phase::V2SectionHeader => "a section header",
                    Phase::V2Section => "a section line or delimiter",
                    Phase::Bands => "a sideband packet or the final flush",
                    Phase::RawPack | Phase::Ended => "the end of the response",
                },
            }),
        }
    }

    fn end_of_acks(&mut self, sideband: bool) {
        self.phase = if sideband {
            Phase::Bands
        } else {
            Phase::RawPack
        };
    }
}

fn describe(line: PacketLineRef<'_>) -> String {
    match line {
        PacketLineRef::Data(d) => show(d),
        PacketLineRef::Flush => "a flush".into(),
        PacketLineRef::Delimiter => "a delimiter".into(),
        PacketLineRef::ResponseEnd => "a response-end packet".into(),
    }
}

/// The pack's header and trailer, checked as the bytes pass.
struct PackCheck {
    format: ObjectFormat,
    header: Vec<u8>,
    total: u64,
    /// The last `trailer_len` bytes seen: the trailer once the pack ends.
    tail: Vec<u8>,
    hasher: Hasher,
}

enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    /// The hash was checked where the answer was generated.
    Skipped,
}

const PACK_HEADER_LEN: usize = 12;

impl PackCheck {
    fn new(format: ObjectFormat) -> Self {
        Self {
            format,
            header: Vec::with_capacity(PACK_HEADER_LEN),
            total: 0,
            tail: Vec::new(),
            hasher: match format {
                ObjectFormat::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
                ObjectFormat::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            },
        }
    }

    fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.total += data.len() as u64;
        let want = PACK_HEADER_LEN - self.header.len();
        self.header.extend_from_slice(&data[..want.min(data.len())]);
        let keep = self.format.trailer_len();
        if data.len() >= keep {
            // Everything held back so far, and all but the last `keep` new bytes, are
            // not the trailer: hash them.
            self.update_hash_from_tail();
            let (body, tail) = data.split_at(data.len() - keep);
            self.update(body);
            self.tail.clear();
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(data);
            if self.tail.len() > keep {
                let cut = self.tail.len() - keep;
                let head: Vec<u8> = self.tail.drain(..cut).collect();
                self.update(&head);
            }
        }
    }

    fn update_hash_from_tail(&mut self) {
        let tail = std::mem::take(&mut self.tail);
        self.update(&tail);
    }

    fn update(&mut self, bytes: &[u8]) {
        match &mut self.hasher {
            Hasher::Sha1(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Skipped => {}
        }
    }

    fn finish(self) -> Result<Complete, ResponseError> {
        let keep = self.format.trailer_len();
        if self.header.len() < PACK_HEADER_LEN || self.total < (PACK_HEADER_LEN + keep) as u64 {
            return Err(ResponseError::BadPack {
                reason: "shorter than a pack header and trailer",
            });
        }
        if &self.header[..4] != b"PACK" {
            return Err(ResponseError::BadPack {
                reason: "no PACK signature",
            });
        }
        let version = u32::from_be_bytes([
            self.header[4],
            self.header[5],
            self.header[6],
            self.header[7],
        ]);
        if version != 2 && version != 3 {
            return Err(ResponseError::BadPack {
                reason: "pack version is neither 2 nor 3",
            });
        }
        let objects = u32::from_be_bytes([
            self.header[8],
            self.header[9],
            self.header[10],
            self.header[11],
        ]);
        let digest: Option<Vec<u8>> = match self.hasher {
            Hasher::Sha1(h) => Some(h.finalize().to_vec()),
            Hasher::Sha256(h) => Some(h.finalize().to_vec()),
            Hasher::Skipped => None,
        };
        if digest.is_some_and(|digest| digest != self.tail) {
            return Err(ResponseError::BadPack {
                reason: "the trailer does not match the pack's hash",
            });
        }
        Ok(Complete {
            pack_bytes: self.total,
            objects,
        })
    }
}

/// Whether `start`, the first bytes of an upload-pack answer, is git refusing a `want`
/// it does not have (`ERR upload-pack: not our ref <oid>`, in v0 and v2 alike). A
/// replica still catching up answers this for a tip another replica advertised moments
/// before, so the request is worth sending to another replica. Only a whole first
/// pkt-line counts; `Some` holds git's message (after `ERR `).
pub fn unknown_want_refusal(start: &[u8]) -> Option<String> {
    match pktline::decode(start) {
        Ok(Decoded::Complete { line, .. }) => line
            .as_slice()
            .and_then(|data| data.strip_prefix(b"ERR "))
            .filter(|msg| msg.starts_with(b"upload-pack: not our ref"))
            .map(|msg| String::from_utf8_lossy(msg.trim_ascii_end()).into_owned()),
        _ => None,
    }
}

fn show(line: &[u8]) -> String {
    crate::request::show(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pktline::Channel;

    #[test]
    fn a_refused_want_is_told_from_other_answers() {
        let oid = "0d3cccf3f8ab670fc1457049a1df8d8a77080597";
        let mut refused = Vec::new();
        pktline::encode_text(
            &mut refused,
            format!("ERR upload-pack: not our ref {oid}").as_bytes(),
        )
        .expect("fits");
        assert_eq!(
            unknown_want_refusal(&refused).as_deref(),
            Some(format!("upload-pack: not our ref {oid}").as_str())
        );
        assert!(
            unknown_want_refusal(&refused[..refused.len() - 1]).is_none(),
            "cut short"
        );
        let mut other = Vec::new();
        pktline::encode_text(&mut other, b"ERR upload-pack: something else").expect("fits");
        assert!(unknown_want_refusal(&other).is_none());
        assert!(unknown_want_refusal(&v0_sideband(&pack(10))).is_none());
        assert!(unknown_want_refusal(b"PACK").is_none());
        assert!(unknown_want_refusal(b"").is_none());
    }

    /// A pack with `n` bytes of (meaningless) object data and a correct trailer.
    fn pack(n: usize) -> Vec<u8> {
        let mut p = b"PACK\0\0\0\x02\0\0\0\x01".to_vec();
        p.extend((0..n).map(|i| (i % 251) as u8));
        let digest = sha1::Sha1::digest(&p);
        p.extend_from_slice(&digest);
        p
    }

    fn v0_sideband(pack: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        pktline::encode_text(&mut out, b"NAK").expect("fits");
        pktline::encode_band(&mut out, Channel::Progress, b"Counting objects\r").expect("fits");
        for chunk in pack.chunks(1000) {
            pktline::encode_band(&mut out, Channel::Data, chunk).expect("fits");
        }
        pktline::encode_flush(&mut out);
        out
    }

    fn check(expected: Expected, response: &[u8], chunk: usize) -> Result<Complete, ResponseError> {
        let mut c = ResponseCheck::new(expected);
        for part in response.chunks(chunk.max(1)) {
            c.feed(part)?;
        }
        c.finish()
    }

    const V0_SB: Expected = Expected {
        framing: Framing::V0 { sideband: true },
        format: ObjectFormat::Sha1,
    };

    #[test]
    fn a_whole_v0_response_is_complete_in_any_chunking() {
        let response = v0_sideband(&pack(5000));
        for chunk in [1, 3, 7, 64, 1000, 100_000] {
            let done = check(V0_SB, &response, chunk).expect("complete");
            assert_eq!(done.objects, 1);
            assert_eq!(done.pack_bytes, 5000 + 32);
        }
    }

    #[test]
    fn nak_alone_is_not_complete() {
        let mut out = Vec::new();
        pktline::encode_text(&mut out, b"NAK").expect("fits");
        assert_eq!(
            check(V0_SB, &out, 4),
            Err(ResponseError::Truncated {
                expected: "the pack"
            })
        );
    }

    #[test]
    fn a_cut_or_corrupt_pack_is_not_complete() {
        let response = v0_sideband(&pack(5000));
        // Drop the final flush.
        assert!(check(V0_SB, &response[..response.len() - 4], 100).is_err());
        // Flip a byte inside the pack.
        let mut p = pack(5000);
        p[100] ^= 1;
        assert_eq!(
            check(V0_SB, &v0_sideband(&p), 100),
            Err(ResponseError::BadPack {
                reason: "the trailer does not match the pack's hash"
            })
        );
        // Anything after the flush.
        let mut extra = response.clone();
        extra.extend_from_slice(b"0000");
        assert!(matches!(
            check(V0_SB, &extra, 100),
            Err(ResponseError::TrailingData { .. })
        ));
    }

    #[test]
    fn a_copy_checked_without_the_hash_still_fails_when_cut_or_malformed() {
        let unhashed = |response: &[u8]| {
            let mut c = ResponseCheck::without_hash(V0_SB);
            c.feed(response)?;
            c.finish()
        };
        let response = v0_sideband(&pack(5000));
        assert_eq!(unhashed(&response).map(|c| c.pack_bytes), Ok(5000 + 32));
        // Only the hash goes unchecked.
        let mut p = pack(5000);
        p[100] ^= 1;
        assert!(unhashed(&v0_sideband(&p)).is_ok());
        assert!(unhashed(&response[..response.len() - 4]).is_err());
        let mut no_signature = pack(5000);
        no_signature[0] = b'K';
        assert!(unhashed(&v0_sideband(&no_signature)).is_err());
        let mut extra = response.clone();
        extra.extend_from_slice(b"0000");
        assert!(unhashed(&extra).is_err());
        let mut short = Vec::new();
        pktline::encode_text(&mut short, b"NAK").expect("fits");
        pktline::encode_band(&mut short, Channel::Data, b"PACK\0\0\0\x02\0\0\0\x01").expect("fits");
        pktline::encode_flush(&mut short);
        assert!(unhashed(&short).is_err(), "no room for a trailer");
    }

    #[test]
    fn band_three_and_err_are_errors() {
        let mut out = Vec::new();
        pktline::encode_text(&mut out, b"NAK").expect("fits");
        pktline::encode_band(&mut out, Channel::Error, b"fatal").expect("fits");
        assert!(matches!(
            check(V0_SB, &out, 10),
            Err(ResponseError::Remote { .. })
        ));
        let mut err = Vec::new();
        pktline::encode_error(&mut err, "not our ref");
        assert!(matches!(
            check(V0_SB, &err, 10),
            Err(ResponseError::Remote { .. })
        ));
    }

    #[test]
    fn v0_without_sideband_and_with_shallow_lines() {
        let mut out = Vec::new();
        pktline::encode_text(&mut out, format!("shallow {}", "a".repeat(40)).as_bytes())
            .expect("fits");
        pktline::encode_flush(&mut out);
        pktline::encode_text(
            &mut out,
            format!("ACK {} common", "b".repeat(40)).as_bytes(),
        )
        .expect("fits");
        pktline::encode_text(&mut out, format!("ACK {}", "b".repeat(40)).as_bytes()).expect("fits");
        out.extend_from_slice(&pack(300));
        let raw = Expected {
            framing: Framing::V0 { sideband: false },
            format: ObjectFormat::Sha1,
        };
        for chunk in [1, 5, 50, 10_000] {
            check(raw, &out, chunk).expect("complete");
        }
        assert!(check(raw, &out[..out.len() - 1], 50).is_err());
    }

    #[test]
    fn v2_sections_then_packfile() {
        let mut out = Vec::new();
        pktline::encode_text(&mut out, b"shallow-info").expect("fits");
        pktline::encode_text(&mut out, format!("shallow {}", "a".repeat(40)).as_bytes())
            .expect("fits");
        pktline::encode_delim(&mut out);
        pktline::encode_text(&mut out, b"packfile").expect("fits");
        for chunk in pack(2000).chunks(700) {
            pktline::encode_band(&mut out, Channel::Data, chunk).expect("fits");
        }
        pktline::encode_flush(&mut out);
        let v2 = Expected {
            framing: Framing::V2,
            format: ObjectFormat::Sha1,
        };
        check(v2, &out, 9).expect("complete");
        // Acknowledgments alone (a negotiation answer) are not a final response.
        let mut acks = Vec::new();
        pktline::encode_text(&mut acks, b"acknowledgments").expect("fits");
        pktline::encode_text(&mut acks, b"NAK").expect("fits");
        pktline::encode_flush(&mut acks);
        assert!(check(v2, &acks, 9).is_err());
    }
}
