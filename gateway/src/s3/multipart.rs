//! Multipart uploads: the parts of a model encoded as they come (`engine::ingest::parts`),
//! other parts (and copied ones) stored as they came, each in its own blob; completed into an
//! object that the packer re-encodes later unless every part was encoded where it belongs.

use super::*;
use super::domains::Domains;
use super::listing::Entry;
use crate::engine::ingest::FirstPart;
use crate::metrics::CompletionLabels;

impl Gateway {
    pub(super) async fn create_multipart_upload(&self, req: S3Request<CreateMultipartUploadInput>) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        check_key(&input.key)?;
        check_write_acl(&tenant, input.acl.as_ref(), grants_in!(input))?;
        check_no_object_lock(object_lock_in!(input))?;
        check_upload_checksum(input.checksum_algorithm.as_ref(), input.checksum_type.as_ref())?;
        limits::check_metadata(input.metadata.as_ref())?;
        limits::check_storage_class(input.storage_class.as_ref())?;
        tagging::check_no_tags(input.tagging.as_deref())?;
        self.ensure_bucket(&tenant, &input.bucket).await?;
        let upload_id = new_id();
        let checksum = upload_checksum(input.checksum_algorithm.as_ref(), input.checksum_type.as_ref());
        let record = UploadRecord {
            tenant: tenant.to_string(),
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            initiated_ms: now_ms(),
            attributes: attributes_of!(input),
            checksum,
        };
        catalog::create_upload(&self.store, &upload_id, &record).await.map_err(to_s3)?;
        let (checksum_algorithm, checksum_type) = kept_checksum_answer(checksum);
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            // As S3 names them (the algorithm's name is taken in any case).
            checksum_algorithm,
            checksum_type,
            ..Default::default()
        }))
    }

    pub(super) async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let span = tracing::info_span!("upload_part", tenant = %tenant, bucket = %input.bucket, key = %input.key, part = input.part_number);
        async move {
            let mut input = input;
            let target = async {
                let upload = self.find_upload(&tenant, &input.upload_id, &input.bucket, &input.key).await?;
                limits::check_part_number(input.part_number)?;
                limits::check_body_size(announced_size(&req.headers, input.content_length))?;
                Ok(upload)
            };
            let upload = before_body!(target.await, input.body);
            let claimed = claimed_digests!(input, req);
            before_body!(claimed.check_form(), input.body);
            let size_hint = announced_size(&req.headers, input.content_length);
            // Before the budget: a part waiting for part 1 holds none of it.
            let mode = ingest::part_mode(&self.store, &input.upload_id, input.part_number as u32).await.map_err(to_s3)?;
            // Later parts wait for an encoder, before the budget too (holding none of it while
            // they wait). Part 1 does not: the later parts of its upload wait for its header,
            // and it is encoded as a PUT is.
            let _encoder = match mode {
                IngestMode::LaterPart(_) => Some(self.store.admission.encoder(&tenant).await.map_err(internal)?),
                _ => None,
            };
            let _budget = self.store.admit_body(&tenant, size_hint).await.map_err(to_s3)?;
            let kept = upload.checksum.map(|kept| kept.algorithm);
            let base_hint = upload.attributes.metadata.get(ingest::BASE_HINT).and_then(|hint| ingest::named_base(&self.store, &tenant, hint));
            let options = IngestOptions { size_hint, mode, checksums: claimed.selection(kept), base_hint, body_from: BodyFrom::Client };
            let (part, ingested) = self.store_part(&tenant, input.body, &claimed, options).await?;
            self.record_part(&tenant, &input.upload_id, input.part_number, &part, ingested).await?;
            tracing::info!(tenant = %upload.tenant, size = part.size, "part stored");
            Ok(S3Response::new(write_output!(UploadPartOutput, part.etag, part.checksums)))
        }
        .instrument(span)
        .await
    }

    /// A part copied from a stored object (or a range of it) takes the part path: a model
    /// copied by parts is stored as one uploaded by parts.
    pub(super) async fn upload_part_copy(&self, req: S3Request<UploadPartCopyInput>) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let CopySource::Bucket { bucket: source_bucket, key: source_key, version_id: source_version } = &input.copy_source else {
            return Err(s3_error!(NotImplemented, "access point copy sources are not supported"));
        };
        versions::check_version_id(source_version.as_deref())?;
        let upload = self.find_upload(&tenant, &input.upload_id, &input.bucket, &input.key).await?;
        limits::check_part_number(input.part_number)?;
        let source = self.find_object(&tenant, source_bucket, source_key).await?;
        check_copy_source!(source, input);
        let range = copy_source_range(input.copy_source_range.as_deref(), source.size)?;
        let len = range.end - range.start;
        limits::check_copy_size(len)?;
        let _budget = self.store.admit_body(&tenant, Some(len)).await.map_err(to_s3)?;
        let body = StreamingBlob::wrap(reader::stream(self.store.clone(), reader::plan(&source, range), reader::Reader::Gateway));
        let kept = upload.checksum.map(|kept| kept.algorithm);
        let claimed = ClaimedDigests::default();
        let options = IngestOptions { size_hint: Some(len), mode: IngestMode::Plain, checksums: claimed.selection(kept), base_hint: None, body_from: BodyFrom::Store };
        let (part, ingested) = self.store_part(&tenant, Some(body), &claimed, options).await?;
        self.record_part(&tenant, &input.upload_id, input.part_number, &part, ingested).await?;
        tracing::info!(size = part.size, "part copied");
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(part.etag)),
                last_modified: Some(timestamp(part.last_modified_ms)),
                checksum_crc32: part.checksums.crc32,
                checksum_crc32c: part.checksums.crc32c,
                checksum_sha1: part.checksums.sha1,
                checksum_sha256: part.checksums.sha256,
                checksum_crc64nvme: part.checksums.crc64nvme,
            }),
            ..Default::default()
        }))
    }

    pub(super) async fn complete_multipart_upload(&self, req: S3Request<CompleteMultipartUploadInput>) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let location = object_location(&req.headers, &self.store.config, &input.bucket, &input.key);
        let requested = input.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        if requested.is_empty() {
            return Err(s3_error!(MalformedXML));
        }
        let upload = match self.find_upload(&tenant, &input.upload_id, &input.bucket, &input.key).await {
            Ok(upload) => upload,
            Err(error) if *error.code() == S3ErrorCode::NoSuchUpload => {
                // A completion repeated (its answer lost, say) gets the object it made, as S3 answers.
                let key = ObjectKey::new(&tenant, &input.bucket, &input.key);
                let current = self.store.index.object(&key).map_err(internal)?;
                return match current.filter(|record| Some(&record.etag) == completed_etag(&requested).as_ref()) {
                    Some(record) => Ok(S3Response::new(completed_output(record, input.bucket, input.key, location))),
                    None => Err(error),
                };
            }
            Err(error) => return Err(error),
        };
        let stored: BTreeMap<u32, PartRecord> =
            catalog::parts(&self.store, &tenant, &input.upload_id).await.map_err(to_s3)?.into_iter().collect();
        let mut chosen = Vec::with_capacity(requested.len());
        let mut numbers = Vec::with_capacity(requested.len());
        let mut previous = 0;
        for part in &requested {
            let number = part.part_number.unwrap_or(0);
            if number <= previous {
                return Err(s3_error!(InvalidPartOrder));
            }
            previous = number;
            let record = stored.get(&(number as u32)).ok_or_else(|| s3_error!(InvalidPart))?;
            if part.e_tag.as_ref().is_some_and(|etag| etag.value() != record.etag) {
                return Err(s3_error!(InvalidPart));
            }
            chosen.push(record);
            numbers.push(number as u32);
        }
        if chosen[..chosen.len() - 1].iter().any(|part| part.size < MIN_PART_SIZE) {
            return Err(s3_error!(EntityTooSmall));
        }
        let record = multipart_record(&upload, &chosen)?;
        check_completion_checksums(&checksums_in!(input), &record.checksums, &requested, &chosen)?;
        let key = ObjectKey::new(&tenant, &input.bucket, &input.key);
        let expect = WriteCondition::of(input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let encoded = ingest::placed_as_guessed(&chosen);
        let numbered: Vec<(u32, &PartRecord)> = numbers.into_iter().zip(chosen.iter().copied()).collect();
        catalog::complete_upload(&self.store, &input.upload_id, &key, &record, &numbered, !encoded, expect.as_expect()).await.map_err(to_s3)?;
        self.store.first_parts.forget(&input.upload_id);
        let stored = if encoded { "encoded" } else { "for_packer" };
        self.store.metrics.multipart_completions.get_or_create(&CompletionLabels { stored }).inc();
        if encoded {
            // Only savings depend on it: the object is stored.
            if let Err(error) = ingest::register_completed(&self.store, &tenant, &record, &chosen) {
                tracing::warn!(error = format!("{error:#}"), "the tensors of the completed upload are not base candidates");
            }
        }
        if let Err(error) = catalog::forget_upload(&self.store, &tenant, &input.upload_id).await {
            tracing::warn!(error = format!("{error:#}"), "the ended upload's markers stay upstream");
        }
        tracing::info!(bucket = %input.bucket, key = %input.key, size = record.size, parts = chosen.len(), encoded, "multipart upload completed");
        Ok(S3Response::new(completed_output(record, input.bucket, input.key, location)))
    }

    pub(super) async fn abort_multipart_upload(&self, req: S3Request<AbortMultipartUploadInput>) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        self.find_upload(&tenant, &input.upload_id, &input.bucket, &input.key).await?;
        catalog::forget_upload(&self.store, &tenant, &input.upload_id).await.map_err(to_s3)?;
        self.store.first_parts.forget(&input.upload_id);
        self.store.index.abort_upload(&input.upload_id, now_ms()).map_err(|error| match error {
            IndexError::Refused(Refusal::NoSuchUpload) => s3_error!(NoSuchUpload),
            other => internal(other),
        })?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    pub(super) async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let upload = self.find_upload(&tenant, &input.upload_id, &input.bucket, &input.key).await?;
        let marker = input.part_number_marker.unwrap_or(0).max(0) as u32;
        let max_parts = listing::page_size(input.max_parts, "max-parts")?;
        let all: Vec<(u32, PartRecord)> = catalog::parts(&self.store, &tenant, &input.upload_id)
            .await
            .map_err(to_s3)?
            .into_iter()
            .filter(|(number, _)| *number > marker)
            .collect();
        let is_truncated = all.len() > max_parts;
        let parts: Vec<Part> = all
            .into_iter()
            .take(max_parts)
            .map(|(number, part)| Part {
                part_number: Some(number as i32),
                e_tag: Some(ETag::Strong(part.etag)),
                size: Some(part.size as i64),
                last_modified: Some(timestamp(part.last_modified_ms)),
                checksum_crc32: part.checksums.crc32,
                checksum_crc32c: part.checksums.crc32c,
                checksum_sha1: part.checksums.sha1,
                checksum_sha256: part.checksums.sha256,
                checksum_crc64nvme: part.checksums.crc64nvme,
            })
            .collect();
        let next_marker = parts.last().and_then(|p| p.part_number);
        let (checksum_algorithm, checksum_type) = kept_checksum_answer(upload.checksum);
        Ok(S3Response::new(ListPartsOutput {
            initiator: Some(bucket_config::initiator(&tenant)),
            owner: Some(bucket_config::owner(&tenant)),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            checksum_algorithm,
            checksum_type,
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max_parts as i32),
            is_truncated: Some(is_truncated),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: if is_truncated { next_marker } else { None },
            parts: Some(parts),
            ..Default::default()
        }))
    }

    pub(super) async fn list_multipart_uploads(&self, req: S3Request<ListMultipartUploadsInput>) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        self.ensure_bucket(&tenant, &input.bucket).await?;
        let encoded = url_encoding::wanted(input.encoding_type.as_ref())?;
        let max_uploads = listing::page_size(input.max_uploads, "max-uploads")?;
        let prefix = input.prefix.as_deref().unwrap_or_default();
        let key_marker = input.key_marker.as_deref().filter(|marker| !marker.is_empty());
        // In key order, then by id: a page resumes after the key marker, or, with an upload id
        // marker too, after that id among the uploads of the marker's key.
        let id_marker = input.upload_id_marker.as_deref().filter(|marker| !marker.is_empty());
        let after_markers = |id: &str, key: &str| match (key_marker, id_marker) {
            (Some(marker), Some(id_marker)) => key > marker || (key == marker && id > id_marker),
            (Some(marker), None) => key > marker,
            (None, _) => true,
        };
        let uploads = catalog::list_uploads(&self.store, &tenant, &input.bucket)
            .await
            .map_err(to_s3)?
            .into_iter()
            .filter(|(id, upload)| upload.key.starts_with(prefix) && after_markers(id, &upload.key))
            .map(|(id, upload)| Ok((upload.key.clone(), (id, upload))));
        let page = listing::page(uploads, prefix, input.delimiter.as_deref(), key_marker, max_uploads)?;
        let next_key_marker = page.is_truncated.then(|| page.last().map(str::to_owned)).flatten();
        let next_upload_id_marker = match page.entries.last() {
            Some(Entry::Item(_, (id, _))) if page.is_truncated => Some(id.clone()),
            _ => None,
        };
        let (mut uploads, mut common_prefixes) = (Vec::new(), Vec::new());
        for entry in page.entries {
            match entry {
                Entry::Prefix(rolled) => common_prefixes.push(CommonPrefix { prefix: url_encoding::encode_if(encoded, Some(rolled)) }),
                Entry::Item(key, (id, upload)) => {
                    let (checksum_algorithm, checksum_type) = kept_checksum_answer(upload.checksum);
                    uploads.push(MultipartUpload {
                        key: url_encoding::encode_if(encoded, Some(key)),
                        upload_id: Some(id),
                        initiated: Some(timestamp(upload.initiated_ms)),
                        initiator: Some(bucket_config::initiator(&tenant)),
                        owner: Some(bucket_config::owner(&tenant)),
                        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                        checksum_algorithm,
                        checksum_type,
                    })
                }
            }
        }
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: url_encoding::encode_if(encoded, input.prefix),
            delimiter: url_encoding::encode_if(encoded, input.delimiter.filter(|d| !d.is_empty())),
            // The markers are always answered, empty when none was given.
            key_marker: url_encoding::encode_if(encoded, Some(input.key_marker.unwrap_or_default())),
            upload_id_marker: Some(input.upload_id_marker.unwrap_or_default()),
            max_uploads: Some(max_uploads as i32),
            is_truncated: Some(page.is_truncated),
            next_key_marker: url_encoding::encode_if(encoded, next_key_marker),
            next_upload_id_marker,
            uploads: Some(uploads),
            common_prefixes: Some(common_prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn find_upload(&self, tenant: &str, upload_id: &str, bucket: &str, key: &str) -> S3Result<UploadRecord> {
        self.ensure_bucket(tenant, bucket).await?;
        let upload = catalog::find_upload(&self.store, tenant, upload_id).await.map_err(to_s3)?.ok_or_else(|| s3_error!(NoSuchUpload))?;
        if upload.tenant != tenant || upload.bucket != bucket || upload.key != key {
            return Err(s3_error!(NoSuchUpload));
        }
        Ok(upload)
    }

    /// Stores a part body as `options` say (encoded, or as it came in its own upstream blob),
    /// with its checksums: those the client sent or named, and the one the upload keeps.
    async fn store_part(&self, tenant: &str, body: Option<StreamingBlob>, claimed: &ClaimedDigests, options: IngestOptions) -> S3Result<(PartRecord, Ingested)> {
        let body = body.unwrap_or_else(|| StreamingBlob::wrap(futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>()));
        let size_hint = options.size_hint;
        let placement = match &options.mode {
            IngestMode::LaterPart(placement) => Some(placement.clone()),
            _ => None,
        };
        let is_part = options.mode.is_part();
        let mut ingested = ingest::ingest(&self.store, tenant, body, options).await.map_err(to_s3)?.ok_or_else(|| internal("ingest declined a part"))?;
        if let Some(announced) = size_hint.filter(|size| *size != ingested.size) {
            let got = ingested.size;
            ingested.discard(&self.store).await;
            return Err(to_s3(BodyError::WrongLength { announced, got }.into()));
        }
        if let Err(error) = claimed.verify(&ingested) {
            ingested.discard(&self.store).await;
            return Err(error);
        }
        let blob = ingested.segments.iter().find_map(|segment| match segment {
            Segment::Blob { key, .. } => Some(key.clone()),
            _ => None,
        });
        // Part 1 is cut by its own header's layout, a later part by its placement's.
        let layout_id = |segments: &[Segment], size: u64| match (&placement, segments.first()) {
            (Some(placement), _) => placement.layout_id.clone(),
            (None, Some(Segment::Inline(header))) => FirstPart::Model { header: Arc::new(header.clone()), size }.layout_id().unwrap_or_default(),
            (None, _) => String::new(),
        };
        let encoded = (is_part && blob.is_none()).then(|| EncodedPart {
            offset: placement.as_ref().map_or(0, |placement| placement.offset),
            layout_id: layout_id(&ingested.segments, ingested.size),
            segments: ingested.segments.clone(),
            sketches: std::mem::take(&mut ingested.sketches),
        });
        let Some(md5) = ingested.md5 else {
            ingested.discard(&self.store).await;
            return Err(internal("a part was ingested without its MD5"));
        };
        let part = PartRecord {
            blob: blob.unwrap_or_default(),
            size: ingested.size,
            etag: hex::encode(md5),
            last_modified_ms: now_ms(),
            checksums: checksums_of(&ingested.checksums),
            encoded,
        };
        Ok((part, ingested))
    }

    /// Records a stored part of an upload; if the upload ended meanwhile, what it wrote is deleted.
    async fn record_part(&self, tenant: &str, upload_id: &str, number: i32, part: &PartRecord, ingested: Ingested) -> S3Result<()> {
        let recorded = catalog::record_part(&self.store, tenant, upload_id, number as u32, part, &ingested.new_chunks, ingested.new_pack.as_ref()).await;
        let Err(error) = recorded else { return Ok(()) };
        if matches!(error.downcast_ref::<IndexError>(), Some(IndexError::Refused(Refusal::NoSuchUpload))) {
            ingested.discard(&self.store).await;
        }
        Err(to_s3(error))
    }
}

