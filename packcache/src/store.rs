//! The files behind entries: `EntryStore`, the few filesystem operations the cache
//! needs, and `FileStore`, the real one.
//!
//! Each process life gets its own subdirectory `<dir>/gitgate-<pid>-<nanos>`; entry files
//! in it are numbered and never reused (I4). At start, subdirectories of earlier lives
//! whose process is gone are removed, so nothing written by a previous life is ever
//! served. Every operation here blocks; callers run them on `spawn_blocking`. Reading
//! entry files is the reader's job, not this module's. Tests wrap `FileStore` in a
//! store that fails writes, reports a full disk or signals removals.

use std::fmt;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

const LIFE_PREFIX: &str = "gitgate-";

/// Slices per `pwritev` call, well under any system's `IOV_MAX` (1024 on Linux).
const MAX_IOVECS: usize = 512;

/// Errors setting up or using the file store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Where entry files are made, written and removed. Every method blocks.
pub(crate) trait EntryStore: fmt::Debug + Send + Sync + 'static {
    /// This life's directory.
    fn life_dir(&self) -> &Path;

    /// Create a new, empty entry file (read + write) with a name never used before (I4).
    fn create(&self) -> Result<(File, PathBuf), StoreError>;

    /// Write all of `chunks`, one after another, from `offset` of an entry file.
    fn write_at(&self, file: &File, chunks: &[Bytes], offset: u64) -> io::Result<()>;

    /// Unlink an entry file; readers that have it open keep reading (I5).
    fn remove(&self, path: &Path) -> io::Result<()>;

    /// Free bytes on the filesystem holding the store.
    fn free_bytes(&self) -> Result<u64, StoreError>;
}

/// The real store: files in this life's directory.
#[derive(Debug)]
pub(crate) struct FileStore {
    life_dir: PathBuf,
    counter: AtomicU64,
}

impl FileStore {
    /// Prepare `dir`: create it, remove leftovers of dead processes, make this life's
    /// subdirectory. Blocking; call it from `spawn_blocking`.
    pub(crate) fn open_blocking(dir: &Path) -> Result<Self, StoreError> {
        let io_err = |op, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { op, path, source }
        };
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        for entry in std::fs::read_dir(dir)
            .map_err(io_err("reading", dir))?
            .flatten()
        {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name.strip_prefix(LIFE_PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|pid| {
                pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()
            });
            if !alive {
                tracing::info!(path = %entry.path().display(), "removing pack cache leftovers of an earlier run");
                if let Err(err) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %err, "could not remove leftovers");
                }
            }
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let life_dir = dir.join(format!("{LIFE_PREFIX}{}-{nanos}", std::process::id()));
        // I4: `create_dir` fails rather than adopt a directory that already exists.
        std::fs::create_dir(&life_dir).map_err(io_err("creating", &life_dir))?;
        Ok(Self {
            life_dir,
            counter: AtomicU64::new(0),
        })
    }
}

impl EntryStore for FileStore {
    fn life_dir(&self) -> &Path {
        &self.life_dir
    }

    fn create(&self) -> Result<(File, PathBuf), StoreError> {
        // I4: a counter within a directory private to this life, and `create_new`.
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self.life_dir.join(format!("{n:08}.entry"));
        // No atime updates: readers copy entries with non-blocking reads on the
        // runtime's threads (see `reader`), and an atime update would dirty the inode
        // and could wait on the filesystem's journal there.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOATIME)
            .open(&path)
            .map_err(|source| StoreError::Io {
                op: "creating",
                path: path.clone(),
                source,
            })?;
        Ok((file, path))
    }

    /// One `pwritev` for the lot where it can: the page cache then holds the range in
    /// folios as large as the write and its alignment allow, instead of one small folio
    /// per upstream chunk, and every `sendfile` of the entry later walks fewer of them.
    fn write_at(&self, file: &File, chunks: &[Bytes], mut offset: u64) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
        let mut rest = &mut slices[..];
        // Drops empty slices at the front.
        IoSlice::advance_slices(&mut rest, 0);
        while !rest.is_empty() {
            let batch = &rest[..rest.len().min(MAX_IOVECS)];
            let at = i64::try_from(offset)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
            match nix::sys::uio::pwritev(file, batch, at) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    offset += n as u64;
                    IoSlice::advance_slices(&mut rest, n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn free_bytes(&self) -> Result<u64, StoreError> {
        let stat = nix::sys::statvfs::statvfs(&self.life_dir).map_err(|errno| StoreError::Io {
            op: "statvfs",
            path: self.life_dir.clone(),
            source: io::Error::from(errno),
        })?;
        Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
    }
}
