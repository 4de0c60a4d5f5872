//! The digests a client sends with a body (Content-MD5, x-amz-checksum-* in headers or
//! trailers), which the body must match.

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
        let algorithm = self.algorithm.as_deref().unwrap_or_default().to_ascii_uppercase();
        let named = |name: &str| algorithm == name;
        ChecksumSelection {
            crc32: self.checksums.crc32.is_some() || named("CRC32"),
            crc32c: self.checksums.crc32c.is_some() || named("CRC32C"),
            sha1: self.checksums.sha1.is_some() || named("SHA1"),
            sha256: self.checksums.sha256.is_some() || named("SHA256"),
            crc64nvme: self.checksums.crc64nvme.is_some() || named("CRC64NVME"),
        }
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
            let value = |name: &str| trailers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            claimed.crc32 = claimed.crc32.or(value("x-amz-checksum-crc32"));
            claimed.crc32c = claimed.crc32c.or(value("x-amz-checksum-crc32c"));
            claimed.sha1 = claimed.sha1.or(value("x-amz-checksum-sha1"));
            claimed.sha256 = claimed.sha256.or(value("x-amz-checksum-sha256"));
            claimed.crc64nvme = claimed.crc64nvme.or(value("x-amz-checksum-crc64nvme"));
        }
        let computed = checksums_of(&ingested.checksums);
        let pairs = [
            (&claimed.crc32, &computed.crc32),
            (&claimed.crc32c, &computed.crc32c),
            (&claimed.sha1, &computed.sha1),
            (&claimed.sha256, &computed.sha256),
            (&claimed.crc64nvme, &computed.crc64nvme),
        ];
        for (claimed, computed) in pairs {
            if claimed.is_some() && claimed != computed {
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
