//! A flush taken apart: what must be fsynced is captured under the partition
//! lock, the fsync itself runs without it.
//!
//! An fsync can take milliseconds (a disk cache flush on a virtual disk, a
//! journal commit); holding the partition lock through it would stall every
//! append and fetch of the partition once per `log.flush.interval.ms`, which is
//! what a producer's p99 latency sees. The files are shared (`Arc<File>`), so
//! the sync works on the same open file the log keeps writing; everything
//! written before the capture is covered, and anything written after it is
//! caught by the next flush because capturing marks the files clean.
//!
//! Descriptors: capturing pins each file's descriptor (an `Arc<File>` the
//! descriptor cache will not close under us), reopening it if the cache had
//! closed it, so the sync runs on a live descriptor however long the lock
//! was released. If the cache closed a dirty file earlier, it fsynced it
//! first; a failure of that fsync surfaces here, as a failure of this flush.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::log::error::{IoContext, LogError};
use crate::log::file_cache::CachedFile;

/// Which files a flush covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushScope {
    /// Segment data only: what an acknowledgement needs. The active
    /// segment's indexes are rebuilt from its data on every open, and older
    /// segments were synced whole when they were sealed.
    Data,
    /// Data and indexes (the periodic flush, so that a reopen finds them current).
    All,
}

/// Files to fsync, each written to since the previous capture.
#[derive(Debug, Default)]
#[must_use = "a captured flush marks files clean: sync it, or the data may not be durable"]
pub struct PendingFlush {
    files: Vec<(Arc<File>, PathBuf)>,
    /// A file whose fsync already failed (when the descriptor cache closed it).
    failed: Option<(PathBuf, String)>,
    /// A dirty file that could not be captured for want of a descriptor; it
    /// stays dirty, so the next capture tries again.
    unavailable: Option<LogError>,
}

impl PendingFlush {
    /// Adds `file` if it was written since the last capture.
    pub(crate) fn capture(&mut self, file: &CachedFile) {
        if let Some(reason) = file.take_sync_failure() {
            self.failed = Some((file.path().to_path_buf(), reason));
        }
        if !file.take_dirty() {
            return;
        }
        match file.get() {
            Ok(handle) => self.files.push((handle, file.path().to_path_buf())),
            Err(source) => {
                file.mark_dirty();
                self.unavailable = Some(LogError::Io {
                    path: file.path().to_path_buf(),
                    source,
                });
            }
        }
    }

    /// Nothing changed since the last flush.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.failed.is_none() && self.unavailable.is_none()
    }

    /// fsyncs every captured file (data and the metadata needed to read it
    /// back: `fdatasync`). Blocking. Fails if any fsync failed, also one the
    /// descriptor cache ran earlier, or if a file could not be captured for
    /// want of a descriptor ([`is_descriptor_exhaustion`]: the caller may
    /// retry; nothing is lost, the file is still dirty).
    ///
    /// [`is_descriptor_exhaustion`]: crate::log::file_cache::is_descriptor_exhaustion
    pub fn sync(self) -> Result<(), LogError> {
        if let Some((path, reason)) = self.failed {
            return Err(io::Error::other(format!(
                "an earlier fsync (before closing the idle file) failed: {reason}"
            )))
            .at(&path);
        }
        for (file, path) in &self.files {
            file.sync_data().at(path)?;
        }
        match self.unavailable {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}
