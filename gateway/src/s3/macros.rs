//! Macros over the generated s3s input and output types, whose fields are named alike across
//! operations but share no trait.

/// The `x-amz-copy-source-if-*` conditions of a copy (CopyObject, UploadPartCopy) on its
/// source: a source that fails them is 412, even where a GET would answer 304.
macro_rules! check_copy_source {
    ($source:expr, $input:expr) => {
        check_conditions(
            &$source,
            $input.copy_source_if_match.as_ref(),
            $input.copy_source_if_none_match.as_ref(),
            $input.copy_source_if_modified_since.as_ref(),
            $input.copy_source_if_unmodified_since.as_ref(),
        )
        .map_err(|error| if *error.code() == S3ErrorCode::NotModified { s3_error!(PreconditionFailed) } else { error })?
    };
}

/// Whether a request grants access through `x-amz-grant-*` headers (refused: ACLs are disabled).
macro_rules! grants_in {
    ($input:expr) => {
        $input.grant_full_control.is_some() || $input.grant_read.is_some() || $input.grant_read_acp.is_some() || $input.grant_write_acp.is_some()
    };
}

/// Whether a write asks for object lock (a mode, a retention date or a legal hold), which no
/// bucket has (see `bucket_settings`).
macro_rules! object_lock_in {
    ($input:expr) => {
        $input.object_lock_mode.is_some() || $input.object_lock_retain_until_date.is_some() || $input.object_lock_legal_hold_status.is_some()
    };
}

/// The attributes a request sets (PutObject, CopyObject with REPLACE, CreateMultipartUpload).
macro_rules! attributes_of {
    ($input:expr) => {
        Attributes {
            content_type: $input.content_type,
            content_encoding: $input.content_encoding.and_then(|encoding| crate::s3::objects::stored_encoding(&encoding)),
            content_disposition: $input.content_disposition,
            content_language: $input.content_language,
            cache_control: $input.cache_control,
            metadata: $input.metadata.unwrap_or_default().into_iter().collect(),
            expires: $input.expires.as_ref().and_then(crate::s3::objects::stored_expires),
        }
    };
}

/// The headers GET and HEAD answer for an object: its attributes, ETag, dates, length,
/// checksums with their type, and parts count, plus the fields given.
macro_rules! object_output {
    ($output:ident, $record:expr, $length:expr, $checksums:expr, $parts_count:expr, { $($field:ident: $value:expr),* $(,)? }) => {{
        let record: ObjectRecord = $record;
        let (checksums, checksum_type): (Checksums, Option<ChecksumType>) = $checksums;
        $output {
            content_length: Some($length as i64),
            accept_ranges: Some("bytes".to_owned()),
            e_tag: Some(etag_of(&record)),
            last_modified: Some(timestamp(record.last_modified_ms)),
            // S3 answers this when the object was stored without one.
            content_type: Some(record.attributes.content_type.unwrap_or_else(|| "binary/octet-stream".to_owned())),
            content_encoding: record.attributes.content_encoding,
            content_disposition: record.attributes.content_disposition,
            content_language: record.attributes.content_language,
            cache_control: record.attributes.cache_control,
            metadata: Some(record.attributes.metadata.into_iter().collect()),
            expires: record.attributes.expires.as_deref().and_then(crate::s3::objects::served_expires),
            parts_count: $parts_count,
            checksum_crc32: checksums.crc32,
            checksum_crc32c: checksums.crc32c,
            checksum_sha1: checksums.sha1,
            checksum_sha256: checksums.sha256,
            checksum_crc64nvme: checksums.crc64nvme,
            checksum_type,
            $($field: $value,)*
            ..Default::default()
        }
    }};
}

/// The answer to a PutObject or UploadPart: the ETag and the checksums of what was stored.
macro_rules! write_output {
    ($output:ident, $etag:expr, $checksums:expr) => {{
        let checksums: Checksums = $checksums;
        $output {
            e_tag: Some(ETag::Strong($etag)),
            checksum_crc32: checksums.crc32,
            checksum_crc32c: checksums.crc32c,
            checksum_sha1: checksums.sha1,
            checksum_sha256: checksums.sha256,
            checksum_crc64nvme: checksums.crc64nvme,
            ..Default::default()
        }
    }};
}

/// The `x-amz-checksum-*` values a request's input carries (moved out of it).
macro_rules! checksums_in {
    ($input:expr) => {
        Checksums {
            crc32: $input.checksum_crc32,
            crc32c: $input.checksum_crc32c,
            sha1: $input.checksum_sha1,
            sha256: $input.checksum_sha256,
            crc64nvme: $input.checksum_crc64nvme,
        }
    };
}

/// The digests a PutObject or UploadPart request announces, in headers or trailers.
macro_rules! claimed_digests {
    ($input:expr, $request:expr) => {
        ClaimedDigests {
            content_md5: $input.content_md5,
            // (s3s reads `x-amz-checksum-algorithm` into the input, which SDKs do not send.)
            sdk_algorithm: $request.headers.get("x-amz-sdk-checksum-algorithm").map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned()),
            trailer_announced: $request.headers.contains_key("x-amz-trailer"),
            algorithm: $input.checksum_algorithm.map(|a| a.as_str().to_owned()).or(trailer_algorithm(&$request.headers)),
            checksums: checksums_in!($input),
            trailers: $request.trailing_headers,
        }
    };
}

/// The GET/HEAD preconditions of a request on the object it names (see `check_conditions`).
macro_rules! check_read_conditions {
    ($record:expr, $input:expr) => {
        check_conditions(
            &$record,
            $input.if_match.as_ref(),
            $input.if_none_match.as_ref(),
            $input.if_modified_since.as_ref(),
            $input.if_unmodified_since.as_ref(),
        )?
    };
}

/// The value of a check a write makes before reading its body; on failure the body is drained
/// first (see `drain`), so that the client gets the error answer.
macro_rules! before_body {
    ($check:expr, $body:expr) => {
        match $check {
            Ok(value) => value,
            Err(error) => {
                drain($body.take()).await;
                return Err(error);
            }
        }
    };
}
