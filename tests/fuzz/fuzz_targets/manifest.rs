//! Index records (objects, chunks, uploads, base candidates) and the upstream envelopes
//! (manifests, bucket markers) decoded from arbitrary bytes: never panic, never allocate without
//! bound, and an envelope that opens seals back to the same bytes.
#![no_main]

use tensorgate_index::{decode, BaseCandidate, BucketMarker, ChunkRecord, Envelope, Manifest, ObjectRecord, UploadRecord};

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let _ = decode::<ObjectRecord>(bytes);
    let _ = decode::<ChunkRecord>(bytes);
    let _ = decode::<UploadRecord>(bytes);
    let _ = decode::<BaseCandidate>(bytes);
    if let Ok(manifest) = Manifest::open(bytes) {
        let sealed = manifest.seal().expect("a manifest that opened seals again");
        assert_eq!(Manifest::open(&sealed).ok(), Some(manifest));
    }
    let _ = BucketMarker::open(bytes);
});
