//! Zero-copy pack cache responses: entry bytes go from the page cache to the client's
//! socket with `sendfile(2)`, never through user space.
//!
//! hyper still writes every response: the status, the headers, the body framing
//! (`Content-Length` or chunked), keep-alive and aborts all stay hyper's. Only the
//! body's bytes take another way. For each published range of an entry file, the body
//! queues the range on its connection's [`SendQueue`] and hands hyper a *placeholder*
//! of the same length: a slice of [`PLACEHOLDER`], a static region of zeros whose
//! contents are never sent. The connection's socket, a [`ZeroCopyStream`], recognises a
//! placeholder by its address when hyper writes it, and sends the queued range with
//! `sendfile` in its place.
//!
//! # Invariants
//!
//! - **Z1** placeholder bytes never reach a socket. A placeholder write with no range
//!   queued, or one whose length and position do not match what is left of the range at
//!   the head of the queue, fails the connection with an IO error, so hyper aborts it.
//! - **Z2** ranges are sent in the order the body queued them: an HTTP/1.1 connection
//!   writes one response at a time, and hyper writes a body's frames in order.
//! - **Z3** hyper hands the placeholder slices themselves to the socket, never copies:
//!   the server's connection builder forces vectored (queued) writes, and the stream
//!   says it supports them. Were that ever to change, Z1 fails the connection instead
//!   of sending zeros.
//! - **Z4** only published bytes are queued (the pack cache's I2), and each range holds
//!   its own handle on the entry file, so eviction while sending is safe (I5).
//! - **Z5** only plaintext connections have a queue; over TLS the body is read into
//!   memory and encrypted as before.
//! - **Z6** file bytes are counted when `sendfile` sends them (the pack cache's served
//!   bytes through [`FileRegion::sent`], the access log through the connection's
//!   [`ConnProgress`]), so a response cut off mid-range counts only what reached the
//!   socket. A body is over for hyper once it has handed over its last placeholder,
//!   but its request is over only when the range is sent: the stall check and the
//!   access log wait for the connection's `sendfile` count (see [`ConnProgress`]).
//!
//! `sendfile` runs on the runtime's worker thread, like a socket write. It blocks only
//! when the range is not in the page cache; entries are written moments before they are
//! read, and a body asks the kernel to read an entry ahead (`POSIX_FADV_WILLNEED`, on
//! the blocking pool) before its first range, so a cold entry is read asynchronously.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use gitgate_packcache::{FileRegion, ReadError, Reader, Region};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::progress::ConnProgress;

/// The largest range one placeholder stands for.
pub const MAX_REGION: usize = 4 << 20;

/// Stands in for file ranges in response bodies; never read, never sent (Z1). Zeroed,
/// so it lives in the binary's zero-initialised data and costs no memory.
static PLACEHOLDER: [u8; MAX_REGION] = [0; MAX_REGION];

/// Whether `buf` stands for a file range (its bytes are sent, and counted, by the
/// connection's stream, not written from `buf`).
pub fn is_placeholder(buf: &[u8]) -> bool {
    placeholder_offset(buf).is_some()
}

/// Where `buf` starts inside [`PLACEHOLDER`], if it is a placeholder.
fn placeholder_offset(buf: &[u8]) -> Option<usize> {
    let base = PLACEHOLDER.as_ptr() as usize;
    let at = buf.as_ptr() as usize;
    (at >= base && at < base + MAX_REGION).then(|| at - base)
}

/// The file ranges a connection's current response has queued and not yet sent.
#[derive(Debug, Default)]
pub struct SendQueue {
    ranges: Mutex<VecDeque<FileRegion>>,
}

impl SendQueue {
    fn push(&self, range: FileRegion) {
        self.lock().push_back(range);
    }

