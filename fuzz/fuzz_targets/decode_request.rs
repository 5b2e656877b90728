//! Request decoding, for every API key and version Fjord advertises.
//!
//! Two input shapes, chosen by the first byte, so that libFuzzer reaches
//! every (api key, version) pair quickly and still mutates whole frames:
//! - even first byte: the rest is a whole request frame as a client sends it
//!   (without the 4-byte length), header included — the captured corpus;
//! - odd first byte: the next two bytes pick one advertised (key, version)
//!   pair, a well-formed header for it is built, and the rest is the body.
//!
//! Whatever the bytes, decoding must return (a request or an error) without
//! panicking or allocating beyond the input's size.
#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;

use fjord::protocol::{decodable_range, decode_request, supported_apis};

fn advertised_pairs() -> Vec<(i16, i16)> {
    let mut pairs = Vec::new();
    for (key, _, _) in supported_apis() {
        if let Some((min, max)) = decodable_range(key) {
            for version in min..=max {
                pairs.push((key as i16, version));
            }
        }
    }
    pairs
}

fn header_frame(api_key: i16, version: i16, body: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(16 + body.len());
    frame.put_i16(api_key);
    frame.put_i16(version);
    frame.put_i32(7);
    let flexible = kafka_header_is_flexible(api_key, version);
    // client_id: a nullable string in every header version >= 1.
    frame.put_i16(4);
    frame.put_slice(b"fuzz");
    if flexible {
        frame.put_u8(0); // no tagged fields
    }
    frame.put_slice(body);
    frame.freeze()
}

fn kafka_header_is_flexible(api_key: i16, version: i16) -> bool {
    kafka_protocol::messages::ApiKey::try_from(api_key)
        .is_ok_and(|key| key.request_header_version(version) >= 2)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let _ = decode_request(Bytes::copy_from_slice(rest));
        return;
    }
    if rest.len() < 2 {
        return;
    }
    let pairs = advertised_pairs();
    let pick = u16::from_be_bytes([rest[0], rest[1]]) as usize % pairs.len();
    let (api_key, version) = pairs[pick];
    let _ = decode_request(header_frame(api_key, version, &rest[2..]));
});
