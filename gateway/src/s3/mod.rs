//! The S3 API. Each operation states what it does with the index and the upstream; the
//! shared steps (finding a bucket, checking conditions, committing an ingest) are helpers.

pub mod auth;
pub mod bucket_config;
pub mod domains;
pub mod errors;
pub mod object_attributes;
pub mod url_encoding;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use s3s::dto::*;
use s3s::crypto::{Checksum as _, Md5};
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};
use tensorgate_index::{Attributes, BucketDeletion, Checksums, Expect, IndexError, ObjectKey, ObjectRecord, PartRecord, Segment, UploadRecord};
use tracing::Instrument;

use crate::engine::Store;
use crate::engine::catalog;
use crate::engine::ingest::BodyError;
use crate::engine::ingest::{self, BodyFrom, ChecksumSelection, IngestMode, IngestOptions, Ingested, ModelTensors};
use crate::engine::reader;
use crate::engine::shared::MaybePublished;
use crate::ids::{new_id, now_ms};
use crate::s3::auth::Keys;
use crate::s3::errors::{internal, to_s3};

/// User metadata naming the base model of an upload (`x-amz-meta-tensorgate-base: bucket/key`).
const BASE_HINT: &str = "tensorgate-base";

/// Parts of a multipart upload other than the last must hold at least this many bytes.
const MIN_PART_SIZE: u64 = 5 << 20;

/// The S3 face of a [`Store`].
#[derive(Clone)]
pub struct Gateway {
    store: Arc<Store>,
    keys: Arc<Keys>,
}

impl Gateway {
    pub fn new(store: Arc<Store>, keys: Arc<Keys>) -> Gateway {
        Gateway { store, keys }
    }

    /// The tenant whose key signed the request. Unsigned requests never reach here (s3s refuses
    /// them when a key ring is set), but are refused again if they do.
    fn tenant<T>(&self, req: &S3Request<T>) -> S3Result<String> {
        let access_key = req.credentials.as_ref().map(|c| c.access_key.as_str()).ok_or_else(|| s3_error!(AccessDenied))?;
        self.keys.current().tenant(access_key).map(str::to_owned).ok_or_else(|| s3_error!(InvalidAccessKeyId))
    }

    /// Checks that the tenant has the bucket; with a shared upstream, a bucket another gateway
    /// created is brought in from its marker.
    async fn ensure_bucket(&self, tenant: &str, bucket: &str) -> S3Result<()> {
        if self.store.index.bucket(tenant, bucket).map_err(internal)?.is_some() {
            return Ok(());
        }
        if self.store.config.shared_upstream && catalog::adopt_bucket(&self.store, tenant, bucket).await.map_err(to_s3)? {
            return Ok(());
        }
        Err(s3_error!(NoSuchBucket))
    }

    /// The object's record; with a shared upstream, checked against its manifest upstream first,
    /// which another gateway may have written, replaced or removed.
    async fn find_object(&self, tenant: &str, bucket: &str, key: &str) -> S3Result<ObjectRecord> {
        self.ensure_bucket(tenant, bucket).await?;
        let key = ObjectKey::new(tenant, bucket, key);
        let record = if self.store.config.shared_upstream {
            catalog::refresh(&self.store, &key).await.map_err(to_s3)?
        } else {
            self.store.index.object(&key).map_err(internal)?
        };
        record.ok_or_else(|| s3_error!(NoSuchKey))
    }

    /// Reads a body to the end and verifies the digests the client sent with it.
    async fn ingest_body(
        &self,
        tenant: &str,
        body: Option<StreamingBlob>,
        size_hint: Option<u64>,
        claimed: &ClaimedDigests,
        base_hint: Option<Arc<ModelTensors>>,
        body_from: BodyFrom,
    ) -> S3Result<Ingested> {
        let body = body.unwrap_or_else(|| StreamingBlob::wrap(futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>()));
        let options = IngestOptions { size_hint, mode: IngestMode::Sniff, checksums: claimed.selection(), base_hint, body_from };
        let ingested = ingest::ingest(&self.store, tenant, body, options)
            .await
            .map_err(to_s3)?
            .ok_or_else(|| internal("ingest declined a client write"))?;
        if let Some(announced) = size_hint.filter(|size| *size != ingested.size) {
            let got = ingested.size;
            ingested.discard(&self.store).await;
            return Err(match body_from {
                BodyFrom::Client => to_s3(BodyError::WrongLength { announced, got }.into()),
                BodyFrom::Store => internal(format!("a stored object read back as {got} bytes where its record says {announced}")),
            });
        }
        if let Err(error) = claimed.verify(&ingested) {
            ingested.discard(&self.store).await;
            return Err(error);
        }
        Ok(ingested)
    }

    /// The tensors of the model a client names as the base with `x-amz-meta-tensorgate-base:
    /// bucket/key` (in its own tenant). A hint that names nothing usable is ignored.
    fn base_hint(&self, tenant: &str, metadata: Option<&Metadata>) -> Option<Arc<ModelTensors>> {
        let (bucket, key) = metadata?.get(BASE_HINT)?.split_once('/')?;
        let record = self.store.index.object(&ObjectKey::new(tenant, bucket, key)).ok()??;
        ingest::model_tensors(&record).map(Arc::new)
    }

    /// Makes an ingested body the object at `key`, with the given attributes, if the object
    /// there meets `expect` (the client's conditions).
    async fn commit(&self, tenant: &str, bucket: &str, key: &str, ingested: Ingested, attributes: Attributes, expect: Expect<'_>) -> S3Result<ObjectRecord> {
        let record = ObjectRecord {
            version: new_id(),
            size: ingested.size,
            etag: hex::encode(ingested.md5),
            last_modified_ms: now_ms(),
            attributes,
            checksums: checksums_of(&ingested.checksums),
            part_sizes: Vec::new(),
            segments: ingested.segments.clone(),
        };
        let object_key = ObjectKey::new(tenant, bucket, key);
        let committed =
            catalog::commit(&self.store, &object_key, &record, &ingested.new_chunks, ingested.new_pack.as_ref(), expect).await;
        if let Err(error) = committed {
            // What a manifest that may have landed names must stay (an orphan is collected later).
            if error.downcast_ref::<MaybePublished>().is_none() {
                ingested.discard(&self.store).await;
            }
            return Err(to_s3(error));
        }
        // The write is committed: failing to offer its tensors as bases costs savings, not it.
        if let Err(error) = self.store.register_tensors(tenant, &ingested.tensors) {
            tracing::warn!(error = format!("{error:#}"), "stored, but its tensors were not registered as base candidates");
        }
        tracing::info!(size = record.size, segments = record.segments.len(), model = ingested.is_model(), "stored");
        Ok(record)
    }
}

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

