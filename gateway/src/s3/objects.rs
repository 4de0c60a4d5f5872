//! Object operations: PUT (through ingest), GET and HEAD (through the reader, with their
//! conditions and ranges), GetObjectAttributes, and the deletes.

use super::*;

/// The most keys one DeleteObjects request may name (S3's limit).
const MAX_DELETE_KEYS: usize = 1000;

impl Gateway {
    pub(super) async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let span = tracing::info_span!("put_object", tenant = %tenant, bucket = %input.bucket, key = %input.key);
        async move {
            let mut input = input;
            let target = async {
                check_key(&input.key)?;
                check_write_acl(&tenant, input.acl.as_ref(), grants_in!(input))?;
                check_no_object_lock(object_lock_in!(input))?;
                limits::check_metadata(input.metadata.as_ref())?;
                limits::check_storage_class(input.storage_class.as_ref())?;
                tagging::check_no_tags(input.tagging.as_deref())?;
                limits::check_body_size(announced_size(&req.headers, input.content_length))?;
                // Refused before the body is stored, rather than at its commit.
                self.store.check_in_step().map_err(to_s3)?;
                self.ensure_bucket(&tenant, &input.bucket).await
            };
            before_body!(target.await, input.body);
            let expect = before_body!(WriteCondition::of(input.if_match.as_ref(), input.if_none_match.as_ref()), input.body);
            let claimed = claimed_digests!(input, req);
            before_body!(claimed.check_form(), input.body);
            let size_hint = announced_size(&req.headers, input.content_length);
            let _budget = self.store.admit_body(&tenant, size_hint).await.map_err(to_s3)?;
            let base_hint = self.base_hint(&tenant, input.metadata.as_ref());
            let ingested = self.ingest_body(&tenant, input.body, size_hint, &claimed, base_hint, BodyFrom::Client).await?;
            let attributes = attributes_of!(input);
            let record = self.commit(&tenant, &input.bucket, &input.key, ingested, attributes, expect.as_expect()).await?;
            let checksum_type = checksum_type_of(&record.checksums);
            let mut output = write_output!(PutObjectOutput, record.etag, record.checksums);
            output.checksum_type = checksum_type;
            Ok(S3Response::new(output))
        }
        .instrument(span)
        .await
    }

    pub(super) async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let span = tracing::info_span!("get_object", tenant = %tenant, bucket = %input.bucket, key = %input.key);
        async move {
            check_part_request(input.range.as_ref(), input.part_number)?;
            versions::check_version_id(input.version_id.as_deref())?;
            let record = self.find_object(&tenant, &input.bucket, &input.key).await?;
            check_read_conditions!(record, input);
            let range = requested_range(&record, input.range.as_ref(), input.part_number)?;
            let whole = range.is_none() || is_single_part(&record, input.part_number);
            let bytes = range.clone().unwrap_or(0..record.size);
            let content_range = content_range(range.as_ref(), record.size);
            // The pieces kept in the index and the first read from the upstream are in hand before
            // the answer starts: an upstream that cannot serve them gets the client a 5xx, not a
            // 200 cut short. Later failures end the body early.
            let mut first = reader::plan(&record, bytes.clone());
            let held_back = first.iter().take_while(|piece| matches!(piece, reader::Piece::Inline(_))).count() + 1;
            let rest = first.split_off(held_back.min(first.len()));
            let client = reader::Reader::Client { tenant: tenant.clone() };
            let first = reader::fetch_first(&self.store, first, &client).await.map_err(to_s3)?;
            let first = futures::stream::iter(first.into_iter().map(Ok::<_, std::io::Error>));
            let body = futures::StreamExt::chain(first, reader::stream(self.store.clone(), rest, client));
            tracing::info!(bytes = bytes.end - bytes.start, "serving");
            let checksums = match input.checksum_mode {
                Some(_) => answered_checksums(&record, whole, input.part_number),
                None => (Checksums::default(), None),
            };
            let parts_count = parts_count(&record, input.part_number);
            Ok(S3Response::new(object_output!(GetObjectOutput, record, bytes.end - bytes.start, checksums, parts_count, {
                body: Some(StreamingBlob::wrap(body)),
                content_range: content_range,
            })))
        }
        .instrument(span)
        .await
    }

    pub(super) async fn get_object_attributes(&self, req: S3Request<GetObjectAttributesInput>) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        versions::check_version_id(input.version_id.as_deref())?;
        let record = self.find_object(&tenant, &input.bucket, &input.key).await?;
        let mut output = object_attributes::answer(&record, &input.object_attributes, input.max_parts, input.part_number_marker);
        output.last_modified = Some(timestamp(record.last_modified_ms));
        Ok(S3Response::new(output))
    }

    pub(super) async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        check_part_request(input.range.as_ref(), input.part_number)?;
        versions::check_version_id(input.version_id.as_deref())?;
        let record = self.find_object(&tenant, &input.bucket, &input.key).await?;
        check_read_conditions!(record, input);
        let range = requested_range(&record, input.range.as_ref(), input.part_number)?;
        let whole = range.is_none() || is_single_part(&record, input.part_number);
        let length = range.as_ref().map_or(record.size, |range| range.end - range.start);
        // s3s answers every HEAD with 200; the server makes one with a Content-Range a 206.
        let content_range = content_range(range.as_ref(), record.size);
        let checksums = match input.checksum_mode {
            Some(_) => answered_checksums(&record, whole, input.part_number),
            None => (Checksums::default(), None),
        };
        let parts_count = parts_count(&record, input.part_number);
        let mut output = object_output!(HeadObjectOutput, record, length, checksums, parts_count, { content_range: content_range });
        // The `response-*` overrides of the query, which s3s applies to a GET's answer only.
        output.cache_control = input.response_cache_control.or(output.cache_control);
        output.content_disposition = input.response_content_disposition.or(output.content_disposition);
        output.content_encoding = input.response_content_encoding.or(output.content_encoding);
        output.content_language = input.response_content_language.or(output.content_language);
        output.content_type = input.response_content_type.or(output.content_type);
        output.expires = input.response_expires.or(output.expires);
        Ok(S3Response::new(output))
    }

    pub(super) async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        versions::check_version_id(input.version_id.as_deref())?;
        self.ensure_bucket(&tenant, &input.bucket).await?;
        let key = ObjectKey::new(&tenant, &input.bucket, &input.key);
        catalog::delete(&self.store, &key).await.map_err(to_s3)?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    pub(super) async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        self.ensure_bucket(&tenant, &input.bucket).await?;
        if input.delete.objects.is_empty() || input.delete.objects.len() > MAX_DELETE_KEYS {
            return Err(s3_error!(MalformedXML, "The XML you provided was not well-formed or did not validate against our published schema"));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for object in input.delete.objects {
            let key = ObjectKey::new(&tenant, &input.bucket, &object.key);
            let outcome = match versions::check_version_id(object.version_id.as_deref()) {
                Ok(()) => catalog::delete(&self.store, &key).await.map_err(|error| to_s3(error.context(format!("deleting {}", object.key)))),
                Err(refused) => Err(refused),
            };
            match outcome {
                Ok(_) if !quiet => deleted.push(DeletedObject { key: Some(object.key), version_id: object.version_id, ..Default::default() }),
                Ok(_) => {}
                Err(answer) => errors.push(Error {
                    key: Some(object.key),
                    version_id: object.version_id,
                    code: Some(answer.code().as_str().to_owned()),
                    message: answer.message().map(str::to_owned),
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput { deleted: Some(deleted), errors: Some(errors), ..Default::default() }))
    }
}

/// AWS answers a part number past the object's parts with 416 InvalidPartNumber.
fn invalid_part_number() -> S3Error {
    custom_error("InvalidPartNumber", hyper::StatusCode::RANGE_NOT_SATISFIABLE, "The requested partnumber is not satisfiable")
}

/// Refuses what S3 refuses before it looks the object up: a part number with a Range header,
/// and a part number out of S3's bounds (400 both, where a part past the object's is a 416).
fn check_part_request(range: Option<&Range>, part_number: Option<i32>) -> S3Result<()> {
    match part_number {
        Some(_) if range.is_some() => Err(s3_error!(InvalidRequest, "Cannot specify both Range header and partNumber query parameter")),
        Some(number) => limits::check_part_number(number),
        None => Ok(()),
    }
}

/// Whether a GET or HEAD asks for part 1 of an object not uploaded in parts: its whole.
fn is_single_part(record: &ObjectRecord, part_number: Option<i32>) -> bool {
    record.part_sizes.is_empty() && part_number == Some(1)
}

/// The byte range a GET or HEAD asks for, by a Range header or a part number (S3 answers part
/// 1 of an object not uploaded in parts as a range over it all); `None` for the whole object,
/// which is also what a range of an empty object that S3 does not refuse serves (`bytes=-1`).
fn requested_range(record: &ObjectRecord, range: Option<&Range>, part_number: Option<i32>) -> S3Result<Option<std::ops::Range<u64>>> {
    if let Some(number) = part_number {
        if record.part_sizes.is_empty() {
            return if number == 1 { Ok((record.size > 0).then_some(0..record.size)) } else { Err(invalid_part_number()) };
        }
        let index = usize::try_from(number - 1).map_err(|_| invalid_part_number())?;
        let size = *record.part_sizes.get(index).ok_or_else(invalid_part_number)?;
        let start: u64 = record.part_sizes[..index].iter().sum();
        return Ok(Some(start..start + size));
    }
    match range {
        Some(range) => {
            let bytes = range.check(record.size).map_err(|_| s3_error!(InvalidRange))?;
            Ok((record.size > 0).then_some(bytes))
        }
        None => Ok(None),
    }
}

/// The Content-Range of an answer of `range` of an object of `size` bytes; none for an empty
/// range (an empty part), which no Content-Range can state.
fn content_range(range: Option<&std::ops::Range<u64>>, size: u64) -> Option<String> {
    range.filter(|range| !range.is_empty()).map(|range| format!("bytes {}-{}/{size}", range.start, range.end - 1))
}

/// The parts count GET and HEAD report when a part was asked for (multipart objects only).
fn parts_count(record: &ObjectRecord, part_number: Option<i32>) -> Option<i32> {
    (!record.part_sizes.is_empty() && part_number.is_some()).then_some(record.part_sizes.len() as i32)
}

/// The Content-Encoding an object keeps: `aws-chunked` names how the request body was framed,
/// not the object, so S3 drops it (and stores no header when nothing else is left).
pub(super) fn stored_encoding(encoding: &str) -> Option<String> {
    let kept: Vec<&str> = encoding.split(',').map(str::trim).filter(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("aws-chunked")).collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// The Expires header as stored: the HTTP date, as S3 answers it back.
pub(super) fn stored_expires(expires: &s3s::dto::Timestamp) -> Option<String> {
    let mut text = Vec::new();
    expires.format(s3s::dto::TimestampFormat::HttpDate, &mut text).ok()?;
    String::from_utf8(text).ok()
}

/// The stored Expires header for an answer (a stored date that no longer parses is left out).
pub(super) fn served_expires(expires: &str) -> Option<s3s::dto::Timestamp> {
    s3s::dto::Timestamp::parse(s3s::dto::TimestampFormat::HttpDate, expires).ok()
}
