//! The upstream layout: every prefix and key shape tensorgate writes upstream, in one place
//! (docs/format.md, section 2, specifies them). Callers give the tenant's prefix (empty, or
//! `tenants/<name>/`); nothing else builds an upstream key.

/// A name hashed into a fixed-length upstream key part: object keys can be 1024 bytes of
/// anything, upstream keys cannot.
fn name_hash(parts: &[&str]) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    hasher.finalize().to_hex().to_string()
}

/// Upstream key of an object's manifest, under the tenant's upstream prefix.
pub fn manifest_key(prefix: &str, tenant: &str, bucket: &str, key: &str) -> String {
    format!("{prefix}{MANIFESTS}{}", name_hash(&[tenant, bucket, key]))
}

/// Upstream key of a bucket's marker.
pub fn bucket_key(prefix: &str, tenant: &str, bucket: &str) -> String {
    format!("{prefix}{BUCKETS}{}", name_hash(&[tenant, bucket]))
}

/// Upstream key of a bucket's settings.
pub fn bucket_settings_key(prefix: &str, tenant: &str, bucket: &str) -> String {
    format!("{prefix}{BUCKET_SETTINGS}{}", name_hash(&[tenant, bucket]))
}

/// Upstream key of an upload's marker.
pub fn upload_key(prefix: &str, upload_id: &str) -> String {
    format!("{prefix}{UPLOADS}{upload_id}")
}

/// Upstream folder of an upload's part markers.
pub fn parts_folder(prefix: &str, upload_id: &str) -> String {
    format!("{prefix}{UPLOAD_PARTS}{upload_id}/")
}

/// The prefix and upload id a part marker key `<prefix>upload-parts/<id>/<number>` names.
pub fn upload_of_part(marker: &str) -> Option<(&str, &str)> {
    let (prefix, rest) = marker.rsplit_once(UPLOAD_PARTS)?;
    let (upload_id, number) = rest.split_once('/')?;
    (!upload_id.is_empty() && !number.contains('/')).then_some((prefix, upload_id))
}

/// Upstream key of one part's marker; numbers are zero-padded so the listing is in order.
pub fn part_key(prefix: &str, upload_id: &str, number: u32) -> String {
    format!("{}{number:05}", parts_folder(prefix, upload_id))
}

/// Upstream key of the marker by which the garbage collector announces, with a shared
/// upstream, that it will delete pack `pack` (a full pack key, `<prefix>packs/<id>`).
pub fn condemned_key(pack: &str) -> Option<String> {
    let (prefix, id) = pack_id(pack)?;
    Some(format!("{prefix}{CONDEMNED}{id}"))
}

/// The prefix and id of a pack key `<prefix>packs/<id>`; `None` for any other key.
pub fn pack_id(pack: &str) -> Option<(&str, &str)> {
    let (prefix, id) = pack.rsplit_once(PACKS)?;
    let well_formed = !id.is_empty() && !id.contains('/') && (prefix.is_empty() || prefix.ends_with('/'));
    well_formed.then_some((prefix, id))
}

/// The upstream prefix a pack key is under (empty for a key that is not a pack's).
pub fn pack_prefix(pack: &str) -> &str {
    pack_id(pack).map_or("", |(prefix, _)| prefix)
}

/// Upstream key of gateway `instance`'s heartbeat: which condemnations it has acknowledged.
pub fn heartbeat_key(instance: &str) -> String {
    format!("{GATEWAYS}{instance}")
}

/// The pack a condemnation marker names.
pub fn condemned_pack(marker: &str) -> Option<String> {
    let (prefix, id) = marker.rsplit_once(CONDEMNED)?;
    Some(format!("{prefix}{PACKS}{id}"))
}

/// Upstream key of the record of where compaction copied the frames of pack `pack`.
pub fn moves_key(pack: &str) -> Option<String> {
    let (prefix, id) = pack_id(pack)?;
    Some(format!("{prefix}{MOVED}{id}"))
}

/// Upstream key of the record of the chunks of pack `pack` that re-basing stored again.
pub fn rebased_key(pack: &str) -> Option<String> {
    let (prefix, id) = pack_id(pack)?;
    Some(format!("{prefix}{REBASED}{id}"))
}

/// Upstream folder of the vetoes against deleting pack `pack`: one marker per gateway whose
/// index still reads chunks there.
pub fn vetoes_folder(pack: &str) -> Option<String> {
    let (prefix, id) = pack_id(pack)?;
    Some(format!("{prefix}{VETOES}{id}/"))
}

/// Upstream key of gateway `instance`'s veto against deleting pack `pack`.
pub fn veto_key(pack: &str, instance: &str) -> Option<String> {
    Some(format!("{}{instance}", vetoes_folder(pack)?))
}

/// The pack and the gateway a veto marker names.
pub fn vetoed_pack(marker: &str) -> Option<(String, &str)> {
    let (prefix, rest) = marker.rsplit_once(VETOES)?;
    let (id, instance) = rest.split_once('/')?;
    Some((format!("{prefix}{PACKS}{id}"), instance))
}

/// Upstream folders of the kinds of record, under a tenant's prefix (empty, or `tenants/<name>/`),
/// except `GATEWAYS` and `JOURNAL`, which are shared by all.
pub const MANIFESTS: &str = "manifests/";
pub const BUCKETS: &str = "buckets/";
pub const BUCKET_SETTINGS: &str = "bucket-settings/";
pub const UPLOADS: &str = "uploads/";
pub const UPLOAD_PARTS: &str = "upload-parts/";
pub const PACKS: &str = "packs/";
pub const BLOBS: &str = "blobs/";
pub const CONDEMNED: &str = "condemned/";
pub const VETOES: &str = "in-use/";
pub const MOVED: &str = "moved/";
pub const REBASED: &str = "rebased/";
pub const GATEWAYS: &str = "gateways/";
pub const JOURNAL: &str = "journal/";

/// Upstream key of the garbage-collection lease, shared by all tenants.
pub const LEASE: &str = "gc/lease";

/// Upstream key of a new pack with id `id` under `prefix`.
pub fn pack_key(prefix: &str, id: &str) -> String {
    format!("{prefix}{PACKS}{id}")
}

/// Upstream key of a new blob (an object or part stored as it came) with id `id` under `prefix`.
pub fn blob_key(prefix: &str, id: &str) -> String {
    format!("{prefix}{BLOBS}{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_markers_name_their_upload() {
        let marker = part_key("tenants/t/", "u1", 7);
        assert_eq!(marker, "tenants/t/upload-parts/u1/00007");
        assert_eq!(upload_of_part(&marker), Some(("tenants/t/", "u1")));
        assert_eq!(upload_of_part("upload-parts/u1"), None);
    }

    #[test]
    fn pack_markers_name_their_pack() {
        let pack = "tenants/t/packs/0123abcd";
        assert_eq!(condemned_key(pack).as_deref(), Some("tenants/t/condemned/0123abcd"));
        assert_eq!(condemned_pack("tenants/t/condemned/0123abcd").as_deref(), Some(pack));
        let veto = veto_key(pack, "gw1").unwrap();
        assert_eq!(veto, "tenants/t/in-use/0123abcd/gw1");
        assert_eq!(vetoed_pack(&veto), Some((pack.to_owned(), "gw1")));
        assert_eq!(condemned_key("blobs/x"), None);
        assert_eq!(condemned_key("tenants/packs/blobs/x"), None, "a tenant named packs has no packs there");
    }
}
