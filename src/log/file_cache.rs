//! Open segment files, bounded: one process-wide cache of file descriptors
//! for every `.log`, `.index` and `.timeindex` file, like a small page table
//! for descriptors.
//!
//! Why: a partition has three files per segment, and a broker with ten
//! thousand partitions of a few segments each has far more files than the
//! process may keep open. Kafka mmaps every index and keeps every segment
//! open, and needs `ulimit -n` in the hundreds of thousands; here each file
//! is a [`CachedFile`], a path plus a descriptor that the cache may close
//! while the file is idle and that [`CachedFile::get`] reopens on demand.
//!
//! Design decisions:
//! - **Clock (second chance) eviction.** A hit sets the file's `referenced`
//!   bit and clones an `Arc<File>`: one uncontended per-file mutex, no global
//!   lock, so the hot path (appends to an active segment, reads of a tail)
//!   never reopens and never contends with other partitions. Only a miss
//!   takes the cache lock, and only while over capacity does it sweep.
//! - **In use is pinned.** A descriptor whose `Arc<File>` is held outside the
//!   cache (a read in progress, an append that pinned its segment's files, a
//!   captured [`PendingFlush`](crate::log::PendingFlush)) is never closed
//!   under it; the cache closes its own handle only when it is the last one.
//!   The cache may therefore exceed its capacity by the files in use at that
//!   moment, which is bounded by the blocking threads doing I/O.
//! - **Dirty files are synced before they are closed.** A file written since
//!   its last flush capture is passed over in the first sweep round (clean
//!   files go first); if it must go, it is fsynced before its descriptor is
//!   closed. Closing alone would not lose the data (it stays in the page
//!   cache and a later fsync through a new descriptor flushes it), but Linux
//!   reports a failed writeback only through descriptors, and an inode with
//!   none open may be dropped together with its error. An fsync that fails
//!   here is remembered and reported by the next flush of that file, which
//!   then takes the log offline like any failed flush. The dirty flag itself
//!   survives eviction, so the next flush still covers the file (reopening
//!   it); pinning dirty files instead would not be bounded, as every
//!   partition written within a flush interval would hold three.
//! - **Running out is not an error of the log.** When an open fails with
//!   EMFILE/ENFILE the cache closes some idle files and tries once more; if
//!   that fails too the caller gets the error, which
//!   [`is_descriptor_exhaustion`] recognises so that the log stays online
//!   (nothing on disk changed) and the request gets a retriable
//!   KAFKA_STORAGE_ERROR.
//!
//! Capacity: [`capacity_for_limit`] derives it from RLIMIT_NOFILE, leaving
//! room for client sockets and a reserve, unless `log.open.files.max` names
//! it; the broker sets it once at startup with [`set_capacity`].

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

use crate::log::error::LogError;

/// Capacity before the broker configures the cache (tools, unit tests).
pub const OPEN_FILES_DEFAULT: usize = 1024;
/// Smallest capacity the cache accepts: enough for a few partitions' active
/// segments to stay open.
pub const OPEN_FILES_MIN: usize = 16;
/// Idle files closed when an open hits the process's descriptor limit,
/// before the one retry.
const EXHAUSTION_SHED_FILES: usize = 64;
/// Descriptors kept free for everything but segment files and sockets
/// (stdio, the runtime's epoll and wake-up fds, listeners, the lock file,
/// checkpoints, producer snapshots, directory fsyncs), at most.
pub const DESCRIPTORS_RESERVED_MAX: u64 = 256;
/// The ring is compacted (dead and closed entries dropped) once it is this
/// many times longer than the cache's capacity.
const RING_SLACK_FACTOR: usize = 2;
/// Files a sweep passes over sparing referenced and dirty ones before it
/// takes any idle file (second-chance bits of the rest stay as they are).
const SPARING_STEPS_MAX: usize = 256;

/// How [`CachedFile::open`] opens the file the first time. Reopens after
/// eviction never create or truncate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// Create it if missing, keep its contents.
    Create,
    /// Create it, or cut an existing one to zero length.
    CreateTruncate,
}

/// The process-wide descriptor cache (see the module doc).
#[derive(Debug)]
pub struct FileCache {
    capacity: AtomicUsize,
    /// Descriptors the cache holds now (some may also be in use elsewhere).
    open: AtomicUsize,
    ring: Mutex<Ring>,
    opens_total: AtomicU64,
    evictions_total: AtomicU64,
    eviction_syncs_total: AtomicU64,
}

