//! Produce-time record validation, with every codec and topic setting.
//!
//! The first byte picks the topic's settings (cleanup policy, the broker's
//! `compression.type`, the timestamp type); the rest is the `records` field of
//! one partition of a Produce request, exactly as a client would send it. The
//! batch goes through the same validation and append the Produce handler
//! uses (`validate_produce` then `append_validated`), on a log in a
//! temporary directory (on tmpfs when available, so the fuzzer is not bound by
//! the disk).
//!
//! What must hold: no panic; a refused append leaves the log unchanged; an
//! accepted one moves the log end offset by the records it reported and reads
//! back as well-formed batches whose CRCs check.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;

use fjord::log::batch::{Batches, RecordBatch};
use fjord::log::{validate_produce, BrokerCompression, LogConfig, PartitionLog, TimestampType};

/// Appends before the log is thrown away and opened afresh, so it never grows large.
const APPENDS_PER_LOG: u32 = 1_000;
/// A clock inside Kafka's timestamp window for the seed batches.
const NOW_MS: i64 = 1_700_000_000_000;

struct Scratch {
    _dir: tempfile::TempDir,
    log: PartitionLog,
    appends: u32,
    selector: u8,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

fn config_for(selector: u8) -> LogConfig {
    let compression = match (selector >> 1) % 6 {
        0 => BrokerCompression::Producer,
        1 => BrokerCompression::Uncompressed,
        2 => BrokerCompression::Gzip { level: -1 },
        3 => BrokerCompression::Snappy,
        4 => BrokerCompression::Lz4 { level: 9 },
        _ => BrokerCompression::Zstd { level: 3 },
    };
    LogConfig {
        compact: selector & 1 == 1,
        compression,
        message_timestamp_type: if selector & 0x40 != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        },
        // Small segments so rolling is exercised too.
        segment_bytes: 1 << 20,
        ..LogConfig::default()
    }
}

fn scratch_dir() -> Option<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("fjord-fuzz-")
            .tempdir_in(shm)
        {
            return Some(dir);
        }
    }
    tempfile::Builder::new()
        .prefix("fjord-fuzz-")
        .tempdir()
        .ok()
}

fn fresh(selector: u8) -> Option<Scratch> {
    let dir = scratch_dir()?;
    let log = PartitionLog::open(&dir.path().join("t-0"), config_for(selector)).ok()?;
    Some(Scratch {
        _dir: dir,
        log,
        appends: 0,
        selector,
    })
}

fn check_readable(log: &PartitionLog, from: i64) {
    let end = log.log_end_offset();
    let read = log
        .read(from, usize::MAX, end, true)
        .expect("an accepted append reads back");
    let mut next = from;
    for item in Batches::new(&read.records) {
        let (_, batch) = item.expect("stored batches parse");
        let batch: RecordBatch<'_> = batch;
        batch
            .validate_crc()
            .expect("stored batches keep a valid CRC");
        let header = batch.header();
        assert!(header.base_offset() >= next, "offsets only grow");
        next = header.last_offset() + 1;
    }
    assert_eq!(
        next.max(from),
        end,
        "what was read ends at the log end offset"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, records)) = data.split_first() else {
        return;
    };
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        let stale = slot
            .as_ref()
            .is_none_or(|s| s.appends >= APPENDS_PER_LOG || s.selector != selector);
        if stale {
            *slot = fresh(selector);
        }
        let Some(scratch) = slot.as_mut() else {
            return;
        };
        scratch.appends += 1;
        let before = scratch.log.log_end_offset();
        // The Produce path: every check without the partition lock, then the append.
        let config = scratch.log.config().clone();
        let appended = validate_produce(records, &config, NOW_MS)
            .and_then(|validated| scratch.log.append_validated(validated, 0, NOW_MS));
        match appended {
            Ok(info) => {
                if info.duplicate {
                    assert_eq!(scratch.log.log_end_offset(), before);
                } else {
                    assert_eq!(info.base_offset, before);
                    assert_eq!(scratch.log.log_end_offset(), info.last_offset + 1);
                    check_readable(&scratch.log, before);
                }
            }
            Err(_) => {
                assert_eq!(
                    scratch.log.log_end_offset(),
                    before,
                    "a refused append stores nothing"
                );
                if scratch.log.is_offline() {
                    // A refused produce must never take the log offline.
                    panic!("a refused append took the log offline");
                }
            }
        }
    });
});
