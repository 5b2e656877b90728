//! Record batches (magic v2) from the client's side: building one batch per
//! partition for Produce, and reading the batches a Fetch returns.
//!
//! Building uses kafka-protocol's `RecordBatchEncoder`. Reading uses its
//! `RecordBatchDecoder`, but only after we have checked what it trusts: we cut
//! the fetched bytes into whole batches ourselves (a Fetch may end in a
//! partial batch), validate each header (offsets that cannot overflow, a
//! record count that fits the batch) and walk the decompressed records once
//! before handing them over. A broken or hostile broker then gets an error
//! from us, never a panic or a multi-gigabyte allocation on a count it made up.

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::compression::{self as cmpr, Decompressor};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
    TimestampType, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID,
};

/// Bytes before the records in a v2 batch (see LIBRARIES.md for the layout).
pub const BATCH_HEADER_BYTES: usize = 61;
/// baseOffset + batchLength: what we need to know a batch's full size.
const BATCH_LENGTH_PREFIX_BYTES: usize = 12;
/// Most records we accept in one fetched batch. A 1 MiB batch (Kafka's
/// default `max.message.bytes`) of empty records holds ~150k; this leaves
/// room for compressed batches without letting a bogus count drive memory.
pub const BATCH_RECORDS_MAX: i32 = 1 << 20;
/// Most bytes a fetched batch may decompress to before we refuse it.
pub const BATCH_DECOMPRESSED_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Smallest possible encoded record: length, attributes, timestamp delta,
/// offset delta, key length, value length, header count, one byte each.
const RECORD_BYTES_MIN: usize = 7;

/// Per-record overhead on top of key and value in a v2 batch, at most:
/// length (5) + attributes (1) + timestamp delta (10) + offset delta (5) +
/// key length (5) + value length (5) + header count (5).
pub const RECORD_OVERHEAD_BYTES_MAX: usize = 36;

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
}

impl ProducerRecord {
    /// Upper bound of this record's encoded size inside a batch.
    pub fn encoded_bytes_max(&self) -> usize {
        RECORD_OVERHEAD_BYTES_MAX
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
    }
}

/// A record read back from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub offset: i64,
    pub timestamp: i64,
    pub timestamp_type: TimestampType,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
}

/// Encodes `records` as exactly one v2 batch without a producer id (not
/// idempotent), as Produce v3+ requires one batch per partition.
pub fn encode_batch(
    records: &[ProducerRecord],
    compression: Compression,
    timestamp_ms: i64,
) -> Result<Bytes> {
    ensure!(!records.is_empty(), "cannot encode an empty record batch");
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let offset = i as i64;
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
                producer_id: NO_PRODUCER_ID,
                producer_epoch: NO_PRODUCER_EPOCH,
                timestamp_type: TimestampType::Creation,
                offset,
                // The encoder starts a new batch whenever offset - sequence
                // changes (LIBRARIES.md). offset - 1 keeps that constant and
                // makes the batch's base sequence -1 (NO_SEQUENCE), as a
                // non-idempotent Java producer writes it.
                sequence: (offset as i32).wrapping_sub(1),
                timestamp: timestamp_ms,
                key: r.key.clone(),
                value: r.value.clone(),
                headers: IndexMap::new(),
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options).context("encoding record batch")?;
    Ok(buf.freeze())
}

/// The records of one Fetch partition response that a consumer at
/// `fetch_offset` should see, and where to fetch next.
#[derive(Debug, Default)]
pub struct FetchedRecords {
    pub records: Vec<ConsumerRecord>,
    /// Offset after the last whole batch read (including control batches and
    /// batches entirely below `fetch_offset`); `None` if there was none.
    pub next_offset: Option<i64>,
    /// Bytes of a trailing partial batch, cut off by the fetch size limit.
    pub partial_batch_bytes: usize,
}

/// Reads the `records` bytes of a Fetch partition response.
pub fn decode_fetched(mut data: Bytes, fetch_offset: i64) -> Result<FetchedRecords> {
    let mut fetched = FetchedRecords::default();
    while !data.is_empty() {
        if data.len() < BATCH_LENGTH_PREFIX_BYTES {
            fetched.partial_batch_bytes = data.len();
            break;
        }
        let batch_length = (&data[8..12]).get_i32();
        ensure!(
            batch_length >= (BATCH_HEADER_BYTES - BATCH_LENGTH_PREFIX_BYTES) as i32,
            "record batch length {batch_length} is shorter than a batch header"
        );
        let total = BATCH_LENGTH_PREFIX_BYTES + batch_length as usize;
        if data.len() < total {
            fetched.partial_batch_bytes = data.len();
            break;
        }
        let batch = data.split_to(total);
        let header = BatchHeader::parse(&batch)?;
        let batch_next_offset = header.next_offset();
        if batch_next_offset > fetch_offset && !header.is_control() {
            let set = decode_batch(batch, &header)?;
            for record in set {
                if record.offset >= fetch_offset {
                    fetched.records.push(record);
                }
            }
        }
        fetched.next_offset = Some(batch_next_offset);
    }
    Ok(fetched)
}

