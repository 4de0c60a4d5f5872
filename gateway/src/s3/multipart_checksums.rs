//! The checksums of multipart uploads: the one an upload asks for at CreateMultipartUpload, the
//! object's at completion (of the whole object, a CRC combined from the parts' CRCs, or a
//! composite: the digest of the parts' digests, `…-N`), and which of them an answer carries.
//! CRCs are computed and combined with crc-fast, the crate the AWS SDK uses for them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use crc_fast::CrcAlgorithm;
use tensorgate_index::{ChecksumAlgorithm, UploadChecksum};

use super::*;

/// The checksum an upload created with `algorithm` and `kind` keeps: S3's default type is
/// FULL_OBJECT for CRC64NVME and COMPOSITE for the others. `None` without an algorithm.
pub(super) fn upload_checksum(algorithm: Option<&s3s::dto::ChecksumAlgorithm>, kind: Option<&ChecksumType>) -> Option<UploadChecksum> {
    let algorithm = ChecksumAlgorithm::named(algorithm?.as_str())?;
    let full_object = match kind {
        Some(kind) => kind.as_str() == ChecksumType::FULL_OBJECT,
        None => algorithm == ChecksumAlgorithm::Crc64Nvme,
    };
    Some(UploadChecksum { algorithm, full_object })
}

/// The algorithm and type of the checksum an upload keeps, as S3 answers them.
pub(super) fn kept_checksum_answer(kept: Option<UploadChecksum>) -> (Option<s3s::dto::ChecksumAlgorithm>, Option<ChecksumType>) {
    let Some(kept) = kept else { return (None, None) };
    let kind = if kept.full_object { ChecksumType::FULL_OBJECT } else { ChecksumType::COMPOSITE };
    (Some(s3s::dto::ChecksumAlgorithm::from(kept.algorithm.name().to_owned())), Some(ChecksumType::from_static(kind)))
}

/// Refuses a checksum algorithm S3 does not know (`x-amz-checksum-algorithm` of
/// CreateMultipartUpload and CopyObject), with S3's message.
pub(super) fn check_checksum_algorithm(algorithm: Option<&s3s::dto::ChecksumAlgorithm>) -> S3Result<()> {
    match algorithm {
        Some(algorithm) if ChecksumAlgorithm::named(algorithm.as_str()).is_none() => Err(s3_error!(
            InvalidRequest,
            "Checksum algorithm provided is unsupported. Please try again with any of the valid types: [CRC32, CRC32C, CRC64NVME, SHA1, SHA256]"
        )),
        _ => Ok(()),
    }
}

/// Refuses the checksum requests S3 refuses on CreateMultipartUpload: an algorithm it does
/// not know, a type it does not know or without an algorithm, and the pairs that do not go
/// together (SHA checksums have no full-object form, CRC64NVME no composite one).
pub(super) fn check_upload_checksum(algorithm: Option<&s3s::dto::ChecksumAlgorithm>, kind: Option<&ChecksumType>) -> S3Result<()> {
    check_checksum_algorithm(algorithm)?;
    let Some(kind) = kind else { return Ok(()) };
    if ![ChecksumType::COMPOSITE, ChecksumType::FULL_OBJECT].contains(&kind.as_str()) {
        return Err(s3_error!(InvalidRequest, "Value for x-amz-checksum-type header is invalid."));
    }
    let Some(algorithm) = algorithm else {
        return Err(s3_error!(InvalidRequest, "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header."));
    };
    let named = ChecksumAlgorithm::named(algorithm.as_str());
    let sha = matches!(named, Some(ChecksumAlgorithm::Sha1 | ChecksumAlgorithm::Sha256));
    let refused = (sha && kind.as_str() == ChecksumType::FULL_OBJECT) || (named == Some(ChecksumAlgorithm::Crc64Nvme) && kind.as_str() == ChecksumType::COMPOSITE);
    if refused {
        return Err(s3_error!(
            InvalidRequest,
            "The {} checksum type cannot be used with the {} checksum algorithm.",
            kind.as_str(),
            algorithm.as_str().to_ascii_lowercase()
        ));
    }
    Ok(())
}