/// The attributes a request sets (PutObject, CopyObject with REPLACE, CreateMultipartUpload).
macro_rules! attributes_of {
    ($input:expr) => {
        Attributes {
            content_type: $input.content_type,
            content_encoding: $input.content_encoding,
            content_disposition: $input.content_disposition,
            content_language: $input.content_language,
            cache_control: $input.cache_control,
            metadata: $input.metadata.unwrap_or_default().into_iter().collect(),
        }
    };
}

/// The headers GET and HEAD answer for an object: its attributes, ETag, dates, length,
/// checksums and parts count, plus the fields given.
macro_rules! object_output {
    ($output:ident, $record:expr, $length:expr, $checksums:expr, $parts_count:expr, { $($field:ident: $value:expr),* $(,)? }) => {{
        let record: ObjectRecord = $record;
        let checksums: Checksums = $checksums;
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
            parts_count: $parts_count,
            checksum_crc32: checksums.crc32,
            checksum_crc32c: checksums.crc32c,
            checksum_sha1: checksums.sha1,
            checksum_sha256: checksums.sha256,
            checksum_crc64nvme: checksums.crc64nvme,
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

/// The digests a PutObject or UploadPart request announces, in headers or trailers.
macro_rules! claimed_digests {
    ($input:expr, $request:expr) => {
        ClaimedDigests {
            content_md5: $input.content_md5,
            algorithm: $input.checksum_algorithm.map(|a| a.as_str().to_owned()).or(trailer_algorithm(&$request.headers)),
            checksums: Checksums {
                crc32: $input.checksum_crc32,
                crc32c: $input.checksum_crc32c,
                sha1: $input.checksum_sha1,
                sha256: $input.checksum_sha256,
                crc64nvme: $input.checksum_crc64nvme,
            },
            trailers: $request.trailing_headers,
        }
    };
}

/// Digests a client sent with a body (headers or trailers), to check against what arrived.
#[derive(Default)]
struct ClaimedDigests {
    content_md5: Option<String>,
    algorithm: Option<String>,
    checksums: Checksums,
    trailers: Option<s3s::TrailingHeaders>,
}

impl ClaimedDigests {
    fn selection(&self) -> ChecksumSelection {
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

    fn verify(&self, ingested: &Ingested) -> S3Result<()> {
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

fn checksums_of(checksum: &Checksum) -> Checksums {
    Checksums {
        crc32: checksum.checksum_crc32.clone(),
        crc32c: checksum.checksum_crc32c.clone(),
        sha1: checksum.checksum_sha1.clone(),
        sha256: checksum.checksum_sha256.clone(),
        crc64nvme: checksum.checksum_crc64nvme.clone(),
    }
}

/// Request bytes read and dropped at most when refusing a body.
const DRAIN_LIMIT: usize = 16 << 20;

/// Reads and drops (up to [`DRAIN_LIMIT`] bytes, for 5 s at most) the body of a write refused
/// before it was read: a server that closes with request bytes unread makes the kernel reset
/// the connection, and the client can lose the error answer itself. Reading also lets a client
/// waiting on `Expect: 100-continue` go on.
async fn drain(body: Option<StreamingBlob>) {
    let Some(mut body) = body else { return };
    let reading = async {
        let mut read = 0;
        while let Some(Ok(piece)) = futures::StreamExt::next(&mut body).await {
            read += piece.len();
            if read > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), reading).await;
}

/// AWS answers a part number past the object's parts with 416 InvalidPartNumber.
fn invalid_part_number() -> S3Error {
    let mut error = S3Error::with_message(S3ErrorCode::Custom("InvalidPartNumber".into()), "The requested partnumber is not satisfiable");
    error.set_status_code(hyper::StatusCode::RANGE_NOT_SATISFIABLE);
    error
}

fn timestamp(ms: i64) -> Timestamp {
    Timestamp::from(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
}

fn seconds(timestamp: &Timestamp) -> i64 {
    time::OffsetDateTime::from(timestamp.clone()).unix_timestamp()
}

fn etag_of(record: &ObjectRecord) -> ETag {
    ETag::Strong(record.etag.clone())
}

/// A client's condition on the object a write replaces (`If-Match`, `If-None-Match: *`).
enum WriteCondition {
    None,
    Absent,
    ETag(Option<String>),
}

impl WriteCondition {
    /// From the parsed headers; `If-None-Match` with an ETag, or both headers, are not
    /// something S3 does on writes.
    fn of(if_match: Option<&ETagCondition>, if_none_match: Option<&ETagCondition>) -> S3Result<WriteCondition> {
        match (if_match, if_none_match) {
            (None, None) => Ok(WriteCondition::None),
            (None, Some(ETagCondition::Any)) => Ok(WriteCondition::Absent),
            (Some(ETagCondition::Any), None) => Ok(WriteCondition::ETag(None)),
            (Some(ETagCondition::ETag(etag)), None) => Ok(WriteCondition::ETag(Some(etag.value().to_owned()))),
            _ => Err(s3_error!(NotImplemented, "A header you provided implies functionality that is not implemented")),
        }
    }

    /// From the raw headers of a request whose input does not carry them (CopyObject).
    fn from_headers(headers: &hyper::HeaderMap) -> S3Result<WriteCondition> {
        let parse = |name: &str| -> S3Result<Option<ETagCondition>> {
            let Some(value) = headers.get(name) else { return Ok(None) };
            ETagCondition::parse_http_header(value.as_bytes()).map(Some).map_err(|_| s3_error!(InvalidArgument, "Invalid {name} header"))
        };
        WriteCondition::of(parse("if-match")?.as_ref(), parse("if-none-match")?.as_ref())
    }

    fn as_expect(&self) -> Expect<'_> {
        match self {
            WriteCondition::None => Expect::Any,
            WriteCondition::Absent => Expect::Absent,
            WriteCondition::ETag(etag) => Expect::ETag(etag.as_deref()),
        }
    }
}

fn etag_matches(condition: &ETagCondition, record: &ObjectRecord) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(etag) => etag.value() == record.etag,
    }
}

/// The GET/HEAD preconditions, in the order and with the outcomes AWS documents.
fn check_conditions(
    record: &ObjectRecord,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let modified = record.last_modified_ms / 1000;
    match if_match {
        Some(condition) if !etag_matches(condition, record) => return Err(s3_error!(PreconditionFailed)),
        None if if_unmodified_since.is_some_and(|t| modified > seconds(t)) => {
            return Err(s3_error!(PreconditionFailed))
        }
        _ => {}
    }
    match if_none_match {
        Some(condition) if etag_matches(condition, record) => Err(not_modified(record)),
        None if if_modified_since.is_some_and(|t| modified <= seconds(t)) => Err(not_modified(record)),
        _ => Ok(()),
    }
}

/// 304 Not Modified, with the ETag and Last-Modified a cache revalidates against, as S3 sends.
fn not_modified(record: &ObjectRecord) -> S3Error {
    let mut error = s3_error!(NotModified);
    let mut headers = hyper::HeaderMap::new();
    if let Ok(etag) = hyper::header::HeaderValue::from_str(&format!("\"{}\"", record.etag)) {
        headers.insert(hyper::header::ETAG, etag);
    }
    let modified = time::OffsetDateTime::from(std::time::UNIX_EPOCH + std::time::Duration::from_millis(record.last_modified_ms.max(0) as u64));
    let http_date = time::format_description::well_known::Rfc2822;
    if let Some(value) = modified.format(&http_date).ok().and_then(|date| hyper::header::HeaderValue::from_str(&date.replace("+0000", "GMT")).ok()) {
        headers.insert(hyper::header::LAST_MODIFIED, value);
    }
    error.set_headers(headers);
    error
}

/// Bucket names S3 refuses beyond the general rules s3s checks: reserved prefixes and
/// suffixes, and a period beside a period or a hyphen.
fn reserved_bucket_name(name: &str) -> bool {
    const PREFIXES: [&str; 3] = ["xn--", "sthree-", "amzn-s3-demo-"];
    const SUFFIXES: [&str; 5] = ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"];
    PREFIXES.iter().any(|prefix| name.starts_with(prefix))
        || SUFFIXES.iter().any(|suffix| name.ends_with(suffix))
        || ["..", ".-", "-."].iter().any(|pair| name.contains(pair))
}

/// Keys S3 refuses: empty, over 1024 bytes, or holding a NUL (which the index reserves).
fn check_key(key: &str) -> S3Result<()> {
    if key.is_empty() || key.contains('\0') {
        return Err(s3_error!(InvalidArgument, "invalid object key"));
    }
    if key.len() > 1024 {
        return Err(s3_error!(KeyTooLongError));
    }
    Ok(())
}

/// The byte range a GET asks for: a Range header or a part number.
fn requested_range(record: &ObjectRecord, range: Option<&Range>, part_number: Option<i32>) -> S3Result<Option<std::ops::Range<u64>>> {
    if let Some(number) = part_number {
        if record.part_sizes.is_empty() {
            return if number == 1 { Ok(None) } else { Err(invalid_part_number()) };
        }
        let index = usize::try_from(number - 1).map_err(|_| invalid_part_number())?;
        let size = *record.part_sizes.get(index).ok_or_else(invalid_part_number)?;
        let start: u64 = record.part_sizes[..index].iter().sum();
        return Ok(Some(start..start + size));
    }
    match range {
        Some(range) => Ok(Some(range.check(record.size).map_err(|_| s3_error!(InvalidRange))?)),
        None => Ok(None),
    }
}

/// The parts count GET and HEAD report when a part was asked for (multipart objects only).
fn parts_count(record: &ObjectRecord, part_number: Option<i32>) -> Option<i32> {
    (!record.part_sizes.is_empty() && part_number.is_some()).then_some(record.part_sizes.len() as i32)
}

fn to_u64(value: Option<i64>) -> Option<u64> {
    value.and_then(|v| u64::try_from(v).ok())
}

/// The size a client announced: Content-Length, or the decoded length of an aws-chunked body.
fn announced_size(headers: &hyper::HeaderMap, content_length: Option<i64>) -> Option<u64> {
    headers
        .get("x-amz-decoded-content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .or(to_u64(content_length))
}

fn trailer_algorithm(headers: &hyper::HeaderMap) -> Option<String> {
    let trailer = headers.get("x-amz-trailer")?.to_str().ok()?;
    trailer.strip_prefix("x-amz-checksum-").map(str::to_ascii_uppercase)
}

#[async_trait]
impl S3 for Gateway {
    // The settings tensorgate does not offer, answered as S3 answers for a private bucket
    // that never had them (see bucket_config).

    async fn get_bucket_versioning(&self, req: S3Request<GetBucketVersioningInput>) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        self.ensure_bucket(&self.tenant(&req)?, &req.input.bucket).await?;
        Ok(S3Response::new(bucket_config::versioning()))
    }

    async fn put_bucket_versioning(&self, req: S3Request<PutBucketVersioningInput>) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        self.ensure_bucket(&self.tenant(&req)?, &req.input.bucket).await?;
        bucket_config::check_versioning(&req.input.versioning_configuration)?;
        Ok(S3Response::new(PutBucketVersioningOutput::default()))
    }

    async fn get_bucket_acl(&self, req: S3Request<GetBucketAclInput>) -> S3Result<S3Response<GetBucketAclOutput>> {
        let tenant = self.tenant(&req)?;
        self.ensure_bucket(&tenant, &req.input.bucket).await?;
        Ok(S3Response::new(bucket_config::bucket_acl(&tenant)))
    }

    async fn put_bucket_acl(&self, req: S3Request<PutBucketAclInput>) -> S3Result<S3Response<PutBucketAclOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        self.ensure_bucket(&tenant, &input.bucket).await?;
        let grants = grants_in!(input) || input.grant_write.is_some();
        bucket_config::check_acl(&tenant, input.acl.as_ref().map(BucketCannedACL::as_str), input.access_control_policy.as_ref(), grants)?;
        Ok(S3Response::new(PutBucketAclOutput::default()))
    }

    async fn get_object_acl(&self, req: S3Request<GetObjectAclInput>) -> S3Result<S3Response<GetObjectAclOutput>> {
        let tenant = self.tenant(&req)?;
        self.find_object(&tenant, &req.input.bucket, &req.input.key).await?;
        Ok(S3Response::new(bucket_config::object_acl(&tenant)))
    }

    async fn put_object_acl(&self, req: S3Request<PutObjectAclInput>) -> S3Result<S3Response<PutObjectAclOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        self.find_object(&tenant, &input.bucket, &input.key).await?;
        let grants = grants_in!(input);
        bucket_config::check_acl(&tenant, input.acl.as_ref().map(ObjectCannedACL::as_str), input.access_control_policy.as_ref(), grants)?;
        Ok(S3Response::new(PutObjectAclOutput::default()))
    }

    async fn get_bucket_cors(&self, req: S3Request<GetBucketCorsInput>) -> S3Result<S3Response<GetBucketCorsOutput>> {
        self.ensure_bucket(&self.tenant(&req)?, &req.input.bucket).await?;
        Err(s3_error!(NoSuchCORSConfiguration, "The CORS configuration does not exist"))
    }

    async fn get_bucket_policy(&self, req: S3Request<GetBucketPolicyInput>) -> S3Result<S3Response<GetBucketPolicyOutput>> {
        self.ensure_bucket(&self.tenant(&req)?, &req.input.bucket).await?;
        Err(s3_error!(NoSuchBucketPolicy, "The bucket policy does not exist"))
    }

    async fn get_bucket_policy_status(&self, req: S3Request<GetBucketPolicyStatusInput>) -> S3Result<S3Response<GetBucketPolicyStatusOutput>> {
        self.ensure_bucket(&self.tenant(&req)?, &req.input.bucket).await?;
        Err(s3_error!(NoSuchBucketPolicy, "The bucket policy does not exist"))
    }

    async fn get_public_access_block(&self, req: S3Request<GetPublicAccessBlockInput>) -> S3Result<S3Response<GetPublicAccessBlockOutput>> {
        self.ensure_bucket(&self.tenant(&req)?, &req.input.bucket).await?;
        Ok(S3Response::new(bucket_config::public_access_block()))
    }

    async fn get_bucket_ownership_controls(
        &self,
        req: S3Request<GetBucketOwnershipControlsInput>,
    ) -> S3Result<S3Response<GetBucketOwnershipControlsOutput>> {
        self.ensure_bucket(&self.tenant(&req)?, &req.input.bucket).await?;
        Ok(S3Response::new(bucket_config::ownership_controls()))
    }

    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let tenant = self.tenant(&req)?;
        let buckets = self.store.index.list_buckets(&tenant).map_err(internal)?;
        let buckets = buckets
            .into_iter()
            .map(|(name, record)| Bucket { name: Some(name), creation_date: Some(timestamp(record.created_ms)), bucket_region: None })
            .collect();
        Ok(S3Response::new(ListBucketsOutput { buckets: Some(buckets), owner: Some(bucket_config::owner(&tenant)), ..Default::default() }))
    }

    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        let tenant = self.tenant(&req)?;
        let bucket = &req.input.bucket;
        if reserved_bucket_name(bucket) {
            return Err(s3_error!(InvalidBucketName, "The specified bucket is not valid."));
        }
        let created = Ok(S3Response::new(CreateBucketOutput { location: Some(format!("/{bucket}")) }));
        // Creating a bucket one owns already succeeds, as S3 answers in us-east-1.
        if self.store.index.bucket(&tenant, bucket).map_err(internal)?.is_some() {
            return created;
        }
        let owned = self.store.index.list_buckets(&tenant).map_err(internal)?.len();
        if self.keys.current().max_buckets(&tenant).is_some_and(|limit| owned >= limit) {
            return Err(s3_error!(TooManyBuckets));
        }
        catalog::create_bucket(&self.store, &tenant, bucket).await.map_err(to_s3)?;
        created
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        let tenant = self.tenant(&req)?;
        self.ensure_bucket(&tenant, &req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(&self, req: S3Request<GetBucketLocationInput>) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let tenant = self.tenant(&req)?;
        self.ensure_bucket(&tenant, &req.input.bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        let tenant = self.tenant(&req)?;
        match catalog::delete_bucket(&self.store, &tenant, &req.input.bucket).await.map_err(to_s3)? {
            BucketDeletion::Deleted => Ok(S3Response::new(DeleteBucketOutput::default())),
            BucketDeletion::NotEmpty => Err(s3_error!(BucketNotEmpty)),
            BucketDeletion::Missing => Err(s3_error!(NoSuchBucket)),
        }
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let span = tracing::info_span!("put_object", tenant = %tenant, bucket = %input.bucket, key = %input.key);
        async move {
            let mut input = input;
            let target = async {
                check_key(&input.key)?;
                check_write_acl(&tenant, input.acl.as_ref(), grants_in!(input))?;
                self.ensure_bucket(&tenant, &input.bucket).await
            };
            if let Err(error) = target.await {
                drain(input.body.take()).await;
                return Err(error);
            }
            let expect = match WriteCondition::of(input.if_match.as_ref(), input.if_none_match.as_ref()) {
                Ok(expect) => expect,
                Err(error) => {
                    drain(input.body.take()).await;
                    return Err(error);
                }
            };
            let claimed = claimed_digests!(input, req);
            let size_hint = announced_size(&req.headers, input.content_length);
            let _budget = self.store.admit_body(&tenant, size_hint).await.map_err(to_s3)?;
            let base_hint = self.base_hint(&tenant, input.metadata.as_ref());
            let ingested = self.ingest_body(&tenant, input.body, size_hint, &claimed, base_hint, BodyFrom::Client).await?;
            let attributes = attributes_of!(input);
            let record = self.commit(&tenant, &input.bucket, &input.key, ingested, attributes, expect.as_expect()).await?;
            let checksums = record.checksums;
            Ok(S3Response::new(write_output!(PutObjectOutput, record.etag, checksums)))
        }
        .instrument(span)
        .await
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let span = tracing::info_span!("get_object", tenant = %tenant, bucket = %input.bucket, key = %input.key);
        let _entered = span.enter();
        let record = self.find_object(&tenant, &input.bucket, &input.key).await?;
        check_conditions(
            &record,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let range = requested_range(&record, input.range.as_ref(), input.part_number)?;
        let whole = range.is_none();
        let bytes = range.clone().unwrap_or(0..record.size);
        let content_range = range.as_ref().map(|r| format!("bytes {}-{}/{}", r.start, r.end.saturating_sub(1), record.size));
        // The pieces kept in the index and the first read from the upstream are in hand before
        // the answer starts: an upstream that cannot serve them gets the client a 5xx, not a
        // 200 cut short. Later failures end the body early.
        let mut first = reader::plan(&record, bytes.clone());
        let held_back = first.iter().take_while(|piece| matches!(piece, reader::Piece::Inline(_))).count() + 1;
        let rest = first.split_off(held_back.min(first.len()));
        let first = reader::fetch_all(&self.store, first).await.map_err(to_s3)?;
        let first = futures::stream::iter(first.into_iter().map(Ok::<_, std::io::Error>));
        let body = futures::StreamExt::chain(first, reader::stream(self.store.clone(), rest));
        tracing::info!(bytes = bytes.end - bytes.start, "serving");
        let checksums = if whole && input.checksum_mode.is_some() { record.checksums.clone() } else { Checksums::default() };
        let parts_count = parts_count(&record, input.part_number);
        Ok(S3Response::new(object_output!(GetObjectOutput, record, bytes.end - bytes.start, checksums, parts_count, {
            body: Some(StreamingBlob::wrap(body)),
            content_range: content_range,
        })))
    }

    async fn get_object_attributes(&self, req: S3Request<GetObjectAttributesInput>) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let record = self.find_object(&tenant, &input.bucket, &input.key).await?;
        let mut output = object_attributes::answer(&record, &input.object_attributes, input.max_parts, input.part_number_marker);
        output.last_modified = Some(timestamp(record.last_modified_ms));
        Ok(S3Response::new(output))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let record = self.find_object(&tenant, &input.bucket, &input.key).await?;
        check_conditions(
            &record,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let length = match requested_range(&record, input.range.as_ref(), input.part_number)? {
            Some(range) => range.end - range.start,
            None => record.size,
        };
        let checksums = if input.checksum_mode.is_some() { record.checksums.clone() } else { Checksums::default() };
        let parts_count = parts_count(&record, input.part_number);
        Ok(S3Response::new(object_output!(HeadObjectOutput, record, length, checksums, parts_count, {})))
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        self.ensure_bucket(&tenant, &input.bucket).await?;
        let key = ObjectKey::new(&tenant, &input.bucket, &input.key);
        catalog::delete(&self.store, &key).await.map_err(to_s3)?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        self.ensure_bucket(&tenant, &input.bucket).await?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for object in input.delete.objects {
            let key = ObjectKey::new(&tenant, &input.bucket, &object.key);
            match catalog::delete(&self.store, &key).await {
                Ok(_) if !quiet => deleted.push(DeletedObject { key: Some(object.key), ..Default::default() }),
                Ok(_) => {}
                Err(error) => {
                    let answer = to_s3(error.context(format!("deleting {}", object.key)));
                    errors.push(Error {
                        key: Some(object.key),
                        code: Some(answer.code().as_str().to_owned()),
                        message: answer.message().map(str::to_owned),
                        ..Default::default()
                    });
                }
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput { deleted: Some(deleted), errors: Some(errors), ..Default::default() }))
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let CopySource::Bucket { bucket: source_bucket, key: source_key, .. } = &input.copy_source else {
            return Err(s3_error!(NotImplemented, "access point copy sources are not supported"));
        };
        check_key(&input.key)?;
        check_write_acl(&tenant, input.acl.as_ref(), grants_in!(input))?;
        self.ensure_bucket(&tenant, &input.bucket).await?;
        let source = self.find_object(&tenant, source_bucket, source_key).await?;
        check_copy_source!(source, input);
        let replace = input.metadata_directive.as_ref().is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        if !replace && source_bucket.as_ref() == input.bucket.as_str() && source_key.as_ref() == input.key.as_str() {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes."
            ));
        }
        let attributes = if replace { attributes_of!(input) } else { source.attributes.clone() };
        let expect = WriteCondition::from_headers(&req.headers)?;
        let pieces = reader::plan(&source, 0..source.size);
        let body = StreamingBlob::wrap(reader::stream(self.store.clone(), pieces));
        let claimed = ClaimedDigests::default();
        let ingested = self.ingest_body(&tenant, Some(body), Some(source.size), &claimed, None, BodyFrom::Store).await?;
        // A copy in one request is a new single-part object: its ETag is the MD5 of its bytes,
        // whatever the source's, and that is what it answers and serves.
        let record = self.commit(&tenant, &input.bucket, &input.key, ingested, attributes, expect.as_expect()).await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(record.etag)),
                last_modified: Some(timestamp(record.last_modified_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let encoded = url_encoding::wanted(input.encoding_type.as_ref())?;
        let mut listing = self.list(&tenant, &input.bucket, input.prefix.as_deref(), input.delimiter.as_deref(), input.marker.as_deref(), input.max_keys).await?;
        let next_marker = listing.is_truncated.then(|| listing.last.clone()).flatten();
        listing.encode_if(encoded);
        // ListObjects (v1) always names each object's owner.
        listing.set_owner(&tenant);
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: url_encoding::encode_if(encoded, input.prefix),
            delimiter: url_encoding::encode_if(encoded, input.delimiter.filter(|d| !d.is_empty())),
            marker: url_encoding::encode_if(encoded, input.marker),
            max_keys: Some(listing.max_keys),
            is_truncated: Some(listing.is_truncated),
            next_marker: url_encoding::encode_if(encoded, next_marker),
            contents: Some(listing.contents),
            common_prefixes: Some(listing.common_prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let start_after = match &input.continuation_token {
            Some(token) => Some(decode_token(token)?),
            None => input.start_after.clone(),
        };
        let encoded = url_encoding::wanted(input.encoding_type.as_ref())?;
        let mut listing = self.list(&tenant, &input.bucket, input.prefix.as_deref(), input.delimiter.as_deref(), start_after.as_deref(), input.max_keys).await?;
        let next_token = if listing.is_truncated { listing.last.as_deref().map(encode_token) } else { None };
        listing.encode_if(encoded);
        if input.fetch_owner == Some(true) {
            listing.set_owner(&tenant);
        }
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: url_encoding::encode_if(encoded, input.prefix),
            delimiter: url_encoding::encode_if(encoded, input.delimiter.filter(|d| !d.is_empty())),
            max_keys: Some(listing.max_keys),
            key_count: Some((listing.contents.len() + listing.common_prefixes.len()) as i32),
            is_truncated: Some(listing.is_truncated),
            continuation_token: input.continuation_token,
            next_continuation_token: next_token,
            start_after: url_encoding::encode_if(encoded, input.start_after),
            contents: Some(listing.contents),
            common_prefixes: Some(listing.common_prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_object_versions(&self, req: S3Request<ListObjectVersionsInput>) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let encoded = url_encoding::wanted(input.encoding_type.as_ref())?;
        let mut listing = self.list(&tenant, &input.bucket, input.prefix.as_deref(), input.delimiter.as_deref(), input.key_marker.as_deref(), input.max_keys).await?;
        let next_key_marker = if listing.is_truncated { listing.last.clone() } else { None };
        listing.encode_if(encoded);
        let versions = listing
            .contents
            .into_iter()
            .map(|object| ObjectVersion {
                key: object.key,
                e_tag: object.e_tag,
                size: object.size,
                last_modified: object.last_modified,
                is_latest: Some(true),
                version_id: Some("null".to_owned()),
                owner: Some(bucket_config::owner(&tenant)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(input.bucket),
            prefix: url_encoding::encode_if(encoded, input.prefix),
            delimiter: url_encoding::encode_if(encoded, input.delimiter.filter(|d| !d.is_empty())),
            key_marker: url_encoding::encode_if(encoded, input.key_marker),
            max_keys: Some(listing.max_keys),
            is_truncated: Some(listing.is_truncated),
            next_key_marker: url_encoding::encode_if(encoded, next_key_marker),
            versions: Some(versions),
            common_prefixes: Some(listing.common_prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(&self, req: S3Request<CreateMultipartUploadInput>) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        check_key(&input.key)?;
        check_write_acl(&tenant, input.acl.as_ref(), grants_in!(input))?;
        self.ensure_bucket(&tenant, &input.bucket).await?;
        let upload_id = new_id();
        let record = UploadRecord {
            tenant: tenant.to_string(),
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            initiated_ms: now_ms(),
            attributes: attributes_of!(input),
        };
        catalog::create_upload(&self.store, &upload_id, &record).await.map_err(to_s3)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let span = tracing::info_span!("upload_part", tenant = %tenant, bucket = %input.bucket, key = %input.key, part = input.part_number);
        async move {
            let mut input = input;
            let target = async {
                let upload = self.find_upload(&tenant, &input.upload_id, &input.bucket, &input.key).await?;
                if !(1..=10_000).contains(&input.part_number) {
                    return Err(s3_error!(InvalidArgument, "part numbers run from 1 to 10000"));
                }
                Ok(upload)
            };
            let upload = match target.await {
                Ok(upload) => upload,
                Err(error) => {
                    drain(input.body.take()).await;
                    return Err(error);
                }
            };
            let claimed = claimed_digests!(input, req);
            let size_hint = announced_size(&req.headers, input.content_length);
            let _budget = self.store.admit_body(&tenant, size_hint).await.map_err(to_s3)?;
            let part = self.store_part(&tenant, input.body, size_hint, &claimed, BodyFrom::Client).await?;
            self.record_part(&tenant, &input.upload_id, input.part_number, &part).await?;
            tracing::info!(tenant = %upload.tenant, size = part.size, "part stored");
            Ok(S3Response::new(write_output!(UploadPartOutput, part.etag, part.checksums)))
        }
        .instrument(span)
        .await
    }

    /// A part copied from a stored object (or a range of it) takes the part path: a model
    /// copied by parts is stored as one uploaded by parts.
    async fn upload_part_copy(&self, req: S3Request<UploadPartCopyInput>) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let CopySource::Bucket { bucket: source_bucket, key: source_key, .. } = &input.copy_source else {
            return Err(s3_error!(NotImplemented, "access point copy sources are not supported"));
        };
        self.find_upload(&tenant, &input.upload_id, &input.bucket, &input.key).await?;
        if !(1..=10_000).contains(&input.part_number) {
            return Err(s3_error!(InvalidArgument, "part numbers run from 1 to 10000"));
        }
        let source = self.find_object(&tenant, source_bucket, source_key).await?;
        check_copy_source!(source, input);
        let range = copy_source_range(input.copy_source_range.as_deref(), source.size)?;
        let len = range.end - range.start;
        if len > MAX_COPY_BYTES {
            return Err(s3_error!(InvalidRequest, "The specified copy source is larger than the maximum allowable size for a copy source: {MAX_COPY_BYTES}"));
        }
        let _budget = self.store.admit_body(&tenant, Some(len)).await.map_err(to_s3)?;
        let body = StreamingBlob::wrap(reader::stream(self.store.clone(), reader::plan(&source, range)));
        let part = self.store_part(&tenant, Some(body), Some(len), &ClaimedDigests::default(), BodyFrom::Store).await?;
        self.record_part(&tenant, &input.upload_id, input.part_number, &part).await?;
        tracing::info!(size = part.size, "part copied");
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(part.etag)),
                last_modified: Some(timestamp(part.last_modified_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(&self, req: S3Request<CompleteMultipartUploadInput>) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        let requested = input.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        if requested.is_empty() {
            return Err(s3_error!(MalformedXML, "no parts given"));
        }
        let upload = match self.find_upload(&tenant, &input.upload_id, &input.bucket, &input.key).await {
            Ok(upload) => upload,
            Err(error) if *error.code() == S3ErrorCode::NoSuchUpload => {
                // A completion repeated (its answer lost, say) gets the object it made, as S3 answers.
                let key = ObjectKey::new(&tenant, &input.bucket, &input.key);
                let current = self.store.index.object(&key).map_err(internal)?;
                return match current.filter(|record| Some(&record.etag) == completed_etag(&requested).as_ref()) {
                    Some(record) => Ok(S3Response::new(CompleteMultipartUploadOutput {
                        bucket: Some(input.bucket),
                        key: Some(input.key),
                        e_tag: Some(ETag::Strong(record.etag)),
                        ..Default::default()
                    })),
                    None => Err(error),
                };
            }
            Err(error) => return Err(error),
        };
        let stored: BTreeMap<u32, PartRecord> =
            catalog::parts(&self.store, &tenant, &input.upload_id).await.map_err(to_s3)?.into_iter().collect();
        let mut chosen = Vec::with_capacity(requested.len());
        let mut previous = 0;
        for part in &requested {
            let number = part.part_number.unwrap_or(0);
            if number <= previous {
                return Err(s3_error!(InvalidPartOrder));
            }
            previous = number;
            let record = stored.get(&(number as u32)).ok_or_else(|| s3_error!(InvalidPart))?;
            if part.e_tag.as_ref().is_some_and(|etag| etag.value() != record.etag) {
                return Err(s3_error!(InvalidPart, "ETag of part {number} does not match"));
            }
            chosen.push(record);
        }
        if chosen[..chosen.len() - 1].iter().any(|part| part.size < MIN_PART_SIZE) {
            return Err(s3_error!(EntityTooSmall));
        }
        let record = multipart_record(&upload, &chosen);
        let key = ObjectKey::new(&tenant, &input.bucket, &input.key);
        let expect = WriteCondition::of(input.if_match.as_ref(), input.if_none_match.as_ref())?;
        catalog::complete_upload(&self.store, &input.upload_id, &key, &record, expect.as_expect()).await.map_err(to_s3)?;
        if let Err(error) = catalog::forget_upload(&self.store, &tenant, &input.upload_id).await {
            tracing::warn!(error = format!("{error:#}"), "the ended upload's markers stay upstream");
        }
        tracing::info!(bucket = %input.bucket, key = %input.key, size = record.size, parts = chosen.len(), "multipart upload completed");
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(ETag::Strong(record.etag)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(&self, req: S3Request<AbortMultipartUploadInput>) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        self.find_upload(&tenant, &input.upload_id, &input.bucket, &input.key).await?;
        catalog::forget_upload(&self.store, &tenant, &input.upload_id).await.map_err(to_s3)?;
        self.store.index.abort_upload(&input.upload_id, now_ms()).map_err(|error| match error {
            IndexError::NoSuchUpload => s3_error!(NoSuchUpload),
            other => internal(other),
        })?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        self.find_upload(&tenant, &input.upload_id, &input.bucket, &input.key).await?;
        let marker = input.part_number_marker.unwrap_or(0).max(0) as u32;
        let max_parts = input.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
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
                ..Default::default()
            })
            .collect();
        let next_marker = parts.last().and_then(|p| p.part_number);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max_parts as i32),
            is_truncated: Some(is_truncated),
            next_part_number_marker: if is_truncated { next_marker } else { None },
            parts: Some(parts),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(&self, req: S3Request<ListMultipartUploadsInput>) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        self.ensure_bucket(&tenant, &input.bucket).await?;
        let encoded = url_encoding::wanted(input.encoding_type.as_ref())?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let uploads = catalog::list_uploads(&self.store, &tenant, &input.bucket)
            .await
            .map_err(to_s3)?
            .into_iter()
            .filter(|(_, upload)| upload.key.starts_with(&prefix))
            .map(|(id, upload)| MultipartUpload {
                key: url_encoding::encode_if(encoded, Some(upload.key)),
                upload_id: Some(id),
                initiated: Some(timestamp(upload.initiated_ms)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: url_encoding::encode_if(encoded, input.prefix),
            uploads: Some(uploads),
            is_truncated: Some(false),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }
}

/// One page of a listing.
struct Listing {
    contents: Vec<Object>,
    common_prefixes: Vec<CommonPrefix>,
    is_truncated: bool,
    /// The last key or common prefix of the page: where the next page starts after.
    last: Option<String>,
    max_keys: i32,
}

impl Listing {
    /// Names the owner of every listed object (the tenant's canonical id).
    fn set_owner(&mut self, tenant: &str) {
        for object in &mut self.contents {
            object.owner = Some(bucket_config::owner(tenant));
        }
    }

    /// Percent-encodes the listed keys and prefixes when the client asked for `encoding-type=url`.
    fn encode_if(&mut self, wanted: bool) {
        for object in &mut self.contents {
            object.key = url_encoding::encode_if(wanted, object.key.take());
        }
        for common in &mut self.common_prefixes {
            common.prefix = url_encoding::encode_if(wanted, common.prefix.take());
        }
    }
}

impl Gateway {
    /// Lists a bucket in key order, rolling keys up to common prefixes at the delimiter.
    async fn list(&self, tenant: &str, bucket: &str, prefix: Option<&str>, delimiter: Option<&str>, start_after: Option<&str>, max_keys: Option<i32>) -> S3Result<Listing> {
        self.ensure_bucket(tenant, bucket).await?;
        let prefix = prefix.unwrap_or_default();
        let delimiter = delimiter.filter(|d| !d.is_empty());
        let max_keys = max_keys.unwrap_or(1000).clamp(0, 1000);
        let mut listing = Listing { contents: Vec::new(), common_prefixes: Vec::new(), is_truncated: false, last: None, max_keys };
        // S3 answers an empty page, not truncated, when no key at all is asked for.
        if max_keys == 0 {
            return Ok(listing);
        }
        let mut last_prefix: Option<String> = None;
        for entry in self.store.index.list_objects(tenant, bucket, prefix, start_after) {
            let (key, record) = entry.map_err(internal)?;
            let rolled = delimiter.and_then(|d| key[prefix.len()..].find(d).map(|at| key[..prefix.len() + at + d.len()].to_owned()));
            if let (Some(rolled), Some(previous)) = (&rolled, &last_prefix) {
                if rolled == previous {
                    continue;
                }
            }
            if let (Some(rolled), Some(after)) = (&rolled, start_after) {
                if after.starts_with(rolled.as_str()) {
                    continue;
                }
            }
            if listing.contents.len() + listing.common_prefixes.len() >= max_keys as usize {
                listing.is_truncated = true;
                break;
            }
            match rolled {
                Some(rolled) => {
                    listing.common_prefixes.push(CommonPrefix { prefix: Some(rolled.clone()) });
                    listing.last = Some(rolled.clone());
                    last_prefix = Some(rolled);
                }
                None => {
                    listing.last = Some(key.clone());
                    listing.contents.push(Object {
                        key: Some(key),
                        size: Some(record.size as i64),
                        e_tag: Some(etag_of(&record)),
                        last_modified: Some(timestamp(record.last_modified_ms)),
                        storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
                        ..Default::default()
                    });
                }
            }
        }
        Ok(listing)
    }

    async fn find_upload(&self, tenant: &str, upload_id: &str, bucket: &str, key: &str) -> S3Result<UploadRecord> {
        self.ensure_bucket(tenant, bucket).await?;
        let upload = catalog::find_upload(&self.store, tenant, upload_id).await.map_err(to_s3)?.ok_or_else(|| s3_error!(NoSuchUpload))?;
        if upload.tenant != tenant || upload.bucket != bucket || upload.key != key {
            return Err(s3_error!(NoSuchUpload));
        }
        Ok(upload)
    }

    /// Stores a part body as it came in its own upstream blob.
    async fn store_part(
        &self,
        tenant: &str,
        body: Option<StreamingBlob>,
        size_hint: Option<u64>,
        claimed: &ClaimedDigests,
        body_from: BodyFrom,
    ) -> S3Result<PartRecord> {
        let body = body.unwrap_or_else(|| StreamingBlob::wrap(futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>()));
        let options = IngestOptions { size_hint, mode: IngestMode::Plain, checksums: claimed.selection(), base_hint: None, body_from };
        let ingested = ingest::ingest(&self.store, tenant, body, options).await.map_err(to_s3)?.ok_or_else(|| internal("ingest declined a part"))?;
        if let Some(announced) = size_hint.filter(|size| *size != ingested.size) {
            let got = ingested.size;
            ingested.discard(&self.store).await;
            return Err(to_s3(BodyError::WrongLength { announced, got }.into()));
        }
        if let Err(error) = claimed.verify(&ingested) {
            ingested.discard(&self.store).await;
            return Err(error);
        }
        let blob = match ingested.segments.first() {
            Some(Segment::Blob { key, .. }) => key.clone(),
            _ => String::new(),
        };
        Ok(PartRecord {
            blob,
            size: ingested.size,
            etag: hex::encode(ingested.md5),
            last_modified_ms: now_ms(),
            checksums: checksums_of(&ingested.checksums),
        })
    }
}

impl Gateway {
    /// Records a stored part of an upload; if the upload ended meanwhile, its blob is deleted.
    async fn record_part(&self, tenant: &str, upload_id: &str, number: i32, part: &PartRecord) -> S3Result<()> {
        let Err(error) = catalog::record_part(&self.store, tenant, upload_id, number as u32, part).await else { return Ok(()) };
        if matches!(error.downcast_ref::<IndexError>(), Some(IndexError::NoSuchUpload)) {
            if let Err(error) = self.store.upstream.delete(&part.blob).await {
                tracing::warn!(blob = %part.blob, error = format!("{error:#}"), "the part of an ended upload stays upstream until collected");
            }
        }
        Err(to_s3(error))
    }
}

/// The most a part copy may copy, as in S3: 5 GiB.
const MAX_COPY_BYTES: u64 = 5 << 30;

/// Refuses an ACL on an object write other than the owner's full control (ACLs are disabled;
/// see `bucket_config`).
fn check_write_acl(tenant: &str, acl: Option<&ObjectCannedACL>, grants: bool) -> S3Result<()> {
    bucket_config::check_acl(tenant, acl.map(ObjectCannedACL::as_str), None, grants)
}

/// The bytes `x-amz-copy-source-range: bytes=first-last` names of an object of `size` bytes.
fn copy_source_range(range: Option<&str>, size: u64) -> S3Result<std::ops::Range<u64>> {
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

/// The object a completed multipart upload makes: its parts in order, as they came.
fn multipart_record(upload: &UploadRecord, parts: &[&PartRecord]) -> ObjectRecord {
    let mut digests = Vec::with_capacity(parts.len() * 16);
    for part in parts {
        digests.extend_from_slice(&hex::decode(&part.etag).unwrap_or_default());
    }
    let mut md5 = Md5::new();
    md5.update(&digests);
    let etag = format!("{}-{}", hex::encode(md5.finalize()), parts.len());
    ObjectRecord {
        version: new_id(),
        size: parts.iter().map(|p| p.size).sum(),
        etag,
        last_modified_ms: now_ms(),
        attributes: upload.attributes.clone(),
        checksums: Checksums::default(),
        part_sizes: parts.iter().map(|p| p.size).collect(),
        segments: parts
            .iter()
            .filter(|p| p.size > 0)
            .map(|p| Segment::Blob { key: p.blob.clone(), offset: 0, len: p.size })
            .collect(),
    }
}

fn encode_token(key: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, key)
}

fn decode_token(token: &str) -> S3Result<String> {
    base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| s3_error!(InvalidArgument, "invalid continuation token"))
}
