//! The S3 API. Each operation states what it does with the index and the upstream; the
//! shared steps (finding a bucket, checking conditions, committing an ingest) are helpers.

#[macro_use]
mod macros;

pub mod auth;
pub mod bucket_config;
mod bucket_settings;
mod buckets;
mod conditions;
mod copy;
mod digests;
pub mod domains;
pub mod errors;
mod listing;
mod multipart;
mod multipart_checksums;
pub mod object_attributes;
mod limits;
mod objects;
mod tagging;
mod versions;
pub mod url_encoding;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use s3s::dto::*;
use s3s::crypto::{Checksum as _, Md5};
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};
use tensorgate_index::{Attributes, BucketDeletion, BucketRecord, Checksums, EncodedPart, Expect, IndexError, ObjectKey, Refusal, ObjectRecord, PartRecord, Segment, UploadRecord};
use tracing::Instrument;

use crate::engine::Store;
use crate::engine::catalog;
use crate::engine::ingest::BodyError;
use crate::engine::ingest::{self, BodyFrom, ChecksumSelection, IngestMode, IngestOptions, Ingested, ModelTensors};
use crate::engine::reader;
use crate::engine::shared::MaybePublished;
use crate::ids::{new_id, now_ms};
use crate::s3::auth::Keys;
use crate::s3::errors::{answered, custom_error, internal, to_s3};

