//! Access keys and tenants: which secret signs for which access key, and which tenant the key
//! belongs to. An unknown key gets `InvalidAccessKeyId`, as AWS answers (s3s's own SimpleAuth
//! says `NotSignedUp`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};

use crate::config::TenantConfig;

/// A key's secret and its tenant.
struct KeyEntry {
    secret: SecretKey,
    tenant: String,
}

#[derive(Default)]
pub struct KeyRing {
    keys: HashMap<String, KeyEntry>,
    max_buckets: HashMap<String, usize>,
}

impl KeyRing {
    pub fn new(tenants: &[TenantConfig]) -> KeyRing {
        let mut keys = HashMap::new();
        let mut max_buckets = HashMap::new();
        for tenant in tenants {
            for key in &tenant.access_keys {
                let entry = KeyEntry { secret: SecretKey::from(key.secret_key.clone()), tenant: tenant.name.clone() };
                keys.insert(key.access_key.clone(), entry);
            }
            if let Some(limit) = tenant.max_buckets {
                max_buckets.insert(tenant.name.clone(), limit);
            }
        }
        KeyRing { keys, max_buckets }
    }

    /// The tenant an access key belongs to.
    pub fn tenant(&self, access_key: &str) -> Option<&str> {
        self.keys.get(access_key).map(|entry| entry.tenant.as_str())
    }

    /// Every tenant with a key, each once, in name order.
    pub fn tenants(&self) -> Vec<String> {
        let names: std::collections::BTreeSet<&str> = self.keys.values().map(|entry| entry.tenant.as_str()).collect();
        names.into_iter().map(str::to_owned).collect()
    }

    /// How many buckets the tenant may own, if limited.
    pub fn max_buckets(&self, tenant: &str) -> Option<usize> {
        self.max_buckets.get(tenant).copied()
    }
}

/// The current key ring, replaced whole when the configuration is reloaded: a request sees
/// either the old ring or the new one, and a revoked key is refused from the next request on.
#[derive(Default)]
pub struct Keys(RwLock<Arc<KeyRing>>);

impl Keys {
    pub fn new(ring: KeyRing) -> Keys {
        Keys(RwLock::new(Arc::new(ring)))
    }

    pub fn current(&self) -> Arc<KeyRing> {
        self.0.read().map(|ring| ring.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    pub fn replace(&self, ring: KeyRing) {
        match self.0.write() {
            Ok(mut current) => *current = Arc::new(ring),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(ring),
        }
    }
}

/// The key ring as s3s's authenticator, shared with the service that maps keys to tenants.
pub struct Authenticator(pub Arc<Keys>);

#[async_trait]
impl S3Auth for Authenticator {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        self.0
            .current()
            .keys
            .get(access_key)
            .map(|entry| entry.secret.clone())
            .ok_or_else(|| s3_error!(InvalidAccessKeyId, "The AWS Access Key Id you provided does not exist in our records."))
    }
}

/// The longest a presigned URL may be valid, in seconds: a week, as in S3.
const MAX_PRESIGNED_EXPIRY_SECS: u64 = 7 * 24 * 3600;

/// S3's refusal of a presigned URL valid for longer than a week (s3s 0.14.1 takes any
/// `X-Amz-Expires`), or none for any other request.
pub fn overlong_presigned_expiry(uri: &hyper::Uri) -> Option<s3s::S3Error> {
    let expires = uri.query()?.split('&').find_map(|pair| pair.strip_prefix("X-Amz-Expires="))?;
    // A value that is no number is s3s's to refuse.
    let secs: u64 = expires.parse().ok()?;
    (secs > MAX_PRESIGNED_EXPIRY_SECS).then(|| {
        crate::s3::errors::custom_error(
            "AuthorizationQueryParametersError",
            hyper::StatusCode::BAD_REQUEST,
            format!("X-Amz-Expires must be less than a week (in seconds) that is {MAX_PRESIGNED_EXPIRY_SECS}"),
        )
    })
}
