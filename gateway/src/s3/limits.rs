//! S3's limits on a request, checked before its body is read or its source copied: user
//! metadata over 2 KB, a storage class S3 does not know, an object or copy source over 5 GiB in
//! one request, a part number outside 1-10000.

use super::*;

/// The most user metadata one object carries: its keys and values, in UTF-8 bytes (S3's limit).
const MAX_METADATA_BYTES: usize = 2 << 10;

/// The largest object one PutObject or UploadPart carries, and the largest copy source: 5 GiB.
const MAX_SINGLE_REQUEST_BYTES: u64 = 5 << 30;

/// The storage classes S3 takes on a write. The gateway stores every object alike and answers
/// STANDARD for all of them; any other name is refused, as S3 refuses it.
const STORAGE_CLASSES: &[&str] = &[
    StorageClass::STANDARD,
    StorageClass::REDUCED_REDUNDANCY,
    StorageClass::STANDARD_IA,
    StorageClass::ONEZONE_IA,
    StorageClass::INTELLIGENT_TIERING,
    StorageClass::GLACIER,
    StorageClass::DEEP_ARCHIVE,
    StorageClass::GLACIER_IR,
    StorageClass::OUTPOSTS,
    StorageClass::SNOW,
    StorageClass::EXPRESS_ONEZONE,
];

/// Refuses user metadata over S3's 2 KB (400 MetadataTooLarge).
pub(super) fn check_metadata(metadata: Option<&Metadata>) -> S3Result<()> {
    let bytes: usize = metadata.into_iter().flatten().map(|(key, value)| key.len() + value.len()).sum();
    if bytes > MAX_METADATA_BYTES {
        return Err(s3_error!(MetadataTooLarge, "Your metadata headers exceed the maximum allowed metadata size."));
    }
    Ok(())
}

/// Refuses a storage class S3 does not know (400 InvalidStorageClass).
pub(super) fn check_storage_class(class: Option<&StorageClass>) -> S3Result<()> {
    match class {
        Some(class) if !STORAGE_CLASSES.contains(&class.as_str()) => {
            Err(s3_error!(InvalidStorageClass, "The storage class you specified is not valid"))
        }
        _ => Ok(()),
    }
}

/// Refuses a body announced over 5 GiB (400 EntityTooLarge): S3 takes larger objects by parts.
pub(super) fn check_body_size(announced: Option<u64>) -> S3Result<()> {
    if announced.is_some_and(|size| size > MAX_SINGLE_REQUEST_BYTES) {
        return Err(s3_error!(EntityTooLarge));
    }
    Ok(())
}

/// Refuses a copy source over 5 GiB (400 InvalidRequest): S3 copies larger objects by parts.
pub(super) fn check_copy_size(bytes: u64) -> S3Result<()> {
    if bytes > MAX_SINGLE_REQUEST_BYTES {
        return Err(s3_error!(
            InvalidRequest,
            "The specified copy source is larger than the maximum allowable size for a copy source: {MAX_SINGLE_REQUEST_BYTES}"
        ));
    }
    Ok(())
}

/// S3's bounds of a part number, and its message for one outside them (400 InvalidArgument).
pub(super) fn check_part_number(number: i32) -> S3Result<()> {
    if !(1..=10_000).contains(&number) {
        return Err(s3_error!(InvalidArgument, "Part number must be an integer between 1 and 10000, inclusive"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_or_copy_over_five_gib_is_refused_and_one_of_five_gib_is_not() {
        assert!(check_body_size(Some(5 << 30)).is_ok() && check_body_size(None).is_ok());
        assert_eq!(*check_body_size(Some((5 << 30) + 1)).unwrap_err().code(), S3ErrorCode::EntityTooLarge);
        assert!(check_copy_size(5 << 30).is_ok());
        assert_eq!(*check_copy_size((5 << 30) + 1).unwrap_err().code(), S3ErrorCode::InvalidRequest);
    }
}
