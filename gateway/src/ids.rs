//! Ids and clock readings shared by every part of the gateway.

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A fresh unique id for versions, blobs and packs.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