/// The fields of a v2 batch header we check before decoding.
#[derive(Debug, Clone, Copy)]
struct BatchHeader {
    base_offset: i64,
    attributes: i16,
    last_offset_delta: i32,
    base_timestamp: i64,
    records_count: i32,
}

impl BatchHeader {
    fn parse(batch: &[u8]) -> Result<Self> {
        ensure!(
            batch.len() >= BATCH_HEADER_BYTES,
            "truncated record batch header"
        );
        let magic = batch[16] as i8;
        ensure!(
            magic == 2,
            "record batch with magic {magic}: only message format v2 is supported"
        );
        let header = BatchHeader {
            base_offset: (&batch[0..8]).get_i64(),
            attributes: (&batch[21..23]).get_i16(),
            last_offset_delta: (&batch[23..27]).get_i32(),
            base_timestamp: (&batch[27..35]).get_i64(),
            records_count: (&batch[57..61]).get_i32(),
        };
        // Offsets are computed as base + delta (i32) downstream: keep the
        // sum representable.
        ensure!(
            header.base_offset >= 0 && header.base_offset < i64::MAX - i64::from(i32::MAX),
            "record batch base offset {} out of range",
            header.base_offset
        );
        ensure!(
            header.last_offset_delta >= 0,
            "record batch last offset delta {} is negative",
            header.last_offset_delta
        );
        ensure!(
            header.records_count >= 0
                && header.records_count <= BATCH_RECORDS_MAX
                && i64::from(header.records_count) <= i64::from(header.last_offset_delta) + 1,
            "record batch claims {} records for {} offsets",
            header.records_count,
            i64::from(header.last_offset_delta) + 1
        );
        Ok(header)
    }

    fn next_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta) + 1
    }

    fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

fn decode_batch(mut batch: Bytes, header: &BatchHeader) -> Result<Vec<ConsumerRecord>> {
    let header = *header;
    let checked_decompress = move |records: &mut Bytes, compression: Compression| {
        let plain = decompress(records, compression)?;
        ensure!(
            plain.len() <= BATCH_DECOMPRESSED_BYTES_MAX,
            "record batch decompresses to {} bytes, over the limit of {BATCH_DECOMPRESSED_BYTES_MAX}",
            plain.len()
        );
        validate_records(&plain, header.records_count, header.base_timestamp)?;
        Ok(plain)
    };
    let set =
        RecordBatchDecoder::decode_with_custom_compression(&mut batch, Some(checked_decompress))
            .with_context(|| format!("decoding record batch at offset {}", header.base_offset))?;
    Ok(set
        .records
        .into_iter()
        .map(|r| ConsumerRecord {
            offset: r.offset,
            timestamp: r.timestamp,
            timestamp_type: r.timestamp_type,
            key: r.key,
            value: r.value,
        })
        .collect())
}

fn decompress(records: &mut Bytes, compression: Compression) -> Result<Bytes> {
    let take = |b: &mut Bytes| Ok(std::mem::take(b));
    match compression {
        Compression::None => Ok(std::mem::take(records)),
        Compression::Gzip => cmpr::Gzip::decompress(records, take),
        Compression::Snappy => cmpr::Snappy::decompress(records, take),
        Compression::Lz4 => cmpr::Lz4::decompress(records, take),
        Compression::Zstd => cmpr::Zstd::decompress(records, take),
    }
}

