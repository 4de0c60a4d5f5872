//! GetObjectAttributes: what S3 answers about an object without its body, limited to the
//! attributes asked for: its ETag, size and storage class, the checksum it was stored with and
//! its type, and for an object uploaded by parts how many parts it has and, when they were
//! uploaded with checksums (as S3 lists them only then), each part's size and checksums.

use s3s::dto::{Checksum, ETag, GetObjectAttributesOutput, GetObjectAttributesParts, ObjectAttributes, ObjectPart, StorageClass};
use tensorgate_index::ObjectRecord;

use super::digests::checksum_type_of;

/// The most parts one answer may cover, and what it covers when the client does not say.
const DEFAULT_MAX_PARTS: i32 = 1000;

/// The attributes `wanted` of `record` (`max_parts` and `part_marker` are echoed back).
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
    if asked(ObjectAttributes::CHECKSUM) && !checksums.is_empty() {
        output.checksum = Some(Checksum {
            checksum_crc32: checksums.crc32.clone(),
            checksum_crc32c: checksums.crc32c.clone(),
            checksum_crc64nvme: checksums.crc64nvme.clone(),
            checksum_sha1: checksums.sha1.clone(),
            checksum_sha256: checksums.sha256.clone(),
            checksum_type: checksum_type_of(checksums),
        });
    }
    if asked(ObjectAttributes::OBJECT_PARTS) && !record.part_sizes.is_empty() {
        let max_parts = max_parts.filter(|max| *max > 0).unwrap_or(DEFAULT_MAX_PARTS).min(DEFAULT_MAX_PARTS);
        let marker = part_marker.unwrap_or(0).max(0);
        let listed: Vec<ObjectPart> = record
            .part_checksums
            .iter()
            .zip(&record.part_sizes)
            .zip(1..)
            .skip(marker as usize)
            .take(max_parts as usize)
            .map(|((checksums, size), number)| ObjectPart {
                part_number: Some(number),
                size: Some(*size as i64),
                checksum_crc32: checksums.crc32.clone(),
                checksum_crc32c: checksums.crc32c.clone(),
                checksum_crc64nvme: checksums.crc64nvme.clone(),
                checksum_sha1: checksums.sha1.clone(),
                checksum_sha256: checksums.sha256.clone(),
            })
            .collect();
        let is_truncated = !record.part_checksums.is_empty() && (marker as usize).saturating_add(listed.len()) < record.part_checksums.len();
        output.object_parts = Some(GetObjectAttributesParts {
            total_parts_count: Some(record.part_sizes.len() as i32),
            max_parts: Some(max_parts),
            part_number_marker: Some(marker),
            next_part_number_marker: listed.last().and_then(|part| part.part_number).filter(|_| is_truncated),
            is_truncated: Some(is_truncated),
            parts: (!record.part_checksums.is_empty()).then_some(listed),
        });
    }
    output
}

/// Whether a request is a GetObjectAttributes (a GET with the `attributes` subresource).
pub fn is_attributes_request<B>(request: &hyper::Request<B>) -> bool {
    request.method() == hyper::Method::GET
        && request.uri().query().is_some_and(|query| query.split('&').any(|pair| pair.split('=').next() == Some("attributes")))
}

/// S3 writes the ETag of a GetObjectAttributes answer without quotes, unlike every other
/// answer; s3s 0.14.1 always quotes it, so the answer's one ETag element is unquoted here (and
/// its length set again).
pub fn unquote_etag(response: &mut s3s::HttpResponse) {
    // Only the GetObjectAttributes answer itself (a bucket-level GET with a stray `attributes`
    // parameter is a listing), and only a body held whole.
    const ROOT: &[u8] = b"<GetObjectAttributesResponse";
    let Some(xml) = response.body().bytes().filter(|xml| xml.windows(ROOT.len()).any(|window| window == ROOT)) else {
        return;
    };
    let text = String::from_utf8_lossy(&xml);
    let unquoted = match (text.find("<ETag>\""), text.find("\"</ETag>")) {
        (Some(open), Some(close)) if open + 7 <= close => {
            format!("{}<ETag>{}</ETag>{}", &text[..open], &text[open + 7..close], &text[close + 8..])
        }
        _ => text.into_owned(),
    };
    response.headers_mut().insert(hyper::header::CONTENT_LENGTH, hyper::header::HeaderValue::from(unquoted.len()));
    *response.body_mut() = s3s::Body::from(unquoted);
}