/// The clock: every file with a descriptor, in no particular order, and the hand.
#[derive(Debug, Default)]
struct Ring {
    slots: Vec<Weak<Slot>>,
    hand: usize,
}

/// One file the cache knows about.
#[derive(Debug)]
struct Slot {
    path: PathBuf,
    cache: Arc<FileCache>,
    /// The descriptor, if open. Held only briefly; the sweep uses `try_lock`
    /// so that it never waits for a file being opened or used.
    file: Mutex<Option<Arc<File>>>,
    /// Used since the hand last passed (second chance).
    referenced: AtomicBool,
    /// Listed in the ring (only the ring lock changes it).
    in_ring: AtomicBool,
    /// Written since a flush last captured it.
    dirty: AtomicBool,
    /// An eviction's fsync failed; the next flush capture reports it.
    sync_failure: Mutex<Option<String>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.file.get_mut().take().is_some() {
            self.cache.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Counters for a future `/metrics` endpoint and for logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileCacheStats {
    pub capacity: usize,
    pub open: usize,
    pub opens_total: u64,
    pub evictions_total: u64,
    /// Evicted files that were dirty and fsynced before closing.
    pub eviction_syncs_total: u64,
}

/// The cache every segment file of this process goes through.
pub fn global() -> &'static Arc<FileCache> {
    static GLOBAL: OnceLock<Arc<FileCache>> = OnceLock::new();
    GLOBAL.get_or_init(|| FileCache::new(OPEN_FILES_DEFAULT))
}

/// Sets the global cache's capacity (at broker startup).
pub fn set_capacity(capacity: usize) {
    global().set_capacity(capacity);
}

/// The rule for the capacity, given the process's descriptor limit (after
/// raising the soft limit to the hard one) and `max.connections`: sockets
/// get `min(max.connections, limit / 2)`, a reserve of `min(256, limit / 8)`
/// stays free for everything else, and the segment files get the rest (at
/// least [`OPEN_FILES_MIN`]). A configured `log.open.files.max` above 0
/// replaces the rule.
pub fn capacity_for_limit(nofile_limit: u64, max_connections: usize, configured: usize) -> usize {
    if configured > 0 {
        return configured.max(OPEN_FILES_MIN);
    }
    let sockets = (max_connections as u64).min(nofile_limit / 2);
    let reserve = DESCRIPTORS_RESERVED_MAX.min(nofile_limit / 8);
    let rest = nofile_limit.saturating_sub(sockets + reserve);
    (rest.min(usize::MAX as u64) as usize).max(OPEN_FILES_MIN)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit. Returns (soft before,
/// soft after, hard); the limit in force is the second value.
pub fn raise_descriptor_limit() -> io::Result<(u64, u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (before, hard) = (limit.rlim_cur, limit.rlim_max);
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok((before, hard, hard));
    }
    Ok((before, before, hard))
}

/// Whether an I/O error says the process (EMFILE) or the system (ENFILE)
/// has no descriptor left: nothing was done, retrying later may work.
pub fn is_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE)
    )
}

/// [`is_exhaustion`] for a log error.
pub fn is_descriptor_exhaustion(error: &LogError) -> bool {
    matches!(error, LogError::Io { source, .. } if is_exhaustion(source))
}

impl FileCache {
    /// A cache closing files beyond `capacity` (unit tests make their own).
    pub fn new(capacity: usize) -> Arc<FileCache> {
        Arc::new(FileCache {
            capacity: AtomicUsize::new(capacity.max(OPEN_FILES_MIN)),
            open: AtomicUsize::new(0),
            ring: Mutex::new(Ring::default()),
            opens_total: AtomicU64::new(0),
            evictions_total: AtomicU64::new(0),
            eviction_syncs_total: AtomicU64::new(0),
        })
    }

