//! GetObjectAttributes: what S3 answers about an object without its body, limited to the
//! attributes asked for: its ETag, size and storage class, the checksum it was stored with (a
//! full-object one; objects uploaded by parts keep none, see docs/compatibility.md), and for
//! an object uploaded by parts how many parts it has. S3 lists the parts themselves only when
//! they were uploaded with checksums, which tensorgate does not keep, so it lists none.

use s3s::dto::{Checksum, ETag, GetObjectAttributesOutput, GetObjectAttributesParts, ObjectAttributes, StorageClass};
use tensorgate_index::ObjectRecord;

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
    // An object uploaded by parts keeps composite checksums, which S3 gives here with per-part
    // checksums tensorgate does not keep with the object: none is given (docs/compatibility.md).
    if asked(ObjectAttributes::CHECKSUM) && !checksums.is_empty() && record.part_sizes.is_empty() {
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
        let max_parts = max_parts.filter(|max| *max > 0).unwrap_or(DEFAULT_MAX_PARTS).min(DEFAULT_MAX_PARTS);
        output.object_parts = Some(GetObjectAttributesParts {
            total_parts_count: Some(record.part_sizes.len() as i32),
            max_parts: Some(max_parts),
            part_number_marker: Some(part_marker.unwrap_or(0)),
            is_truncated: Some(false),
            ..Default::default()
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
