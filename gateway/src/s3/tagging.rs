//! Object tags. The gateway keeps none (no issue asks for them yet): GetObjectTagging answers
//! an object's empty tag set, as S3 does for an untagged object (AWS CLI v2 asks for a copy
//! source's tags before every copy by parts); deleting an object's tags deletes nothing; a
//! request that would set a tag is refused (501 NotImplemented) rather than its tags dropped.

use super::*;

impl Gateway {
    pub(super) async fn get_object_tagging(&self, req: S3Request<GetObjectTaggingInput>) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        let tenant = self.tenant(&req)?;
        versions::check_version_id(req.input.version_id.as_deref())?;
        self.find_object(&tenant, &req.input.bucket, &req.input.key).await?;
        Ok(S3Response::new(GetObjectTaggingOutput { tag_set: Vec::new(), version_id: None }))
    }

    pub(super) async fn put_object_tagging(&self, req: S3Request<PutObjectTaggingInput>) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        let tenant = self.tenant(&req)?;
        versions::check_version_id(req.input.version_id.as_deref())?;
        self.find_object(&tenant, &req.input.bucket, &req.input.key).await?;
        if !req.input.tagging.tag_set.is_empty() {
            return Err(tags_not_kept());
        }
        Ok(S3Response::new(PutObjectTaggingOutput::default()))
    }

    pub(super) async fn delete_object_tagging(&self, req: S3Request<DeleteObjectTaggingInput>) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        let tenant = self.tenant(&req)?;
        versions::check_version_id(req.input.version_id.as_deref())?;
        self.find_object(&tenant, &req.input.bucket, &req.input.key).await?;
        Ok(S3Response::new(DeleteObjectTaggingOutput::default()))
    }
}

/// Refuses a write that would set tags: an `x-amz-tagging` header (s3s takes an empty one for
/// none).
pub(super) fn check_no_tags(tagging: Option<&str>) -> S3Result<()> {
    match tagging {
        Some(_) => Err(tags_not_kept()),
        None => Ok(()),
    }
}

fn tags_not_kept() -> S3Error {
    s3_error!(NotImplemented, "Object tagging is not supported by this gateway")
}
