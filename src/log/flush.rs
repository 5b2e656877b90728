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

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::log::error::{IoContext, LogError};

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
}

impl PendingFlush {
    pub(crate) fn add(&mut self, file: Arc<File>, path: &Path) {
        self.files.push((file, path.to_path_buf()));
    }

    /// Nothing changed since the last flush.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// fsyncs every captured file (data and the metadata needed to read it
    /// back: `fdatasync`). Blocking.
    pub fn sync(self) -> Result<(), LogError> {
        for (file, path) in &self.files {
            file.sync_data().at(path)?;
        }
        Ok(())
    }
}
