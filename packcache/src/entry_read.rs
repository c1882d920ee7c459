//! Reading an entry file's bytes into memory, for readers that copy them (TLS
//! connections; plaintext ones send file ranges with `sendfile` instead): `cached` reads
//! what the page cache holds without ever waiting for the disk, so it runs on the
//! runtime's threads; `blocking` reads anything, on the blocking pool. Both read at a
//! position through an open file, so an unlinked entry still reads (I5); neither knows
//! the published offset, which the caller never reads past (I2).

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use bytes::Bytes;

/// Up to `len` bytes at `pos` if the page cache holds them, read without ever waiting
/// for the disk (`preadv2` with `RWF_NOWAIT`), so it may run on the runtime's threads.
/// `None` when the bytes are not cached or anything fails: the blocking read then tries
/// and reports the error.
pub(crate) fn cached(file: &std::fs::File, pos: u64, len: u64) -> Option<Bytes> {
    use rustix::io::{preadv2, Errno, ReadWriteFlags};
    use std::sync::atomic::{AtomicBool, Ordering};
    // Set once the kernel or the cache's filesystem turns `RWF_NOWAIT` down: every read
    // then goes to the blocking pool without trying.
    static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
    if UNSUPPORTED.load(Ordering::Relaxed) {
        return None;
    }
    let mut buf = vec![0u8; usize::try_from(len).ok()?];
    let n = match preadv2(
        file,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        pos,
        ReadWriteFlags::NOWAIT,
    ) {
        Ok(n) => n,
        Err(Errno::OPNOTSUPP | Errno::NOSYS) => {
            UNSUPPORTED.store(true, Ordering::Relaxed);
            return None;
        }
        Err(_) => return None,
    };
    if n == 0 {
        return None;
    }
    buf.truncate(n);
    Some(Bytes::from(buf))
}

/// Read `len` bytes at `pos`: through the reader's own file description when it can
/// have one, else with a positioned read on the shared one. Blocking.
pub(crate) fn blocking(
    shared: &std::fs::File,
    own: Option<std::fs::File>,
    pos: u64,
    len: u64,
) -> std::io::Result<(Option<std::fs::File>, Bytes)> {
    let own = match own {
        Some(file) => Some(file),
        // I5: through the open descriptor, so this works after the name is unlinked.
        None => std::fs::File::open(format!("/proc/self/fd/{}", shared.as_raw_fd())).ok(),
    };
    match own {
        Some(mut file) => {
            file.seek(SeekFrom::Start(pos))?;
            let mut buf = Vec::with_capacity(len as usize);
            (&mut file).take(len).read_to_end(&mut buf)?;
            if buf.len() as u64 != len {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "entry file shorter than written",
                ));
            }
            Ok((Some(file), Bytes::from(buf)))
        }
        None => {
            let mut buf = vec![0u8; len as usize];
            shared.read_exact_at(&mut buf, pos)?;
            Ok((None, Bytes::from(buf)))
        }
    }
}
