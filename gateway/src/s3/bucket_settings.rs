//! A bucket's settings: the ones it keeps (versioning suspended, CORS rules, Block Public
//! Access, ownership controls; `engine::bucket_settings` stores them), the ACLs it answers
//! without keeping, and the ones it has not (a bucket policy, object lock), answered as S3
//! answers for a bucket without them. `bucket_config` converts and checks.

use super::*;

use crate::engine::bucket_settings;
use tensorgate_index::BucketSettings;

impl Gateway {
    /// The `created_ms` the settings of the tenant's bucket are bound to; NoSuchBucket first.
    async fn settings_bound_to(&self, tenant: &str, bucket: &str) -> S3Result<i64> {
        let record = self.bucket_record(tenant, bucket).await?;
        bucket_settings::bucket_created_ms(&self.store, tenant, bucket, &record).await.map_err(to_s3)
    }

    /// The settings of the tenant's bucket.
    async fn settings(&self, tenant: &str, bucket: &str) -> S3Result<BucketSettings> {
        let created_ms = self.settings_bound_to(tenant, bucket).await?;
        bucket_settings::read(&self.store, tenant, bucket, created_ms).await.map_err(to_s3)
    }

    /// Changes the settings of the tenant's bucket created at `created_ms` with `edit`.
    async fn change_settings(&self, tenant: &str, bucket: &str, created_ms: i64, edit: impl Fn(&mut BucketSettings)) -> S3Result<()> {
        bucket_settings::change(&self.store, tenant, bucket, created_ms, edit).await.map_err(to_s3)
    }

