//! Bucket and object settings as S3 answers them. ACLs: the owner alone with full control (ACLs
//! disabled by `BucketOwnerEnforced` ownership, so only the `private` ACL, or one granting the
//! owner alone full control, is accepted). The settings a bucket keeps (`BucketSettings`: Block
//! Public Access, ownership controls, CORS rules, versioning suspended) converted to and from
//! S3's; what a bucket cannot have (versioning enabled, object lock, ownership that enables ACLs)
//! refused with a message saying so (see docs/compatibility.md).

use s3s::dto::{
    AccessControlPolicy, BucketVersioningStatus, CORSConfiguration, CORSRule, GetBucketAclOutput, GetBucketCorsOutput,
    GetBucketOwnershipControlsOutput, GetBucketVersioningOutput, GetObjectAclOutput, GetPublicAccessBlockOutput, Grant, Grantee, Initiator,
    ObjectOwnership, Owner, OwnershipControls, OwnershipControlsRule, Permission, PublicAccessBlockConfiguration, Type,
    VersioningConfiguration,
};
use s3s::{s3_error, S3Error, S3Result};
use tensorgate_index::{BucketSettings, CorsRule, PublicAccessBlock, BUCKET_OWNER_ENFORCED};

use crate::s3::errors::custom_error;

/// The owner of a tenant's buckets and objects: a 64-hex-digit canonical id, as S3's.
pub fn owner(tenant: &str) -> Owner {
    Owner { id: Some(tensorgate_codec::ContentHash::of(tenant.as_bytes()).to_hex()), display_name: Some(tenant.to_owned()) }
}

