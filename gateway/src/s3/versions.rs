//! Object versions. The gateway keeps one version of each object, S3's `null` version of an
//! unversioned bucket (docs/compatibility.md); a request naming any other version names none
//! the gateway holds. It is refused as S3 refuses a version id it did not issue (400
//! InvalidArgument), before the object is looked up: never read, copied or deleted as the
//! current version, which a client asking for one exact version does not mean.

use super::*;

/// The one version id the gateway holds.
pub(super) const NULL_VERSION: &str = "null";

/// Refuses a version id other than `null` (none is the current version), an empty one with
/// S3's own message.
pub(super) fn check_version_id(version_id: Option<&str>) -> S3Result<()> {
    match version_id {
        Some("") => Err(s3_error!(InvalidArgument, "Version id cannot be the empty string")),
        Some(version) if version != NULL_VERSION => Err(s3_error!(InvalidArgument, "Invalid version id specified")),
        _ => Ok(()),
    }
}