/// Parts of a multipart upload other than the last must hold at least this many bytes.
const MIN_PART_SIZE: u64 = 5 << 20;

/// The ETag an upload completed with the parts `requested` (as the client lists them) has; `None`
/// when a part's ETag is missing or not an MD5.
fn completed_etag(requested: &[CompletedPart]) -> Option<String> {
    let mut digests = Vec::with_capacity(requested.len() * 16);
    for part in requested {
        let digest = hex::decode(part.e_tag.as_ref()?.value()).ok().filter(|digest| digest.len() == 16)?;
        digests.extend_from_slice(&digest);
    }
    let mut md5 = Md5::new();
    md5.update(&digests);
    Some(format!("{}-{}", hex::encode(md5.finalize()), requested.len()))
}

/// The answer to a CompleteMultipartUpload that made (or had made) `record`.
fn completed_output(record: ObjectRecord, bucket: String, key: String, location: Option<String>) -> CompleteMultipartUploadOutput {
    let checksum_type = checksum_type_of(&record.checksums);
    let mut output = write_output!(CompleteMultipartUploadOutput, record.etag, record.checksums);
    output.checksum_type = checksum_type;
    output.bucket = Some(bucket);
    output.key = Some(key);
    output.location = location;
    output
}

/// The URL of an object, as S3 answers it in `Location`: on the host the client addressed, the
/// bucket in the host where the request was virtual-host style (by the configured domains, as
/// requests are routed), else in the path; `https` behind a proxy that says so.
fn object_location(headers: &hyper::HeaderMap, config: &crate::config::Config, bucket: &str, key: &str) -> Option<String> {
    use s3s::host::S3Host;
    let host = headers.get(hyper::header::HOST)?.to_str().ok()?;
    let forwarded_tls = headers.get("x-forwarded-proto").is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"));
    let scheme = if config.tls.is_some() || forwarded_tls { "https" } else { "http" };
    let key = url_encoding::encode(key);
    let virtual_host = Domains::new(&config.domains).parse_host_header(host).ok().is_some_and(|parsed| parsed.bucket() == Some(bucket));
    Some(if virtual_host { format!("{scheme}://{host}/{key}") } else { format!("{scheme}://{host}/{bucket}/{key}") })
}

/// The object a completed multipart upload makes: its parts' segments, in order.
fn multipart_record(upload: &UploadRecord, parts: &[&PartRecord]) -> S3Result<ObjectRecord> {
    let mut digests = Vec::with_capacity(parts.len() * 16);
    for part in parts {
        // The gateway wrote each part's ETag as MD5 hex: anything else is a fault of ours.
        digests.extend_from_slice(&hex::decode(&part.etag).map_err(|_| internal(format!("a stored part has the ETag {:?}", part.etag)))?);
    }
    let mut md5 = Md5::new();
    md5.update(&digests);
    let etag = format!("{}-{}", hex::encode(md5.finalize()), parts.len());
    Ok(ObjectRecord {
        version: new_id(),
        size: parts.iter().map(|p| p.size).sum(),
        etag,
        last_modified_ms: now_ms(),
        attributes: upload.attributes.clone(),
        checksums: completed_checksums(upload.checksum, parts),
        part_sizes: parts.iter().map(|p| p.size).collect(),
        segments: parts.iter().flat_map(|part| part.segments()).filter(|segment| !segment.is_empty()).collect(),
        part_checksums: part_checksums(parts),
    })
}