    /// Changes the capacity; closes idle files if it shrank.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity
            .store(capacity.max(OPEN_FILES_MIN), Ordering::Relaxed);
        self.shed(0);
    }

    pub fn stats(&self) -> FileCacheStats {
        FileCacheStats {
            capacity: self.capacity.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            opens_total: self.opens_total.load(Ordering::Relaxed),
            evictions_total: self.evictions_total.load(Ordering::Relaxed),
            eviction_syncs_total: self.eviction_syncs_total.load(Ordering::Relaxed),
        }
    }

    /// Opens with `options`, and if the process is out of descriptors,
    /// closes some idle files and tries once more.
    fn open_file(&self, path: &Path, options: &OpenOptions) -> io::Result<File> {
        let file = match options.open(path) {
            Err(error) if is_exhaustion(&error) => {
                self.shed(EXHAUSTION_SHED_FILES);
                options.open(path)?
            }
            other => other?,
        };
        self.opens_total.fetch_add(1, Ordering::Relaxed);
        Ok(file)
    }

    /// Lists a freshly opened slot and closes files beyond the capacity.
    fn admitted(&self, slot: &Arc<Slot>) {
        let victims = {
            let mut ring = self.ring.lock();
            if !slot.in_ring.swap(true, Ordering::Relaxed) {
                ring.slots.push(Arc::downgrade(slot));
            }
            let capacity = self.capacity.load(Ordering::Relaxed);
            if ring.slots.len()
                > RING_SLACK_FACTOR * capacity.max(self.open.load(Ordering::Relaxed))
            {
                ring.compact();
            }
            self.sweep(&mut ring, capacity)
        };
        self.close_victims(victims);
    }

    /// Closes idle files until `extra` below the capacity (0: down to it).
    fn shed(&self, extra: usize) {
        let victims = {
            let mut ring = self.ring.lock();
            let target = self
                .capacity
                .load(Ordering::Relaxed)
                .min(self.open.load(Ordering::Relaxed))
                .saturating_sub(extra);
            self.sweep(&mut ring, target)
        };
        self.close_victims(victims);
    }

    /// Advances the clock hand, taking descriptors from idle files until at
    /// most `target` remain open. Two rounds at most: the first spares
    /// referenced and dirty files (clearing the referenced bits), the second
    /// only files in use. Returns the taken descriptors, to be closed
    /// outside the ring lock.
    fn sweep(&self, ring: &mut Ring, target: usize) -> Vec<Victim> {
        let mut victims = Vec::new();
        // The sparing round is bounded: when most files are dirty (right
        // after a start, every recovered active segment is) a full round per
        // admission would make opening n files cost n² steps.
        let first_round_len = ring.slots.len().min(SPARING_STEPS_MAX);
        let rounds_len = first_round_len + ring.slots.len();
        let mut steps = 0;
        while self.open.load(Ordering::Relaxed) > target
            && !ring.slots.is_empty()
            && steps < rounds_len
        {
            steps += 1;
            if ring.hand >= ring.slots.len() {
                ring.hand = 0;
            }
            let index = ring.hand;
            let Some(slot) = ring.slots[index].upgrade() else {
                ring.slots.swap_remove(index);
                continue;
            };
            let first_round = steps <= first_round_len;
            let Some(mut file) = slot.file.try_lock() else {
                ring.hand += 1;
                continue;
            };
            let Some(handle) = file.as_ref() else {
                // Closed already (deleted segment, explicit close).
                slot.in_ring.store(false, Ordering::Relaxed);
                drop(file);
                ring.slots.swap_remove(index);
                continue;
            };
            let referenced = slot.referenced.swap(false, Ordering::Relaxed);
            let in_use = Arc::strong_count(handle) > 1;
            let dirty = slot.dirty.load(Ordering::Relaxed);
            if in_use || (first_round && (referenced || dirty)) {
                drop(file);
                ring.hand += 1;
                continue;
            }
            if let Some(handle) = file.take() {
                self.open.fetch_sub(1, Ordering::Relaxed);
                slot.in_ring.store(false, Ordering::Relaxed);
                victims.push(Victim {
                    slot: slot.clone(),
                    file: handle,
                    dirty,
                });
            }
            drop(file);
            ring.slots.swap_remove(index);
        }
        victims
    }

    fn close_victims(&self, victims: Vec<Victim>) {
        for victim in victims {
            self.evictions_total.fetch_add(1, Ordering::Relaxed);
            if victim.dirty {
                self.eviction_syncs_total.fetch_add(1, Ordering::Relaxed);
                if let Err(error) = victim.file.sync_data() {
                    tracing::error!(file = %victim.slot.path.display(), %error, "fsync before closing an idle file failed");
                    *victim.slot.sync_failure.lock() = Some(error.to_string());
                }
            }
            // The descriptor closes here (or when its last user lets go).
            drop(victim.file);
        }
    }
}

