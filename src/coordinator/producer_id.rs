//! Producer id allocation for idempotent producers (InitProducerId).
//!
//! Ids are handed out from blocks: before the first id of a block is given
//! out, the end of the block is made durable. After a crash the broker resumes
//! from the persisted block end, so an id is never handed out twice even if
//! some ids of the last block are skipped. This is Kafka's scheme (the
//! controller allocates blocks of 1000), kept in a file until the metadata
//! Raft group owns it.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::cluster::write_atomically;

/// Ids per durable block: one fsync per this many producers.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// Hands out unique producer ids that survive restarts.
pub struct ProducerIdManager {
    path: PathBuf,
    state: Mutex<Block>,
}

struct Block {
    next: i64,
    /// Exclusive end of the block already persisted.
    end: i64,
}

impl ProducerIdManager {
    /// Loads the persisted block end from `dir/producer-id-block`.
    pub fn open(dir: &Path) -> anyhow::Result<ProducerIdManager> {
        let path = dir.join("producer-id-block");
        let end = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<i64>().map_err(|e| {
                anyhow::anyhow!(
                    "{} is corrupt ({e}); refusing to reuse producer ids",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        anyhow::ensure!(end >= 0, "{} holds a negative block end", path.display());
        Ok(ProducerIdManager {
            path,
            state: Mutex::new(Block { next: end, end }),
        })
    }

    /// The next unused producer id. Blocking when a new block must be persisted.
    pub fn next_id(&self) -> std::io::Result<i64> {
        let mut block = self.state.lock();
        if block.next >= block.end {
            let new_end = block.next + PRODUCER_ID_BLOCK_SIZE;
            write_atomically(&self.path, new_end.to_string().as_bytes())?;
            block.end = new_end;
        }
        let id = block.next;
        block.next += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ProducerIdManager::open(dir.path()).expect("open");
        let a = first.next_id().expect("id");
        let b = first.next_id().expect("id");
        assert_eq!(b, a + 1);
        drop(first);
        let second = ProducerIdManager::open(dir.path()).expect("reopen");
        let c = second.next_id().expect("id");
        assert!(c > b, "an id after restart ({c}) must not reuse {b}");
    }

    #[test]
    fn a_corrupt_block_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("producer-id-block"), "garbage").expect("write");
        assert!(ProducerIdManager::open(dir.path()).is_err());
    }
}
