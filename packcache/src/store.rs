//! The files behind entries.
//!
//! Each process life gets its own subdirectory `<dir>/gitgate-<pid>-<nanos>`; entry files
//! in it are numbered and never reused (I4). At start, subdirectories of earlier lives
//! whose process is gone are removed, so nothing written by a previous life is ever
//! served.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const LIFE_PREFIX: &str = "gitgate-";

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

/// Where entry files are made.
#[derive(Debug)]
pub struct FileStore {
    life_dir: PathBuf,
    counter: AtomicU64,
}

impl FileStore {
    /// Prepare `dir`: create it, remove leftovers of dead processes, make this life's
    /// subdirectory. Blocking; call it from `spawn_blocking`.
    pub fn open_blocking(dir: &Path) -> Result<Self, StoreError> {
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
        std::fs::create_dir(&life_dir).map_err(io_err("creating", &life_dir))?;
        Ok(Self {
            life_dir,
            counter: AtomicU64::new(0),
        })
    }

    /// This life's directory.
    pub fn life_dir(&self) -> &Path {
        &self.life_dir
    }

    /// Create a new, empty entry file (read + write). Blocking.
    pub fn create_blocking(&self) -> Result<(std::fs::File, PathBuf), StoreError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self.life_dir.join(format!("{n:08}.entry"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| StoreError::Io {
                op: "creating",
                path: path.clone(),
                source,
            })?;
        Ok((file, path))
    }

    /// Free bytes on the filesystem holding the store. Blocking.
    pub fn free_bytes_blocking(&self) -> Result<u64, StoreError> {
        let stat = nix::sys::statvfs::statvfs(&self.life_dir).map_err(|errno| StoreError::Io {
            op: "statvfs",
            path: self.life_dir.clone(),
            source: io::Error::from(errno),
        })?;
        Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
    }
}