    pub(super) async fn get_bucket_versioning(&self, req: S3Request<GetBucketVersioningInput>) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        let settings = self.settings(&self.tenant(&req)?, &req.input.bucket).await?;
        Ok(S3Response::new(bucket_config::versioning(&settings)))
    }

    pub(super) async fn put_bucket_versioning(&self, req: S3Request<PutBucketVersioningInput>) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        let tenant = self.tenant(&req)?;
        let created_ms = self.settings_bound_to(&tenant, &req.input.bucket).await?;
        if bucket_config::suspends_versioning(&req.input.versioning_configuration)? {
            self.change_settings(&tenant, &req.input.bucket, created_ms, |settings| settings.versioning_suspended = true).await?;
        }
        Ok(S3Response::new(PutBucketVersioningOutput::default()))
    }

    pub(super) async fn get_bucket_acl(&self, req: S3Request<GetBucketAclInput>) -> S3Result<S3Response<GetBucketAclOutput>> {
        let tenant = self.tenant(&req)?;
        self.ensure_bucket(&tenant, &req.input.bucket).await?;
        Ok(S3Response::new(bucket_config::bucket_acl(&tenant)))
    }

    pub(super) async fn put_bucket_acl(&self, req: S3Request<PutBucketAclInput>) -> S3Result<S3Response<PutBucketAclOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        self.ensure_bucket(&tenant, &input.bucket).await?;
        let grants = grants_in!(input) || input.grant_write.is_some();
        bucket_config::check_acl(&tenant, input.acl.as_ref().map(BucketCannedACL::as_str), input.access_control_policy.as_ref(), grants)?;
        Ok(S3Response::new(PutBucketAclOutput::default()))
    }

    pub(super) async fn get_object_acl(&self, req: S3Request<GetObjectAclInput>) -> S3Result<S3Response<GetObjectAclOutput>> {
        let tenant = self.tenant(&req)?;
        versions::check_version_id(req.input.version_id.as_deref())?;
        self.find_object(&tenant, &req.input.bucket, &req.input.key).await?;
        Ok(S3Response::new(bucket_config::object_acl(&tenant)))
    }

    pub(super) async fn put_object_acl(&self, req: S3Request<PutObjectAclInput>) -> S3Result<S3Response<PutObjectAclOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        versions::check_version_id(input.version_id.as_deref())?;
        self.find_object(&tenant, &input.bucket, &input.key).await?;
        let grants = grants_in!(input);
        bucket_config::check_acl(&tenant, input.acl.as_ref().map(ObjectCannedACL::as_str), input.access_control_policy.as_ref(), grants)?;
        Ok(S3Response::new(PutObjectAclOutput::default()))
    }

    pub(super) async fn get_bucket_cors(&self, req: S3Request<GetBucketCorsInput>) -> S3Result<S3Response<GetBucketCorsOutput>> {
        let settings = self.settings(&self.tenant(&req)?, &req.input.bucket).await?;
        Ok(S3Response::new(bucket_config::cors(&settings)?))
    }

    pub(super) async fn put_bucket_cors(&self, req: S3Request<PutBucketCorsInput>) -> S3Result<S3Response<PutBucketCorsOutput>> {
        let tenant = self.tenant(&req)?;
        let created_ms = self.settings_bound_to(&tenant, &req.input.bucket).await?;
        let rules = bucket_config::cors_rules(&req.input.cors_configuration)?;
        self.change_settings(&tenant, &req.input.bucket, created_ms, |settings| settings.cors = rules.clone()).await?;
        Ok(S3Response::new(PutBucketCorsOutput::default()))
    }

    pub(super) async fn delete_bucket_cors(&self, req: S3Request<DeleteBucketCorsInput>) -> S3Result<S3Response<DeleteBucketCorsOutput>> {
        let tenant = self.tenant(&req)?;
        let created_ms = self.settings_bound_to(&tenant, &req.input.bucket).await?;
        self.change_settings(&tenant, &req.input.bucket, created_ms, |settings| settings.cors.clear()).await?;
        Ok(S3Response::new(DeleteBucketCorsOutput::default()))
    }

    pub(super) async fn get_public_access_block(&self, req: S3Request<GetPublicAccessBlockInput>) -> S3Result<S3Response<GetPublicAccessBlockOutput>> {
        let settings = self.settings(&self.tenant(&req)?, &req.input.bucket).await?;
        Ok(S3Response::new(bucket_config::public_access_block(&settings)?))
    }

    pub(super) async fn put_public_access_block(&self, req: S3Request<PutPublicAccessBlockInput>) -> S3Result<S3Response<PutPublicAccessBlockOutput>> {
        let tenant = self.tenant(&req)?;
        let created_ms = self.settings_bound_to(&tenant, &req.input.bucket).await?;
        let block = bucket_config::public_access_block_of(&req.input.public_access_block_configuration);
        self.change_settings(&tenant, &req.input.bucket, created_ms, |settings| settings.public_access_block = Some(block)).await?;
        Ok(S3Response::new(PutPublicAccessBlockOutput::default()))
    }

    pub(super) async fn delete_public_access_block(
        &self,
        req: S3Request<DeletePublicAccessBlockInput>,
    ) -> S3Result<S3Response<DeletePublicAccessBlockOutput>> {
        let tenant = self.tenant(&req)?;
        let created_ms = self.settings_bound_to(&tenant, &req.input.bucket).await?;
        self.change_settings(&tenant, &req.input.bucket, created_ms, |settings| settings.public_access_block = None).await?;
        Ok(S3Response::new(DeletePublicAccessBlockOutput::default()))
    }

    pub(super) async fn get_bucket_ownership_controls(
        &self,
        req: S3Request<GetBucketOwnershipControlsInput>,
    ) -> S3Result<S3Response<GetBucketOwnershipControlsOutput>> {
        let settings = self.settings(&self.tenant(&req)?, &req.input.bucket).await?;
        Ok(S3Response::new(bucket_config::ownership_controls(&settings)?))
    }

    pub(super) async fn put_bucket_ownership_controls(
        &self,
        req: S3Request<PutBucketOwnershipControlsInput>,
    ) -> S3Result<S3Response<PutBucketOwnershipControlsOutput>> {
        let tenant = self.tenant(&req)?;
        let created_ms = self.settings_bound_to(&tenant, &req.input.bucket).await?;
        let ownership = bucket_config::ownership_rule(&req.input.ownership_controls)?;
        bucket_config::check_ownership(ownership, || s3_error!(MalformedXML))?;
        let ownership = ownership.as_str().to_owned();
        self.change_settings(&tenant, &req.input.bucket, created_ms, |settings| settings.ownership = Some(ownership.clone())).await?;
        Ok(S3Response::new(PutBucketOwnershipControlsOutput::default()))
    }

    /// Removes the ownership controls, as S3 does; ACLs stay disabled all the same.
    pub(super) async fn delete_bucket_ownership_controls(
        &self,
        req: S3Request<DeleteBucketOwnershipControlsInput>,
    ) -> S3Result<S3Response<DeleteBucketOwnershipControlsOutput>> {
        let tenant = self.tenant(&req)?;
        let created_ms = self.settings_bound_to(&tenant, &req.input.bucket).await?;
        self.change_settings(&tenant, &req.input.bucket, created_ms, |settings| settings.ownership = None).await?;
        Ok(S3Response::new(DeleteBucketOwnershipControlsOutput::default()))
    }

    pub(super) async fn get_bucket_policy(&self, req: S3Request<GetBucketPolicyInput>) -> S3Result<S3Response<GetBucketPolicyOutput>> {
        self.ensure_bucket(&self.tenant(&req)?, &req.input.bucket).await?;
        Err(s3_error!(NoSuchBucketPolicy, "The bucket policy does not exist"))
    }

    pub(super) async fn get_bucket_policy_status(&self, req: S3Request<GetBucketPolicyStatusInput>) -> S3Result<S3Response<GetBucketPolicyStatusOutput>> {
        self.ensure_bucket(&self.tenant(&req)?, &req.input.bucket).await?;
        Err(s3_error!(NoSuchBucketPolicy, "The bucket policy does not exist"))
    }

    // Object lock: no bucket has it (creating one with it is refused), so each call answers as
    // S3 does for a bucket created without it.

    pub(super) async fn get_object_lock_configuration(
        &self,
        req: S3Request<GetObjectLockConfigurationInput>,
    ) -> S3Result<S3Response<GetObjectLockConfigurationOutput>> {
        self.ensure_bucket(&self.tenant(&req)?, &req.input.bucket).await?;
        Err(s3_error!(ObjectLockConfigurationNotFoundError, "Object Lock configuration does not exist for this bucket"))
    }

    pub(super) async fn put_object_lock_configuration(
        &self,
        req: S3Request<PutObjectLockConfigurationInput>,
    ) -> S3Result<S3Response<PutObjectLockConfigurationOutput>> {
        self.ensure_bucket(&self.tenant(&req)?, &req.input.bucket).await?;
        Err(s3_error!(InvalidBucketState, "Object Lock configuration cannot be enabled on existing buckets"))
    }

    /// The answer to every object-level object lock call: the bucket has no object lock.
    async fn without_object_lock(&self, tenant: &str, bucket: &str) -> S3Error {
        match self.ensure_bucket(tenant, bucket).await {
            Err(error) => error,
            Ok(()) => s3_error!(InvalidRequest, "Bucket is missing Object Lock Configuration"),
        }
    }

    pub(super) async fn get_object_retention(&self, req: S3Request<GetObjectRetentionInput>) -> S3Result<S3Response<GetObjectRetentionOutput>> {
        Err(self.without_object_lock(&self.tenant(&req)?, &req.input.bucket).await)
    }

    pub(super) async fn put_object_retention(&self, req: S3Request<PutObjectRetentionInput>) -> S3Result<S3Response<PutObjectRetentionOutput>> {
        Err(self.without_object_lock(&self.tenant(&req)?, &req.input.bucket).await)
    }

    pub(super) async fn get_object_legal_hold(&self, req: S3Request<GetObjectLegalHoldInput>) -> S3Result<S3Response<GetObjectLegalHoldOutput>> {
        Err(self.without_object_lock(&self.tenant(&req)?, &req.input.bucket).await)
    }

    pub(super) async fn put_object_legal_hold(&self, req: S3Request<PutObjectLegalHoldInput>) -> S3Result<S3Response<PutObjectLegalHoldOutput>> {
        Err(self.without_object_lock(&self.tenant(&req)?, &req.input.bucket).await)
    }
}
