//! GetObjectAttributes: what S3 answers about an object without its body, limited to the
//! attributes asked for: its ETag, size and storage class, the checksum it was stored with (a
//! full-object one; objects uploaded by parts keep none, see docs/compatibility.md), and for
//! an object uploaded by parts its parts (numbers and sizes), a page at a time.

use s3s::dto::{Checksum, ETag, GetObjectAttributesOutput, GetObjectAttributesParts, ObjectAttributes, ObjectPart, StorageClass};
use tensorgate_index::ObjectRecord;

/// How many parts one answer lists when the client does not say.
const DEFAULT_MAX_PARTS: i32 = 1000;

/// The attributes `wanted` of `record`; parts after number `part_marker`, `max_parts` of them.
pub fn answer(record: &ObjectRecord, wanted: &[ObjectAttributes], max_parts: Option<i32>, part_marker: Option<i32>) -> GetObjectAttributesOutput {
    // Clients send the list as one comma-separated header, which s3s hands over unsplit.
    let asked = |name: &str| wanted.iter().flat_map(|attribute| attribute.as_str().split(',')).any(|asked| asked.trim() == name);
    let mut output = GetObjectAttributesOutput::default();
    if asked(ObjectAttributes::ETAG) {
        output.e_tag = Some(ETag::Strong(record.etag.clone()));
    }
    if asked(ObjectAttributes::OBJECT_SIZE) {
        output.object_size = Some(record.size as i64);
    }
    if asked(ObjectAttributes::STORAGE_CLASS) {
        output.storage_class = Some(StorageClass::from_static(StorageClass::STANDARD));
    }
    let checksums = &record.checksums;
    let has_checksum = checksums.crc32.is_some() || checksums.crc32c.is_some() || checksums.sha1.is_some();
    if asked(ObjectAttributes::CHECKSUM) && (has_checksum || checksums.sha256.is_some() || checksums.crc64nvme.is_some()) {
        output.checksum = Some(Checksum {
            checksum_crc32: checksums.crc32.clone(),
            checksum_crc32c: checksums.crc32c.clone(),
            checksum_crc64nvme: checksums.crc64nvme.clone(),
            checksum_sha1: checksums.sha1.clone(),
            checksum_sha256: checksums.sha256.clone(),
            checksum_type: None,
        });
    }
    if asked(ObjectAttributes::OBJECT_PARTS) && !record.part_sizes.is_empty() {
        output.object_parts = Some(parts(record, max_parts.unwrap_or(DEFAULT_MAX_PARTS), part_marker.unwrap_or(0)));
    }
    output
}

/// One page of an object's parts: those numbered after `marker`, `max_parts` at most.
fn parts(record: &ObjectRecord, max_parts: i32, marker: i32) -> GetObjectAttributesParts {
    let max_parts = max_parts.clamp(0, DEFAULT_MAX_PARTS);
    let after: Vec<(i32, u64)> = (1..).zip(record.part_sizes.iter().copied()).filter(|(number, _)| *number > marker).collect();
    let page: Vec<ObjectPart> = after
        .iter()
        .take(max_parts as usize)
        .map(|(number, size)| ObjectPart { part_number: Some(*number), size: Some(*size as i64), ..Default::default() })
        .collect();
    let truncated = after.len() > page.len();
    GetObjectAttributesParts {
        is_truncated: Some(truncated),
        max_parts: Some(max_parts),
        next_part_number_marker: page.last().and_then(|part| part.part_number).filter(|_| truncated),
        part_number_marker: Some(marker),
        parts: Some(page),
        total_parts_count: Some(record.part_sizes.len() as i32),
    }
}
