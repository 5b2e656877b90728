//! Small metadata files that must never be seen half-written.
//!
//! The log start offset (and the producer-state snapshots) are written the way
//! Kafka writes its checkpoint files: to `NAME.tmp`, fsync, rename over
//! `NAME`, fsync the directory. A crash leaves either the old or the new file,
//! never a torn one; stray `.tmp` files are removed on open.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use crate::log::error::{IoContext, LogError};

/// File holding the partition's log start offset.
pub(crate) const LOG_START_OFFSET_CHECKPOINT_FILE: &str = "log-start-offset.checkpoint";
/// Suffix of a file being written atomically.
pub(crate) const TMP_SUFFIX: &str = ".tmp";
/// Format version on the first line, as in Kafka's checkpoint files.
const CHECKPOINT_VERSION: u32 = 0;
/// A checkpoint is two short lines; anything bigger is not ours.
const CHECKPOINT_BYTES_MAX: u64 = 64;

/// Makes the directory's entries (new, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Replaces `dir/name` with `contents` atomically and durably.
pub(crate) fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> Result<(), LogError> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let target = dir.join(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .at(&tmp)?;
    file.write_all(contents).at(&tmp)?;
    file.sync_all().at(&tmp)?;
    drop(file);
    fs::rename(&tmp, &target).at(&target)?;
    sync_dir(dir)
}

/// Reads a whole small file, refusing anything over `bytes_max`.
pub(crate) fn read_bounded(path: &Path, bytes_max: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len > bytes_max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes is over the {bytes_max}-byte limit"),
        ));
    }
    let mut contents = Vec::with_capacity(len as usize);
    file.take(bytes_max).read_to_end(&mut contents)?;
    Ok(contents)
}

/// Persists the log start offset.
pub(crate) fn write_log_start_offset(dir: &Path, log_start_offset: i64) -> Result<(), LogError> {
    let contents = format!("{CHECKPOINT_VERSION}\n{log_start_offset}\n");
    write_atomically(dir, LOG_START_OFFSET_CHECKPOINT_FILE, contents.as_bytes())
}

/// The persisted log start offset, `None` if there is none. A file that does
/// not parse is reported (not ignored): silently restarting at the first
/// segment could resurrect records a DeleteRecords removed.
pub(crate) fn read_log_start_offset(dir: &Path) -> Result<Option<i64>, LogError> {
    let path = dir.join(LOG_START_OFFSET_CHECKPOINT_FILE);
    let contents = match read_bounded(&path, CHECKPOINT_BYTES_MAX) {
        Ok(contents) => contents,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(LogError::Io {
                path,
                source: error,
            })
        }
    };
    let corrupt = |reason: &str| LogError::Corrupt {
        path: path.clone(),
        position: 0,
        reason: reason.to_string(),
    };
    let text = std::str::from_utf8(&contents).map_err(|_| corrupt("not UTF-8"))?;
    let mut lines = text.lines();
    match lines.next().map(str::parse::<u32>) {
        Some(Ok(CHECKPOINT_VERSION)) => {}
        _ => return Err(corrupt("unknown checkpoint version")),
    }
    let offset = lines
        .next()
        .and_then(|line| line.trim().parse::<i64>().ok())
        .filter(|offset| *offset >= 0)
        .ok_or_else(|| corrupt("missing or invalid offset"))?;
    Ok(Some(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_start_offset_round_trips_and_leaves_no_tmp_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_log_start_offset(dir.path()).unwrap(), None);
        write_log_start_offset(dir.path(), 42).unwrap();
        write_log_start_offset(dir.path(), 4242).unwrap();
        assert_eq!(read_log_start_offset(dir.path()).unwrap(), Some(4242));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![LOG_START_OFFSET_CHECKPOINT_FILE]);
    }

    #[test]
    fn garbage_checkpoint_is_an_error_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(LOG_START_OFFSET_CHECKPOINT_FILE),
            b"0\nxyz\n",
        )
        .unwrap();
        assert!(read_log_start_offset(dir.path()).is_err());
        fs::write(
            dir.path().join(LOG_START_OFFSET_CHECKPOINT_FILE),
            vec![b'1'; 1000],
        )
        .unwrap();
        assert!(read_log_start_offset(dir.path()).is_err());
    }
}
