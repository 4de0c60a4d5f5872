//! The bucket and object settings tensorgate does not offer, answered as AWS S3 answers for a
//! private bucket created today that never had them: versioning never enabled, the owner alone
//! with full control (ACLs disabled by `BucketOwnerEnforced` ownership, so only the `private`
//! ACL, or one granting the owner alone full control, is accepted), every public access
//! blocked, and no CORS configuration or bucket policy. Turning versioning on is refused with a
//! message saying so: objects keep one version (see docs/compatibility.md).

use s3s::dto::{
    AccessControlPolicy, BucketVersioningStatus, GetBucketAclOutput, GetBucketOwnershipControlsOutput, GetBucketVersioningOutput,
    GetObjectAclOutput, GetPublicAccessBlockOutput, Grant, Grantee, ObjectOwnership, Owner, OwnershipControls, OwnershipControlsRule,
    Permission, PublicAccessBlockConfiguration, Type, VersioningConfiguration,
};
use s3s::{s3_error, S3Result};

/// The owner of a tenant's buckets and objects: a 64-hex-digit canonical id, as S3's.
pub fn owner(tenant: &str) -> Owner {
    Owner { id: Some(tensorgate_codec::ContentHash::of(tenant.as_bytes()).to_hex()), display_name: Some(tenant.to_owned()) }
}

fn owner_alone(tenant: &str) -> (Option<Owner>, Option<Vec<Grant>>) {
    let owner = owner(tenant);
    let grantee = Grantee {
        id: owner.id.clone(),
        display_name: owner.display_name.clone(),
        type_: Type::from_static(Type::CANONICAL_USER),
        email_address: None,
        uri: None,
    };
    let grant = Grant { grantee: Some(grantee), permission: Some(Permission::from_static(Permission::FULL_CONTROL)) };
    (Some(owner), Some(vec![grant]))
}

pub fn bucket_acl(tenant: &str) -> GetBucketAclOutput {
    let (owner, grants) = owner_alone(tenant);
    GetBucketAclOutput { owner, grants }
}

pub fn object_acl(tenant: &str) -> GetObjectAclOutput {
    let (owner, grants) = owner_alone(tenant);
    GetObjectAclOutput { owner, grants, ..Default::default() }
}

/// Accepts an ACL change that leaves the owner alone with full control (the canned `private`
/// ACL, or a policy saying so); refuses any other, as S3 does with ACLs disabled.
pub fn check_acl(tenant: &str, canned: Option<&str>, policy: Option<&AccessControlPolicy>, grant_headers: bool) -> S3Result<()> {
    let private_canned = canned.is_none_or(|acl| acl == "private" || acl == "bucket-owner-full-control");
    let private_policy = policy.is_none_or(|policy| {
        let owner_id = owner(tenant).id;
        policy.grants.as_ref().is_none_or(|grants| {
            grants.iter().all(|grant| {
                grant.permission.as_ref().is_some_and(|p| p.as_str() == Permission::FULL_CONTROL)
                    && grant.grantee.as_ref().is_some_and(|grantee| grantee.id == owner_id)
            })
        })
    });
    if private_canned && private_policy && !grant_headers {
        return Ok(());
    }
    Err(s3_error!(AccessControlListNotSupported, "The bucket does not allow ACLs"))
}

pub fn versioning() -> GetBucketVersioningOutput {
    GetBucketVersioningOutput::default()
}

/// Suspending versioning that was never enabled changes nothing; enabling it is refused.
pub fn check_versioning(configuration: &VersioningConfiguration) -> S3Result<()> {
    match configuration.status.as_ref().map(BucketVersioningStatus::as_str) {
        Some(BucketVersioningStatus::ENABLED) => Err(s3_error!(
            NotImplemented,
            "Versioning is not supported by this gateway: every object keeps one version"
        )),
        _ => Ok(()),
    }
}

pub fn public_access_block() -> GetPublicAccessBlockOutput {
    GetPublicAccessBlockOutput {
        public_access_block_configuration: Some(PublicAccessBlockConfiguration {
            block_public_acls: Some(true),
            block_public_policy: Some(true),
            ignore_public_acls: Some(true),
            restrict_public_buckets: Some(true),
        }),
    }
}

pub fn ownership_controls() -> GetBucketOwnershipControlsOutput {
    let rule = OwnershipControlsRule { object_ownership: ObjectOwnership::from_static(ObjectOwnership::BUCKET_OWNER_ENFORCED) };
    GetBucketOwnershipControlsOutput { ownership_controls: Some(OwnershipControls { rules: vec![rule] }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_acls_leaving_the_owner_alone_are_accepted() {
        assert!(check_acl("t", None, None, false).is_ok());
        assert!(check_acl("t", Some("private"), None, false).is_ok());
        assert!(check_acl("t", Some("public-read"), None, false).is_err());
        assert!(check_acl("t", None, None, true).is_err());
        let (owner, grants) = owner_alone("t");
        assert!(check_acl("t", None, Some(&AccessControlPolicy { owner, grants }), false).is_ok());
        let (owner, grants) = owner_alone("someone else");
        assert!(check_acl("t", None, Some(&AccessControlPolicy { owner, grants }), false).is_err());
    }
}
