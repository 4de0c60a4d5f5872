//! The digests a client sends with a body (Content-MD5, x-amz-checksum-* in headers or
//! trailers), which the body must match.

use tensorgate_index::ChecksumAlgorithm;

use super::*;

/// Digests a client sent with a body (headers or trailers), to check against what arrived.
#[derive(Default)]
pub(super) struct ClaimedDigests {
    pub(super) content_md5: Option<String>,
    pub(super) algorithm: Option<String>,
    pub(super) checksums: Checksums,
    pub(super) trailers: Option<s3s::TrailingHeaders>,
}

impl ClaimedDigests {
    pub(super) fn selection(&self) -> ChecksumSelection {
        let named = self.algorithm.as_deref().and_then(ChecksumAlgorithm::named);
        let wanted = ChecksumAlgorithm::ALL.into_iter().filter(|algorithm| self.checksums.get(*algorithm).is_some() || named == Some(*algorithm));
        ChecksumSelection(wanted.collect())
    }

    pub(super) fn verify(&self, ingested: &Ingested) -> S3Result<()> {
        if let Some(content_md5) = &self.content_md5 {
            let claimed = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, content_md5)
                .map_err(|_| s3_error!(InvalidDigest))?;
            if claimed != ingested.md5 {
                return Err(s3_error!(BadDigest, "Content-MD5 does not match the body"));
            }
        }
        let mut claimed = self.checksums.clone();
        if let Some(trailers) = self.trailers.as_ref().and_then(|t| t.take()) {
            for algorithm in ChecksumAlgorithm::ALL {
                let trailer = trailers.get(algorithm.header()).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let value = claimed.get_mut(algorithm);
                *value = value.take().or(trailer);
            }
        }
        let computed = checksums_of(&ingested.checksums);
        for algorithm in ChecksumAlgorithm::ALL {
            let claimed = claimed.get(algorithm);
            if claimed.is_some() && claimed != computed.get(algorithm) {
                return Err(s3_error!(BadDigest, "x-amz-checksum does not match the body"));
            }
        }
        Ok(())
    }
}

pub(super) fn checksums_of(checksum: &Checksum) -> Checksums {
    Checksums {
        crc32: checksum.checksum_crc32.clone(),
        crc32c: checksum.checksum_crc32c.clone(),
        sha1: checksum.checksum_sha1.clone(),
        sha256: checksum.checksum_sha256.clone(),
        crc64nvme: checksum.checksum_crc64nvme.clone(),
    }
}

/// The checksums S3 keeps for an object completed from `parts` (its COMPOSITE type): for SHA-1
/// and SHA-256, which S3 keeps only as composites for multipart uploads, the digest of the parts'
/// digests followed by `-<part count>`, when every part carried that checksum. (CRC composites
/// depend on the checksum type the upload was created with, which is not kept: none is given.)
pub(super) fn composite_checksums(parts: &[&PartRecord]) -> Checksums {
    let mut composite = Checksums::default();
    for algorithm in [ChecksumAlgorithm::Sha1, ChecksumAlgorithm::Sha256] {
        let decode = |part: &&PartRecord| {
            let value = part.checksums.get(algorithm).as_deref()?;
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, value).ok()
        };
        let Some(digests) = parts.iter().map(decode).collect::<Option<Vec<Vec<u8>>>>() else { continue };
        let digests = digests.concat();
        if digests.is_empty() {
            continue;
        }
        let digest = match algorithm {
            ChecksumAlgorithm::Sha1 => s3s::crypto::Sha1::checksum(&digests).to_vec(),
            _ => s3s::crypto::Sha256::checksum(&digests).to_vec(),
        };
        let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest);
        *composite.get_mut(algorithm) = Some(format!("{encoded}-{}", parts.len()));
    }
    composite
}

/// Refuses a completion whose whole-object checksums differ from those of the parts chosen
/// (400 BadDigest, as S3): a SHA checksum must match the composite of the parts', which S3
/// always keeps; a CRC is checked when the gateway keeps one (docs/compatibility.md).
pub(super) fn check_completion_checksums(claimed: &Checksums, kept: &Checksums) -> S3Result<()> {
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

/// The checksum type S3 reports with stored checksums: COMPOSITE for the `…-N` values of an
/// object uploaded by parts, FULL_OBJECT otherwise; none without checksums.
pub(super) fn checksum_type_of(checksums: &Checksums) -> Option<ChecksumType> {
    let mut values = ChecksumAlgorithm::ALL.into_iter().filter_map(|algorithm| checksums.get(algorithm).as_deref());
    let first = values.next()?;
    let composite = first.contains('-');
    Some(ChecksumType::from_static(if composite { ChecksumType::COMPOSITE } else { ChecksumType::FULL_OBJECT }))
}

/// Refuses the pairs of checksum algorithm and type S3 refuses on CreateMultipartUpload: SHA
/// checksums have no full-object form, CRC64NVME no composite one.
pub(super) fn check_checksum_type(algorithm: Option<&s3s::dto::ChecksumAlgorithm>, kind: Option<&ChecksumType>) -> S3Result<()> {
    let (Some(algorithm), Some(kind)) = (algorithm, kind) else { return Ok(()) };
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

/// The size a client announced: Content-Length, or the decoded length of an aws-chunked body.
pub(super) fn announced_size(headers: &hyper::HeaderMap, content_length: Option<i64>) -> Option<u64> {
    headers
        .get("x-amz-decoded-content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .or(to_u64(content_length))
}

pub(super) fn trailer_algorithm(headers: &hyper::HeaderMap) -> Option<String> {
    let trailer = headers.get("x-amz-trailer")?.to_str().ok()?;
    trailer.strip_prefix("x-amz-checksum-").map(str::to_ascii_uppercase)
}
