//! Access keys: which secret signs for which access key. An unknown key gets
//! `InvalidAccessKeyId`, as AWS answers (s3s's own SimpleAuth says `NotSignedUp`).

use std::collections::HashMap;

use async_trait::async_trait;
use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};

use crate::config::AccessKey;

pub struct KeyRing {
    secrets: HashMap<String, SecretKey>,
}

impl KeyRing {
    pub fn new(keys: &[AccessKey]) -> KeyRing {
        let secrets = keys.iter().map(|k| (k.access_key.clone(), SecretKey::from(k.secret_key.clone()))).collect();
        KeyRing { secrets }
    }
}

#[async_trait]
impl S3Auth for KeyRing {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        self.secrets
            .get(access_key)
            .cloned()
            .ok_or_else(|| s3_error!(InvalidAccessKeyId, "The AWS access key Id you provided does not exist in our records."))
    }
}