/// Who started a tenant's multipart uploads, as ListParts and ListMultipartUploads name them:
/// the owner.
pub fn initiator(tenant: &str) -> Initiator {
    let Owner { id, display_name } = owner(tenant);
    Initiator { id, display_name }
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

/// A new bucket takes the `private` ACL alone: with ACLs disabled, S3 refuses any other.
pub fn check_bucket_creation_acl(canned: Option<&str>, grant_headers: bool) -> S3Result<()> {
    if canned.is_none_or(|acl| acl == "private") && !grant_headers {
        return Ok(());
    }
    Err(s3_error!(InvalidBucketAclWithObjectOwnership, "Bucket cannot have ACLs set with ObjectOwnership's BucketOwnerEnforced setting"))
}

pub fn versioning(settings: &BucketSettings) -> GetBucketVersioningOutput {
    let status = settings.versioning_suspended.then(|| BucketVersioningStatus::from_static(BucketVersioningStatus::SUSPENDED));
    GetBucketVersioningOutput { status, mfa_delete: None }
}

/// Whether the configuration suspends versioning (kept; it changes nothing else, since
/// versioning was never enabled); enabling it is refused, any other status is malformed.
pub fn suspends_versioning(configuration: &VersioningConfiguration) -> S3Result<bool> {
    match configuration.status.as_ref().map(BucketVersioningStatus::as_str) {
        None => Ok(false),
        Some(BucketVersioningStatus::SUSPENDED) => Ok(true),
        Some(BucketVersioningStatus::ENABLED) => Err(s3_error!(
            NotImplemented,
            "Versioning is not supported by this gateway: every object keeps one version"
        )),
        Some(_) => Err(s3_error!(MalformedXML)),
    }
}

pub fn public_access_block(settings: &BucketSettings) -> S3Result<GetPublicAccessBlockOutput> {
    let Some(block) = settings.public_access_block else {
        return Err(custom_error(
            "NoSuchPublicAccessBlockConfiguration",
            hyper::StatusCode::NOT_FOUND,
            "The public access block configuration was not found",
        ));
    };
    let configuration = PublicAccessBlockConfiguration {
        block_public_acls: Some(block.block_public_acls),
        ignore_public_acls: Some(block.ignore_public_acls),
        block_public_policy: Some(block.block_public_policy),
        restrict_public_buckets: Some(block.restrict_public_buckets),
    };
    Ok(GetPublicAccessBlockOutput { public_access_block_configuration: Some(configuration) })
}

/// The configuration as kept: a setting left out is false, as S3 takes it.
pub fn public_access_block_of(configuration: &PublicAccessBlockConfiguration) -> PublicAccessBlock {
    PublicAccessBlock {
        block_public_acls: configuration.block_public_acls.unwrap_or(false),
        ignore_public_acls: configuration.ignore_public_acls.unwrap_or(false),
        block_public_policy: configuration.block_public_policy.unwrap_or(false),
        restrict_public_buckets: configuration.restrict_public_buckets.unwrap_or(false),
    }
}

pub fn ownership_controls(settings: &BucketSettings) -> S3Result<GetBucketOwnershipControlsOutput> {
    let Some(ownership) = &settings.ownership else {
        return Err(s3_error!(OwnershipControlsNotFoundError, "The bucket ownership controls were not found"));
    };
    let rule = OwnershipControlsRule { object_ownership: ObjectOwnership::from(ownership.clone()) };
    Ok(GetBucketOwnershipControlsOutput { ownership_controls: Some(OwnershipControls { rules: vec![rule] }) })
}

/// Ownership asked for at creation or by PutBucketOwnershipControls: `BucketOwnerEnforced`
/// alone, since the others enable ACLs, which the gateway does not keep. `unknown` is S3's
/// answer to a value that is none of the three.
pub fn check_ownership(ownership: &ObjectOwnership, unknown: impl FnOnce() -> S3Error) -> S3Result<()> {
    match ownership.as_str() {
        BUCKET_OWNER_ENFORCED => Ok(()),
        ObjectOwnership::BUCKET_OWNER_PREFERRED | ObjectOwnership::OBJECT_WRITER => Err(s3_error!(
            NotImplemented,
            "Object ownership other than BucketOwnerEnforced is not supported by this gateway: ACLs stay disabled"
        )),
        _ => Err(unknown()),
    }
}

/// The one rule of an ownership configuration.
pub fn ownership_rule(controls: &OwnershipControls) -> S3Result<&ObjectOwnership> {
    match controls.rules.as_slice() {
        [rule] => Ok(&rule.object_ownership),
        _ => Err(s3_error!(MalformedXML)),
    }
}

pub fn cors(settings: &BucketSettings) -> S3Result<GetBucketCorsOutput> {
    if settings.cors.is_empty() {
        return Err(s3_error!(NoSuchCORSConfiguration, "The CORS configuration does not exist"));
    }
    let rules = settings
        .cors
        .iter()
        .map(|rule| CORSRule {
            id: rule.id.clone(),
            allowed_methods: rule.allowed_methods.clone(),
            allowed_origins: rule.allowed_origins.clone(),
            allowed_headers: (!rule.allowed_headers.is_empty()).then(|| rule.allowed_headers.clone()),
            expose_headers: (!rule.expose_headers.is_empty()).then(|| rule.expose_headers.clone()),
            max_age_seconds: rule.max_age_seconds,
        })
        .collect();
    Ok(GetBucketCorsOutput { cors_rules: Some(rules) })
}

/// The methods a CORS rule may allow, and a preflight ask for.
pub const CORS_METHODS: [&str; 5] = ["GET", "PUT", "HEAD", "POST", "DELETE"];

/// S3's limits on a CORS configuration: its rules, its size, a rule's id.
const MAX_CORS_RULES: usize = 100;
const MAX_CORS_BYTES: usize = 64 << 10;
const MAX_CORS_ID_LEN: usize = 255;

/// The rules of a CORS configuration as kept, refused as S3 refuses them: none or over 100
/// rules or 64 KiB, a rule without an origin or a method, a method S3 does not take, an id over
/// 255 characters, an origin or allowed header with more than one wildcard, an exposed header
/// with one.
pub fn cors_rules(configuration: &CORSConfiguration) -> S3Result<Vec<CorsRule>> {
    let rules = &configuration.cors_rules;
    if rules.is_empty() || rules.len() > MAX_CORS_RULES {
        return Err(s3_error!(MalformedXML));
    }
    let mut kept = Vec::with_capacity(rules.len());
    let mut size = 0;
    for rule in rules {
        if rule.allowed_methods.is_empty() || rule.allowed_origins.is_empty() {
            return Err(s3_error!(MalformedXML));
        }
        if let Some(method) = rule.allowed_methods.iter().find(|method| !CORS_METHODS.contains(&method.as_str())) {
            return Err(s3_error!(InvalidRequest, "Found unsupported HTTP method in CORS config. Unsupported method is {method}"));
        }
        if rule.id.as_ref().is_some_and(|id| id.chars().count() > MAX_CORS_ID_LEN) {
            return Err(s3_error!(InvalidArgument, "ID length should not exceed allowed limit of {MAX_CORS_ID_LEN}"));
        }
        let allowed_headers = rule.allowed_headers.clone().unwrap_or_default();
        let expose_headers = rule.expose_headers.clone().unwrap_or_default();
        let wildcards = |name: &String| name.matches('*').count();
        if let Some(origin) = rule.allowed_origins.iter().find(|origin| wildcards(origin) > 1) {
            return Err(s3_error!(InvalidRequest, "AllowedOrigin \"{origin}\" can not have more than one wildcard."));
        }
        if let Some(header) = allowed_headers.iter().find(|header| wildcards(header) > 1) {
            return Err(s3_error!(InvalidRequest, "AllowedHeader \"{header}\" can not have more than one wildcard."));
        }
        if let Some(header) = expose_headers.iter().find(|header| wildcards(header) > 0) {
            return Err(s3_error!(
                InvalidRequest,
                "ExposeHeader \"{header}\" contains wildcard. We currently do not support wildcard for ExposeHeader."
            ));
        }
        let strings = rule.allowed_methods.iter().chain(&rule.allowed_origins).chain(&allowed_headers).chain(&expose_headers);
        size += rule.id.as_ref().map_or(0, String::len) + strings.map(String::len).sum::<usize>();
        if size > MAX_CORS_BYTES {
            return Err(s3_error!(MaxMessageLengthExceeded, "Your request was too big."));
        }
        kept.push(CorsRule {
            id: rule.id.clone(),
            allowed_methods: rule.allowed_methods.clone(),
            allowed_origins: rule.allowed_origins.clone(),
            allowed_headers,
            expose_headers,
            max_age_seconds: rule.max_age_seconds,
        });
    }
    Ok(kept)
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

    #[test]
    fn cors_rules_are_kept_as_given_and_refused_as_s3_refuses_them() {
        let rule = |methods: &[&str], origins: &[&str]| CORSRule {
            allowed_methods: methods.iter().map(|m| m.to_string()).collect(),
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        };
        let configuration = CORSConfiguration { cors_rules: vec![rule(&["GET", "PUT"], &["*.get", "*.put"])] };
        let kept = cors_rules(&configuration).unwrap();
        let mut settings = BucketSettings::new("t", "b", 1);
        settings.cors = kept;
        assert_eq!(cors(&settings).unwrap().cors_rules.unwrap(), configuration.cors_rules);
        assert!(cors_rules(&CORSConfiguration { cors_rules: vec![rule(&["PATCH"], &["*"])] }).is_err());
        assert!(cors_rules(&CORSConfiguration { cors_rules: vec![rule(&["GET"], &["*.a*"])] }).is_err());
        assert!(cors_rules(&CORSConfiguration { cors_rules: vec![] }).is_err());
        let mut exposing = rule(&["GET"], &["*"]);
        exposing.expose_headers = Some(vec!["x-amz-*".into()]);
        assert!(cors_rules(&CORSConfiguration { cors_rules: vec![exposing] }).is_err());
        let huge = rule(&["GET"], &[&"o".repeat(MAX_CORS_BYTES)]);
        assert!(cors_rules(&CORSConfiguration { cors_rules: vec![huge] }).is_err(), "a configuration over 64 KiB is refused");
        settings.cors.clear();
        assert!(cors(&settings).is_err(), "no rules is no configuration");
    }
}
