//! The digests a client sends with a body (Content-MD5, x-amz-checksum-* in headers or
//! trailers), which the body must match.

use tensorgate_index::ChecksumAlgorithm;

use super::*;

/// Digests a client sent with a body (headers or trailers), to check against what arrived.
#[derive(Default)]
pub(super) struct ClaimedDigests {
    pub(super) content_md5: Option<String>,
    /// The algorithm named: by `x-amz-checksum-algorithm` or the trailer (as s3s reads them),
    /// else by the trailer announced.
    pub(super) algorithm: Option<String>,
    /// `x-amz-sdk-checksum-algorithm` alone, which S3 holds to the checksum sent.
    pub(super) sdk_algorithm: Option<String>,
    /// Whether a checksum trailer is announced (`x-amz-trailer`).
    pub(super) trailer_announced: bool,
    pub(super) checksums: Checksums,
    pub(super) trailers: Option<s3s::TrailingHeaders>,
}

impl ClaimedDigests {
    /// The checksums to compute of the body: those claimed or named, and `kept` (the one a
    /// multipart upload keeps for every part).
    pub(super) fn selection(&self, kept: Option<ChecksumAlgorithm>) -> ChecksumSelection {
        let named = self.algorithm.as_deref().and_then(ChecksumAlgorithm::named);
        let wanted = ChecksumAlgorithm::ALL
            .into_iter()
            .filter(|algorithm| self.checksums.get(*algorithm).is_some() || named == Some(*algorithm) || kept == Some(*algorithm));
        ChecksumSelection(wanted.collect())
    }

    /// Refuses, before the body is read, what S3 refuses of the digests' form: a Content-MD5
    /// that is no MD5 (400 InvalidDigest); more than one `x-amz-checksum-*` header, an
    /// `x-amz-sdk-checksum-algorithm` naming another algorithm than the header sent or none
    /// S3 knows, or naming one with neither a checksum header nor a trailer (400
    /// InvalidRequest, with S3's messages).
    pub(super) fn check_form(&self) -> S3Result<()> {
        self.content_md5.as_deref().map(claimed_md5).transpose()?;
        let mut sent = ChecksumAlgorithm::ALL.into_iter().filter(|algorithm| self.checksums.get(*algorithm).is_some());
        let (header, another) = (sent.next(), sent.next());
        if another.is_some() {
            return Err(s3_error!(InvalidRequest, "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."));
        }
        let Some(named) = self.sdk_algorithm.as_deref() else { return Ok(()) };
        let known = ChecksumAlgorithm::named(named);
        if known.is_none() || header.is_some_and(|header| known != Some(header)) {
            return Err(s3_error!(InvalidRequest, "Value for x-amz-sdk-checksum-algorithm header is invalid."));
        }
        if header.is_none() && !self.trailer_announced {
            return Err(s3_error!(
                InvalidRequest,
                "x-amz-sdk-checksum-algorithm specified, but no corresponding x-amz-checksum-* or x-amz-trailer headers were found."
            ));
        }
        Ok(())
    }

    pub(super) fn verify(&self, ingested: &Ingested) -> S3Result<()> {
        if let Some(content_md5) = &self.content_md5 {
            let claimed = claimed_md5(content_md5)?;
            if ingested.md5.as_ref().map(|md5| &md5[..]) != Some(&claimed[..]) {
                return Err(s3_error!(BadDigest));
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
                return Err(s3_error!(BadDigest, "The {} you specified did not match the calculated checksum.", algorithm.name()));
            }
        }
        Ok(())
    }
}

/// The digest a Content-MD5 header names: not the base64 of 16 bytes is no MD5 at all
/// (InvalidDigest, where a digest of other bytes is BadDigest).
fn claimed_md5(content_md5: &str) -> S3Result<Vec<u8>> {
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, content_md5)
        .ok()
        .filter(|digest| digest.len() == 16)
        .ok_or_else(|| s3_error!(InvalidDigest))
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

/// The checksum type S3 reports with stored checksums: COMPOSITE for the `…-N` values of an
/// object uploaded by parts, FULL_OBJECT otherwise; none without checksums.
pub(super) fn checksum_type_of(checksums: &Checksums) -> Option<ChecksumType> {
    let mut values = ChecksumAlgorithm::ALL.into_iter().filter_map(|algorithm| checksums.get(algorithm).as_deref());
    let first = values.next()?;
    let composite = first.contains('-');
    Some(ChecksumType::from_static(if composite { ChecksumType::COMPOSITE } else { ChecksumType::FULL_OBJECT }))
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
