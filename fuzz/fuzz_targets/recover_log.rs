//! Log recovery from arbitrary segment bytes, as after a crash or a damaged disk.
//!
//! The input becomes the files of a partition directory: the first byte says
//! how the rest is split into a first segment, an optional second segment and
//! optional index files (so that both the active-segment recovery and the
//! load of a sealed segment with a damaged index are reached). Then the log is
//! opened, read end to end, appended to, closed and opened again.
//!
//! What must hold: opening never panics (it may refuse with an error); an
//! opened log reads back as well-formed, CRC-valid batches with growing offsets
//! between its log start and end offsets; an append after recovery lands at
//! the recovered log end offset; a second open finds the same log end offset.
#![no_main]

use libfuzzer_sys::fuzz_target;

use fjord::log::batch::{Batches, MAGIC_V2};
use fjord::log::{LogConfig, PartitionLog};

const NOW_MS: i64 = 1_700_000_000_000;
/// Second segment's base offset, when the input asks for two segments.
const SECOND_BASE: i64 = 1_000;

fn stem(base: i64) -> String {
    format!("{base:020}")
}

/// One uncompressed batch of one record, built by hand (no codec involved).
fn one_record_batch() -> Vec<u8> {
    let record: &[u8] = &[
        0x12, // length 9 (zigzag)
        0,    // attributes
        0,    // timestamp delta
        0,    // offset delta
        0x02, // key length 1
        b'k', 0x02, // value length 1
        b'v', 0, // headers
    ];
    let mut out = Vec::new();
    out.extend_from_slice(&0i64.to_be_bytes());
    out.extend_from_slice(&((49 + record.len()) as i32).to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out.push(MAGIC_V2 as u8);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&NOW_MS.to_be_bytes());
    out.extend_from_slice(&NOW_MS.to_be_bytes());
    out.extend_from_slice(&(-1i64).to_be_bytes());
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(record);
    let crc = crc32c_of(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

fn crc32c_of(bytes: &[u8]) -> u32 {
    fjord::log::batch::compute_crc(&[&[0u8; 21][..], bytes].concat())
}

fn check_reads_back(log: &PartitionLog) {
    let start = log.log_start_offset();
    let end = log.log_end_offset();
    assert!(start <= end);
    let Ok(read) = log.read(start, 8 << 20, end, true) else {
        return; // damage found on read is reported as an error, not a panic
    };
    let mut next = start;
    for item in Batches::new(&read.records) {
        let Ok((_, batch)) = item else { return };
        assert!(
            batch.validate_crc().is_ok(),
            "recovery kept a batch with a bad CRC"
        );
        let header = batch.header();
        assert!(header.last_offset() >= next, "offsets only grow");
        assert!(
            header.last_offset() < end,
            "a batch past the log end offset"
        );
        next = header.last_offset() + 1;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&layout, rest)) = data.split_first() else {
        return;
    };
    let Ok(dir) = tempfile::Builder::new().prefix("fjord-fuzz-").tempdir_in(
        if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        },
    ) else {
        return;
    };
    let partition = dir.path().join("t-0");
    if std::fs::create_dir_all(&partition).is_err() {
        return;
    }
    // layout bits: 0 = two segments, 1 = (damaged) index files for the first,
    // 2 = a log start offset checkpoint, 3..=7 = where the split falls (in 1/32ths).
    let cut = (rest.len() * usize::from(layout >> 3)) / 32;
    let (first, second) = if layout & 1 != 0 {
        rest.split_at(cut)
    } else {
        (rest, &[][..])
    };
    let write = |name: String, bytes: &[u8]| std::fs::write(partition.join(name), bytes);
    if write(format!("{}.log", stem(0)), first).is_err() {
        return;
    }
    if layout & 1 != 0 {
        let _ = write(format!("{}.log", stem(SECOND_BASE)), second);
    }
    if layout & 2 != 0 {
        let index_bytes = &first[..first.len().min(64)];
        let _ = write(format!("{}.index", stem(0)), index_bytes);
        let _ = write(format!("{}.timeindex", stem(0)), index_bytes);
    }
    if layout & 4 != 0 {
        let _ = write(
            "log-start-offset.checkpoint".to_string(),
            format!("0\n{}\n", first.len() % 7).as_bytes(),
        );
    }
    let config = LogConfig {
        segment_bytes: 1 << 20,
        ..LogConfig::default()
    };
    let Ok(mut log) = PartitionLog::open(&partition, config.clone()) else {
        return;
    };
    check_reads_back(&log);
    let end = log.log_end_offset();
    if let Ok(info) = log.append(&one_record_batch(), 0, NOW_MS) {
        assert_eq!(
            info.base_offset, end,
            "an append lands at the recovered end"
        );
        check_reads_back(&log);
    }
    let end = log.log_end_offset();
    if log.close().is_err() {
        return;
    }
    if let Ok(again) = PartitionLog::open(&partition, config) {
        assert_eq!(
            again.log_end_offset(),
            end,
            "a clean reopen keeps the log end offset"
        );
        check_reads_back(&again);
    }
});
