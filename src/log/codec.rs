//! The record-batch codecs (gzip, snappy, lz4, zstd): bounded streaming
//! decompression for produce validation and ListOffsets, and the compressors
//! that rebuild a batch for a topic's `compression.type`.
//!
//! Design decision: everything streams through a fixed-size buffer owned by
//! the caller, and every decoder knows how many decompressed bytes it may
//! still produce, so a tiny hostile batch can neither allocate nor burn CPU
//! past [`DECOMPRESSED_BYTES_MAX`]. The crates are the ones kafka-protocol
//! already uses (one copy of each in the build); only the framing Kafka adds
//! on top of them (xerial snappy) is written here.

use std::io::{self, Read, Write};

use flate2::bufread::MultiGzDecoder;
use flate2::write::GzEncoder;

use crate::log::batch::CompressionCodec;
use crate::log::config::BrokerCompression;

/// Most decompressed bytes one batch may expand to. Producers build batches of
/// `batch.size` (16 KiB in Java, 1 MB in librdkafka) under a 1 MiB
/// `max.message.bytes`, so 64 MiB is far above anything a client writes, yet
/// small enough that walking it costs well under a second of one core even
/// for gzip; without it a 1 MiB gzip batch of zeros would make the broker
/// inflate a gigabyte.
pub const DECOMPRESSED_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Largest zstd window (2^24 = 16 MiB) the decoder accepts. zstd frames
/// declare their window and the decoder allocates it, so an unbounded value
/// would let a 20-byte frame reserve gigabytes. Producers at the default level
/// (3) use 2^21 or less; `compression.zstd.level` 20–22 in Java streams
/// declare up to 2^27 and are refused (INVALID_RECORD).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// Uncompressed bytes per xerial snappy block we write: snappy-java's default,
/// so Java consumers see what Java producers write.
const SNAPPY_BLOCK_BYTES: usize = 32 * 1024;

/// snappy-java's stream header: 8-byte magic, then version and
/// minimum-compatible version (both 1), 4 bytes each, big-endian.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";

/// Size of the read buffer a [`Decoder`]'s caller streams through.
pub(crate) const STREAM_BUFFER_BYTES: usize = 32 * 1024;

/// Default levels of Kafka's `compression.<codec>.level` configs.
pub const GZIP_LEVEL_DEFAULT: i32 = -1;
/// `compression.lz4.level` default.
pub const LZ4_LEVEL_DEFAULT: i32 = 9;
/// `compression.zstd.level` default.
pub const ZSTD_LEVEL_DEFAULT: i32 = 3;

/// Why compressed bytes could not be turned back into records.
#[derive(Debug)]
pub(crate) enum CodecError {
    /// The codec rejected the data (the producer built it wrong).
    Corrupt(String),
    /// The data would expand past the batch budget.
    TooLarge { limit_bytes: usize },
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Corrupt(reason) => write!(f, "{reason}"),
            CodecError::TooLarge { limit_bytes } => {
                write!(f, "records decompress to more than {limit_bytes} bytes")
            }
        }
    }
}