/// The checksums of an object completed from `parts`: with the checksum the upload asked for,
/// that one (when every part has it); without, the SHA-1 and SHA-256 composites of the parts
/// that all carried one, which S3 keeps as it keeps them.
pub(super) fn completed_checksums(asked: Option<UploadChecksum>, parts: &[&PartRecord]) -> Checksums {
    let mut checksums = Checksums::default();
    match asked {
        Some(UploadChecksum { algorithm, full_object: true }) => *checksums.get_mut(algorithm) = full_object(algorithm, parts),
        Some(UploadChecksum { algorithm, full_object: false }) => *checksums.get_mut(algorithm) = composite(algorithm, parts),
        None => {
            for algorithm in [ChecksumAlgorithm::Sha1, ChecksumAlgorithm::Sha256] {
                *checksums.get_mut(algorithm) = composite(algorithm, parts);
            }
        }
    }
    checksums
}

/// The checksums kept with each part of a completed object; empty when no part had any.
pub(super) fn part_checksums(parts: &[&PartRecord]) -> Vec<Checksums> {
    if parts.iter().all(|part| part.checksums.is_empty()) {
        return Vec::new();
    }
    parts.iter().map(|part| part.checksums.clone()).collect()
}

/// Each part's `algorithm` checksum, decoded; `None` if one lacks it or does not decode.
fn part_digests(algorithm: ChecksumAlgorithm, parts: &[&PartRecord]) -> Option<Vec<Vec<u8>>> {
    parts.iter().map(|part| BASE64.decode(part.checksums.get(algorithm).as_deref()?).ok()).collect()
}

/// The digest of the parts' digests, followed by `-<part count>`.
fn composite(algorithm: ChecksumAlgorithm, parts: &[&PartRecord]) -> Option<String> {
    let digests = part_digests(algorithm, parts)?.concat();
    let digest = match algorithm {
        ChecksumAlgorithm::Sha1 => s3s::crypto::Sha1::checksum(&digests).to_vec(),
        ChecksumAlgorithm::Sha256 => s3s::crypto::Sha256::checksum(&digests).to_vec(),
        crc => crc_bytes(crc, crc_fast::checksum(crc_algorithm(crc)?, &digests)),
    };
    Some(format!("{}-{}", BASE64.encode(digest), parts.len()))
}

/// The CRC of the whole object, combined from the parts' CRCs and sizes.
fn full_object(algorithm: ChecksumAlgorithm, parts: &[&PartRecord]) -> Option<String> {
    let crc = crc_algorithm(algorithm)?;
    let mut combined: Option<u64> = None;
    for (digest, part) in part_digests(algorithm, parts)?.iter().zip(parts) {
        let value = digest.iter().fold(0u64, |value, byte| value << 8 | u64::from(*byte));
        combined = Some(match combined {
            None => value,
            Some(before) => crc_fast::checksum_combine(crc, before, value, part.size),
        });
    }
    Some(BASE64.encode(crc_bytes(algorithm, combined?)))
}

fn crc_algorithm(algorithm: ChecksumAlgorithm) -> Option<CrcAlgorithm> {
    match algorithm {
        ChecksumAlgorithm::Crc32 => Some(CrcAlgorithm::Crc32IsoHdlc),
        ChecksumAlgorithm::Crc32c => Some(CrcAlgorithm::Crc32Iscsi),
        ChecksumAlgorithm::Crc64Nvme => Some(CrcAlgorithm::Crc64Nvme),
        ChecksumAlgorithm::Sha1 | ChecksumAlgorithm::Sha256 => None,
    }
}

/// A CRC as S3 writes it before base64: big-endian, 8 bytes for CRC64NVME, else 4.
fn crc_bytes(algorithm: ChecksumAlgorithm, value: u64) -> Vec<u8> {
    match algorithm {
        ChecksumAlgorithm::Crc64Nvme => value.to_be_bytes().to_vec(),
        _ => (value as u32).to_be_bytes().to_vec(),
    }
}

