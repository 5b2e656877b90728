//! Walking the batches of a segment file front to back, with a bounded buffer.
//!
//! Recovery, index rebuilds, producer-state replay and offset lookups all need
//! "the next batch header after this position". Reading 61 bytes per batch
//! would cost a syscall per batch, and reading whole segments would cost
//! memory, so the scanner reads fixed-size chunks and parses headers out of
//! them. With `verify_crc` it also checks each batch's CRC, streaming batches
//! bigger than the chunk through CRC-32C piece by piece, so memory stays at
//! one chunk whatever the batch sizes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::log::batch::{BatchHeader, BatchSummary, CRC_COVERED_FROM, HEADER_BYTES};

/// Chunk size for scans that only need headers (lookups, replay): small,
/// because bodies between headers are skipped, not needed.
pub(crate) const HEADER_SCAN_CHUNK_BYTES: usize = 16 * 1024;
/// Chunk size for scans that check CRCs (recovery): large, sequential reads.
pub(crate) const RECOVERY_SCAN_CHUNK_BYTES: usize = 1024 * 1024;

/// One batch found by the scanner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScannedBatch {
    /// Byte position of the batch in the file.
    pub position: u64,
    /// Its header fields.
    pub summary: BatchSummary,
}

/// Why a scan stopped early.
#[derive(Debug)]
pub(crate) enum ScanError {
    /// The file could not be read.
    Io(io::Error),
    /// The bytes at `position` are not a valid batch (torn or damaged).
    Corrupt { position: u64, reason: String },
}

impl From<io::Error> for ScanError {
    fn from(error: io::Error) -> Self {
        ScanError::Io(error)
    }
}

/// Sequential reader of batch headers in `[position, end)` of a file.
pub(crate) struct BatchScanner<'f> {
    file: &'f File,
    position: u64,
    end: u64,
    chunk_bytes: usize,
    verify_crc: bool,
    buffer: Vec<u8>,
    buffer_start: u64,
}

impl<'f> BatchScanner<'f> {
    /// Scans `[start, end)`; `end` is the segment size the log trusts.
    pub(crate) fn new(
        file: &'f File,
        start: u64,
        end: u64,
        chunk_bytes: usize,
        verify_crc: bool,
    ) -> Self {
        Self {
            file,
            position: start,
            end,
            chunk_bytes: chunk_bytes.max(HEADER_BYTES),
            verify_crc,
            buffer: Vec::new(),
            buffer_start: start,
        }
    }

    /// Makes the buffer hold `[at, at + len)` if the file has it; returns the
    /// slice, shorter than `len` only at the scan end.
    fn window(&mut self, at: u64, len: usize) -> io::Result<&[u8]> {
        let buffer_end = self.buffer_start + self.buffer.len() as u64;
        let covered = at >= self.buffer_start && at + len as u64 <= buffer_end;
        if !covered {
            let read_len =
                (self.end.saturating_sub(at)).min(self.chunk_bytes.max(len) as u64) as usize;
            self.buffer.resize(read_len, 0);
            self.file.read_exact_at(&mut self.buffer, at)?;
            self.buffer_start = at;
        }
        let from = (at - self.buffer_start) as usize;
        let to = (from + len).min(self.buffer.len());
        Ok(&self.buffer[from..to])
    }

    /// The next batch, `Ok(None)` at the end, or why the bytes here are bad.
    pub(crate) fn next_batch(&mut self) -> Result<Option<ScannedBatch>, ScanError> {
        if self.position >= self.end {
            return Ok(None);
        }
        let position = self.position;
        let remaining = self.end - position;
        let corrupt = |reason: String| ScanError::Corrupt { position, reason };
        let head_len = (HEADER_BYTES as u64).min(remaining) as usize;
        let head = self.window(position, head_len)?;
        let (summary, stored) = BatchHeader::parse(head)
            .map(|header| (header.summary(), header.crc()))
            .map_err(|e| corrupt(e.to_string()))?;
        let size = summary.size_bytes as u64;
        if size > remaining {
            return Err(corrupt(format!(
                "batch of {size} bytes runs past the end ({remaining} bytes left)"
            )));
        }
        if summary.last_offset_delta < 0 {
            return Err(corrupt(format!(
                "negative lastOffsetDelta {}",
                summary.last_offset_delta
            )));
        }
        if self.verify_crc {
            let computed = self.crc_of(position, size)?;
            if stored != computed {
                return Err(corrupt(format!(
                    "CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )));
            }
        }
        self.position = position + size;
        Ok(Some(ScannedBatch { position, summary }))
    }

    /// CRC-32C of `[position + 21, position + size)`, chunk by chunk.
    fn crc_of(&mut self, position: u64, size: u64) -> io::Result<u32> {
        let mut crc = 0u32;
        let mut at = position + CRC_COVERED_FROM as u64;
        let end = position + size;
        while at < end {
            let len = (end - at).min(self.chunk_bytes as u64) as usize;
            let piece = self.window(at, len)?;
            crc = crc32c::crc32c_append(crc, piece);
            at += piece.len() as u64;
            if piece.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "segment shrank during scan",
                ));
            }
        }
        Ok(crc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::test_batches::TestBatch;
    use std::io::Write;

    fn file_with(batches: &[Vec<u8>]) -> (tempfile::NamedTempFile, u64) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let mut len = 0;
        for b in batches {
            file.write_all(b).unwrap();
            len += b.len() as u64;
        }
        (file, len)
    }

    #[test]
    fn scans_batches_larger_than_the_chunk_with_crc() {
        let big = TestBatch::new(3).value_bytes(50_000).encode();
        let small = TestBatch::new(1).encode();
        let (file, len) = file_with(&[small.clone(), big.clone(), small.clone()]);
        let mut scanner = BatchScanner::new(file.as_file(), 0, len, 4096, true);
        let mut positions = Vec::new();
        while let Some(batch) = scanner.next_batch().unwrap() {
            positions.push(batch.position);
        }
        assert_eq!(
            positions,
            vec![0, small.len() as u64, (small.len() + big.len()) as u64]
        );
    }

    #[test]
    fn torn_tail_is_reported_at_its_position() {
        let one = TestBatch::new(2).encode();
        let (file, len) = file_with(&[one.clone(), one.clone()]);
        let cut = len - 5;
        let mut scanner = BatchScanner::new(file.as_file(), 0, cut, 4096, true);
        assert!(scanner.next_batch().unwrap().is_some());
        match scanner.next_batch() {
            Err(ScanError::Corrupt { position, .. }) => assert_eq!(position, one.len() as u64),
            other => panic!("expected corrupt, got {other:?}"),
        }
    }

    #[test]
    fn flipped_body_byte_fails_crc_only_when_verifying() {
        let mut one = TestBatch::new(2).value_bytes(100).encode();
        let last = one.len() - 3;
        one[last] ^= 0xff;
        let (file, len) = file_with(&[one]);
        assert!(BatchScanner::new(file.as_file(), 0, len, 4096, false)
            .next_batch()
            .unwrap()
            .is_some());
        assert!(matches!(
            BatchScanner::new(file.as_file(), 0, len, 4096, true).next_batch(),
            Err(ScanError::Corrupt { position: 0, .. })
        ));
    }
}