/// Walks `count` encoded records without allocating, checking every length
/// against the bytes that remain and that timestamps cannot overflow, so the
/// library's decoder (which trusts them) only ever sees sound input.
fn validate_records(mut data: &[u8], count: i32, base_timestamp: i64) -> Result<()> {
    ensure!(
        (count as usize).saturating_mul(RECORD_BYTES_MIN) <= data.len(),
        "record batch claims {count} records in {} bytes",
        data.len()
    );
    for i in 0..count {
        let len = read_length(&mut data)
            .and_then(|l| l.ok_or_else(|| anyhow!("null record")))
            .with_context(|| format!("record {i}"))?;
        let (mut record, rest) = data.split_at(len);
        data = rest;
        let check = |record: &mut &[u8]| -> Result<()> {
            ensure!(record.has_remaining(), "empty record");
            record.advance(1); // attributes
            let timestamp_delta = read_varlong(record)?;
            base_timestamp
                .checked_add(timestamp_delta)
                .ok_or_else(|| anyhow!("timestamp delta {timestamp_delta} overflows"))?;
            read_varint(record)?; // offset delta
            skip_bytes_field(record)?; // key
            skip_bytes_field(record)?; // value
            let headers = read_varint(record)?;
            ensure!(
                headers >= 0 && (headers as usize) <= record.len(),
                "{headers} headers in a {} byte record",
                record.len()
            );
            for _ in 0..headers {
                skip_bytes_field(record)?.ok_or_else(|| anyhow!("null header key"))?;
                skip_bytes_field(record)?;
            }
            Ok(())
        };
        check(&mut record).with_context(|| format!("record {i}"))?;
    }
    Ok(())
}

/// A varint length (-1: null), checked against the bytes that remain but
/// not consumed beyond the varint itself.
fn read_length(data: &mut &[u8]) -> Result<Option<usize>> {
    let len = read_varint(data)?;
    if len == -1 {
        return Ok(None);
    }
    ensure!(len >= 0, "negative length {len}");
    let len = len as usize;
    ensure!(
        len <= data.len(),
        "length {len} exceeds the {} bytes left",
        data.len()
    );
    Ok(Some(len))
}

/// A length-prefixed (nullable) byte field, skipped; `None` if null.
fn skip_bytes_field(data: &mut &[u8]) -> Result<Option<usize>> {
    let len = read_length(data)?;
    if let Some(n) = len {
        data.advance(n);
    }
    Ok(len)
}

fn read_varint(data: &mut &[u8]) -> Result<i32> {
    let v = read_unsigned_varlong(data, 5)?;
    let v = u32::try_from(v).map_err(|_| anyhow!("varint out of range"))?;
    Ok(((v >> 1) as i32) ^ -((v & 1) as i32))
}

fn read_varlong(data: &mut &[u8]) -> Result<i64> {
    let v = read_unsigned_varlong(data, 10)?;
    Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
}