/// Refuses a completion whose checksums differ from those of the parts chosen (400
/// BadDigest, as S3): the object's, when the gateway keeps one of that algorithm (a SHA
/// checksum it always keeps), and each part's, when the part was stored with one (400
/// InvalidPart).
pub(super) fn check_completion_checksums(claimed: &Checksums, kept: &Checksums, requested: &[CompletedPart], chosen: &[&PartRecord]) -> S3Result<()> {
    for (part, record) in requested.iter().zip(chosen) {
        let claimed = checksums_in!(part.clone());
        for algorithm in ChecksumAlgorithm::ALL {
            if let (Some(claimed), Some(kept)) = (claimed.get(algorithm), record.checksums.get(algorithm)) {
                if claimed != kept {
                    return Err(s3_error!(InvalidPart, "The {} of part {} does not match", algorithm.name().to_ascii_lowercase(), part.part_number.unwrap_or(0)));
                }
            }
        }
    }
    for algorithm in ChecksumAlgorithm::ALL {
        let (Some(claimed), kept) = (claimed.get(algorithm), kept.get(algorithm)) else { continue };
        let sha = matches!(algorithm, ChecksumAlgorithm::Sha1 | ChecksumAlgorithm::Sha256);
        let differs = match kept {
            Some(kept) => kept != claimed,
            None => sha,
        };
        if differs {
            return Err(s3_error!(BadDigest, "The {} you specified did not match the calculated checksum.", algorithm.name().to_ascii_lowercase()));
        }
    }
    Ok(())
}

/// The checksums a GET or HEAD answers in checksum mode, and their type: the part's (with the
/// object's type) for a part of an object uploaded by parts with checksums, the object's when
/// the answer is the `whole` object, none for a range.
pub(super) fn answered_checksums(record: &ObjectRecord, whole: bool, part_number: Option<i32>) -> (Checksums, Option<ChecksumType>) {
    let object_type = checksum_type_of(&record.checksums);
    let part = part_number.and_then(|number| usize::try_from(number - 1).ok()).and_then(|index| record.part_checksums.get(index));
    match part {
        Some(part) => (part.clone(), object_type.or_else(|| checksum_type_of(part))),
        None if whole => (record.checksums.clone(), object_type),
        None => (Checksums::default(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(size: u64, algorithm: ChecksumAlgorithm, bytes: &[u8]) -> PartRecord {
        let mut checksums = Checksums::default();
        let crc = crc_fast::checksum(crc_algorithm(algorithm).unwrap(), bytes);
        *checksums.get_mut(algorithm) = Some(BASE64.encode(crc_bytes(algorithm, crc)));
        PartRecord { blob: String::new(), size, etag: String::new(), last_modified_ms: 0, checksums, encoded: None }
    }

    #[test]
    fn a_full_object_crc_is_the_crc_of_the_whole_object() {
        let body: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        for algorithm in [ChecksumAlgorithm::Crc32, ChecksumAlgorithm::Crc32c, ChecksumAlgorithm::Crc64Nvme] {
            let parts = [part(4000, algorithm, &body[..4000]), part(0, algorithm, &[]), part(6000, algorithm, &body[4000..])];
            let whole = crc_fast::checksum(crc_algorithm(algorithm).unwrap(), &body);
            let chosen: Vec<&PartRecord> = parts.iter().collect();
            assert_eq!(full_object(algorithm, &chosen), Some(BASE64.encode(crc_bytes(algorithm, whole))), "{algorithm:?}");
        }
    }

    #[test]
    fn the_checksums_of_s3_tests_are_found() {
        // ceph/s3-tests, test_multipart_use_cksum_helper_crc32: three parts of 5 MiB of A, B, C.
        let parts: Vec<PartRecord> = [b'A', b'B', b'C'].iter().map(|byte| part(5 << 20, ChecksumAlgorithm::Crc32, &vec![*byte; 5 << 20])).collect();
        let chosen: Vec<&PartRecord> = parts.iter().collect();
        let asked = Some(UploadChecksum { algorithm: ChecksumAlgorithm::Crc32, full_object: true });
        let checksums = completed_checksums(asked, &chosen);
        assert_eq!(chosen[0].checksums.crc32.as_deref(), Some("JRTCyQ=="));
        assert_eq!(checksums.crc32.as_deref(), Some("WgDhBQ=="));
    }
}