    fn pop(&self) -> Option<FileRegion> {
        self.lock().pop_front()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<FileRegion>> {
        // Plain data behind the lock; a panic elsewhere leaves it usable.
        self.ranges
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A pack cache reader as a response body stream. With a connection's `queue`, file
/// ranges go out with `sendfile` (Z5: plaintext only); without one, the bytes are read
/// into memory.
pub fn body(
    reader: Reader,
    queue: Option<Arc<SendQueue>>,
) -> impl Stream<Item = Result<Bytes, ReadError>> + Send + 'static {
    match queue {
        None => reader.into_stream().left_stream(),
        Some(queue) => {
            let mut advised = false;
            reader
                .into_regions(MAX_REGION as u64)
                .map(move |item| {
                    let region = item?;
                    Ok(match region {
                        Region::Bytes(bytes) => bytes,
                        Region::File(range) => {
                            if !advised {
                                advised = true;
                                read_ahead(&range);
                            }
                            // Z2, Z4: queued before hyper can see its placeholder.
                            let len = range.len() as usize;
                            queue.push(range);
                            Bytes::from_static(&PLACEHOLDER[..len])
                        }
                    })
                })
                .right_stream()
        }
    }
}

/// Ask the kernel to bring the entry into the page cache from `range` on, without
/// waiting for it; best effort, on the blocking pool.
fn read_ahead(range: &FileRegion) {
    let Ok(file) = range.file().try_clone() else {
        return;
    };
    let offset = range.offset() as i64;
    tokio::task::spawn_blocking(move || {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        // Length 0: to the end of the file.
        let _ = posix_fadvise(&file, offset, 0, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
    });
}

/// The range being sent and how much of it is out.
#[derive(Debug)]
struct Sending {
    range: FileRegion,
    sent: u64,
}

/// A plaintext client connection that sends queued file ranges in place of their
/// placeholders (see the module docs).
pub struct ZeroCopyStream {
    tcp: TcpStream,
    queue: Arc<SendQueue>,
    progress: Arc<ConnProgress>,
    sending: Option<Sending>,
}

impl ZeroCopyStream {
    /// Wrap `tcp`; its responses queue ranges on `queue` and report bytes sent on
    /// `progress`.
    pub fn new(tcp: TcpStream, queue: Arc<SendQueue>, progress: Arc<ConnProgress>) -> Self {
        Self {
            tcp,
            queue,
            progress,
            sending: None,
        }
    }

    /// Send what is left of the head range in place of `placeholder`, which starts
    /// `at` bytes into [`PLACEHOLDER`].
    fn poll_send_range(
        &mut self,
        cx: &mut Context<'_>,
        at: usize,
        placeholder: usize,
    ) -> Poll<io::Result<usize>> {
        if self.sending.is_none() {
            let Some(range) = self.queue.pop() else {
                return Poll::Ready(Err(mismatch("a placeholder with no file range queued")));
            };
            self.sending = Some(Sending { range, sent: 0 });
        }
        let Some(sending) = &mut self.sending else {
            return Poll::Ready(Err(mismatch("no file range")));
        };
        // Z1: the placeholder must be exactly the unsent rest of the head range.
        let left = sending.range.len() - sending.sent;
        if at as u64 != sending.sent || placeholder as u64 != left {
            return Poll::Ready(Err(mismatch(
                "a placeholder that does not match its file range",
            )));
        }
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let mut offset = (sending.range.offset() + sending.sent) as i64;
            let file = sending.range.file();
            let tcp = &self.tcp;
            let result = tcp.try_io(Interest::WRITABLE, || {
                nix::sys::sendfile::sendfile64(tcp, file, Some(&mut offset), left as usize)
                    .map_err(io::Error::from)
            });
            match result {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "pack cache entry file shorter than its published length",
                    )))
                }
                Ok(n) => {
                    sending.sent += n as u64;
                    sending.range.sent(n as u64);
                    self.progress.sent_file_bytes(n as u64);
                    if sending.sent == sending.range.len() {
                        self.sending = None;
                    }
                    self.progress.wrote();
                    return Poll::Ready(Ok(n));
                }
                // Readiness was stale: wait for the socket again.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl ZeroCopyStream {
    /// Write `bufs` with `MSG_MORE`: more data follows at once.
    fn poll_send_more(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        use nix::sys::socket::{sendmsg, MsgFlags, SockaddrStorage};
        use std::os::fd::AsRawFd;
        // nix names no constant for it.
        let more = MsgFlags::from_bits_retain(nix::libc::MSG_MORE);
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let fd = self.tcp.as_raw_fd();
            let result = self.tcp.try_io(Interest::WRITABLE, || {
                sendmsg::<SockaddrStorage>(fd, bufs, &[], more, None).map_err(io::Error::from)
            });
            match result {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }
}

fn mismatch(what: &str) -> io::Error {
    tracing::error!(what, "zero-copy send out of step; closing the connection");
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("zero-copy send: {what}"),
    )
}

impl Drop for ZeroCopyStream {
    fn drop(&mut self) {
        // Responses waiting for their last file bytes learn they will not go out.
        self.progress.closed();
    }
}

impl AsyncRead for ZeroCopyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ZeroCopyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let bufs = match bufs.iter().position(|b| !b.is_empty()) {
            Some(first) => &bufs[first..],
            None => return Poll::Ready(Ok(0)),
        };
        if let Some(at) = placeholder_offset(&bufs[0]) {
            let len = bufs[0].len();
            return self.poll_send_range(cx, at, len);
        }
        // Ordinary bytes (headers, chunk framing, in-memory chunks) up to the next
        // placeholder, in one write.
        let plain = bufs
            .iter()
            .take_while(|b| placeholder_offset(b).is_none())
            .count();
        let this = &mut *self;
        let written = if plain < bufs.len() {
            // A file range follows (chunk framing, usually): let the kernel hold these
            // few bytes for the range's first segment instead of sending them alone.
            ready!(this.poll_send_more(cx, &bufs[..plain]))?
        } else {
            ready!(Pin::new(&mut this.tcp).poll_write_vectored(cx, &bufs[..plain]))?
        };
        if written > 0 {
            this.progress.wrote();
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        // Z3: hyper queues body frames instead of copying them into one buffer.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slices_of_the_placeholder_are_placeholders() {
        assert_eq!(placeholder_offset(&PLACEHOLDER[..10]), Some(0));
        assert_eq!(placeholder_offset(&PLACEHOLDER[7..10]), Some(7));
        let zeros = vec![0u8; 16];
        assert_eq!(placeholder_offset(&zeros), None);
        assert_eq!(placeholder_offset(b"0000"), None);
    }
}
