//! The files behind entries: `EntryStore`, the few filesystem operations the cache
//! needs, and `FileStore`, the real one.
//!
//! Each process life gets its own subdirectory `<dir>/gitgate-<pid>-<nanos>`; entry files
//! in it are numbered and never reused (I4). The life holds an exclusive lock on
//! `<dir>/gitgate-<pid>-<nanos>.lock` while it runs; at start, subdirectories of earlier
//! lives whose lock is free are removed, so nothing written by a previous life is ever
//! served, and a live gateway sharing the directory keeps its own; a lock file a start
//! left under its making name (`.gitgate-….lock`) goes once it is a minute old and
//! free. If this life's directory is removed while it runs (an operator clearing the
//! cache), the next entry makes it, and its lock, again. Every operation here blocks; callers run them on `spawn_blocking`. Reading
//! entry files is the reader's job, not this module's. Tests wrap `FileStore` in a
//! store that fails writes, reports a full disk or signals removals.

use std::fmt;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use nix::fcntl::{Flock, FlockArg};

const LIFE_PREFIX: &str = "gitgate-";
/// Beside each life's directory, the file its process holds locked.
const LOCK_SUFFIX: &str = ".lock";

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
    /// The cache directory is on another filesystem than when the process started (its
    /// volume was unmounted, say): entries are not made on whatever is underneath.
    #[error("{0} is on another filesystem than at start (unmounted?); not making pack cache entries there")]
    Moved(PathBuf),
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
    /// The configured `dir`, holding every life's directory and lock.
    root: PathBuf,
    /// This life's name, `gitgate-<pid>-<nanos>`.
    name: String,
    /// The device `root` was on at start.
    root_dev: u64,
    life_dir: PathBuf,
    counter: AtomicU64,
    /// Held for as long as this process runs (see [`ended_life`]); replaced when the
    /// directory is made again.
    life_lock: Mutex<Flock<File>>,
}

impl FileStore {
    /// Prepare `dir`: create it, remove leftovers of dead processes, make this life's
    /// subdirectory. Blocking; call it from `spawn_blocking`.
    pub(crate) fn open_blocking(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        for entry in std::fs::read_dir(dir)
            .map_err(io_err("reading", dir))?
            .flatten()
        {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name
                .strip_prefix('.')
                .is_some_and(|n| n.starts_with(LIFE_PREFIX) && n.ends_with(LOCK_SUFFIX))
            {
                remove_abandoned_lock(&entry.path());
                continue;
            }
            if !name.starts_with(LIFE_PREFIX) {
                continue;
            }
            let (life, lock) = match name.strip_suffix(LOCK_SUFFIX) {
                // A lock whose directory is gone (a removal cut short) goes too.
                Some(life) if dir.join(life).exists() => continue,
                Some(life) => (dir.join(life), entry.path()),
                None => (entry.path(), dir.join(format!("{name}{LOCK_SUFFIX}"))),
            };
            let Some(_held_while_removing) = ended_life(&life, &lock) else {
                continue;
            };
            tracing::info!(path = %life.display(), "removing pack cache leftovers of an earlier run");
            for (path, result) in [
                (&life, std::fs::remove_dir_all(&life)),
                (&lock, std::fs::remove_file(&lock)),
            ] {
                if let Err(err) = result.or_else(ignore_missing) {
                    tracing::warn!(path = %path.display(), error = %err, "could not remove leftovers");
                }
            }
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!("{LIFE_PREFIX}{}-{nanos}", std::process::id());
        // The lock first, then the directory: a directory without a lock is never one
        // of this version's live ones.
        let lock = lock_life(dir, &name)?;
        let life_dir = dir.join(&name);
        // I4: `create_dir` fails rather than adopt a directory that already exists.
        std::fs::create_dir(&life_dir).map_err(io_err("creating", &life_dir))?;
        let root_dev = std::fs::metadata(dir)
            .map_err(io_err("reading", dir))?
            .dev();
        Ok(Self {
            root: dir.to_owned(),
            name,
            root_dev,
            life_dir,
            counter: AtomicU64::new(0),
            life_lock: Mutex::new(lock),
        })
    }

    /// Make this life's directory and lock again after something removed the
    /// directory. Entry numbers go on from the counter, so no name is reused (I4).
    fn remake_life(&self) -> Result<(), StoreError> {
        let mut held = self
            .life_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.life_dir.is_dir() {
            // Another entry made it meanwhile.
            return Ok(());
        }
        tracing::warn!(dir = %self.life_dir.display(), "this process's pack cache directory was removed; making it again");
        std::fs::create_dir_all(&self.root).map_err(io_err("creating", &self.root))?;
        let root = std::fs::metadata(&self.root).map_err(io_err("reading", &self.root))?;
        if root.dev() != self.root_dev {
            return Err(StoreError::Moved(self.root.clone()));
        }
        // A new lock first (the old one may have gone with the directory's
        // neighbours), then the directory.
        *held = lock_life(&self.root, &self.name)?;
        match std::fs::create_dir(&self.life_dir) {
            Err(err) if err.kind() != io::ErrorKind::AlreadyExists => {
                Err(io_err("creating", &self.life_dir)(err))
            }
            _ => Ok(()),
        }
    }

    fn create_numbered(&self) -> Result<(File, PathBuf), StoreError> {
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
}

/// Make `<dir>/<name>.lock` and lock it. It is made and locked under a name the
/// start-up scan ignores (`.<name>.lock`) and only then renamed into place, so another
/// gateway starting meanwhile never finds it unlocked and removes the life it guards.
fn lock_life(dir: &Path, name: &str) -> Result<Flock<File>, StoreError> {
    let lock_path = dir.join(format!("{name}{LOCK_SUFFIX}"));
    let making = dir.join(format!(".{name}{LOCK_SUFFIX}"));
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&making)
        .map_err(io_err("creating", &making))?;
    let locked = Flock::lock(lock, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, errno)| StoreError::Io {
            op: "locking",
            path: making.clone(),
            source: errno.into(),
        })
        .and_then(|lock| {
            std::fs::rename(&making, &lock_path).map_err(io_err("renaming", &making))?;
            Ok(lock)
        });
    if locked.is_err() {
        // Otherwise the next attempt (the directory made again) finds it and fails.
        let _ = std::fs::remove_file(&making);
    }
    locked
}