fn read_unsigned_varlong(data: &mut &[u8], bytes_max: usize) -> Result<u64> {
    let mut value: u64 = 0;
    for i in 0..bytes_max {
        let Some((&b, rest)) = data.split_first() else {
            bail!("truncated varint");
        };
        *data = rest;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("varint longer than {bytes_max} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn rec(key: Option<&str>, value: &str) -> ProducerRecord {
        ProducerRecord {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
        }
    }

    /// A batch as a broker would return it: our encoding with a base offset.
    fn stored_batch(base_offset: i64, records: &[ProducerRecord], c: Compression) -> Bytes {
        let mut b = BytesMut::from(&encode_batch(records, c, 1_700_000_000_000).unwrap()[..]);
        b[0..8].copy_from_slice(&base_offset.to_be_bytes());
        b.freeze()
    }

    fn crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82f6_3b78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    #[test]
    fn encode_makes_one_batch_with_no_sequence_for_every_codec() {
        let records: Vec<_> = (0..100)
            .map(|i| rec(Some(&format!("k{i}")), &format!("value {i}")))
            .collect();
        for c in ALL {
            let batch = encode_batch(&records, c, 42).unwrap();
            let infos = RecordBatchDecoder::decode_batch_info(&mut batch.clone()).unwrap();
            assert_eq!(infos.len(), 1, "{c:?}: one batch");
            assert_eq!(infos[0].record_count, 100);
            assert_eq!(infos[0].base_sequence, -1);
            assert_eq!(infos[0].producer_id, -1);
            assert_eq!(infos[0].compression, c);
            let fetched = decode_fetched(batch, 0).unwrap();
            assert_eq!(fetched.records.len(), 100);
            assert_eq!(fetched.next_offset, Some(100));
            assert_eq!(fetched.records[7].key.as_deref(), Some(&b"k7"[..]));
            assert_eq!(fetched.records[7].value.as_deref(), Some(&b"value 7"[..]));
            assert_eq!(fetched.records[7].offset, 7);
        }
    }

    #[test]
    fn encoded_size_bound_holds() {
        let records = vec![rec(Some("key"), "v"), rec(None, &"x".repeat(1000))];
        let bound: usize = records.iter().map(ProducerRecord::encoded_bytes_max).sum();
        let batch = encode_batch(&records, Compression::None, i64::MAX / 2).unwrap();
        assert!(batch.len() <= BATCH_HEADER_BYTES + bound);
    }

    #[test]
    fn partial_last_batch_is_left_for_the_next_fetch() {
        let a = stored_batch(10, &[rec(None, "a"), rec(None, "b")], Compression::None);
        let b = stored_batch(12, &[rec(None, "c")], Compression::Lz4);
        let mut data = BytesMut::new();
        data.put_slice(&a);
        data.put_slice(&b[..b.len() - 3]);
        let fetched = decode_fetched(data.freeze(), 10).unwrap();
        assert_eq!(fetched.records.len(), 2);
        assert_eq!(fetched.next_offset, Some(12));
        assert_eq!(fetched.partial_batch_bytes, b.len() - 3);
        // Fewer bytes than a batch length prefix is also just partial.
        let fetched = decode_fetched(a.slice(..5), 10).unwrap();
        assert!(fetched.records.is_empty() && fetched.next_offset.is_none());
    }

    #[test]
    fn records_below_the_fetch_offset_are_skipped() {
        // A compressed batch is returned whole even if the fetch offset
        // points into its middle.
        let batch = stored_batch(
            100,
            &[rec(None, "a"), rec(None, "b"), rec(None, "c")],
            Compression::Zstd,
        );
        let fetched = decode_fetched(batch.clone(), 101).unwrap();
        let offsets: Vec<i64> = fetched.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![101, 102]);
        let fetched = decode_fetched(batch, 103).unwrap();
        assert!(fetched.records.is_empty());
        assert_eq!(fetched.next_offset, Some(103));
    }

    #[test]
    fn control_batches_advance_the_offset_but_yield_no_records() {
        let mut batch =
            BytesMut::from(&stored_batch(5, &[rec(None, "marker")], Compression::None)[..]);
        batch[22] |= 0x20; // control bit in the low attribute byte
        let crc = crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        let fetched = decode_fetched(batch.freeze(), 0).unwrap();
        assert!(fetched.records.is_empty());
        assert_eq!(fetched.next_offset, Some(6));
    }

    #[test]
    fn old_message_formats_are_an_error() {
        let mut batch = BytesMut::from(&stored_batch(0, &[rec(None, "a")], Compression::None)[..]);
        batch[16] = 1;
        let err = decode_fetched(batch.freeze(), 0).unwrap_err();
        assert!(err.to_string().contains("magic 1"), "{err}");
    }

    #[test]
    fn bogus_counts_and_lengths_are_errors_not_allocations() {
        let good = stored_batch(0, &[rec(Some("k"), "v")], Compression::None);
        let fix_crc = |b: &mut BytesMut| {
            let crc = crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
        };
        // Record count far above what the bytes can hold.
        let mut b = BytesMut::from(&good[..]);
        b[23..27].copy_from_slice(&i32::MAX.to_be_bytes()); // lastOffsetDelta
        b[57..61].copy_from_slice(&(BATCH_RECORDS_MAX).to_be_bytes());
        fix_crc(&mut b);
        assert!(decode_fetched(b.freeze(), 0).is_err());
        // Base offset at the top of the range.
        let mut b = BytesMut::from(&good[..]);
        b[0..8].copy_from_slice(&(i64::MAX - 1).to_be_bytes());
        assert!(decode_fetched(b.freeze(), 0).is_err());
        // Header count claiming two billion headers.
        let mut records = BytesMut::new();
        records.put_u8(10 * 2); // record length 10 (zigzag)
        records.put_slice(&[0, 0, 0, 1, 1]); // attrs, ts, offset, null key, null value
        records.put_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]); // headers: i32::MAX
        assert!(validate_records(&records, 1, 0).is_err());
        // Timestamp delta that overflows the base timestamp.
        let mut records = BytesMut::new();
        records.put_u8(15 * 2);
        records.put_u8(0);
        records.put_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        records.put_slice(&[0, 1, 1, 0]);
        assert!(validate_records(&records, 1, 1).is_err());
        assert!(validate_records(&records, 1, -1).is_ok());
    }

    #[test]
    fn single_byte_corruption_never_panics() {
        // Every byte position, with the CRC fixed up so the corruption gets
        // past the checksum and into our checks and the library's decoder.
        let records: Vec<_> = (0..3).map(|i| rec(Some("key"), &format!("v{i}"))).collect();
        for c in [Compression::None, Compression::Gzip, Compression::Lz4] {
            let good = stored_batch(0, &records, c);
            for pos in 0..good.len() {
                for value in [0x00, 0x7f, 0x80, 0xff] {
                    let mut b = BytesMut::from(&good[..]);
                    b[pos] = value;
                    if b.len() > 21 {
                        let crc = crc32c(&b[21..]);
                        b[17..21].copy_from_slice(&crc.to_be_bytes());
                    }
                    let _ = decode_fetched(b.freeze(), 0);
                }
            }
        }
    }
}
