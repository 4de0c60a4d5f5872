//! CopyObject: the source read back through the reader and ingested again, so a copy is stored
//! like any write (and deduplicated against its source).

use super::*;

impl Gateway {
    pub(super) async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let CopySource::Bucket { bucket: source_bucket, key: source_key, version_id: source_version } = &input.copy_source else {
            return Err(s3_error!(NotImplemented, "access point copy sources are not supported"));
        };
        check_key(&input.key)?;
        versions::check_version_id(source_version.as_deref())?;
        check_write_acl(&tenant, input.acl.as_ref(), grants_in!(input))?;
        check_no_object_lock(object_lock_in!(input))?;
        let replace = match input.metadata_directive.as_ref().map(MetadataDirective::as_str) {
            None | Some(MetadataDirective::COPY) => false,
            Some(MetadataDirective::REPLACE) => true,
            Some(_) => return Err(s3_error!(InvalidArgument, "Unknown metadata directive.")),
        };
        if replace {
            limits::check_metadata(input.metadata.as_ref())?;
        }
        limits::check_storage_class(input.storage_class.as_ref())?;
        check_checksum_algorithm(input.checksum_algorithm.as_ref())?;
        // The source has no tags to copy; a new set is only taken with REPLACE.
        match input.tagging_directive.as_ref().map(TaggingDirective::as_str) {
            None | Some(TaggingDirective::COPY) => {}
            Some(TaggingDirective::REPLACE) => tagging::check_no_tags(input.tagging.as_deref())?,
            Some(_) => return Err(s3_error!(InvalidArgument, "Unknown tagging directive.")),
        }
        self.ensure_bucket(&tenant, &input.bucket).await?;
        let source = self.find_object(&tenant, source_bucket, source_key).await?;
        check_copy_source!(source, input);
        limits::check_copy_size(source.size)?;
        // S3 copies an object onto itself only to change its metadata or storage class (the
        // gateway keeps no class: such a copy writes the object again, as S3 does).
        let changes = replace || input.storage_class.is_some();
        if !changes && source_bucket.as_ref() == input.bucket.as_str() && source_key.as_ref() == input.key.as_str() {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes."
            ));
        }
        let attributes = if replace { attributes_of!(input) } else { source.attributes.clone() };
        let expect = WriteCondition::from_headers(&req.headers)?;
        let pieces = reader::plan(&source, 0..source.size);
        let body = StreamingBlob::wrap(reader::stream(self.store.clone(), pieces, reader::Reader::Gateway));
        // The copy keeps a checksum of the algorithm asked for, else of the source's, computed
        // anew over the whole copy, as S3 does.
        let asked = input.checksum_algorithm.as_ref().and_then(|algorithm| tensorgate_index::ChecksumAlgorithm::named(algorithm.as_str()));
        let kept = asked.or_else(|| tensorgate_index::ChecksumAlgorithm::ALL.into_iter().find(|algorithm| source.checksums.get(*algorithm).is_some()));
        let claimed = ClaimedDigests { algorithm: kept.map(|algorithm| algorithm.name().to_owned()), ..ClaimedDigests::default() };
        let ingested = self.ingest_body(&tenant, Some(body), Some(source.size), &claimed, None, BodyFrom::Store).await?;
        // A copy in one request is a new single-part object: its ETag is the MD5 of its bytes,
        // whatever the source's, and that is what it answers and serves.
        let record = self.commit(&tenant, &input.bucket, &input.key, ingested, attributes, expect.as_expect()).await?;
        let checksum_type = checksum_type_of(&record.checksums);
        let checksums = record.checksums;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(record.etag)),
                last_modified: Some(timestamp(record.last_modified_ms)),
                checksum_crc32: checksums.crc32,
                checksum_crc32c: checksums.crc32c,
                checksum_sha1: checksums.sha1,
                checksum_sha256: checksums.sha256,
                checksum_crc64nvme: checksums.crc64nvme,
                checksum_type,
            }),
            ..Default::default()
        }))
    }
}

/// The bytes `x-amz-copy-source-range: bytes=first-last` names of an object of `size` bytes.
pub(super) fn copy_source_range(range: Option<&str>, size: u64) -> S3Result<std::ops::Range<u64>> {
    let Some(range) = range else { return Ok(0..size) };
    let bounds = range.strip_prefix("bytes=").and_then(|bounds| bounds.split_once('-'));
    let parsed = bounds.and_then(|(first, last)| Some((first.parse::<u64>().ok()?, last.parse::<u64>().ok()?)));
    match parsed {
        Some((first, last)) if first <= last && last < size => Ok(first..last + 1),
        Some(_) => Err(s3_error!(InvalidArgument, "Range specified is not valid for source object of size: {size}")),
        None => Err(s3_error!(
            InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy"
        )),
    }
}