/// A streaming decompressor over one batch's compressed records.
///
/// An enum rather than `Box<dyn Read>` so that [`Decoder::finish`] can ask
/// each codec whether its stream really ended (lz4's reader reports a
/// truncated frame only there).
pub(crate) enum Decoder<'a> {
    Gzip(MultiGzDecoder<&'a [u8]>),
    Snappy(SnappyDecoder<'a>),
    Lz4(lz4::Decoder<&'a [u8]>),
    Zstd(Box<zstd::stream::read::Decoder<'static, &'a [u8]>>),
}

impl<'a> Decoder<'a> {
    /// A decoder for `compressed`, which may produce at most `budget_bytes`.
    /// `None` for [`CompressionCodec::None`] (the caller reads the slice).
    pub(crate) fn new(
        codec: CompressionCodec,
        compressed: &'a [u8],
        budget_bytes: usize,
    ) -> Result<Option<Self>, CodecError> {
        let corrupt = |e: io::Error| CodecError::Corrupt(e.to_string());
        Ok(Some(match codec {
            CompressionCodec::None => return Ok(None),
            // Multi-member, as Java's GZIPInputStream reads concatenated members.
            CompressionCodec::Gzip => Decoder::Gzip(MultiGzDecoder::new(compressed)),
            CompressionCodec::Snappy => {
                Decoder::Snappy(SnappyDecoder::new(compressed, budget_bytes))
            }
            CompressionCodec::Lz4 => Decoder::Lz4(lz4::Decoder::new(compressed).map_err(corrupt)?),
            CompressionCodec::Zstd => {
                let mut decoder =
                    zstd::stream::read::Decoder::with_buffer(compressed).map_err(corrupt)?;
                decoder
                    .window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .map_err(corrupt)?;
                Decoder::Zstd(Box::new(decoder))
            }
        }))
    }

    /// Reads decompressed bytes (0 at the end of the stream).
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> Result<usize, CodecError> {
        let read = match self {
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Snappy(d) => return d.read(buf),
            Decoder::Lz4(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
        };
        read.map_err(|e| CodecError::Corrupt(e.to_string()))
    }

    /// After the last byte was read: fails if the compressed stream was
    /// truncated or has bytes after its end.
    pub(crate) fn finish(self) -> Result<(), CodecError> {
        match self {
            // Both read their input to the end and fail on a truncated stream.
            Decoder::Gzip(_) | Decoder::Zstd(_) | Decoder::Snappy(_) => Ok(()),
            Decoder::Lz4(d) => {
                let (rest, ended) = d.finish();
                ended.map_err(|_| CodecError::Corrupt("lz4 frame is truncated".into()))?;
                if !rest.is_empty() {
                    return Err(CodecError::Corrupt(format!(
                        "{} bytes after the end of the lz4 frame",
                        rest.len()
                    )));
                }
                Ok(())
            }
        }
    }
}

/// Snappy as Kafka clients write it: xerial framing (Java), or one raw snappy
/// block (librdkafka), told apart by the magic like snappy-java does.
///
/// Each block is decompressed whole (snappy has no streaming form), after
/// checking its declared length against the budget; xerial blocks are 32 KiB,
/// a raw one is the whole batch, bounded by the budget.
pub(crate) struct SnappyDecoder<'a> {
    input: &'a [u8],
    framed: bool,
    block: Vec<u8>,
    position: usize,
    budget_bytes: usize,
}

impl<'a> SnappyDecoder<'a> {
    fn new(input: &'a [u8], budget_bytes: usize) -> Self {
        let framed = input.len() >= XERIAL_HEADER.len() && input.starts_with(XERIAL_MAGIC);
        SnappyDecoder {
            input: if framed {
                &input[XERIAL_HEADER.len()..]
            } else {
                input
            },
            framed,
            block: Vec::new(),
            position: 0,
            budget_bytes,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, CodecError> {
        // Each pass consumes at least 4 input bytes, so this ends.
        while self.position == self.block.len() {
            if !self.next_block()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len() - self.position);
        buf[..n].copy_from_slice(&self.block[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }

    /// Decompresses the next block into `block`; false at the end of input.
    fn next_block(&mut self) -> Result<bool, CodecError> {
        let corrupt = |what: &str| CodecError::Corrupt(format!("snappy: {what}"));
        if self.input.is_empty() {
            return Ok(false);
        }
        let compressed = if self.framed {
            // snappy-java reads concatenated streams: a header may follow a block.
            if self.input.starts_with(XERIAL_MAGIC) {
                if self.input.len() < XERIAL_HEADER.len() {
                    return Err(corrupt("truncated stream header"));
                }
                self.input = &self.input[XERIAL_HEADER.len()..];
                self.block.clear();
                self.position = 0;
                return Ok(true);
            }
            let Some((length, rest)) = self.input.split_first_chunk::<4>() else {
                return Err(corrupt("truncated block length"));
            };
            let length = u32::from_be_bytes(*length) as usize;
            let block = rest
                .get(..length)
                .ok_or_else(|| corrupt("block past the end of the batch"))?;
            self.input = &rest[length..];
            block
        } else {
            std::mem::take(&mut self.input)
        };
        let length = snap::raw::decompress_len(compressed)
            .map_err(|e| CodecError::Corrupt(format!("snappy: {e}")))?;
        if length > self.budget_bytes {
            return Err(CodecError::TooLarge {
                limit_bytes: DECOMPRESSED_BYTES_MAX,
            });
        }
        self.budget_bytes -= length;
        self.block.resize(length, 0);
        snap::raw::Decoder::new()
            .decompress(compressed, &mut self.block)
            .map_err(|e| CodecError::Corrupt(format!("snappy: {e}")))?;
        self.position = 0;
        Ok(true)
    }
}

/// The target of a topic's `compression.type`, or `None` for `producer`
/// (keep every batch as sent).
pub(crate) fn target_codec(compression: BrokerCompression) -> Option<CompressionCodec> {
    match compression {
        BrokerCompression::Producer => None,
        BrokerCompression::Uncompressed => Some(CompressionCodec::None),
        BrokerCompression::Gzip { .. } => Some(CompressionCodec::Gzip),
        BrokerCompression::Snappy => Some(CompressionCodec::Snappy),
        BrokerCompression::Lz4 { .. } => Some(CompressionCodec::Lz4),
        BrokerCompression::Zstd { .. } => Some(CompressionCodec::Zstd),
    }
}

/// A `Vec` that stops growing at `limit_bytes` and remembers that it had to:
/// a rebuilt batch larger than `max.message.bytes` is refused anyway, so
/// there is no point holding the rest of it.
#[derive(Debug)]
pub(crate) struct CappedVec {
    bytes: Vec<u8>,
    limit_bytes: usize,
    written_bytes: usize,
}

impl CappedVec {
    /// Starts with `prefix` (the batch header to be filled in later).
    pub(crate) fn with_prefix(prefix: &[u8], limit_bytes: usize) -> Self {
        let mut bytes = Vec::with_capacity(limit_bytes.min(STREAM_BUFFER_BYTES));
        bytes.extend_from_slice(prefix);
        CappedVec {
            written_bytes: bytes.len(),
            bytes,
            limit_bytes,
        }
    }

    /// The bytes, or `Err(total size)` if they went past the limit.
    pub(crate) fn into_inner(self) -> Result<Vec<u8>, usize> {
        if self.written_bytes > self.limit_bytes {
            Err(self.written_bytes)
        } else {
            Ok(self.bytes)
        }
    }
}

impl Write for CappedVec {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written_bytes = self.written_bytes.saturating_add(buf.len());
        if self.written_bytes <= self.limit_bytes {
            self.bytes.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A compressor writing one batch's records with the target codec.
pub(crate) enum Encoder {
    None(CappedVec),
    Gzip(GzEncoder<CappedVec>),
    Snappy(Box<SnappyEncoder>),
    Lz4(lz4::Encoder<CappedVec>),
    Zstd(Box<zstd::stream::write::Encoder<'static, CappedVec>>),
}

impl Encoder {
    /// An encoder for `compression`'s codec and level writing after `out`'s
    /// current contents; `None` for `producer`.
    pub(crate) fn new(compression: BrokerCompression, out: CappedVec) -> io::Result<Option<Self>> {
        Ok(Some(match compression {
            BrokerCompression::Producer => return Ok(None),
            BrokerCompression::Uncompressed => Encoder::None(out),
            BrokerCompression::Gzip { level } => {
                let level = match u32::try_from(level) {
                    Ok(level @ 1..=9) => flate2::Compression::new(level),
                    _ => flate2::Compression::default(),
                };
                Encoder::Gzip(GzEncoder::new(out, level))
            }
            BrokerCompression::Snappy => Encoder::Snappy(Box::new(SnappyEncoder::new(out))),
            BrokerCompression::Lz4 { level } => Encoder::Lz4(
                // Java's KafkaLZ4BlockOutputStream: 64 KiB independent blocks,
                // no content checksum (its reader wants no linked blocks).
                lz4::EncoderBuilder::new()
                    .level(u32::try_from(level).unwrap_or(LZ4_LEVEL_DEFAULT as u32))
                    .block_size(lz4::BlockSize::Max64KB)
                    .block_mode(lz4::BlockMode::Independent)
                    .checksum(lz4::ContentChecksum::NoChecksum)
                    .build(out)?,
            ),
            BrokerCompression::Zstd { level } => {
                Encoder::Zstd(Box::new(zstd::stream::write::Encoder::new(out, level)?))
            }
        }))
    }

    /// Ends the stream and returns everything written (`Err(size)` past the cap).
    pub(crate) fn finish(self) -> io::Result<Result<Vec<u8>, usize>> {
        let out = match self {
            Encoder::None(out) => out,
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Snappy(e) => e.finish(),
            Encoder::Lz4(e) => {
                let (out, result) = e.finish();
                result?;
                out
            }
            Encoder::Zstd(e) => e.finish()?,
        };
        Ok(out.into_inner())
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Snappy(w) => w.write(buf),
            Encoder::Lz4(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // Flushing would end a compressed block early; `finish` ends the stream.
        Ok(())
    }
}

/// xerial-framed snappy output: the 16-byte header, then for every 32 KiB of
/// input `[u32 BE compressed length][raw snappy block]` (what snappy-java's
/// `SnappyOutputStream` writes and every Kafka client reads).
pub(crate) struct SnappyEncoder {
    out: CappedVec,
    pending: Vec<u8>,
    scratch: Vec<u8>,
    encoder: snap::raw::Encoder,
}

impl SnappyEncoder {
    fn new(mut out: CappedVec) -> Self {
        // A CappedVec never fails a write.
        let _ = out.write_all(XERIAL_HEADER);
        SnappyEncoder {
            out,
            pending: Vec::with_capacity(SNAPPY_BLOCK_BYTES),
            scratch: vec![0; snap::raw::max_compress_len(SNAPPY_BLOCK_BYTES)],
            encoder: snap::raw::Encoder::new(),
        }
    }

    fn emit_block(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        // `scratch` holds max_compress_len of a full block, so this cannot fail.
        let n = self
            .encoder
            .compress(&self.pending, &mut self.scratch)
            .unwrap_or(0);
        debug_assert!(n > 0, "snappy block of {} bytes", self.pending.len());
        let _ = self.out.write_all(&(n as u32).to_be_bytes());
        let _ = self.out.write_all(&self.scratch[..n]);
        self.pending.clear();
    }

    fn finish(mut self) -> CappedVec {
        self.emit_block();
        self.out
    }
}

impl Write for SnappyEncoder {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let written = buf.len();
        while !buf.is_empty() {
            let room = SNAPPY_BLOCK_BYTES - self.pending.len();
            let (now, later) = buf.split_at(room.min(buf.len()));
            self.pending.extend_from_slice(now);
            if self.pending.len() == SNAPPY_BLOCK_BYTES {
                self.emit_block();
            }
            buf = later;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut as _, BytesMut};
    use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};

    fn decode_all(
        codec: CompressionCodec,
        compressed: &[u8],
        budget: usize,
    ) -> Result<Vec<u8>, CodecError> {
        let mut decoder = Decoder::new(codec, compressed, budget)?.expect("compressed codec");
        let mut out = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            let n = decoder.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.len() > budget {
                return Err(CodecError::TooLarge {
                    limit_bytes: budget,
                });
            }
        }
        decoder.finish()?;
        Ok(out)
    }

    fn kafka_protocol_compress(codec: CompressionCodec, plain: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let fill = |b: &mut BytesMut| {
            b.put_slice(plain);
            Ok(())
        };
        match codec {
            CompressionCodec::None => out.put_slice(plain),
            CompressionCodec::Gzip => Gzip::compress(&mut out, fill).unwrap(),
            CompressionCodec::Snappy => Snappy::compress(&mut out, fill).unwrap(),
            CompressionCodec::Lz4 => Lz4::compress(&mut out, fill).unwrap(),
            CompressionCodec::Zstd => Zstd::compress(&mut out, fill).unwrap(),
        }
        out.to_vec()
    }

    fn kafka_protocol_decompress(codec: CompressionCodec, compressed: &[u8]) -> Vec<u8> {
        let mut input = bytes::Bytes::copy_from_slice(compressed);
        let take = |b: &mut bytes::Bytes| Ok(b.to_vec());
        match codec {
            CompressionCodec::None => compressed.to_vec(),
            CompressionCodec::Gzip => Gzip::decompress(&mut input, take).unwrap(),
            CompressionCodec::Snappy => Snappy::decompress(&mut input, take).unwrap(),
            CompressionCodec::Lz4 => Lz4::decompress(&mut input, take).unwrap(),
            CompressionCodec::Zstd => Zstd::decompress(&mut input, take).unwrap(),
        }
    }

    const COMPRESSED: [CompressionCodec; 4] = [
        CompressionCodec::Gzip,
        CompressionCodec::Snappy,
        CompressionCodec::Lz4,
        CompressionCodec::Zstd,
    ];

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i * 7 % 251) as u8 ^ (i / 300) as u8)
            .collect()
    }

    #[test]
    fn decodes_what_kafka_protocol_encodes_in_every_codec() {
        let plain = sample(200_000);
        for codec in COMPRESSED {
            let compressed = kafka_protocol_compress(codec, &plain);
            let decoded = decode_all(codec, &compressed, DECOMPRESSED_BYTES_MAX).unwrap();
            assert!(decoded == plain, "{codec:?}");
        }
    }

    #[test]
    fn kafka_protocol_decodes_what_we_encode_in_every_codec() {
        let plain = sample(100_000);
        for (compression, codec) in [
            (BrokerCompression::Gzip { level: 1 }, CompressionCodec::Gzip),
            (
                BrokerCompression::Gzip { level: -1 },
                CompressionCodec::Gzip,
            ),
            (BrokerCompression::Snappy, CompressionCodec::Snappy),
            (BrokerCompression::Lz4 { level: 9 }, CompressionCodec::Lz4),
            (BrokerCompression::Lz4 { level: 1 }, CompressionCodec::Lz4),
            (BrokerCompression::Zstd { level: 3 }, CompressionCodec::Zstd),
            (BrokerCompression::Uncompressed, CompressionCodec::None),
        ] {
            let mut encoder = Encoder::new(compression, CappedVec::with_prefix(&[], usize::MAX))
                .unwrap()
                .unwrap();
            // Uneven writes, as the record walk tees them.
            for chunk in plain.chunks(777) {
                encoder.write_all(chunk).unwrap();
            }
            let compressed = encoder.finish().unwrap().unwrap();
            assert_eq!(
                kafka_protocol_decompress(codec, &compressed),
                plain,
                "{compression:?}"
            );
            if codec == CompressionCodec::Snappy {
                assert!(compressed.starts_with(XERIAL_HEADER));
            }
            if codec != CompressionCodec::None {
                assert_eq!(decode_all(codec, &compressed, usize::MAX).unwrap(), plain);
            }
        }
    }

    #[test]
    fn gzip_reads_concatenated_members() {
        let mut both = kafka_protocol_compress(CompressionCodec::Gzip, b"first ");
        both.extend(kafka_protocol_compress(CompressionCodec::Gzip, b"second"));
        assert_eq!(
            decode_all(CompressionCodec::Gzip, &both, 1000).unwrap(),
            b"first second"
        );
    }

    #[test]
    fn raw_snappy_as_librdkafka_writes_it_is_read() {
        let plain = sample(50_000);
        let raw = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        assert_eq!(
            decode_all(CompressionCodec::Snappy, &raw, 100_000).unwrap(),
            plain
        );
    }

    #[test]
    fn snappy_block_larger_than_the_budget_is_refused_before_decompressing() {
        let raw = snap::raw::Encoder::new()
            .compress_vec(&[0u8; 10_000])
            .unwrap();
        assert!(matches!(
            decode_all(CompressionCodec::Snappy, &raw, 9_999),
            Err(CodecError::TooLarge { .. })
        ));
        let framed = kafka_protocol_compress(CompressionCodec::Snappy, &[0u8; 100_000]);
        assert!(matches!(
            decode_all(CompressionCodec::Snappy, &framed, 50_000),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncated_or_padded_streams_are_corrupt() {
        let plain = sample(10_000);
        for codec in COMPRESSED {
            let compressed = kafka_protocol_compress(codec, &plain);
            let cut = &compressed[..compressed.len() - 3];
            assert!(
                decode_all(codec, cut, usize::MAX).is_err(),
                "{codec:?} truncated"
            );
        }
        for codec in [
            CompressionCodec::Lz4,
            CompressionCodec::Zstd,
            CompressionCodec::Gzip,
        ] {
            let mut padded = kafka_protocol_compress(codec, &plain);
            padded.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
            assert!(
                decode_all(codec, &padded, usize::MAX).is_err(),
                "{codec:?} padded"
            );
        }
    }

    #[test]
    fn zstd_window_above_the_limit_is_refused() {
        let plain = sample(1 << 20);
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(ZSTD_WINDOW_LOG_MAX + 1).unwrap();
        encoder.write_all(&plain).unwrap();
        let compressed = encoder.finish().unwrap();
        assert!(decode_all(CompressionCodec::Zstd, &compressed, usize::MAX).is_err());
    }

    #[test]
    fn capped_vec_stops_growing_at_its_limit() {
        let mut out = CappedVec::with_prefix(b"hdr", 10);
        out.write_all(b"1234567").unwrap();
        out.write_all(b"89").unwrap();
        assert_eq!(out.into_inner(), Err(12));
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics_and_respects_the_budget(
            codec in 1u8..5,
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let codec = CompressionCodec::from_id(codec).unwrap();
            let _ = decode_all(codec, &garbage, 4096);
        }
    }
}
