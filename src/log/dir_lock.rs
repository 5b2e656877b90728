//! One broker per log directory: an exclusive `flock` on `<log.dirs>/.lock`,
//! held for the life of the process, as Kafka's LogManager holds its `.lock`.
//!
//! Two brokers appending to the same segment files would interleave their
//! writes and each truncate the other's at recovery: acknowledged records
//! would vanish. The lock is advisory but every Fjord process takes it
//! before it reads anything, and the kernel drops it when the process dies
//! (kill -9 included), so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside the log directory (Kafka's).
pub const LOCK_FILE: &str = ".lock";

/// A held lock on a log directory; released when dropped (or at exit).
#[derive(Debug)]
pub struct LogDirLock {
    _file: File,
    path: PathBuf,
}

impl LogDirLock {
    /// Takes the directory's lock without waiting. Fails with Kafka's
    /// message when another process (or another broker in this process)
    /// holds it.
    pub fn acquire(dir: &Path) -> anyhow::Result<LogDirLock> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        // SAFETY: flock takes a descriptor we own and has no memory effects.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                anyhow::bail!(
                    "Failed to acquire lock on file {LOCK_FILE} in {}. A Kafka instance in another process or thread is using this directory.",
                    dir.display()
                );
            }
            anyhow::bail!("cannot lock {}: {error}", path.display());
        }
        Ok(LogDirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = LogDirLock::acquire(dir.path()).expect("first lock");
        let refused = LogDirLock::acquire(dir.path()).expect_err("second lock");
        assert!(
            refused
                .to_string()
                .contains("Failed to acquire lock on file .lock in"),
            "{refused}"
        );
        drop(first);
        LogDirLock::acquire(dir.path()).expect("lock after release");
    }
}
