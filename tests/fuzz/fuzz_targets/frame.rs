//! The frame decoder on arbitrary bytes, with and without a base: never panics, and anything it
//! decodes hashes to the checksum the frame carries.
#![no_main]

use tensorgate_codec::{decode_frame, BaseChunk, ContentHash, FrameHeader};

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let (frame, base) = input.split_at(input.len() / 2);
    let base = BaseChunk { hash: ContentHash::of(base), bytes: base };
    for base in [None, Some(base)] {
        if let Ok(decoded) = decode_frame(frame, base) {
            let header = FrameHeader::read(frame).expect("a decoded frame has a header");
            assert_eq!(ContentHash::of(&decoded), header.checksum);
        }
    }
});