/// Whether `file` is still at least `written` bytes long: entry files only grow, so a
/// shorter one was truncated by something else. One `fstat`. Blocking.
pub(crate) fn holds(file: &File, written: u64) -> io::Result<bool> {
    Ok(file.metadata()?.len() >= written)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { op, path, source }
}

fn ignore_missing(err: io::Error) -> io::Result<()> {
    if err.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(err)
    }
}

/// How long a lock file may sit under its making name before it is taken for the
/// leftover of a start cut short: far longer than the create-lock-rename that
/// normally follows its creation within microseconds.
const MAKING_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Remove a lock file left under its making name (`.gitgate-….lock`) by a start that
/// died between creating and renaming it, once it is old and nobody holds it.
fn remove_abandoned_lock(path: &Path) {
    let old = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > MAKING_GRACE);
    if !old {
        return;
    }
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) else {
        return;
    };
    let Ok(_held) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
        return;
    };
    tracing::info!(path = %path.display(), "removing a pack cache lock file left by a start cut short");
    if let Err(err) = std::fs::remove_file(path).or_else(ignore_missing) {
        tracing::warn!(path = %path.display(), error = %err, "could not remove leftovers");
    }
}

/// Whether the life that made `life` (a directory, which may be gone) has ended; if so,
/// its lock, held until the leftovers are removed. A life holds an exclusive lock on
/// `lock` for as long as its process runs, and the kernel releases it however the
/// process ends, so this holds even when the old pid now names another process, or
/// another pid namespace (a container) shares the directory. A directory without a
/// lock file (made by an older version) is judged by whether its pid runs.
fn ended_life(life: &Path, lock: &Path) -> Option<Option<Flock<File>>> {
    match std::fs::OpenOptions::new().write(true).open(lock) {
        Ok(file) => match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => Some(Some(held)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => None,
            Err((_, err)) => {
                tracing::warn!(path = %lock.display(), error = %err, "cannot tell whether a pack cache directory is in use; keeping it");
                None
            }
        },
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let name = life.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let pid = name
                .strip_prefix(LIFE_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            let running = pid.is_some_and(|pid| {
                pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()
            });
            (!running).then_some(None)
        }
        Err(err) => {
            tracing::warn!(path = %lock.display(), error = %err, "cannot tell whether a pack cache directory is in use; keeping it");
            None
        }
    }
}

impl EntryStore for FileStore {
    fn life_dir(&self) -> &Path {
        &self.life_dir
    }

    fn create(&self) -> Result<(File, PathBuf), StoreError> {
        match self.create_numbered() {
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                self.remake_life()?;
                self.create_numbered()
            }
            made => made,
        }
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
        let statvfs = || {
            nix::sys::statvfs::statvfs(&self.life_dir).map_err(|errno| StoreError::Io {
                op: "statvfs",
                path: self.life_dir.clone(),
                source: io::Error::from(errno),
            })
        };
        let stat = match statvfs() {
            // Removed under us: made again here, as the entry about to be created
            // needs it anyway (the free-space check runs first).
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                self.remake_life()?;
                statvfs()?
            }
            stat => stat?,
        };
        // Both are u64 here; other targets have narrower types.
        #[allow(clippy::unnecessary_cast)]
        Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::{EntryStore, FileStore, StoreError};

    #[test]
    fn a_removed_directory_is_not_made_again_on_another_filesystem() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let mut store = FileStore::open_blocking(dir.path()).expect("open");
        std::fs::remove_dir_all(store.life_dir()).expect("rm -rf");
        // As if the cache's volume had been unmounted, leaving its mount point.
        store.root_dev ^= 1;
        assert!(matches!(store.create(), Err(StoreError::Moved(_))));
        assert!(matches!(store.free_bytes(), Err(StoreError::Moved(_))));
        assert!(!store.life_dir().exists());
        // On the same filesystem it is made again.
        store.root_dev ^= 1;
        assert!(store.create().is_ok());
    }
}