impl Ring {
    /// Drops dead slots and slots whose descriptor is closed (closed by
    /// [`CachedFile::close_if_idle`], which leaves them listed): after it the
    /// ring holds only open files, so compaction runs O(1) times per file
    /// admitted. A slot whose file lock is busy is kept.
    fn compact(&mut self) {
        self.slots.retain(|weak| {
            let Some(slot) = weak.upgrade() else {
                return false;
            };
            if !slot.in_ring.load(Ordering::Relaxed) {
                return false;
            }
            let open = slot.file.try_lock().is_none_or(|file| file.is_some());
            if !open {
                slot.in_ring.store(false, Ordering::Relaxed);
            }
            open
        });
        self.hand = 0;
    }
}

/// A descriptor taken from the cache by a sweep, not yet closed.
struct Victim {
    slot: Arc<Slot>,
    file: Arc<File>,
    dirty: bool,
}

/// One file whose descriptor the cache manages: opened now, closed when
/// idle, reopened by [`get`](Self::get). Dropping it closes the descriptor.
#[derive(Debug)]
pub(crate) struct CachedFile {
    slot: Arc<Slot>,
}

impl CachedFile {
    /// Opens `path` read-write through the global cache.
    pub(crate) fn open(path: &Path, mode: OpenMode) -> io::Result<CachedFile> {
        Self::open_in(global(), path, mode)
    }

