//! A bucket's settings as stored upstream (`bucket-settings/…`, docs/format.md section 7.9):
//! the S3 bucket configurations tensorgate keeps and answers, read on demand by every gateway.
//! A bucket without a record has the settings AWS S3 gives a bucket created today
//! ([`BucketSettings::new`]); a record written for an earlier bucket of the same name (another
//! `created_ms`) is not this bucket's and counts as absent.

use serde::{Deserialize, Serialize};

use crate::manifest::Envelope;

/// The ownership rule S3 gives new buckets, and the only one tensorgate offers: ACLs disabled.
pub const BUCKET_OWNER_ENFORCED: &str = "BucketOwnerEnforced";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSettings {
    pub tenant: String,
    pub bucket: String,
    /// The `created_ms` of the bucket these settings belong to.
    pub created_ms: i64,
    /// Block Public Access; `None` once deleted.
    pub public_access_block: Option<PublicAccessBlock>,
    /// The object ownership rule; `None` once the ownership controls are deleted.
    pub ownership: Option<String>,
    /// CORS rules, in the order given; empty when the bucket has no CORS configuration.
    pub cors: Vec<CorsRule>,
    /// Versioning was suspended (it is never enabled: objects keep one version).
    pub versioning_suspended: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicAccessBlock {
    pub block_public_acls: bool,
    pub ignore_public_acls: bool,
    pub block_public_policy: bool,
    pub restrict_public_buckets: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorsRule {
    pub id: Option<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age_seconds: Option<i32>,
}

impl BucketSettings {
    /// What a bucket created at `created_ms` has until its settings change: every public
    /// access blocked, ACLs disabled, no CORS rules, versioning never enabled.
    pub fn new(tenant: &str, bucket: &str, created_ms: i64) -> BucketSettings {
        let block_all = PublicAccessBlock { block_public_acls: true, ignore_public_acls: true, block_public_policy: true, restrict_public_buckets: true };
        BucketSettings {
            tenant: tenant.to_owned(),
            bucket: bucket.to_owned(),
            created_ms,
            public_access_block: Some(block_all),
            ownership: Some(BUCKET_OWNER_ENFORCED.to_owned()),
            cors: Vec::new(),
            versioning_suspended: false,
        }
    }

    /// Whether this record is that of bucket `bucket` of `tenant` created at `created_ms`.
    pub fn belongs_to(&self, tenant: &str, bucket: &str, created_ms: i64) -> bool {
        self.tenant == tenant && self.bucket == bucket && self.created_ms == created_ms
    }
}

impl Envelope for BucketSettings {
    const KIND: u8 = 7;
    type V1 = BucketSettings;
    type V2 = BucketSettings;

    fn as_v1(&self) -> Option<Self::V1> {
        Some(self.clone())
    }

    fn as_v2(&self) -> Option<Self::V2> {
        Some(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sealed_settings_open_to_themselves(
            created_ms in any::<i64>(),
            blocks in proptest::option::of(any::<[bool; 4]>()),
            ownership in proptest::option::of("[A-Za-z]{0,24}"),
            origins in proptest::collection::vec("[ -~]{0,32}", 0..4),
            max_age in proptest::option::of(any::<i32>()),
            suspended in any::<bool>(),
        ) {
            let mut settings = BucketSettings::new("t", "b", created_ms);
            settings.public_access_block = blocks.map(|[a, b, c, d]| PublicAccessBlock { block_public_acls: a, ignore_public_acls: b, block_public_policy: c, restrict_public_buckets: d });
            settings.ownership = ownership;
            let rule = CorsRule { id: None, allowed_methods: vec!["GET".into()], allowed_origins: origins, allowed_headers: vec![], expose_headers: vec!["ETag".into()], max_age_seconds: max_age };
            settings.cors = vec![rule];
            settings.versioning_suspended = suspended;
            prop_assert_eq!(BucketSettings::open(&settings.seal().unwrap()).unwrap(), settings);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = BucketSettings::open(&bytes);
        }
    }

    #[test]
    fn settings_belong_to_one_bucket_of_one_creation() {
        let settings = BucketSettings::new("t", "b", 5);
        assert!(settings.belongs_to("t", "b", 5));
        assert!(!settings.belongs_to("t", "b", 6), "a bucket created again under the name starts afresh");
        assert!(!settings.belongs_to("u", "b", 5));
    }
}
