//! Index records (manifests, chunks, uploads, base candidates) decoded from arbitrary bytes:
//! never panic, never allocate without bound.
#![no_main]

use tensorgate_index::{decode, BaseCandidate, ChunkRecord, ObjectRecord, UploadRecord};

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let _ = decode::<ObjectRecord>(bytes);
    let _ = decode::<ChunkRecord>(bytes);
    let _ = decode::<UploadRecord>(bytes);
    let _ = decode::<BaseCandidate>(bytes);
});