    /// Opens `path` read-write through `cache`.
    pub(crate) fn open_in(
        cache: &Arc<FileCache>,
        path: &Path,
        mode: OpenMode,
    ) -> io::Result<CachedFile> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        match mode {
            OpenMode::Create => {
                options.create(true).truncate(false);
            }
            OpenMode::CreateTruncate => {
                options.create(true).truncate(true);
            }
        }
        let file = Arc::new(cache.open_file(path, &options)?);
        let slot = Arc::new(Slot {
            path: path.to_path_buf(),
            cache: cache.clone(),
            file: Mutex::new(Some(file)),
            referenced: AtomicBool::new(true),
            in_ring: AtomicBool::new(false),
            // Clean until written: sealed segments were fsynced when they
            // rolled, and recovery marks what it rewrites of the active one.
            dirty: AtomicBool::new(false),
            sync_failure: Mutex::new(None),
        });
        cache.open.fetch_add(1, Ordering::Relaxed);
        cache.admitted(&slot);
        Ok(CachedFile { slot })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.slot.path
    }

    /// The open file, reopened if the cache closed it. Holding the returned
    /// `Arc` pins the descriptor: the cache never closes it under a user.
    pub(crate) fn get(&self) -> io::Result<Arc<File>> {
        let slot = &self.slot;
        slot.referenced.store(true, Ordering::Relaxed);
        let mut guard = slot.file.lock();
        if let Some(file) = guard.as_ref() {
            return Ok(file.clone());
        }
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        let file = Arc::new(slot.cache.open_file(&slot.path, &options)?);
        *guard = Some(file.clone());
        slot.cache.open.fetch_add(1, Ordering::Relaxed);
        drop(guard);
        slot.cache.admitted(slot);
        Ok(file)
    }

    /// Records a write (call after it completed): the next flush covers it.
    pub(crate) fn mark_dirty(&self) {
        self.slot.dirty.store(true, Ordering::Release);
    }

    /// Clears the dirty flag for a flush capture; true if it was set.
    pub(crate) fn take_dirty(&self) -> bool {
        self.slot.dirty.swap(false, Ordering::AcqRel)
    }

    /// The error of an fsync the cache ran before closing this file, if it
    /// failed since the last call.
    pub(crate) fn take_sync_failure(&self) -> Option<String> {
        self.slot.sync_failure.lock().take()
    }

    /// Closes the descriptor now if nobody uses it (a segment that was
    /// checked at load and is not read yet). It reopens on the next use.
    pub(crate) fn close_if_idle(&self) {
        if self.slot.dirty.load(Ordering::Acquire) {
            return;
        }
        let mut guard = self.slot.file.lock();
        if guard.as_ref().is_some_and(|f| Arc::strong_count(f) == 1) {
            guard.take();
            self.slot.cache.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether the descriptor is open now.
    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        self.slot.file.lock().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn files(cache: &Arc<FileCache>, dir: &Path, count: usize) -> Vec<CachedFile> {
        (0..count)
            .map(|i| {
                CachedFile::open_in(cache, &dir.join(format!("{i}.log")), OpenMode::Create).unwrap()
            })
            .collect()
    }

    #[test]
    fn open_descriptors_stay_within_capacity_and_files_reopen_on_use() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(OPEN_FILES_MIN);
        let files = files(&cache, dir.path(), 100);
        for f in &files {
            f.take_dirty();
        }
        assert!(
            cache.stats().open <= OPEN_FILES_MIN + 1,
            "{:?}",
            cache.stats()
        );
        for (i, f) in files.iter().enumerate() {
            let handle = f.get().unwrap();
            handle.write_all_at(&[i as u8], 0).unwrap();
            f.mark_dirty();
            drop(handle);
            assert!(cache.stats().open <= OPEN_FILES_MIN + 1);
        }
        // Everything written through any descriptor reads back.
        for (i, f) in files.iter().enumerate() {
            let mut byte = [0u8];
            f.get().unwrap().read_exact_at(&mut byte, 0).unwrap();
            assert_eq!(byte[0], i as u8);
        }
        let stats = cache.stats();
        assert!(
            stats.evictions_total > 0 && stats.eviction_syncs_total > 0,
            "{stats:?}"
        );
        drop(files);
        assert_eq!(cache.stats().open, 0);
    }

    #[test]
    fn a_descriptor_in_use_is_never_closed_under_its_user() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(OPEN_FILES_MIN);
        let first = CachedFile::open_in(&cache, &dir.path().join("a"), OpenMode::Create).unwrap();
        first.take_dirty();
        let pinned = first.get().unwrap();
        let others = files(&cache, dir.path(), 3 * OPEN_FILES_MIN);
        assert!(first.is_open(), "a pinned file was evicted");
        drop(pinned);
        for f in &others {
            f.take_dirty();
            f.get().unwrap();
        }
        assert!(!first.is_open(), "an idle file was kept beyond capacity");
        assert!(first.get().is_ok());
        assert!(first.is_open());
    }

    #[test]
    fn a_dirty_file_keeps_its_flag_across_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(OPEN_FILES_MIN);
        let dirty = CachedFile::open_in(&cache, &dir.path().join("d"), OpenMode::Create).unwrap();
        dirty.get().unwrap().write_all_at(b"x", 0).unwrap();
        dirty.mark_dirty();
        let _others = files(&cache, dir.path(), 4 * OPEN_FILES_MIN);
        assert!(!dirty.is_open());
        assert!(cache.stats().eviction_syncs_total > 0);
        assert!(dirty.take_dirty(), "the next flush must still cover it");
        assert!(dirty.take_sync_failure().is_none());
    }

    #[test]
    fn capacity_rule_leaves_room_for_sockets_and_a_reserve() {
        assert_eq!(capacity_for_limit(20_000, 10_000, 0), 20_000 - 10_000 - 256);
        assert_eq!(capacity_for_limit(1_024, 10_000, 0), 1_024 - 512 - 128);
        assert_eq!(capacity_for_limit(512, 10_000, 0), 512 - 256 - 64);
        assert_eq!(capacity_for_limit(1_048_576, 10_000, 0), 1_048_576 - 10_256);
        assert_eq!(capacity_for_limit(20, 10_000, 0), OPEN_FILES_MIN);
        assert_eq!(capacity_for_limit(20_000, 10_000, 500), 500);
    }

    #[test]
    fn exhaustion_is_recognised_by_errno() {
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_exhaustion(&io::Error::from_raw_os_error(libc::EIO)));
    }

    #[test]
    fn files_closed_while_idle_do_not_pile_up_in_the_ring() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(64);
        // Like loading sealed segments: opened, checked, closed until read.
        let files: Vec<CachedFile> = (0..2_000)
            .map(|i| {
                let f =
                    CachedFile::open_in(&cache, &dir.path().join(format!("{i}")), OpenMode::Create)
                        .unwrap();
                f.close_if_idle();
                f
            })
            .collect();
        let listed = cache.ring.lock().slots.len();
        assert!(
            listed <= RING_SLACK_FACTOR * 64 + 1,
            "{listed} slots listed for {} open files",
            cache.stats().open
        );
        // They still reopen on use, and are listed again.
        files[7].get().unwrap();
        assert!(files[7].is_open());
    }
}
