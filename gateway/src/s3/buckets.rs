//! Bucket operations: create, list, head, locate, delete (a bucket's settings are in
//! `bucket_settings`).

use super::*;

impl Gateway {
    pub(super) async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let tenant = self.tenant(&req)?;
        let input = req.input;
        // Pages in name order, as S3 does when MaxBuckets or a continuation token is given;
        // a Prefix keeps the names that start with it.
        let after = input.continuation_token.as_deref().map(listing::decode_token).transpose()?;
        let page = match input.max_buckets {
            None => usize::MAX,
            Some(max @ 1..=10000) => max as usize,
            Some(_) => return Err(s3_error!(InvalidArgument, "Argument max-buckets must be an integer between 1 and 10000.")),
        };
        let mut buckets: Vec<_> = self.store.index.list_buckets(&tenant).map_err(internal)?;
        let prefix = input.prefix.unwrap_or_default();
        buckets.retain(|(name, _)| name.starts_with(&prefix) && after.as_deref().is_none_or(|after| name.as_str() > after));
        let truncated = buckets.len() > page;
        buckets.truncate(page);
        let continuation_token = truncated.then(|| buckets.last().map(|(name, _)| listing::encode_token(name))).flatten();
        let buckets = buckets
            .into_iter()
            .map(|(name, record)| Bucket { name: Some(name), creation_date: Some(timestamp(record.created_ms)), bucket_region: Some(region_of(&record)) })
            .collect();
        let prefix = (!prefix.is_empty()).then_some(prefix);
        Ok(S3Response::new(ListBucketsOutput { buckets: Some(buckets), owner: Some(bucket_config::owner(&tenant)), continuation_token, prefix }))
    }

    pub(super) async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        let tenant = self.tenant(&req)?;
        let bucket = &req.input.bucket;
        let location = req.input.create_bucket_configuration.as_ref().and_then(|configuration| configuration.location_constraint.as_ref());
        let location = location.map(|constraint| constraint.as_str().to_owned()).filter(|constraint| !constraint.is_empty());
        // The default region is named by giving none: S3 refuses it named.
        if location.as_deref() == Some(DEFAULT_REGION) {
            return Err(s3_error!(InvalidLocationConstraint, "The specified location-constraint is not valid"));
        }
        if reserved_bucket_name(bucket) {
            return Err(s3_error!(InvalidBucketName, "The specified bucket is not valid."));
        }
        if req.input.object_lock_enabled_for_bucket == Some(true) {
            return Err(s3_error!(NotImplemented, "Object Lock is not supported by this gateway"));
        }
        if let Some(ownership) = &req.input.object_ownership {
            bucket_config::check_ownership(ownership, || s3_error!(InvalidArgument, "Invalid x-amz-object-ownership header: {}", ownership.as_str()))?;
        }
        let grants = grants_in!(req.input) || req.input.grant_write.is_some();
        bucket_config::check_bucket_creation_acl(req.input.acl.as_ref().map(BucketCannedACL::as_str), grants)?;
        let created = Ok(S3Response::new(CreateBucketOutput { location: Some(format!("/{bucket}")) }));
        // Creating a bucket one owns already succeeds, as S3 answers in us-east-1.
        if self.store.index.bucket(&tenant, bucket).map_err(internal)?.is_some() {
            return created;
        }
        let owned = self.store.index.list_buckets(&tenant).map_err(internal)?.len();
        if self.keys.current().max_buckets(&tenant).is_some_and(|limit| owned >= limit) {
            return Err(s3_error!(TooManyBuckets));
        }
        catalog::create_bucket(&self.store, &tenant, bucket, location).await.map_err(to_s3)?;
        created
    }

    pub(super) async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        let tenant = self.tenant(&req)?;
        let record = self.bucket_record(&tenant, &req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput { bucket_region: Some(region_of(&record)), ..HeadBucketOutput::default() }))
    }

    pub(super) async fn get_bucket_location(&self, req: S3Request<GetBucketLocationInput>) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let tenant = self.tenant(&req)?;
        let record = self.bucket_record(&tenant, &req.input.bucket).await?;
        // No constraint (the default region) answers an empty LocationConstraint, as S3 does.
        let location_constraint = record.location.map(BucketLocationConstraint::from);
        Ok(S3Response::new(GetBucketLocationOutput { location_constraint }))
    }

    pub(super) async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        let tenant = self.tenant(&req)?;
        match catalog::delete_bucket(&self.store, &tenant, &req.input.bucket).await.map_err(to_s3)? {
            BucketDeletion::Deleted => Ok(S3Response::new(DeleteBucketOutput::default())),
            BucketDeletion::NotEmpty => Err(s3_error!(BucketNotEmpty)),
            BucketDeletion::Missing => Err(s3_error!(NoSuchBucket)),
        }
    }
}

/// The region of a bucket created without a location constraint, as S3's us-east-1.
const DEFAULT_REGION: &str = "us-east-1";

/// The region a bucket answers in HeadBucket and ListBuckets: its location constraint, or the
/// default region.
fn region_of(record: &BucketRecord) -> String {
    record.location.clone().unwrap_or_else(|| DEFAULT_REGION.to_owned())
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
