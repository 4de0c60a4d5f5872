//! Ids and clock readings shared by every part of the gateway.

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A configured duration of `secs` seconds in milliseconds, saturating: a duration too long
/// for an i64 of milliseconds (such as `u64::MAX`, meant as "never") stays the longest one,
/// rather than wrapping round to a negative, or overflowing.
pub fn ms_of_secs(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000)
}

/// The longest a configured timeout waits: a longer one (about 34 years) never fires anyway,
/// and adding it to the clock's now could overflow, which panics.
pub const LONGEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1 << 30);

/// A fresh unique id for versions, blobs and packs.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