use conditions::{WriteCondition, check_conditions, check_no_object_lock, check_write_acl};
use copy::copy_source_range;
use digests::{ClaimedDigests, announced_size, checksum_type_of, checksums_of, trailer_algorithm};
use multipart_checksums::{answered_checksums, check_checksum_algorithm, check_completion_checksums, check_upload_checksum, completed_checksums, kept_checksum_answer, part_checksums, upload_checksum};

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
        self.bucket_record(tenant, bucket).await.map(|_| ())
    }

    /// The bucket's record; with a shared upstream, a bucket another gateway created is adopted
    /// from its marker first.
    async fn bucket_record(&self, tenant: &str, bucket: &str) -> S3Result<BucketRecord> {
        if let Some(record) = self.store.index.bucket(tenant, bucket).map_err(internal)? {
            return Ok(record);
        }
        if self.store.config.shared_upstream && catalog::adopt_bucket(&self.store, tenant, bucket).await.map_err(to_s3)? {
            if let Some(record) = self.store.index.bucket(tenant, bucket).map_err(internal)? {
                return Ok(record);
            }
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
        let options = IngestOptions { size_hint, mode: IngestMode::Sniff, checksums: claimed.selection(None), base_hint, body_from };
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
    /// bucket/key` (see `ingest::named_base`).
    fn base_hint(&self, tenant: &str, metadata: Option<&Metadata>) -> Option<Arc<ModelTensors>> {
        ingest::named_base(&self.store, tenant, metadata?.get(ingest::BASE_HINT)?)
    }

    /// Makes an ingested body the object at `key`, with the given attributes, if the object
    /// there meets `expect` (the client's conditions).
    async fn commit(&self, tenant: &str, bucket: &str, key: &str, ingested: Ingested, attributes: Attributes, expect: Expect<'_>) -> S3Result<ObjectRecord> {
        let record = ObjectRecord {
            version: new_id(),
            size: ingested.size,
            etag: hex::encode(ingested.md5.ok_or_else(|| internal("a client's write was ingested without its MD5"))?),
            last_modified_ms: now_ms(),
            attributes,
            checksums: checksums_of(&ingested.checksums),
            part_sizes: Vec::new(),
            segments: ingested.segments.clone(),
            part_checksums: Vec::new(),
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
        tracing::info!(size = record.size, segments = record.segments.len(), chunked = ingested.is_chunked(), "stored");
        Ok(record)
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

fn timestamp(ms: i64) -> Timestamp {
    Timestamp::from(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
}

fn seconds(timestamp: &Timestamp) -> i64 {
    time::OffsetDateTime::from(timestamp.clone()).unix_timestamp()
}

fn etag_of(record: &ObjectRecord) -> ETag {
    ETag::Strong(record.etag.clone())
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

fn to_u64(value: Option<i64>) -> Option<u64> {
    value.and_then(|v| u64::try_from(v).ok())
}

/// Each operation is in the file of its concern; this is the one list of what the gateway
/// answers, and where every error gets its request id and AWS message.
#[async_trait]
impl S3 for Gateway {
    async fn get_bucket_versioning(&self, req: S3Request<GetBucketVersioningInput>) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        Gateway::get_bucket_versioning(self, req).await.map_err(answered)
    }

    async fn put_bucket_versioning(&self, req: S3Request<PutBucketVersioningInput>) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        Gateway::put_bucket_versioning(self, req).await.map_err(answered)
    }

    async fn get_bucket_acl(&self, req: S3Request<GetBucketAclInput>) -> S3Result<S3Response<GetBucketAclOutput>> {
        Gateway::get_bucket_acl(self, req).await.map_err(answered)
    }

    async fn put_bucket_acl(&self, req: S3Request<PutBucketAclInput>) -> S3Result<S3Response<PutBucketAclOutput>> {
        Gateway::put_bucket_acl(self, req).await.map_err(answered)
    }

    async fn get_object_acl(&self, req: S3Request<GetObjectAclInput>) -> S3Result<S3Response<GetObjectAclOutput>> {
        Gateway::get_object_acl(self, req).await.map_err(answered)
    }

    async fn put_object_acl(&self, req: S3Request<PutObjectAclInput>) -> S3Result<S3Response<PutObjectAclOutput>> {
        Gateway::put_object_acl(self, req).await.map_err(answered)
    }

    async fn get_bucket_cors(&self, req: S3Request<GetBucketCorsInput>) -> S3Result<S3Response<GetBucketCorsOutput>> {
        Gateway::get_bucket_cors(self, req).await.map_err(answered)
    }

    async fn get_bucket_policy(&self, req: S3Request<GetBucketPolicyInput>) -> S3Result<S3Response<GetBucketPolicyOutput>> {
        Gateway::get_bucket_policy(self, req).await.map_err(answered)
    }

    async fn get_bucket_policy_status(&self, req: S3Request<GetBucketPolicyStatusInput>) -> S3Result<S3Response<GetBucketPolicyStatusOutput>> {
        Gateway::get_bucket_policy_status(self, req).await.map_err(answered)
    }

    async fn get_public_access_block(&self, req: S3Request<GetPublicAccessBlockInput>) -> S3Result<S3Response<GetPublicAccessBlockOutput>> {
        Gateway::get_public_access_block(self, req).await.map_err(answered)
    }

    async fn get_bucket_ownership_controls(
        &self,
        req: S3Request<GetBucketOwnershipControlsInput>,
    ) -> S3Result<S3Response<GetBucketOwnershipControlsOutput>> {
        Gateway::get_bucket_ownership_controls(self, req).await.map_err(answered)
    }

    async fn put_bucket_cors(&self, req: S3Request<PutBucketCorsInput>) -> S3Result<S3Response<PutBucketCorsOutput>> {
        Gateway::put_bucket_cors(self, req).await.map_err(answered)
    }

    async fn delete_bucket_cors(&self, req: S3Request<DeleteBucketCorsInput>) -> S3Result<S3Response<DeleteBucketCorsOutput>> {
        Gateway::delete_bucket_cors(self, req).await.map_err(answered)
    }

    async fn put_public_access_block(&self, req: S3Request<PutPublicAccessBlockInput>) -> S3Result<S3Response<PutPublicAccessBlockOutput>> {
        Gateway::put_public_access_block(self, req).await.map_err(answered)
    }

    async fn delete_public_access_block(&self, req: S3Request<DeletePublicAccessBlockInput>) -> S3Result<S3Response<DeletePublicAccessBlockOutput>> {
        Gateway::delete_public_access_block(self, req).await.map_err(answered)
    }

    async fn put_bucket_ownership_controls(&self, req: S3Request<PutBucketOwnershipControlsInput>) -> S3Result<S3Response<PutBucketOwnershipControlsOutput>> {
        Gateway::put_bucket_ownership_controls(self, req).await.map_err(answered)
    }

    async fn delete_bucket_ownership_controls(&self, req: S3Request<DeleteBucketOwnershipControlsInput>) -> S3Result<S3Response<DeleteBucketOwnershipControlsOutput>> {
        Gateway::delete_bucket_ownership_controls(self, req).await.map_err(answered)
    }

    async fn get_object_lock_configuration(&self, req: S3Request<GetObjectLockConfigurationInput>) -> S3Result<S3Response<GetObjectLockConfigurationOutput>> {
        Gateway::get_object_lock_configuration(self, req).await.map_err(answered)
    }

    async fn put_object_lock_configuration(&self, req: S3Request<PutObjectLockConfigurationInput>) -> S3Result<S3Response<PutObjectLockConfigurationOutput>> {
        Gateway::put_object_lock_configuration(self, req).await.map_err(answered)
    }

    async fn get_object_retention(&self, req: S3Request<GetObjectRetentionInput>) -> S3Result<S3Response<GetObjectRetentionOutput>> {
        Gateway::get_object_retention(self, req).await.map_err(answered)
    }

    async fn put_object_retention(&self, req: S3Request<PutObjectRetentionInput>) -> S3Result<S3Response<PutObjectRetentionOutput>> {
        Gateway::put_object_retention(self, req).await.map_err(answered)
    }

    async fn get_object_legal_hold(&self, req: S3Request<GetObjectLegalHoldInput>) -> S3Result<S3Response<GetObjectLegalHoldOutput>> {
        Gateway::get_object_legal_hold(self, req).await.map_err(answered)
    }

    async fn put_object_legal_hold(&self, req: S3Request<PutObjectLegalHoldInput>) -> S3Result<S3Response<PutObjectLegalHoldOutput>> {
        Gateway::put_object_legal_hold(self, req).await.map_err(answered)
    }

    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        Gateway::list_buckets(self, req).await.map_err(answered)
    }

    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        Gateway::create_bucket(self, req).await.map_err(answered)
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        Gateway::head_bucket(self, req).await.map_err(answered)
    }

    async fn get_bucket_location(&self, req: S3Request<GetBucketLocationInput>) -> S3Result<S3Response<GetBucketLocationOutput>> {
        Gateway::get_bucket_location(self, req).await.map_err(answered)
    }

    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        Gateway::delete_bucket(self, req).await.map_err(answered)
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        Gateway::put_object(self, req).await.map_err(answered)
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        Gateway::get_object(self, req).await.map_err(answered)
    }

    async fn get_object_attributes(&self, req: S3Request<GetObjectAttributesInput>) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        Gateway::get_object_attributes(self, req).await.map_err(answered)
    }

    async fn get_object_tagging(&self, req: S3Request<GetObjectTaggingInput>) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        Gateway::get_object_tagging(self, req).await.map_err(answered)
    }

    async fn put_object_tagging(&self, req: S3Request<PutObjectTaggingInput>) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        Gateway::put_object_tagging(self, req).await.map_err(answered)
    }

    async fn delete_object_tagging(&self, req: S3Request<DeleteObjectTaggingInput>) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        Gateway::delete_object_tagging(self, req).await.map_err(answered)
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        Gateway::head_object(self, req).await.map_err(answered)
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        Gateway::delete_object(self, req).await.map_err(answered)
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        Gateway::delete_objects(self, req).await.map_err(answered)
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        Gateway::copy_object(self, req).await.map_err(answered)
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        Gateway::list_objects(self, req).await.map_err(answered)
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        Gateway::list_objects_v2(self, req).await.map_err(answered)
    }

    async fn list_object_versions(&self, req: S3Request<ListObjectVersionsInput>) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        Gateway::list_object_versions(self, req).await.map_err(answered)
    }

    async fn create_multipart_upload(&self, req: S3Request<CreateMultipartUploadInput>) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        Gateway::create_multipart_upload(self, req).await.map_err(answered)
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        Gateway::upload_part(self, req).await.map_err(answered)
    }

    async fn upload_part_copy(&self, req: S3Request<UploadPartCopyInput>) -> S3Result<S3Response<UploadPartCopyOutput>> {
        Gateway::upload_part_copy(self, req).await.map_err(answered)
    }

    async fn complete_multipart_upload(&self, req: S3Request<CompleteMultipartUploadInput>) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        Gateway::complete_multipart_upload(self, req).await.map_err(answered)
    }

    async fn abort_multipart_upload(&self, req: S3Request<AbortMultipartUploadInput>) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        Gateway::abort_multipart_upload(self, req).await.map_err(answered)
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        Gateway::list_parts(self, req).await.map_err(answered)
    }

    async fn list_multipart_uploads(&self, req: S3Request<ListMultipartUploadsInput>) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        Gateway::list_multipart_uploads(self, req).await.map_err(answered)
    }
}
